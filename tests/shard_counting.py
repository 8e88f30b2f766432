"""A counting fake of the shard reader, for tests that a stage streams: it fails the moment a stage
reads a shard while more than one earlier shard's worth of images is still held in memory, and
refuses ``Dataset.load`` (the whole split at once) outright."""

from __future__ import annotations

import weakref

import numpy as np
import pytest

from mlpipeline.core.shards import Dataset


def memory_owner(array: np.ndarray) -> np.ndarray:
    """The array every view of ``array`` keeps alive: numpy points a view's ``base`` at the first
    array down the chain that owns its data or views a non-array (safetensors' arrays are views
    of a flat buffer, so a slice of a shard keeps that buffer alive, not the shard's array)."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


class ShardCounter:
    """Tracks every shard read until the memory behind it is freed (views of it included)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads = 0
        self.live_images = 0
        self.largest_shard = 0
        self.peak_held = 0  # most images from earlier reads alive at a read
        read = Dataset.read_stored

        def counting_read(dataset: Dataset, split: str, name: str) -> tuple[np.ndarray, np.ndarray]:
            images, labels = read(dataset, split, name)
            self._check_before_adding(len(images))
            self.live_images += len(images)
            weakref.finalize(memory_owner(images), self._release, len(images))
            return images, labels

        def refuse_load(dataset: Dataset, split: str) -> None:
            raise AssertionError(f"Dataset.load('{split}') holds the whole split in memory")

        monkeypatch.setattr(Dataset, "read_stored", counting_read)
        monkeypatch.setattr(Dataset, "load", refuse_load)

    def _check_before_adding(self, count: int) -> None:
        self.reads += 1
        self.largest_shard = max(self.largest_shard, count)
        self.peak_held = max(self.peak_held, self.live_images)
        if self.live_images > self.largest_shard:
            raise AssertionError(
                f"read {self.reads}: {self.live_images} images of earlier shards still held "
                f"(a shard holds at most {self.largest_shard})"
            )

    def _release(self, count: int) -> None:
        self.live_images -= count
