"""``make gc``: the listing names what ``dvc gc`` would remove and why, and is exactly what it
removes; whatever a kept revision needs survives, in the cache and on the S3 remote.

The flow runs on a copy of a trained history (two models) plus one small tracked folder in a
state per scope: a tag, an old commit, main's tip, another branch, an experiment, the
workspace, and a file added then dropped. Naming origins and the scope rules run fast.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from conftest import REPO_ROOT, run
from conftest_history import TrainedHistory, head
from conftest_s3 import S3Remote
from dvc.repo import Repo  # at import: DVC's console handlers keep the streams of the importing test
from dvcflow import commit_all, dvc, git_clone, make

from mlpipeline.cache import gc as cache_gc
from mlpipeline.cache.gc import DEFAULT_SCOPE, Scope, Store
from mlpipeline.cache.listing import RUN_CACHE_COPIES, UNNAMED, store_lines
from mlpipeline.cache.origins import Origin, find_origins
from mlpipeline.core.errors import PipelineError


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def dvc_file(*outs: tuple[str, str]) -> str:
    return "outs:\n" + "".join(f"- md5: {oid}\n  path: {path}\n" for path, oid in outs)


def lock_file(stage: str, *outs: tuple[str, str]) -> str:
    entries = "".join(f"    - path: {path}\n      hash: md5\n      md5: {oid}\n" for path, oid in outs)
    return f"schema: '2.0'\nstages:\n  {stage}:\n    cmd: make it\n    outs:\n{entries}"


def commit_files(repo: Path, message: str, files: dict[str, str]) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", message], repo)
    return head(repo)[:7]


def test_origins_come_from_the_newest_commit_then_the_run_cache(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q", "-b", "main"], repo)
    old = commit_files(repo, "old data", {"data.dvc": dvc_file(("data", "a" * 32))})
    new = commit_files(
        repo,
        "new data, a nested pipeline",
        {
            "data.dvc": dvc_file(("data", "b" * 32)),
            "sub/dvc.lock": lock_file("fit", ("model", "c" * 32 + ".dir")),
            "raw images/données.dvc": dvc_file(("données", "9" * 32)),  # a name git would quote
        },
    )
    commit_files(repo, "back to the old data", {"data.dvc": dvc_file(("data", "a" * 32)), "junk.dvc": ": ["})
    runs = tmp_path / "runs"
    (runs / "ab" / "abcd").mkdir(parents=True)
    (runs / "ab" / "abcd" / "entry").write_text("cmd: x\nouts:\n- path: reports/plot.png\n  md5: " + "e" * 32)

    entries = {"c" * 32 + ".dir": ["d" * 32]}
    oids = ["a" * 32, "b" * 32, "c" * 32 + ".dir", "d" * 32, "e" * 32, "f" * 32, "9" * 32]
    found = find_origins(repo, runs, oids, lambda oid: entries.get(oid, []))

    named = {oid[0]: (origin.output, origin.source) for oid, origin in found.items()}
    assert named["a"] == ("data", named["a"][1]) and '"back to the old data"' in named["a"][1]
    assert all(old not in source for _, source in named.values())  # the newest commit names it
    assert named["b"][0] == "data" and named["b"][1].startswith(f"from commit {new} (")
    assert named["c"] == named["d"] == ("sub/model", named["b"][1])  # a listing names its files
    assert named["9"] == ("raw images/données", named["b"][1])
    assert named["e"][0] == "reports/plot.png"
    assert named["e"][1].startswith("from a run no commit records (")
    assert "f" not in named  # recorded nowhere


def test_origins_read_metafiles_as_dvc_does(tmp_path: Path) -> None:
    """YAML 1.2, as DVC writes and reads dvc.lock: outputs named `yes`, `off` or `1:20` are paths
    (YAML 1.1 makes them true, false and 80)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q", "-b", "main"], repo)
    lock = lock_file("fit", ("yes", "a" * 32), ("off", "b" * 32), ("1:20", "c" * 32))
    commit_files(repo, "odd names", {"dvc.lock": lock})
    found = find_origins(repo, tmp_path / "runs", ["a" * 32, "b" * 32, "c" * 32], lambda oid: [])
    assert {oid[0]: origin.output for oid, origin in found.items()} == {"a": "yes", "b": "off", "c": "1:20"}


