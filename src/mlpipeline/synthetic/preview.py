"""A per-class picture of real next to synthetic images, for ``dvc plots show``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlpipeline.core.previews import image_grid


class PerClassSamples:
    """Keeps the first ``per_class`` images of each class seen in a stream of batches."""

    def __init__(self, num_classes: int, per_class: int) -> None:
        self.per_class = per_class
        self.rows: list[list[np.ndarray]] = [[] for _ in range(num_classes)]

    def add(self, images: np.ndarray, labels: np.ndarray) -> None:
        for label in np.unique(labels):
            row = self.rows[label]
            room = self.per_class - len(row)
            if room > 0:
                row.extend(images[labels == label][:room])


def samples_png(classes: Sequence[str], sources: dict[str, PerClassSamples]) -> bytes:
    """One row per class; each source's samples in turn, labelled with the source's name."""
    rows, cell_labels = [], []
    for c in range(len(classes)):
        rows.append([image for samples in sources.values() for image in samples.rows[c]])
        cell_labels.append([name for name, samples in sources.items() for _ in samples.rows[c]])
    return image_grid(rows, list(classes), cell_labels)
