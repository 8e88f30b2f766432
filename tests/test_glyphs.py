"""The glyphs generator's exact arithmetic: an integer distance atlas, integer bilinear samples that
agree with grid_sample, poses that fit the frame, an exact value map, and no float kernel that may
round differently on another CPU anywhere on the path that decides a pixel."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import repo_params
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mlpipeline.core.bitexact import ONE
from mlpipeline.core.params import from_mapping
from mlpipeline.stages.synthesize import SynthesizeParams
from mlpipeline.synthetic import SynthesisTask, ValueMap, get_generator
from mlpipeline.synthetic.atlas import (
    DIST_ONE,
    FAR,
    PAD,
    SAMPLE_ONE,
    build_atlas,
    glyph_field,
    sample_distance,
)
from mlpipeline.synthetic.fonts import resolve_fonts
from mlpipeline.synthetic.values import ChannelValues

GREY = ValueMap((ChannelValues(0.0, 255.0, None),))
# Float operations allowed on the path that decides a pixel: each is one correctly rounded (or
# exact) elementwise operation, the same whatever the SIMD width: no fused multiply-add, no
# reduction, no transcendental function, no float resampling or normal draws.
ELEMENTWISE = {"_to_copy", "clamp", "mul", "div_", "round_", "unsqueeze"}


def glyph_task(overrides: dict[str, Any], shape: tuple[int, int, int], values: ValueMap) -> SynthesisTask:
    section = copy.deepcopy(repo_params()["synthesize"])
    section["glyphs"].update(overrides)
    params = from_mapping(SynthesizeParams, section, "synthesize")
    return SynthesisTask([str(d) for d in range(10)], shape, values, params, torch.device("cpu"))


def render(task: SynthesisTask, count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return get_generator("glyphs")(task)(torch.arange(count) % 10, generator)


@pytest.fixture(scope="module")
def atlas():
    fonts = resolve_fonts(["DejaVuSans", "cmr10"], "fonts")
    return build_atlas(["3", "7"], [fonts, fonts], 32)


def test_the_atlas_holds_signed_distances_to_the_outline_in_glyph_lengths() -> None:
    ink = np.zeros((20, 8), dtype=bool)
    ink[:, 3:5] = True  # a bar 2 pixels wide and 20 high: the glyph's length is 20 pixels
    field, centre = glyph_field(ink, 40, 1)
    row = field[20]  # across the bar's middle: columns 16 to 23 hold the ink box, 19 and 20 the bar
    outside = np.abs(np.arange(40) - 19.5) - 1  # centre to the nearest ink pixel's centre, less 1/2
    expected = np.where(np.isin(np.arange(40), [19, 20]), -0.5, outside)
    assert row.tolist() == np.rint(expected * DIST_ONE / 20).astype(int).tolist()
    assert centre == (19.5, 19.5)
    halved, halved_centre = glyph_field(ink, 40, 2)  # 2 x 2 blocks: rounded means of the same values
    assert halved[10, 9] == np.floor(field[20:22, 18:20].sum() / 4 + 0.5)
    assert halved_centre == (9.5, 9.5)


def test_sample_distance_is_grid_sample_in_exact_arithmetic(atlas) -> None:
    draws = np.random.default_rng(0)
    n, height, width = 4, 12, 10
    span = atlas.pitch * ONE  # from a tile away on either side, on the 1/ONE px grid
    x = (draws.integers(-span, span, (n, width)), draws.integers(0, span, (n, height)))
    y = (draws.integers(-span, span, (n, width)), draws.integers(0, span, (n, height)))
    x, y = ((a.astype(np.int32), b.astype(np.int32)) for a, b in (x, y))
    glyphs = np.array([0, 1, 2, 3])
    got = sample_distance(atlas, glyphs, x, y)

    tiles = ((atlas.pairs & 0xFFFF) - FAR).view(-1, 1, atlas.pitch, atlas.pitch)[glyphs].double()
    inside = tiles[:, :, PAD:-PAD, PAD:-PAD]
    assert tiles[:, :, :PAD].eq(FAR).all() and inside.amin() < 0 < inside.amax() < FAR
    clamp = (PAD - 1) * ONE, (atlas.pitch - PAD) * ONE
    columns, rows = (np.clip(a[:, None, :] + b[:, :, None], *clamp) for a, b in (x, y))
    grid = np.stack([(c / ONE + 0.5) * 2 / atlas.pitch - 1 for c in (columns, rows)], axis=-1)
    expected = F.grid_sample(tiles, torch.from_numpy(grid), mode="bilinear", align_corners=False)[:, 0]
    # Rounded down to 1/SAMPLE_ONE of a glyph length, once.
    gap = expected * (SAMPLE_ONE / DIST_ONE) - got.double()
    assert got.dtype == torch.int32 and gap.min() > -1e-9 and gap.max() < 1
    assert (gap > 0.5).any() and (got < 0).any() and (got == FAR * SAMPLE_ONE // DIST_ONE).any()


def test_scale_one_fits_the_upright_glyph_to_the_frame() -> None:
    still = {"rotation": 0, "shear": 0, "translate": 0, "scale": [1, 1], "stroke": [0, 0], "edge_noise": 0}
    images = render(glyph_task(still, (1, 28, 28), GREY), 200)[:, 0].numpy()
    rows, columns = images.any(axis=2), images.any(axis=1)
    # Digits are taller than wide: each spans the frame's height, its box centred across it.
    assert rows[:, 0].all() and rows[:, -1].all() and not columns[:, 0].any() and not columns[:, -1].any()
    left, right = columns.argmax(axis=1), 27 - columns[:, ::-1].argmax(axis=1)
    assert np.abs((left + right) / 2 - 13.5).max() <= 1


def test_the_value_map_rounds_the_ink_share_exactly_and_its_noise_has_the_std_asked() -> None:
    values = ValueMap((ChannelValues(10.0, 251.0, None), ChannelValues(200.0, 37.0, None)))
    coverage = torch.arange(17, dtype=torch.float32).div(16).view(1, 1, 1, 17)
    mapped = values.apply(coverage, 0.0, torch.Generator())
    shares = np.arange(17) / 16
    # Halves round up: 10 + 241 / 2 = 130.5 -> 131, 200 - 163 / 2 = 118.5 -> 119.
    assert mapped[0, 0, 0].tolist() == np.floor(10 + shares * 241 + 0.5).astype(int).tolist()
    assert mapped[0, 1, 0].tolist() == np.floor(200 - shares * 163 + 0.5).astype(int).tolist()

    half = torch.full((200, 1, 20, 20), 0.5)
    noisy = [values.apply(half, 0.1, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(noisy[0], noisy[1])
    assert noisy[0][:, 0].double().std().item() == pytest.approx(24.1, rel=0.05)  # 0.1 of the contrast
    assert noisy[0][:, 0].double().mean().item() == pytest.approx(130.5, abs=0.5)


class FloatKernels(TorchDispatchMode):
    """Names every aten operation that reads or writes a floating-point tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        if any(t.is_floating_point() for t in tensors):
            self.names.add(func.overloadpacket.__name__)
        return out


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 20, 28)])
def test_rendering_runs_no_float_kernel_that_may_round_differently_on_another_cpu(
    shape: tuple[int, int, int],
) -> None:
    colours = tuple(ChannelValues(float(b), float(i), None) for b, i in [(0, 255), (30, 220), (250, 5)])
    task = glyph_task({"edge_noise": 0.02, "pixel_noise": 0.1}, shape, ValueMap(colours[: shape[0]]))
    with FloatKernels() as seen:
        images = render(task, 50)
    assert images.shape == (50, *shape) and images.dtype == torch.uint8
    assert seen.names <= ELEMENTWISE, f"float kernels on the pixel path: {seen.names - ELEMENTWISE}"
    assert torch.equal(images, render(task, 50))  # and the draws come from the seed alone
