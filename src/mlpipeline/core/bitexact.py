"""Arithmetic whose every bit is fixed by the rules, so a stage writes the same bytes on every CPU.

DVC's caches only hit when two machines write the same bytes from the same
inputs. Integer arithmetic and IEEE 754's basic operations (+ - * / and sqrt,
each correctly rounded) have one right answer everywhere; little else in float
does. libm and numpy pick SIMD and FMA variants of sin, cos, exp and log by CPU,
and these may differ in the last bit; torch's float kernels (``grid_sample``,
convolutions, matmul) add in an order set by the SIMD width. Rounding to a pixel
value afterwards does not hide that: a last-bit difference flips the pixel
whenever the value sits on a rounding boundary, and over millions of pixels one
does. So everything that reaches an output is computed exactly, all the way:

- sin, cos and exp are fixed polynomials evaluated by numpy one multiply or add
  at a time (a ufunc is one correctly rounded operation per element, never
  fused into an FMA, whatever the SIMD width);
- resampling is bilinear interpolation in integers: coordinates on a grid of
  1/``ONE`` px, weights in 1/``ONE`` steps, one rounding at the end;
- Gaussian-like noise is a sum of uniform random bytes, added up with integer
  shifts and masks from numpy's raw 64-bit draws.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Padding = Literal["zeros", "border", "reflection"]

FRACTION_BITS = 8
ONE = 1 << FRACTION_BITS  # fixed-point steps per pixel: coordinates on a 1/256 px grid
SAMPLE_BITS = 2 * FRACTION_BITS  # a bilinear sample is a pixel value in steps of 1/ONE**2

_SIN = [(-1) ** k / math.factorial(2 * k + 1) for k in range(14)]  # to x**27: 3e-17 short at pi
_COS = [(-1) ** k / math.factorial(2 * k) for k in range(15)]  # to x**28
_EXP = [1 / math.factorial(k) for k in range(12)]  # on [-1/16, 0], then squared ten times
_EXP_HALVINGS = 10
_EXP_LARGEST = 64.0  # e**-64 is 1.6e-28: past any use here

NOISE_TERMS = 8  # uniform bytes summed per gaussian_noise value
NOISE_MEAN = NOISE_TERMS * 255 // 2
NOISE_STD = math.sqrt(NOISE_TERMS * (256**2 - 1) / 12)
EVEN_BYTES = np.uint64(0x00FF00FF00FF00FF)
EVEN_HALVES = np.uint64(0x0000FFFF0000FFFF)
LOW_WORD = np.uint64(0xFFFFFFFF)
SUM_OF_LANES = np.uint64(0x0001000100010001)


def _horner(coefficients: list[float], x: np.ndarray) -> np.ndarray:
    """sum(c[k] * x**k), one rounded multiply and one rounded add per term."""
    total = np.full_like(x, coefficients[-1])
    for coefficient in reversed(coefficients[:-1]):
        total = total * x + coefficient
    return total


def sin_cos(angle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sin and cos of float64 ``angle`` (radians, |angle| <= pi), within 1e-15 of the true values."""
    square = angle * angle
    return _horner(_SIN, square) * angle, _horner(_COS, square)


def exp_neg(x: np.ndarray) -> np.ndarray:
    """e**-x for float64 ``x`` >= 0 (values past 64 give e**-64), relative error below 1e-12."""
    power = _horner(_EXP, np.minimum(x, _EXP_LARGEST) / -(2**_EXP_HALVINGS))
    for _ in range(_EXP_HALVINGS):
        power = power * power
    return power


def exp(x: np.ndarray) -> np.ndarray:
    """e**x for float64 ``x`` of either sign within 64 (``exp_neg``, or its reciprocal)."""
    return np.where(x <= 0, exp_neg(np.abs(x)), 1.0 / exp_neg(np.abs(x)))


def log(value: float) -> float:
    """The natural log of a positive param, by Python's decimal module: software arithmetic,
    correctly rounded, so the same on every CPU (libm's ``log`` has FMA variants)."""
    return float(Decimal(value).ln())


def uniform(draws: np.random.Generator, low: float, high: float, shape: int | tuple[int, ...]) -> np.ndarray:
    """Uniform in [low, high), scaled by numpy ufuncs: ``Generator.uniform`` computes ``low + range * u``
    in C, which a compiler may fuse into one FMA on CPUs that have it (ARM) and not on others."""
    return draws.random(shape) * (high - low) + low


