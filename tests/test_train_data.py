"""Training data on its way to the device: placement, batching and staging, with a stand-in
device where the real one (MPS, CUDA) is absent."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import torch
from test_train import weights_digest
from tiny_model import SHAPE, tiny_images, write_tiny_dataset
from tiny_training import tiny_params, write_online_inputs, write_training_set

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.shard_rows import SplitReader
from mlpipeline.core.shards import Dataset
from mlpipeline.core.workers import WORKERS_ENV
from mlpipeline.modeling.network import channel_stats, streamed_channel_stats
from mlpipeline.stages import train as train_stage
from mlpipeline.stages.train import train
from mlpipeline.training import loader
from mlpipeline.training.data import Inputs, epoch_order, open_inputs, steps
from mlpipeline.training.distributed import World
from mlpipeline.training.loader import PLACEMENT_ENV, Placement, Resident, Streamed, chosen_placement
from mlpipeline.training.phases import plan

CPU = torch.device("cpu")


@pytest.fixture
def reader(tmp_path: Path) -> SplitReader:
    return SplitReader.open(Dataset(write_tiny_dataset(tmp_path / "ds", {"train": 4})), "train")


@pytest.mark.parametrize("placement", [Resident, lambda reader, device: Streamed(reader, device, workers=2)])
def test_batches_reach_an_indexed_device_without_pinning(reader: SplitReader, placement) -> None:
    """A tensor on MPS reports ``mps:0`` while the run's device is ``mps`` (and a caller's bare
    ``cuda`` meets tensors on ``cuda:0``): placement must not mistake the device's own data for
    host memory and pin it ("only dense CPU tensors can be pinned"). ``meta`` stands in here:
    its tensors report no index, so the run's device is given one."""
    rows = placement(reader, torch.device("meta", 0))
    batches = list(rows.batches(np.arange(12), 5, drop_last=False))
    assert [len(batch_labels) for _, batch_labels in batches] == [5, 5, 2]
    assert {tensor.device.type for batch in batches for tensor in batch} == {"meta"}


def test_channel_stats_from_streamed_sums_are_exact_whatever_the_batching() -> None:
    images = np.random.default_rng(0).integers(0, 256, (50, 3, 5, 7), dtype=np.uint8)
    mean, std = channel_stats(images)
    assert streamed_channel_stats([images[:7], images[7:8], images[8:]]) == (mean, std)
    pixels = images.astype(np.float64) / 255  # the float64 figures, to rounding
    np.testing.assert_allclose(mean, pixels.mean(axis=(0, 2, 3)), rtol=1e-15, atol=0)
    np.testing.assert_allclose(std, pixels.std(axis=(0, 2, 3)), rtol=1e-14, atol=0)
    assert channel_stats(np.full((2, 1, 3, 3), 7, dtype=np.uint8)) == ([7 / 255], [1e-6])


SHARD_IMAGES = 10


def write_sharded_inputs(root: Path) -> Inputs:
    """Training inputs whose splits span many shards (10 images each): 120 real, 30 synthetic."""
    write_tiny_dataset(root / "data" / "ingested", {"train": 12, "val": 10, "test": 4})
    real, synthetic = tiny_images(40, seed=7), tiny_images(10, seed=8)
    shard_bytes = SHARD_IMAGES * int(np.prod(SHAPE))
    write_training_set(root / "data" / "augmented", real, synthetic, max_shard_bytes=shard_bytes)
    return open_inputs(root / "data" / "augmented", root / "data" / "ingested")


@pytest.mark.parametrize("online", [False, True])
def test_streamed_and_resident_train_the_same_model_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, online: bool
) -> None:
    """Whatever the placement and however many reader threads: one model, bit for bit."""
    inputs = (
        write_online_inputs(tmp_path, synthetic_per_class=10) if online else write_sharded_inputs(tmp_path)
    )
    params = tiny_params(epochs=2, synthetic={"use": "pretrain", "pretrain_epochs": 1})
    digests = set()
    for placement, workers in [("resident", "1"), ("streamed", "1"), ("streamed", "2")]:
        monkeypatch.setenv(PLACEMENT_ENV, placement)
        monkeypatch.setenv(WORKERS_ENV, workers)
        result = train(params, inputs, None, tmp_path / f"checkpoints-{placement}-{workers}")
        assert isinstance(result.trainer.train.rows, Resident if placement == "resident" else Streamed)
        digests.add(weights_digest(result.trainer.model))
    assert len(digests) == 1


T = TypeVar("T")


