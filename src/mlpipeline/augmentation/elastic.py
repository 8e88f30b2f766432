"""The elastic distortion: a smooth random displacement of each chosen image's sampling
coordinates, in exact arithmetic (see ``add_elastic``), drawn for a batch and added a few
images at a time (``ElasticFields``); ``augmentation.transforms`` composes it with the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mlpipeline.core.bitexact import ONE, exp_neg
from mlpipeline.core.params import param, params_dataclass

ELASTIC_VARIANCE = (256**2 - 1) / 12  # of the elastic field's white noise, uniform over 256 values
ELASTIC_CHUNK = 512  # images whose elastic fields are smoothed at once
KERNEL_ONE = 1 << 10  # the elastic smoothing kernel's centre tap; the others are rounded to integers
ELASTIC_GRID_PER_SIGMA = 4  # elastic field points per sigma: linear between them is within 2% of RMS


@params_dataclass
class ElasticParams:
    probability: float = param(ge=0, le=1)
    alpha: float = param(ge=0, le=1)  # RMS displacement, fraction of width / height
    sigma: float = param(gt=0, le=1)  # smoothness of the field, fraction of width / height

    @property
    def active(self) -> bool:
        return bool(self.probability and self.alpha)


@dataclass(frozen=True)
class ElasticFields:
    """The elastic fields of a batch, drawn (``elastic_fields``) and then smoothed and added to
    the coordinates a few images at a time (``add_to``)."""

    chosen: np.ndarray  # the images with a field, ascending
    noise: np.ndarray  # uint8 canvas rows x chosen x 2 x canvas cols
    smooth: tuple[torch.Tensor, torch.Tensor]  # smoothing matrices along y and x
    gains: tuple[float, float]  # x and y: scale to the RMS displacement, in 1/ONE px
    steps: tuple[int, int]  # pixels between grid points, y and x
    size: tuple[int, int]

    def add_to(self, x: np.ndarray, y: np.ndarray, images: slice) -> None:
        """Add the fields of the chosen images among ``images`` to their coordinates ``x``, ``y``
        (those of ``images`` only), in place. Each field is its image's own: smoothed alone or
        among others, the products and sums are exact (see ``add_elastic``)."""
        first, last = np.searchsorted(self.chosen, [images.start or 0, images.stop])
        smooth_y, smooth_x = self.smooth
        rows, cols = smooth_y.shape[1], smooth_x.shape[1]
        grid_h, grid_w = smooth_y.shape[0], smooth_x.shape[0]
        for start in range(first, last, ELASTIC_CHUNK):  # float64 canvases are large: a few at a time
            stop = min(last, start + ELASTIC_CHUNK)
            canvas = torch.from_numpy(self.noise[:, start:stop]).to(torch.float64).sub_(127.5)
            smoothed = (canvas.reshape(-1, cols) @ smooth_x.T).view(rows, -1)
            field = (smooth_y @ smoothed).view(grid_h, stop - start, 2, grid_w).numpy()
            where = self.chosen[start:stop] - (images.start or 0)
            for axis, coordinates in enumerate((x, y)):
                shift = field[:, :, axis].transpose(1, 0, 2) * self.gains[axis]
                shift = np.rint(shift, out=shift).astype(np.int64)
                coordinates[where] += upsample_linear(shift, self.steps, self.size)


def elastic_fields(
    elastic: ElasticParams, n: int, size: tuple[int, int], draws: np.random.Generator
) -> ElasticFields | None:
    """The random part of ``add_elastic`` for ``n`` images of ``size``: which images get a field,
    and their white noise; None when none does."""
    if not elastic.active:
        return None
    height, width = size
    chosen = np.flatnonzero(draws.random(n) < elastic.probability)
    if not len(chosen):
        return None
    step_y, step_x = (elastic_step(elastic.sigma * side) for side in (height, width))
    grid_h, grid_w = -(-(height - 1) // step_y) + 1, -(-(width - 1) // step_x) + 1
    smooth_y, squares_y = smoothing_matrix(grid_h, elastic.sigma * height / step_y)
    smooth_x, squares_x = smoothing_matrix(grid_w, elastic.sigma * width / step_x)
    # Canvas rows first (rows x images x 2 x cols), so each pass is one large matrix product.
    noise = draws.integers(0, 256, (smooth_y.shape[1], len(chosen), 2, smooth_x.shape[1]), dtype=np.uint8)
    rms = math.sqrt(ELASTIC_VARIANCE * squares_y * squares_x)
    gains = (elastic.alpha * width * ONE / rms, elastic.alpha * height * ONE / rms)
    return ElasticFields(chosen, noise, (smooth_y, smooth_x), gains, (step_y, step_x), size)


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
    fields = elastic_fields(elastic, len(x), x.shape[1:], draws)
    if fields is not None:
        fields.add_to(x, y, slice(0, len(x)))


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
