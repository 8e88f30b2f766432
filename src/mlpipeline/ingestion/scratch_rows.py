"""The scratch's pixel rows as every ingest process sees them: written in place by whoever
decodes a batch, read back by whoever writes a shard.

Ingest's scratch (``mlpipeline.ingestion.scratch``) keeps the decoded pixels in an unnamed file, one row
an image at ``row * row_bytes``. A pool's initializer (``use_pixel_file``) hands each worker
that file; with one worker it is this process's own. So pixels never travel between processes:
a decoding task returns digests, a shard task returns the shard's sha256.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlpipeline.core.shard_writer import write_shard
from mlpipeline.core.workers import SharedFile

READ_BYTES = 8 * 2**20  # pixels read from the file at a time
_pixel_file: SharedFile | None = None  # this process's handle on the scratch's pixels


def use_pixel_file(file: SharedFile) -> None:
    """Read and write the scratch's pixels through ``file`` in this process (a pool's initializer)."""
    global _pixel_file
    _pixel_file = file


def write_rows(pixels: np.ndarray, first_row: int) -> None:
    """Write ``pixels`` (one row an image) at ``first_row``: batches land in place, whichever
    worker finishes first."""
    _file().write_at(pixels, first_row * (pixels.nbytes // len(pixels)))


def read_rows(rows: np.ndarray, row_shape: tuple[int, ...]) -> np.ndarray:
    """The images of ``rows`` (ascending), reading the file ``READ_BYTES`` at a time: a split's
    rows lie scattered among the others', and a read call a row cost as much as the row."""
    images = np.empty((len(rows), *row_shape), dtype=np.uint8)
    span = max(1, READ_BYTES // math.prod(row_shape))
    done = 0
    while done < len(rows):
        first = int(rows[done])
        end = done + int(np.searchsorted(rows[done:], first + span))
        window = read_span(first, int(rows[end - 1]) - first + 1, row_shape)
        images[done:end] = window[rows[done:end] - first]
        done = end
    return images


def read_span(first: int, count: int, row_shape: tuple[int, ...]) -> np.ndarray:
    """Rows ``first`` to ``first + count``, in one read."""
    row_bytes = math.prod(row_shape)
    data = os.pread(_file().fd, count * row_bytes, first * row_bytes)
    return np.frombuffer(data, dtype=np.uint8).reshape(count, *row_shape)


@dataclass(frozen=True)
class ShardTask:
    split: str
    path: Path  # the shard file to write
    rows: np.ndarray  # its images' rows of the scratch, ascending
    labels: np.ndarray  # int64, one a row
    row_shape: tuple[int, ...]


def write_shard_rows(task: ShardTask) -> str:
    """Write one shard of scratch rows; its sha256."""
    return write_shard(task.path, read_rows(task.rows, task.row_shape), task.labels)


def _file() -> SharedFile:
    if _pixel_file is None:
        raise RuntimeError("no pixel file in this process: use_pixel_file(file) first")
    return _pixel_file
