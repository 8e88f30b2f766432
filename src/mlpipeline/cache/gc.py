"""``make gc``: what ``dvc gc`` would remove from the DVC cache (and the remote), what each object
was and why it goes; with ``--confirm`` it removes exactly that.

``dvc gc --dry`` logs bare cache paths. This asks DVC which objects to keep (``Repo.used_objs``,
the call ``dvc gc`` makes, with the same scope flags), lists every other object of each store
the way ``dvc gc`` walks them, sizes them and names them (``origins``). The default scope
keeps the workspace, every branch tip, every tag and every experiment: ``dvc gc -w -a -T
--all-experiments``. Whatever the scope, registered model versions (GTO tags such as
``image-classifier@v1.0.0``) are kept too: a narrower scope never deletes a released model.
``--confirm`` then deletes exactly the listed objects, as ``dvc gc`` deletes them and under its
repository lock (another DVC command running meanwhile is refused, not raced); ``--cloud`` lists
(and cleans) the default remote too.

Usage (``make gc [CONFIRM=1] [CLOUD=1] [KEEP="dvc gc scope flags"]``; make hands KEEP over in the
environment, ``MLPIPELINE_KEEP``, where only scope flags are taken)::

    python -m mlpipeline.cache.gc [--confirm] [--cloud] [-r REMOTE] [-w] [-a] [-T]
        [--all-experiments] [-A] [--rev REV] [-n N] [--date YYYY-MM-DD]
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Any, NoReturn

from mlpipeline.cache.listing import Refs, names, report, size
from mlpipeline.cache.origins import find_origins
from mlpipeline.cache.scope import DEFAULT_SCOPE, Scope, Store
from mlpipeline.core import stage
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.progress import counted, progress


def kept_objects(repo, scope: Scope, releases: dict[str, str], jobs: int | None = None) -> dict[Any, set]:
    """The objects each store must keep, as ``dvc gc`` collects them, plus every registered model
    version's (``releases``: a narrower scope than ``-T`` must not delete a released model)."""
    with revisions_shown(repo):
        return _kept_objects(repo, scope, releases, jobs)


@contextmanager
def revisions_shown(repo) -> Iterator[None]:
    """Progress per revision while DVC walks the scope's (``Repo.brancher``, which ``used_objs``
    iterates): with ``--date`` or ``-A`` it reads each commit's pipeline, 87 commits in minutes."""
    walk = repo.brancher

    def shown(*args: Any, **scope: Any) -> Iterator[str]:
        with progress("gc", "reading commits", _revision_count(repo, **scope), unit="commit") as bar:
            for revision in walk(*args, **scope):
                yield revision
                bar.advance()

    repo.brancher = shown
    try:
        yield
    finally:
        del repo.brancher  # the class's again


def _revision_count(repo, revs=None, num=1, **flags: Any) -> int:
    """How many revisions ``Repo.brancher`` yields for ``used_objs``'s arguments (its own rule:
    the workspace alone without a scope, else the workspace and each revision ``iter_revs``
    finds)."""
    from dvc.scm import iter_revs

    if not revs and not any(flags.values()):
        return 1
    named = [rev for rev in revs or [] if rev != "workspace"]
    return 1 + len(iter_revs(repo.scm, named, num=num, **flags))


def _kept_objects(repo, scope: Scope, releases: dict[str, str], jobs: int | None) -> dict[Any, set]:
    used = repo.used_objs(
        **{key: value for key, value in asdict(scope).items() if key not in ("workspace", "rev", "num")},
        revs=[scope.rev] if scope.rev else None,
        num=scope.num or 1,
        force=True,  # a directory whose listing is missing everywhere is skipped, not asked about
        jobs=jobs,
    )
    if releases and not (scope.all_tags or scope.all_commits):
        for odb, objs in repo.used_objs(revs=sorted(set(releases.values())), force=True, jobs=jobs).items():
            used.setdefault(odb, set()).update(objs)
    return used


def registered_versions(root: Path) -> dict[str, str]:
    """Every GTO registration tag (``image-classifier@v1.0.0``) and the commit it registers."""
    from gto.constants import Action
    from gto.tag import parse_name

    listed = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname:lstrip=2) %(objectname) %(*objectname)", "refs/tags"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = {}
    for line in listed.splitlines():
        name, sha, peeled = line.split(" ")  # peeled: empty for a lightweight tag
        if parse_name(name, raise_on_fail=False).get("action") == Action.REGISTER:
            found[name] = peeled or sha  # an annotated tag (GTO's) peels to its commit
    return found


