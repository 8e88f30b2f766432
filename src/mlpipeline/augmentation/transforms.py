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
  its rare slow path) and ``Generator.uniform`` (see ``uniform``). The noise
  alone is drawn where the images are, from an integer hash of each value's
  position keyed per image by numpy (``core.bitexact.hashed_noise``): the host
  draws two keys an image, not a random number a value.
- Everything computed from the draws is exact: integers; float64 numpy ops
  from IEEE 754's correctly rounded + - * / and sqrt, one at a time (sin, cos
  and exp are polynomials of them); and the elastic smoothing's matrix
  products, whose products and partial sums are small multiples of 1/2, exact
  in any order of summation.
- The warp is bilinear interpolation in integers on a 1/256 px grid
  (``mlpipeline.core.bitexact`` says why rounding a float result at the end would
  not do). The per-pixel work on the images' device is int32 gathers,
  multiplies, adds and shifts, and the noise hash's int64 xors, shifts and
  multiplies: exact on CUDA and MPS as on the CPU (no float at all, so no
  float64, which MPS lacks); the GPU suite checks the device's bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Self

import numpy as np
import torch
from pydantic import Field, model_validator

from mlpipeline.augmentation.colour import ColourParams, colour_ops
from mlpipeline.augmentation.crop import CropParams, crop_maps
from mlpipeline.augmentation.elastic import ElasticParams, elastic_fields
from mlpipeline.augmentation.maps import Maps
from mlpipeline.augmentation.pixels import PixelOp
from mlpipeline.augmentation.policy import PolicyParams, policy_draws
from mlpipeline.core.bitexact import (
    ONE,
    SAMPLE_BITS,
    Padding,
    add_hashed_noise,
    bilinear_taps,
    gather_bilinear,
    noise_table,
    round_to_uint8,
    sin_cos,
    uniform,
)
from mlpipeline.core.device import to_device_all
from mlpipeline.core.params import param, params_dataclass
from mlpipeline.core.seeding import rng

