"""Exact arithmetic for the data stages: integer resampling that agrees with grid_sample,
sin/cos/exp polynomials that agree with libm, to within their own rounding, and the noise hash
that agrees with its definition in Python integers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlpipeline.core.bitexact import (
    NOISE_STD,
    ONE,
    SAMPLE_BITS,
    exp_neg,
    fold,
    hash32,
    hashed_noise,
    noise_table,
    round_to_uint8,
    sample_bilinear,
    sin_cos,
    sums_of_four_bytes,
    uniform_halves,
)


@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("shape", [(5, 2, 7, 9), (3, 1, 8, 8), (2, 3, 1, 5), (2, 1, 28, 28)])
def test_sample_bilinear_is_grid_sample_in_exact_arithmetic(
    shape: tuple[int, int, int, int], padding: str
) -> None:
    draws = np.random.default_rng(0)
    n, _, height, width = shape
    images = torch.from_numpy(draws.integers(0, 256, shape, dtype=np.uint8))
    # Anywhere from three images away on one side to three on the other, plus the edge cases.
    x = draws.integers(-3 * width * ONE, 4 * width * ONE, (n, height, width))
    y = draws.integers(-3 * height * ONE, 4 * height * ONE, (n, height, width))
    x[0, 0, :3], y[0, 0, :3] = [-ONE, width * ONE, -ONE // 2], [height * ONE, -ONE - 1, (height - 1) * ONE]
    samples = sample_bilinear(images, x, y, padding)

    grid = np.stack([(x / ONE + 0.5) * 2 / width - 1, (y / ONE + 0.5) * 2 / height - 1], axis=-1)
    expected = F.grid_sample(
        images.double(), torch.from_numpy(grid), mode="bilinear", padding_mode=padding, align_corners=False
    )
    assert samples.dtype == torch.int32
    torch.testing.assert_close(samples.double() / ONE**2, expected, rtol=0, atol=1e-9)


def test_identity_coordinates_give_the_image_back() -> None:
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 3, 6, 10), dtype=np.uint8))
    rows, cols = np.meshgrid(np.arange(6) * ONE, np.arange(10) * ONE, indexing="ij")
    x, y = np.broadcast_to(cols, (4, 6, 10)), np.broadcast_to(rows, (4, 6, 10))
    assert torch.equal(round_to_uint8(sample_bilinear(images, x, y, "zeros")), images)


def test_reflection_mirrors_at_the_edges_again_and_again() -> None:
    width = 4
    x = np.array([-ONE // 2, -ONE, 0, width * ONE - ONE // 2, width * ONE, 2 * width * ONE])
    expected = np.array([0, 0, 0, width - 1, width - 1, 0]) * ONE
    assert fold(x, width, "reflection").tolist() == expected.tolist()
    assert fold(np.array([-5 * ONE, 9 * ONE]), width, "zeros").tolist() == [-ONE, width * ONE]


def test_round_to_uint8_rounds_halves_up_and_clamps() -> None:
    half = 1 << (SAMPLE_BITS - 1)
    samples = torch.tensor(
        [-5 * ONE**2, 0, half - 1, half, 254 * ONE**2 + half, 300 * ONE**2], dtype=torch.int32
    )
    assert round_to_uint8(samples).tolist() == [0, 0, 0, 1, 255, 255]


def test_polynomials_agree_with_libm() -> None:
    angles = np.linspace(-np.pi, np.pi, 10_001)
    sin, cos = sin_cos(angles)
    np.testing.assert_allclose(sin, np.sin(angles), rtol=0, atol=2e-15)
    np.testing.assert_allclose(cos, np.cos(angles), rtol=0, atol=2e-15)
    x = np.linspace(0, 60, 10_001)
    np.testing.assert_allclose(exp_neg(x), np.exp(-x), rtol=1e-12, atol=0)
    assert exp_neg(np.array([0.0, 1e6])).tolist() == [1.0, pytest.approx(np.exp(-64.0))]


def test_sums_of_four_bytes_add_up_each_draws_bytes_whatever_the_byte_order() -> None:
    sums = sums_of_four_bytes(np.random.default_rng(3), 20_000)
    raw = np.random.default_rng(3).bit_generator.random_raw(10_000)
    parts = [(raw >> np.uint64(8 * k)) & np.uint64(255) for k in range(8)]
    low, high = sum(parts[:4]), sum(parts[4:])  # bytes 0-3 and 4-7 of each draw, by arithmetic
    assert sums.dtype == np.int32 and sums.tolist() == np.concatenate([low, high]).tolist()
    assert sums.mean() == pytest.approx(510, abs=3) and sums.std() == pytest.approx(147.8, rel=0.02)


def lowbias32(x: int) -> int:
    """Chris Wellons' lowbias32, as published, in Python integers."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_hash32_is_lowbias32_bit_for_bit() -> None:
    """In int64 with the second multiplier's negative twin, it is still lowbias32 to the bit,
    at the extremes too (the largest products reach 2**63 - 2**32 in magnitude)."""
    values = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, *np.random.default_rng(0).integers(0, 2**32, 2000).tolist()]
    hashed = hash32(torch.tensor(values, dtype=torch.int64))
    assert hashed.tolist() == [lowbias32(value) for value in values]
    # known answers from a C build in uint32 arithmetic, against a typo in both definitions
    assert [lowbias32(1), lowbias32(2**32 - 1), lowbias32(12345)] == [0x688990C0, 0x6768824A, 0x912EFCF7]