def local_stores(repo, used: dict[Any, set]) -> list[Store]:
    """The local cache's object databases (md5 and DVC 2's legacy one), as ``Repo.gc`` walks them."""
    keep = set().union(*used.values())
    seen: list[Any] = []
    for _, odb in repo.cache.by_scheme():
        if odb and odb not in seen:
            seen.append(odb)
    return [_store(f"local cache {_relative(repo, odb.path)}", odb, keep) for odb in seen]


def remote_stores(repo, used: dict[Any, set], remote: str | None) -> list[Store]:
    """The remote's object databases, with what ``Repo.gc(cloud=True)`` would keep in each."""
    from dvc.repo.gc import _merge_remote_obj_ids

    merged = {odb: set(objs) for odb, objs in used.items()}
    _merge_remote_obj_ids(repo, remote, merged)  # what Repo.gc does before cleaning a remote
    return [_store(f"remote {odb.fs.unstrip_protocol(odb.path)}", odb, objs) for odb, objs in merged.items()]


def _store(label: str, odb, keep: Iterable) -> Store:
    """Every object of ``odb`` that is not in ``keep`` (``dvc_data``'s gc: hash names must match)."""
    keep_values = {info.value for info in keep if info.name == odb.hash_name}
    with progress("gc", f"listing {label}", unit="object") as shown:
        stored = list(counted(odb.all(), shown))
    unused = [oid for oid in stored if oid not in keep_values]
    return Store(label, odb, kept=len(stored) - len(unused), unused=unused)


def _relative(repo, path: str) -> str:
    try:
        return str(Path(path).relative_to(repo.root_dir))
    except ValueError:
        return path


def describe(repo, stores: list[Store], jobs: int | None = None) -> None:
    """Fill in each unused object's size and origin."""
    git_tracked = {str(out) for out in repo.index.outs if not out.use_cache}
    runs = Path(repo.stage_cache.cache_dir)
    for store in stores:
        store.git_tracked = git_tracked
        if store.unused:
            paths = [store.odb.oid_to_path(oid) for oid in store.unused]
            infos = store.odb.fs.info(paths, batch_size=jobs)
            store.sizes = {
                oid: int(info.get("size") or 0) for oid, info in zip(store.unused, infos, strict=True)
            }
            store.origins = find_origins(Path(repo.root_dir), runs, store.unused, _dir_reader(store.odb))


