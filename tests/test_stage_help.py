"""Every stage module answers ``--help`` with what it does and the params it reads, and runs
nothing: ``python -m mlpipeline.stages.train --help`` used to start training."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

STAGES = list(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"])
SRC_ON_PATH = {
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")]))
}


def stage_module(stage: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"mlpipeline.stages.{stage}", *args],
        cwd=cwd,
        env={**os.environ, **SRC_ON_PATH},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("stage", STAGES)
def test_help_says_what_the_stage_does_and_reads_and_runs_nothing(stage: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty"  # no params.yaml, no data: a run would fail at once
    empty.mkdir()
    done = stage_module(stage, "--help", cwd=empty)
    assert done.returncode == 0, done.stderr
    assert f"python -m mlpipeline.stages.{stage}" in done.stdout
    assert f"Params: the {stage} section of params.yaml" in done.stdout
    for key in yaml.safe_load((REPO_ROOT / "params.yaml").read_text())[stage]:
        assert f"  {stage}.{key}" in done.stdout, key
    assert list(empty.iterdir()) == []


def test_any_other_argument_is_refused(tmp_path: Path) -> None:
    done = stage_module("train", "--epochs", "3", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].endswith("error: unrecognized arguments: --epochs 3")
