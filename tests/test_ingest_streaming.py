"""Ingestion at scale: the same bytes for any worker count, and never a whole split in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from imagedata import ingest_params, make_folder, run_ingest

from mlpipeline import scratch
from mlpipeline.core.shards import DatasetWriter
from mlpipeline.stages import ingest


def output_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_outputs_are_identical_for_one_and_two_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = make_folder(tmp_path / "raw", {"a": 90, "b": 70, "c": 40})  # several batches per worker
    monkeypatch.setattr(ingest, "PARALLEL_FROM", 10)  # small sources are decoded in-process
    used, ordered_map = [], ingest.ordered_map
    monkeypatch.setattr(
        ingest, "ordered_map", lambda f, items, n, **kw: used.append(n) or ordered_map(f, items, n, **kw)
    )
    outputs = {}
    for workers in ("1", "2"):
        monkeypatch.setenv("MLPIPELINE_WORKERS", workers)
        run_ingest(ingest_params(raw), tmp_path / f"out-{workers}")
        outputs[workers] = output_bytes(tmp_path / f"out-{workers}")
    assert used == [1, 2] and outputs["1"] == outputs["2"]
    assert {name for name in outputs["1"] if name.endswith(".safetensors")} == {
        "train-00000.safetensors",
        "val-00000.safetensors",
        "test-00000.safetensors",
    }


class Counting:
    """Wraps the three places pixels pass through and records the most images each held at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.decoded = self.read = self.written = 0
        decode_batch, pixels, write = ingest.decode_batch, scratch.Scratch.pixels, DatasetWriter.write

        def counting_decode(batch):
            self.decoded = max(self.decoded, len(batch.samples))
            return decode_batch(batch)

        def counting_pixels(store, first, count):
            result = pixels(store, first, count)
            self.read = max(self.read, len(result))
            return result

        def counting_write(writer, split, images, labels):
            self.written = max(self.written, len(images))
            return write(writer, split, images, labels)

        monkeypatch.setattr(ingest, "decode_batch", counting_decode)
        monkeypatch.setattr(scratch.Scratch, "pixels", counting_pixels)
        monkeypatch.setattr(DatasetWriter, "write", counting_write)


def test_no_step_holds_a_whole_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding, reading back and writing go 4 images at a time, while the train split has 68."""
    monkeypatch.setenv("MLPIPELINE_WORKERS", "1")
    monkeypatch.setattr(ingest, "BATCH_IMAGES", 4)
    monkeypatch.setattr(ingest, "READ_BYTES", 4 * 64)  # four 8x8 gray images
    counting = Counting(monkeypatch)
    raw = make_folder(tmp_path / "raw", {"a": 50, "b": 50})
    result = run_ingest(ingest_params(raw), tmp_path / "out")
    assert result.summary.counts["train"] == 68
    assert (counting.decoded, counting.read, counting.written) == (4, 4, 4)
    streamed = result.images()
    monkeypatch.undo()
    monkeypatch.setenv("MLPIPELINE_WORKERS", "1")
    np.testing.assert_array_equal(streamed, run_ingest(ingest_params(raw), tmp_path / "whole").images())
