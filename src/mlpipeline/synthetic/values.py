"""What the real images' pixel values look like, so synthetic ones can match them.

Generators draw ink coverage in [0, 1]; ``ValueMap`` turns it into the real
data's values: background and ink intensity per channel (which end is the
background is read off the image borders), and, when the real data has only a
few distinct values (scikit-learn's digits have 17), snapping onto exactly
those, so a model cannot tell synthetic from real by its value histogram.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mlpipeline.core.errors import PipelineError

MAX_LEVELS = 32  # real data with at most this many distinct values per channel is snapped to them
RANGE_QUANTILES = (0.001, 0.999)  # robust to a few outlier pixels


@dataclass(frozen=True)
class ChannelValues:
    background: float
    ink: float
    levels: tuple[int, ...] | None  # distinct real values to snap to, or None for a continuous range

    def lookup(self) -> np.ndarray:
        """uint8 -> uint8 table: clip to the background..ink range, then snap to the nearest level."""
        low, high = sorted((self.background, self.ink))
        values = np.clip(np.arange(256), low, high)
        if self.levels is not None:
            levels = np.asarray(self.levels)
            midpoints = (levels[1:] + levels[:-1]) / 2
            values = levels[np.searchsorted(midpoints, values)]
        return np.rint(values).astype(np.uint8)


@dataclass(frozen=True)
class ValueMap:
    channels: tuple[ChannelValues, ...]

    def to_json(self) -> list[dict[str, object]]:
        return [
            {"background": c.background, "ink": c.ink, "levels": list(c.levels) if c.levels else None}
            for c in self.channels
        ]

    def apply(self, coverage: torch.Tensor, noise: float, generator: torch.Generator) -> torch.Tensor:
        """Map ink coverage N x 1 x H x W in [0, 1] to uint8 N x C x H x W real-like values.

        ``noise`` is the std of Gaussian pixel noise as a fraction of the ink contrast.
        """
        planes = []
        for channel in self.channels:
            contrast = channel.ink - channel.background
            value = coverage * contrast + channel.background
            if noise > 0:
                jitter = torch.randn(value.shape, generator=generator, device=value.device)
                value.add_(jitter.mul_(noise * abs(contrast)))
            table = torch.from_numpy(channel.lookup()).to(value.device)
            planes.append(table[value.round_().clamp_(0, 255).long()])
        return torch.cat(planes, dim=1)


class ValueStats:
    """Streaming per-channel histogram and border mean: memory does not grow with the data."""

    def __init__(self, channels: int) -> None:
        self.histogram = np.zeros((channels, 256), dtype=np.int64)
        self.border_sum = np.zeros(channels, dtype=np.float64)
        self.border_count = 0

    def add(self, images: np.ndarray) -> None:
        for c in range(images.shape[1]):
            self.histogram[c] += np.bincount(images[:, c].ravel(), minlength=256)
        border = np.concatenate(
            [images[:, :, 0, :], images[:, :, -1, :], images[:, :, 1:-1, 0], images[:, :, 1:-1, -1]], axis=2
        )
        self.border_sum += border.sum(axis=(0, 2), dtype=np.float64)
        self.border_count += border.shape[0] * border.shape[2]

    def value_map(self, source: str) -> ValueMap:
        """The learned map; ``source`` names the data in errors."""
        if self.border_count == 0:
            raise PipelineError(f"{source}: no images to learn pixel values from")
        channels = []
        for histogram, border_sum in zip(self.histogram, self.border_sum, strict=True):
            cumulative = np.cumsum(histogram) / histogram.sum()
            low, high = (int(np.searchsorted(cumulative, q)) for q in RANGE_QUANTILES)
            border_mean = border_sum / self.border_count
            background, ink = (low, high) if border_mean - low <= high - border_mean else (high, low)
            present = np.flatnonzero(histogram)
            present = present[(present >= low) & (present <= high)]
            levels = tuple(int(v) for v in present) if len(present) <= MAX_LEVELS else None
            channels.append(ChannelValues(float(background), float(ink), levels))
        if all(c.background == c.ink for c in channels):
            raise PipelineError(f"{source}: every pixel has the same value: no ink to imitate")
        return ValueMap(tuple(channels))
