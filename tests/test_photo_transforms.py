"""The photo transforms: random-resized crop, flips, colour jitter and the RandAugment /
TrivialAugment policy. Each integer kernel against Pillow where Pillow's algorithm is integer
(equalize, posterize, solarize) or against a numpy reference of its formula in int64, and the
geometry against what a crop must do. The same bytes on every CPU code path: test_cross_cpu."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from test_augment import sample_images, transforms

from mlpipeline.augmentation.crop import CropParams, crop_boxes, crop_maps
from mlpipeline.augmentation.pixels import (
    FACTOR_ONE,
    KERNELS,
    hue_matrices,
    to_factors,
)
from mlpipeline.augmentation.policy import ENHANCE, GEOMETRIC, OPS, PolicyParams, policy_draws
from mlpipeline.augmentation.transforms import augment, draw
from mlpipeline.core.seeding import rng

RGB = (3, 24, 20)


def photos(n: int = 16, shape: tuple[int, int, int] = RGB, seed: int = 0) -> torch.Tensor:
    """Random images over all of 0..255 (the kernels' clamps and Pillow's tables see both ends)."""
    return torch.from_numpy(rng(seed, "photos").integers(0, 256, (n, *shape), dtype=np.uint8))


def per_image(count: int, values: list[int]) -> torch.Tensor:
    return torch.tensor([values[i % len(values)] for i in range(count)], dtype=torch.int64)


def pillow(images: torch.Tensor, operation) -> np.ndarray:
    """``operation`` applied by Pillow to each channel of each image."""
    out = np.empty(images.shape, dtype=np.uint8)
    for index, image in enumerate(images.numpy()):
        for channel, plane in enumerate(image):
            out[index, channel] = np.asarray(operation(Image.fromarray(plane), index))
    return out


def rounded(total: np.ndarray, bits: int) -> np.ndarray:
    return np.clip((total + (1 << (bits - 1))) >> bits, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(1, 9, 13), RGB])
def test_equalize_posterize_and_solarize_are_pillows_bytes(shape: tuple[int, int, int]) -> None:
    images = photos(shape=shape)
    images[3] //= 4  # a narrow histogram: equalize stretches it
    images[4] = 7  # a flat image: equalize leaves it
    bits, thresholds = per_image(16, [1, 4, 7, 8]), per_image(16, [0, 100, 200, 255])
    np.testing.assert_array_equal(
        KERNELS["equalize"](images, bits).numpy(), pillow(images, lambda i, _: ImageOps.equalize(i))
    )
    np.testing.assert_array_equal(
        KERNELS["posterize"](images, bits).numpy(),
        pillow(images, lambda i, n: ImageOps.posterize(i, int(bits[n]))),
    )
    np.testing.assert_array_equal(
        KERNELS["solarize"](images, thresholds).numpy(),
        pillow(images, lambda i, n: ImageOps.solarize(i, int(thresholds[n]))),
    )


def test_autocontrast_stretches_each_channel_onto_the_full_range() -> None:
    images = photos() // 2 + 40
    images[5, 1] = 90  # a flat channel stays
    out = KERNELS["autocontrast"](images, torch.zeros(16, dtype=torch.int64)).numpy()
    values = images.numpy().astype(np.int64)
    low, high = values.min(axis=(2, 3), keepdims=True), values.max(axis=(2, 3), keepdims=True)
    expected = np.where(high > low, (values - low) * 255 // np.maximum(high - low, 1), values)
    np.testing.assert_array_equal(out, expected)
    assert out[0].min() == 0 and out[0].max() == 255 and (out[5, 1] == 90).all()


def luma_q16(values: np.ndarray) -> np.ndarray:
    if values.shape[1] == 1:
        return values << 16
    return values[:, 0:1] * 19595 + values[:, 1:2] * 38470 + values[:, 2:3] * 7471


def blended(values: np.ndarray, degenerate_q8: np.ndarray, factors: np.ndarray) -> np.ndarray:
    factor = factors.reshape(-1, 1, 1, 1)
    return rounded(((values * factor) << 8) + degenerate_q8 * (FACTOR_ONE - factor), 20)


@pytest.mark.parametrize("shape", [(1, 9, 13), RGB])
def test_enhance_kernels_equal_their_formula_in_int64(shape: tuple[int, int, int]) -> None:
    """Brightness, contrast, saturation and sharpness, against the formula of the module
    docstring worked in numpy int64 (the kernels run int32 on torch)."""
    images = photos(shape=shape)
    values = images.numpy().astype(np.int64)
    factors = to_factors(np.linspace(0.0, 1.99, 16))
    pixels = values.shape[2] * values.shape[3]
    grey = (luma_q16(values) + 128) >> 8
    mean = (luma_q16(values).sum(axis=(1, 2, 3)) + pixels * 128) // (pixels * 256)
    smooth = values << 8
    padded = np.pad(values, ((0, 0), (0, 0), (1, 1), (1, 1)))
    height, width = values.shape[2:]
    around = sum(padded[:, :, dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3))
    smooth[:, :, 1:-1, 1:-1] = ((((around + 4 * values) << 8) + 6) // 13)[:, :, 1:-1, 1:-1]
    expected = {
        "brightness": rounded(values * factors.reshape(-1, 1, 1, 1), 12),
        "contrast": blended(values, mean.reshape(-1, 1, 1, 1), factors),
        "saturation": blended(values, grey, factors) if shape[0] == 3 else values.astype(np.uint8),
        "sharpness": blended(values, smooth, factors),
    }
    for name, want in expected.items():
        np.testing.assert_array_equal(
            KERNELS[name](images, torch.from_numpy(factors)).numpy(), want, err_msg=name
        )
        unit = torch.full((16,), FACTOR_ONE, dtype=torch.int64)
        assert torch.equal(KERNELS[name](images, unit), images), f"{name} at factor 1"


def test_saturation_zero_is_the_grey_image_within_a_level_of_pillows() -> None:
    images = photos()
    grey = KERNELS["saturation"](images, torch.zeros(16, dtype=torch.int64)).numpy()
    assert (grey[:, 0] == grey[:, 1]).all() and (grey[:, 1] == grey[:, 2]).all()
    pillows = np.stack(
        [np.asarray(Image.fromarray(image.transpose(1, 2, 0)).convert("L")) for image in images.numpy()]
    )
    assert np.abs(grey[:, 0].astype(int) - pillows).max() <= 1


def test_hue_turns_about_the_grey_axis() -> None:
    images = photos(n=4)
    images[:, :, :4] = 77  # grey rows stay grey, whatever the turn
    matrices = torch.from_numpy(hue_matrices(np.array([0.0, 1 / 3, -1 / 3, 0.137])))
    out = KERNELS["hue"](images, matrices)
    assert torch.equal(out[0], images[0])  # no turn
    assert torch.equal(out[1], images[1][[2, 0, 1]])  # a third of a turn: red -> green -> blue -> red
    assert torch.equal(out[2], images[2][[1, 2, 0]])
    assert (out[:, :, :4] == 77).all()
    assert (hue_matrices(np.linspace(-0.5, 0.5, 11)).sum(axis=2) == FACTOR_ONE).all()
    gray = photos(n=4, shape=(1, 5, 5))
    assert torch.equal(KERNELS["hue"](gray, matrices), gray)


def test_horizontal_and_vertical_flips_mirror_exactly() -> None:
    images = sample_images((3, 10, 14), 32)
    assert torch.equal(
        augment(images, transforms({"transforms.flip.horizontal": 1.0}), 0, "b"), images.flip(-1)
    )
    assert torch.equal(
        augment(images, transforms({"transforms.flip.vertical": 1.0}), 0, "b"), images.flip(-2)
    )
    half = augment(images, transforms({"transforms.flip.horizontal": 0.5}), 0, "b")
    mirrored = [(row == images[i].flip(-1)).all().item() for i, row in enumerate(half)]
    kept = [(row == images[i]).all().item() for i, row in enumerate(half)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True)) and 8 < sum(mirrored) < 24


CROP = {"probability": 1.0, "scale": [0.08, 1.0], "ratio": [0.75, 4 / 3]}


def crop_params(**overrides) -> CropParams:
    return CropParams(**{**CROP, **overrides})


@pytest.mark.parametrize("size", [(24, 20), (8, 64)])
def test_crop_boxes_keep_to_the_area_and_ratio_ranges_and_fit(size: tuple[int, int]) -> None:
    params = crop_params()
    width, height = crop_boxes(params, 4000, size, rng(0, "boxes"))
    assert (width <= size[1] + 1e-9).all() and (height <= size[0] + 1e-9).all()
    area, ratio = width * height / (size[0] * size[1]), width / height
    drawn = np.isclose(area, area) & (area >= 0.08 - 1e-9) & (ratio >= 0.75 - 1e-9) & (ratio <= 4 / 3 + 1e-9)
    assert drawn.mean() > 0.9  # the rest fell back to the whole image cut to the ratio range
    assert area.min() < 0.1 and area.max() > (0.9 if size[0] > 10 else 0.16)  # 8 x 64: ratio <= 4/3


def test_the_fallback_is_the_whole_image_cut_to_the_nearest_ratio() -> None:
    """A 1 x 8 strip cannot hold a box of ratio <= 4/3 and 8% of its area: every try fails."""
    width, height = crop_boxes(crop_params(scale=[0.5, 1.0]), 50, (2, 64), rng(0, "boxes"))
    np.testing.assert_allclose(width, 2 * 4 / 3)
    np.testing.assert_allclose(height, 2.0)


def test_a_crop_reads_inside_the_image_only_and_zooms() -> None:
    flat = torch.full((64, 3, 32, 32), 200, dtype=torch.uint8)  # any read beyond the edge would show
    assert (augment(flat, transforms({"transforms.crop.probability": 1.0}), 0, "b") == 200).all()
    ramp = (torch.arange(32) * 8).to(torch.uint8).expand(64, 1, 32, 32).contiguous()
    quarter = {
        "transforms.crop.probability": 1.0,
        "transforms.crop.scale": [0.25, 0.25],
        "transforms.crop.ratio": [1.0, 1.0],
    }
    zoomed = augment(ramp, transforms(quarter), 0, "b").to(torch.int64)
    spans = zoomed[:, 0, :, -1] - zoomed[:, 0, :, 0]
    assert ((spans > 100) & (spans < 140)).all()  # 16 of the 32 columns, stretched over all 32
    assert (zoomed.diff(dim=-1) >= 0).all()  # a crop, not a flip or a turn


def test_crop_maps_are_the_identity_for_images_left_out() -> None:
    maps = crop_maps(crop_params(probability=0.5), 200, (16, 16), rng(0, "crop"))
    kept = (maps.xx == 1) & (maps.yy == 1) & (maps.x0 == 0) & (maps.y0 == 0)
    assert 70 < kept.sum() < 130 and (maps.xy == 0).all()


@pytest.mark.parametrize("kind", ["randaugment", "trivialaugment"])
def test_policy_draws_every_op_and_each_image_gets_its_ops(kind: str) -> None:
    policy = PolicyParams(kind=kind, ops=2, magnitude=9)
    n = 2800
    maps, pixels = policy_draws(policy, n, (32, 32), rng(0, "policy"))
    per_slot = 2 if kind == "randaugment" else 1
    counted = {op.kind: 0 for op in pixels}
    for op in pixels:
        counted[op.kind] += len(op.rows)
    geometric = int(
        ((maps.xx != 1) | (maps.xy != 0) | (maps.yx != 0) | (maps.x0 != 0) | (maps.y0 != 0)).sum()
    )
    pixel_kinds = {ENHANCE.get(name, name) for name in OPS if name != "identity" and name not in GEOMETRIC}
    assert set(counted) == pixel_kinds
    share = n * per_slot / len(OPS)
    assert all(0.7 * share < count < 1.3 * share for count in counted.values()), counted
    assert 0.6 * 5 * share < geometric < n  # five geometric ops (a turn of bin 0 moves nothing)


def test_policy_pixel_ops_are_their_kernels_applied_alone() -> None:
    """One op a copy: a copy that drew a pixel op is exactly that kernel of its original."""
    images = photos(n=256, shape=(3, 16, 16))
    spec = transforms(
        {
            "transforms.policy.kind": "randaugment",
            "transforms.policy.ops": 1,
            "transforms.policy.magnitude": 20,
        }
    )
    drawn = draw(spec, 0, tuple(images.shape), "b")
    out = drawn.apply(images)
    checked = 0
    for op in drawn.pixels:
        expected = KERNELS[op.kind](images[op.rows], op.values)
        assert torch.equal(out[op.rows], expected), op.kind
        checked += len(op.rows)
    assert checked > 100


def test_photo_transforms_are_deterministic_and_depend_on_the_stream() -> None:
    spec = transforms(
        {
            "transforms.crop.probability": 1.0,
            "transforms.policy.kind": "trivialaugment",
            "transforms.colour.probability": 0.8,
            "transforms.flip.horizontal": 0.5,
        }
    )
    images = photos(n=32, shape=(3, 20, 28))
    first = augment(images, spec, 5, "real", 0, 0, 1)
    assert torch.equal(first, augment(images, spec, 5, "real", 0, 0, 1))
    assert not torch.equal(first, augment(images, spec, 5, "real", 0, 0, 2))
    assert first.shape == images.shape and first.dtype == torch.uint8
    buffer = io.BytesIO()
    torch.save(first, buffer)  # nothing in the output refers to the draws
