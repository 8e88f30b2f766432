"""Pixel operations in exact integer arithmetic: the colour jitter's brightness, contrast,
saturation and hue, and the policy's sharpness, posterize, solarize, autocontrast and equalize.

Each kernel takes uint8 images (M x C x H x W) and one value per image (a factor in
1/``FACTOR_ONE`` steps, a bit count, a threshold, or a 3 x 3 hue matrix) and returns uint8
images, rounding once (halves up) and clamping to 0..255, with integer multiplies, adds, shifts and
floor divisions only (int32 where the values fit, which is nearly everywhere: half the memory
traffic of int64): the same bytes on every CPU and on any device. The blends follow Pillow's
``ImageEnhance`` (and torchvision's tensor ops): ``factor x image + (1 - factor) x degenerate``,
where the degenerate image is black (brightness), the mean grey (contrast), the grey of each pixel
(saturation) or a smoothed image (sharpness), each rounded to 1/256 of a level; grey is ITU-R
601-2 luma with Pillow's integer weights. Factors up to 2 (the jitter's and the policy's largest)
keep every sum below 2**30. Hue is a rotation of each pixel about the grey axis (one 3 x 3 integer
matrix per image, whose rows sum to exactly ``FACTOR_ONE``, so greys stay grey), close to HSV's
hue shift without its per-pixel branches. Saturation and hue leave one-channel images as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mlpipeline.core.bitexact import sin_cos

FACTOR_BITS = 12
FACTOR_ONE = 1 << FACTOR_BITS  # factors and hue matrices in 1/4096 steps
LUMA_BITS = 16
LUMA = (19595, 38470, 7471)  # ITU-R 601-2 in 1/65536 (Pillow's "L" conversion); they sum to 65536
GREY_BITS = 8  # degenerate images in 1/256 of a level
BLEND_BITS = FACTOR_BITS + GREY_BITS
SMOOTH_CENTRE, SMOOTH_SUM = 5, 13  # Pillow's SMOOTH filter: ones around a centre of 5, over 13


def to_factors(factors: np.ndarray) -> np.ndarray:
    """float64 factors as int64 in 1/``FACTOR_ONE`` steps (``np.rint``: exact, halves to even)."""
    return np.rint(factors * FACTOR_ONE).astype(np.int64)


def luma(images: torch.Tensor) -> torch.Tensor:
    """Grey of each pixel, int32 M x 1 x H x W in 1/65536 of a level (exact: no rounding)."""
    values = images.to(torch.int32)
    if images.shape[1] == 1:
        return values << LUMA_BITS
    return values[:, 0:1] * LUMA[0] + values[:, 1:2] * LUMA[1] + values[:, 2:3] * LUMA[2]


def grey(images: torch.Tensor) -> torch.Tensor:
    """``luma`` rounded to 1/256 of a level (the unit of degenerate images)."""
    shift = LUMA_BITS - GREY_BITS
    return (luma(images) + (1 << (shift - 1))) >> shift


def blend(images: torch.Tensor, degenerate: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``factor x images + (1 - factor) x degenerate`` (degenerate int32 in 1/256 levels, any
    shape that broadcasts), rounded and clamped to uint8."""
    factor = factors.to(torch.int32).view(-1, 1, 1, 1)
    total = (images.to(torch.int32) * factor) << GREY_BITS
    total += degenerate * (FACTOR_ONE - factor)
    return _rounded(total, BLEND_BITS)


def _rounded(total: torch.Tensor, bits: int) -> torch.Tensor:
    return ((total + (1 << (bits - 1))) >> bits).clamp_(0, 255).to(torch.uint8)


