"""What training reads, and the seeded order of every epoch.

Training images come from augment's output, ``data/augmented`` (splits ``real`` and
``synthetic``), val images from ingest's, ``data/ingested``. When augment ran online, its
dataset.json holds the online record and its ``synthetic`` split the synthetic originals,
and the real originals are ingest's ``train`` split (see ``augmentation.online``). Where
the images wait for their batch is ``training.loader``'s business.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlpipeline.augmentation.online import OnlineAugmentation, read_online
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.seeding import rng
from mlpipeline.core.shard_rows import SplitReader
from mlpipeline.core.shards import META_FILE, Dataset

REAL_SPLIT = "real"  # augment's splits: one per source
SYNTHETIC_SPLIT = "synthetic"
VAL_SPLIT = "val"
INGESTED_TRAIN_SPLIT = "train"  # the real originals, when augment ran online


@dataclass(frozen=True)
class Inputs:
    """The datasets training reads, checked to agree on classes and image shape, and the
    original training images of each source (augmented copies included when made offline)."""

    train: Dataset
    val: Dataset
    real: SplitReader
    synthetic: SplitReader
    online: OnlineAugmentation | None  # None: augment wrote its copies out (offline)

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape

    @property
    def views(self) -> int:
        """How many times an epoch sees each training row: its copies made online, or once."""
        return self.online.views if self.online is not None else 1

    @property
    def datasets(self) -> list[Dataset]:
        """Every dataset read: their dataset.json files fingerprint all the bytes training reads."""
        return [self.train, self.val]


def open_inputs(train_dir: Path, val_dir: Path) -> Inputs:
    """Open both datasets and refuse, by file, a mismatch or an empty split."""
    train, val = Dataset(train_dir), Dataset(val_dir)
    where = f"{train.root / META_FILE} and {val.root / META_FILE}"
    if train.classes != val.classes:
        raise PipelineError(f"{where} disagree on the classes: {train.classes} vs {val.classes}")
    if train.image_shape != val.image_shape:
        raise PipelineError(f"{where} disagree on the image shape: {train.image_shape} vs {val.image_shape}")
    if val.count(VAL_SPLIT) == 0:
        raise PipelineError(f"{val.root / META_FILE}: the {VAL_SPLIT} split is empty")
    online = read_online(train)
    real = online_originals(train, val) if online is not None else SplitReader.open(train, REAL_SPLIT)
    synthetic = SplitReader.open(train, SYNTHETIC_SPLIT)
    if len(real) + len(synthetic) == 0:
        raise PipelineError(
            f"{train.root / META_FILE}: no training images in splits {REAL_SPLIT}, {SYNTHETIC_SPLIT}"
        )
    return Inputs(train, val, real, synthetic, online)


def online_originals(train: Dataset, val: Dataset) -> SplitReader:
    """The real originals of an online ``train`` record: ingest's train split, if augment read it
    (include_real) from this very split, else the record's empty ``real`` split."""
    recorded = train.info.attributes.get("sources", {}).get(REAL_SPLIT)
    if recorded is None:
        return SplitReader.open(train, REAL_SPLIT)
    if recorded["images"] != val.count(INGESTED_TRAIN_SPLIT):
        raise PipelineError(
            f"{train.root / META_FILE}: made from {recorded['images']} real train images, "
            f"{val.root} has {val.count(INGESTED_TRAIN_SPLIT)} (rerun augment)"
        )
    return SplitReader.open(val, INGESTED_TRAIN_SPLIT)


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


def rank_steps(count: int, batch_size: int, world_size: int, accumulate: int = 1) -> int:
    """Optimizer steps in an epoch of ``count`` rows dealt to ``world_size`` ranks, each taking
    its share of the global ``batch_size`` (``epoch_order`` pads the rows to a multiple of the ranks),
    a step every ``accumulate`` batches (at least one step)."""
    return max(1, steps(-(-count // world_size), batch_size // world_size) // accumulate)
