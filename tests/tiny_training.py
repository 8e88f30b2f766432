"""Tiny, quickly learnable training inputs and params for the train tests (a second per run)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import repo_params
from tiny_model import CLASSES, SHAPE, tiny_images, write_tiny_dataset

from mlpipeline.core.params import from_mapping
from mlpipeline.core.shard_writer import MAX_SHARD_BYTES, DatasetWriter
from mlpipeline.stages.augment import AugmentParams, augment_dataset
from mlpipeline.stages.train import Trained, train
from mlpipeline.training.data import REAL_SPLIT, SYNTHETIC_SPLIT, Inputs, open_inputs
from mlpipeline.training.loop import Trainer
from mlpipeline.training.params import TrainParams
from mlpipeline.training.reporting import EpochRecord

TINY: dict[str, Any] = {
    "model": {"widths": [8, 16], "dropout": 0.1},
    "epochs": 4,
    "min_steps": 0,
    "batch_size": 16,
    "lr": 0.01,
    "early_stopping": {"monitor": "val_loss", "patience": None},
    "device": "cpu",
    "processes": 1,
    "num_threads": 1,
}


# The photo recipe's training options, on (the weight average, accumulation, clipping, class
# weights, mixup and CutMix).
RECIPE: dict[str, Any] = {
    "ema_decay": 0.9,
    "accumulate": 2,
    "clip_grad_norm": 1.0,
    "class_weights": "balanced",
    "mixing": {"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "probability": 0.8, "switch_probability": 0.5},
}


def tiny_section(**overrides: Any) -> dict[str, Any]:
    """The repository's train section with the tiny settings and ``overrides`` on top."""
    section = {**repo_params()["train"], **TINY, **overrides}
    # model is merged key by key: a test names the keys it changes, the arch's others are the repo's
    return {**section, "model": {**repo_params()["train"]["model"], **section["model"]}}


def tiny_params(**overrides: Any) -> TrainParams:
    return from_mapping(TrainParams, tiny_section(**overrides), "train")


def write_inputs(root: Path, train_per_class: int = 40, synthetic_per_class: int = 0) -> Inputs:
    """``root/data/augmented`` (real, synthetic) and ``root/data/ingested`` (train/val/test), as
    the stages upstream of train lay them out."""
    write_tiny_dataset(root / "data" / "ingested", {"train": 12, "val": 10, "test": 4})
    synthetic = tiny_images(synthetic_per_class, seed=8) if synthetic_per_class else None
    write_training_set(root / "data" / "augmented", tiny_images(train_per_class, seed=7), synthetic)
    return open_inputs(root / "data" / "augmented", root / "data" / "ingested")


Images = tuple[np.ndarray, np.ndarray]  # uint8 N x C x H x W, int64 N


def write_training_set(
    root: Path,
    real: Images | None,
    synthetic: Images | None = None,
    classes: Sequence[str] = CLASSES,
    shape: tuple[int, ...] = SHAPE,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> None:
    """A training set as augment lays it out: both splits, ``None`` for an empty one."""
    with DatasetWriter(root, list(classes), shape, max_shard_bytes=max_shard_bytes) as writer:
        for split, data in ((REAL_SPLIT, real), (SYNTHETIC_SPLIT, synthetic)):
            writer.add_split(split)
            if data is not None:
                writer.write(split, *data)


def write_workdir(root: Path, **overrides: Any) -> Path:
    """A directory the stage runs in: params.yaml with a tiny train section, and its inputs."""
    write_inputs(root)
    (root / "params.yaml").write_text(yaml.safe_dump({"train": tiny_section(**overrides)}))
    return root


def write_online_inputs(root: Path, synthetic_per_class: int = 0, **augment: Any) -> Inputs:
    """Training inputs as augment writes them in online mode (its record and the synthetic
    originals; ingest's train split, 40 images a class, holds the real originals)."""
    ingested = write_tiny_dataset(root / "data" / "ingested", {"train": 40, "val": 10, "test": 4})
    synthetic = root / "data" / "synthetic"
    with DatasetWriter(synthetic, CLASSES, SHAPE) as writer:
        writer.add_split("train")
        if synthetic_per_class:
            writer.write("train", *tiny_images(synthetic_per_class, seed=8))
    section = {**repo_params()["augment"], "mode": "online", "copies": 2, **augment}
    params = from_mapping(AugmentParams, section, "augment")
    augment_dataset(params, ingested, synthetic, root / "data" / "augmented", root / "samples.png")
    return open_inputs(root / "data" / "augmented", ingested)


def killed_then_resumed(
    monkeypatch: pytest.MonkeyPatch,
    params: TrainParams,
    inputs: Inputs,
    out: Path | None,
    checkpoints: Path,
    killed_at: Callable[[Trainer, int], bool],
) -> Trained:
    """``train`` interrupted as by Ctrl-C or a kill (``KeyboardInterrupt``) as the first epoch for
    which ``killed_at(trainer, epoch)`` holds begins, then run again: it resumes from the
    checkpoints the first run left in ``checkpoints``."""
    run_epoch = Trainer.run_epoch

    def killed(self: Trainer, epoch: int, on_batch=None) -> EpochRecord:
        if killed_at(self, epoch):
            raise KeyboardInterrupt
        return run_epoch(self, epoch, on_batch)

    monkeypatch.setattr(Trainer, "run_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        train(params, inputs, out, checkpoints)
    monkeypatch.setattr(Trainer, "run_epoch", run_epoch)
    return train(params, inputs, out, checkpoints)
