"""The SLURM recipe under a real SLURM: Debian's slurmctld and two slurmd on this host
(``mlpipeline.devtools.slurm_local``), a CPU partition, the job submitted as a user would
(``recipes/slurm/submit.sh`` in a clone of the pipeline with its inputs on the S3 remote).

One job after another in one clone: scancel in the middle of training (the checkpoint saved, a
line of the job's own, ``models/`` as before); the job submitted again, resumed, then given the
time limit's notice (it saves and requeues itself) and finished on its requeued run, to the bytes
of one node of two processes; the same commit once more, its train stage cached, every node ended
at once with 0. Skipped, saying why, where SLURM is not installed (``make test-slurm`` installs it)
or not root.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import run, set_params
from conftest_s3 import S3Remote
from dvcflow import commit_all, dvc
from test_multinode import models

from mlpipeline.devtools import slurm_local
from mlpipeline.devtools.slurm_local import LocalSlurm

pytestmark = [
    pytest.mark.slow,
    pytest.mark.s3,
    pytest.mark.skipif(slurm_local.missing() is not None, reason=f"no local SLURM: {slurm_local.missing()}"),
]

EPOCHS = 20  # a few seconds of training on two nodes: time to stop it in the middle
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalSlurm]:
    started = slurm_local.up(tmp_path / "slurm")
    yield started
    slurm_local.down(started.root)


@pytest.fixture
def clone(history_repo: Path) -> Path:
    """The trained pipeline with its inputs pushed (node 0 pulls them), two nodes of one process,
    the test run's venv as the clone's .venv (made on the submit host, shared with the nodes)."""
    dvc(history_repo, "push", "ingest", "augment")
    (history_repo / ".venv").symlink_to(sys.prefix)
    set_params(history_repo, {"train.nodes": 2, "train.processes": 1, "train.epochs": EPOCHS})
    commit_all(history_repo, "train on two nodes")
    return history_repo


def submit(clone: Path, cluster: LocalSlurm) -> int:
    submitted = run(["recipes/slurm/submit.sh", "--time=00:15:00"], clone, env=cluster.env)
    return int(re.fullmatch(r"Submitted batch job (\d+)\n", submitted.stdout)[1])


def job(cluster: LocalSlurm, number: int) -> dict[str, str]:
    shown = run(["scontrol", "show", "job", "-o", str(number)], Path.cwd(), env=cluster.env).stdout
    return dict(re.findall(r"(\w+)=(\S*)", shown))


def output(clone: Path, number: int) -> str:
    path = clone / "recipes" / "slurm" / "logs" / f"mlpipeline-train-{number}.out"
    return path.read_text() if path.exists() else ""


def wait_for(condition: Callable[[], object], what: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not after {seconds:g} s"
        time.sleep(0.1)


def ended(cluster: LocalSlurm, number: int) -> dict[str, str]:
    wait_for(lambda: job(cluster, number)["JobState"] in ENDED, f"job {number} ending", 600)
    return job(cluster, number)


def one_node_of_two_processes(clone: Path, tmp_path: Path) -> dict[str, bytes]:
    """The model of the same training run as the stage's module on one node of two processes."""
    reference = tmp_path / "reference"
    for folder in ("data/ingested", "data/augmented", "data/weights"):
        shutil.copytree(clone / folder, reference / folder)
    shutil.copy(clone / "params.yaml", reference / "params.yaml")
    set_params(reference, {"train.nodes": 1, "train.processes": 2})
    run([sys.executable, "-m", "mlpipeline.stages.train"], reference, env={"PYTHONPATH": str(clone / "src")})
    return models(reference)


def test_the_slurm_recipe_survives_a_cancel_and_a_requeue_and_skips_a_cached_stage(
    clone: Path, cluster: LocalSlurm, s3_remote: S3Remote, tmp_path: Path
) -> None:
    before = models(clone)
    expected = one_node_of_two_processes(clone, tmp_path)

    # scancel in the middle of training: every node saves and stops; models/ is as before
    first = submit(clone, cluster)
    wait_for(lambda: "train: epoch 2/" in output(clone, first), f"job {first} training")
    run(["scancel", str(first)], clone, env=cluster.env)
    state = ended(cluster, first)
    log = output(clone, first)
    assert (state["JobState"], state["ExitCode"]) == ("CANCELLED", "250:0"), log
    assert re.search(r"^train: stopped by SIGTERM in epoch \d+ of the train phase after step", log, re.M), log
    assert log.splitlines()[-1] == (
        f"train.sbatch: job {first} stopped (scancel or preemption) with its checkpoint saved; "
        "submit it again to resume"
    )
    assert "Traceback" not in log and models(clone) == before
    assert list((clone / ".cache" / "checkpoints").glob("*/latest.ckpt"))

    # again: it resumes; the time limit's notice saves and requeues it; the requeued run finishes
    second = submit(clone, cluster)
    wait_for(lambda: re.search(r"resuming after epoch \d+ and step", output(clone, second)), "resuming")
    resumed_at = output(clone, second).index("resuming after epoch")
    wait_for(lambda: "train: epoch" in output(clone, second)[resumed_at:], f"job {second} training again")
    run(["scancel", "--signal=USR1", "--batch", str(second)], clone, env=cluster.env)
    wait_for(lambda: job(cluster, second)["Restarts"] == "1", f"job {second} requeued")
    idle = ["idle"] * len(slurm_local.NODES)
    wait_for(lambda: slurm_local.node_states(cluster) == idle, "the nodes done with the first run")
    # SLURM would wait cred_expire (120 s) before starting a requeued job: a launch credential made
    # in the second its last run's was revoked is refused ("Job credential revoked"); 2 s is enough
    run(["scontrol", "update", f"JobId={second}", "StartTime=now+2"], clone, env=cluster.env)
    state = ended(cluster, second)
    log = output(clone, second)
    assert (state["JobState"], state["ExitCode"]) == ("COMPLETED", "0:0"), log
    assert re.search(r"^train: stopped by SIGUSR1 in epoch", log, re.M), log
    assert f"train.sbatch: job {second}: time limit near, every node saved a checkpoint; requeued" in log
    assert "x 2 processes on 2 nodes, resumed after epoch" in log
    assert models(clone) == expected
    assert "nodes: 2" in (clone / "dvc.lock").read_text()
    assert f"train-{second}" in dvc(clone, "exp", "list", "--name-only").stdout  # dvc.lock, committed
    untracked = run(["git", "status", "--porcelain"], clone).stdout
    assert "??" not in untracked, untracked  # the jobs' output under recipes/slurm/logs, ignored
    assert not list((clone / ".cache" / "checkpoints").glob("*/latest.ckpt"))  # removed on success

    # the same commit once more: the train stage is cached, every node ends at once with 0
    commit_all(clone, "the two-node model")
    third = submit(clone, cluster)
    started = time.monotonic()
    state = ended(cluster, third)
    log = output(clone, third)
    assert (state["JobState"], state["ExitCode"]) == ("COMPLETED", "0:0"), log
    assert "train: node 1 of 2: node 0 ran no training (its train stage is up to date)" in log
    assert time.monotonic() - started < 120  # the rendezvous timeout (600 s) is never waited out
