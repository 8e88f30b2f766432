"""Where an unused cache object came from, for ``make gc``'s listing: the output it was and the
commit whose ``dvc.lock`` or ``.dvc`` file recorded it, or else the run whose run-cache entry did.

Advice only: what is kept is decided by DVC itself (``mlpipeline.cache.gc``). The files are
read straight from git (one ``git log``, one ``git cat-file --batch``) rather than through
DVC's index commit by commit, which costs 0.3 to 0.7 s a commit here: minutes for a dry run on
a long history, against milliseconds for the documented dvc.lock / .dvc format (about 9 ms for this
repository's 12 KB dvc.lock with DVC's YAML 1.2 reader).
"""

from __future__ import annotations

import posixpath
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from pathlib import Path
from typing import Any

# Every file that records output hashes: root and nested dvc.lock files, and `dvc add`'s .dvc files.
METAFILES = ("dvc.lock", "*/dvc.lock", "*.dvc")

# (where the files were found, [(metafile path, its bytes)]): newest first.
Source = tuple[str, list[tuple[str, bytes]]]


@dataclass(frozen=True)
class Origin:
    output: str  # the output as dvc.lock / the .dvc file names it ("models", "data/raw")
    source: str  # 'from commit 1a2b3c4 (2025-11-25) "lr 0.006"', 'from a run no commit records (...)'
    rank: int = 0  # 0 for the newest source, then 1, 2...: listings keep that order


def find_origins(
    root: Path, runs_dir: Path, oids: Iterable[str], dir_entries: Callable[[str], list[str]]
) -> dict[str, Origin]:
    """Name as many of ``oids`` as the git history, then the run-cache, can: newest source first.

    ``dir_entries(oid)`` lists the objects of a directory (``.dir``) object among ``oids``.
    """
    pending, found = set(oids), {}
    for rank, (label, files) in enumerate(chain(_commits(root), _runs(runs_dir))):
        for metafile, data in files:
            for output, oid in _outputs(metafile, data):
                members = [oid, *dir_entries(oid)] if oid in pending and oid.endswith(".dir") else [oid]
                for member in pending.intersection(members):
                    found[member] = Origin(output, label, rank)
                    pending.discard(member)
        if not pending:
            break
    return found


def _commits(root: Path) -> Iterator[Source]:
    """Each commit (any ref) that added or changed a metafile, with those files' contents."""
    log = _git(
        root,
        "-c",
        "core.quotePath=false",  # names as they are: cat-file takes them back
        "log",
        "--all",
        "--relative",
        "--diff-filter=d",
        "--name-only",
        "--format=%x00%h %cs %s",
        "--",
        *METAFILES,
    )
    commits = []
    for block in log.decode().split("\0")[1:]:
        header, *paths = block.strip("\n").split("\n")
        sha, date, subject = header.split(" ", 2)  # the subject may be empty, never the space
        commits.append((f'from commit {sha} ({date}) "{subject}"', sha, [p for p in paths if p]))
    blobs = iter(_read_blobs(root, [f"{sha}:./{path}" for _, sha, paths in commits for path in paths]))
    for label, _, paths in commits:
        yield label, [(path, next(blobs)) for path in paths]


def _git(root: Path, *args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(["git", *args], cwd=root, input=stdin, capture_output=True, check=True).stdout


def _read_blobs(root: Path, specs: list[str]) -> list[bytes]:
    """The contents of ``rev:path`` objects, in order, from one ``git cat-file --batch``."""
    out = _git(root, "cat-file", "--batch", stdin="".join(f"{spec}\n" for spec in specs).encode())
    blobs, position = [], 0
    for _ in specs:
        end = out.index(b"\n", position)
        header, position = out[position:end], end + 1  # "<oid> blob <size>" or "<spec> missing"
        if header.endswith(b" missing"):
            blobs.append(b"")
            continue
        size = int(header.rsplit(b" ", 1)[1])
        blobs.append(out[position : position + size])
        position += size + 1  # the contents, then a newline
    return blobs


def _runs(runs_dir: Path) -> Iterator[Source]:
    """DVC's run-cache entries (lock entries of every run, committed or not), newest first."""
    entries = [path for path in runs_dir.glob("*/*/*") if path.is_file()] if runs_dir.is_dir() else []
    for entry in sorted(entries, key=lambda path: path.stat().st_mtime, reverse=True):
        when = datetime.fromtimestamp(entry.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
        yield f"from a run no commit records ({when})", [("", entry.read_bytes())]


def _outputs(metafile: str, data: bytes) -> Iterator[tuple[str, str]]:
    """(output path, md5) of each output a dvc.lock, .dvc file or run-cache entry records."""
    from dvc.utils.serialize import YAMLError, parse_yaml

    try:  # DVC's own reader (YAML 1.2): PyYAML would read an output named `yes` as true
        content = parse_yaml(data.decode("utf-8", errors="replace"), metafile)
    except YAMLError:
        return
    if not isinstance(content, dict):
        return
    stages = content.get("stages") if posixpath.basename(metafile) == "dvc.lock" else {"": content}
    base = posixpath.dirname(metafile)
    for stage in (stages or {}).values():
        for out in _as_list(stage.get("outs") if isinstance(stage, dict) else None):
            if isinstance(out, dict) and out.get("md5") and out.get("path"):
                yield posixpath.join(base, out["path"]), str(out["md5"])


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
