"""Classification metrics from true labels and predicted probabilities.

The network and the baseline go through the same ``Scores``, so their figures
are comparable by construction; it adds batches as they come, so a test split
of any size is scored in bounded memory. The predicted class is the argmax of the
probabilities (the lowest index on a tie, as numpy breaks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DIGITS = 6  # rounding of reported figures: readable in `dvc exp show`, stable across BLAS builds
LOG_EPS = np.finfo(np.float64).eps  # probabilities are clipped here, as scikit-learn's log_loss does
TOP_K = 5  # top-5 accuracy is reported when there are more classes than that


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``K x K``: row = actual class, column = predicted class."""
    flat = labels.astype(np.int64) * num_classes + predicted.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


class Scores:
    """The sums ``score`` reads, added batch by batch: memory is K x K counts and a few bins,
    whatever the number of samples, so a test split of any size is scored as it streams past."""

    def __init__(self, num_classes: int, ece_bins: int) -> None:
        self.ece_bins = ece_bins
        self.counts = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.top_k_hits = 0  # samples whose class is among the TOP_K most probable
        self.log_loss_sum = 0.0
        self.calibration_gap = np.zeros(ece_bins)
        self.samples = 0

    def add(self, labels: np.ndarray, probabilities: np.ndarray) -> None:
        """Add a batch: true labels N and predicted probabilities N x K."""
        self.counts += confusion_matrix(labels, probabilities.argmax(axis=1), len(self.counts))
        true_class = probabilities[np.arange(len(labels)), labels]
        self.top_k_hits += int(((probabilities > true_class[:, None]).sum(axis=1) < TOP_K).sum())
        self.log_loss_sum -= float(np.sum(np.log(np.clip(true_class, LOG_EPS, 1.0))))
        self.calibration_gap += calibration_gap(labels, probabilities, self.ece_bins)
        self.samples += len(labels)

    def result(self, classes: Sequence[str]) -> dict[str, Any]:
        """Accuracy, top-5 accuracy (with more than 5 classes), macro-F1, log-loss, ECE and
        per-class precision/recall/F1/support. A sample is a top-5 hit when fewer than 5 classes
        are strictly more probable than its own (a tie counts as a hit).

        A class never predicted has precision 0 and a class absent from the labels
        recall 0 (scikit-learn's ``zero_division=0``); macro-F1 averages over every
        class in ``classes``.
        """
        hits = np.diag(self.counts)
        support = self.counts.sum(axis=1)
        predicted = self.counts.sum(axis=0)
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
        top_k = {f"top{TOP_K}_accuracy": _round(self.top_k_hits / self.samples)} if len(hits) > TOP_K else {}
        return {
            "accuracy": _round(hits.sum() / self.samples),
            **top_k,
            "macro_f1": _round(f1.mean()),
            "log_loss": _round(self.log_loss_sum / self.samples),
            "ece": _round(np.abs(self.calibration_gap).sum() / self.samples),
            "per_class": per_class,
        }


def calibration_gap(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> np.ndarray:
    """Per confidence bin, the sum of (correct - top probability) over the samples in it.

    Bin ``i`` holds the samples whose top probability lies in ``(i/bins, (i+1)/bins]``.
    The top-label expected calibration error (Guo et al., 2017) is the sum of the bins'
    absolute gaps over the sample count: how far "90% sure" is from "right 90% of the time".
    """
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    return np.bincount(index, weights=correct - confidence, minlength=bins)


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> float:
    """Top-label ECE over ``bins`` equal-width confidence bins, of one batch holding every sample."""
    return float(np.abs(calibration_gap(labels, probabilities, bins)).sum() / len(labels))


def score(
    labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], ece_bins: int
) -> dict[str, Any]:
    """``Scores.result`` for one batch holding every sample."""
    scores = Scores(len(classes), ece_bins)
    scores.add(labels, probabilities)
    return scores.result(classes)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def _round(value: float) -> float:
    return round(float(value), DIGITS)
