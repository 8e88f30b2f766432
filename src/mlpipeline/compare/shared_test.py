"""Both models scored on the test images their data versions share, for ``make report``.

A new data version keeps every old image in its split, but adds test images (and may remove or
relabel some), so BASE's accuracy and the workspace's are measured on different sets. Each
``predictions.csv`` names its test images by id (``evaluation.report.image_ids``), so the images
both versions hold in their test split are found without reading any data: both models'
predictions on them are scored against the workspace's labels (a fixed label counts for both).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from mlpipeline.compare.data_diff import first_line, revision_reader, unreadable
from mlpipeline.core.paths import EVALUATE_REPORTS

if TYPE_CHECKING:
    from dvc.repo import Repo

PREDICTIONS = "predictions.csv"
COLUMNS = {"actual", "predicted", "image"}


def shared_accuracy(base: pd.DataFrame, now: pd.DataFrame) -> dict[str, float | int]:
    """Test images of ``now`` that ``base`` also scored, and each model's accuracy on them."""
    now = now.drop_duplicates("image").set_index("image")
    base = base.drop_duplicates("image").set_index("image")
    shared = now.index.intersection(base.index)
    truth = now.loc[shared, "actual"]
    count = len(shared)
    return {
        "shared": count,
        "base_images": len(base),
        "images": len(now),
        "base_accuracy": float((base.loc[shared, "predicted"] == truth).mean()) if count else float("nan"),
        "accuracy": float((now.loc[shared, "predicted"] == truth).mean()) if count else float("nan"),
    }


def read_predictions(data: bytes, where: str) -> pd.DataFrame:
    table = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    if not set(table.columns) >= COLUMNS:
        raise ValueError(f"{where} names no test images (made before predictions carried their ids)")
    return table


def shared_markdown(figures: dict[str, float | int], base: str) -> str:
    if not figures["shared"]:
        return f"None of the workspace's {figures['images']} test images was a test image at `{base}`."
    change = figures["accuracy"] - figures["base_accuracy"]
    return (
        f"{figures['shared']} of the workspace's {figures['images']} test images were test images at "
        f"`{base}` too (of its {figures['base_images']}). Accuracy on them, with the workspace's labels: "
        f"`{base}` {figures['base_accuracy']:.4f}, workspace {figures['accuracy']:.4f} ({change:+.4f})."
    )


def shared_section(repo: Repo, base: str) -> tuple[str, str]:
    """The report's section, and what could not be read for it (one line, or "")."""
    path = EVALUATE_REPORTS / PREDICTIONS
    try:
        before = read_predictions(
            revision_reader(repo, base, EVALUATE_REPORTS)(PREDICTIONS), f"{path} at {base}"
        )
        now = read_predictions((Path(repo.root_dir) / path).read_bytes(), str(path))
    except unreadable() as exc:
        return "", f"{path} ({first_line(exc)})"
    return shared_markdown(shared_accuracy(before, now), base), ""
