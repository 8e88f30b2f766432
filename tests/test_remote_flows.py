"""The S3 remote end to end, against a real S3-protocol server (rclone on loopback).

Flows of issue 5: push, then pull into a fresh clone; a GPU machine that pulls only what
training needs and runs only training and evaluation; a stage restored from a pushed run-cache;
the server dying in the middle of a push (experiments: ``tests/test_experiments.py``). Every
second machine is a ``git clone`` with its own ``.dvc/config.local`` pointing at the test's
bucket prefix, as a teammate's checkout would be. Outputs are read from ``dvc.lock``, stages that
ran from DVC's output; only the GPU flow names stages, since its point is which ones run.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import run, set_params
from conftest_s3 import BUCKET, S3Remote, start_server
from dvcflow import (
    assert_up_to_date,
    commit_all,
    dvc,
    file_digests,
    make_consumer,
    make_producer,
    output_digests,
    stages_ran,
    stages_restored,
)

from mlpipeline.devtools import s3server

pytestmark = [pytest.mark.slow, pytest.mark.s3]

# What the CPU box computes and shares, what the GPU box runs, and the data it needs for that.
DATA_STAGES = ["ingest", "synthesize", "augment"]
TRAINING_STAGES = ["train", "export", "evaluate"]
TRAINING_INPUTS = ["data/ingested", "data/augmented"]


def test_pull_into_a_fresh_clone_gives_identical_outputs_and_nothing_to_run(
    pipeline_repo: Path, s3_remote: S3Remote, tmp_path: Path
) -> None:
    producer = make_producer(pipeline_repo, s3_remote)
    dvc(producer, "repro")
    commit_all(producer, "pipeline results")
    dvc(producer, "push")
    produced = output_digests(producer)
    assert produced

    consumer = make_consumer(producer, s3_remote, tmp_path / "consumer")
    dvc(consumer, "pull")
    assert output_digests(consumer) == produced
    assert json.loads(dvc(consumer, "status", "--json").stdout) == {}
    assert_up_to_date(consumer)


def test_gpu_machine_pulls_only_the_training_inputs_and_runs_only_train_and_evaluate(
    pipeline_repo: Path, s3_remote: S3Remote, tmp_path: Path
) -> None:
    cpu_box = make_producer(pipeline_repo, s3_remote)
    dvc(cpu_box, "repro")
    commit_all(cpu_box, "pipeline results")
    lr = yaml.safe_load((cpu_box / "params.yaml").read_text())["train"]["lr"]
    set_params(cpu_box, {"train.lr": 2 * lr})
    commit_all(cpu_box, "a new training setting, to be trained on the GPU box")
    dvc(cpu_box, "push", *DATA_STAGES)
    unpushed = json.loads(dvc(cpu_box, "status", "--cloud", "--json", *TRAINING_STAGES).stdout)
    assert unpushed and set(unpushed.values()) == {"new"}, unpushed  # the old model stays home

    gpu_box = make_consumer(cpu_box, s3_remote, tmp_path / "gpu")
    trained = dvc(gpu_box, "repro", "--pull", "--allow-missing")
    assert stages_ran(trained.stdout) == TRAINING_STAGES, trained.stdout
    inputs = [gpu_box / path for path in TRAINING_INPUTS]
    assert file_digests(gpu_box, inputs) == file_digests(
        cpu_box, [cpu_box / path for path in TRAINING_INPUTS]
    )
    assert not (gpu_box / "data" / "synthetic").exists()  # only what training reads came down
    commit_all(gpu_box, "trained with the new setting")
    dvc(gpu_box, "push")

    run(["git", "pull", "-q", str(gpu_box), "main"], cpu_box)
    dvc(cpu_box, "pull", "train", "export")  # the README's way back: the model and its ONNX file
    assert output_digests(cpu_box, TRAINING_STAGES) == output_digests(gpu_box, TRAINING_STAGES)
    assert_up_to_date(cpu_box)


def test_a_stage_computed_elsewhere_is_restored_from_the_pushed_run_cache(
    pipeline_repo: Path, s3_remote: S3Remote, tmp_path: Path
) -> None:
    producer = make_producer(pipeline_repo, s3_remote)
    # A committed param change whose dvc.lock nobody committed: the lock no longer says where
    # the outputs are, only the run-cache (keyed by the stage's deps and params) can.
    set_params(producer, {"ingest.seed": 7})
    commit_all(producer, "another split seed")
    assert stages_ran(dvc(producer, "repro", "ingest").stdout) == ["ingest"]
    dvc(producer, "push", "--run-cache", "ingest")

    consumer = make_consumer(producer, s3_remote, tmp_path / "consumer")
    restored = dvc(consumer, "repro", "--pull", "ingest")
    assert stages_restored(restored.stdout) == ["ingest"], restored.stdout
    assert stages_ran(restored.stdout) == [], restored.stdout
    assert output_digests(consumer, ["ingest"]) == output_digests(producer, ["ingest"])


def add_tracked_files(repo: Path, count: int, size: int) -> Path:
    """``count`` random files in ``data/extra``, tracked with ``dvc add``: many objects to push."""
    extra = repo / "data" / "extra"
    extra.mkdir(parents=True)
    generator = random.Random(5)
    for index in range(count):
        (extra / f"{index:04d}.bin").write_bytes(generator.randbytes(size))
    dvc(repo, "add", "data/extra")
    return extra


def stored_objects(remote: S3Remote) -> list[Path]:
    """The content-addressed objects the server holds for ``remote`` (not its temporary uploads)."""
    root = remote.directory / "files" / "md5"
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")] if root.exists() else []


def assert_objects_intact(remote: S3Remote) -> None:
    """Every object's content hashes to its name: nothing half-written is visible as an object."""
    for path in stored_objects(remote):
        expected = path.parent.name + path.name.removesuffix(".dir")
        assert hashlib.md5(path.read_bytes()).hexdigest() == expected, path


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_push_cut_by_a_dead_server_fails_clearly_and_a_second_push_completes(
    pipeline_repo: Path, tmp_path: Path
) -> None:
    server = start_server(tmp_path / "objects")  # this test stops its server: not the session's
    remote = S3Remote(server, BUCKET, "interrupted")
    try:
        producer = make_producer(pipeline_repo, remote)
        dvc(producer, "repro")
        extra = add_tracked_files(producer, count=400, size=16_384)
        commit_all(producer, "results and extra data")

        # botocore retries each object 5 times with backoff by default, so a push to a dead
        # endpoint fails only after minutes; one attempt keeps the test short, same outcome.
        one_attempt = {"AWS_MAX_ATTEMPTS": "1"}
        results = []
        push = threading.Thread(
            target=lambda: results.append(dvc(producer, "push", "-j", "2", check=False, env=one_attempt))
        )
        push.start()
        started = wait_for(lambda: len(stored_objects(remote)) >= 5, timeout=120)
        s3server.stop(server, kill=True)  # a crash, not a polite shutdown
        push.join()
        assert started, "the push never started uploading"
        (first,) = results
        assert first.returncode != 0, "the push ended before the server was stopped: give it more data"
        assert "ERROR" in first.stderr and "Could not connect to the endpoint URL" in first.stderr, (
            first.stderr
        )
        assert 0 < len(stored_objects(remote)) < len(list(extra.iterdir()))

        server = s3server.start(server.root, port=server.port)
        second = dvc(producer, "push")
        assert "pushed" in second.stdout, second.stdout
        assert json.loads(dvc(producer, "status", "--cloud", "--json").stdout) == {}
        assert_objects_intact(remote)

        consumer = make_consumer(producer, remote, tmp_path / "consumer")
        dvc(consumer, "pull")
        assert output_digests(consumer) == output_digests(producer)
        assert file_digests(consumer, [consumer / "data" / "extra"]) == file_digests(producer, [extra])
    finally:
        s3server.stop(server)
