"""The ``glyphs`` generator: class names drawn as font glyphs in random poses, fast.

Each (class, font) glyph is rendered once with Pillow into an atlas at twice
the render resolution. A batch is then pure tensor work: ``affine_grid`` and
one ``grid_sample`` over the shared atlas place every glyph with its own
rotation, shear, scale and shift; edge noise and a 0.5 threshold make a binary
bitmap; max/min pooling thickens or thins the strokes; ``avg_pool2d`` over
4x4 blocks reduces it to the output size. That is how scikit-learn's digits
were made (32x32 bitmaps, set pixels counted per 4x4 block), and at any other
size it is plain area-averaged antialiasing. ``ValueMap`` then maps the
coverage onto the real data's values.

Like NIST's preprocessing, the posed glyph's bounding box is fitted to the
frame before the random ``scale``, so ``scale: 1`` means "fills the frame".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import param
from mlpipeline.synthetic.fonts import has_glyph, resolve_fonts
from mlpipeline.synthetic.generators import Renderer, SynthesisTask, register_generator

SUPERSAMPLE = 4  # render at 4x the output size, then count ink per 4x4 block
ATLAS_OVERSAMPLE = 2  # atlas glyphs at 2x the render size, so sampling them stays sharp
ATLAS_PAD = 2  # zero pixels around each atlas tile: samples outside a glyph read nothing
FONT_PX = 256  # Pillow draws each glyph this large before shrinking it into the atlas


@dataclass(frozen=True)
class GlyphParams:
    fonts: list[str] = param(min_len=1)
    rotation: float = param(ge=0, le=180)
    scale: list[float] = param(gt=0, le=2, min_len=2, max_len=2)
    shear: float = param(ge=0, le=2)
    translate: float = param(ge=0, le=0.5)
    stroke: list[float] = param(ge=-0.25, le=0.25, min_len=2, max_len=2)
    edge_noise: float = param(ge=0, le=2)
    pixel_noise: float = param(ge=0, le=1)

    def check(self) -> None:
        for name in ("scale", "stroke"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} must be [low, high] with low <= high, got {[low, high]}")
        if len(set(self.fonts)) != len(self.fonts):
            raise ValueError("fonts lists a font twice")


@dataclass(frozen=True)
class Atlas:
    """All glyphs stacked in one zero-padded image; class c owns tiles ``first[c] : first[c] + fonts[c]``."""

    image: torch.Tensor  # 1 x 1 x (G * (cell + pad) + pad) x (cell + 2 * pad), float in [0, 1]
    cell: int
    half_extent: torch.Tensor  # G x 2: each glyph's half width and height, tile-normalised to (0, 1]
    first: torch.Tensor  # per class, index of its first tile
    fonts: torch.Tensor  # per class, how many fonts draw it


def check_classes(classes: list[str], fonts: list[Path]) -> list[list[Path]]:
    """Per class, the fonts that have its glyph; a class no font can draw is a ``PipelineError``."""
    way_out = "set synthesize.count: 0 to skip synthetic data, or register a generator that can"
    usable = []
    for name in classes:
        if len(name) != 1:
            raise PipelineError(
                f"synthesize: class '{name}' is not a single character, so the glyphs generator "
                f"cannot draw it; {way_out}"
            )
        have = [path for path in fonts if has_glyph(path, name)]
        if not have:
            raise PipelineError(
                f"synthesize: no font in synthesize.glyphs.fonts has a glyph for class '{name}'; "
                f"add one that does, or {way_out}"
            )
        usable.append(have)
    return usable


def render_glyph(char: str, font: Path, cell: int) -> tuple[np.ndarray, tuple[float, float]]:
    """``char`` in ``font``, its ink box fitted into a ``cell`` square and centred; with its half extents."""
    face = ImageFont.truetype(str(font), FONT_PX)
    canvas = Image.new("L", (3 * FONT_PX, 3 * FONT_PX), 0)
    ImageDraw.Draw(canvas).text((FONT_PX, FONT_PX), char, font=face, fill=255)
    box = canvas.getbbox()
    if box is None:
        raise PipelineError(
            f"synthesize: class '{char}' draws nothing in font {font.stem}; set synthesize.count: 0"
        )
    glyph = canvas.crop(box)
    fit = cell / max(glyph.size)
    width, height = max(1, round(glyph.width * fit)), max(1, round(glyph.height * fit))
    glyph = glyph.resize((width, height), Image.Resampling.LANCZOS)
    tile = Image.new("L", (cell, cell), 0)
    tile.paste(glyph, ((cell - width) // 2, (cell - height) // 2))
    return np.asarray(tile, dtype=np.float32) / 255.0, (width / cell, height / cell)


def build_atlas(
    classes: list[str], fonts_per_class: list[list[Path]], cell: int, device: torch.device
) -> Atlas:
    tiles, extents, first, counts = [], [], [], []
    for char, fonts in zip(classes, fonts_per_class, strict=True):
        first.append(len(tiles))
        counts.append(len(fonts))
        for font in fonts:
            tile, extent = render_glyph(char, font, cell)
            tiles.append(tile)
            extents.append(extent)
    pitch = cell + ATLAS_PAD
    image = np.zeros((len(tiles) * pitch + ATLAS_PAD, cell + 2 * ATLAS_PAD), dtype=np.float32)
    for i, tile in enumerate(tiles):
        top = ATLAS_PAD + i * pitch
        image[top : top + cell, ATLAS_PAD : ATLAS_PAD + cell] = tile
    return Atlas(
        image=torch.from_numpy(image)[None, None].to(device),
        cell=cell,
        half_extent=torch.tensor(extents, dtype=torch.float32, device=device),
        first=torch.tensor(first, dtype=torch.int64, device=device),
        fonts=torch.tensor(counts, dtype=torch.int64, device=device),
    )


@register_generator("glyphs")
def glyphs(task: SynthesisTask) -> Renderer:
    """Render each class name (one character) in the configured fonts; see the module docstring."""
    params: GlyphParams = task.params.glyphs
    fonts = resolve_fonts(params.fonts, "synthesize.glyphs.fonts")
    usable = check_classes(list(task.classes), fonts)
    _, height, width = task.image_shape
    render_h, render_w = SUPERSAMPLE * height, SUPERSAMPLE * width
    atlas = build_atlas(list(task.classes), usable, ATLAS_OVERSAMPLE * max(render_h, render_w), task.device)
    # Output-frame coordinates of the render pixels' centres (align_corners=False convention).
    xs = (torch.arange(render_w, device=task.device) * 2 + 1) / render_w - 1
    ys = (torch.arange(render_h, device=task.device) * 2 + 1) / render_h - 1
    stroke_px = (params.stroke[0] * render_h, params.stroke[1] * render_h)

    def render(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = len(labels)
        draws = torch.rand((n, 7), generator=generator, device=labels.device)
        fonts = atlas.fonts[labels]
        tile = atlas.first[labels] + (draws[:, 0] * fonts).long().minimum(fonts - 1)
        theta = _pose(draws[:, 1:6], atlas.half_extent[tile], params, width / height)
        coverage = _sample_atlas(atlas, theta, tile, xs, ys)
        if params.edge_noise > 0:
            # Weighted by c * (1 - c): only the antialiased outline moves, the background stays clean.
            noise = torch.randn(coverage.shape, generator=generator, device=coverage.device)
            coverage.add_(noise.mul_(coverage * (1 - coverage)).mul_(4 * params.edge_noise))
        ink = coverage > 0.5
        radius = torch.round(stroke_px[0] + draws[:, 6] * (stroke_px[1] - stroke_px[0])).long()
        ink = _change_stroke(ink, radius)
        blocks = F.avg_pool2d(ink.to(coverage.dtype), SUPERSAMPLE)
        return task.values.apply(blocks, params.pixel_noise, generator)

    return render


def _pose(draws: torch.Tensor, half_extent: torch.Tensor, params: GlyphParams, aspect: float) -> torch.Tensor:
    """Per image, the N x 2 x 3 affine map from output coordinates to glyph tile coordinates.

    The frame spans [-aspect, aspect] x [-1, 1]. The glyph is sheared and
    rotated, its transformed box fitted to the frame, then scaled and shifted;
    this returns the inverse of that, as ``affine_grid`` would take it.
    """
    angle = (2 * draws[:, 0] - 1) * math.radians(params.rotation)
    shear = (2 * draws[:, 1] - 1) * params.shear
    scale = params.scale[0] + draws[:, 2] * (params.scale[1] - params.scale[0])
    shift_x = (2 * draws[:, 3] - 1) * params.translate * 2 * aspect
    shift_y = (2 * draws[:, 4] - 1) * params.translate * 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    # M = rotation @ [[1, shear], [0, 1]]
    m00, m01, m10, m11 = cos, cos * shear - sin, sin, sin * shear + cos
    bx, by = half_extent[:, 0], half_extent[:, 1]
    extent_x = m00.abs() * bx + m01.abs() * by
    extent_y = m10.abs() * bx + m11.abs() * by
    size = scale * torch.minimum(aspect / extent_x, 1 / extent_y)
    det = size * (m00 * m11 - m01 * m10)
    i00, i01, i10, i11 = m11 / det, -m01 / det, -m10 / det, m00 / det
    # Normalised output x is in units of aspect: fold that stretch into the first column.
    row_x = torch.stack([i00 * aspect, i01, -(i00 * shift_x + i01 * shift_y)], dim=1)
    row_y = torch.stack([i10 * aspect, i11, -(i10 * shift_x + i11 * shift_y)], dim=1)
    return torch.stack([row_x, row_y], dim=1)


def _sample_atlas(
    atlas: Atlas, theta: torch.Tensor, tile: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor
) -> torch.Tensor:
    """Bilinear samples of each image's own tile, N x 1 x H x W, in one ``grid_sample`` call.

    The grid is built plane by plane by broadcasting (cheaper on CPU than
    ``affine_grid``'s batched matmul and than interleaved x/y writes) in atlas
    units, clamped to one pixel past the image's own tile, where the padding
    reads zero, then moved onto that tile.
    """
    n = len(tile)
    atlas_h, atlas_w = atlas.image.shape[-2:]
    grid = torch.empty((n, 2, len(ys), len(xs)), dtype=theta.dtype, device=theta.device)
    for axis, to_atlas in enumerate((atlas.cell / atlas_w, atlas.cell / atlas_h)):
        a, b, c = (theta[:, axis, k].mul(to_atlas).view(n, 1, 1) for k in range(3))
        plane = grid[:, axis]
        torch.add(a * xs.view(1, 1, -1), b * ys.view(1, -1, 1) + c, out=plane)
        margin = (1 + 2 / atlas.cell) * to_atlas
        plane.clamp_(-margin, margin)
    # Tiles are centred horizontally in the atlas and stacked vertically.
    center_y = (ATLAS_PAD + tile * (atlas.cell + ATLAS_PAD) + atlas.cell / 2) * (2 / atlas_h) - 1
    grid[:, 1].add_(center_y.to(grid.dtype).view(n, 1, 1))
    return F.grid_sample(
        atlas.image.expand(n, -1, -1, -1),
        grid.permute(0, 2, 3, 1),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )


def _change_stroke(ink: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Thicken (radius > 0) or thin (< 0) each binary image's strokes by its own number of pixels.

    Repeated 3x3 dilation of the ink (or of the background, to thin), as
    shifted ORs of bool tensors: several times faster than max pooling on CPU.
    """
    out = ink
    for sign in (1, -1):
        steps = int((radius * sign).max().clamp_min(0))
        current = ink if sign > 0 else ~ink
        for step in range(1, steps + 1):
            current = _dilate(current)
            chosen = (radius == sign * step).view(-1, 1, 1, 1)
            out = torch.where(chosen, current if sign > 0 else ~current, out)
    return out


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    """3x3 binary dilation of N x 1 x H x W bool; pixels outside the image count as unset."""
    padded = F.pad(mask.to(torch.uint8), (1, 1, 1, 1)).bool()
    rows = padded[..., 1:-1] | padded[..., :-2] | padded[..., 2:]
    return rows[..., 1:-1, :] | rows[..., :-2, :] | rows[..., 2:, :]
