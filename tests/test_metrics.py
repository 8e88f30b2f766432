"""Evaluation metrics checked against scikit-learn's own, and ECE against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from mlpipeline.evaluation.metrics import Scores, confusion_matrix, expected_calibration_error, score

CLASSES = ["a", "b", "c", "d"]


def fixed_predictions(n: int = 200, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities of a mediocre model; class 'd' is never predicted."""
    generator = np.random.default_rng(seed)
    labels = generator.integers(0, 4, size=n)
    logits = generator.normal(size=(n, 4))
    logits[np.arange(n), labels] += 1.5
    logits[:, 3] -= 10.0
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities


def test_score_matches_scikit_learn() -> None:
    labels, probabilities = fixed_predictions()
    predicted = probabilities.argmax(axis=1)
    assert 0.3 < (predicted == labels).mean() < 0.9 and 3 not in predicted

    result = score(labels, probabilities, CLASSES, ece_bins=15)

    assert result["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted), abs=1e-6)
    macro = sk.f1_score(labels, predicted, average="macro", labels=range(4), zero_division=0)
    assert result["macro_f1"] == pytest.approx(macro, abs=1e-6)
    assert result["log_loss"] == pytest.approx(sk.log_loss(labels, probabilities), abs=1e-6)
    precision, recall, f1, support = sk.precision_recall_fscore_support(
        labels, predicted, labels=range(4), zero_division=0
    )
    for i, name in enumerate(CLASSES):
        row = result["per_class"][name]
        assert row["precision"] == pytest.approx(precision[i], abs=1e-6)
        assert row["recall"] == pytest.approx(recall[i], abs=1e-6)
        assert row["f1"] == pytest.approx(f1[i], abs=1e-6)
        assert row["support"] == support[i]
    np.testing.assert_array_equal(
        confusion_matrix(labels, predicted, 4), sk.confusion_matrix(labels, predicted)
    )


def test_scores_added_batch_by_batch_equal_the_whole() -> None:
    labels, probabilities = fixed_predictions()
    scores = Scores(len(CLASSES), ece_bins=15)
    for start, stop in ((0, 7), (7, 120), (120, 200)):
        scores.add(labels[start:stop], probabilities[start:stop])
    assert scores.result(CLASSES) == score(labels, probabilities, CLASSES, ece_bins=15)


def test_log_loss_stays_finite_for_a_certain_wrong_prediction() -> None:
    labels = np.array([0, 1])
    probabilities = np.array([[0.0, 1.0], [0.0, 1.0]])
    result = score(labels, probabilities, ["x", "y"], ece_bins=10)
    assert result["log_loss"] == pytest.approx(sk.log_loss(labels, probabilities), abs=1e-6)


def test_ece_hand_computed() -> None:
    # Top-label confidences 0.95, 0.9, 0.85 | 0.6, 0.55 | 0.35 with 5 bins of width 0.2:
    # bin (0.8, 1]: 3 samples, confidence 0.9, two right -> gap |2/3 - 0.9| = 0.2333...
    # bin (0.4, 0.6]: 2 samples, confidence 0.575 (0.6 sits on the edge, in the lower bin), one right
    #   -> gap |0.5 - 0.575| = 0.075
    # bin (0.2, 0.4]: 1 sample, confidence 0.35, right -> gap 0.65
    # ECE = (3 * 0.2333 + 2 * 0.075 + 1 * 0.65) / 6 = (0.7 + 0.15 + 0.65) / 6 = 0.25
    probabilities = np.array(
        [
            [0.95, 0.05, 0.00],
            [0.05, 0.90, 0.05],
            [0.85, 0.10, 0.05],
            [0.60, 0.40, 0.00],
            [0.25, 0.20, 0.55],
            [0.35, 0.33, 0.32],
        ]
    )
    labels = np.array([0, 1, 1, 0, 0, 0])
    assert expected_calibration_error(labels, probabilities, bins=5) == pytest.approx(0.25)


def test_ece_is_zero_when_confidence_equals_accuracy() -> None:
    probabilities = np.tile([0.75, 0.25], (4, 1))
    labels = np.array([0, 0, 0, 1])
    assert expected_calibration_error(labels, probabilities, bins=15) == pytest.approx(0.0)


def test_perfect_predictions() -> None:
    labels = np.array([0, 1, 2, 2])
    result = score(labels, np.eye(3)[labels], ["a", "b", "c"], ece_bins=15)
    assert (result["accuracy"], result["macro_f1"], result["ece"]) == (1.0, 1.0, 0.0)
    assert result["per_class"]["c"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}


def test_top5_accuracy_matches_scikit_learn_with_more_than_five_classes() -> None:
    generator = np.random.default_rng(3)
    labels = generator.integers(0, 8, size=300)
    logits = generator.normal(size=(300, 8))
    logits[np.arange(300), labels] += 0.5
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    result = score(labels, probabilities, [f"c{i}" for i in range(8)], ece_bins=15)
    expected = sk.top_k_accuracy_score(labels, probabilities, k=5, labels=range(8))
    assert result["top5_accuracy"] == pytest.approx(expected, abs=1e-6)
    assert result["accuracy"] < result["top5_accuracy"] < 1
    assert list(result)[:2] == ["accuracy", "top5_accuracy"]


def test_no_top5_accuracy_with_five_classes_or_fewer() -> None:
    labels, probabilities = fixed_predictions()
    assert "top5_accuracy" not in score(labels, probabilities, CLASSES, ece_bins=15)
