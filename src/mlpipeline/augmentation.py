"""Vectorized image augmentation: random affine, elastic distortion, noise, cutout, dropped values.

``augment`` transforms a whole batch (uint8 N x C x H x W, any C, H, W) with a
handful of tensor ops and no Python loop over images (about 100x faster than
one image per call at 8x8, see ``bench/augment.py``). Every random number is
drawn with numpy from named streams (``core.seeding.rng``) rather than from
torch: the draws are then the same on CPU, CUDA and MPS, and each transform has
its own stream, so switching one off never changes what another one draws.
Ranges are fractions of the image size where a size is involved, so the same
params suit 8x8 and 64x64 images.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Self

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from mlpipeline.core.params import param, params_dataclass
from mlpipeline.core.seeding import rng

Padding = Literal["zeros", "border", "reflection"]


@params_dataclass
class AffineParams:
    probability: float = param(ge=0, le=1)
    rotation: float = param(ge=0, le=180)  # degrees, uniform in [-rotation, rotation]
    scale: list[Annotated[float, Field(gt=0, le=10)]] = param(min_len=2, max_len=2)  # [low, high]; 1: same
    shear: float = param(ge=0, le=60)  # degrees, uniform in [-shear, shear]
    translate: float = param(ge=0, le=1)  # fraction of width / height, either way

    @model_validator(mode="after")
    def check(self) -> Self:
        if self.scale[0] > self.scale[1]:
            raise ValueError(f"scale must be [low, high] with low <= high, got {self.scale}")
        return self

    @property
    def active(self) -> bool:
        moves = self.rotation or self.shear or self.translate or self.scale != [1.0, 1.0]
        return bool(self.probability and moves)


@params_dataclass
class ElasticParams:
    probability: float = param(ge=0, le=1)
    alpha: float = param(ge=0, le=1)  # RMS displacement, fraction of width / height
    sigma: float = param(gt=0, le=1)  # smoothness of the field, fraction of width / height

    @property
    def active(self) -> bool:
        return bool(self.probability and self.alpha)


@params_dataclass
class CutoutParams:
    probability: float = param(ge=0, le=1)
    size: float = param(ge=0, le=1)  # side of the erased rectangle, fraction of width / height

    @property
    def active(self) -> bool:
        return bool(self.probability and self.size)


@params_dataclass
class Transforms:
    """What one augmented copy goes through, in this order."""

    padding: Padding  # what a warp shows beyond the image edge
    affine: AffineParams
    elastic: ElasticParams
    noise_std: float = param(ge=0, le=255)  # Gaussian noise, in pixel units of 0..255
    cutout: CutoutParams
    drop_values: float = param(ge=0, le=1)  # chance of each pixel to be set to 0 (missing value)


def augment(images: torch.Tensor, transforms: Transforms, seed: int, *stream: str | int) -> torch.Tensor:
    """One augmented copy of every image in ``images`` (uint8 N x C x H x W); same shape and dtype.

    The randomness comes from ``seed`` and ``stream`` only (name the batch in
    ``stream``), so the same call gives the same bytes on CPU. Works on the
    device ``images`` lives on.
    """
    n, _, height, width = images.shape
    x = images.to(torch.float32)
    if transforms.affine.active or transforms.elastic.active:
        grid = affine_grid(transforms.affine, n, (height, width), rng(seed, *stream, "affine"))
        add_elastic(grid, transforms.elastic, rng(seed, *stream, "elastic"))
        grid = grid.to(x.device)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode=transforms.padding, align_corners=False)
    if transforms.noise_std:
        noise = rng(seed, *stream, "noise").standard_normal(x.shape, dtype=np.float32)
        x.add_(torch.from_numpy(noise).to(x.device), alpha=transforms.noise_std)
    if transforms.cutout.active:
        mask = cutout_mask(transforms.cutout, n, (height, width), rng(seed, *stream, "cutout"))
        x.masked_fill_(torch.from_numpy(mask).to(x.device), 0.0)
    if transforms.drop_values:
        draws = rng(seed, *stream, "drop").random((n, 1, height, width), dtype=np.float32)
        x.masked_fill_(torch.from_numpy(draws < transforms.drop_values).to(x.device), 0.0)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def affine_grid(
    affine: AffineParams, n: int, size: tuple[int, int], draws: np.random.Generator
) -> torch.Tensor:
    """Sampling grid (N x H x W x 2, normalized coordinates) of one random affine map per image.

    The map is built in pixel units around the image centre (so rotation keeps
    angles on non-square images), inverted (``grid_sample`` pulls from the
    input) and expressed in the -1..1 coordinates ``affine_grid`` expects.
    Images the probability leaves out get the identity.
    """
    height, width = size
    chosen = draws.random(n) < affine.probability
    angle = np.radians(draws.uniform(-affine.rotation, affine.rotation, n)) * chosen
    shear = np.tan(np.radians(draws.uniform(-affine.shear, affine.shear, n))) * chosen
    scale = np.where(chosen, draws.uniform(affine.scale[0], affine.scale[1], n), 1.0)
    shift = draws.uniform(-affine.translate, affine.translate, (n, 2)) * 2 * chosen[:, None]  # normalized
    cos, sin = np.cos(angle), np.sin(angle)
    # Inverse of rotate(angle) @ shear_x(shear) @ scale, in pixel units: (1/s) Sh^-1 R^-1.
    inverse = (
        np.stack([np.stack([cos + shear * sin, sin - shear * cos], -1), np.stack([-sin, cos], -1)], -2)
        / scale[:, None, None]
    )
    # Pixel units -> normalized: x_norm = x_px * 2 / width, y_norm = y_px * 2 / height.
    to_norm = np.array([2 / width, 2 / height])
    linear = inverse * to_norm[None, :, None] / to_norm[None, None, :]
    offset = -np.einsum("nij,nj->ni", linear, shift)
    theta = torch.from_numpy(np.concatenate([linear, offset[:, :, None]], axis=2).astype(np.float32))
    return F.affine_grid(theta, [n, 1, height, width], align_corners=False)


def add_elastic(grid: torch.Tensor, elastic: ElasticParams, draws: np.random.Generator) -> None:
    """Add a smooth random displacement field to the chosen images' sampling ``grid`` in place.

    Each field is white noise on a canvas larger by the kernel radius (so the
    smoothing has no border effect), smoothed by a separable Gaussian and scaled
    to unit RMS, then to ``alpha``. The smoothing is written as two batched
    matmuls with banded matrices, the same arithmetic as a separable
    ``conv2d`` but several times faster on CPU for single-channel fields.
    Uniform noise (as in Simard et al. 2003) is five times cheaper to draw than
    Gaussian noise and, summed over a kernel, just as Gaussian.
    """
    if not elastic.active:
        return
    n, height, width, _ = grid.shape
    chosen = np.flatnonzero(draws.random(n) < elastic.probability)
    if not len(chosen):
        return
    smooth_y, norm_y = _smoothing_matrix(height, elastic.sigma * height)
    smooth_x, norm_x = _smoothing_matrix(width, elastic.sigma * width)
    canvas = (len(chosen), 2, smooth_y.shape[1], smooth_x.shape[1])
    noise = torch.from_numpy(draws.random(canvas, dtype=np.float32)).sub_(0.5)  # variance 1/12
    field = smooth_y @ noise @ smooth_x.T
    gain = 2 * elastic.alpha / (math.sqrt(1 / 12) * norm_x * norm_y)  # 2: normalized units span 2
    grid[torch.from_numpy(chosen)] += field.permute(0, 2, 3, 1).mul_(gain)


def _smoothing_matrix(size: int, sigma_px: float) -> tuple[torch.Tensor, float]:
    """Banded ``size x (size + 2 radius)`` matrix whose rows are a Gaussian kernel; and its L2 norm.

    Multiplying a canvas by it is a valid-mode 1-D convolution; smoothing white
    noise of variance v with the kernel leaves variance v * norm**2.
    """
    radius = max(1, math.ceil(3 * sigma_px))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma_px) ** 2)
    kernel /= kernel.sum()
    columns = torch.arange(size)[:, None] + torch.arange(len(taps))[None, :]
    matrix = torch.zeros(size, size + 2 * radius, dtype=torch.float64)
    matrix.scatter_(1, columns, kernel.expand(size, -1))
    return matrix.to(torch.float32), float(kernel.norm())


def cutout_mask(
    cutout: CutoutParams, n: int, size: tuple[int, int], draws: np.random.Generator
) -> np.ndarray:
    """Boolean N x 1 x H x W mask of one rectangle per chosen image, centred anywhere in it."""
    height, width = size
    chosen = draws.random(n) < cutout.probability
    box_h, box_w = round(cutout.size * height), round(cutout.size * width)
    top = draws.integers(0, height, n) - box_h // 2
    left = draws.integers(0, width, n) - box_w // 2
    rows = np.arange(height)[None, :] - top[:, None]
    cols = np.arange(width)[None, :] - left[:, None]
    in_rows = (rows >= 0) & (rows < box_h) & chosen[:, None]
    in_cols = (cols >= 0) & (cols < box_w)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]
