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
  shifts and masks from numpy's raw 64-bit draws; or, where a device draws it
  (``hashed_noise``), an integer hash of each value's position looked up in a
  table of that sum's quantiles.
"""

from __future__ import annotations

import functools
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


HASH_BITS = 32  # the noise hash's values; each gives two noise values of HALF_BITS
HALF_BITS = 16
CPU_HASH_VALUES = 1 << 17  # noise values hashed at once on the CPU (``add_hashed_noise``)
_LOW = (1 << HASH_BITS) - 1
# lowbias32's multipliers (Chris Wellons' hash prospector): full avalanche, bias 0.17. The second
# is above 2**31, so it is used as its negative twin (the same product mod 2**32): every product
# of a 32-bit value then stays inside int64, with no overflow on any device.
_HASH_MULTIPLIERS = (0x7FEB352D, 0x846CA68B - (1 << HASH_BITS))


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
    x: np.ndarray,
    y: np.ndarray,
    size: tuple[int, int],
    padding: Padding,
    out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What ``gather_bilinear`` needs of fixed-point ``x``, ``y`` (int64 N x H x W) on an image of
    ``size`` (H, W): each sample's top-left tap in the padded image (int32 N x 1 x H*W) and its
    weights along x and y (uint8, in 1/``ONE`` steps), written into ``out`` if given (reused
    host memory: training's draw buffers). Small types: they cross to the device."""
    height, width = size
    n = len(x)
    if out is None:
        out = tuple(np.empty((n, 1, height * width), dtype) for dtype in (np.int32, np.uint8, np.uint8))  # type: ignore[assignment]
    index, fx, fy = (array.reshape(n, height, width, copy=False) for array in out)  # type: ignore[union-attr]
    stride = width + 3  # one column of zeros before the image, two after: every tap is inside
    # Folded, every coordinate is within a pixel of the image: int32 from here, half the memory.
    column, row = (fold(c, side, padding).astype(np.int32) for c, side in ((x, width), (y, height)))
    column += ONE  # in the padded image
    row += ONE
    np.right_shift(row, FRACTION_BITS, out=index)
    index *= stride
    index += column >> FRACTION_BITS
    np.bitwise_and(column, ONE - 1, out=fx, casting="unsafe")
    np.bitwise_and(row, ONE - 1, out=fy, casting="unsafe")
    return out  # type: ignore[return-value]


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


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 of int64 ``x`` holding values in [0, 2**32), in place (and returned): xor-shifts,
    multiplies and masks, exact in int64 on every device (MPS has no uint32 arithmetic, and a
    wrapping int32 multiply is undefined behaviour in C++)."""
    x ^= x >> 16
    x *= _HASH_MULTIPLIERS[0]
    x &= _LOW
    x ^= x >> 15
    x *= _HASH_MULTIPLIERS[1]
    x &= _LOW
    x ^= x >> 16
    return x


def uniform_halves(keys: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` uniform 16-bit values (int64, 0..65535) per row of ``keys`` (int64 N x 2, each key
    below 2**32), computed on ``keys``'s device from a counter: word ``w`` of row n is
    ``hash32(hash32(w ^ key0) ^ key1)``, its low half value ``w`` and its high half value
    ``w + words``. Two keyed rounds: one would make two rows whose first keys differ in low
    bits only draw the same values in shuffled order."""
    words = -(-count // 2)
    bits = torch.arange(words, dtype=torch.int64, device=keys.device) ^ keys[:, :1]
    bits = hash32(hash32(bits) ^ keys[:, 1:])
    return torch.cat((bits & ((1 << HALF_BITS) - 1), bits >> HALF_BITS), dim=1)[:, :count]


def hashed_noise(keys: torch.Tensor, table: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Noise for a batch of ``shape`` (N x ...), int32 in 1/``ONE**2`` steps, drawn on the device of
    ``keys`` (int64 N x 2, one pair an image) and ``table`` (``noise_table``): each value is the
    table's entry at a uniform 16-bit value of its position (``uniform_halves``). Integer
    operations only: the same bits on the CPU, CUDA and MPS."""
    return add_hashed_noise(torch.zeros(shape, dtype=torch.int32, device=keys.device), keys, table)


def add_hashed_noise(samples: torch.Tensor, keys: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``samples`` (int32 N x ...) plus ``hashed_noise``, in place. A GPU takes the batch whole; the
    CPU a few images at a time, so the hash's int64 temporaries stay in its caches (at 224x224
    RGB, 1.9 ms of one core an image against 6.1 whole). Each value's noise depends on its image's
    keys and its position alone: the chunking cannot change a bit."""
    per_image = math.prod(samples.shape[1:])
    step = len(samples) if samples.device.type != "cpu" else max(1, CPU_HASH_VALUES // per_image)
    for start in range(0, len(samples), step):
        part = samples[start : start + step]
        part += table[uniform_halves(keys[start : start + step], per_image)].reshape(part.shape)
    return samples


@functools.cache
def _sum_quantiles() -> np.ndarray:
    """For each 16-bit value u, the sum of ``NOISE_TERMS`` uniform bytes at quantile
    (u + 1/2) / 2**16: exact integer counts of the sums (they fit int64; their running totals,
    up to 256**8, are compared as uint64 below the last)."""
    counts = np.ones(1, dtype=np.int64)
    for _ in range(NOISE_TERMS):
        counts = np.convolve(counts, np.ones(256, dtype=np.int64))
    below = np.cumsum(counts[:-1].astype(np.uint64))  # sums <= s, for s < the largest
    targets = (np.arange(1 << HALF_BITS, dtype=np.uint64) * 2 + 1) << np.uint64(63 - HALF_BITS)
    return np.searchsorted(below, targets, side="right")


def noise_table(std: float) -> np.ndarray:
    """``hashed_noise``'s table: the noise value (``noise_levels(std)``) of the sum of eight bytes at
    each 16-bit quantile, int32 x 65536. The same near-Gaussian shape as ``gaussian_noise``,
    its tails cut at 1 in 131,072 each side (3.8 std) instead of 4.9 std; zero-mean, symmetric."""
    return noise_levels(std)[_sum_quantiles()]
