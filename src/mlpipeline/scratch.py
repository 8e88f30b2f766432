"""Ingest's per-image records on disk, so memory holds a few bytes an image, not its pixels.

Ingest decodes every image once, before it can split (duplicates and the split are decided
from all of them), then writes each split in turn. The decoded pixels, both sha256 digests
and the names wait in unnamed temporary files beside the output (``TemporaryFile``: no name
to leave behind, even after a SIGKILL), written and read with plain file I/O: pages of a
memory-mapped file that a process writes count in its RSS, the page cache does not. Memory
keeps only fixed-size columns: label, a 4-byte digest prefix, the pixel mode and two flags.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mlpipeline.decoding import DIGEST_BYTES, DecodedBatch
from mlpipeline.sources import RawSample

_LENGTH = struct.Struct("<I")


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
    """Append decoded batches in source order; read back pixels by row and records in order."""

    def __init__(self, directory: Path, row_shape: Sequence[int]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._files = ExitStack()
        self._pixels = self._unnamed(directory)
        self._digests = self._unnamed(directory)  # file sha256 then pixel sha256, per row
        self._names = self._unnamed(directory)  # length-prefixed UTF-8
        self.row_shape = tuple(row_shape)
        self.row_bytes = int(np.prod(self.row_shape))
        self.labels = Column(np.int32)
        self.keys = Column(np.uint32)  # the pixel digest's first 4 bytes: duplicate candidates
        self.modes = Column(np.uint8)  # index into mode_names
        self.converted = Column(np.bool_)
        self.rotated = Column(np.bool_)
        self.mode_names: list[str] = []
        self.errors: dict[int, str] = {}  # row -> why the file was refused

    @property
    def count(self) -> int:
        return self.labels.size

    def append(self, samples: Sequence[RawSample], labels: np.ndarray, batch: DecodedBatch) -> None:
        start = self.count
        self._pixels.write(batch.pixels.tobytes())
        self._digests.write(np.concatenate([batch.file_digests, batch.pixel_digests], axis=1).tobytes())
        for sample in samples:
            encoded = sample.name.encode("utf-8")
            self._names.write(_LENGTH.pack(len(encoded)) + encoded)
        self.labels.extend(labels)
        self.keys.extend(batch.pixel_digests[:, :4].copy().view("<u4").ravel())
        self.modes.extend(np.array([self._mode_code(m) for m in batch.modes], dtype=np.uint8))
        self.converted.extend(batch.converted)
        self.rotated.extend(batch.rotated)
        self.errors.update({start + i: e for i, e in enumerate(batch.errors) if e is not None})

    def flush(self) -> None:
        for handle in (self._pixels, self._digests, self._names):
            handle.flush()

    def pixel_digest(self, row: int) -> bytes:
        return os.pread(self._digests.fileno(), DIGEST_BYTES, row * 2 * DIGEST_BYTES + DIGEST_BYTES)

    def pixels(self, rows: np.ndarray) -> np.ndarray:
        """The decoded images of ``rows`` (ascending), read in one span when they lie close."""
        first, last = int(rows[0]), int(rows[-1])
        if last - first + 1 <= 2 * len(rows):
            span = self._read(first, last - first + 1)
            return span[rows - first]
        return np.concatenate([self._read(int(r), 1) for r in rows])

    def records(self) -> Iterator[tuple[str, bytes, bytes]]:
        """(name, file sha256, pixel sha256) of every row, in order, read sequentially."""
        self._names.seek(0)
        self._digests.seek(0)
        for _ in range(self.count):
            (length,) = _LENGTH.unpack(self._names.read(_LENGTH.size))
            digests = self._digests.read(2 * DIGEST_BYTES)
            yield self._names.read(length).decode("utf-8"), digests[:DIGEST_BYTES], digests[DIGEST_BYTES:]

    def close(self) -> None:
        self._files.close()

    def _unnamed(self, directory: Path) -> BinaryIO:
        # Open for the scratch's lifetime, closed (and so deleted) by close().
        return self._files.enter_context(tempfile.TemporaryFile(dir=directory))

    def _read(self, row: int, count: int) -> np.ndarray:
        data = os.pread(self._pixels.fileno(), count * self.row_bytes, row * self.row_bytes)
        return np.frombuffer(data, dtype=np.uint8).reshape(count, *self.row_shape)

    def _mode_code(self, mode: str) -> int:
        if mode not in self.mode_names:
            self.mode_names.append(mode)
        return self.mode_names.index(mode)