RADIANS_PER_DEGREE = math.pi / 180
# Output pixels whose sampling coordinates are worked out at once: their int64 scratch (512 KB an
# array) stays in the caches and the allocator's free lists instead of faulting fresh pages each
# batch (at 224x224, 1.9 ms of one core an image for a batch drawn whole, 0.95 in chunks).
CHUNK_PIXELS = 1 << 16
NOISE_KEY_BOUND = 1 << 32  # each image's two noise hash keys are below it


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
    noise_std: float = param(ge=0, le=255)  # near-Gaussian noise (see noise_table), pixel units
    cutout: CutoutParams
    drop_values: float = param(ge=0, le=1)  # chance of each pixel to be set to 0 (missing value)
    flip: FlipParams

    @property
    def resamples(self) -> bool:
        """Whether a copy is resampled: by the crop, the policy, the affine map or the elastic field."""
        return self.crop.active or self.policy.active or self.affine.active or self.elastic.active


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
    batch k. ``apply`` is the per-pixel integer work, on the images' device. ``empty`` makes the
    host memory ``draw`` fills, which training reuses batch after batch."""

    taps: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # bilinear_taps: where samples read
    noise: tuple[torch.Tensor, torch.Tensor] | None  # hashed_noise's keys (int64 N x 2) and table
    erase: torch.Tensor | None  # bool N x 1 x H x W: cutout and dropped values, both set to 0
    pixels: tuple[PixelOp, ...] = ()  # the policy's pixel ops, then the colour jitter's
    flips: torch.Tensor | None = None  # bool N x 2: mirrored left-right, upside down

    @classmethod
    def empty(
        cls, transforms: Transforms, capacity: int, size: tuple[int, int], pinned: bool = False
    ) -> Draws:
        """Uninitialized draws of ``capacity`` images of ``size`` (H, W), for ``draw`` to fill, only
        what ``transforms`` use: 7 bytes a pixel (taps 6, erase 1; noise 16 bytes an image and
        its table). ``pinned``: in page-locked memory, copied to CUDA without staging."""
        pixels = size[0] * size[1]

        def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
            return torch.empty(shape, dtype=dtype, pin_memory=pinned)

        taps = noise = erase = None
        if transforms.resamples:
            taps = tuple(
                empty((capacity, 1, pixels), dtype) for dtype in (torch.int32, torch.uint8, torch.uint8)
            )
        if transforms.noise_std:
            noise = (empty((capacity, 2), torch.int64), empty((1 << 16,), torch.int32))
            noise[1].numpy()[:] = noise_table(transforms.noise_std)
        if transforms.cutout.active or transforms.drop_values:
            erase = empty((capacity, 1, *size), torch.bool)
        return cls(taps, noise, erase)  # type: ignore[arg-type]

    def first(self, count: int) -> Draws:
        """The draws of the first ``count`` images (views: writing them writes these)."""

        def head(tensor: torch.Tensor) -> torch.Tensor:
            if len(tensor) < count:
                raise ValueError(f"draws of {count} images into memory for {len(tensor)}")
            return tensor[:count]

        taps, noise, erase = self.taps, self.noise, self.erase
        return Draws(
            taps=None if taps is None else (head(taps[0]), head(taps[1]), head(taps[2])),
            noise=None if noise is None else (head(noise[0]), noise[1]),
            erase=None if erase is None else head(erase),
        )

    def tensors(self) -> list[torch.Tensor]:
        return [
            *(self.taps or ()),
            *(self.noise or ()),
            *(() if self.erase is None else (self.erase,)),
            *(tensor for op in self.pixels for tensor in (op.rows, op.values)),
            *(() if self.flips is None else (self.flips,)),
        ]

    def with_tensors(self, tensors: Iterable[torch.Tensor]) -> Draws:
        """Draws of this structure holding ``tensors``, in the order ``tensors()`` lists them."""
        given: Iterator[torch.Tensor] = iter(tensors)
        return Draws(
            taps=None if self.taps is None else (next(given), next(given), next(given)),
            noise=None if self.noise is None else (next(given), next(given)),
            erase=None if self.erase is None else next(given),
            pixels=tuple(PixelOp(op.kind, next(given), next(given)) for op in self.pixels),
            flips=None if self.flips is None else next(given),
        )

    def to(self, device: torch.device, copied: torch.cuda.Event | None = None) -> Draws:
        """On ``device``, copied without blocking (``core.device.to_device_all``; ``copied``: the
        event marking the end of the copies, before which this host memory must not be refilled)."""
        return self.with_tensors(to_device_all(self.tensors(), device, copied))

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
            add_hashed_noise(samples, *self.noise)
        out = round_to_uint8(samples)
        if self.erase is not None:
            out.masked_fill_(self.erase, 0)
        if self.flips is not None:
            out = torch.where(self.flips[:, 0].view(-1, 1, 1, 1), out.flip(-1), out)
            out = torch.where(self.flips[:, 1].view(-1, 1, 1, 1), out.flip(-2), out)
        return out


def draw(
    transforms: Transforms, seed: int, shape: tuple[int, ...], *stream: str | int, into: Draws | None = None
) -> Draws:
    """The draws of ``augment`` for a batch of ``shape`` (N x C x H x W), on the CPU, made in
    ``into`` (``Draws.empty`` of at least N images) if given. Each transform draws from a stream
    of its own, so switching one on or off changes no other's. The per-pixel draws are worked out
    ``CHUNK_PIXELS`` at a time, each pixel from its image's draws alone: the chunking cannot
    change a byte."""
    n, _, height, width = shape
    size = (height, width)
    out = (into or Draws.empty(transforms, n, size)).first(n)
    maps, pixels = None, []
    if transforms.policy.active:
        maps, pixels = policy_draws(transforms.policy, n, size, rng(seed, *stream, "policy"))
    if transforms.crop.active:
        crop = crop_maps(transforms.crop, n, size, rng(seed, *stream, "crop"))
        maps = crop if maps is None else maps.then(crop)
    coordinates = fields = drops = None
    if out.taps is not None:
        affine = affine_maps(transforms.affine, n, size, rng(seed, *stream, "affine"))
        # with a crop or the policy, one grid for every map; the affine map alone keeps its own
        coordinates = affine.coordinates if maps is None else partial(affine.maps().then(maps).grid, size)
        fields = elastic_fields(transforms.elastic, n, size, rng(seed, *stream, "elastic"))
    if transforms.colour.active:
        pixels += colour_ops(transforms.colour, n, rng(seed, *stream, "colour"))
    if out.noise is not None:
        keys = rng(seed, *stream, "noise").integers(0, NOISE_KEY_BOUND, (n, 2), dtype=np.int64)
        out.noise[0].numpy()[:] = keys
    erase = None if out.erase is None else out.erase.numpy()
    if erase is not None:
        if transforms.cutout.active:
            cutout_mask(transforms.cutout, n, size, rng(seed, *stream, "cutout"), out=erase)
        else:
            erase[:] = False
        if transforms.drop_values:
            drops = rng(seed, *stream, "drop")  # drawn chunk after chunk: the same numbers in turn
    step = max(1, CHUNK_PIXELS // (height * width))
    for start in range(0, n, step):
        images = slice(start, min(n, start + step))
        if coordinates is not None and out.taps is not None:
            x, y = coordinates(images)
            if fields is not None:
                fields.add_to(x, y, images)  # in the image's own pixels, after every map
            taps = tuple(tap[images].numpy() for tap in out.taps)
            bilinear_taps(x, y, size, transforms.padding, out=taps)  # type: ignore[arg-type]
        if drops is not None and erase is not None:
            dropped = erase[images]
            dropped |= (
                drops.random((len(dropped), 1, height, width), dtype=np.float32) < transforms.drop_values
            )
    flips = None
    if transforms.flip.active:
        chances = np.array([transforms.flip.horizontal, transforms.flip.vertical])
        flips = torch.from_numpy(rng(seed, *stream, "flip").random((n, 2)) < chances)
    return Draws(out.taps, out.noise, out.erase, tuple(pixels), flips)


@dataclass(frozen=True)
class AffineMaps:
    """One random affine map per image, built in pixel units around the image centre (so
    rotation keeps angles on non-square images) and inverted (each output pixel pulls from the
    input): the four coefficients of each inverse and each image's shift in pixels."""

    inverse: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # rows, each N
    shift: np.ndarray  # N x 2
    size: tuple[int, int]  # (H, W)

    def coordinates(self, images: slice) -> tuple[np.ndarray, np.ndarray]:
        """Where each output pixel of ``images`` samples: fixed-point x and y, int64 n x H x W in
        steps of 1/``ONE`` px. Each value comes from its own image's map alone, so any slicing
        gives the same bytes."""
        height, width = self.size
        shift = self.shift[images]
        # Output pixel centres relative to the image centre, minus the shift, in steps of 1/ONE px.
        across = ((np.arange(width) - (width - 1) / 2) - shift[:, :1]) * ONE  # n x W
        down = ((np.arange(height) - (height - 1) / 2) - shift[:, 1:]) * ONE  # n x H
        x, y = (
            a[images, None, None] * across[:, None, :]
            + (b[images, None] * down + (side - 1) * ONE / 2)[:, :, None]
            for (a, b), side in zip(self.inverse, (width, height), strict=True)
        )
        return np.rint(x, out=x).astype(np.int64), np.rint(y, out=y).astype(np.int64)

    def maps(self) -> Maps:
        """The same maps as ``Maps``, to compose with the crop's and the policy's:
        ``p -> inverse (p - shift)``."""
        (a, b), (c, d) = self.inverse
        right, down = self.shift[:, 0], self.shift[:, 1]
        return Maps(a, b, c, d, -(a * right + b * down), -(c * right + d * down))


