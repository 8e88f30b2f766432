"""Random access to a split's live rows, for the training loader: batches of rows in any order,
each row read from its shard at its raw offset, so memory holds the rows asked for, never the
split. A shard's dead rows (``core.shards``: a growing dataset's removed or relabelled images)
are skipped here, so a reader's row numbers count live rows only.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.shards import META_FILE, Dataset, check_shard

_HEADER_LENGTH = struct.Struct("<Q")  # safetensors: a little-endian u64, then that many bytes of JSON
_DTYPES = {"images": "U8", "labels": "I64"}


@dataclass(frozen=True)
class ShardLayout:
    """Where a shard's images lie in its file, which of its rows are live, and their labels."""

    path: Path
    images_offset: int  # of the first image's first byte
    labels: np.ndarray  # of the live rows, as the dataset's class indices
    stored: int  # rows the file holds, live or not
    sha256: str | None = None  # as dataset.json records it, checked when the shard is read whole
    rows: np.ndarray | None = None  # the live rows' places in the file (ascending); None: every row


def shard_layout(path: Path, image_shape: tuple[int, int, int], sha256: str | None = None) -> ShardLayout:
    """Read a shard's header and labels (8 bytes an image, read whole), not its images; refuse,
    naming the file, what ``Dataset`` would refuse. Every row is live and labels are as stored."""
    try:
        with open(path, "rb") as handle:
            (length,) = _HEADER_LENGTH.unpack(handle.read(_HEADER_LENGTH.size))
            header = json.loads(handle.read(length))
            start = _HEADER_LENGTH.size + length
            count, (begin, end) = _checked_entries(header, image_shape)
            handle.seek(start + begin)
            labels = np.frombuffer(handle.read(end - begin), dtype=np.int64)
    except FileNotFoundError:
        raise PipelineError(f"{path}: shard listed in {META_FILE} is missing")
    except (OSError, struct.error, ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"{path}: not a readable safetensors shard ({exc!r})")
    if len(labels) != count:
        raise PipelineError(f"{path}: shorter than its header says")
    return ShardLayout(path, start + header["images"]["data_offsets"][0], labels, count, sha256)


def live_layout(dataset: Dataset, split: str, name: str) -> ShardLayout:
    """Shard ``name``'s layout with its live rows only, labelled by the dataset's classes."""
    info = dataset.split_info(split)
    layout = shard_layout(dataset.root / name, dataset.image_shape, info.sha256[name])
    if layout.stored != info.rows[name]:
        raise PipelineError(f"{layout.path}: holds {layout.stored} rows, {META_FILE} says {info.rows[name]}")
    labels = dataset.live_labels(split, name, layout.labels)
    rows = info.live_rows(name)
    live = labels if rows is None else labels[rows]
    return ShardLayout(layout.path, layout.images_offset, live, layout.stored, layout.sha256, rows)


def _checked_entries(header: dict[str, Any], image_shape: tuple[int, int, int]) -> tuple[int, list[int]]:
    """The image count and the labels' byte range, once both tensors match the dataset."""
    for name, dtype in _DTYPES.items():
        if name not in header:
            raise ValueError(f"no '{name}' tensor")
        if header[name]["dtype"] != dtype:
            raise ValueError(f"'{name}' is {header[name]['dtype']}, expected {dtype}")
    count, *shape = header["images"]["shape"]
    if tuple(shape) != image_shape or header["labels"]["shape"] != [count]:
        raise ValueError(f"expected images N x {image_shape} and N labels")
    return count, header["labels"]["data_offsets"]


class SplitReader:
    """The live rows of one or more splits (``concat``), read at random.

    Each image is read from its shard at its raw offset (safetensors stores them), with
    plain reads: unlike a memory map, pages read stay in the OS page cache and do not count
    in this process's memory. A reader holds no open file between calls, so threads may
    share it.
    """

    def __init__(self, image_shape: tuple[int, int, int], layouts: Sequence[ShardLayout]) -> None:
        self.image_shape = image_shape
        self.row_bytes = int(np.prod(image_shape))
        self.layouts = list(layouts)
        counts = [len(layout.labels) for layout in self.layouts]
        self.starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.labels = np.concatenate([layout.labels for layout in self.layouts] or [np.empty(0, np.int64)])
        self._checked: set[Path] = set()  # shards whose sha256 matched: train reads them whole twice

    @classmethod
    def open(cls, dataset: Dataset, split: str) -> SplitReader:
        info = dataset.split_info(split)  # a missing split fails here, naming the file
        return cls(dataset.image_shape, [live_layout(dataset, split, name) for name in info.shards])

    @classmethod
    def concat(cls, readers: Sequence[SplitReader]) -> SplitReader:
        """One reader of the rows of ``readers`` in turn (all of one image shape)."""
        return cls(readers[0].image_shape, [layout for reader in readers for layout in reader.layouts])

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return len(self) * self.row_bytes

    def read(self, rows: np.ndarray, out: np.ndarray) -> None:
        """The images of ``rows`` into ``out`` (uint8, C-contiguous, len(rows) x C x H x W)."""
        if not out.flags.c_contiguous:
            raise ValueError("out must be C-contiguous: the rows are read into its memory")
        flat = out.reshape(len(rows), self.row_bytes)
        shards = np.searchsorted(self.starts, rows, side="right") - 1
        for shard in np.unique(shards):
            layout = self.layouts[shard]
            with open(layout.path, "rb", buffering=0) as handle:
                for i in np.flatnonzero(shards == shard):
                    row = int(rows[i] - self.starts[shard])
                    stored = row if layout.rows is None else int(layout.rows[row])
                    handle.seek(layout.images_offset + stored * self.row_bytes)
                    self._fill(handle, flat[i], layout.path)

    def shards(self) -> Iterator[np.ndarray]:
        """Each shard's live images in turn, read whole and checked against its sha256: memory
        bounded by one shard."""
        for layout in self.layouts:
            images = np.empty((layout.stored, *self.image_shape), dtype=np.uint8)
            with open(layout.path, "rb", buffering=0) as handle:
                handle.seek(layout.images_offset)
                self._fill(handle, images.reshape(-1), layout.path)
            if layout.path not in self._checked:
                check_shard(layout.path, layout.sha256)
                self._checked.add(layout.path)
            yield images if layout.rows is None else images[layout.rows]

    @staticmethod
    def _fill(handle: Any, out: np.ndarray, path: Path) -> None:
        if handle.readinto(out) != out.nbytes:
            raise PipelineError(f"{path}: shorter than its header says")
