"""An exponential moving average of the weights (EMA, as timm's ``ModelEmaV2``): after every
optimizer step each floating-point weight and buffer of the average moves ``1 - decay`` of the
way to the model's (integer buffers are copied). The average generalizes better than the last
weights; with it on, validation scores the average, and the average is what is kept and saved.

The decay warms up as ``min(decay, (1 + t) / (10 + t))`` after t updates (TensorFlow's
``num_updates``), so a short run is not an average of its random start. The update is one
``_foreach_lerp_`` on the device with the decay as a Python number: no host-device sync. Its
state (the average and t) is in the checkpoint, so a resumed run averages on exactly.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0
        self._pairs = list(zip(self.module.state_dict().values(), model.state_dict().values(), strict=True))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the model's current weights (after an optimizer step)."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        floating = [(mine, theirs) for mine, theirs in self._pairs if mine.is_floating_point()]
        if floating:
            mine, theirs = zip(*floating, strict=True)
            torch._foreach_lerp_(list(mine), list(theirs), 1 - decay)
        for mine, theirs in self._pairs:
            if not mine.is_floating_point():
                mine.copy_(theirs)

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = state["updates"]
