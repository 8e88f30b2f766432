"""How much the synthetic images alone teach about the real ones: the transfer score.

An RBF-kernel SVM is fitted on a random sample of the synthetic images and scored on a
random sample of the real training split. Near 1 the synthetic images carry the real
classes' look; near chance they carry little of it. The per-class recall names the
classes the generator gets wrong. On the digits demo the font glyphs score about 0.6
(typeset shapes, not handwriting), which is why training pretrains on them instead of
mixing them in (``train.synthetic.use``). Samples are small and seeded.

The figures are the same on every CPU, as the rest of the stage's output: the kernel is
computed here, exactly, and handed to libsvm precomputed. Squared distances between uint8
images are integers, and a float64 matrix product of integers stays below 2**53, so BLAS
gets it exact whatever its order of summation; the width is scikit-learn's ``"scale"``
from integer pixel sums, and exp is ``bitexact``'s polynomial. libsvm's solver is plain
scalar code (no BLAS, no libm) that computes the same from the same kernel. The kernel's
matrix products also make the score cheap: seconds at 2,000 32x32 RGB images a side.
"""

from __future__ import annotations

import numpy as np
from sklearn.svm import SVC

from mlpipeline.core.bitexact import exp_neg
from mlpipeline.core.seeding import rng

SAMPLE = 2000  # about this many images from each side
SVM_C = 3.0


class Sampler:
    """Keeps each streamed image with probability ``SAMPLE / total``: about ``SAMPLE`` images in
    bounded memory, whatever the order and size of the batches."""

    def __init__(self, total: int, seed: int, name: str) -> None:
        self.share = min(1.0, SAMPLE / max(total, 1))
        self.draws = rng(seed, "realism", name)
        self.images: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def add(self, images: np.ndarray, labels: np.ndarray) -> None:
        keep = self.draws.random(len(labels)) < self.share
        pixels = int(np.prod(images.shape[1:]))  # not -1: a batch may keep no image
        self.images.append(images[keep].reshape(-1, pixels))
        self.labels.append(labels[keep])

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The kept images as rows of pixel values (float64 integers 0..255), and their labels."""
        if not self.labels:
            return np.zeros((0, 0)), np.zeros(0, dtype=np.int64)
        return np.concatenate(self.images).astype(np.float64), np.concatenate(self.labels)


def transfer_score(synthetic: Sampler, real: Sampler, classes: list[str]) -> dict[str, object]:
    """Accuracy and per-class recall on real images of an SVM fitted on synthetic ones."""
    train_x, train_y = synthetic.arrays()
    test_x, test_y = real.arrays()
    scores: dict[str, object] = {"synthetic_images": len(train_y), "real_images": len(test_y)}
    if len(np.unique(train_y)) < 2 or len(test_y) == 0 or pixel_variance(train_x) == 0:
        return scores  # nothing to fit or nothing to score: no figure rather than a made-up one
    width = train_x.shape[1] * pixel_variance(train_x)  # scikit-learn's gamma="scale", inverted
    svm = SVC(kernel="precomputed", C=SVM_C).fit(rbf_kernel(train_x, train_x, width), train_y)
    predicted = svm.predict(rbf_kernel(test_x, train_x, width))
    scores["accuracy"] = round(float(np.mean(predicted == test_y)), 4)
    scores["recall"] = {
        name: round(float(np.mean(predicted[test_y == label] == label)), 4)
        for label, name in enumerate(classes)
        if np.any(test_y == label)
    }
    return scores


def pixel_variance(rows: np.ndarray) -> float:
    """The variance of every pixel value in ``rows`` (integers), from exact integer sums."""
    count = rows.size
    mean = rows.sum() / count  # sums of integers below 2**53: exact in any order
    return float(np.square(rows).sum() / count - mean * mean)


def rbf_kernel(rows: np.ndarray, columns: np.ndarray, width: float) -> np.ndarray:
    """exp(-|a - b|^2 / width) for every row a of ``rows`` and b of ``columns`` (integer pixels).

    The squared distances are exact integers: each product and partial sum of the matrix
    product is an integer below 2**53, whatever order BLAS adds them in.
    """
    squared = np.square(rows).sum(axis=1)[:, None] + np.square(columns).sum(axis=1)[None, :]
    squared -= 2 * (rows @ columns.T)
    return exp_neg(squared / width)
