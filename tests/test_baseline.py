"""The SVM baseline: learns tiny data, is deterministic, honours its training-size cap (picked
shard by shard), and switches to the Nystroem approximation where the exact kernel costs too much."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from tiny_model import CLASSES, SHAPE, tiny_images

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.seeding import rng
from mlpipeline.core.shard_writer import DatasetWriter
from mlpipeline.core.shards import Dataset
from mlpipeline.evaluation.baseline import (
    EXACT_BUDGET,
    BaselineParams,
    baseline_probabilities,
    choose_kernel,
    fit_baseline,
    flatten,
)
from mlpipeline.evaluation.subset import pick_rows

PARAMS = BaselineParams(
    method="svm", C=3.0, gamma=None, max_train=10_000, seed=0, kernel="auto", components=1000
)


@pytest.mark.parametrize("kernel", ["exact", "nystroem"])
def test_baseline_learns_tiny_data_and_is_deterministic(kernel: str) -> None:
    train_images, train_labels = tiny_images(10, seed=0)
    test_images, test_labels = tiny_images(10, seed=1)
    fit = lambda: fit_baseline(train_images, train_labels, PARAMS, kernel)  # noqa: E731
    first = baseline_probabilities(fit(), test_images, 3)
    second = baseline_probabilities(fit(), test_images, 3)
    assert first.shape == (30, 3)
    np.testing.assert_allclose(first.sum(axis=1), 1.0)
    assert (first.argmax(axis=1) == test_labels).mean() > 0.9  # chance is 1/3
    np.testing.assert_array_equal(first, second)


def write_shuffled(root: Path, per_class: int, shard_images: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = tiny_images(per_class, seed=0)
    order = np.random.default_rng(1).permutation(len(labels))  # classes interleaved across shards
    images, labels = images[order], labels[order]
    with DatasetWriter(root, CLASSES, SHAPE, max_shard_bytes=shard_images * int(np.prod(SHAPE))) as writer:
        writer.write("train", images, labels)
    return images, labels


def whole_split_choice(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The subset made over the whole split's labels at once: per class, a seeded permutation of
    its members, the first ``fraction`` of them (at least one)."""
    keep = np.ones(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        kept = max(1, round(len(members) * fraction))
        keep[rng(seed, "keep", int(label)).permutation(members)[kept:]] = False
    return keep


def test_rows_picked_shard_by_shard_are_the_whole_splits_choice(tmp_path: Path) -> None:
    images, labels = write_shuffled(tmp_path / "ds", per_class=40, shard_images=7)
    chosen, chosen_labels = pick_rows(Dataset(tmp_path / "ds"), "train", limit=50, seed=3)
    keep = whole_split_choice(labels, 50 / len(labels), seed=3)
    np.testing.assert_array_equal(chosen, images[keep])
    np.testing.assert_array_equal(chosen_labels, labels[keep])
    assert np.bincount(chosen_labels).tolist() == [17, 17, 17]  # round(40 * 50 / 120) per class


def test_a_split_under_the_cap_is_taken_whole(tmp_path: Path) -> None:
    images, labels = write_shuffled(tmp_path / "ds", per_class=5, shard_images=4)
    chosen, chosen_labels = pick_rows(Dataset(tmp_path / "ds"), "train", limit=15, seed=0)
    np.testing.assert_array_equal(chosen, images)
    np.testing.assert_array_equal(chosen_labels, labels)


def test_auto_keeps_the_exact_kernel_within_the_budget_only() -> None:
    pixels = 64
    assert choose_kernel(PARAMS, train_count=1257, test_count=269, pixels=pixels) == "exact"  # the demo
    assert choose_kernel(PARAMS, train_count=700_000, test_count=150_000, pixels=3072) == "nystroem"
    # the cap bounds the training side: a huge train split with a small test split is still costed
    # at max_train images
    capped = dataclasses.replace(PARAMS, max_train=1000)
    small_test = int(EXACT_BUDGET / (1000 * pixels)) - 1000
    assert choose_kernel(capped, 10**7, small_test, pixels) == "exact"
    assert choose_kernel(capped, 10**7, small_test + 1, pixels) == "nystroem"
    forced = dataclasses.replace(PARAMS, kernel="exact")
    assert choose_kernel(forced, 700_000, 150_000, 3072) == "exact"


def test_class_absent_from_training_gets_zero_probability() -> None:
    images, labels = tiny_images(10, seed=0)
    seen = labels < 2
    probabilities = baseline_probabilities(fit_baseline(images[seen], labels[seen], PARAMS), images, 3)
    assert probabilities.shape == (30, 3) and not probabilities[:, 2].any()


def test_single_image_class_is_refused() -> None:
    images, labels = tiny_images(5, seed=0)
    keep = np.r_[0:10, 10]  # classes 0 and 1 with 5 images, class 2 with one
    with pytest.raises(PipelineError, match=r"evaluate\.baseline: .* at least 2 per class"):
        fit_baseline(images[keep], labels[keep], PARAMS)


@pytest.mark.parametrize("kernel", ["exact", "nystroem"])
def test_a_middle_class_absent_from_training_keeps_the_others_in_their_columns(kernel: str) -> None:
    """The model's columns follow its ``classes_`` ([0, 2] here), not the dataset's classes: by
    position class 2's probabilities would land in column 1 (dropping the last class cannot tell)."""
    images, labels = tiny_images(10, seed=0)
    seen = labels != 1
    model = fit_baseline(images[seen], labels[seen], PARAMS, kernel)
    probabilities = baseline_probabilities(model, images, 3)

    assert list(model.classes_) == [0, 2]
    assert not probabilities[:, 1].any()
    np.testing.assert_array_equal(probabilities[:, [0, 2]], model.predict_proba(flatten(images)))
    assert (probabilities[labels == 2].argmax(axis=1) == 2).all()
