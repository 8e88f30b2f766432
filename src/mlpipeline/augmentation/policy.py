"""An automatic augmentation policy: RandAugment (Cubuk et al., 2020) or TrivialAugment
(Mueller and Hutter, 2021), with torchvision's op set and magnitude ranges.

Each image takes ``ops`` ops (TrivialAugment: one) drawn uniformly from ``OPS``, at magnitude bin
``magnitude`` of ``BINS - 1`` (TrivialAugment: a bin drawn per image), signed ops taking either
sign. The geometric ops (rotate, shear, translate) become one map per image, resampled with the
crop, affine and elastic warps in the single bilinear pass; the pixel ops are the integer kernels
of ``augmentation.pixels``, run in the drawn order after it. Two departures from torchvision:
shears turn about the image centre (torchvision's RandAugment shears about the top-left corner,
shifting the image too), and TrivialAugment's translation of up to 32 px (its ImageNet size of
224) is taken as 1/7 of the side, so it means the same at 32 px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mlpipeline.augmentation.maps import Maps
from mlpipeline.augmentation.pixels import PixelOp, pixel_op, to_factors
from mlpipeline.core.bitexact import sin_cos
from mlpipeline.core.params import param, params_dataclass

PolicyKind = Literal["none", "randaugment", "trivialaugment"]
BINS = 31  # magnitude bins 0..30, as torchvision's num_magnitude_bins
GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")  # signed, resampled
# Pillow's ImageEnhance ops (signed factors about 1), by the kernel of augmentation.pixels they run.
ENHANCE = {
    "brightness": "brightness",
    "colour": "saturation",
    "contrast": "contrast",
    "sharpness": "sharpness",
}
OPS = ("identity", *GEOMETRIC, *ENHANCE, "posterize", "solarize", "autocontrast", "equalize")


@dataclass(frozen=True)
class Ranges:
    """The magnitude at the top bin of each kind of op."""

    shear: float  # tan of the slant
    translate: float  # fraction of the side
    rotate: float  # degrees
    enhance: float  # factor deviation from 1
    posterize_bits_lost: int


RANGES = {
    "randaugment": Ranges(shear=0.3, translate=150 / 331, rotate=30.0, enhance=0.9, posterize_bits_lost=4),
    "trivialaugment": Ranges(shear=0.99, translate=1 / 7, rotate=135.0, enhance=0.99, posterize_bits_lost=6),
}


@params_dataclass
class PolicyParams:
    kind: PolicyKind
    ops: int = param(ge=1, le=8)  # randaugment: ops per image (trivialaugment: always 1)
    magnitude: int = param(ge=0, le=BINS - 1)  # randaugment: the bin of every op (trivialaugment: drawn)

    @property
    def active(self) -> bool:
        return self.kind != "none"


def policy_draws(
    policy: PolicyParams, n: int, size: tuple[int, int], draws: np.random.Generator
) -> tuple[Maps, list[PixelOp]]:
    """Each image's ops: their geometry as one map per image, and the pixel ops in drawn order."""
    slots = policy.ops if policy.kind == "randaugment" else 1
    chosen = draws.integers(0, len(OPS), (n, slots))
    bins = (
        np.full((n, slots), policy.magnitude)
        if policy.kind == "randaugment"
        else draws.integers(0, BINS, (n, 1))
    )
    signs = np.where(draws.random((n, slots)) < 0.5, -1.0, 1.0)
    ranges = RANGES[policy.kind]
    maps, pixels = Maps.identity(n), []
    for slot in range(slots):
        for index, name in enumerate(OPS):
            rows = np.flatnonzero(chosen[:, slot] == index)
            if name == "identity" or not len(rows):
                continue
            level = bins[rows, slot]
            signed = level / (BINS - 1) * signs[rows, slot]  # -1..1 of the op's range
            if name in GEOMETRIC:
                maps = maps.then(geometric(name, rows, signed, ranges, n, size))
            else:
                pixels.append(pixel(name, rows, level, signed, ranges))
    return maps, pixels


def geometric(
    name: str, rows: np.ndarray, signed: np.ndarray, ranges: Ranges, n: int, size: tuple[int, int]
) -> Maps:
    """The sampling map of a geometric op for ``rows`` (the identity elsewhere)."""
    height, width = size
    parts = Maps.identity(n)
    xx, xy, yx, yy, x0, y0 = (part.copy() for part in parts.parts)
    if name == "shear_x":
        xy[rows] = signed * ranges.shear
    elif name == "shear_y":
        yx[rows] = signed * ranges.shear
    elif name == "translate_x":
        x0[rows] = signed * ranges.translate * width
    elif name == "translate_y":
        y0[rows] = signed * ranges.translate * height
    else:
        sin, cos = sin_cos(signed * (ranges.rotate * math.pi / 180))
        xx[rows], xy[rows], yx[rows], yy[rows] = cos, -sin, sin, cos
    return Maps(xx, xy, yx, yy, x0, y0)


def pixel(name: str, rows: np.ndarray, level: np.ndarray, signed: np.ndarray, ranges: Ranges) -> PixelOp:
    """The pixel op of ``name`` for ``rows`` at magnitude bins ``level`` (``signed``: -1..1)."""
    top = BINS - 1
    if name in ENHANCE:
        return pixel_op(ENHANCE[name], rows, to_factors(1 + signed * ranges.enhance))
    if name == "posterize":  # bits lost: level / top of the range, rounded (never a tie here)
        return pixel_op(name, rows, 8 - (2 * level * ranges.posterize_bits_lost + top) // (2 * top))
    if name == "solarize":  # torchvision's threshold 255 x (1 - level / top), as a whole level
        return pixel_op(name, rows, -(-255 * (top - level) // top))
    return pixel_op(name, rows)
