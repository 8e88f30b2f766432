"""The glyph atlas: every (class, font) glyph once, as a signed distance field in integers.

A distance field (negative inside the ink, positive outside) interpolates
smoothly, so sampling it at any pose and thresholding gives a crisp outline,
and thresholding at ``r`` instead of 0 thickens (r > 0) or thins (r < 0) the
strokes by exactly r: stroke width and edge noise cost one comparison per
pixel instead of repeated morphological passes.

Every value is exact, so a sample is the same on every CPU (see
``mlpipeline.core.bitexact``): Pillow draws the glyph in integer arithmetic
(FreeType), scipy's Euclidean distance transform finds each pixel's nearest
pixel across the outline in integers, and the distance is the correctly rounded
square root of an integer, quantized to ``1/DIST_ONE`` of the glyph's longer
side and averaged over ``k x k`` blocks in integers. Sampling is bilinear
interpolation in integers at fixed-point coordinates (``1/ONE`` atlas px).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import distance_transform_edt

from mlpipeline.core.bitexact import FRACTION_BITS, ONE
from mlpipeline.synthetic.generators import CannotDraw

OVERSAMPLE = 4  # Pillow draws each glyph 4x the cell size (at most MAX_FONT_PX), then the field
MAX_FONT_PX = 256  # is averaged down to about the cell: sub-pixel accurate outlines at a bounded cost
MARGIN = 0.25  # room around the largest glyph, in glyph lengths, where distances are exact
PAD = 2  # atlas pixels around each tile holding FAR, which every clamped sample outside it reads
DIST_BITS = 12
DIST_ONE = 1 << DIST_BITS  # atlas units per glyph length (the glyph's longer side)
FAR = DIST_ONE  # a glyph's length away: outside any stroke
SAMPLE_SHIFT = 2 * FRACTION_BITS + DIST_BITS - 14  # bilinear samples -> 1/2**14 glyph lengths
SAMPLE_ONE = 1 << 14  # units per glyph length of what ``sample_distance`` returns


@dataclass(frozen=True)
class Atlas:
    """Square tiles of ``pitch`` x ``pitch`` pixels, one per glyph, flattened into ``pairs``; class
    c owns glyphs ``first[c] : first[c] + fonts[c]``. Coordinates are in atlas pixels of the padded
    tile, pixel centres at integers. Each pixel holds its right neighbour too, so a bilinear sample
    takes two gathers rather than four."""

    pairs: torch.Tensor  # int32 per pixel: its distance (low 16 bits) and its right neighbour's (high)
    pitch: int  # tile + 2 * PAD
    scale: np.ndarray  # per glyph: atlas px per glyph coordinate unit (half the glyph's longer side)
    centre: np.ndarray  # G x 2: where each glyph's centre (x, y) is in its padded tile
    half_extent: np.ndarray  # G x 2: half width and height in glyph coordinates (the longer is 1)
    first: np.ndarray  # per class, index of its first glyph
    fonts: np.ndarray  # per class, how many fonts draw it


def glyph_ink(char: str, font: Path, font_px: int) -> np.ndarray:
    """``char`` drawn at ``font_px`` in ``font``, cropped to its ink: a boolean bitmap."""
    face = ImageFont.truetype(str(font), font_px)
    canvas = Image.new("L", (3 * font_px, 3 * font_px), 0)
    ImageDraw.Draw(canvas).text((font_px, font_px), char, font=face, fill=255)
    box = canvas.getbbox()
    if box is None:
        raise CannotDraw(f"class '{char}' draws nothing in font {font.stem}")
    return np.asarray(canvas.crop(box)) >= 128


def glyph_field(ink: np.ndarray, side: int, block: int) -> tuple[np.ndarray, tuple[float, float]]:
    """The signed distance field of ``ink`` centred in a ``side``-pixel square, averaged over
    ``block`` x ``block`` pixels: int64 in 1/DIST_ONE glyph lengths; and where the ink's centre is,
    in the averaged pixels."""
    height, width = ink.shape
    padded = np.zeros((side, side), dtype=bool)
    top, left = (side - height) // 2, (side - width) // 2
    padded[top : top + height, left : left + width] = ink
    # Distances between pixel centres; -0.5 puts the outline on the pixel border.
    outside = distance_transform_edt(~padded) - 0.5
    inside = distance_transform_edt(padded) - 0.5
    distance = np.where(padded, -inside, outside)
    units = np.clip(np.rint(distance * DIST_ONE / max(height, width)), -FAR, FAR).astype(np.int64)
    tiles = side // block
    sums = units.reshape(tiles, block, tiles, block).sum(axis=(1, 3))
    averaged = (sums + block * block // 2) // (block * block)
    # A pixel's centre is at block * (p + 1/2) in the drawn pixels' continuous coordinates.
    centre = ((left + width / 2) / block - 0.5, (top + height / 2) / block - 0.5)
    return averaged, centre


def build_atlas(classes: list[str], fonts_per_class: list[list[Path]], cell: int) -> Atlas:
    """Every class's glyph in each of its fonts, sampled at about ``cell`` atlas px per glyph length."""
    font_px = min(OVERSAMPLE * cell, MAX_FONT_PX)
    inks = [
        glyph_ink(char, font, font_px)
        for char, fonts in zip(classes, fonts_per_class, strict=True)
        for font in fonts
    ]
    longer = np.array([max(ink.shape) for ink in inks])
    block = max(1, round(longer.mean() / cell))  # drawn pixels averaged into one atlas pixel
    tile = math.ceil(math.ceil((1 + 2 * MARGIN) * int(longer.max())) / block)
    pitch = tile + 2 * PAD
    field = np.full((len(inks), pitch, pitch), FAR, dtype=np.int32)
    centres = []
    for tile_field, ink in zip(field, inks, strict=True):
        values, centre = glyph_field(ink, tile * block, block)
        tile_field[PAD:-PAD, PAD:-PAD] = values
        centres.append((centre[0] + PAD, centre[1] + PAD))
    counts = [len(fonts) for fonts in fonts_per_class]
    return Atlas(
        pairs=torch.from_numpy(with_right_neighbours(field.reshape(-1))),
        pitch=pitch,
        scale=longer / (2 * block),
        centre=np.array(centres),
        half_extent=np.array([(ink.shape[1], ink.shape[0]) for ink in inks]) / longer[:, None],
        first=np.cumsum([0, *counts[:-1]]),
        fonts=np.array(counts),
    )