def test_uniform_halves_are_the_keyed_hash_of_each_position() -> None:
    keys = torch.tensor([[7, 2**32 - 1], [2**31, 5]], dtype=torch.int64)
    halves = uniform_halves(keys, 5)  # 3 words a row: values 0-2 their low halves, 3-4 high ones
    for row, (first, second) in enumerate(keys.tolist()):
        words = [lowbias32(lowbias32(word ^ first) ^ second) for word in range(3)]
        assert halves[row].tolist() == [w & 0xFFFF for w in words] + [w >> 16 for w in words[:2]]


def test_the_noise_table_is_zero_mean_symmetric_and_of_the_asked_std() -> None:
    table = noise_table(6.0).astype(np.float64) / ONE**2
    assert table.dtype == np.float64 and len(table) == 1 << 16
    assert np.array_equal(table, -table[::-1]) and table.mean() == 0
    assert table.std() == pytest.approx(6.0, rel=1e-4)
    assert table.max() == pytest.approx(6.0 * 3.84, rel=0.01)  # tails cut at 1 in 131,072
    assert np.all(np.diff(table) >= 0)  # quantiles, in order
    assert pytest.approx(209.0, abs=0.5) == NOISE_STD  # the sum of eight bytes' std, as the table scales it


def test_hashed_noise_looks_up_each_position_and_differs_between_images() -> None:
    keys = torch.tensor([[1, 2], [1, 3]], dtype=torch.int64)
    table = torch.from_numpy(noise_table(10.0))
    noise = hashed_noise(keys, table, (2, 3, 20, 30))
    assert noise.shape == (2, 3, 20, 30) and noise.dtype == torch.int32
    assert torch.equal(noise.view(2, -1), table[uniform_halves(keys, 1800)])
    assert (noise[0] != noise[1]).float().mean() > 0.99  # one key apart: unrelated noise
    assert (noise.double() / ONE**2).std().item() == pytest.approx(10.0, rel=0.03)


# The fixed polynomials, written out here so a changed coefficient fails too: a cache shared
# across machines holds bytes computed by exactly these.
SIN_TERMS = [(-1) ** k / math.factorial(2 * k + 1) for k in range(14)]
COS_TERMS = [(-1) ** k / math.factorial(2 * k) for k in range(15)]
EXP_TERMS = [1 / math.factorial(k) for k in range(12)]
EXP_HALVINGS, EXP_LARGEST = 10, 64.0


def _horner_in_python(coefficients: list[float], x: float) -> float:
    """The same scheme in Python floats: each * and + one IEEE double operation, never fused."""
    total = coefficients[-1]
    for coefficient in reversed(coefficients[:-1]):
        total = total * x + coefficient
    return total


def test_sin_cos_is_the_fixed_polynomial_bit_for_bit() -> None:
    """Agreeing with libm to 2e-15 would let np.sin pass: the cache needs every bit the same."""
    angles = np.concatenate([np.random.default_rng(5).uniform(-np.pi, np.pi, 20_000), [0.0, np.pi, -np.pi]])
    sin, cos = sin_cos(angles)
    expected = [
        (_horner_in_python(SIN_TERMS, a * a) * a, _horner_in_python(COS_TERMS, a * a))
        for a in angles.tolist()
    ]
    assert sin.tolist() == [s for s, _ in expected]
    assert cos.tolist() == [c for _, c in expected]


def test_exp_neg_is_the_fixed_polynomial_squared_bit_for_bit() -> None:
    x = np.concatenate([np.random.default_rng(6).uniform(0, 70, 20_000), [0.0, 1e-300, 64.0, 1e6]])

    def expected(value: float) -> float:
        power = _horner_in_python(EXP_TERMS, min(value, EXP_LARGEST) / -(2**EXP_HALVINGS))
        for _ in range(EXP_HALVINGS):
            power = power * power
        return power

    assert exp_neg(x).tolist() == [expected(v) for v in x.tolist()]
