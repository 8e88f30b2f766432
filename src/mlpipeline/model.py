"""The network and its portable form: safetensors weights plus a JSON config, never a pickle.

``ModelConfig`` holds everything needed to rebuild the network and feed it:
architecture sizes, input shape, class names and the input normalization
measured on the training data. Train writes it; evaluate and predict read it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import nn

from mlpipeline.core import atomic
from mlpipeline.core.errors import PipelineError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.json"
MIN_STD = 1e-6  # a constant channel still divides by something
STATS_CHUNK_PIXELS = 1 << 22  # values squared at a time: bounds the temporary to 16 MiB
_SQUARES = np.arange(256, dtype=np.int32) ** 2


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and input contract of a trained model (written as ``model.json``)."""

    classes: list[str]
    image_shape: list[int]  # C, H, W
    widths: list[int]  # channels of each conv block
    dropout: float
    mean: list[float]  # per-channel mean of training pixels, in [0, 1]
    std: list[float]  # per-channel std of training pixels

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


def save_model(model: nn.Module, config: ModelConfig, out_dir: Path | str) -> None:
    """Write weights (safetensors) and config (JSON) atomically into ``out_dir``."""
    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
    atomic.write_bytes(out_dir / WEIGHTS_FILE, save(state))
    atomic.write_json(out_dir / CONFIG_FILE, dataclasses.asdict(config))


def load_model(model_dir: Path | str, device: torch.device | str = "cpu") -> tuple[ConvNet, ModelConfig]:
    """Rebuild the network from ``model.json`` and load ``model.safetensors``, in eval mode."""
    model_dir = Path(model_dir)
    config_path = model_dir / CONFIG_FILE
    try:
        config = ModelConfig(**json.loads(config_path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise PipelineError(f"{config_path}: not found (has the train stage run?)")
    except (json.JSONDecodeError, TypeError) as exc:
        raise PipelineError(f"{config_path}: not a valid model config ({exc})")
    model = build_model(config)
    weights_path = model_dir / WEIGHTS_FILE
    try:
        model.load_state_dict(load_file(weights_path))
    except FileNotFoundError:
        raise PipelineError(f"{weights_path}: not found (has the train stage run?)")
    except (RuntimeError, OSError) as exc:
        raise PipelineError(f"{weights_path}: weights do not match {CONFIG_FILE} ({exc})")
    return model.to(device).eval(), config


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images N x C x H x W, scaled to [0, 1]."""
    return streamed_channel_stats([images])


def streamed_channel_stats(batches: Iterable[np.ndarray]) -> tuple[list[float], list[float]]:
    """``channel_stats`` of the images of ``batches`` (a dataset's shards, say) taken in turn.

    From exact integer sums of the pixels and of their squares, so memory holds one batch and
    the figures do not depend on how the images are batched (float sums would: they round in
    another order); each is the correctly rounded value of the exact one.
    """
    count, sums, squares = 0, 0, 0
    for images in batches:
        step = max(1, STATS_CHUNK_PIXELS // max(1, int(np.prod(images.shape[1:]))))
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            sums = sums + chunk.sum(axis=(0, 2, 3), dtype=np.int64)
            squares = squares + _SQUARES[chunk].sum(axis=(0, 2, 3), dtype=np.int64)
        count += len(images) * images.shape[2] * images.shape[3]
    if count == 0:
        raise ValueError("channel statistics of no images")
    scale = count * 255
    mean = [int(total) / scale for total in sums]
    variance = [Fraction(count * int(q) - int(s) ** 2, scale**2) for s, q in zip(sums, squares, strict=True)]
    return mean, [max(math.sqrt(v), MIN_STD) for v in variance]


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside a DistributedDataParallel or torch.compile wrapper."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
