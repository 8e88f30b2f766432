"""The networks' input contract, one for every arch: uint8 (or [0, 1] float) images N x C x H x W
in, scaled to [0, 1] and normalized by the training split's per-channel mean and std, inside the
network, so evaluate, predict and the ONNX file all feed it raw pixels."""

from __future__ import annotations

import torch
from torch import nn


class NormalizedInput(nn.Module):
    """A network's base: the channel statistics as buffers (not saved with the weights:
    ``model.json`` records them) and the one normalization every forward starts with."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def normalized(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        return (images - self.mean) / self.std