def _dir_reader(odb):
    """Read a directory object's entry hashes from ``odb`` (where an unused one is stored)."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    def entries(oid: str) -> list[str]:
        try:
            return [info.value for _, _, info in Tree.load(odb, HashInfo(odb.hash_name, oid))]
        except Exception:  # unreadable listing: its files stay unnamed, nothing else changes
            return []

    return entries


DVC_LOGGERS = ("dvc", "dvc_objects", "dvc_data")
# What `Output.get_used_objs` warns, once per revision, for an output whose hash no dvc.lock recorded.
UNRECORDED = re.compile(r"Output '(?P<output>.+?)'\(.*\) is missing version info\.")


@contextmanager
def dvc_warnings(repo) -> Iterator[list[tuple[str, str]]]:
    """What DVC warns meanwhile, as (revision, message), held back from its console handlers: it
    warns once per commit it walks, naming stages by paths relative to its git view."""
    caught: list[tuple[str, str]] = []

    class Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            rev = getattr(repo.fs, "rev", None)  # the brancher's git view; none in the workspace
            caught.append((rev[:7] if rev else "the workspace", record.getMessage()))

    loggers = [logging.getLogger(name) for name in DVC_LOGGERS]
    saved = [logger.handlers for logger in loggers]
    for logger in loggers:
        logger.handlers = [Hold(logging.WARNING)]
    try:
        yield caught
    finally:
        for logger, handlers in zip(loggers, saved, strict=True):
            logger.handlers = handlers


def sort_warnings(caught: Iterable[tuple[str, str]]) -> tuple[dict[str, list[str]], list[str]]:
    """The outputs with no recorded hash, with the revisions where; and every other warning, once."""
    unrecorded: dict[str, list[str]] = {}
    others: list[str] = []
    for rev, message in caught:
        found = UNRECORDED.match(message)
        if found:
            revs = unrecorded.setdefault(found["output"], [])
            if rev not in revs:
                revs.append(rev)
        elif message.splitlines()[0] not in others:
            others.append(message.splitlines()[0])
    return unrecorded, others


def refs(repo, scope: Scope, cloud: bool, unrecorded: dict[str, list[str]] | None = None) -> Refs:
    """The branches, tags and experiments the scope keeps by name, for a shared remote the
    remote-tracking branches it would not keep, and the outputs it has no hash to keep for."""
    from dvc.repo.experiments.utils import exp_refs

    missed = remote_branches_not_kept(Path(repo.root_dir)) if cloud and not scope.all_commits else []
    experiments = [ref.name for ref in exp_refs(repo.scm)]
    releases = list(registered_versions(Path(repo.root_dir)))
    branches, tags = list(repo.scm.list_branches()), list(repo.scm.list_tags())
    return Refs(branches, tags, experiments, missed, releases, unrecorded or {})


def remote_branches_not_kept(root: Path) -> list[str]:
    """Remote-tracking branches whose tip is no local branch's: ``-a`` keeps local branches only,
    so cleaning the shared remote would drop what a teammate pushed there."""

    def tips(prefix: str) -> list[list[str]]:
        listed = subprocess.run(
            ["git", "for-each-ref", "--format=%(objectname) %(refname:lstrip=2)", prefix],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [line.split(" ", 1) for line in listed.splitlines()]

    local = {sha for sha, _ in tips("refs/heads")}
    return [name for sha, name in tips("refs/remotes") if sha not in local and not name.endswith("/HEAD")]


def plan(repo, scope: Scope, cloud: bool, remote: str | None, jobs: int | None = None) -> list[Store]:
    """Every store ``dvc gc`` with this scope would clean, with its unused objects named and sized."""
    used = kept_objects(repo, scope, registered_versions(Path(repo.root_dir)), jobs)
    stores = local_stores(repo, used) + (remote_stores(repo, used, remote) if cloud else [])
    describe(repo, stores, jobs)
    return stores


def run(root: Path, scope: Scope, confirm: bool, cloud: bool, remote: str | None) -> list[Store]:
    """Print the plan; with ``confirm``, remove exactly what it lists."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo, lock_repo
    from dvc.repo.gc import _validate_args

    try:
        _validate_args(**asdict(scope), cloud=cloud, remote=remote)  # dvc gc's own checks
        if cloud:
            _check_shared_branches(root, scope, confirm)
            _check_remote(root, remote)
        with Repo(str(root)) as repo, lock_repo(repo):  # as `dvc gc`: no other DVC command meanwhile
            with dvc_warnings(repo) as caught:
                stores = plan(repo, scope, cloud, remote)
            unrecorded, others = sort_warnings(caught)
            print("\n".join(report(scope, refs(repo, scope, cloud, unrecorded), stores, cloud)))
            for line in others:
                print(f"gc: DVC warned: {line}", file=sys.stderr)
            if confirm:
                for store in stores:
                    remove(store)
    except DvcException as exc:
        raise PipelineError(str(exc).strip().splitlines()[0])
    _print_outcome(stores, confirm, cloud)
    return stores


def remove(store: Store) -> None:
    """Delete exactly the listed objects, as ``dvc gc`` deletes (``dvc_data``'s gc: listings first).

    Not ``Repo.gc`` itself: it takes one ``--rev``, and the registered versions must be kept too."""
    from dvc_data.hashfile.db import get_index
    from dvc_data.hashfile.hash_info import HASH_DIR_SUFFIX

    listings = [oid for oid in store.unused if oid.endswith(HASH_DIR_SUFFIX)]
    for oid in listings:
        store.odb._remove_unpacked_dir(oid)  # DVC 2's unpacked copy of a listing, as dvc gc does
    for oids in (listings, [oid for oid in store.unused if not oid.endswith(HASH_DIR_SUFFIX)]):
        if oids:
            store.odb.fs.remove([store.odb.oid_to_path(oid) for oid in oids])
    if store.unused and store.label.startswith("remote"):
        get_index(store.odb).clear()  # DVC's record of what the remote holds is stale now


def _check_shared_branches(root: Path, scope: Scope, confirm: bool) -> None:
    """Cleaning the shared remote while a teammate's branch is not kept here would drop its data."""
    missed = [] if scope.all_commits or not confirm else remote_branches_not_kept(root)
    if missed:
        raise PipelineError(
            f"{names(missed)}: no local branch points there, so the remote would lose what "
            "they use: `git checkout` each (or `git fetch --prune` if deleted upstream), then rerun"
        )


