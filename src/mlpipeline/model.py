"""The network and its portable form: safetensors weights plus a JSON config, never a pickle.

``ModelConfig`` holds everything needed to rebuild the network and feed it:
architecture sizes, input shape, class names and the input normalization
measured on the training data. Train writes it; evaluate and predict read it
through ``mlpipeline.model_files``, which refuses a model directory that cannot be used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import ConfigDict, Field, with_config
from torch import nn

from mlpipeline.images import Preprocessing

Positive = Annotated[int, Field(ge=1)]


# Strict: model.json is written by train, so a string where a number belongs is damage, not
# something to coerce. Unknown keys are refused too (a typo would otherwise pass unnoticed).
@with_config(ConfigDict(strict=True, extra="forbid"))
@dataclass(frozen=True)
class ModelConfig:
    """Architecture and input contract of a trained model (written as ``model.json``)."""

    classes: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=2)]
    image_shape: Annotated[list[Positive], Field(min_length=3, max_length=3)]  # C, H, W
    widths: Annotated[list[Positive], Field(min_length=1)]  # channels of each conv block
    dropout: Annotated[float, Field(ge=0, lt=1)]
    mean: list[Annotated[float, Field(ge=0, le=1)]]  # per-channel mean of training pixels, in [0, 1]
    std: list[Annotated[float, Field(gt=0)]]  # per-channel std of training pixels
    # How ingest turned files into pixels (images.Preprocessing.to_json), for predict to repeat;
    # None in models trained before ingest recorded it.
    preprocessing: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes repeat a name: {self.classes}")
        channels = self.image_shape[0] if self.image_shape else 0
        if not len(self.mean) == len(self.std) == channels:
            raise ValueError(
                f"mean and std need one value per channel ({channels}), got {self.mean}, {self.std}"
            )
        made = self.input_preprocessing()
        if [made.channels, *made.image_size] != list(self.image_shape):
            raise ValueError(
                f"preprocessing gives {made.channels}x{made.image_size[0]}x{made.image_size[1]} images, "
                f"image_shape is {self.image_shape}"
            )

    def input_preprocessing(self) -> Preprocessing:
        """How an image file becomes this model's input, as ingest did it for the training images.

        A model trained before ingest recorded it gets what ingest did then: bicubic, no
        conversion, no JPEG draft.
        """
        if self.preprocessing is None:
            channels, height, width = self.image_shape
            return Preprocessing(channels, (height, width), "bicubic", False, 255, False)
        return Preprocessing.from_json(self.preprocessing)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class ConvNet(nn.Module):
    """Blocks of two 3x3 conv-BN-ReLU layers, 2x2 max-pooling while the map is >= 4 px,
    then global average pooling and a linear head: the same code fits 8x8 and 32x32 inputs."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        channels, height, width = config.image_shape
        layers: list[nn.Module] = []
        for out in config.widths:
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
                nn.Conv2d(out, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            if min(height, width) >= 4:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(channels, config.num_classes),
        )
        self.register_buffer("mean", torch.tensor(config.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for uint8 (or already float in [0, 1]) images N x C x H x W."""
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        return self.head(self.features((images - self.mean) / self.std))


def build_model(config: ModelConfig) -> ConvNet:
    return ConvNet(config)


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images N x C x H x W, scaled to [0, 1]."""
    pixels = images.astype(np.float64) / 255.0
    mean = pixels.mean(axis=(0, 2, 3))
    std = np.maximum(pixels.std(axis=(0, 2, 3)), 1e-6)
    return [float(m) for m in mean], [float(s) for s in std]
