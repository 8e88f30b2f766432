"""The train stage as a user runs it: `python -m mlpipeline.stages.train` in a work
directory (byte-deterministic outputs, checkpoints removed, one-line errors), as two
DDP processes on CPU, and under `dvc repro` with the metrics and plots dvc.yaml declares."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run, set_params
from dvcflow import TINY_PARAMS, flatten, stages_ran, stages_restored
from tiny_training import TINY, write_workdir

from mlpipeline.training.reporting import EPOCH_SECONDS

HISTORIES = "reports/train/plots/metrics"

STAGE = [sys.executable, "-m", "mlpipeline.stages.train"]


def outputs(workdir: Path) -> dict[str, bytes]:
    """The stage's outputs whose bytes must repeat (all but the epoch wall times)."""
    files = [*(workdir / "models").iterdir(), *(workdir / "reports" / "train").rglob("*")]
    return {
        str(f.relative_to(workdir)): f.read_bytes()
        for f in sorted(files)
        if f.is_file() and f.stem != EPOCH_SECONDS
    }


def checkpoint_dirs(workdir: Path) -> list[Path]:
    root = workdir / ".cache" / "checkpoints"
    return list(root.iterdir()) if root.exists() else []


@pytest.mark.slow
def test_stage_writes_model_and_curves_identically_twice(tmp_path: Path) -> None:
    workdir = write_workdir(tmp_path)
    first = run(STAGE, workdir)
    written = outputs(workdir)
    run(STAGE, workdir)

    assert outputs(workdir) == written
    assert {"models/model.safetensors", "models/model.json", "reports/train/metrics.json"} <= set(written)
    assert checkpoint_dirs(workdir) == []  # removed after the model was written
    lines = first.stderr.strip().splitlines()
    assert [line.startswith("train: epoch ") for line in lines] == [True] * TINY["epochs"] + [False]
    assert lines[-1].startswith("train: read ") and "removed checkpoints .cache/checkpoints/" in lines[-1]
    metrics = json.loads(written["reports/train/metrics.json"])
    assert metrics["val"]["acc"] >= 0.9 and metrics["step"] == TINY["epochs"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"train.optimizer": "adam"},
            "params.yaml: train.optimizer must be one of 'adamw', 'sgd', got 'adam'",
        ),
        ({"train.num_threads": -1}, "params.yaml: train.num_threads must be >= 0 and <= 1024, got -1"),
        ("no augmented data", "data/augmented/dataset.json: not found (has the stage that writes"),
        (  # refused before torchrun launches the two processes, so said once
            {"train.model.arch": "convnext", "train.processes": 2},
            "params.yaml: train.model.hf.convnext: convnext does not run on 1x8x8 images with this config",
        ),
        (
            {"train.model.freeze_epochs": TINY["epochs"], "train.processes": 2},
            f"params.yaml: train.model.freeze_epochs is {TINY['epochs']}, "
            f"but the train phase runs {TINY['epochs']} epochs",
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, change: dict | str, message: str) -> None:
    workdir = write_workdir(tmp_path)
    if isinstance(change, dict):
        set_params(workdir, change)
    else:
        (workdir / "data" / "augmented" / "dataset.json").unlink()
    result = run(STAGE, workdir, check=False)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"train: error: {result.stderr.split('error: ')[1].strip()}"]
    assert message in result.stderr
    assert not (workdir / "models").exists() and not (workdir / "reports").exists()


@pytest.mark.slow
def test_two_gloo_processes_train_one_model(tmp_path: Path) -> None:
    workdir = write_workdir(tmp_path, processes=2, epochs=3)
    result = run(STAGE, workdir)

    summaries = [line for line in result.stderr.splitlines() if line.startswith("train: read ")]
    assert len(summaries) == 1 and "x 2 processes" in summaries[0]  # rank 0 alone reports
    epochs = [line for line in result.stderr.splitlines() if line.startswith("train: epoch ")]
    assert len(epochs) == 3
    metrics = json.loads((workdir / "reports" / "train" / "metrics.json").read_text())
    assert metrics["val"]["acc"] >= 0.9  # chance is 1/3
    history = (workdir / "reports" / "train" / "plots" / "metrics" / "val" / "acc.tsv").read_text()
    assert len(history.splitlines()) == 1 + 3  # written once, not once per rank
    assert (workdir / "models" / "model.safetensors").exists() and checkpoint_dirs(workdir) == []


@pytest.mark.slow
def test_train_under_dvc_declares_metrics_plots_and_model(pipeline_repo: Path) -> None:
    set_params(pipeline_repo, flatten(yaml.safe_load(TINY_PARAMS.read_text())))  # upstream stages too
    env = {"PYTHONPATH": str(pipeline_repo / "src")}
    run(["dvc", "repro", "train"], pipeline_repo, env=env)

    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], pipeline_repo, env=env).stdout)
    assert "reports/train/metrics.json" in json.dumps(metrics)
    plots = json.loads(run(["dvc", "plots", "show", "--json"], pipeline_repo, env=env).stdout)["data"]
    curves = [f"{HISTORIES}/{name}.tsv" for name in ("train/loss", "train/acc", "val/loss", "val/acc", "lr")]
    assert set(curves) | {"Epoch time (s)"} <= set(plots)
    lock = (pipeline_repo / "dvc.lock").read_text()
    assert "reports/train/metrics.json" in lock and EPOCH_SECONDS not in lock
    artifacts = run(["dvc", "ls", "--dvc-only", ".", "models"], pipeline_repo, env=env).stdout
    assert "model.safetensors" in artifacts
    assert checkpoint_dirs(pipeline_repo) == []
    status = run(["dvc", "status", "train"], pipeline_repo, env=env).stdout
    assert "up to date" in status
    # Back to the committed lock: DVC restores train from its run-cache rather than training again
    # (it saves no run-cache entry for a stage with an uncached output that is not a metric or plot).
    run(["git", "checkout", "dvc.lock"], pipeline_repo)
    restored = run(["dvc", "repro", "train"], pipeline_repo, env=env).stdout
    assert "train" in stages_restored(restored) and stages_ran(restored) == [], restored
