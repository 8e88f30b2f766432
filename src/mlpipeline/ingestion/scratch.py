"""Ingest's per-image records on disk, so memory holds a few bytes an image, not its pixels.

Ingest decodes every image once, before it can split (duplicates and the split are decided
from all of them), then writes each split in turn. The decoded pixels, both sha256 digests
and the names wait in unnamed temporary files beside the output (``TemporaryFile``: no name
to leave behind, even after a SIGKILL), written and read with plain file I/O: pages of a
memory-mapped file that a process writes count in its RSS, the page cache does not. Memory
keeps only fixed-size columns: label, a 4-byte digest prefix, the pixel mode and two flags, the
8-byte key its split is hashed from, its pinned split and the previous version's row it is.
Records are read back a block of rows at a time: a read call a row cost as much as the row.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from mlpipeline.core.workers import SharedFile
from mlpipeline.ingestion.decoding import DIGEST_BYTES, DecodedBatch
from mlpipeline.ingestion.sources import RawSample
from mlpipeline.ingestion.splitting import SPLITS

# A row's record: the file's and the pixels' sha256, and the length of its UTF-8 name.
RECORD = np.dtype([("file", "u1", DIGEST_BYTES), ("pixels", "u1", DIGEST_BYTES), ("name_bytes", "<u4")])
RECORD_BLOCK = 16_384  # rows whose records are read back at once


def group_key(group: str) -> int:
    """A manifest group's name as the 64-bit key its images' split is hashed from."""
    return int.from_bytes(hashlib.blake2b(f"group\0{group}".encode(), digest_size=8).digest(), "little")


def pin_code(split: str | None) -> int:
    return -1 if split is None else SPLITS.index(split)


class Column:
    """A growable numpy array: amortized appends, one contiguous block, no per-item objects."""

    def __init__(self, dtype: type) -> None:
        self._data = np.empty(1024, dtype=dtype)
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        end = self.size + len(values)
        if end > len(self._data):
            grown = np.empty(max(end, 2 * len(self._data)), dtype=self._data.dtype)
            grown[: self.size] = self._data[: self.size]
            self._data = grown
        self._data[self.size : end] = values
        self.size = end

    def array(self) -> np.ndarray:
        return self._data[: self.size]


class Scratch:
    """Decoded batches' records, appended in source order and read back in order. Their pixels
    go through ``pixel_file()``, written and read at their rows by the processes that decode
    and that write shards (``scratch_rows``)."""

    def __init__(self, directory: Path, row_shape: Sequence[int]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._files = ExitStack()
        self._pixels = self._unnamed(directory)  # a row of pixels a row
        self._records = self._unnamed(directory)  # a RECORD a row
        self._names = self._unnamed(directory)  # UTF-8, one after the other
        self._names_end = 0
        self.row_shape = tuple(row_shape)
        self.row_bytes = int(np.prod(self.row_shape))
        self.labels = Column(np.int32)
        self.keys = Column(np.uint32)  # the pixel digest's first 4 bytes: duplicate candidates
        self.modes = Column(np.uint8)  # index into mode_names
        self.converted = Column(np.bool_)
        self.rotated = Column(np.bool_)
        self.split_keys = Column(np.uint64)  # what the split hashes: the pixel digest's or group's prefix
        self.pins = Column(np.int8)  # the split a manifest pins (index into SPLITS), -1: none
        self.base_rows = Column(np.int64)  # the previous version's row it is (not decoded), -1: none
        self._mode_codes: dict[str, int] = {}  # pixel mode -> its code in ``modes``
        self.errors: dict[int, str] = {}  # row -> why the file was refused
        self.conflicting: set[int] = set()  # refused rows whose image is filed under several labels

    @property
    def count(self) -> int:
        return self.labels.size

    def pixel_file(self) -> SharedFile:
        """The pixel file, for the processes that decode and write shards: row ``r`` lies at
        ``r * row_bytes``."""
        return self._pixels

    def append(
        self, samples: Sequence[RawSample], labels: np.ndarray, batch: DecodedBatch, base_rows: np.ndarray
    ) -> None:
        """Record a batch: ``batch`` holds the pixel digests and modes of its known rows too
        (``base_rows`` >= 0: the previous version's, taken from its records)."""
        start = self.count
        names = [sample.name.encode("utf-8") for sample in samples]
        records = np.empty(len(names), dtype=RECORD)
        records["file"], records["pixels"] = batch.file_digests, batch.pixel_digests
        records["name_bytes"] = [len(name) for name in names]
        self._records.write_at(records, start * RECORD.itemsize)
        joined = b"".join(names)
        self._names.write_at(joined, self._names_end)
        self._names_end += len(joined)
        self.labels.extend(labels)
        self.keys.extend(batch.pixel_digests[:, :4].copy().view("<u4").ravel())
        codes = self._mode_codes
        self.modes.extend(np.array([codes.setdefault(m, len(codes)) for m in batch.modes], dtype=np.uint8))
        self.converted.extend(batch.converted)
        self.rotated.extend(batch.rotated)
        keys = batch.pixel_digests[:, :8].copy().view("<u8").ravel()
        for i, sample in enumerate(samples):
            if sample.group is not None:
                keys[i] = group_key(sample.group)
        self.split_keys.extend(keys)
        self.pins.extend(np.array([pin_code(sample.split) for sample in samples], dtype=np.int8))
        self.base_rows.extend(base_rows)
        self.errors.update({start + i: e for i, e in enumerate(batch.errors) if e is not None})

    @property
    def mode_names(self) -> list[str]:
        """The pixel modes met so far, by code."""
        return list(self._mode_codes)

    def pixel_digest(self, row: int) -> bytes:
        offset = row * RECORD.itemsize + RECORD.fields["pixels"][1]
        return os.pread(self._records.fd, DIGEST_BYTES, offset)

    def records(self) -> Iterator[tuple[str, bytes, bytes]]:
        """(name, file sha256, pixel sha256) of every row, in order, read a block at a time."""
        name_offset = 0
        for first in range(0, self.count, RECORD_BLOCK):
            count = min(RECORD_BLOCK, self.count - first)
            block = os.pread(self._records.fd, count * RECORD.itemsize, first * RECORD.itemsize)
            records = np.frombuffer(block, dtype=RECORD)
            ends = np.cumsum(records["name_bytes"], dtype=np.int64)
            names = os.pread(self._names.fd, int(ends[-1]), name_offset)
            name_offset += int(ends[-1])
            starts = [0, *ends[:-1].tolist()]
            for begin, end, file_digest, pixel_digest in zip(
                starts, ends.tolist(), records["file"], records["pixels"], strict=True
            ):
                yield names[begin:end].decode("utf-8"), file_digest.tobytes(), pixel_digest.tobytes()

    def close(self) -> None:
        self._files.close()

    def _unnamed(self, directory: Path) -> SharedFile:
        """A file with no name, written and read at offsets (no buffer to flush), open for the
        scratch's lifetime: close() closes it, and so deletes it."""
        return SharedFile(self._files.enter_context(tempfile.TemporaryFile(dir=directory)).fileno())
