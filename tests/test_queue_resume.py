"""A queued experiment that failed resumes when queued again: DVC runs it in a temporary copy of
the repository (``.dvc/tmp/exps/...``) removed when it ends, so its checkpoints live in the
repository that queued it, under the same key, where the re-queued run finds them."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from dvcflow import dvc
from test_experiments import experiments, wait_for_queue

pytestmark = [pytest.mark.slow, pytest.mark.s3]

OVERRIDES = ["-S", "train.seed=3", "-S", "train.epochs=40"]  # a run of some seconds: time to stop it


@pytest.fixture
def lab(history_repo: Path) -> Iterator[Path]:
    """The trained pipeline; queue workers stopped at the end."""
    yield history_repo
    dvc(history_repo, "queue", "stop", "--kill", check=False)


def queued_training(repo: Path) -> psutil.Process | None:
    """The train stage of an experiment running in one of DVC's temporary copies of ``repo``."""
    copies = str(repo / ".dvc" / "tmp" / "exps")
    for process in psutil.process_iter(["cmdline", "cwd"]):
        if "mlpipeline.stages.train" in (process.info["cmdline"] or []) and (
            process.info["cwd"] or ""
        ).startswith(copies):
            return process
    return None


def models_hash(repo: Path, name: str) -> str:
    """The md5 dvc.lock records for ``models`` in the experiment ``name``."""
    for baseline in json.loads(dvc(repo, "exp", "show", "--json").stdout):
        for experiment in baseline.get("experiments") or []:
            if experiment["name"] == name:
                return experiment["revs"][0]["data"]["outs"]["models"]["hash"]
    raise AssertionError(f"no experiment {name}")


def test_a_queued_experiment_that_failed_resumes_when_queued_again(lab: Path, tmp_path: Path) -> None:
    dvc(lab, "exp", "run", "--queue", "-n", "stopped", *OVERRIDES)
    dvc(lab, "queue", "start", "-j", "1", log=tmp_path / "queue-start.log")
    checkpoints = lab / ".cache" / "checkpoints"  # the queuing repository's, not the copy's
    deadline = time.monotonic() + 600
    while (training := queued_training(lab)) is None or not list(checkpoints.glob("*/latest.ckpt")):
        assert time.monotonic() < deadline, "the queued experiment saved no checkpoint in 10 minutes"
        time.sleep(0.05)
    training.send_signal(signal.SIGTERM)  # a preempted queue worker's machine, say
    wait_for_queue(lab, ["stopped"])
    assert "stopped by SIGTERM" in dvc(lab, "queue", "logs", "stopped").stdout
    assert experiments(lab)["stopped"].state == "failed"  # no result, but its checkpoint

    dvc(lab, "exp", "run", "--queue", "-n", "resumed", *OVERRIDES)
    dvc(lab, "queue", "start", "-j", "1", log=tmp_path / "queue-start-again.log")
    wait_for_queue(lab, ["resumed"])
    log = dvc(lab, "queue", "logs", "resumed").stdout
    assert "resuming after epoch" in log and f"from {checkpoints.resolve()}/" in log
    assert experiments(lab)["resumed"].state == "success"
    assert not list(checkpoints.glob("*/latest.ckpt"))  # removed once the model was written

    dvc(lab, "exp", "run", "-n", "whole", *OVERRIDES)  # the same run, never stopped
    assert models_hash(lab, "resumed") == models_hash(lab, "whole")
