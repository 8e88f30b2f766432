"""Ingestion at scale: the same bytes for any worker count, and never a whole split in memory."""

from __future__ import annotations

import pickle
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem
from imagedata import ingest_params, make_folder, run_ingest

from mlpipeline.core import shard_writer
from mlpipeline.ingestion import decoding, scratch_rows
from mlpipeline.ingestion.decoding import Batch
from mlpipeline.ingestion.images import Preprocessing
from mlpipeline.ingestion.sources import RawSample
from mlpipeline.ingestion.splitting import SPLITS
from mlpipeline.stages import ingest


def output_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_outputs_are_identical_for_one_and_two_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = make_folder(tmp_path / "raw", {"a": 90, "b": 70, "c": 40})  # several batches per worker
    monkeypatch.setattr(ingest, "PARALLEL_FROM", 10)  # small sources are decoded in-process
    monkeypatch.setattr(decoding, "BATCH_PIXEL_BYTES", 16 * 64)  # batches of sixteen 8x8 images
    monkeypatch.setattr(shard_writer, "MAX_SHARD_BYTES", 10 * 64)  # shards of ten 8x8 images, in parallel
    used = []

    class CountedPool(ingest.WorkerPool):
        def __enter__(self) -> ingest.WorkerPool:
            used.append(self.workers)
            return super().__enter__()

    monkeypatch.setattr(ingest, "WorkerPool", CountedPool)
    outputs = {}
    for workers in ("1", "2"):
        monkeypatch.setenv("MLPIPELINE_WORKERS", workers)
        run_ingest(ingest_params(raw), tmp_path / f"out-{workers}")
        outputs[workers] = output_bytes(tmp_path / f"out-{workers}")
    assert used == [1, 2] and outputs["1"] == outputs["2"]
    assert {name.split("-")[0] for name in outputs["1"] if name.endswith(".safetensors")} == set(SPLITS)
    assert "train-00013.safetensors" in outputs["1"]  # 140 train images, 10 a shard


class Counting:
    """Wraps the three places pixels pass through and records the most images each held at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.decoded = self.read = self.written = 0
        decode_batch, read_span, write_shard = (
            ingest.decode_batch,
            scratch_rows.read_span,
            scratch_rows.write_shard,
        )

        def counting_decode(batch):
            self.decoded = max(self.decoded, len(batch.samples))
            return decode_batch(batch)

        def counting_read(first, count, row_shape):
            self.read = max(self.read, count)
            return read_span(first, count, row_shape)

        def counting_write(path, images, labels):
            self.written = max(self.written, len(images))
            return write_shard(path, images, labels)

        monkeypatch.setattr(ingest, "decode_batch", counting_decode)
        monkeypatch.setattr(scratch_rows, "read_span", counting_read)
        monkeypatch.setattr(scratch_rows, "write_shard", counting_write)


def test_no_step_holds_a_whole_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding, reading back and writing go 4 images at a time, while the train split has ten times that."""
    monkeypatch.setenv("MLPIPELINE_WORKERS", "1")
    monkeypatch.setattr(decoding, "BATCH_PIXEL_BYTES", 4 * 64)  # four 8x8 gray images
    monkeypatch.setattr(scratch_rows, "READ_BYTES", 4 * 64)  # four 8x8 gray images
    monkeypatch.setattr(shard_writer, "MAX_SHARD_BYTES", 4 * 64)
    counting = Counting(monkeypatch)
    raw = make_folder(tmp_path / "raw", {"a": 50, "b": 50})
    result = run_ingest(ingest_params(raw), tmp_path / "out")
    assert result.summary.counts["train"] > 10 * 4
    assert (counting.decoded, counting.read, counting.written) == (4, 4, 4)
    streamed = result.images()
    monkeypatch.undo()
    monkeypatch.setenv("MLPIPELINE_WORKERS", "1")
    np.testing.assert_array_equal(streamed, run_ingest(ingest_params(raw), tmp_path / "whole").images())


def test_a_batch_reaches_a_worker_whole() -> None:
    """A batch travels as plain tuples of strings, and arrives as the batch that was sent."""
    samples = [RawSample(f"/raw/a/ü {i}.png", f"a/ü {i}.png", "a", f"s3://b/a/ü {i}.png") for i in range(3)]
    batch = Batch(LocalFileSystem(), samples, Preprocessing(3, (32, 24), "bicubic", True, 255, True), 10, 7)
    assert pickle.loads(ForkingPickler.dumps(batch)) == batch


@pytest.mark.parametrize(
    ("channels", "side", "images"), [(1, 8, 1024), (3, 32, 170), (3, 224, 4), (3, 4096, 4)]
)
def test_a_batch_holds_about_half_a_mib_of_pixels(channels: int, side: int, images: int) -> None:
    preprocessing = Preprocessing(channels, (side, side), "bicubic", True, 255, True)
    assert decoding.batch_images(preprocessing) == images
