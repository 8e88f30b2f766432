"""A diverged run (NaN or infinite loss, weights or BatchNorm statistics) stops with one line
naming the epoch and step and what to try, and leaves no model, report or checkpoint; fp16's
skipped first step does not leak torch's scheduler warning."""

from __future__ import annotations

import math
import re
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import run
from tiny_training import tiny_params, write_inputs, write_workdir

from mlpipeline.stages.train import train
from mlpipeline.training import loop
from mlpipeline.training.device import Runtime
from mlpipeline.training.divergence import Diverged
from mlpipeline.training.loop import Trainer
from mlpipeline.training.losses import smoothed_loss

STAGE = [sys.executable, "-m", "mlpipeline.stages.train"]
# The recipe: plain SGD at lr 10, fp16 (autocast runs it on the CPU too).
EXPLODING = {"optimizer": "sgd", "weight_decay": 0, "lr": 10, "schedule": "constant", "epochs": 3}


def test_a_diverged_run_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    workdir = write_workdir(tmp_path, precision="fp16", **EXPLODING)
    result = run(STAGE, workdir, check=False)

    assert result.returncode == 2
    line = result.stderr.splitlines()[-1]
    assert line.startswith("train: error: training diverged in epoch ") and " at step " in line
    assert "no model written (lower train.lr, or set train.precision: float32" in line
    assert [x for x in result.stderr.splitlines() if not x.startswith("train: epoch ")] == [line]
    assert not (workdir / "models").exists()
    assert not (workdir / "reports" / "train").exists()  # no metrics.json that reads as a result
    assert not any((workdir / ".cache" / "checkpoints").glob("*"))


def test_float32_divergence_stops_the_run_too(tmp_path: Path) -> None:
    """In float32 the BatchNorm running variance overflows before the loss does (on this CPU):
    whichever goes first, the run stops."""
    with pytest.raises(Diverged, match=r"^training diverged in epoch \d of the train phase: "):
        train(tiny_params(precision="float32", **{**EXPLODING, "epochs": 8}), write_inputs(tmp_path), None)


def test_the_message_names_the_first_non_finite_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A NaN loss at step 2 leaves NaN weights, so every later step's loss is NaN too: the line
    must name where it began, not where the epoch ended."""
    losses = 0

    def nan_at_step_2(
        logits: torch.Tensor, labels: torch.Tensor, smoothing: float, weights: torch.Tensor | None
    ):
        nonlocal losses
        losses += 1
        loss, nll_sum = smoothed_loss(logits, labels, smoothing, weights)
        return (loss * math.nan, nll_sum * math.nan) if losses == 2 else (loss, nll_sum)

    monkeypatch.setattr(loop, "smoothed_loss", nan_at_step_2)
    params, inputs = tiny_params(), write_inputs(tmp_path)
    with pytest.raises(
        Diverged, match=r"^training diverged in epoch 1 of the train phase: .* at step 2 of (\d+);"
    ) as stop:
        train(params, inputs, None, tmp_path / "ckpt")
    assert int(re.search(r"at step 2 of (\d+);", str(stop.value))[1]) > 2  # later steps were NaN too


def test_an_infinite_val_loss_stops_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finite weights whose val logits overflow give an infinite loss, not a NaN: no model of it."""
    monkeypatch.setattr(Trainer, "evaluate", lambda self, split: (math.inf, 0.2, 0.2))
    message = "training diverged in epoch 1 of the train phase: the val loss is inf; no model written"
    with pytest.raises(Diverged, match=f"^{re.escape(message)}"):
        train(tiny_params(), write_inputs(tmp_path), None, tmp_path / "ckpt")


def test_non_finite_batchnorm_statistics_stop_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running variance that overflowed while every loss stayed finite: caught after the epoch."""
    train_epoch = Trainer.train_epoch

    def overflowing(self: Trainer, order, epoch, *rest):
        figures = train_epoch(self, order, epoch, *rest)
        if epoch == 2:
            dict(self.model.named_buffers())["features.1.running_var"][3] = float("inf")
        return figures

    monkeypatch.setattr(Trainer, "train_epoch", overflowing)
    message = (
        "training diverged in epoch 2 of the train phase: the weights hold NaN or infinity "
        "(features.1.running_var); no model written"
    )
    with pytest.raises(Diverged, match=f"^{message.replace('(', '[(]').replace(')', '[)]')}"):
        train(tiny_params(), write_inputs(tmp_path), None, tmp_path / "ckpt")


def test_fp16_skipped_first_step_leaks_no_scheduler_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grad scaler that starts too high skips the first optimizer steps (inf gradients), and torch
    then warns that the schedule stepped before the optimizer: expected under fp16, not the user's."""
    monkeypatch.setattr(Runtime, "grad_scaler", lambda self: torch.amp.GradScaler("cpu", init_scale=2.0**120))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = train(tiny_params(precision="fp16", epochs=1), write_inputs(tmp_path), None, tmp_path / "c")
    assert result.trainer.scaler is not None and result.trainer.scaler.get_scale() < 2.0**120  # it skipped


@pytest.mark.slow
def test_two_processes_stop_together_and_write_nothing(tmp_path: Path) -> None:
    """Every rank reaches the verdict at the same point (the summed loss is all-reduced), so none
    waits forever in a collective, and rank 0 cleans up before torchrun stops the others."""
    workdir = write_workdir(tmp_path, precision="fp16", processes=2, **EXPLODING)
    result = run(STAGE, workdir, check=False, timeout=300)

    assert result.returncode == 2
    assert result.stderr.count("train: error:") == 1, result.stderr  # rank 0 says it, once
    last = result.stderr.splitlines()[-1]
    assert last.startswith("train: error: training diverged in epoch "), result.stderr
    assert not (workdir / "models").exists() and not (workdir / "reports" / "train").exists()
    assert not any((workdir / ".cache" / "checkpoints").glob("*"))
