"""Where each glyph lands: its random pose as fixed-point atlas coordinates, computed exactly.

Like NIST's preprocessing, the glyph is sheared and rotated, its transformed
box fitted to the frame (so ``scale: 1`` means "fills the frame"), then scaled
and shifted; each render pixel pulls from the glyph through the inverse map.
The map is float64 ``+ - * /``, one correctly rounded operation at a time (sin
and cos are ``bitexact`` polynomials), rounded once to 1/``ONE`` atlas pixel:
the same integers on every CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from mlpipeline.core.bitexact import ONE, sin_cos
from mlpipeline.synthetic.atlas import SAMPLE_ONE, Atlas, Terms
from mlpipeline.synthetic.params import GlyphParams

SIZE_BITS = 10  # a glyph's size in frame heights, in steps of 1/1024, for the threshold test
MAX_SIZE = 1 << 16  # steps: sizes past 64 frame heights are clamped, so distance x size fits int32
FRAME_ONE = SAMPLE_ONE << SIZE_BITS  # threshold units per frame height: sampled distance x size
COORDINATE_LIMIT = 2**28  # fixed-point terms are clipped here (a glyph far smaller than a pixel)
DRAWS = 6  # uniform numbers per image: rotation, shear, scale, shift x, shift y, stroke


class Frame(NamedTuple):
    """Frame coordinates of the render pixels' centres; the frame spans [-aspect, aspect] x [-1, 1]."""

    x: np.ndarray  # along a row
    y: np.ndarray  # down a column
    aspect: float


@dataclass(frozen=True)
class Poses:
    """Per image: its glyph, where its render pixels sample the atlas, and its ink threshold."""

    glyph: np.ndarray
    x: Terms  # fixed-point atlas x (1/ONE px): a term per render column plus one per render row
    y: Terms
    size: np.ndarray  # int32: the glyph's length in frame heights, in 1/2**SIZE_BITS steps
    stroke: np.ndarray  # int32: stroke growth (< 0 thins) in 1/FRAME_ONE frame heights

    def take(self, images: np.ndarray) -> Poses:
        """These images' poses only."""
        return Poses(
            self.glyph[images],
            (self.x[0][images], self.x[1][images]),
            (self.y[0][images], self.y[1][images]),
            self.size[images],
            self.stroke[images],
        )


def render_frame(height: int, width: int) -> Frame:
    """The frame coordinates of a ``height`` x ``width`` render's pixel centres."""
    aspect = width / height
    return Frame(
        x=((np.arange(width) * 2 + 1) / width - 1) * aspect,
        y=(np.arange(height) * 2 + 1) / height - 1,
        aspect=aspect,
    )


def pose(atlas: Atlas, glyph: np.ndarray, draws: np.ndarray, params: GlyphParams, frame: Frame) -> Poses:
    """Each image's pose from its ``DRAWS`` uniform numbers in [0, 1): N x ``DRAWS`` float64."""
    inverse, size = _inverse_map(atlas.half_extent[glyph], draws[:, :3], params, frame.aspect)
    shift_x = (2 * draws[:, 3] - 1) * (params.translate * 2 * frame.aspect)
    shift_y = (2 * draws[:, 4] - 1) * (params.translate * 2)
    stroke = params.stroke[0] + draws[:, 5] * (params.stroke[1] - params.stroke[0])
    shift = (shift_x, shift_y)
    x, y = (
        _terms(row, centre, shift, atlas.scale[glyph], frame)
        for row, centre in zip(inverse, atlas.centre[glyph].T, strict=True)
    )
    return Poses(
        glyph=glyph,
        x=x,
        y=y,
        size=np.clip(np.rint(size * (1 << SIZE_BITS)), 0, MAX_SIZE).astype(np.int32),
        stroke=np.rint(stroke * FRAME_ONE).astype(np.int32),
    )


def _inverse_map(
    half_extent: np.ndarray, draws: np.ndarray, params: GlyphParams, aspect: float
) -> tuple[tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """The 2 x 2 map from frame to glyph coordinates (rows of per-image arrays), and the glyph's
    size: how many frame heights its length spans. The glyph's cell spans [-1, 1]."""
    angle = (2 * draws[:, 0] - 1) * math.radians(params.rotation)
    shear = (2 * draws[:, 1] - 1) * params.shear
    scale = params.scale[0] + draws[:, 2] * (params.scale[1] - params.scale[0])
    sin, cos = sin_cos(angle)
    # M = rotation @ [[1, shear], [0, 1]]
    m00, m01, m10, m11 = cos, cos * shear - sin, sin, sin * shear + cos
    extent_x = np.abs(m00) * half_extent[:, 0] + np.abs(m01) * half_extent[:, 1]
    extent_y = np.abs(m10) * half_extent[:, 0] + np.abs(m11) * half_extent[:, 1]
    size = scale * np.minimum(aspect / extent_x, 1 / extent_y)
    det = size * (m00 * m11 - m01 * m10)
    return ((m11 / det, -m01 / det), (-m10 / det, m00 / det)), size


def _terms(
    row: tuple[np.ndarray, np.ndarray],
    centre: np.ndarray,
    shift: tuple[np.ndarray, np.ndarray],
    reach: np.ndarray,
    frame: Frame,
) -> Terms:
    """One atlas coordinate's fixed-point terms: ``centre + reach * row . (frame point - shift)``,
    split into a term per render column and a term per render row (all per image; ``reach`` is
    atlas pixels per glyph unit)."""
    along_x, along_y = row[0] * reach, row[1] * reach
    offset = centre - (along_x * shift[0] + along_y * shift[1])
    return fixed(along_x[:, None] * frame.x), fixed(along_y[:, None] * frame.y + offset[:, None])


def fixed(coordinates: np.ndarray) -> np.ndarray:
    """Float64 atlas coordinates -> int32 in 1/``ONE`` px, clipped so that two terms add up in int32."""
    return np.rint(np.clip(coordinates * ONE, -COORDINATE_LIMIT, COORDINATE_LIMIT)).astype(np.int32)
