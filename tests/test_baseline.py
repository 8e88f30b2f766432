"""The SVM baseline: learns tiny data, is deterministic, honours its training-size cap."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_model import tiny_images

from mlpipeline.core.errors import PipelineError
from mlpipeline.evaluation.baseline import BaselineParams, baseline_probabilities, fit_baseline

PARAMS = BaselineParams(C=3.0, gamma=None, max_train=10_000, seed=0)


def test_baseline_learns_tiny_data_and_is_deterministic() -> None:
    train_images, train_labels = tiny_images(10, seed=0)
    test_images, test_labels = tiny_images(10, seed=1)
    first = baseline_probabilities(fit_baseline(train_images, train_labels, PARAMS), test_images, 3)
    second = baseline_probabilities(fit_baseline(train_images, train_labels, PARAMS), test_images, 3)
    assert first.shape == (30, 3)
    np.testing.assert_allclose(first.sum(axis=1), 1.0)
    assert (first.argmax(axis=1) == test_labels).mean() > 0.9  # chance is 1/3
    np.testing.assert_array_equal(first, second)


def test_max_train_fits_on_a_stratified_subset() -> None:
    images, labels = tiny_images(20, seed=0)
    capped = BaselineParams(C=3.0, gamma=0.05, max_train=15, seed=0)
    model = fit_baseline(images, labels, capped)
    assert model.calibrated_classifiers_[0].estimator.shape_fit_ == (15, 64)  # 5 images per class


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
