"""Vectorized image augmentation: random-resized crop, random affine, elastic distortion, an
automatic policy (RandAugment, TrivialAugment), colour jitter, noise, cutout, dropped values, flips.

``augment`` transforms a whole batch (uint8 N x C x H x W, any C, H, W) with a
handful of array ops and no Python loop over images (see ``bench/augment.py``
for the speed against one image per call). Ranges are fractions of the image
size where a size is involved, so the same params suit 8x8 and 64x64 images.

The output bytes are the same on every CPU and device, so is the stage's DVC
hash (``tests/test_cross_cpu.py`` checks it on every code path the machine
running the tests can be forced onto, and against the committed ``dvc.lock``):

- Every random number comes from numpy's generators, from named streams
  (``core.seeding.rng``, one per transform: switching one off never changes
  what another draws), as integers or as ``random()`` (an integer times a power
  of two): numpy's bit generators give the same bits everywhere. Not used:
  torch's generators (CPU and CUDA differ), ``standard_normal`` (exp and log on
  its rare slow path) and ``Generator.uniform`` (see ``uniform``).
- Everything computed from the draws is exact: integers; float64 numpy ops
  from IEEE 754's correctly rounded + - * / and sqrt, one at a time (sin, cos
  and exp are polynomials of them); and the elastic smoothing's matrix
  products, whose products and partial sums are small multiples of 1/2, exact
  in any order of summation.
- The warp is bilinear interpolation in integers on a 1/256 px grid
  (``mlpipeline.core.bitexact`` says why rounding a float result at the end would
  not do). The per-pixel work on the images' device is int32 gathers,
  multiplies, adds and shifts: exact on CUDA and MPS as on the CPU (no float at
  all, so no float64, which MPS lacks), though only the CPU is tested here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Self

import numpy as np
import torch
from pydantic import Field, model_validator

from mlpipeline.augmentation.colour import ColourParams, colour_ops
from mlpipeline.augmentation.crop import CropParams, crop_maps
from mlpipeline.augmentation.maps import Maps
from mlpipeline.augmentation.pixels import PixelOp
from mlpipeline.augmentation.policy import PolicyParams, policy_draws
from mlpipeline.core.bitexact import (
    ONE,
    SAMPLE_BITS,
    Padding,
    bilinear_taps,
    exp_neg,
    gather_bilinear,
    noise_levels,
    noise_sums,
    round_to_uint8,
    sin_cos,
    uniform,
)
from mlpipeline.core.device import staged_for, to_device
from mlpipeline.core.params import param, params_dataclass
from mlpipeline.core.seeding import rng

RADIANS_PER_DEGREE = math.pi / 180
ELASTIC_VARIANCE = (256**2 - 1) / 12  # of the elastic field's white noise, uniform over 256 values
ELASTIC_CHUNK = 512  # images whose elastic fields are smoothed at once
KERNEL_ONE = 1 << 10  # the elastic smoothing kernel's centre tap; the others are rounded to integers
ELASTIC_GRID_PER_SIGMA = 4  # elastic field points per sigma: linear between them is within 2% of RMS


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
class FlipParams:
    horizontal: float = param(ge=0, le=1)  # chance of a left-right mirror image
    vertical: float = param(ge=0, le=1)  # chance of an upside-down one

    @property
    def active(self) -> bool:
        return bool(self.horizontal or self.vertical)


@params_dataclass
class Transforms:
    """What one augmented copy goes through: one bilinear resampling for the geometry (the crop,
    the policy's geometric ops, the affine map and the elastic field), then the policy's pixel
    ops and the colour jitter, the noise, cutout and dropped values, and last the flips."""

    padding: Padding  # what a warp shows beyond the image edge
    crop: CropParams
    affine: AffineParams
    elastic: ElasticParams
    policy: PolicyParams
    colour: ColourParams
    noise_std: float = param(ge=0, le=255)  # near-Gaussian noise (see gaussian_noise), pixel units
    cutout: CutoutParams
    drop_values: float = param(ge=0, le=1)  # chance of each pixel to be set to 0 (missing value)
    flip: FlipParams


def augment(images: torch.Tensor, transforms: Transforms, seed: int, *stream: str | int) -> torch.Tensor:
    """One augmented copy of every image in ``images`` (uint8 N x C x H x W); same shape and dtype.

    The randomness comes from ``seed`` and ``stream`` only (name the batch in
    ``stream``), and the bytes are the same on every CPU and device (see the
    module docstring). The random fields are drawn on the CPU (``draw``); the
    gathers and integer sums run on the device ``images`` lives on.
    """
    return draw(transforms, seed, tuple(images.shape), *stream).to(images.device).apply(images)


@dataclass(frozen=True)
class Draws:
    """Everything random about one augmented batch, worked out on the host from numpy's
    generators before its images are at hand: training draws batch k+1 while the device runs
    batch k. ``apply`` is the per-pixel integer work, on the images' device."""

    taps: tuple[torch.Tensor, ...] | None  # bilinear_taps: where each sample reads, and its weights
    noise: tuple[torch.Tensor, torch.Tensor] | None  # noise_levels and noise_sums: levels[sums]
    erase: torch.Tensor | None  # bool N x 1 x H x W: cutout and dropped values, both set to 0
    pixels: tuple[PixelOp, ...] = ()  # the policy's pixel ops, then the colour jitter's
    flips: torch.Tensor | None = None  # bool N x 2: mirrored left-right, upside down

    def to(self, device: torch.device) -> Draws:
        """On ``device``, copied without blocking (``core.device.to_device``)."""
        return self._map(lambda tensor: to_device(tensor, device))

    def staged_for(self, device: torch.device) -> Draws:
        """In pinned memory when bound for CUDA: done where the draws are made, off the
        training thread, so ``to`` is only the copy."""
        return self._map(lambda tensor: staged_for(tensor, device))

    def _map(self, move: Callable[[torch.Tensor], torch.Tensor]) -> Draws:
        taps, noise, erase, flips = self.taps, self.noise, self.erase, self.flips
        return Draws(
            taps=None if taps is None else tuple(move(t) for t in taps),
            noise=None if noise is None else (move(noise[0]), move(noise[1])),
            erase=None if erase is None else move(erase),
            pixels=tuple(op.moved(move) for op in self.pixels),
            flips=None if flips is None else move(flips),
        )

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """The augmented copy of ``images``, on their device (which the draws must be on)."""
        if self.taps is not None:
            samples = gather_bilinear(images, *self.taps)
        else:
            samples = images.to(torch.int32) << SAMPLE_BITS
        if self.pixels:  # they work on whole pixel values: the warp is rounded first
            out = round_to_uint8(samples)
            for op in self.pixels:
                op.apply(out)
            samples = out.to(torch.int32) << SAMPLE_BITS
        if self.noise is not None:
            levels, sums = self.noise
            samples += levels.index_select(0, sums.view(-1).to(torch.int32)).view(sums.shape)
        out = round_to_uint8(samples)
        if self.erase is not None:
            out.masked_fill_(self.erase, 0)
        if self.flips is not None:
            out = torch.where(self.flips[:, 0].view(-1, 1, 1, 1), out.flip(-1), out)
            out = torch.where(self.flips[:, 1].view(-1, 1, 1, 1), out.flip(-2), out)
        return out


def draw(transforms: Transforms, seed: int, shape: tuple[int, ...], *stream: str | int) -> Draws:
    """The draws of ``augment`` for a batch of ``shape`` (N x C x H x W), on the CPU. Each
    transform draws from a stream of its own, so switching one on or off changes no other's."""
    n, _, height, width = shape
    size = (height, width)
    taps = noise = erase = flips = None
    maps, pixels = None, []
    if transforms.policy.active:
        maps, pixels = policy_draws(transforms.policy, n, size, rng(seed, *stream, "policy"))
    if transforms.crop.active:
        crop = crop_maps(transforms.crop, n, size, rng(seed, *stream, "crop"))
        maps = crop if maps is None else maps.then(crop)
    if maps is not None:  # one grid for every map; the elastic field then in the image's own pixels
        x, y = affine_maps(transforms.affine, n, size, rng(seed, *stream, "affine")).then(maps).grid(size)
    if maps is not None or transforms.affine.active or transforms.elastic.active:
        if maps is None:
            x, y = affine_coordinates(transforms.affine, n, size, rng(seed, *stream, "affine"))
        add_elastic(x, y, transforms.elastic, rng(seed, *stream, "elastic"))
        taps = tuple(torch.from_numpy(t) for t in bilinear_taps(x, y, size, transforms.padding))
    if transforms.colour.active:
        pixels += colour_ops(transforms.colour, n, rng(seed, *stream, "colour"))
    if transforms.noise_std:
        sums = noise_sums(shape, rng(seed, *stream, "noise"))
        noise = (torch.from_numpy(noise_levels(transforms.noise_std)), torch.from_numpy(sums))
    if transforms.cutout.active:
        erase = cutout_mask(transforms.cutout, n, size, rng(seed, *stream, "cutout"))
    if transforms.drop_values:
        dropped = (
            rng(seed, *stream, "drop").random((n, 1, height, width), dtype=np.float32)
            < transforms.drop_values
        )
        erase = dropped if erase is None else erase | dropped
    if transforms.flip.active:
        chances = np.array([transforms.flip.horizontal, transforms.flip.vertical])
        flips = torch.from_numpy(rng(seed, *stream, "flip").random((n, 2)) < chances)
    return Draws(taps, noise, None if erase is None else torch.from_numpy(erase), tuple(pixels), flips)


def affine_inverse(
    affine: AffineParams, n: int, size: tuple[int, int], draws: np.random.Generator
) -> tuple[list[list[np.ndarray]], np.ndarray]:
    """Each image's random affine map, inverted (each output pixel pulls from the input; rows
    (i00, i01), (i10, i11), in pixel units around the image centre, so rotation keeps angles on
    non-square images), and its shift in pixels (N x 2). Images the probability leaves out get the
    identity and no shift, exactly."""
    height, width = size
    chosen = draws.random(n) < affine.probability
    angle = np.where(chosen, uniform(draws, -affine.rotation, affine.rotation, n) * RADIANS_PER_DEGREE, 0.0)
    slant = np.where(chosen, uniform(draws, -affine.shear, affine.shear, n) * RADIANS_PER_DEGREE, 0.0)
    scale = np.where(chosen, uniform(draws, affine.scale[0], affine.scale[1], n), 1.0)
    shift = uniform(draws, -affine.translate, affine.translate, (n, 2)) * np.array([width, height])
    shift *= chosen[:, None]
    sin, cos = sin_cos(angle)
    slant_sin, slant_cos = sin_cos(slant)
    shear = slant_sin / slant_cos
    # Inverse of rotate(angle) @ shear_x(shear) @ scale: (1/s) Sh^-1 R^-1.
    return [[(cos + shear * sin) / scale, (sin - shear * cos) / scale], [-sin / scale, cos / scale]], shift


def affine_coordinates(
    affine: AffineParams, n: int, size: tuple[int, int], draws: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Where each output pixel samples under one random affine map per image (``affine_inverse``):
    fixed-point x and y, int64 N x H x W arrays in steps of 1/``ONE`` px."""
    height, width = size
    inverse, shift = affine_inverse(affine, n, size, draws)
    # Output pixel centres relative to the image centre, minus the shift, in steps of 1/ONE px.
    across = ((np.arange(width) - (width - 1) / 2) - shift[:, :1]) * ONE  # N x W
    down = ((np.arange(height) - (height - 1) / 2) - shift[:, 1:]) * ONE  # N x H
    x, y = (
        a[:, None, None] * across[:, None, :] + (b[:, None] * down + (side - 1) * ONE / 2)[:, :, None]
        for (a, b), side in zip(inverse, (width, height), strict=True)
    )
    return np.rint(x, out=x).astype(np.int64), np.rint(y, out=y).astype(np.int64)


def affine_maps(affine: AffineParams, n: int, size: tuple[int, int], draws: np.random.Generator) -> Maps:
    """The map of ``affine_coordinates`` (the same draws) as ``Maps``, to compose with the crop's
    and the policy's: ``p -> inverse (p - shift)``."""
    ((a, b), (c, d)), shift = affine_inverse(affine, n, size, draws)
    right, down = shift[:, 0], shift[:, 1]
    return Maps(a, b, c, d, -(a * right + b * down), -(c * right + d * down))


def add_elastic(x: np.ndarray, y: np.ndarray, elastic: ElasticParams, draws: np.random.Generator) -> None:
    """Add a smooth random displacement to the chosen images' fixed-point coordinates, in place.

    Each field is drawn on a grid of one point every ``elastic_step`` pixels (every pixel
    below 4 ``ELASTIC_GRID_PER_SIGMA`` px of sigma: the demo's sizes, whose bytes this keeps),
    as white noise (uniform over the 256 half-integers -127.5..127.5) on a canvas larger by
    the kernel radius (so the smoothing has no border effect), smoothed by a separable
    Gaussian with integer taps, scaled to an RMS displacement of ``alpha`` times the width
    (x) or height (y), rounded to the 1/``ONE`` px grid, and then interpolated linearly to
    every pixel in integers (``upsample_linear``). The smoothing is two float64 matrix
    products with banded matrices, exact whatever BLAS does: every product and partial sum
    is a multiple of 1/2 below 2**52 (the largest possible, 127.5 * (1024 * (2.51 *
    sigma_grid + 1))**2, stays below it while sigma is under 2,000 grid points). Uniform noise
    (as in Simard et al. 2003), summed over a kernel, is as Gaussian as Gaussian noise. A
    field smooth over sigma varies little between grid points ``ELASTIC_GRID_PER_SIGMA`` to a
    sigma apart: at 224x224 the coarse grid makes the field 60 times cheaper.
    """
    if not elastic.active:
        return
    n, height, width = x.shape
    chosen = np.flatnonzero(draws.random(n) < elastic.probability)
    if not len(chosen):
        return
    step_y, step_x = (elastic_step(elastic.sigma * side) for side in (height, width))
    grid_h, grid_w = -(-(height - 1) // step_y) + 1, -(-(width - 1) // step_x) + 1
    smooth_y, squares_y = smoothing_matrix(grid_h, elastic.sigma * height / step_y)
    smooth_x, squares_x = smoothing_matrix(grid_w, elastic.sigma * width / step_x)
    rows, cols = smooth_y.shape[1], smooth_x.shape[1]
    # Canvas rows first (rows x images x 2 x cols), so each pass is one large matrix product.
    noise = draws.integers(0, 256, (rows, len(chosen), 2, cols), dtype=np.uint8)
    rms = math.sqrt(ELASTIC_VARIANCE * squares_y * squares_x)
    gains = [elastic.alpha * side * ONE / rms for side in (width, height)]
    for start in range(0, len(chosen), ELASTIC_CHUNK):  # float64 canvases are large: a few at a time
        images = chosen[start : start + ELASTIC_CHUNK]
        canvas = torch.from_numpy(noise[:, start : start + len(images)]).to(torch.float64).sub_(127.5)
        smoothed = (canvas.reshape(-1, cols) @ smooth_x.T).view(rows, -1)
        field = (smooth_y @ smoothed).view(grid_h, len(images), 2, grid_w).numpy()
        for axis, coordinates in enumerate((x, y)):
            shift = field[:, :, axis].transpose(1, 0, 2) * gains[axis]
            shift = np.rint(shift, out=shift).astype(np.int64)
            coordinates[images] += upsample_linear(shift, (step_y, step_x), (height, width))


def elastic_step(sigma_px: float) -> int:
    """Pixels between the elastic field's grid points: a power of two (the upsampling's one
    rounding is then a shift), at most a sigma over ``ELASTIC_GRID_PER_SIGMA``."""
    return 1 << max(0, int(sigma_px / ELASTIC_GRID_PER_SIGMA).bit_length() - 1)


def upsample_linear(grid: np.ndarray, steps: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Integer ``grid`` (N x h x w, points ``steps`` px apart, powers of two) interpolated
    bilinearly to every pixel of ``size``, in integers: weights in whole steps, one rounding
    (halves up) at the end."""
    if steps == (1, 1):
        return grid
    for axis, step in ((1, steps[0]), (2, steps[1])):
        grid = _interpolate(grid, axis, step)
    out = grid[:, : size[0], : size[1]]
    out += (steps[0] * steps[1]) // 2
    out >>= (steps[0] * steps[1]).bit_length() - 1
    return out


def _interpolate(grid: np.ndarray, axis: int, step: int) -> np.ndarray:
    """``grid`` with ``step`` points per interval along ``axis`` (1 or 2), times ``step``: point
    ``i * step + k`` is ``grid[i] * (step - k) + grid[i + 1] * k``, by broadcasting (no gathers)."""
    moved = np.moveaxis(grid, axis, -1)
    start, rise = moved[..., :-1], np.diff(moved, axis=-1)
    within = np.arange(step)
    fine = start[..., None] * step + rise[..., None] * within  # ... x intervals x step
    fine = fine.reshape(*moved.shape[:-1], -1)
    last = moved[..., -1:] * step  # the last point itself
    return np.moveaxis(np.concatenate([fine, last], axis=-1), -1, axis)


def smoothing_matrix(size: int, sigma_px: float) -> tuple[torch.Tensor, int]:
    """Banded ``size x (size + 2 radius)`` float64 matrix whose rows are a Gaussian kernel with
    integer taps (``KERNEL_ONE`` at the centre); and the sum of the taps' squares.

    Multiplying a canvas by it is a valid-mode 1-D convolution; smoothing white
    noise of variance v with it leaves variance v * (sum of squares).
    """
    radius = max(1, math.ceil(3 * sigma_px))
    taps = np.arange(-radius, radius + 1) / sigma_px
    kernel = np.rint(exp_neg(0.5 * taps * taps) * KERNEL_ONE)
    rows = np.arange(size)[:, None]
    matrix = np.zeros((size, size + 2 * radius))
    matrix[rows, rows + np.arange(len(taps))] = kernel
    return torch.from_numpy(matrix), int(np.square(kernel).sum())


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
