"""The ``glyphs`` generator: class names drawn as font glyphs in random poses, fast and exact.

Each (class, font) glyph is drawn once into a distance-field atlas. A batch is
then array work at 4x the output size: each glyph is placed with its own
rotation, shear, scale and shift by sampling the atlas at fixed-point
coordinates; comparing the sampled distance with the image's own stroke offset,
plus noise, gives a binary bitmap with thicker or thinner, rough-edged strokes;
the ink in each 4x4 block is counted. That is how scikit-learn's digits were
made (32x32 bitmaps, set pixels counted per 4x4 block, 0..16), and at any other
size it is plain area-averaged antialiasing. ``ValueMap`` then maps the ink
share onto the real data's values.

Like NIST's preprocessing, the posed glyph's bounding box is fitted to the
frame before the random ``scale``, so ``scale: 1`` means "fills the frame".
Lengths (stroke, edge noise, shift) are fractions of the frame's height, so
the same params mean the same look at any image size.

The output bytes are the same on every CPU (``tests/test_cross_cpu.py``), the
way augment's are (``mlpipeline.core.bitexact``): the draws are numpy's integers
and ``random()``; each image's pose is float64 ``+ - * /`` one operation at a
time (sin and cos are polynomials), rounded once to fixed point; from there
everything that decides a pixel is integer arithmetic: the atlas, its bilinear
samples, the edge noise (sums of random bytes), the threshold test and the
count. No float result is ever compared with a threshold, so no last-bit
difference can flip a pixel.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from mlpipeline.core.bitexact import sums_of_four_bytes
from mlpipeline.synthetic.atlas import Atlas, build_atlas, sample_distance
from mlpipeline.synthetic.draws import exact_draws
from mlpipeline.synthetic.fonts import has_glyph, resolve_fonts
from mlpipeline.synthetic.generators import CannotDraw, Renderer, SynthesisTask, register_generator
from mlpipeline.synthetic.params import GlyphParams
from mlpipeline.synthetic.placement import DRAWS, FRAME_ONE, Poses, pose, render_frame

SUPERSAMPLE = 4  # render at 4x the output size, then count ink per 4x4 block
CHUNK_SAMPLES = 1 << 18  # render samples per chunk: few calls per batch, arrays of about a MB
NOISE_MEAN = 2 * 255  # of a sum of four uniform bytes
NOISE_STD = math.sqrt(4 * (256**2 - 1) / 12)


def check_classes(classes: list[str], fonts: list[Path]) -> list[list[Path]]:
    """Per class, the fonts that have its glyph; a class no font can draw is ``CannotDraw``."""
    usable = []
    for name in classes:
        if len(name) != 1:
            raise CannotDraw(
                f"class '{name}' is not a single character, so the glyphs generator cannot draw it"
            )
        have = [path for path in fonts if has_glyph(path, name)]
        if not have:
            raise CannotDraw(f"no font in synthesize.glyphs.fonts has a glyph for class '{name}'")
        usable.append(have)
    return usable


@register_generator("glyphs")
def glyphs(task: SynthesisTask) -> Renderer:
    """Render each class name (one character) in the configured fonts; see the module docstring.

    Rendering runs on the CPU whatever ``task.device`` is: it is integer work
    on small arrays, and the bytes are the same everywhere.
    """
    params: GlyphParams = task.params.glyphs
    fonts = resolve_fonts(params.fonts, "synthesize.glyphs.fonts")
    usable = check_classes(list(task.classes), fonts)
    _, height, width = task.image_shape
    atlas = build_atlas(list(task.classes), usable, SUPERSAMPLE * max(height, width))
    frame = render_frame(SUPERSAMPLE * height, SUPERSAMPLE * width)
    noise_step = round(params.edge_noise * FRAME_ONE / NOISE_STD)

    def render(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        draws = exact_draws(generator)
        classes = labels.cpu().numpy()
        glyph = atlas.first[classes] + draws.integers(0, atlas.fonts[classes])
        poses = pose(atlas, glyph, draws.random((len(classes), DRAWS)), params, frame)
        counts = ink_counts(atlas, poses, (height, width), noise_step, draws)
        coverage = counts.to(torch.float32).div_(SUPERSAMPLE**2).unsqueeze(1)
        return task.values.apply(coverage, params.pixel_noise, generator)

    return render


def ink_counts(
    atlas: Atlas, poses: Poses, size: tuple[int, int], noise_step: int, draws: np.random.Generator
) -> torch.Tensor:
    """Set render pixels per output pixel, int32 N x H x W: where the sampled distance, in frame
    heights, plus edge noise (``noise_step`` per unit of a sum of four random bytes) is below the
    image's stroke offset. Rendered a chunk at a time, images of one glyph together, so that its
    tile stays in cache; the noise is drawn in that order."""
    height, width = size
    counts = torch.empty((len(poses.glyph), height, width), dtype=torch.int32)
    order = np.argsort(poses.glyph, kind="stable")
    per_chunk = max(1, CHUNK_SAMPLES // (SUPERSAMPLE**2 * height * width))
    for start in range(0, len(order), per_chunk):
        images = order[start : start + per_chunk]
        part = poses.take(images)
        distance = sample_distance(atlas, part.glyph, part.x, part.y)
        distance *= torch.from_numpy(part.size).view(-1, 1, 1)  # in 1/FRAME_ONE frame heights
        if noise_step:
            noise = torch.from_numpy(sums_of_four_bytes(draws, distance.numel()))
            distance += noise.view(distance.shape).mul_(noise_step)
        limit = torch.from_numpy(part.stroke + NOISE_MEAN * noise_step).view(-1, 1, 1)
        counts[torch.from_numpy(images)] = block_counts(distance < limit)
    return counts


def block_counts(ink: torch.Tensor) -> torch.Tensor:
    """Set pixels per ``SUPERSAMPLE`` x ``SUPERSAMPLE`` block of boolean N x 4H x 4W: int32 N x H x W.

    A block row's four pixels are four adjacent bytes, read as one int32 and added
    up with shifts, so the count is four adds and four shifts per output pixel.
    """
    n, rows, columns = ink.shape
    words = ink.view(torch.uint8).view(n, rows // SUPERSAMPLE, SUPERSAMPLE, columns).view(torch.int32)
    total = words[:, :, 0] + words[:, :, 1] + words[:, :, 2] + words[:, :, 3]  # each byte at most 4
    total += total >> 16
    total += total >> 8
    return total & 0xFF