def with_right_neighbours(values: np.ndarray) -> np.ndarray:
    """int32 whose low 16 bits are each value plus FAR (0..2 FAR) and high 16 bits the next value
    (FAR after the last), so that masking and an arithmetic shift take them apart."""
    low = (values + FAR).astype(np.uint32)
    high = np.append(values[1:], FAR).astype(np.uint32) << 16
    return (low | high).view(np.int32)


Terms = tuple[np.ndarray, np.ndarray]  # int32 per output column (N x W) and per output row (N x H)


def sample_distance(atlas: Atlas, glyphs: np.ndarray, x: Terms, y: Terms) -> torch.Tensor:
    """Each image's distance field, int32 N x H x W in 1/``SAMPLE_ONE`` glyph lengths.

    ``x`` and ``y`` are each image's fixed-point atlas coordinates (1/``ONE`` px)
    as two int32 terms, one per output column and one per output row, whose sum
    is the coordinate: an affine map costs one broadcast add per pixel.
    Coordinates are clamped to one pixel past the glyph's own tile, where the
    padding reads FAR.
    """
    low, high = (PAD - 1) * ONE, (atlas.pitch - PAD) * ONE
    columns, rows = (_coordinate(*terms).clamp_(low, high) for terms in (x, y))
    fx, fy = columns & (ONE - 1), rows & (ONE - 1)
    index = (rows >> FRACTION_BITS).mul_(atlas.pitch).add_(columns >> FRACTION_BITS).long()
    index += torch.from_numpy(glyphs * atlas.pitch**2).view(-1, 1, 1)
    top = _blend_row(atlas.pairs, index, fx)
    bottom = _blend_row(atlas.pairs, index.add_(atlas.pitch), fx)
    bottom.sub_(top).mul_(fy).add_(top.mul_(ONE))
    return bottom.bitwise_right_shift_(SAMPLE_SHIFT)


def _blend_row(pairs: torch.Tensor, index: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
    """Linear interpolation between the two values of each gathered pair, in 1/``ONE`` steps."""
    pair = pairs.index_select(0, index.view(-1)).view(index.shape)
    left = (pair & 0xFFFF).sub_(FAR)
    return pair.bitwise_right_shift_(16).sub_(left).mul_(fraction).add_(left.mul_(ONE))


def _coordinate(columns: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(columns)[:, None, :] + torch.from_numpy(rows)[:, :, None]
