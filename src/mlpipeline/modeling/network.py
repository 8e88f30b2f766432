"""The network and its portable form: safetensors weights plus a JSON config, never a pickle.

The network is built from a ``ModelConfig`` (``mlpipeline.modeling.config``, re-exported here).
A transformers arch is built by ``mlpipeline.modeling.hf``, imported only when one is asked
for, so the CNN's start-up never pays for importing transformers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlpipeline.core.channel_sums import ChannelSums
from mlpipeline.core.errors import PipelineError
from mlpipeline.modeling.config import CONVNET, ModelConfig
from mlpipeline.modeling.inputs import NormalizedInput


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
    stats: Callable[[], tuple[list[float], list[float]]],
    preprocessing: dict[str, Any] | None,
    widths: list[int],
    dropout: float,
    overrides: dict[str, dict[str, Any]],
    weights: Path | None,
) -> ModelConfig:
    """The config of the network to train on data of ``classes`` and ``image_shape``. With
    ``weights`` (a checkpoint folder) the arch is the checkpoint's and the normalization its
    preprocessor's, when it has one; else ``arch`` sized by ``widths`` and ``dropout`` (convnet)
    or by ``overrides[arch]`` (a transformers arch), and the normalization the data's channel
    (mean, std), which ``stats`` works out: called only when no checkpoint brings its own."""
    network, checkpoint_stats, source = fitted_network(arch, classes, image_shape, overrides, weights)
    mean, std = checkpoint_stats if checkpoint_stats is not None else stats()
    common: dict[str, Any] = {"mean": mean, "std": std, "preprocessing": preprocessing}
    if network is None:
        return ModelConfig(classes, image_shape, widths=list(widths), dropout=dropout, **common)
    from mlpipeline.modeling import hf  # imports transformers: only for its archs

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
    return ChannelSums.of(images).mean_std()


def streamed_channel_stats(batches: Iterable[np.ndarray]) -> tuple[list[float], list[float]]:
    """``channel_stats`` of the images of ``batches`` (a dataset's shards, say) taken in turn, a full
    pass over them; from exact integer sums (``core.channel_sums``), so the figures do not depend
    on how the images are batched: what training reads from ``dataset.json`` instead."""
    total: ChannelSums | None = None
    for images in batches:  # one in memory at a time
        sums = ChannelSums.of(images)
        total = sums if total is None else total + sums
    if total is None:
        raise ValueError("channel statistics of no images")
    return total.mean_std()
