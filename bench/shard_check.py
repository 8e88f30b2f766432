"""What checking each shard against its sha256 costs where a stage reads it whole.

    python bench/shard_check.py

Writes the demo's training set (1,257 images of 1x8x8) and a 100k-image set of 3x32x32 (the
size bench/scale.py starts at) into .cache/bench/shard_check, then reads every shard warm
(from the page cache, as a stage reads what the stage before it just wrote) twice: as
``Dataset.iter_shards`` reads them (evaluate, augment, synthesize) and as
``SplitReader.shards`` does (train's input statistics and resident placement), with the check
and without it. Prints milliseconds and the ratio checked / unchecked, the best of 5 runs each:
the hash runs at sha256's speed (hundreds of MB/s a core), a warm read at memory speed, so the
ratio is large but the seconds are small beside what the stage then does with the images.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from mlpipeline.core.shard_rows import SplitReader
from mlpipeline.core.shard_writer import DatasetWriter
from mlpipeline.core.shards import Dataset

SCRATCH = Path(__file__).resolve().parents[1] / ".cache" / "bench" / "shard_check"
CASES = {"demo": (1_257, (1, 8, 8)), "100k": (100_000, (3, 32, 32))}
CHUNK, RUNS = 10_000, 5


def write(root: Path, count: int, shape: tuple[int, int, int]) -> Dataset:
    generator = np.random.default_rng(0)
    shutil.rmtree(root, ignore_errors=True)
    with DatasetWriter(root, [str(c) for c in range(10)], shape) as writer:
        for start in range(0, count, CHUNK):
            n = min(CHUNK, count - start)
            writer.write("train", generator.integers(0, 256, (n, *shape), np.uint8), np.arange(n) % 10)
    return Dataset(root)


def best_of(read: Callable[[], object]) -> float:
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        read()
        times.append(time.perf_counter() - started)
    return min(times)


def unchecked(dataset: Dataset) -> Dataset:
    """The same dataset with no digest recorded: the readers skip the check."""
    info = dataset.info
    splits = {name: replace(s, sha256=dict.fromkeys(s.sha256)) for name, s in info.splits.items()}
    clone = Dataset.__new__(Dataset)
    clone.root, clone.info = dataset.root, replace(info, splits=splits)
    return clone


def main() -> None:
    print(f"{'set':6} {'reader':22} {'MB':>6} {'unchecked ms':>13} {'checked ms':>11} {'ratio':>6}")
    for name, (count, shape) in CASES.items():
        dataset = write(SCRATCH / name, count, shape)
        megabytes = sum(p.stat().st_size for p in dataset.root.glob("*.safetensors")) / 1e6
        readers = {
            "Dataset.iter_shards": lambda d: lambda: [None for _ in d.iter_shards("train")],
            "SplitReader.shards": lambda d: lambda: [None for _ in SplitReader.open(d, "train").shards()],
        }
        for reader, make in readers.items():
            plain, checked = best_of(make(unchecked(dataset))), best_of(make(dataset))
            ratio = checked / plain
            figures = f"{megabytes:6.1f} {plain * 1e3:13.2f} {checked * 1e3:11.2f} {ratio:6.2f}"
            print(f"{name:6} {reader:22} {figures}", flush=True)
    shutil.rmtree(SCRATCH, ignore_errors=True)


if __name__ == "__main__":
    main()
