"""The exact pixel sums a dataset records per shard, from which training takes its input
normalization without reading an image: equal to a full pass, checked as they are read, and
not needed when pretrained weights bring their own normalization."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_models_hf import hf_params, save_checkpoint
from tiny_training import write_inputs

from mlpipeline.core import channel_sums
from mlpipeline.core.channel_sums import ChannelSums
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.shard_rows import SplitReader
from mlpipeline.core.shard_writer import DatasetWriter
from mlpipeline.core.shards import META_FILE, Dataset
from mlpipeline.stages.train import train
from mlpipeline.training.loader import PLACEMENT_ENV

CLASSES = ["a", "b"]


def python_sums(images: np.ndarray) -> ChannelSums:
    """The sums by the definition, in Python integers."""
    values = images.transpose(1, 0, 2, 3).reshape(images.shape[1], -1).tolist()
    return ChannelSums(
        len(values[0]),
        tuple(sum(channel) for channel in values),
        tuple(sum(v * v for v in channel) for channel in values),
    )


def test_the_sums_are_exact_whatever_the_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    images = np.random.default_rng(0).integers(0, 256, (23, 3, 5, 7), dtype=np.uint8)
    whole = ChannelSums.of(images)
    monkeypatch.setattr(channel_sums, "CHUNK_VALUES", 200)  # two images a chunk
    assert ChannelSums.of(images) == whole == python_sums(images)
    assert ChannelSums.of(images[:9]) + ChannelSums.of(images[9:]) == whole
    mean, std = whole.mean_std()
    scaled = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, scaled.std(axis=(0, 2, 3)), rtol=1e-12)


def write_dataset(root: Path, images: np.ndarray) -> Dataset:
    """A split of ``images`` in shards of 4 images, as synthesize and the tests write one."""
    labels = np.arange(len(images)) % len(CLASSES)
    with DatasetWriter(root, CLASSES, images.shape[1:], max_shard_bytes=4 * images[0].nbytes) as writer:
        writer.write("train", images, labels)
    return Dataset(root)


def test_a_split_reads_its_sums_from_dataset_json_equal_to_a_full_pass(tmp_path: Path) -> None:
    images = np.random.default_rng(1).integers(0, 256, (10, 2, 4, 3), dtype=np.uint8)
    dataset = write_dataset(tmp_path / "ds", images)
    recorded = json.loads((tmp_path / "ds" / META_FILE).read_text())["splits"]["train"]["channel_sums"]
    shards = [python_sums(images[start : start + 4]) for start in (0, 4, 8)]
    assert recorded == ";".join(" ".join(map(str, (*sums.sums, *sums.squares))) for sums in shards)
    assert SplitReader.open(dataset, "train").channel_sums() == python_sums(images)


def edited(root: Path, change) -> None:
    path = root / META_FILE
    meta = json.loads(path.read_text())
    change(meta["splits"]["train"])
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "sums",
    [
        "0 0 0 0;0 0 0",
        "0 0 0 0",
        "0 0 0 0;0 0 0 0;0 0 0 0",
        "0 0 -1 0;0 0 0 0",
        "0 0 0 x;0 0 0 0",
        "12241 0 0 0;0 0 0 0",
    ],
    ids=[
        "a number short",
        "a shard short",
        "a shard too many",
        "negative",
        "a word",
        "more than the pixels hold",
    ],
)
def test_malformed_sums_are_refused_in_one_line_naming_the_file(tmp_path: Path, sums: str) -> None:
    images = np.zeros((6, 2, 4, 3), dtype=np.uint8)
    write_dataset(tmp_path / "ds", images)  # shards of 48 and 24 pixels a channel
    edited(tmp_path / "ds", lambda split: split.update(channel_sums=sums))
    with pytest.raises(
        PipelineError, match=rf"^{tmp_path / 'ds' / META_FILE}: malformed dataset metadata"
    ) as refused:
        Dataset(tmp_path / "ds")
    assert "\n" not in str(refused.value)


def test_a_dataset_without_sums_is_refused_when_they_are_needed(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "ds", np.zeros((6, 2, 4, 3), dtype=np.uint8))
    edited(tmp_path / "ds", lambda split: split.pop("channel_sums"))
    reader = SplitReader.open(Dataset(tmp_path / "ds"), "train")  # readable: only the sums are missing
    with pytest.raises(PipelineError) as refused:
        reader.channel_sums()
    assert str(refused.value) == (
        f"{dataset.root / META_FILE}: records no channel sums for train-00000.safetensors (written by an "
        "older mlpipeline); rerun the stage that writes it (dvc repro)"
    )


def test_pretrained_weights_bring_their_normalization_and_the_sums_are_not_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path / "data" / "weights" / "tiny")  # its preprocessor: mean 0.4, std 0.3
    monkeypatch.chdir(tmp_path)
    inputs = write_inputs(tmp_path)

    def not_needed(reader: SplitReader) -> ChannelSums:
        raise AssertionError("the data's channel statistics were worked out")

    monkeypatch.setenv(PLACEMENT_ENV, "streamed")  # so nothing else reads a shard whole
    monkeypatch.setattr(SplitReader, "channel_sums", not_needed)
    monkeypatch.setattr(SplitReader, "shards", not_needed)
    result = train(hf_params(epochs=1, model={"weights": "tiny"}), inputs, None, tmp_path / "ckpt")
    assert (result.config.mean, result.config.std) == ([0.4], [0.3])
