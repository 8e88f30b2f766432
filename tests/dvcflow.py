"""Helpers for tests that drive DVC in throwaway repos: run it, read what it did, compare outputs.

Generic over stages: outputs come from ``dvc.lock`` and the stages that ran from DVC's own
output, so the same helpers serve whatever ``dvc.yaml`` declares.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from conftest import REPO_ROOT, run, set_params
from conftest_s3 import S3Remote

# Overrides of params.yaml that make the whole pipeline run in seconds.
TINY_PARAMS = REPO_ROOT / "tests" / "tiny_params.yaml"

_RAN = re.compile(r"^Running stage '([^']+)'", re.MULTILINE)
_RESTORED = re.compile(r"^Stage '([^']+)' is cached - skipping run", re.MULTILINE)


def dvc(
    repo: Path,
    *args: str,
    check: bool = True,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run dvc in ``repo`` with that copy's own code first on the import path (``log``: see ``run``)."""
    return run(
        ["dvc", *args], repo, check=check, env={"PYTHONPATH": str(repo / "src"), **(env or {})}, log=log
    )


def stages_ran(output: str) -> list[str]:
    """The stages a ``dvc repro``/``dvc exp run`` executed, in order, from its stdout."""
    return _RAN.findall(output)


def stages_restored(output: str) -> list[str]:
    """The stages DVC restored from the run-cache instead of running them."""
    return _RESTORED.findall(output)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: the dotted keys ``set_params`` takes."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def use_tiny_params(repo: Path) -> None:
    """Merge ``tests/tiny_params.yaml`` into ``repo``'s params so the whole pipeline runs fast."""
    if TINY_PARAMS.exists():
        set_params(repo, flatten(yaml.safe_load(TINY_PARAMS.read_text()) or {}))


def locked_outputs(repo: Path, stages: list[str] | None = None) -> list[Path]:
    """Every output (outs, metrics, plots) that ``dvc.lock`` records for ``stages`` (default: all)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return [
        repo / out["path"]
        for name, stage in lock.items()
        if stages is None or name in stages
        for out in stage.get("outs", [])
    ]


def file_digests(repo: Path, paths: list[Path]) -> dict[str, str]:
    """md5 of every file under ``paths``, keyed by path relative to ``repo`` (comparable across clones)."""
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*"))) if f.is_file()]
    return {f.relative_to(repo).as_posix(): hashlib.md5(f.read_bytes()).hexdigest() for f in files}


def output_digests(repo: Path, stages: list[str] | None = None) -> dict[str, str]:
    """md5 of every file of every output ``dvc.lock`` records for ``stages``."""
    return file_digests(repo, locked_outputs(repo, stages))


def assert_up_to_date(repo: Path, *targets: str) -> None:
    """``dvc repro`` runs nothing and ``dvc status`` reports nothing."""
    again = dvc(repo, "repro", *targets)
    assert stages_ran(again.stdout) == [], again.stdout
    assert json.loads(dvc(repo, "status", "--json", *targets).stdout) == {}


def commit_all(repo: Path, message: str) -> None:
    """Commit everything git sees (dvc.lock, uncached metrics), if anything changed."""
    run(["git", "add", "-A"], repo)
    if run(["git", "diff", "--cached", "--quiet"], repo, check=False).returncode:
        run(["git", "commit", "-qm", message], repo)


def git_clone(source: Path, dest: Path) -> Path:
    """A fresh clone: git-tracked files only, no DVC cache, no ``.dvc/config.local``."""
    run(["git", "clone", "-q", str(source), str(dest)], dest.parent)
    return dest


def make_producer(repo: Path, remote: S3Remote) -> Path:
    """The first machine: the project with the tests' tiny params, committed, using ``remote``."""
    use_tiny_params(repo)
    commit_all(repo, "tiny params for tests")
    remote.configure(repo)
    return repo


def make_consumer(producer: Path, remote: S3Remote, dest: Path) -> Path:
    """Another machine: a fresh clone of the producer's commit, configured for the same remote."""
    clone = git_clone(producer, dest)
    remote.configure(clone)
    return clone


def make(repo: Path, *args: str, check: bool = True, env: dict[str, str] | None = None):
    """Run a make target in ``repo`` with this test run's venv, never reinstalling it."""
    venv = Path(sys.prefix)
    stamp = venv / ".installed"  # -o: take `setup` as done whatever the files' dates
    command = ["make", "--no-print-directory", "-o", str(stamp), *args, f"VENV={venv}"]
    return run(command, repo, check=check, env={"PYTHONPATH": str(repo / "src"), **(env or {})})
