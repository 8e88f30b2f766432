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

from mlpipeline.core.bitexact import ONE, gaussian_noise, round_to_uint8
from mlpipeline.core.errors import PipelineError
from mlpipeline.synthetic.draws import exact_draws

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

        ``noise`` is the std of near-Gaussian pixel noise (``bitexact.gaussian_noise``) as a
        fraction of the ink contrast. Exact: the same bytes on every CPU for the same coverage
        (one correctly rounded float64 product per value, then integers).
        """
        shares = coverage.to(torch.float64).clamp(0, 1)
        draws = exact_draws(generator) if noise > 0 else None
        planes = []
        for channel in self.channels:
            contrast = channel.ink - channel.background
            steps = shares.mul(contrast * ONE**2).round_().to(torch.int32)  # in 1/ONE**2 values
            steps += round(channel.background) * ONE**2
            if draws is not None:
                jitter = gaussian_noise(noise * abs(contrast), tuple(steps.shape), draws)
                steps += torch.from_numpy(jitter).to(steps.device)
            table = torch.from_numpy(channel.lookup()).to(steps.device)
            planes.append(table[round_to_uint8(steps).long()])
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
