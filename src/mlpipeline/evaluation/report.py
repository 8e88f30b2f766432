"""The evaluate stage's plot files: the predictions table and the grid of worst errors."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from mlpipeline.core.previews import image_grid

GRID_COLUMNS = 8


IMAGE_ID_HEX = 16  # an image's id: the first 64 bits of its pixels' sha256, in hex


def image_ids(images: np.ndarray) -> list[str]:
    """Each image's id: what ingest's records call its ``pixel_sha256`` (the sha256 of its uint8
    C x H x W bytes), cut to ``IMAGE_ID_HEX`` hex digits: the same image in every data version,
    so two models can be scored on the test images their versions share (``compare``)."""
    return [hashlib.sha256(np.ascontiguousarray(image)).hexdigest()[:IMAGE_ID_HEX] for image in images]


def predictions_csv(
    labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str], ids: Sequence[str]
) -> str:
    """``actual,predicted`` class names per test image, the input of DVC's confusion template,
    and the image's id (``image_ids``)."""
    names = np.asarray(classes, dtype=object)
    frame = pd.DataFrame({"actual": names[labels], "predicted": names[predicted], "image": list(ids)})
    return frame.to_csv(index=False, lineterminator="\n")


def worst_errors(labels: np.ndarray, probabilities: np.ndarray, limit: int) -> np.ndarray:
    """Indices of at most ``limit`` misclassified samples, most confident first (ties: lower index)."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    order = np.lexsort((wrong, -confidence))
    return wrong[order][:limit]


class WorstErrors:
    """The ``limit`` most confident mistakes of a stream of batches, with their images: the
    same choice as ``worst_errors`` over the whole split, in memory for ``limit`` images."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen = 0
        self.index = np.zeros(0, dtype=np.int64)
        self.confidence = np.zeros(0)
        self.labels = np.zeros(0, dtype=np.int64)
        self.predicted = np.zeros(0, dtype=np.int64)
        self.images: list[np.ndarray] = []

    def add(self, images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> None:
        """Add the next batch (in stream order): keep its worst mistakes if they beat the kept ones."""
        chosen = worst_errors(labels, probabilities, self.limit)
        predicted = probabilities[chosen].argmax(axis=1)
        index = np.concatenate([self.index, chosen + self.seen])
        confidence = np.concatenate([self.confidence, probabilities[chosen, predicted]])
        keep = np.lexsort((index, -confidence))[: self.limit]
        new_images = [image.copy() for image in images[chosen]]  # not views: the batch may go
        self.images = [(self.images + new_images)[i] for i in keep]
        self.labels = np.concatenate([self.labels, labels[chosen]])[keep]
        self.predicted = np.concatenate([self.predicted, predicted])[keep]
        self.index, self.confidence = index[keep], confidence[keep]
        self.seen += len(labels)


def misclassified_png(worst: WorstErrors, classes: Sequence[str]) -> bytes:
    """A grid of the most confident mistakes, each captioned ``true->predicted``.

    With no mistake the PNG says so, so the plot output always exists and its
    bytes still depend only on the inputs.
    """
    if not worst.images:
        return message_png("no misclassified test images")
    captions = [f"{classes[t]}->{classes[p]}" for t, p in zip(worst.labels, worst.predicted, strict=True)]
    rows = range(0, len(worst.images), GRID_COLUMNS)
    return image_grid(
        [worst.images[start : start + GRID_COLUMNS] for start in rows],
        cell_labels=[captions[start : start + GRID_COLUMNS] for start in rows],
    )


def message_png(text: str) -> bytes:
    """A small white PNG with one line of text, sized to fit it."""
    _, _, width, height = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text)
    canvas = Image.new("RGB", (width + 8, height + 8), "white")
    ImageDraw.Draw(canvas).text((4, 4), text, fill="black")
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
