"""The ``glyphs`` generator: class names drawn as font glyphs in random poses, fast.

Each (class, font) glyph is rendered once into a distance-field atlas. A
batch is then pure tensor work at 4x the output size: one ``grid_sample``
places every glyph with its own rotation, shear, scale and shift;
thresholding the sampled distance at the image's own stroke offset, plus
noise, gives a binary bitmap with thicker or thinner, rough-edged strokes;
``avg_pool2d`` counts the ink in each 4x4 block. That is how scikit-learn's
digits were made (32x32 bitmaps, set pixels counted per 4x4 block, 0..16), and
at any other size it is plain area-averaged antialiasing. ``ValueMap`` then
maps the ink share onto the real data's values.

Like NIST's preprocessing, the posed glyph's bounding box is fitted to the
frame before the random ``scale``, so ``scale: 1`` means "fills the frame".
Lengths (stroke, edge noise, shift) are fractions of the frame's height, so
the same params mean the same look at any image size.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Self

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import param, params_dataclass
from mlpipeline.synthetic.atlas import build_atlas, sample_distance
from mlpipeline.synthetic.fonts import has_glyph, resolve_fonts
from mlpipeline.synthetic.generators import Renderer, SynthesisTask, register_generator

SUPERSAMPLE = 4  # render at 4x the output size, then count ink per 4x4 block


@params_dataclass
class GlyphParams:
    fonts: list[str] = param(min_len=1)
    rotation: float = param(ge=0, le=180)
    scale: list[Annotated[float, Field(gt=0, le=2)]] = param(min_len=2, max_len=2)
    shear: float = param(ge=0, le=2)
    translate: float = param(ge=0, le=0.5)
    stroke: list[Annotated[float, Field(ge=-0.1, le=0.1)]] = param(min_len=2, max_len=2)
    edge_noise: float = param(ge=0, le=0.1)
    pixel_noise: float = param(ge=0, le=1)

    @model_validator(mode="after")
    def check(self) -> Self:
        for name in ("scale", "stroke"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} must be [low, high] with low <= high, got {[low, high]}")
        if len(set(self.fonts)) != len(self.fonts):
            raise ValueError("fonts lists a font twice")
        return self


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


@register_generator("glyphs")
def glyphs(task: SynthesisTask) -> Renderer:
    """Render each class name (one character) in the configured fonts; see the module docstring."""
    params: GlyphParams = task.params.glyphs
    fonts = resolve_fonts(params.fonts, "synthesize.glyphs.fonts")
    usable = check_classes(list(task.classes), fonts)
    _, height, width = task.image_shape
    render_h, render_w = SUPERSAMPLE * height, SUPERSAMPLE * width
    # Distance fields interpolate well, so the atlas needs no more pixels than the render.
    atlas = build_atlas(list(task.classes), usable, max(render_h, render_w), task.device)
    # Output-frame coordinates of the render pixels' centres (align_corners=False convention).
    xs = (torch.arange(render_w, device=task.device) * 2 + 1) / render_w - 1
    ys = (torch.arange(render_h, device=task.device) * 2 + 1) / render_h - 1

    def render(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = len(labels)
        draws = torch.rand((n, 7), generator=generator, device=labels.device)
        fonts = atlas.fonts[labels]
        tiles = atlas.first[labels] + (draws[:, 0] * fonts).long().minimum(fonts - 1)
        theta, size = _pose(draws[:, 1:6], atlas.half_extent[tiles], params, width / height)
        # Distance to the outline as a fraction of the frame height (a cell unit spans `size` of it).
        distance = sample_distance(atlas, theta, tiles, xs, ys).mul_(size.view(n, 1, 1, 1))
        if params.edge_noise > 0:
            noise = torch.randn(distance.shape, generator=generator, device=distance.device)
            distance.add_(noise, alpha=params.edge_noise)
        stroke = params.stroke[0] + draws[:, 6] * (params.stroke[1] - params.stroke[0])
        ink = distance < stroke.view(n, 1, 1, 1)
        blocks = F.avg_pool2d(ink.to(distance.dtype), SUPERSAMPLE)
        return task.values.apply(blocks, params.pixel_noise, generator)

    return render


def _pose(
    draws: torch.Tensor, half_extent: torch.Tensor, params: GlyphParams, aspect: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the N x 2 x 3 map from output to glyph coordinates, and the glyph's size.

    The frame spans [-aspect, aspect] x [-1, 1], the glyph's cell [-1, 1]. The
    glyph is sheared and rotated, its transformed box fitted to the frame, then
    scaled and shifted; this returns the inverse, as ``affine_grid`` takes it,
    and the factor from glyph to frame lengths.
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
    return torch.stack([row_x, row_y], dim=1), size
