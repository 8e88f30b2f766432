"""The committed demo data is exactly scikit-learn's digits as ``mlpipeline.devtools.demo`` exports them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT
from PIL import Image
from sklearn.datasets import load_digits

from mlpipeline.devtools.demo import digits_to_uint8, export_digits

COMMITTED = REPO_ROOT / "data" / "raw" / "digits"


def read_folder(root: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(root).as_posix(): np.asarray(Image.open(p)) for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def committed() -> dict[str, np.ndarray]:
    return read_folder(COMMITTED)


def test_committed_digits_equal_scikit_learns(committed: dict[str, np.ndarray]) -> None:
    digits = load_digits()
    expected = {
        f"{label}/{index:04d}.png": pixels
        for index, (label, pixels) in enumerate(
            zip(digits.target, digits_to_uint8(digits.images), strict=True)
        )
    }
    assert sorted(committed) == sorted(expected)
    for name, pixels in expected.items():
        assert committed[name].dtype == np.uint8 and committed[name].shape == (8, 8), name
        np.testing.assert_array_equal(committed[name], pixels, err_msg=name)


def test_export_reproduces_the_committed_files(tmp_path: Path, committed: dict[str, np.ndarray]) -> None:
    assert export_digits(tmp_path) == len(committed)
    exported = read_folder(tmp_path)
    assert exported.keys() == committed.keys()
    for name, pixels in exported.items():
        np.testing.assert_array_equal(pixels, committed[name], err_msg=name)


def test_seventeen_levels_map_onto_the_byte_range() -> None:
    levels = digits_to_uint8(np.arange(17))
    assert levels[0] == 0 and levels[-1] == 255 and len(set(levels.tolist())) == 17