def _check_remote(root: Path, remote: str | None) -> None:
    """A remote that cannot be reached fails in one line before anything is listed or deleted."""
    from mlpipeline.cache.remote_check import RemoteCheckFailed, check_remote

    try:
        check_remote(root, remote)
    except RemoteCheckFailed as exc:
        raise PipelineError(str(exc))


def _print_outcome(stores: list[Store], confirm: bool, cloud: bool) -> None:
    count, total = sum(len(s.unused) for s in stores), size(sum(s.unused_bytes for s in stores))
    if not count:
        print("gc: nothing to remove")
    elif confirm:
        print(f"gc: removed {count} objects ({total})")
    else:
        remote_hint = "" if cloud else " (CLOUD=1: the remote as well)"
        print(f"gc: dry run, nothing removed: `make gc CONFIRM=1` removes these {count} objects{remote_hint}")


KEEP_ENV = "MLPIPELINE_KEEP"  # `make gc KEEP=...`, handed over untouched by any shell
SCOPE_FLAGS = "-w, -a, -T, --all-experiments, -A, --rev REV, -n N, --date YYYY-MM-DD"


class _Parser(argparse.ArgumentParser):
    """Its mistakes are one ``PipelineError`` line (``stage.run``: exit 2), not usage and a traceback."""

    def error(self, message: str) -> NoReturn:
        raise PipelineError(f"{self.prog}: {message}")


def _date(text: str) -> str:
    """``--date``'s value as ``dvc gc`` takes it (DVC itself fails on any other with a traceback)."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            date.fromisoformat(text)
            return text
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD (e.g. 2026-01-31)")


def _scope_arguments(parser: argparse.ArgumentParser) -> None:
    keep = parser.add_argument_group("what to keep: dvc gc's flags (default: -w -a -T --all-experiments)")
    keep.add_argument("-w", "--workspace", action="store_true")
    keep.add_argument("-a", "--all-branches", action="store_true")
    keep.add_argument("-T", "--all-tags", action="store_true")
    keep.add_argument("--all-experiments", action="store_true")
    keep.add_argument("-A", "--all-commits", action="store_true")
    keep.add_argument("--rev", metavar="REV")
    keep.add_argument("-n", "--num", type=int, metavar="N")
    keep.add_argument("--date", dest="commit_date", type=_date, metavar="YYYY-MM-DD")


def keep_words(text: str) -> list[str]:
    """``KEEP``'s words: scope flags only, so ``KEEP=--confirm`` can never delete anything."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise PipelineError(f"KEEP={text}: {exc}")
    parser = _Parser(prog=f"KEEP={text}", add_help=False)
    _scope_arguments(parser)
    _, unknown = parser.parse_known_args(words)
    if unknown:
        raise PipelineError(
            f"KEEP={text}: {unknown[0]} is not a scope flag: KEEP takes dvc gc's {SCOPE_FLAGS} "
            "(CONFIRM=1 and CLOUD=1 are make variables of their own)"
        )
    return words


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, then the scope flags ``make gc`` passes in ``MLPIPELINE_KEEP``."""
    parser = _Parser(prog="python -m mlpipeline.cache.gc", description=__doc__.split("\n")[0])
    parser.add_argument("--confirm", action="store_true", help="remove what the listing shows")
    parser.add_argument("-c", "--cloud", action="store_true", help="the default remote too")
    parser.add_argument("-r", "--remote", help="this remote instead of the default one (with --cloud)")
    _scope_arguments(parser)
    words = list(sys.argv[1:] if argv is None else argv)
    return parser.parse_args(words + keep_words(os.environ.get(KEEP_ENV, "")))


def main(argv: Sequence[str] | None = None) -> None:
    for name in ("dvc", "dvc_objects", "dvc_data"):  # `import dvc` gave them handlers: print once
        logging.getLogger(name).propagate = False
    args = parse_args(argv)
    if args.remote and not args.cloud:
        raise PipelineError("--remote names the remote to clean: use it with --cloud (CLOUD=1)")
    scope = Scope(**{key: getattr(args, key) for key in asdict(DEFAULT_SCOPE)})
    run(Path.cwd(), scope if scope != Scope() else DEFAULT_SCOPE, args.confirm, args.cloud, args.remote)


if __name__ == "__main__":
    stage.run("gc", main)
