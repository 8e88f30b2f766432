"""Writing the dataset format (``core.shards``): size-bounded shards, then ``dataset.json``,
the whole directory appearing at once."""

from __future__ import annotations

import math
import mmap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from mlpipeline.core import atomic
from mlpipeline.core.shards import META_FILE, SHARD_SUFFIX, DatasetInfo, SplitInfo, file_sha256, pack_mask

MAX_SHARD_BYTES = 32 * 1024 * 1024
# Unix maps anonymous memory shared unless told otherwise; Windows' mmap takes no flags.
PRIVATE_MAP = {"flags": mmap.MAP_PRIVATE} if hasattr(mmap, "MAP_PRIVATE") else {}


@dataclass(frozen=True)
class StoredShard:
    """A shard as a writer records it: its file, and which of its stored rows are live."""

    name: str
    sha256: str
    labels: np.ndarray  # as stored, int64 one a row
    live: np.ndarray | None = None  # bool a row; None: all live
    held_out: np.ndarray | None = None  # bool a row; None: none
    classes: list[str] | None = None  # the class names the stored labels index; None: the dataset's


class DatasetWriter:
    """Stream batches into size-bounded shards; the directory appears only on success.

    Use as a context manager. Batches are copied into one shard-sized buffer
    per split, flushed as a shard whenever ``shard_images`` images have
    accumulated. Copying (not keeping the callers' arrays) means a caller may
    reuse its arrays, and memory holds one buffer per split, not many small
    arrays interleaved with a stage's large temporaries, which fragmented the
    heap and tripled the peak RSS of a long synthesize run. Each buffer is a
    memory map of its own (``mapped_empty``), dropped once its shard is
    written: a split written earlier holds only the pages of its unfinished
    shard, not a whole shard's until the last split is done.
    """

    def __init__(
        self,
        out_dir: Path | str,
        classes: Sequence[str],
        image_shape: Sequence[int],
        attributes: dict[str, Any] | None = None,
        max_shard_bytes: int | None = None,  # default MAX_SHARD_BYTES
    ) -> None:
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
        self.out_dir = Path(out_dir)
        self.classes = list(classes)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.attributes = dict(attributes or {})
        self.shard_images = shard_images(self.image_shape, max_shard_bytes)
        self._buffers: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._pending_count: dict[str, int] = {}
        self._shards: dict[str, list[_Recorded]] = {}
        self._tmp_cm = None
        self._tmp: Path | None = None

    def __enter__(self) -> DatasetWriter:
        self._tmp_cm = atomic.directory(self.out_dir)
        self._tmp = self._tmp_cm.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool | None:
        assert self._tmp_cm is not None
        if exc_type is None:
            try:
                self._finish()
            except BaseException as error:
                return self._tmp_cm.__exit__(type(error), error, error.__traceback__)
        return self._tmp_cm.__exit__(exc_type, exc, tb)

    def add_split(self, split: str) -> None:
        """Declare a split so it is recorded even if it receives no images."""
        self._pending_count.setdefault(split, 0)
        self._shards.setdefault(split, [])

    def write(self, split: str, images: np.ndarray, labels: np.ndarray) -> None:
        """Append a batch of images (uint8, N x C x H x W) and labels (int N) to ``split``."""
        if self._tmp is None:
            raise RuntimeError("DatasetWriter must be used as a context manager")
        images, labels = self._checked(images, labels)
        self.add_split(split)
        start = 0
        while start < len(images):
            filled = self._pending_count[split]
            take = min(self.shard_images - filled, len(images) - start)
            buffer_images, buffer_labels = self._buffer(split)
            buffer_images[filled : filled + take] = images[start : start + take]
            buffer_labels[filled : filled + take] = labels[start : start + take]
            self._pending_count[split] += take
            start += take
            if self._pending_count[split] == self.shard_images:
                self._flush(split)

    @property
    def directory(self) -> Path:
        """Where the shards are written until the dataset is complete."""
        if self._tmp is None:
            raise RuntimeError("DatasetWriter must be used as a context manager")
        return self._tmp

    @staticmethod
    def shard_name(split: str, index: int) -> str:
        return f"{split}-{index:05d}{SHARD_SUFFIX}"

    def add_shard(self, split: str, shard: StoredShard) -> None:
        """Record, as the next of ``split``, a shard put into ``directory`` elsewhere (written by a
        worker process, or a previous version's file copied). Not to be mixed with ``write``."""
        self.add_split(split)
        names = {s.name for stored in self._shards.values() for s in stored}
        if self._pending_count[split] or shard.name in names:
            raise ValueError(f"{shard.name} cannot be added to {split}")
        self._shards[split].append(self._recorded(shard))

    def add_file(self, name: str, data: bytes) -> None:
        """Store a small metadata file (a manifest, say) beside the shards."""
        (self.directory / name).write_bytes(data)

    def _checked(self, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != self.image_shape:
            raise ValueError(
                f"images must be uint8 N x {self.image_shape}, got {images.dtype} {images.shape}"
            )
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise ValueError(
                f"labels must lie in [0, {len(self.classes)}), got {labels.min()}..{labels.max()}"
            )
        return images, labels

    def _buffer(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in self._buffers:
            self._buffers[split] = (
                mapped_empty((self.shard_images, *self.image_shape), np.uint8),
                mapped_empty((self.shard_images,), np.int64),
            )
        return self._buffers[split]

    def _flush(self, split: str) -> None:
        count = self._pending_count[split]
        if count == 0:
            return
        images, labels = self._buffers[split]
        name = self.shard_name(split, len(self._shards[split]))
        sha256 = write_shard(self.directory / name, images[:count], labels[:count])
        self._shards[split].append(self._recorded(StoredShard(name, sha256, labels[:count])))
        self._pending_count[split] = 0
        del self._buffers[split]  # its pages go back now, not when the last split is done

    def _finish(self) -> None:
        for split in self._pending_count:
            self._flush(split)
        self._buffers.clear()
        splits = {split: self._split_info(self._shards[split]) for split in sorted(self._shards)}
        info = DatasetInfo(self.classes, self.image_shape, splits, self.attributes)
        assert self._tmp is not None
        atomic.write_json(self._tmp / META_FILE, info.to_json())

    def _recorded(self, shard: StoredShard) -> _Recorded:
        """What dataset.json keeps of a shard: its live rows per class, not a label a row (the
        writer's memory would grow with the data)."""
        labels = shard.labels if shard.live is None else shard.labels[shard.live]
        classes = None
        if shard.classes is not None and shard.classes != self.classes:
            index = {name: i for i, name in enumerate(self.classes)}
            labels = np.array([index[shard.classes[label]] for label in labels], dtype=np.int64)
            classes = list(shard.classes)
        return _Recorded(
            shard.name,
            shard.sha256,
            len(shard.labels),
            np.bincount(labels, minlength=len(self.classes)),
            pack_mask(shard.live) if shard.live is not None and not shard.live.all() else None,
            pack_mask(shard.held_out) if shard.held_out is not None and shard.held_out.any() else None,
            classes,
        )

    def _split_info(self, shards: list[_Recorded]) -> SplitInfo:
        counts = sum((shard.class_counts for shard in shards), np.zeros(len(self.classes), dtype=np.int64))
        return SplitInfo(
            count=int(counts.sum()),
            class_counts=[int(c) for c in counts],
            shards=[shard.name for shard in shards],
            sha256={shard.name: shard.sha256 for shard in shards},
            rows={shard.name: shard.rows for shard in shards},
            live={shard.name: shard.live for shard in shards if shard.live is not None},
            held_out={shard.name: shard.held_out for shard in shards if shard.held_out is not None},
            classes={shard.name: shard.classes for shard in shards if shard.classes is not None},
        )


@dataclass(frozen=True)
class _Recorded:
    name: str
    sha256: str
    rows: int
    class_counts: np.ndarray  # live rows per class of the dataset
    live: str | None  # packed masks, where not every row is live / where some row is held out
    held_out: str | None
    classes: list[str] | None


def shard_images(image_shape: Sequence[int], max_shard_bytes: int | None = None) -> int:
    """Images a full shard holds: ``max_shard_bytes`` (default ``MAX_SHARD_BYTES``) of pixels."""
    shard_bytes = MAX_SHARD_BYTES if max_shard_bytes is None else max_shard_bytes
    return max(1, shard_bytes // math.prod(image_shape))


def write_shard(path: Path, images: np.ndarray, labels: np.ndarray) -> str:
    """Write one shard file; the sha256 of its bytes (for ``dataset.json``)."""
    save_file({"images": images, "labels": labels}, path)  # no 32 MB bytes copy
    return file_sha256(path)  # from the page cache


def mapped_empty(shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
    """An array in an anonymous memory map of its own, not in the C heap: dropped, its pages go
    back to the system at once whatever the allocator's thresholds, leaving no hole in the heap,
    and pages never written never become resident."""
    count = math.prod(shape)
    pages = mmap.mmap(-1, max(1, count * np.dtype(dtype).itemsize), **PRIVATE_MAP)
    return np.frombuffer(pages, dtype=dtype, count=count).reshape(shape)
