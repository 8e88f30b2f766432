"""What the optimizer does: AdamW or SGD, the learning-rate schedule, the run's length in
epochs, and the label-smoothed loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlpipeline.training.params import TrainParams

SGD_MOMENTUM = 0.9
CPU = torch.device("cpu")


def make_optimizer(
    model: nn.Module, params: TrainParams, device: torch.device = CPU
) -> torch.optim.Optimizer:
    """AdamW or Nesterov SGD; weight decay on conv and linear weights only (decaying BatchNorm
    scales and biases only fights the normalization).

    On CUDA, AdamW is the fused kernel: the same update in one launch, and with fp16's grad
    scaler it reads the inf check on the device where the unfused step calls ``.item()`` (a
    host-device sync every step). Elsewhere the default implementation, so CPU runs keep
    their bytes."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": params.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if params.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=params.lr, fused=True if device.type == "cuda" else None)
    return torch.optim.SGD(groups, lr=params.lr, momentum=SGD_MOMENTUM, nesterov=True)


def epochs_to_run(params: TrainParams, steps_per_epoch: int) -> int:
    """``epochs``, or more when that many would make fewer than ``min_steps`` optimizer steps:
    runs on training sets of different sizes (with and without synthetic data, say) then get
    comparable budgets instead of a small set being undertrained."""
    return max(params.epochs, -(-params.min_steps // steps_per_epoch))


def make_schedule(
    optimizer: torch.optim.Optimizer, params: TrainParams, total: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step learning-rate schedule over ``total`` steps (``lr`` is the peak)."""
    if params.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=params.lr, total_steps=total)
    if params.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def smoothed_loss(
    logits: torch.Tensor, labels: torch.Tensor, smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The label-smoothed training objective (as ``F.cross_entropy(label_smoothing=)``) and the
    batch's summed plain cross-entropy, so train and val losses are the same quantity."""
    log_probs = F.log_softmax(logits.float(), dim=1)
    nll = -log_probs.gather(1, labels[:, None]).squeeze(1)
    loss = nll if smoothing == 0 else (1 - smoothing) * nll - smoothing * log_probs.mean(dim=1)
    return loss.mean(), nll.detach().sum()