def fold(coordinate: np.ndarray, size: int, padding: Padding) -> np.ndarray:
    """Where a fixed-point coordinate along an axis of ``size`` pixels reads, by ``padding``.

    The same rules as ``grid_sample(align_corners=False)``: the image's edges
    are half a pixel beyond the outer pixel centres; ``reflection`` mirrors at
    them (again and again), ``border`` then clamps to the outer centres, and
    ``zeros`` clamps to one pixel outside, where the padded image holds 0.
    """
    if padding == "reflection":
        span = size * ONE
        flips, extra = np.divmod(np.abs(coordinate + ONE // 2), span)
        coordinate = np.where(flips % 2 == 0, extra, span - extra) - ONE // 2
    if padding == "zeros":
        return np.clip(coordinate, -ONE, size * ONE)
    return np.clip(coordinate, 0, (size - 1) * ONE)


def sample_bilinear(images: torch.Tensor, x: np.ndarray, y: np.ndarray, padding: Padding) -> torch.Tensor:
    """Bilinear samples of uint8 ``images`` (N x C x H x W) at fixed-point ``x``, ``y`` (int64 N x H x W).

    Pixel centres are at multiples of ``ONE``. Returns int32 N x C x H x W in
    steps of 1/``ONE**2`` of a pixel value (at most 255 * 2**16: int32 is
    exact on every device). The taps are worked out on the CPU, the gather and
    the blend run on ``images``'s device.
    """
    taps = bilinear_taps(x, y, tuple(images.shape[2:]), padding)
    return gather_bilinear(images, *(torch.from_numpy(tap).to(images.device) for tap in taps))


def bilinear_taps(
    x: np.ndarray, y: np.ndarray, size: tuple[int, int], padding: Padding
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What ``gather_bilinear`` needs of fixed-point ``x``, ``y`` (int64 N x H x W) on an image of
    ``size`` (H, W): each sample's top-left tap in the padded image (int32 N x 1 x H*W) and its
    weights along x and y (uint8, in 1/``ONE`` steps). Small types: they cross to the device."""
    height, width = size
    n = len(x)
    stride = width + 3  # one column of zeros before the image, two after: every tap is inside
    # Folded, every coordinate is within a pixel of the image: int32 from here, half the memory.
    column, row = (fold(c, side, padding).astype(np.int32) for c, side in ((x, width), (y, height)))
    column += ONE  # in the padded image
    row += ONE
    index = row >> FRACTION_BITS
    index *= stride
    index += column >> FRACTION_BITS
    fx, fy = ((c & (ONE - 1)).astype(np.uint8).reshape(n, 1, -1) for c in (column, row))
    return index.reshape(n, 1, -1), fx, fy


def gather_bilinear(
    images: torch.Tensor, index: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor
) -> torch.Tensor:
    """The samples ``bilinear_taps`` describes, on the device of ``images`` and the taps: int32
    gathers, multiplies and adds only, so the same bytes on every device."""
    n, channels, height, width = images.shape
    stride = width + 3
    index = index.to(torch.int64)  # as gather takes it
    fx, fy = fx.to(torch.int32), fy.to(torch.int32)
    padded = F.pad(images, (1, 2, 1, 2)).view(n, channels, -1)  # gathered as bytes: a quarter of the reads

    def tap(offset: int) -> torch.Tensor:
        return padded.gather(2, (index + offset).expand(n, channels, -1)).to(torch.int32)

    top_left, bottom_left = tap(0), tap(stride)
    top = top_left * ONE + (tap(1) - top_left) * fx
    bottom = bottom_left * ONE + (tap(stride + 1) - bottom_left) * fx
    return (top * ONE + (bottom - top) * fy).view(n, channels, height, width)


def round_to_uint8(samples: torch.Tensor) -> torch.Tensor:
    """int32 values in steps of 1/``ONE**2`` -> uint8, halves rounded up, clamped to 0..255."""
    half = 1 << (SAMPLE_BITS - 1)
    return ((samples + half).clamp_(0, 255 << SAMPLE_BITS) >> SAMPLE_BITS).to(torch.uint8)


def gaussian_noise(std: float, shape: tuple[int, ...], draws: np.random.Generator) -> np.ndarray:
    """Zero-mean noise of standard deviation ``std`` pixel values, as int32 of ``shape`` in steps of
    1/``ONE**2`` (the unit ``sample_bilinear`` returns): ``noise_levels(std)[noise_sums(...)]``."""
    return noise_levels(std)[noise_sums(shape, draws)]


def noise_sums(shape: tuple[int, ...], draws: np.random.Generator) -> np.ndarray:
    """The random half of ``gaussian_noise``: which of its ``noise_levels`` each value takes, int16
    of ``shape`` (two bytes a value to the device, not four; the device looks the levels up).

    Each value is the sum of eight uniform bytes (Irwin-Hall): its variance is
    exact, its shape near Gaussian (kurtosis 2.85 against 3, tails cut at 4.9
    std) and it is integer arithmetic. ``standard_normal`` uses exp and log on
    its rare slow path, which may round differently on another CPU, and one
    draw that differs there shifts every later one.
    """
    sums = _pair_bytes(draws.bit_generator.random_raw(math.prod(shape)))
    sums *= SUM_OF_LANES
    sums >>= 48  # the four lanes added up in the top 16 bits
    return sums.astype(np.int16).reshape(shape)


def noise_levels(std: float) -> np.ndarray:
    """The noise value, int32 in 1/``ONE**2`` steps, of each sum of eight bytes (0..2040)."""
    levels = np.rint((np.arange(NOISE_TERMS * 255 + 1) - NOISE_MEAN) * (std * ONE**2 / NOISE_STD))
    return levels.astype(np.int32)


def sums_of_four_bytes(draws: np.random.Generator, count: int) -> np.ndarray:
    """``count`` (even) sums of four uniform random bytes, int32 in 0..1020: mean 510, std 147.8,
    near Gaussian (kurtosis 2.7, tails cut at 3.45 std); one 64-bit draw makes two sums.

    Shifts and masks rather than byte views, so the result does not depend on byte order.
    """
    lanes = _pair_bytes(draws.bit_generator.random_raw(count // 2))
    high = lanes >> 16
    high &= EVEN_HALVES
    lanes &= EVEN_HALVES
    lanes += high  # two 32-bit lanes, each the sum of four bytes
    sums = np.empty(count, dtype=np.int32)
    np.bitwise_and(lanes, LOW_WORD, out=sums[: count // 2], casting="unsafe")
    np.right_shift(lanes, 32, out=sums[count // 2 :], casting="unsafe")
    return sums


def _pair_bytes(raw: np.ndarray) -> np.ndarray:
    """uint64 draws -> four 16-bit lanes each, every lane the sum of two of the draw's bytes (in place)."""
    odd = raw >> 8
    odd &= EVEN_BYTES
    raw &= EVEN_BYTES
    raw += odd
    return raw
