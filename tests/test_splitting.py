"""Splitting: a keyed hash of each image, seeded, pins honoured; duplicates found; a split missing a
class refused."""

from __future__ import annotations

import numpy as np
import pytest

from mlpipeline.core.errors import PipelineError
from mlpipeline.ingestion.splitting import (
    find_duplicates,
    hashed_keep,
    hashed_split,
    refuse_missing_classes,
)

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
CLASSES = ["cat", "dog", "owl"]


def keys(count: int, seed: int = 0) -> np.ndarray:
    """Random 64-bit keys, as pixel digests' prefixes are."""
    return np.random.default_rng(seed).integers(0, 2**64, count, dtype=np.uint64, endpoint=False)


def unpinned(count: int) -> np.ndarray:
    return np.full(count, -1, dtype=np.int8)


def test_the_fractions_hold_statistically() -> None:
    codes = hashed_split(keys(200_000), unpinned(200_000), FRACTIONS, seed=1)
    shares = np.bincount(codes, minlength=3) / len(codes)
    np.testing.assert_allclose(shares, [0.7, 0.15, 0.15], atol=0.005)


def test_an_images_split_depends_on_its_key_alone() -> None:
    """Not on which other images exist: a subset, a superset or another order gives each the same."""
    everything = keys(5000)
    whole = hashed_split(everything, unpinned(5000), FRACTIONS, seed=3)
    chosen = np.random.default_rng(1).permutation(5000)[:700]
    part = hashed_split(everything[chosen], unpinned(700), FRACTIONS, seed=3)
    np.testing.assert_array_equal(part, whole[chosen])


def test_same_seed_same_split_other_seed_other_split() -> None:
    first = hashed_split(keys(1000), unpinned(1000), FRACTIONS, seed=7)
    np.testing.assert_array_equal(first, hashed_split(keys(1000), unpinned(1000), FRACTIONS, seed=7))
    assert (first != hashed_split(keys(1000), unpinned(1000), FRACTIONS, seed=8)).mean() > 0.3


def test_a_pin_wins() -> None:
    pinned = np.array([2, -1, 0, 1], dtype=np.int8)
    codes = hashed_split(keys(4), pinned, FRACTIONS, seed=0)
    assert [codes[0], codes[2], codes[3]] == [2, 0, 1]


def test_keep_fraction_is_nested_and_holds_statistically() -> None:
    """Raising the fraction only adds images, so a learning curve's runs grow one set."""
    found = keys(100_000)
    half, three_quarters = hashed_keep(found, 0.5, seed=0), hashed_keep(found, 0.75, seed=0)
    assert not (half & ~three_quarters).any()
    assert abs(half.mean() - 0.5) < 0.01 and abs(three_quarters.mean() - 0.75) < 0.01
    assert hashed_keep(found, 1.0, seed=0).all()
    assert (hashed_keep(found, 0.5, seed=0) != hashed_split(found, unpinned(len(found)), FRACTIONS, 0)).any()


def test_a_split_without_some_class_is_named() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    codes = np.array([0, 1, 2, 0, 0, 0, 1, 2], dtype=np.int8)
    with pytest.raises(PipelineError) as caught:
        refuse_missing_classes(labels, codes, np.ones(8, dtype=bool), CLASSES, seed=5, source="raw")
    assert str(caught.value) == (
        "raw: class 'dog' has no val image (each image's split is a hash of its pixels with ingest.seed 5, "
        "and none of its 2 fell in val); add images, pin some to val with a manifest 'split' column, or "
        "change ingest.seed"
    )
    labels, codes = np.repeat([0, 1, 2], 3), np.tile(np.arange(3, dtype=np.int8), 3)
    kept = np.arange(9) != 3  # dog's one training image held out
    with pytest.raises(PipelineError, match="class 'dog' keeps none of its training images"):
        refuse_missing_classes(labels, codes, kept, CLASSES, 5, "raw")


def arguments(digests: list[bytes], labels: list[int], prefix: int = 4) -> tuple:
    """``find_duplicates``'s arguments for whole digests (the keys hold their first ``prefix`` bytes)."""
    keys = np.array([int.from_bytes(d[:prefix].ljust(4, b"\0"), "little") for d in digests], dtype=np.uint32)
    candidates = np.array([d != b"" for d in digests])
    return keys, candidates, np.array(labels), digests.__getitem__


def duplicates(digests: list[bytes], labels: list[int]) -> np.ndarray:
    """The rows ``find_duplicates`` drops, where no image has two labels."""
    found = find_duplicates(*arguments(digests, labels))
    assert found.conflicts == []
    return found.drop


def test_duplicates_keep_the_first_occurrence() -> None:
    digests = [b"h1" * 16, b"h2" * 16, b"h1" * 16, b"h3" * 16, b"h1" * 16]
    drop = duplicates(digests, [0, 1, 0, 2, 0])
    assert drop.tolist() == [False, False, True, False, True]


def test_colliding_keys_are_told_apart_by_the_whole_digest() -> None:
    """Keys are a 4-byte prefix: equal keys of different images are no duplicates."""
    digests = [b"same" + b"x" * 28, b"same" + b"y" * 28, b"same" + b"x" * 28, b""]
    drop = duplicates(digests, [0, 1, 0, 1])
    assert drop.tolist() == [False, False, True, False]  # the last failed to decode: never a candidate


def test_every_copy_of_an_image_under_two_labels_is_a_conflict() -> None:
    """Grouped by image, each group's rows in order; same-label copies inside it are not dropped."""
    digests = [b"h1" * 16, b"h2" * 16, b"h1" * 16, b"h2" * 16, b"h1" * 16, b"h2" * 16]
    found = find_duplicates(*arguments(digests, [0, 1, 1, 2, 0, 1]))
    assert sorted(found.conflicts) == [[0, 2, 4], [1, 3, 5]]
    assert not found.drop.any()


def test_the_copy_the_previous_version_holds_is_kept() -> None:
    """Whatever the order: a new copy never displaces it (its row would die, and a new one be written)."""
    digests = [b"h1" * 16, b"h2" * 16, b"h1" * 16, b"h1" * 16]
    preferred = np.array([False, False, False, True])
    found = find_duplicates(*arguments(digests, [0, 1, 0, 0]), preferred=preferred)
    assert found.drop.tolist() == [True, False, True, False]
