"""Exact per-channel sums of pixel values and of their squares: what a split's input normalization
(a mean and a std a channel) is computed from. Whoever writes a shard records its sums in
``dataset.json`` (``core.shards``), so training reads its normalization without a pass over the
images, and a growing dataset keeps a shard's sums while its live rows stay the same.

Integers, so the figures do not depend on how the images are batched or which shards hold them:
a split's sums are its shards' sums added up, in Python's integers as they are read (a split's
totals pass 2**53 at ImageNet's size). ``dataset.json`` keeps them as text, a shard's numbers on
one line (``to_text``): exact for any JSON reader, and small, since a data version rewrites
``dataset.json`` and its bytes count against what the version reuses (docs/growing.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

MIN_STD = 1e-6  # a constant channel still divides by something
CHUNK_VALUES = 1 << 18  # values squared at a time: a 1 MiB temporary (a shard writer's peak holds it)
_SQUARES = np.arange(256, dtype=np.int32) ** 2


@dataclass(frozen=True)
class ChannelSums:
    pixels: int  # values summed in each channel (images x H x W)
    sums: tuple[int, ...]  # one a channel
    squares: tuple[int, ...]

    @classmethod
    def zero(cls, channels: int) -> ChannelSums:
        return cls(0, (0,) * channels, (0,) * channels)

    @classmethod
    def of(cls, images: np.ndarray) -> ChannelSums:
        """The sums of uint8 ``images`` (N x C x H x W), a chunk at a time."""
        n, channels, height, width = images.shape
        total = cls.zero(channels)
        step = max(1, CHUNK_VALUES // max(1, channels * height * width))
        for start in range(0, n, step):
            chunk = images[start : start + step]
            sums = chunk.sum(axis=(0, 2, 3), dtype=np.int64).tolist()
            squares = _SQUARES[chunk].sum(axis=(0, 2, 3), dtype=np.int64).tolist()
            total += cls(len(chunk) * height * width, tuple(sums), tuple(squares))
        return total

    @classmethod
    def total(cls, parts: Iterable[ChannelSums], channels: int) -> ChannelSums:
        return sum(parts, cls.zero(channels))

    def __add__(self, other: ChannelSums) -> ChannelSums:
        return ChannelSums(
            self.pixels + other.pixels,
            tuple(a + b for a, b in zip(self.sums, other.sums, strict=True)),
            tuple(a + b for a, b in zip(self.squares, other.squares, strict=True)),
        )

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the values scaled to [0, 1], each the correctly rounded value
        of the exact one (a std at least ``MIN_STD``)."""
        if self.pixels == 0:
            raise ValueError("channel statistics of no images")
        scale = self.pixels * 255
        mean = [total / scale for total in self.sums]
        variance = [
            Fraction(self.pixels * squares - total**2, scale**2)
            for total, squares in zip(self.sums, self.squares, strict=True)
        ]
        return mean, [max(math.sqrt(v), MIN_STD) for v in variance]

    def to_text(self) -> str:
        """The sums then the squares, a number a channel, space-separated (the pixel count is the
        shard's live rows times H x W: ``dataset.json`` has it already)."""
        return " ".join(map(str, (*self.sums, *self.squares)))

    @classmethod
    def from_text(cls, text: str, channels: int, pixels: int) -> ChannelSums:
        """What ``to_text`` wrote, for ``pixels`` values a channel; ValueError unless it is 2 x
        ``channels`` whole numbers, each at most what that many pixels can add up to."""
        words = text.split(" ")
        if len(words) != 2 * channels or not all(word.isascii() and word.isdigit() for word in words):
            raise ValueError(f"channel sums need {2 * channels} whole numbers >= 0, got {text!r}")
        numbers = [int(word) for word in words]
        sums, squares = tuple(numbers[:channels]), tuple(numbers[channels:])
        if max(sums) > 255 * pixels or max(squares) > 255**2 * pixels:
            raise ValueError(f"channel sums {text!r} exceed what {pixels} pixels a channel add up to")
        return cls(pixels, sums, squares)
