"""Splitting: stratified per class, disjoint, seeded; duplicates found; a class too small refused."""

from __future__ import annotations

import numpy as np
import pytest

from mlpipeline.core.errors import PipelineError
from mlpipeline.ingestion.splitting import (
    SPLITS,
    find_duplicates,
    keep_fraction,
    split_counts,
    stratified_split,
)

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
CLASSES = ["cat", "dog", "owl"]


def labels_for(sizes: list[int]) -> np.ndarray:
    """Interleaved labels, so class members are not contiguous."""
    labels = np.concatenate([np.full(n, index) for index, n in enumerate(sizes)])
    return np.random.default_rng(0).permutation(labels)


def test_every_class_is_cut_by_the_fractions() -> None:
    labels = labels_for([100, 40, 7])
    assignment = stratified_split(labels, CLASSES, FRACTIONS, seed=1, source="raw")
    for index, size in enumerate([100, 40, 7]):
        members = assignment[labels == index]
        found = {split: int((members == code).sum()) for code, split in enumerate(SPLITS)}
        assert found == split_counts(size, FRACTIONS)
    assert split_counts(100, FRACTIONS) == {"train": 70, "val": 15, "test": 15}


def test_splits_are_disjoint_and_cover_every_sample() -> None:
    labels = labels_for([50, 30, 20])
    assignment = stratified_split(labels, CLASSES, FRACTIONS, seed=1, source="raw")
    members = {split: set(np.flatnonzero(assignment == code)) for code, split in enumerate(SPLITS)}
    assert set().union(*members.values()) == set(range(len(labels)))
    assert sum(len(m) for m in members.values()) == len(labels)


def test_same_seed_same_split_other_seed_other_split() -> None:
    labels = labels_for([50, 30, 20])
    first = stratified_split(labels, CLASSES, FRACTIONS, seed=7, source="raw")
    np.testing.assert_array_equal(first, stratified_split(labels, CLASSES, FRACTIONS, seed=7, source="raw"))
    assert (first != stratified_split(labels, CLASSES, FRACTIONS, seed=8, source="raw")).any()


def test_a_new_class_does_not_reshuffle_the_others() -> None:
    labels = np.repeat([0, 1], 30)
    before = stratified_split(labels, CLASSES[:2], FRACTIONS, seed=3, source="raw")
    after = stratified_split(
        np.concatenate([labels, np.full(10, 2)]), CLASSES, FRACTIONS, seed=3, source="raw"
    )
    np.testing.assert_array_equal(before, after[:60])


def test_class_too_small_for_the_split_is_named() -> None:
    labels = np.repeat([0, 1, 2], [20, 3, 20])
    with pytest.raises(PipelineError) as caught:
        stratified_split(labels, CLASSES, FRACTIONS, seed=0, source="raw")
    assert str(caught.value) == (
        "raw: class 'dog' has 3 sample(s); ingest.split 0.7/0.15/0.15 needs at least 4"
        " to give every split one"
    )
    stratified_split(np.repeat([0, 1, 2], [20, 4, 20]), CLASSES, FRACTIONS, seed=0, source="raw")


def test_keep_fraction_thins_each_selected_class() -> None:
    labels = np.repeat([0, 1, 2], [40, 10, 1])
    selected = np.ones(len(labels), dtype=bool)
    selected[:20] = False  # half of class 0 is elsewhere (val, test)
    kept = keep_fraction(labels, selected, 0.25, seed=0)
    assert not kept[~selected].any()
    assert [int(kept[labels == c].sum()) for c in range(3)] == [5, 2, 1]  # at least one per class
    np.testing.assert_array_equal(kept, keep_fraction(labels, selected, 0.25, seed=0))
    np.testing.assert_array_equal(keep_fraction(labels, selected, 1.0, seed=0), selected)


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
