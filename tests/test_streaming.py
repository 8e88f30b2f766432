"""No stage that scales with the data holds a whole split: synthesize, augment and evaluate run on
datasets of many small shards under a counting fake of the shard reader (tests/shard_counting.py),
which fails the moment more than one earlier shard is still held when the next is read."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from conftest import repo_params
from shard_counting import ShardCounter
from tiny_model import CLASSES, SHAPE, tiny_images, write_tiny_model

from mlpipeline.core.params import from_mapping
from mlpipeline.core.shards import Dataset, DatasetWriter
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
