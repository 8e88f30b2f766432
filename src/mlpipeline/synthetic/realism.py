"""How much the synthetic images alone teach about the real ones: the transfer score.

An RBF-kernel SVM is fitted on a random sample of the synthetic images and scored on a
random sample of the real training split. Near 1 the synthetic images carry the real
classes' look; near chance they carry little of it. The per-class recall names the
classes the generator gets wrong. On the digits demo the font glyphs score about 0.6
(typeset shapes, not handwriting), which is why training pretrains on them instead of
mixing them in (``train.synthetic.use``). Samples are small and seeded, so the score
costs a second at most and its bytes are the same on every run.
"""

from __future__ import annotations

import numpy as np
from sklearn.svm import SVC

from mlpipeline.core.seeding import rng

SAMPLE = 2000  # about this many images from each side
SVM_C = 3.0  # sklearn's gamma="scale" sets the kernel width from the pixels


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
        self.images.append(images[keep].reshape(int(keep.sum()), -1))
        self.labels.append(labels[keep])

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.labels:
            return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
        return np.concatenate(self.images).astype(np.float32) / 255.0, np.concatenate(self.labels)


def transfer_score(synthetic: Sampler, real: Sampler, classes: list[str]) -> dict[str, object]:
    """Accuracy and per-class recall on real images of an SVM fitted on synthetic ones."""
    train_x, train_y = synthetic.arrays()
    test_x, test_y = real.arrays()
    scores: dict[str, object] = {"synthetic_images": len(train_y), "real_images": len(test_y)}
    if len(np.unique(train_y)) < 2 or len(test_y) == 0:
        return scores  # nothing to fit or nothing to score: no figure rather than a made-up one
    predicted = SVC(kernel="rbf", C=SVM_C, gamma="scale").fit(train_x, train_y).predict(test_x)
    scores["accuracy"] = round(float(np.mean(predicted == test_y)), 4)
    scores["recall"] = {
        name: round(float(np.mean(predicted[test_y == label] == label)), 4)
        for label, name in enumerate(classes)
        if np.any(test_y == label)
    }
    return scores
