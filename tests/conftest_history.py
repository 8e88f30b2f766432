"""A trained history shared by the model-version and cache-cleaning flows: built once a session.

Two commits of the whole pipeline with the tests' tiny params: ``first`` trained as
``params.yaml`` says, ``second`` with the learning rate doubled (only train and evaluate rerun,
so the two differ in the model and its reports, not in the data). Each test works on its own
copy (``history_repo``), DVC cache included: training twice per test would double its time.
Loaded by ``tests/conftest.py`` through ``pytest_plugins``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import copy_repo, run, set_params
from conftest_s3 import S3Remote
from dvcflow import commit_all, dvc, use_tiny_params


@dataclass(frozen=True)
class TrainedHistory:
    root: Path
    first: str  # sha of the first trained commit
    second: str  # sha of the second (lr doubled): main's tip


def head(repo: Path) -> str:
    return run(["git", "rev-parse", "HEAD"], repo).stdout.strip()


@pytest.fixture(scope="session")
def trained_history(tmp_path_factory: pytest.TempPathFactory) -> TrainedHistory:
    repo = copy_repo(tmp_path_factory.mktemp("history") / "repo")
    use_tiny_params(repo)
    dvc(repo, "repro")
    commit_all(repo, "model A: tiny params")
    first = head(repo)
    lr = yaml.safe_load((repo / "params.yaml").read_text())["train"]["lr"]
    set_params(repo, {"train.lr": 2 * lr})
    dvc(repo, "repro")
    commit_all(repo, "model B: lr doubled")
    return TrainedHistory(repo, first, head(repo))


@pytest.fixture
def history_repo(trained_history: TrainedHistory, s3_remote: S3Remote, tmp_path: Path) -> Path:
    """This test's own copy of the history (git, workspace, DVC cache), its remote on S3."""
    repo = shutil.copytree(trained_history.root, tmp_path / "repo", symlinks=True)
    s3_remote.configure(repo)
    return repo
