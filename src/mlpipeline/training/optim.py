"""What the optimizer does: AdamW or SGD, the learning-rate schedule and the run's length in
epochs (the loss is ``training.losses``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlpipeline.training.params import TrainParams

SGD_MOMENTUM = 0.9
CPU = torch.device("cpu")


def make_optimizer(
    model: nn.Module, params: TrainParams, device: torch.device = CPU
) -> torch.optim.Optimizer:
    """AdamW or Nesterov SGD; weight decay on conv and linear weights only (decaying BatchNorm
    scales and biases only fights the normalization). Fine-tuning (``freeze_epochs`` or
    ``backbone_lr_scale``) puts the head (``model.HEAD``) and the backbone in groups of their own,
    head first, each group's ``lr_scale`` times ``lr``.

    On CUDA, AdamW is the fused kernel: the same update in one launch, and with fp16's grad
    scaler it reads the inf check on the device where the unfused step calls ``.item()`` (a
    host-device sync every step). Elsewhere the default implementation, so CPU runs keep
    their bytes."""
    spec = params.model
    if spec.freeze_epochs == 0 and spec.backbone_lr_scale == 1:
        parts = [(list(model.parameters()), 1.0, False)]
    else:
        named = list(model.named_parameters())
        in_head = [name.startswith(model.HEAD) for name, _ in named]
        parts = [
            ([p for (_, p), head in zip(named, in_head, strict=True) if head], 1.0, False),
            (
                [p for (_, p), head in zip(named, in_head, strict=True) if not head],
                spec.backbone_lr_scale,
                True,
            ),
        ]
    groups = [
        {
            "params": [p for p in members if (p.ndim > 1) == decays],
            "weight_decay": decay,
            "lr_scale": scale,
            "backbone": backbone,
            "lr": params.lr * scale,
        }
        for members, scale, backbone in parts
        for decays, decay in ((True, params.weight_decay), (False, 0.0))
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
    optimizer: torch.optim.Optimizer, params: TrainParams, total: int, steps_per_epoch: int = 0
) -> torch.optim.lr_scheduler.LRScheduler | HeadFirst:
    """A per-step learning-rate schedule over ``total`` steps (``lr`` times each group's
    ``lr_scale`` is its peak); the backbone rests for ``freeze_epochs`` epochs of ``steps_per_epoch``."""
    if params.schedule == "onecycle":
        peaks = [params.lr * group["lr_scale"] for group in optimizer.param_groups]
        peak = params.lr if len(set(peaks)) == 1 else peaks
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak, total_steps=total)
    elif params.schedule == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    else:
        schedule = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    frozen = params.model.freeze_epochs * steps_per_epoch
    return HeadFirst(schedule, optimizer, frozen) if frozen else schedule


class HeadFirst:
    """``schedule`` with the backbone's groups at learning rate 0 for the first ``frozen`` steps:
    the head alone moves (AdamW and SGD leave a parameter bit for bit unchanged at lr 0, decay
    included), then everything does, on the schedule's own curve. The backbone's gradients are
    still computed while it rests (DDP needs one set of parameters throughout), and its
    optimizer moments warm up on them."""

    def __init__(
        self, schedule: torch.optim.lr_scheduler.LRScheduler, optimizer: torch.optim.Optimizer, frozen: int
    ) -> None:
        self.schedule, self.optimizer, self.frozen, self.steps = schedule, optimizer, frozen, 0
        self._rest()

    def step(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.schedule.get_last_lr(), strict=True):
            group["lr"] = lr  # the schedule's own value back: chainable ones step from it
        self.schedule.step()
        self.steps += 1
        self._rest()

    def _rest(self) -> None:
        if self.steps < self.frozen:
            for group in self.optimizer.param_groups:
                if group["backbone"]:
                    group["lr"] = 0.0

    def get_last_lr(self) -> list[float]:
        return self.schedule.get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state["schedule"])
        self.steps = state["steps"]
