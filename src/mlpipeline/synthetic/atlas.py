"""The glyph atlas: every (class, font) glyph once, as a signed distance field, in one image.

A distance field (negative inside the ink, positive outside) interpolates
smoothly, so sampling it at any pose and thresholding gives a crisp outline,
and thresholding at ``r`` instead of 0 thickens (r > 0) or thins (r < 0) the
strokes by exactly r: stroke width and edge noise cost one comparison per
pixel instead of repeated morphological passes. Distances are in "cell
units": 1 is the glyph's longer side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import distance_transform_edt

from mlpipeline.core.errors import PipelineError

OVERSAMPLE = 4  # Pillow draws each glyph 4x the cell size (at most MAX_FONT_PX), then the field
MAX_FONT_PX = 256  # is shrunk to the tile: sub-pixel accurate outlines at a bounded cost
MARGIN = 0.25  # room around each glyph, in cell units, where distances are exact (thick strokes fit)
PAD = 2  # atlas pixels between tiles, holding FAR, which every clamped sample outside a tile reads
FAR = 1.0  # a glyph's length away: outside any stroke


@dataclass(frozen=True)
class Atlas:
    """Tiles stacked vertically; class c owns tiles ``first[c] : first[c] + fonts[c]``."""

    image: torch.Tensor  # 1 x 1 x (G * (tile + PAD) + PAD) x (tile + 2 * PAD), signed distances
    cell: int  # atlas pixels spanned by a glyph's longer side
    tile: int  # cell plus the margin on both sides
    half_extent: torch.Tensor  # G x 2: each glyph's half width and height; the cell spans [-1, 1]
    first: torch.Tensor  # per class, index of its first tile
    fonts: torch.Tensor  # per class, how many fonts draw it


def glyph_distance(char: str, font: Path, cell: int, tile: int) -> tuple[np.ndarray, tuple[float, float]]:
    """``char``'s signed distance field in a ``tile`` square, its longer side ``cell`` pixels, centred."""
    font_px = min(OVERSAMPLE * cell, MAX_FONT_PX)
    face = ImageFont.truetype(str(font), font_px)
    canvas = Image.new("L", (3 * font_px, 3 * font_px), 0)
    ImageDraw.Draw(canvas).text((font_px, font_px), char, font=face, fill=255)
    box = canvas.getbbox()
    if box is None:
        raise PipelineError(
            f"synthesize: class '{char}' draws nothing in font {font.stem}; set synthesize.count: 0"
        )
    ink = np.asarray(canvas.crop(box)) >= 128
    height, width = ink.shape
    longer = max(height, width)
    side = round(tile * longer / cell)
    padded = np.zeros((side, side), dtype=bool)
    top, left = (side - height) // 2, (side - width) // 2
    padded[top : top + height, left : left + width] = ink
    # Distances between pixel centres; -0.5 puts the outline on the pixel border.
    outside = distance_transform_edt(~padded) - 0.5
    inside = distance_transform_edt(padded) - 0.5
    distance = np.where(padded, -inside, outside).astype(np.float32) / longer
    shrunk = Image.fromarray(distance, mode="F").resize((tile, tile), Image.Resampling.BOX)
    return np.asarray(shrunk, dtype=np.float32), (width / longer, height / longer)


def build_atlas(
    classes: list[str], fonts_per_class: list[list[Path]], cell: int, device: torch.device
) -> Atlas:
    tile = cell + 2 * math.ceil(MARGIN * cell)
    fields, extents, first, counts = [], [], [], []
    for char, fonts in zip(classes, fonts_per_class, strict=True):
        first.append(len(fields))
        counts.append(len(fonts))
        for font in fonts:
            field, extent = glyph_distance(char, font, cell, tile)
            fields.append(field)
            extents.append(extent)
    pitch = tile + PAD
    image = np.full((len(fields) * pitch + PAD, tile + 2 * PAD), FAR, dtype=np.float32)
    for i, field in enumerate(fields):
        image[PAD + i * pitch : PAD + i * pitch + tile, PAD : PAD + tile] = field
    return Atlas(
        image=torch.from_numpy(image)[None, None].to(device),
        cell=cell,
        tile=tile,
        half_extent=torch.tensor(extents, dtype=torch.float32, device=device),
        first=torch.tensor(first, dtype=torch.int64, device=device),
        fonts=torch.tensor(counts, dtype=torch.int64, device=device),
    )


def sample_distance(
    atlas: Atlas, theta: torch.Tensor, tiles: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor
) -> torch.Tensor:
    """Each image's distance field, N x 1 x len(ys) x len(xs), sampled in one ``grid_sample`` call.

    ``theta`` (N x 2 x 3) maps output coordinates (``xs``, ``ys`` in [-1, 1])
    to glyph coordinates, where the cell spans [-1, 1]. The grid is built
    plane by plane by broadcasting (cheaper on CPU than ``affine_grid``'s
    batched matmul and than interleaved x/y writes), clamped to one pixel past
    the image's own tile, where the padding reads FAR, and moved onto that tile.
    """
    n = len(tiles)
    atlas_h, atlas_w = atlas.image.shape[-2:]
    grid = torch.empty((n, 2, len(ys), len(xs)), dtype=theta.dtype, device=theta.device)
    for axis, to_atlas in enumerate((atlas.cell / atlas_w, atlas.cell / atlas_h)):
        a, b, c = (theta[:, axis, k].mul(to_atlas).view(n, 1, 1) for k in range(3))
        plane = grid[:, axis]
        torch.add(a * xs.view(1, 1, -1), b * ys.view(1, -1, 1) + c, out=plane)
        bound = (atlas.tile + 2) / atlas.cell * to_atlas
        plane.clamp_(-bound, bound)
    # Tiles are centred horizontally in the atlas and stacked vertically.
    center_y = (PAD + tiles * (atlas.tile + PAD) + atlas.tile / 2) * (2 / atlas_h) - 1
    grid[:, 1].add_(center_y.to(grid.dtype).view(n, 1, 1))
    return F.grid_sample(
        atlas.image.expand(n, -1, -1, -1),
        grid.permute(0, 2, 3, 1),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