def test_the_listing_groups_objects_by_output_and_source() -> None:
    store = Store("local cache .dvc/cache/files/md5", odb=None, kept=5, unused=["1", "2", "3", "4", "5"])
    store.sizes = {"1": 2_000_000, "2": 500_000, "3": 300, "4": 1200, "5": 10}
    model = Origin("models", 'from commit 1a2b3c4 (2025-11-25) "lr 0.006"', rank=2)
    store.origins = {"1": model, "2": model, "3": Origin("reports/metrics.json", "from commit x", 0)}
    store.origins["5"] = Origin("data/raw", "from a run no commit records (2025-11-25 10:00)", rank=9)
    store.git_tracked = {"reports/metrics.json"}
    lines = store_lines(store)
    assert lines[0] == "local cache .dvc/cache/files/md5: keeps 5 objects, 5 unused (2.5 MB):"
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[1:]]
    assert rows == [
        [RUN_CACHE_COPIES.output, "1 object", "300 B", RUN_CACHE_COPIES.source],
        [UNNAMED.output, "1 object", "1.2 KB", UNNAMED.source],
        ["data/raw", "1 object", "10 B", "from a run no commit records (2025-11-25 10:00)"],
        ["models", "2 objects", "2.5 MB", 'from commit 1a2b3c4 (2025-11-25) "lr 0.006"'],
    ]
    assert store_lines(Store("remote s3://b/p", None, kept=3, unused=[])) == [
        "remote s3://b/p: keeps its 3 objects, nothing to remove"
    ]


