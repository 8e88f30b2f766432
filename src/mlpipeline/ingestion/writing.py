"""Writing a data version: the base's kept shards copied as they are, new shards written by the
worker processes from the scratch's rows, and beside them, in one pass over the scratch's
records, each new shard's records file and the version's ``excluded.csv``.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlpipeline.core.progress import progress
from mlpipeline.core.shard_writer import DatasetWriter, StoredShard
from mlpipeline.core.workers import WorkerPool
from mlpipeline.ingestion.base import BaseLayout, shard_index
from mlpipeline.ingestion.layout import KeptShard, Plan
from mlpipeline.ingestion.records import (
    EXCLUDED,
    EXCLUDED_COLUMNS,
    RECORD_COLUMNS,
    records_name,
)
from mlpipeline.ingestion.scratch import Scratch
from mlpipeline.ingestion.scratch_rows import ShardTask, write_shard_rows
from mlpipeline.ingestion.splitting import SPLITS

ROW_BLOCK = 65_536  # rows whose columns are taken out of numpy at once


@dataclass(frozen=True)
class Version:
    """What the new version is made of, for the caller's summary and metrics."""

    status: np.ndarray  # a code a source row: its split (index into SPLITS), or an excluded status
    held_out: np.ndarray  # bool a source row
    plan: Plan
    base: BaseLayout | None
    statuses: tuple[str, ...]  # every status by code: the splits, then the excluded ones


def write_version(
    version: Version,
    scratch: Scratch,
    classes: list[str],
    attributes: dict,
    out_dir: Path,
    pool: WorkerPool,
    max_shard_bytes: int | None,
) -> int:
    """Write the version into ``out_dir`` in one atomic step; the number of new shards."""
    with (
        DatasetWriter(out_dir, classes, scratch.row_shape, attributes, max_shard_bytes) as writer,
        ThreadPoolExecutor(1) as beside,
    ):
        tasks = list(new_shards(version, scratch, writer))
        records = beside.submit(write_records, writer.directory, scratch, version, tasks, classes)
        fresh = sum(len(task.rows) for task in tasks)
        with progress("ingest", "writing shards", fresh) as shown:
            for code, split in enumerate(SPLITS):
                writer.add_split(split)
                for kept in (k for k in version.plan.kept if k.shard.split == code):
                    copy_kept(kept, version.base, writer)
            for task, sha256 in pool.map_pairs(write_shard_rows, tasks):
                held = version.held_out[task.rows]
                writer.add_shard(task.split, StoredShard(task.path.name, sha256, task.labels, ~held, held))
                shown.advance(len(task.rows))
        records.result()
    return len(tasks)


def copy_kept(kept: KeptShard, base: BaseLayout | None, writer: DatasetWriter) -> None:
    """A base shard and its records, copied as they are, with the new version's live rows."""
    assert base is not None
    shard = kept.shard
    names = [shard.name, records_name(shard.name)]
    for name, path in base.files.paths(names).items():
        shutil.copyfile(path, writer.directory / name)
    stored = base.stored_labels[shard.first : shard.first + shard.rows].astype(np.int64)
    entry = StoredShard(shard.name, shard.sha256, stored, kept.live, kept.held_out, shard.classes)
    writer.add_shard(SPLITS[shard.split], entry)


def new_shards(version: Version, scratch: Scratch, writer: DatasetWriter) -> Iterator[ShardTask]:
    """The new shards of each split: its fresh rows in source order, ``shard_images`` a shard,
    numbered after the base's shards of that split."""
    labels = scratch.labels.array()
    for code, split in enumerate(SPLITS):
        rows = np.flatnonzero(version.plan.fresh & (version.status == code))
        start = next_index(version.base, code)
        for index, first in enumerate(range(0, len(rows), writer.shard_images)):
            chunk = rows[first : first + writer.shard_images]
            path = writer.directory / writer.shard_name(split, start + index)
            yield ShardTask(split, path, chunk, labels[chunk].astype(np.int64), scratch.row_shape)


def next_index(base: BaseLayout | None, code: int) -> int:
    """The first number a new shard of split ``code`` takes: after every shard of the base's."""
    numbers = [shard_index(s.name) for s in base.shards if s.split == code] if base else []
    return max(numbers, default=-1) + 1


def write_records(
    directory: Path, scratch: Scratch, version: Version, tasks: list[ShardTask], classes: list[str]
) -> None:
    """Each new shard's records file and ``excluded.csv``, in one streamed pass over the scratch's
    records (fresh rows come in each shard's row order: both are source order)."""
    shard_of = np.full(scratch.count, -1, dtype=np.int32)
    for number, task in enumerate(tasks):
        shard_of[task.rows] = number
    open_files: dict[int, CsvFile] = {}
    with CsvFile(directory / EXCLUDED, EXCLUDED_COLUMNS) as excluded:
        for row, record, shard in zip(range(scratch.count), scratch.records(), blocks(shard_of), strict=True):
            if shard >= 0:
                if shard not in open_files:
                    path = directory / records_name(tasks[shard].path.name)
                    open_files[shard] = CsvFile(path, RECORD_COLUMNS).__enter__()
                open_files[shard].writer.writerow(record_row(scratch, row, record, classes))
                if row == tasks[shard].rows[-1]:
                    open_files.pop(shard).close()
            elif version.status[row] >= len(SPLITS):
                excluded.writer.writerow(excluded_row(scratch, version, row, record, classes))


class CsvFile:
    """A CSV file written row by row, its header first; closed when its last row is written."""

    def __init__(self, path: Path, header: tuple[str, ...]) -> None:
        # open until close(): a split's records file stays open while other splits' rows pass
        self._handle = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115
        self.writer = csv.writer(self._handle, lineterminator="\n")
        self.writer.writerow(header)

    def __enter__(self) -> CsvFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._handle.close()


def blocks(values: np.ndarray) -> Iterator[int]:
    """``values`` as Python ints, taken out of numpy a block at a time."""
    for start in range(0, len(values), ROW_BLOCK):
        yield from values[start : start + ROW_BLOCK].tolist()


def record_row(scratch: Scratch, row: int, record: tuple[str, bytes, bytes], classes: list[str]) -> tuple:
    name, file_digest, pixel_digest = record
    mode = scratch.mode_names[int(scratch.modes.array()[row])]
    return (name, classes[int(scratch.labels.array()[row])], file_digest.hex(), pixel_digest.hex(), mode)


def excluded_row(
    scratch: Scratch, version: Version, row: int, record: tuple[str, bytes, bytes], classes: list[str]
) -> tuple:
    name, file_digest, pixel_digest = record
    error = scratch.errors.get(row, "")
    failed = error and row not in scratch.conflicting  # a conflict's hashes show its group
    hashes = ("", "") if failed else (file_digest.hex(), pixel_digest.hex())
    mode = "" if failed else scratch.mode_names[int(scratch.modes.array()[row])]
    status = version.statuses[int(version.status[row])]
    return (name, classes[int(scratch.labels.array()[row])], status, *hashes, mode, error)
