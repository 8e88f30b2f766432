"""The network and its portable form: safetensors weights plus a JSON config, never a pickle.

The network is built from a ``ModelConfig`` (``mlpipeline.modeling.config``, re-exported here).
A transformers arch is built by ``mlpipeline.modeling.hf``, imported only when one is asked
for, so the CNN's start-up never pays for importing transformers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlpipeline.core.errors import PipelineError
from mlpipeline.modeling.config import CONVNET, ModelConfig
from mlpipeline.modeling.inputs import NormalizedInput

MIN_STD = 1e-6  # a constant channel still divides by something
STATS_CHUNK_PIXELS = 1 << 22  # values squared at a time: bounds the temporary to 16 MiB
_SQUARES = np.arange(256, dtype=np.int32) ** 2


class ConvNet(NormalizedInput):
    """Blocks of two 3x3 conv-BN-ReLU layers, 2x2 max-pooling while the map is >= 4 px,
    then global average pooling and a linear head: the same code fits 8x8 and 32x32 inputs."""

    HEAD = ("head.",)  # the prefixes of the classifier's parameters (fine-tuning trains it first)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config.mean, config.std)
        assert config.widths is not None and config.dropout is not None  # ModelConfig checks it
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

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for uint8 (or already float in [0, 1]) images N x C x H x W."""
        return self.head(self.features(self.normalized(images)))


def build_model(config: ModelConfig) -> nn.Module:
    """The network of ``config``, freshly initialized (from the global torch seed). Its forward
    takes uint8 (or [0, 1] float) images N x C x H x W and returns logits, whatever the arch;
    ``model.HEAD`` holds the prefixes of the classifier's parameter names."""
    if config.arch == CONVNET:
        return ConvNet(config)
    from mlpipeline.modeling import hf  # imports transformers: only for its archs

    return hf.build(config)


def new_config(
    arch: str,
    classes: list[str],
    image_shape: list[int],
    stats: tuple[list[float], list[float]],
    preprocessing: dict[str, Any] | None,
    widths: list[int],
    dropout: float,
    overrides: dict[str, dict[str, Any]],
    weights: Path | None,
) -> ModelConfig:
    """The config of the network to train on data of ``classes`` and ``image_shape`` whose channel
    ``stats`` are (mean, std). With ``weights`` (a checkpoint folder) the arch is the checkpoint's
    and the normalization its preprocessor's, when it has one; else ``arch`` sized by ``widths``
    and ``dropout`` (convnet) or by ``overrides[arch]`` (a transformers arch)."""
    common: dict[str, Any] = {"mean": stats[0], "std": stats[1], "preprocessing": preprocessing}
    network, checkpoint_stats, source = fitted_network(arch, classes, image_shape, overrides, weights)
    if network is None:
        return ModelConfig(classes, image_shape, widths=list(widths), dropout=dropout, **common)
    from mlpipeline.modeling import hf  # imports transformers: only for its archs

    if checkpoint_stats is not None:
        common["mean"], common["std"] = checkpoint_stats
    return ModelConfig(classes, image_shape, **common, **hf.provenance(network, source))


def fitted_network(
    arch: str,
    classes: list[str],
    image_shape: list[int],
    overrides: dict[str, dict[str, Any]],
    weights: Path | None,
) -> tuple[dict[str, Any] | None, tuple[list[float], list[float]] | None, dict[str, str] | None]:
    """A transformers arch's full config fitted to the data (None for the CNN), its checkpoint's
    preprocessor stats and source (with ``weights``), once its model is known to build and run
    on the data's images: train checks it before any training work."""
    if weights is None and arch == CONVNET:
        return None, None, None
    from mlpipeline.modeling import hf  # imports transformers: only for its archs

    if weights is None:
        return hf.new_network(arch, overrides, classes, image_shape), None, None
    network, checkpoint_stats, source = hf.pretrained_network(weights, classes, image_shape)
    if arch not in (CONVNET, network["model_type"]):
        raise PipelineError(
            f"params.yaml: train.model.arch is {arch}, but {weights} holds a {network['model_type']} "
            "(with weights the arch is the checkpoint's: set arch to it, or to convnet)"
        )
    return network, checkpoint_stats, source


def initial_model(config: ModelConfig, weights: Path | None) -> nn.Module:
    """The network training starts from: fresh (seeded by the global torch seed), or holding the
    checkpoint in ``weights`` with a new head."""
    if weights is None:
        return build_model(config)
    from mlpipeline.modeling import hf

    return hf.from_pretrained(config, weights)


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
