"""Experiments end to end (issue 5, flow 4): ``dvc exp run -S``, the queue, grids, and sharing an
experiment through a git remote plus the S3 remote.

One test, because every step needs the pipeline already computed (the base line of the metric
table and the data the experiments train on) and recomputing it per step would double the time.
The queue runs in DVC's own worker processes (celery), stopped at the end whatever happens.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import run
from conftest_s3 import S3Remote
from dvcflow import (
    assert_up_to_date,
    commit_all,
    dvc,
    flatten,
    make_consumer,
    make_producer,
    output_digests,
    stages_ran,
)

pytestmark = [pytest.mark.slow, pytest.mark.s3]

TRAIN_METRICS = "reports/train/metrics.json"
EVALUATE_METRICS = "reports/evaluate/metrics.json"
FINISHED = ("success", "failed")
QUEUE_TIMEOUT = 600  # seconds for two queued runs, worker start-up included, on a busy CI box


@dataclass(frozen=True)
class Experiment:
    """One row of ``dvc exp show``: the executor's state, params (dotted keys) and metrics by file."""

    name: str
    state: str  # queued | running | success | failed
    params: dict[str, Any]
    metrics: dict[str, dict[str, Any]]


def experiments(repo: Path) -> dict[str, Experiment]:
    """The experiments of ``repo``'s current commit, by name, as ``dvc exp show --json`` gives them."""
    rows = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    found = {}
    for baseline in rows:
        for experiment in baseline.get("experiments") or []:
            data = experiment["revs"][0].get("data") or {}
            executor = experiment.get("executor") or {"state": "success"}  # none once run in the workspace
            found[experiment["name"]] = Experiment(
                name=experiment["name"],
                state=executor["state"],
                params=flatten(data.get("params", {}).get("params.yaml", {}).get("data", {})),
                metrics={path: entry.get("data", {}) for path, entry in data.get("metrics", {}).items()},
            )
    return found


def queue_states(repo: Path) -> dict[str, str]:
    """Task name -> queued | running | success | failed, parsed from ``dvc queue status``'s table
    (its header line, a row per task, a blank line, then the workers' line)."""
    table = dvc(repo, "queue", "status").stdout.split("\n\n")[0].splitlines()
    if not table or table[0].split()[:2] != ["Task", "Name"]:
        return {}  # "No experiment tasks in the queue."
    rows = (line.split() for line in table[1:])  # task, name, created (may hold a space), status
    return {fields[1]: fields[-1].lower() for fields in rows if len(fields) >= 4}


def wait_for_queue(repo: Path, names: list[str], timeout: float = QUEUE_TIMEOUT) -> None:
    """Poll until every task in ``names`` has finished (or fail after ``timeout`` seconds).

    Polls ``dvc queue status``, not ``dvc exp show``: exp show also reads each running executor's
    temporary git repo, and fails with "Empty git repo" while a worker is still setting one up.
    """
    deadline = time.monotonic() + timeout
    while True:
        states = queue_states(repo)
        if all(states.get(name) in FINISHED for name in names):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"queued experiments not finished after {timeout:.0f} s: {states}")
        time.sleep(2)


@pytest.fixture
def lab(pipeline_repo: Path, s3_remote: S3Remote) -> Iterator[Path]:
    """The pipeline computed and committed with the tiny params; queue workers stopped at the end."""
    repo = make_producer(pipeline_repo, s3_remote)
    dvc(repo, "repro")
    commit_all(repo, "pipeline results")
    yield repo
    dvc(repo, "queue", "stop", "--kill", check=False)


def test_experiments_run_queue_and_travel_to_another_clone(
    lab: Path, s3_remote: S3Remote, tmp_path: Path
) -> None:
    base_lr = yaml.safe_load((lab / "params.yaml").read_text())["train"]["lr"]
    lrs = {factor: round(base_lr * factor, 6) for factor in (0.5, 2, 1 / 3, 3, 4)}
    base_val_loss = json.loads((lab / TRAIN_METRICS).read_text())["val"]["loss"]

    # A grid queues one experiment per value (removed unrun: the queue below proves running).
    dvc(lab, "exp", "run", "--queue", "-S", f"train.lr={lrs[0.5]},{lrs[2]}")
    grid = [e for e in experiments(lab).values() if e.state == "queued"]
    assert sorted(e.params["train.lr"] for e in grid) == [lrs[0.5], lrs[2]]
    dvc(lab, "queue", "remove", "--queued")
    assert experiments(lab) == {}

    # Two queued experiments, run by one worker.
    queued = {"lr-low": lrs[1 / 3], "lr-high": lrs[3]}
    for name, lr in queued.items():
        dvc(lab, "exp", "run", "--queue", "-n", name, "-S", f"train.lr={lr}")
    dvc(lab, "queue", "start", "-j", "1", log=tmp_path / "queue-start.log")
    wait_for_queue(lab, list(queued))

    # One experiment in the workspace: only training and evaluation run, the data is reused.
    ran = dvc(lab, "exp", "run", "-n", "lr-top", "-S", f"train.lr={lrs[4]}")
    assert stages_ran(ran.stdout) == ["train", "export", "evaluate"], ran.stdout
    assert json.loads(dvc(lab, "status", "--json").stdout) == {}  # nothing left dirty by the run

    table = experiments(lab)
    expected_lr = {**queued, "lr-top": lrs[4]}
    assert set(table) == set(expected_lr)
    for name, lr in expected_lr.items():
        experiment = table[name]
        assert experiment.state == "success", name
        assert experiment.params["train.lr"] == lr
        assert experiment.metrics[TRAIN_METRICS]["val"]["loss"] != base_val_loss, name
        assert 0 <= experiment.metrics[EVALUATE_METRICS]["test"]["accuracy"] <= 1, name

    # Share a queued experiment: git refs to a bare remote, outputs to the S3 remote.
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path)
    run(["git", "remote", "add", "origin", str(origin)], lab)
    run(["git", "push", "-q", "origin", "main"], lab)
    dvc(lab, "exp", "push", "origin", "lr-high")
    dvc(lab, "exp", "apply", "lr-high")
    model = output_digests(lab, ["train"])

    teammate = make_consumer(origin, s3_remote, tmp_path / "teammate")
    dvc(teammate, "exp", "pull", "origin", "lr-high")
    dvc(teammate, "exp", "apply", "lr-high")
    assert output_digests(teammate, ["train"]) == model
    assert_up_to_date(teammate)
