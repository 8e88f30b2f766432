"""Shared fixtures: the repository's own params, and throwaway copies of the repo for DVC runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]

# The local S3 server and per-test remotes (tests marked s3); a trained history shared by flows.
pytest_plugins = ["conftest_s3", "conftest_history"]

# Commands run as from a user's shell, not as sub-makes of `make test`: its variables would make a
# nested make print `make[1]:` and pass its flags down.
for _parent_make in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES"):
    os.environ.pop(_parent_make, None)

# A git identity for repos the tests create: CI machines may have none.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "pipeline-tests",
    "GIT_AUTHOR_EMAIL": "tests@example.invalid",
    "GIT_COMMITTER_NAME": "pipeline-tests",
    "GIT_COMMITTER_EMAIL": "tests@example.invalid",
}


def run(
    cmd: list[str],
    cwd: Path,
    check: bool = True,
    env: dict[str, str] | None = None,
    timeout: int = 900,
    log: Path | None = None,
):
    """Run a command with the venv's bin first on PATH; on failure show its output.

    Output is captured through pipes, or written to ``log`` (then read back as ``stdout``) for
    commands that leave a background process behind: it inherits the pipes, and reading them to
    the end would wait for it too.
    """
    full_env = {**os.environ, **GIT_ENV, **(env or {})}
    full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}"
    options = dict(cwd=cwd, env=full_env, text=True, timeout=timeout)
    if log is None:
        result = subprocess.run(cmd, capture_output=True, **options)
    else:
        with open(log, "w") as out:
            result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, **options)
        result.stdout, result.stderr = log.read_text(), ""
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def repo_params() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def set_params(repo: Path, overrides: dict[str, Any]) -> None:
    """Set dotted keys (``"ingest.seed": 3``) in ``repo``'s params.yaml."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def copy_repo(dest: Path, commit: bool = True) -> Path:
    """Copy the project's files (tracked and new, not ignored) into a fresh git repo at ``dest``.

    DVC outputs, caches and the virtualenv stay behind, so the copy is what a
    fresh clone holds.
    """
    listed = (
        subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO_ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    dest.mkdir(parents=True, exist_ok=True)
    for rel in filter(None, listed):
        source = REPO_ROOT / rel
        if source.is_file():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    run(["git", "init", "-q", "-b", "main"], dest)
    if commit:
        run(["git", "add", "-A"], dest)
        run(["git", "commit", "-qm", "copy of the pipeline"], dest)
    return dest


@pytest.fixture
def pipeline_repo(tmp_path: Path) -> Path:
    """A committed copy of the repository in a temporary directory."""
    return copy_repo(tmp_path / "repo")


@pytest.fixture(autouse=True)
def torch_global_state():
    """Restore the process-wide torch settings a test may change (training's ``configure`` sets
    them for its device), so no test's outcome depends on the tests that ran before it."""
    import torch

    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.get_num_threads(),
    )
    yield
    deterministic, warn_only, benchmark, threads = saved
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark
    torch.set_num_threads(threads)