class Counted:
    """A counting fake of the shard reader: every read's rows, per reader."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows: dict[int, list[np.ndarray]] = {}
        self.shards: list[int] = []
        read, shards = SplitReader.read, SplitReader.shards

        def counting_read(reader: SplitReader, rows: np.ndarray, out: np.ndarray) -> None:
            self.rows.setdefault(id(reader), []).append(rows.copy())
            read(reader, rows, out)

        def counting_shards(reader: SplitReader) -> Iterator[np.ndarray]:
            for images in shards(reader):
                self.shards.append(len(images))
                yield images

        def whole_split(*args: object) -> None:
            raise AssertionError("a whole split was loaded")

        monkeypatch.setattr(SplitReader, "read", counting_read)
        monkeypatch.setattr(SplitReader, "shards", counting_shards)
        monkeypatch.setattr(Dataset, "load", whole_split)
        monkeypatch.setattr(Resident, "__init__", whole_split)

    def of(self, reader: SplitReader) -> list[np.ndarray]:
        return self.rows.get(id(reader), [])


def test_streaming_reads_batches_never_a_whole_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = write_sharded_inputs(tmp_path)
    monkeypatch.setenv(PLACEMENT_ENV, "streamed")
    monkeypatch.setenv(WORKERS_ENV, "2")
    counted = Counted(monkeypatch)
    params = tiny_params(epochs=2, synthetic={"use": "mix", "pretrain_epochs": 1})
    result = train(params, inputs, None, tmp_path / "ckpt")

    (phase,) = result.phases
    train_reads = counted.of(phase.originals)
    assert max(len(rows) for rows in train_reads) <= 16 // 2  # a batch, shared out between 2 threads
    expected = [epoch_order(150, params.seed, "train", epoch)[: 9 * 16] for epoch in (1, 2)]
    np.testing.assert_array_equal(np.concatenate(train_reads), np.concatenate(expected))
    read = sum(len(rows) for reads in counted.rows.values() for rows in reads)
    assert read == 2 * 9 * 16 + 2 * 30  # and the 30 val images, each epoch
    assert counted.shards == [SHARD_IMAGES] * 15  # the channel statistics, shard by shard


class OneOfTwoRanks(World):
    """Rank 1 of a two-process run, without the other process: sums over ranks are its own."""

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def sync_buffers(self, model: torch.nn.Module) -> None:
        return None

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        return model

    def agree(self, parts: dict[str, str]) -> None:
        return None

    def from_main(self, compute: Callable[[], T]) -> T:
        """What rank 0 would broadcast (the channel stats, or no checkpoint), worked out here: it
        reads whole shards, which the batch reads counted below never include."""
        return compute()


def test_each_ddp_rank_reads_only_its_share(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = write_sharded_inputs(tmp_path)
    monkeypatch.setenv(PLACEMENT_ENV, "streamed")
    monkeypatch.setattr(train_stage, "process_group", lambda world, device: nullcontext())
    counted = Counted(monkeypatch)
    params = tiny_params(epochs=2, processes=2, synthetic={"use": "mix", "pretrain_epochs": 1})
    result = train(params, inputs, None, tmp_path / "ckpt", world=OneOfTwoRanks(1, 2, 1, 2))

    per_rank = 16 // 2 * steps(75, 8)  # 75 of the 150 rows, in full batches of 8
    share = [
        epoch_order(150, params.seed, "train", epoch, rank=1, world_size=2)[:per_rank] for epoch in (1, 2)
    ]
    np.testing.assert_array_equal(
        np.concatenate(counted.of(result.phases[0].originals)), np.concatenate(share)
    )
    val_reads = [
        rows
        for reader, reads in counted.rows.items()
        for rows in reads
        if reader != id(result.phases[0].originals)
    ]
    np.testing.assert_array_equal(np.concatenate(val_reads), np.tile(np.arange(30)[1::2], 2))


@pytest.mark.parametrize("spare", [0, -1])
def test_validation_and_training_data_share_one_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spare: int
) -> None:
    """Both splits stay resident only when they fit the budget together: each fitting alone
    would hold twice the budget at worst. One byte short, both stream."""
    inputs = write_sharded_inputs(tmp_path)
    params = tiny_params(epochs=1, synthetic={"use": "mix", "pretrain_epochs": 1})
    val_bytes = SplitReader.open(inputs.val, "val").nbytes
    phases = plan(params, inputs.real, inputs.synthetic, tmp_path)
    train_bytes = max(phase.originals.nbytes for phase in phases)
    monkeypatch.setattr(loader, "RESIDENT_MAX_BYTES", val_bytes + train_bytes + spare)
    assert max(val_bytes, train_bytes) <= val_bytes + train_bytes + spare  # either would fit alone
    placed: list[str] = []

    def recording_place(reader: SplitReader, device: torch.device, placement: Placement) -> loader.Rows:
        rows = loader.place(reader, device, placement)
        placed.append(type(rows).__name__)
        return rows

    monkeypatch.setattr(train_stage, "place", recording_place)
    train(params, inputs, None, tmp_path / "ckpt")
    assert placed == (["Resident"] * 2 if spare == 0 else ["Streamed"] * 2)


def test_a_split_stays_resident_when_it_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: SplitReader
) -> None:
    assert chosen_placement(reader.nbytes, CPU) == "resident"
    monkeypatch.setattr(loader, "RESIDENT_MAX_BYTES", reader.nbytes - 1)
    assert chosen_placement(reader.nbytes, CPU) == "streamed"
    monkeypatch.setenv(PLACEMENT_ENV, "resident")
    assert chosen_placement(reader.nbytes, CPU) == "resident"
    monkeypatch.setenv(PLACEMENT_ENV, "disk")
    with pytest.raises(
        PipelineError, match=r"^MLPIPELINE_TRAIN_DATA='disk': must be auto, resident or streamed"
    ):
        chosen_placement(reader.nbytes, CPU)
