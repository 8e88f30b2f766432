"""Checkpoints that outlive the machine: on the S3 remote's bucket (``MLPIPELINE_CHECKPOINT_DIR``),
written by one clone stopped by SIGTERM, found and resumed by a second clone at the same commit
(another machine: nothing shared but the bucket), with the credentials of its DVC remote in its
``.dvc/config.local`` and none in the environment; removed once the model is written."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from conftest import copy_repo, run
from conftest_s3 import S3Remote
from dvcflow import dvc
from gloo import free_port
from test_multinode import write_node
from test_preemption import start_stage, wait_for_line
from test_train_stage import STAGE, outputs

from mlpipeline.training.checkpoint_store import LOCATION_ENV
from mlpipeline.training.stopping import EXIT_REQUEUE

pytestmark = [pytest.mark.slow, pytest.mark.s3]

AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


@pytest.fixture
def machines(tmp_path: Path, s3_remote: S3Remote, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Two clones at one commit, each with the training inputs and its DVC remote on the server."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    first = copy_repo(tmp_path / "first")
    run(["git", "clone", "-q", str(first), str(tmp_path / "second")], tmp_path)
    for clone in (first, tmp_path / "second"):
        s3_remote.configure(clone)
        write_node(clone, nodes=1)
    return first, tmp_path / "second"


def test_a_checkpoint_on_s3_is_found_and_resumed_by_a_second_clone(
    machines: tuple[Path, Path], s3_remote: S3Remote, tmp_path: Path
) -> None:
    first, second = machines
    whole = write_node(tmp_path / "whole", nodes=1)
    run(STAGE, whole, env={"PYTHONPATH": str(first / "src")})
    location = f"{s3_remote.url}/checkpoints"
    stopped = start_stage(
        first, tmp_path / "first.log", **{LOCATION_ENV: location, "PYTHONPATH": str(first / "src")}
    )
    wait_for_line(stopped, tmp_path / "first.log", "train: epoch 1/")
    time.sleep(random.uniform(0, 0.5))
    stopped.send_signal(signal.SIGTERM)

    assert stopped.wait(timeout=300) == EXIT_REQUEUE, (tmp_path / "first.log").read_text()
    assert f"checkpoint saved to {location}/" in (tmp_path / "first.log").read_text()
    saved = list((s3_remote.directory / "checkpoints").glob("*/latest.ckpt"))
    assert len(saved) == 1 and not (first / ".cache").exists()

    resumed = run(STAGE, second, env={LOCATION_ENV: location, "PYTHONPATH": str(second / "src")})
    assert "resuming after epoch " in resumed.stderr and f"from {location}/" in resumed.stderr
    assert outputs(second) == outputs(whole)
    assert not list((s3_remote.directory / "checkpoints").rglob("*.ckpt"))  # removed with the run


def test_an_unreachable_checkpoint_bucket_is_one_line(machines: tuple[Path, Path]) -> None:
    """The bucket's DVC remote (in config.local) points at a port nobody listens on."""
    first, _ = machines
    dvc(first, "remote", "add", "--local", "dead", "s3://dead-bucket/cache")
    dvc(first, "remote", "modify", "--local", "dead", "endpointurl", f"http://127.0.0.1:{free_port()}")
    location = "s3://dead-bucket/checkpoints"
    failed = run(STAGE, first, check=False, env={LOCATION_ENV: location, "PYTHONPATH": str(first / "src")})
    assert failed.returncode == 2
    (line,) = failed.stderr.splitlines()
    assert line.startswith(f"train: error: {LOCATION_ENV}={location}: cannot read checkpoints there ("), line
