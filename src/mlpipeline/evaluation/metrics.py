"""Classification metrics from true labels and predicted probabilities.

The network and the baseline go through the same ``score``, so their figures
are comparable by construction. The predicted class is the argmax of the
probabilities (the lowest index on a tie, as numpy breaks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DIGITS = 6  # rounding of reported figures: readable in `dvc exp show`, stable across BLAS builds
LOG_EPS = np.finfo(np.float64).eps  # probabilities are clipped here, as scikit-learn's log_loss does


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``K x K``: row = actual class, column = predicted class."""
    flat = labels.astype(np.int64) * num_classes + predicted.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean negative log-probability of the true class."""
    true_class = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(true_class, LOG_EPS, 1.0))))


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> float:
    """Top-label ECE over ``bins`` equal-width confidence bins (Guo et al., 2017).

    Bin ``i`` holds the samples whose top probability lies in ``(i/bins, (i+1)/bins]``;
    ECE is the sample-weighted mean of ``|accuracy - mean confidence|`` over the
    bins: how far "90% sure" is from "right 90% of the time".
    """
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    gap = np.bincount(index, weights=correct - confidence, minlength=bins)
    return float(np.abs(gap).sum() / len(labels))


def score(
    labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], ece_bins: int
) -> dict[str, Any]:
    """Accuracy, macro-F1, log-loss, ECE and per-class precision/recall/F1/support.

    A class never predicted has precision 0 and a class absent from ``labels``
    recall 0 (scikit-learn's ``zero_division=0``); macro-F1 averages over every
    class in ``classes``.
    """
    counts = confusion_matrix(labels, probabilities.argmax(axis=1), len(classes))
    hits = np.diag(counts)
    support = counts.sum(axis=1)
    predicted = counts.sum(axis=0)
    precision = _ratio(hits, predicted)
    recall = _ratio(hits, support)
    f1 = _ratio(2 * hits, support + predicted)  # = 2PR / (P + R), and 0 where both are 0
    per_class = {
        name: {
            "precision": _round(precision[i]),
            "recall": _round(recall[i]),
            "f1": _round(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }
    return {
        "accuracy": _round(hits.sum() / len(labels)),
        "macro_f1": _round(f1.mean()),
        "log_loss": _round(log_loss(labels, probabilities)),
        "ece": _round(expected_calibration_error(labels, probabilities, ece_bins)),
        "per_class": per_class,
    }


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def _round(value: float) -> float:
    return round(float(value), DIGITS)
