"""No stage that scales with the data holds a whole split: synthesize, augment and evaluate run on
datasets of many small shards under a counting fake of the shard reader (tests/shard_counting.py),
which fails the moment more than one earlier shard is still held when the next is read; online
augment, which reads its shards otherwise, has the same peak for one shard per source as for eight."""

from __future__ import annotations

import dataclasses
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import repo_params
from shard_counting import ShardCounter
from tiny_model import CLASSES, SHAPE, tiny_images, write_tiny_model

from mlpipeline.core.params import from_mapping
from mlpipeline.core.shard_writer import DatasetWriter
from mlpipeline.core.shards import Dataset
from mlpipeline.stages.augment import AugmentParams, augment_dataset
from mlpipeline.stages.evaluate import EvaluateParams, evaluate
from mlpipeline.stages.synthesize import SynthesizeParams, synthesize

SHARD_IMAGES = 30
SPLITS = {"train": 60, "val": 10, "test": 40}  # images per class: 6, 1 and 4 shards


def write_sharded(root: Path, classes: list[str]) -> Path:
    """The tiny three-class images in splits of many 30-image shards, classes interleaved."""
    max_bytes = SHARD_IMAGES * int(np.prod(SHAPE))
    with DatasetWriter(root, classes, SHAPE, max_shard_bytes=max_bytes) as writer:
        for seed, (split, per_class) in enumerate(SPLITS.items()):
            images, labels = tiny_images(per_class, seed)
            order = np.random.default_rng(seed).permutation(len(labels))
            writer.write(split, images[order], labels[order])
    return root


def shards(root: Path, split: str) -> int:
    return len(Dataset(root).info.splits[split].shards)


def test_the_counting_fake_catches_a_stage_that_holds_a_split(monkeypatch, tmp_path: Path) -> None:
    data = Dataset(write_sharded(tmp_path / "ingested", CLASSES))
    ShardCounter(monkeypatch)
    with pytest.raises(AssertionError, match="images of earlier shards still held"):
        list(data.iter_shards("train"))
    with pytest.raises(AssertionError, match="holds the whole split"):
        data.load("test")


def test_synthesize_streams_the_real_split(monkeypatch, tmp_path: Path) -> None:
    real = write_sharded(tmp_path / "ingested", ["a", "b", "c"])
    params = from_mapping(SynthesizeParams, {**repo_params()["synthesize"], "count": 100}, "synthesize")
    counter = ShardCounter(monkeypatch)
    synthesize(params, real, tmp_path / "synthetic", tmp_path / "reports")
    assert counter.reads == shards(real, "train") == 6


def test_augment_streams_both_sources(monkeypatch, tmp_path: Path) -> None:
    real = write_sharded(tmp_path / "ingested", CLASSES)
    synthetic = write_sharded(tmp_path / "synthetic", CLASSES)
    section = {**repo_params()["augment"], "batch_size": 7, "copies": 2}
    params = from_mapping(AugmentParams, section, "augment")
    counter = ShardCounter(monkeypatch)
    augment_dataset(params, real, synthetic, tmp_path / "augmented", tmp_path / "samples.png")
    assert counter.reads == 2 * shards(real, "train") == 12


SHARD_ROWS = 20_000  # 1.3 MB of tiny images a shard: more than the 256 KiB a shard's hashing reads at once


def write_train_split(root: Path, shards: int, seed: int) -> Path:
    """A training split of ``shards`` full shards of the tiny images, classes interleaved."""
    images, labels = tiny_images(10, seed)
    repeats = shards * SHARD_ROWS // len(labels) + 1
    images = np.tile(images, (repeats, 1, 1, 1))[: shards * SHARD_ROWS]
    with DatasetWriter(root, CLASSES, SHAPE, max_shard_bytes=SHARD_ROWS * images[0].nbytes) as writer:
        writer.write("train", images, np.tile(labels, repeats)[: len(images)])
    return root


def online_peak(root: Path, shards: int, include_synthetic: bool) -> int:
    """The most bytes Python's allocators held at once while online augment ran on real and
    synthetic training splits of ``shards`` shards each."""
    real, synthetic = (
        write_train_split(root / name, shards, seed) for seed, name in enumerate(["real", "synth"])
    )
    section = {**repo_params()["augment"], "mode": "online", "include_synthetic": include_synthetic}
    params = from_mapping(AugmentParams, section, "augment")
    tracemalloc.start()
    try:
        augment_dataset(params, real, synthetic, root / "augmented", root / "samples.png")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("include_synthetic", [True, False])
def test_online_augment_peak_does_not_grow_with_the_data(tmp_path: Path, include_synthetic: bool) -> None:
    """It copies the synthetic originals a shard at a time (the peak when they are included) and
    finds each class's first image for the preview a shard at a time (the peak without them; a
    whole split's labels are 8 bytes an image)."""
    one, eight = (online_peak(tmp_path / str(n), n, include_synthetic) for n in (1, 8))
    assert eight - one < SHARD_ROWS * np.prod(SHAPE) / 2


@pytest.mark.parametrize("kernel", ["exact", "nystroem"])
def test_evaluate_streams_the_test_split_and_the_baseline_subset(
    monkeypatch, tmp_path: Path, kernel: str
) -> None:
    data = write_sharded(tmp_path / "ingested", CLASSES)
    models = write_tiny_model(tmp_path / "models", steps=5)
    section = {**repo_params()["evaluate"], "device": "cpu", "batch_size": 16}
    params = from_mapping(EvaluateParams, section, "evaluate")
    baseline = dataclasses.replace(params.baseline, max_train=90, kernel=kernel, components=20)
    counter = ShardCounter(monkeypatch)
    result = evaluate(dataclasses.replace(params, baseline=baseline), models, data)
    assert counter.reads == shards(data, "train") + shards(data, "test") == 10
    assert (result.test_count, result.train_count) == (120, 90)
