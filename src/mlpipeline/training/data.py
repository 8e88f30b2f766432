"""Training and validation images as tensors where the device reads them fastest, and the
seeded batch order of every epoch.

The whole split stays resident (uint8, normalized inside the model): on the CPU
it is simply memory, on a GPU it moves to the device when it fits in a fraction
of the free memory, else it waits in pinned host memory and each batch is copied
without blocking. Batches are drawn by indexing with a permutation, not through
a DataLoader: for in-memory tensors that is the fastest path and has no worker
processes whose randomness would need managing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.seeding import rng
from mlpipeline.core.shards import META_FILE, Dataset

REAL_SPLIT = "real"  # augment's splits: one per source
SYNTHETIC_SPLIT = "synthetic"
VAL_SPLIT = "val"
DEVICE_MEMORY_SHARE = 0.5  # at most this share of free GPU memory holds the dataset


@dataclass(frozen=True)
class Inputs:
    """The two datasets training reads (augmented real and synthetic images; real val images),
    checked to agree on classes and image shape."""

    train: Dataset
    val: Dataset

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape


def open_inputs(train_dir: Path, val_dir: Path) -> Inputs:
    """Read both datasets' metadata and refuse, by file, a mismatch or an empty split."""
    train, val = Dataset(train_dir), Dataset(val_dir)
    where = f"{train.root / META_FILE} and {val.root / META_FILE}"
    if train.classes != val.classes:
        raise PipelineError(f"{where} disagree on the classes: {train.classes} vs {val.classes}")
    if train.image_shape != val.image_shape:
        raise PipelineError(f"{where} disagree on the image shape: {train.image_shape} vs {val.image_shape}")
    if val.count(VAL_SPLIT) == 0:
        raise PipelineError(f"{val.root / META_FILE}: the {VAL_SPLIT} split is empty")
    if train.count(REAL_SPLIT) + train.count(SYNTHETIC_SPLIT) == 0:  # a missing split fails here too
        raise PipelineError(
            f"{train.root / META_FILE}: no training images in splits {REAL_SPLIT}, {SYNTHETIC_SPLIT}"
        )
    return Inputs(train, val)


@dataclass(frozen=True)
class Split:
    """Images (uint8 N x C x H x W) and labels (int64 N), on the device or in (pinned) host memory."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def batches(
        self, order: np.ndarray, batch_size: int, device: torch.device, drop_last: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of the rows in ``order``, delivered to ``device``.

        With ``drop_last`` only full batches (a ragged last one would give BatchNorm a tiny,
        noisy sample; the next epoch's shuffle uses the dropped rows), or the whole order if
        it is shorter than one batch.
        """
        index = torch.from_numpy(order).to(self.images.device)
        count = steps(len(order), batch_size) if drop_last else -(-len(order) // batch_size)
        for step in range(count):
            rows = index[step * batch_size : (step + 1) * batch_size]
            images, labels = self.images[rows], self.labels[rows]
            if images.device.type != device.type:  # pinned host memory: copy while the GPU works
                # (types, not devices: a tensor on MPS reports mps:0, and mps:0 != mps)
                images = images.pin_memory().to(device, non_blocking=True)
                labels = labels.pin_memory().to(device, non_blocking=True)
            yield images, labels


def place(images: np.ndarray, labels: np.ndarray, device: torch.device) -> Split:
    """Put a split where ``device`` reads it fastest (see the module docstring)."""
    host = Split(torch.from_numpy(images), torch.from_numpy(labels))
    if device.type == "cpu":
        return host
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if images.nbytes + labels.nbytes > DEVICE_MEMORY_SHARE * free:
            return Split(host.images.pin_memory(), host.labels.pin_memory())
    return Split(host.images.to(device), host.labels.to(device))


def epoch_order(
    count: int, seed: int, phase: str, epoch: int, rank: int = 0, world_size: int = 1
) -> np.ndarray:
    """This rank's share of the shuffled order of ``phase``'s epoch ``epoch``, as
    DistributedSampler deals it: one seeded permutation, padded with its head to a multiple of
    the world size, every ``world_size``-th item from ``rank``. A pure function of its arguments,
    so a resumed run draws the same order as an uninterrupted one without saving any generator
    state."""
    order = rng(seed, "epoch-order", phase, epoch).permutation(count)
    padding = (-count) % world_size
    order = np.concatenate([order, order[:padding]])
    return order[rank::world_size]


def steps(count: int, batch_size: int) -> int:
    """Optimizer steps in an epoch of ``count`` rows: full batches only, at least one."""
    return max(1, count // batch_size)
