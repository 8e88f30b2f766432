"""Stopping a diverged run: a loss or a weight that became NaN or infinite never recovers, and a
model holding one predicts nothing (every probability NaN), so the run stops with one line
instead of training on and writing it.

The check costs no host-device sync per step: the loop keeps, on the device, the step of the
first non-finite loss (``first_bad``), and reads it only when the epoch's summed loss, which the
loop reads anyway at the epoch's end, is not finite. The weights and BatchNorm statistics are
checked once per epoch, in one sync. Every rank reaches the same verdict: the summed loss is
all-reduced and the weights are the same on every rank, so all stop together (a rank that
stopped alone would leave the others waiting in a collective forever).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mlpipeline.core.device import nonfinite_tensors
from mlpipeline.core.errors import PipelineError

ADVICE = "lower train.lr, or set train.precision: float32 if it is fp16 or bf16"


class Diverged(PipelineError):
    """The run produced a NaN or infinite loss or weight: no model can come of it."""


def mark_first_bad(first_bad: torch.Tensor, nll_sum: torch.Tensor, step: int) -> torch.Tensor:
    """``first_bad`` (0 while every loss was finite) set to ``step`` if this is the first bad one."""
    return torch.where((first_bad == 0) & ~torch.isfinite(nll_sum), step, first_bad)


def check_loss(mean_loss: float, first_bad: torch.Tensor, phase: str, epoch: int, steps: int) -> None:
    """Raise ``Diverged`` naming the step if the epoch's training loss is not finite."""
    if math.isfinite(mean_loss):
        return
    step = int(first_bad)  # the only read of it: a sync on the failure path alone
    where = f"at step {step} of {steps}" if step else "in another training process"
    raise Diverged(
        f"training diverged in epoch {epoch} of the {phase} phase: the training loss became {mean_loss} "
        f"{where}; no model written ({ADVICE})"
    )


def check_weights(model: nn.Module, phase: str, epoch: int) -> None:
    """Raise ``Diverged`` if a weight or BatchNorm statistic of ``model`` is not finite."""
    if bad := nonfinite_tensors(model.state_dict()):
        raise Diverged(
            f"training diverged in epoch {epoch} of the {phase} phase: the weights hold NaN or infinity "
            f"({bad[0]}{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}); no model written ({ADVICE})"
        )


def check_val_loss(val_loss: float, phase: str, epoch: int) -> None:
    """Raise ``Diverged`` if finite weights still give a non-finite val loss (overflowing logits)."""
    if not math.isfinite(val_loss):
        raise Diverged(
            f"training diverged in epoch {epoch} of the {phase} phase: the val loss is {val_loss}; "
            f"no model written ({ADVICE})"
        )