def test_the_scope_speaks_dvc_gc_flags() -> None:
    assert DEFAULT_SCOPE.flags() == "-w -a -T --all-experiments"
    assert Scope(all_branches=True, num=3, commit_date="2025-01-31").flags() == "-a -n 3 --date 2025-01-31"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-n", "2"], "`--num` can only be used alongside `--rev` or `--all-branches`"),
        (["--remote", "storage"], "--remote names the remote to clean: use it with --cloud (CLOUD=1)"),
        (
            ["--date", "yesterday"],
            "python -m mlpipeline.cache.gc: argument --date: 'yesterday' is not a date",
        ),
        (["--date", "2026-13-45"], "python -m mlpipeline.cache.gc: argument --date: '2026-13-45' is not a"),
        (["--num", "x"], "python -m mlpipeline.cache.gc: argument -n/--num: invalid int value: 'x'"),
    ],
)
def test_scope_mistakes_are_refused_before_anything_is_read(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # not even a repository: the flags are judged first
    with pytest.raises(PipelineError) as raised:
        cache_gc.main(argv)
    assert str(raised.value).startswith(message)


def dvc_project(path: Path) -> Path:
    """An empty DVC project, committed."""
    path.mkdir()
    run(["git", "init", "-q", "-b", "main"], path)
    Repo.init(str(path)).close()
    commit_files(path, "dvc init", {})
    return path


def test_an_empty_cache_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache_gc.run(dvc_project(tmp_path / "project"), DEFAULT_SCOPE, confirm=True, cloud=False, remote=None)
    assert capsys.readouterr().out.splitlines()[-5:] == [
        "  branches (-a): main",
        "  tags (-T): (none)",
        "  experiments (--all-experiments): (none)",
        "the local cache holds no objects",
        "gc: nothing to remove",
    ]


def test_gc_refuses_while_another_dvc_command_holds_the_repository(tmp_path: Path) -> None:
    """As `dvc gc`: under DVC's repo lock, so a `dvc add` meanwhile cannot lose a fresh object."""
    repo = dvc_project(tmp_path / "project")
    refused = pytest.raises(PipelineError, match=r"^Unable to acquire lock")
    with Repo(str(repo)) as other, other.lock, refused:
        cache_gc.run(repo, DEFAULT_SCOPE, confirm=True, cloud=False, remote=None)


def test_an_output_no_commit_recorded_is_named_in_the_listing_not_in_dvc_warnings(tmp_path: Path) -> None:
    """A commit whose dvc.yaml has a stage its dvc.lock does not record yet: DVC warns once per such
    commit walked (-A, -n, --date); the listing names the output and the commits instead."""
    repo = dvc_project(tmp_path / "project")
    stage = "stages:\n  mk:\n    cmd: echo made > made.txt\n    outs:\n    - made.txt\n"
    unlocked = commit_files(repo, "a stage, not run", {"dvc.yaml": stage})
    dvc(repo, "repro", "-q")
    commit_all(repo, "run")

    gc = run(
        ["python", "-m", "mlpipeline.cache.gc"],
        repo,
        env={"PYTHONPATH": str(REPO_ROOT / "src"), "MLPIPELINE_KEEP": "-A"},
    )
    assert gc.stderr == ""
    assert (
        f"  made.txt: no hash recorded in {unlocked} (not run there yet): nothing of it to keep" in gc.stdout
    )
    assert "gc: nothing to remove" in gc.stdout


def test_gc_shows_progress_while_it_walks_commits(tmp_path: Path) -> None:
    """`make gc KEEP="--date ..."` once walked 87 commits for 151 s without a word."""
    repo = dvc_project(tmp_path / "project")
    for number in range(3):
        commit_files(repo, f"commit {number}", {"notes.txt": f"{number}\n"})

    gc = run(
        ["python", "-m", "mlpipeline.cache.gc"],
        repo,
        env={
            "PYTHONPATH": str(REPO_ROOT / "src"),
            "MLPIPELINE_KEEP": "-A",
            "MLPIPELINE_PROGRESS_INTERVAL": "0",
        },
    )
    walked = [line for line in gc.stderr.splitlines() if line.startswith("gc: reading commits: ")]
    assert walked and walked[-1].startswith("gc: reading commits: 5/5 commits (100%) in ")  # the workspace, 4
    assert "gc: nothing to remove" in gc.stdout


def test_dvc_warnings_are_sorted_once_each() -> None:
    missing = "Output 'a/b'(stage: '../../dvc.yaml:mk') is missing version info. Cache for it will not be"
    caught = [("abc1234", missing), ("abc1234", missing), ("def5678", missing), ("the workspace", missing)]
    caught += [("abc1234", "something else\nsecond line"), ("def5678", "something else\nsecond line")]
    assert cache_gc.sort_warnings(caught) == (
        {"a/b": ["abc1234", "def5678", "the workspace"]},
        ["something else"],
    )


def test_cleaning_the_shared_remote_waits_for_branches_only_a_teammate_has(tmp_path: Path) -> None:
    origin = dvc_project(tmp_path / "origin")
    run(["git", "checkout", "-q", "-b", "feature"], origin)
    commit_files(origin, "a teammate's work", {"note.txt": "trained elsewhere"})
    mine = git_clone(origin, tmp_path / "mine")  # local branch: feature only (origin's HEAD)
    run(["git", "checkout", "-q", "main"], mine)
    run(["git", "branch", "-q", "-D", "feature"], mine)
    assert cache_gc.remote_branches_not_kept(mine) == ["origin/feature"]

    with pytest.raises(PipelineError, match=r"^origin/feature: no local branch points there"):
        cache_gc.run(mine, DEFAULT_SCOPE, confirm=True, cloud=True, remote=None)
    run(["git", "checkout", "-q", "feature"], mine)
    assert cache_gc.remote_branches_not_kept(mine) == []


def test_the_documented_lifecycle_rules_are_valid_s3_rules_for_the_remote_prefix() -> None:
    """docs/remote.md's bucket rules are what `aws s3api put-bucket-lifecycle-configuration` takes,
    and they cover the prefix `.dvc/config` names (botocore checks them against S3's own API model)."""
    import botocore.session
    from botocore.validate import validate_parameters

    page = (REPO_ROOT / "docs" / "remote.md").read_text()
    section = page[page.index("## Keeping the cache and the bucket in check") :]
    rules = json.loads(re.search(r"```json\n(.*?)```", section, re.DOTALL).group(1))
    s3 = botocore.session.get_session().get_service_model("s3")
    shape = s3.operation_model("PutBucketLifecycleConfiguration").input_shape
    validate_parameters({"Bucket": "ml-team-bucket", "LifecycleConfiguration": rules}, shape)
    url = re.search(r"url = s3://[^/]+/(\S+)", (REPO_ROOT / ".dvc" / "config").read_text()).group(1)
    assert {rule["Filter"]["Prefix"].split("/")[0] for rule in rules["Rules"]} == {url}
    assert not any("Expiration" in rule and "/files/" in rule["Filter"]["Prefix"] for rule in rules["Rules"])


# --- the flow, against the local S3 server ---------------------------------------------------

EXTRA = "data/extra"
SHARED = b"the same in every version\n"


def track_extra(repo: Path, version: str) -> set[str]:
    """``data/extra`` at ``version``, added to DVC; the objects only this version has."""
    extra = repo / EXTRA
    extra.mkdir(exist_ok=True)
    (extra / "shared.txt").write_bytes(SHARED)
    (extra / "version.txt").write_text(version)
    dvc(repo, "add", EXTRA)
    listing = yaml_md5(repo / f"{EXTRA}.dvc")
    return {listing, md5(version.encode())}


def yaml_md5(dvc_path: Path) -> str:
    return re.search(r"md5: (\S+)", dvc_path.read_text()).group(1)


def objects_under(root: Path) -> set[str]:
    """Object ids stored under a ``files/md5`` folder (a cache's or the remote's), temp files aside."""
    if not root.exists():
        return set()
    return {
        f"{p.parent.name}{p.name}" for p in root.glob("??/*") if p.is_file() and not p.name.startswith(".")
    }


def model_objects(repo: Path, rev: str) -> set[str]:
    """``models``' objects at ``rev``: its listing (``.dir``) and the files the listing names."""
    lock = run(["git", "show", f"{rev}:dvc.lock"], repo).stdout
    listing = re.search(r"path: models\n\s+hash: md5\n\s+md5: (\S+)", lock).group(1)
    path = repo / ".dvc" / "cache" / "files" / "md5" / listing[:2] / listing[2:]
    return {listing} | {entry["md5"] for entry in json.loads(path.read_text())}


@pytest.mark.slow
@pytest.mark.s3
def test_gc_lists_then_removes_exactly_what_no_kept_revision_uses(
    history_repo: Path, trained_history: TrainedHistory, s3_remote: S3Remote, tmp_path: Path
) -> None:
    repo = history_repo
    only = {}  # the objects only one state of data/extra has
    commits = {}
    for state in ("tagged", "old", "tip"):
        only[state] = track_extra(repo, state)
        commit_all(repo, f"extra: {state}")
        commits[state] = head(repo)
    run(["git", "tag", "extra-tagged", commits["tagged"]], repo)
    run(["git", "checkout", "-q", "-b", "trial"], repo)
    only["branch"] = track_extra(repo, "branch")
    commit_all(repo, "extra: branch")
    run(["git", "checkout", "-q", "main"], repo)
    only["experiment"] = track_extra(repo, "experiment")
    dvc(repo, "push", f"{EXTRA}.dvc")
    dvc(repo, "exp", "save", "-n", "extra-exp")
    only["workspace"] = track_extra(repo, "workspace")  # dvc-added, not committed
    (repo / "scratch.bin").write_bytes(b"added, pushed, then dropped")
    dvc(repo, "add", "scratch.bin")
    dvc(repo, "push", "--all-commits")
    dvc(repo, "remove", "--outs", "scratch.bin.dvc")
    old_model = model_objects(repo, trained_history.first) - model_objects(repo, trained_history.second)
    cache, remote = repo / ".dvc" / "cache" / "files" / "md5", s3_remote.directory / "files" / "md5"
    before = (objects_under(cache), objects_under(remote))

    listing = make(repo, "gc", "CLOUD=1").stdout
    assert (objects_under(cache), objects_under(remote)) == before, "a dry run deleted something"
    assert "keeping what these use (dvc gc -w -a -T --all-experiments):" in listing
    for line in ("branches (-a): main, trial", "tags (-T): extra-tagged", "(--all-experiments): extra-exp"):
        assert line in listing, listing
    rows = {line.split()[0]: line for line in listing.splitlines() if line.startswith("  ")}
    assert f"from commit {trained_history.first[:7]}" in rows["models"], listing
    assert f"from commit {commits['old'][:7]}" in rows[EXTRA], listing
    assert "in no commit or run-cache entry" in rows["(unnamed)"], listing

    with Repo(str(repo)) as dvc_repo:
        stores = cache_gc.plan(dvc_repo, DEFAULT_SCOPE, cloud=True, remote=None)
    # DVC 3's stores (files/md5), which objects_under counts: DVC 2's legacy ones hold only what
    # DVC writes there itself (the listing of a directory dep such as data/weights).
    unused = {
        where: set().union(
            *(set(s.unused) for s in stores if s.label.startswith(where) and s.label.endswith("files/md5"))
        )
        for where in ("local", "remote")
    }
    dropped = {md5(b"added, pushed, then dropped")}
    for where in ("local", "remote"):
        assert old_model | only["old"] | dropped <= unused[where], where
        kept = set().union(*(only[state] for state in ("tagged", "tip", "branch", "experiment", "workspace")))
        assert not kept & unused[where], where

    make(repo, "gc", "CONFIRM=1", "CLOUD=1")
    assert before[0] - objects_under(cache) == unused["local"]
    assert before[1] - objects_under(remote) == unused["remote"]
    assert not (old_model | only["old"] | dropped) & (objects_under(cache) | objects_under(remote))

    # What each kept revision needs is still there: a fresh clone checks it out and pulls it all
    # (`dvc pull` fails if any object is missing).
    for rev, state in (("extra-tagged", "tagged"), ("trial", "branch"), ("main", "tip")):
        clone = git_clone(repo, tmp_path / f"clone-{rev}")
        s3_remote.configure(clone)
        run(["git", "checkout", "-q", rev], clone)
        dvc(clone, "pull")
        assert (clone / EXTRA / "version.txt").read_text() == state
    dvc(clone, "exp", "pull", "origin", "extra-exp")  # main's clone: the experiment's base
    dvc(clone, "exp", "apply", "extra-exp")
    assert (clone / EXTRA / "version.txt").read_text() == "experiment"
    # The workspace's own version comes back from the local cache.
    run(["rm", "-rf", EXTRA], repo)
    dvc(repo, "checkout", f"{EXTRA}.dvc")
    assert (repo / EXTRA / "version.txt").read_text() == "workspace"
