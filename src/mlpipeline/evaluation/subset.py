"""A seeded, stratified subset of a split, picked as its shards stream past.

The baseline fits on at most ``max_train`` training images. Which ones is decided from the
per-class counts ``dataset.json`` already records: per class, a seeded permutation of its
members' ranks (their order of appearance in the split), so one pass over the shards copies
the chosen rows out and no shard is held longer than it is read. The choice is the one a
seeded permutation of each class's members over the whole split's labels makes, which a test
checks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.seeding import rng
from mlpipeline.core.shards import META_FILE, Dataset


def kept_ranks(class_counts: list[int], limit: int, seed: int) -> list[np.ndarray]:
    """Per class, a mask over its members in split order: all of them while the split has at
    most ``limit`` images, else ``limit / total`` of each class (at least one), seeded per class."""
    total = sum(class_counts)
    masks = [np.ones(count, dtype=bool) for count in class_counts]
    if total <= limit:
        return masks
    for label, mask in enumerate(masks):
        if len(mask):
            kept = max(1, round(len(mask) * limit / total))
            mask[rng(seed, "keep", label).permutation(len(mask))[kept:]] = False
    return masks


def pick_rows(
    data: Dataset, split: str, limit: int, seed: int, advance: Callable[[int], None] = lambda rows: None
) -> tuple[np.ndarray, np.ndarray]:
    """The chosen images and labels of ``split``, in split order; memory: the subset and one shard.
    ``advance`` is told how many rows each shard read held (for the stage's progress)."""
    data.count(split)  # an unknown split fails here, naming the file
    masks = kept_ranks(data.info.splits[split].class_counts, limit, seed)
    total = sum(int(mask.sum()) for mask in masks)
    images = np.empty((total, *data.image_shape), dtype=np.uint8)
    labels = np.empty(total, dtype=np.int64)
    seen = np.zeros(len(masks), dtype=np.int64)
    filled = 0
    for shard_images, shard_labels in data.iter_shards(split):
        chosen = _chosen(shard_labels, masks, seen, data)
        images[filled : filled + len(chosen)] = shard_images[chosen]
        labels[filled : filled + len(chosen)] = shard_labels[chosen]
        filled += len(chosen)
        advance(len(shard_labels))
    if filled != total or seen.tolist() != [len(mask) for mask in masks]:
        raise PipelineError(
            f"{data.root / META_FILE}: the {split} split's class_counts disagree with its shards"
        )
    return images, labels


def _chosen(labels: np.ndarray, masks: list[np.ndarray], seen: np.ndarray, data: Dataset) -> np.ndarray:
    """Indices into this shard of the chosen rows; advances each class's rank counter ``seen``."""
    picked = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        ranks = seen[label] + np.arange(len(members))
        if ranks[-1] >= len(masks[label]):
            raise PipelineError(f"{data.root / META_FILE}: class_counts disagree with the shards")
        picked[members] = masks[label][ranks]
        seen[label] += len(members)
    return np.flatnonzero(picked)