def affine_maps(
    affine: AffineParams, n: int, size: tuple[int, int], draws: np.random.Generator
) -> AffineMaps:
    """A random affine map per image. Images the probability leaves out get the identity and no
    shift, exactly."""
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
    # Inverse of rotate(angle) @ shear_x(shear) @ scale: (1/s) Sh^-1 R^-1, rows (i00, i01), (i10, i11).
    inverse = (((cos + shear * sin) / scale, (sin - shear * cos) / scale), (-sin / scale, cos / scale))
    return AffineMaps(inverse, shift, size)


def affine_coordinates(
    affine: AffineParams, n: int, size: tuple[int, int], draws: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Where each output pixel samples under one random affine map per image (``affine_maps``):
    fixed-point x and y, int64 N x H x W in steps of 1/``ONE`` px."""
    return affine_maps(affine, n, size, draws).coordinates(slice(None))


def cutout_mask(
    cutout: CutoutParams,
    n: int,
    size: tuple[int, int],
    draws: np.random.Generator,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Boolean N x 1 x H x W mask of one rectangle per chosen image, centred anywhere in it (into
    ``out`` if given)."""
    height, width = size
    chosen = draws.random(n) < cutout.probability
    box_h, box_w = round(cutout.size * height), round(cutout.size * width)
    top = draws.integers(0, height, n) - box_h // 2
    left = draws.integers(0, width, n) - box_w // 2
    rows = np.arange(height)[None, :] - top[:, None]
    cols = np.arange(width)[None, :] - left[:, None]
    in_rows = (rows >= 0) & (rows < box_h) & chosen[:, None]
    in_cols = (cols >= 0) & (cols < box_w)
    if out is None:
        out = np.empty((n, 1, height, width), dtype=bool)
    np.logical_and(in_rows[:, :, None], in_cols[:, None, :], out=out[:, 0])
    return out