def brightness(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Scaled towards black (below 1) or white (above): blended with a black image."""
    factor = factors.to(torch.int32).view(-1, 1, 1, 1)
    return _rounded(images.to(torch.int32) * factor, FACTOR_BITS)


def contrast(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blended with the image's mean grey."""
    pixels = images.shape[2] * images.shape[3]
    unit = 1 << (LUMA_BITS - GREY_BITS)
    total = luma(images).sum(dim=(1, 2, 3))  # int64
    mean = torch.div(total + pixels * unit // 2, pixels * unit, rounding_mode="floor")
    return blend(images, mean.to(torch.int32).view(-1, 1, 1, 1), factors)


def saturation(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blended with each pixel's grey: 0 is the grey image (repeated), 2 twice as vivid."""
    return images if images.shape[1] == 1 else blend(images, grey(images), factors)


def hue(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Each pixel times its image's 3 x 3 matrix (M x 3 x 3, in 1/``FACTOR_ONE``)."""
    if images.shape[1] == 1:
        return images
    values, weights = images.to(torch.int32), matrices.to(torch.int32)
    out = [
        sum(weights[:, row, column].view(-1, 1, 1) * values[:, column] for column in range(3))
        for row in range(3)
    ]
    return _rounded(torch.stack(out, dim=1), FACTOR_BITS)


def hue_matrices(turns: np.ndarray) -> np.ndarray:
    """Rotations about the grey axis by ``turns`` (fractions of a full turn, |turns| <= 0.5), as
    int64 M x 3 x 3 in 1/``FACTOR_ONE``: ``cos I + (1 - cos) J / 3 + sin K / sqrt(3)`` (J all
    ones, K the cross product with the grey axis). Off-diagonal entries are rounded, each diagonal
    one completes its row to ``FACTOR_ONE``."""
    sin, cos = sin_cos(turns * (2 * math.pi))
    mix, turn = (1 - cos) / 3, sin / np.sqrt(3.0)
    after, before = to_factors(mix + turn), to_factors(mix - turn)  # the channel after / before, cyclically
    matrices = np.zeros((len(turns), 3, 3), dtype=np.int64)
    for row in range(3):
        matrices[:, row, (row + 1) % 3] = before
        matrices[:, row, (row + 2) % 3] = after
        matrices[:, row, row] = FACTOR_ONE - before - after
    return matrices


def sharpness(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blended with Pillow's SMOOTH filter of the image (border pixels: themselves)."""
    values = images.to(torch.int32)
    _, _, height, width = values.shape
    degenerate = values << GREY_BITS
    if height > 2 and width > 2:
        total = F.pad(values, (1, 1, 1, 1))
        neighbourhood = sum(
            total[:, :, dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)
        )
        smooth = (neighbourhood + (SMOOTH_CENTRE - 1) * values) << GREY_BITS
        rounded = torch.div(smooth + SMOOTH_SUM // 2, SMOOTH_SUM, rounding_mode="floor")
        degenerate[:, :, 1:-1, 1:-1] = rounded[:, :, 1:-1, 1:-1]
    return blend(images, degenerate, factors)


def posterize(images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Only the ``bits`` high bits of each value kept (Pillow's ``ImageOps.posterize``)."""
    masks = ((255 << (8 - bits)) & 255).to(torch.uint8)
    return images & masks.view(-1, 1, 1, 1)


def solarize(images: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Values at or above the threshold inverted (Pillow's ``ImageOps.solarize``)."""
    return torch.where(images.to(torch.int64) >= thresholds.view(-1, 1, 1, 1), 255 - images, images)


def autocontrast(images: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    """Each channel stretched from its darkest to its brightest value onto 0..255, rounded down
    (as Pillow's and torchvision's); a flat channel stays as it is."""
    values = images.to(torch.int32)
    low = values.amin(dim=(2, 3), keepdim=True)
    span = values.amax(dim=(2, 3), keepdim=True) - low
    stretched = torch.div((values - low) * 255, span.clamp(min=1), rounding_mode="floor")
    return torch.where(span > 0, stretched, values).to(torch.uint8)


def equalize(images: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
    """Each channel's histogram equalized as Pillow's ``ImageOps.equalize`` does it (its table,
    built from integer counts, is exact): the same bytes as Pillow."""
    count, channels, height, width = images.shape
    flat = images.reshape(count * channels, height * width).to(torch.int64)
    histogram = torch.zeros((len(flat), 256), dtype=torch.int64, device=images.device)
    histogram.scatter_add_(1, flat, torch.ones_like(flat))
    levels = torch.arange(256, device=images.device)
    last = torch.where(histogram > 0, levels, -1).amax(dim=1, keepdim=True)  # the brightest level used
    step = torch.div(height * width - histogram.gather(1, last), 255, rounding_mode="floor")
    cumulative = histogram.cumsum(dim=1) - histogram  # the counts below each level
    table = torch.div(cumulative + step // 2, step.clamp(min=1), rounding_mode="floor").clamp_(max=255)
    equalized = torch.where(step > 0, table.gather(1, flat), flat)
    return equalized.to(torch.uint8).view(count, channels, height, width)


KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "brightness": brightness,
    "contrast": contrast,
    "saturation": saturation,
    "hue": hue,
    "sharpness": sharpness,
    "posterize": posterize,
    "solarize": solarize,
    "autocontrast": autocontrast,
    "equalize": equalize,
}


@dataclass(frozen=True)
class PixelOp:
    """One kernel on some images of a batch, drawn on the host ahead of the batch."""

    kind: str  # a key of KERNELS
    rows: torch.Tensor  # int64 positions in the batch
    values: torch.Tensor  # int64, one value (or hue matrix) per row

    def moved(self, move: Callable[[torch.Tensor], torch.Tensor]) -> PixelOp:
        return PixelOp(self.kind, move(self.rows), move(self.values))

    def apply(self, images: torch.Tensor) -> None:
        """Apply the kernel to this op's rows of ``images`` (uint8, on the op's device), in place."""
        if len(self.rows):
            images[self.rows] = KERNELS[self.kind](images[self.rows], self.values)


def pixel_op(kind: str, chosen: np.ndarray, values: np.ndarray | None = None) -> PixelOp:
    """The op for the images at ``chosen`` (int positions) with their ``values`` (one per image,
    a number or a hue matrix; none: zeros)."""
    values = np.zeros(len(chosen), dtype=np.int64) if values is None else values
    return PixelOp(kind, torch.from_numpy(chosen.astype(np.int64)), torch.from_numpy(values.astype(np.int64)))
