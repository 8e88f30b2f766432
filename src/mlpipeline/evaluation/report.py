"""The evaluate stage's plot files: the predictions table and the grid of worst errors."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from mlpipeline.previews import image_grid

GRID_COLUMNS = 8


def predictions_csv(labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]) -> str:
    """``actual,predicted`` class names per test image, the input of DVC's confusion template."""
    names = np.asarray(classes, dtype=object)
    frame = pd.DataFrame({"actual": names[labels], "predicted": names[probabilities.argmax(axis=1)]})
    return frame.to_csv(index=False, lineterminator="\n")


def worst_errors(labels: np.ndarray, probabilities: np.ndarray, limit: int) -> np.ndarray:
    """Indices of at most ``limit`` misclassified samples, most confident first (ties: lower index)."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    order = np.lexsort((wrong, -confidence))
    return wrong[order][:limit]


def misclassified_png(
    images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], limit: int
) -> bytes:
    """A grid of the most confident mistakes, each captioned ``true->predicted``.

    With no mistake the PNG says so, so the plot output always exists and its
    bytes still depend only on the inputs.
    """
    chosen = worst_errors(labels, probabilities, limit)
    if not len(chosen):
        return message_png("no misclassified test images")
    predicted = probabilities.argmax(axis=1)
    captions = [f"{classes[labels[i]]}->{classes[predicted[i]]}" for i in chosen]
    rows = range(0, len(chosen), GRID_COLUMNS)
    return image_grid(
        [[images[i] for i in chosen[start : start + GRID_COLUMNS]] for start in rows],
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
