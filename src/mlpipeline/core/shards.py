"""The on-disk dataset format every stage reads and writes.

A dataset is one directory::

    dataset.json                  classes, image shape, per-split counts, shard list and
                                  each shard's sha256
    <split>-00000.safetensors     "images" uint8 N x C x H x W, "labels" int64 N

Few, size-bounded files keep DVC hashing and S3 transfers cheap; safetensors is
safe to load (no pickle) and byte-deterministic for the same arrays, so equal
inputs give equal md5s. Shards are read one at a time, so memory stays bounded
by the shard size, not the dataset size. The shard fingerprints are hashed from
the bytes as they are written, so ``dataset.json`` alone identifies the data:
whoever needs a key for it (training's checkpoints) hashes that one small file
instead of re-reading gigabytes of shards.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from mlpipeline.core import atomic
from mlpipeline.core.errors import PipelineError

FORMAT_VERSION = 2  # 2: shard fingerprints (sha256) in dataset.json
META_FILE = "dataset.json"
MAX_SHARD_BYTES = 32 * 1024 * 1024
# Unix maps anonymous memory shared unless told otherwise; Windows' mmap takes no flags.
PRIVATE_MAP = {"flags": mmap.MAP_PRIVATE} if hasattr(mmap, "MAP_PRIVATE") else {}


@dataclass(frozen=True)
class SplitInfo:
    count: int
    class_counts: list[int]
    shards: list[str]
    sha256: dict[str, str]  # shard name -> hex digest of its bytes


@dataclass(frozen=True)
class DatasetInfo:
    """What ``dataset.json`` records: enough to read the shards and to build a model."""

    classes: list[str]
    image_shape: tuple[int, int, int]
    splits: dict[str, SplitInfo]
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "classes": list(self.classes),
            "image_shape": list(self.image_shape),
            "splits": {
                name: {
                    "count": s.count,
                    "class_counts": s.class_counts,
                    "shards": s.shards,
                    "sha256": s.sha256,
                }
                for name, s in self.splits.items()
            },
            "attributes": self.attributes,
        }


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
        shard_bytes = MAX_SHARD_BYTES if max_shard_bytes is None else max_shard_bytes
        self.shard_images = max(1, shard_bytes // int(np.prod(self.image_shape)))
        self._buffers: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._pending_count: dict[str, int] = {}
        self._shards: dict[str, list[str]] = {}
        self._sha256: dict[str, str] = {}
        self._class_counts: dict[str, np.ndarray] = {}
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
        self._class_counts.setdefault(split, np.zeros(len(self.classes), dtype=np.int64))

    def write(self, split: str, images: np.ndarray, labels: np.ndarray) -> None:
        """Append a batch of images (uint8, N x C x H x W) and labels (int N) to ``split``."""
        if self._tmp is None:
            raise RuntimeError("DatasetWriter must be used as a context manager")
        images, labels = self._checked(images, labels)
        self.add_split(split)
        self._class_counts[split] += np.bincount(labels, minlength=len(self.classes))
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
        return f"{split}-{index:05d}.safetensors"

    def add_shard(self, split: str, name: str, sha256: str, labels: np.ndarray) -> None:
        """Record a shard written into ``directory`` by ``write_shard`` elsewhere (a worker
        process), as the next of ``split``: shards of ``shard_images`` images, the last one
        maybe fewer, named ``shard_name(split, index)``. Not to be mixed with ``write``."""
        self.add_split(split)
        if self._pending_count[split] or name != self.shard_name(split, len(self._shards[split])):
            raise ValueError(f"{name} is not the next shard of {split}")
        self._class_counts[split] += np.bincount(labels, minlength=len(self.classes))
        self._sha256[name] = sha256
        self._shards[split].append(name)

    def add_file(self, name: str, data: bytes) -> None:
        """Store a small metadata file (a manifest, say) beside the shards."""
        (self.directory / name).write_bytes(data)

    @contextmanager
    def open_file(self, name: str) -> Iterator[BinaryIO]:
        """Stream a metadata file too large to build in memory (a million-row manifest) beside the shards."""
        with open(self.directory / name, "wb") as handle:
            yield handle

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
        self._sha256[name] = write_shard(self.directory / name, images[:count], labels[:count])
        self._shards[split].append(name)
        self._pending_count[split] = 0
        del self._buffers[split]  # its pages go back now, not when the last split is done

    def _finish(self) -> None:
        for split in self._pending_count:
            self._flush(split)
        self._buffers.clear()
        splits = {
            split: SplitInfo(
                count=int(self._class_counts[split].sum()),
                class_counts=[int(c) for c in self._class_counts[split]],
                shards=self._shards[split],
                sha256={name: self._sha256[name] for name in self._shards[split]},
            )
            for split in sorted(self._shards)
        }
        info = DatasetInfo(self.classes, self.image_shape, splits, self.attributes)
        assert self._tmp is not None
        atomic.write_json(self._tmp / META_FILE, info.to_json())


def write_shard(path: Path, images: np.ndarray, labels: np.ndarray) -> str:
    """Write one shard file; the sha256 of its bytes (for ``dataset.json``)."""
    save_file({"images": images, "labels": labels}, path)  # no 32 MB bytes copy
    return file_sha256(path)  # from the page cache


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def check_shard(path: Path, sha256: str | None) -> None:
    """Refuse a shard whose bytes are not those ``dataset.json`` records (None: not recorded).

    Called right after a shard was read whole, so its bytes come from the page cache: hashing
    costs little beside the read (``bench/shard_check.py``). DVC does not catch this: ``dvc
    status`` and ``dvc checkout`` rehash a file only when its size, mtime or inode changed."""
    if sha256 is not None and file_sha256(path) != sha256:
        raise PipelineError(
            f"{path}: its bytes differ from the sha256 {META_FILE} records (changed after the stage "
            f"wrote it, maybe keeping its size and mtime, which dvc status trusts); restore it with "
            f"dvc checkout --relink {path} (if the bytes stay wrong, the cache copy is damaged too: "
            "make verify names it, dvc pull restores it)"
        )


def mapped_empty(shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
    """An array in an anonymous memory map of its own, not in the C heap: dropped, its pages go
    back to the system at once whatever the allocator's thresholds, leaving no hole in the heap,
    and pages never written never become resident."""
    count = math.prod(shape)
    pages = mmap.mmap(-1, max(1, count * np.dtype(dtype).itemsize), **PRIVATE_MAP)
    return np.frombuffer(pages, dtype=dtype, count=count).reshape(shape)


class Dataset:
    """Read access to a dataset directory written by ``DatasetWriter``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.info = read_info(self.root)

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.info.image_shape

    @property
    def splits(self) -> list[str]:
        return list(self.info.splits)

    def count(self, split: str) -> int:
        return self._split(split).count

    def iter_shards(self, split: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (images, labels) one shard at a time: memory bounded by one shard."""
        info = self._split(split)
        for name in info.shards:
            yield self._read_shard(self.root / name, info.sha256[name])

    def load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The whole split in memory; for splits known to be small (val, test, training sets)."""
        parts = list(self.iter_shards(split))
        if not parts:
            c, h, w = self.image_shape
            return np.empty((0, c, h, w), np.uint8), np.empty((0,), np.int64)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _split(self, split: str) -> SplitInfo:
        try:
            return self.info.splits[split]
        except KeyError:
            raise PipelineError(f"{self.root / META_FILE}: has no split '{split}' (has {self.splits})")

    def _read_shard(self, path: Path, sha256: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            # pread, not the default memory map, whose file pages stayed resident beside the arrays
            tensors = load_file(path, backend="pread")
        except FileNotFoundError:
            raise PipelineError(f"{path}: shard listed in {META_FILE} is missing")
        except (SafetensorError, OSError, ValueError) as exc:
            raise PipelineError(f"{path}: not a readable safetensors shard ({exc})")
        check_shard(path, sha256)
        images, labels = tensors.get("images"), tensors.get("labels")
        if images is None or labels is None:
            raise PipelineError(f"{path}: shard must hold 'images' and 'labels' tensors")
        if images.dtype != np.uint8 or images.shape[1:] != self.image_shape or labels.dtype != np.int64:
            raise PipelineError(
                f"{path}: expected uint8 images N x {self.image_shape} and int64 labels, "
                f"got {images.dtype} {images.shape} and {labels.dtype}"
            )
        return images, labels


def read_info(root: Path | str) -> DatasetInfo:
    """Parse and check ``dataset.json``; errors name the file."""
    path = Path(root) / META_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found (has the stage that writes {Path(root)} run?)")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: not valid JSON ({exc})")
    try:
        check_version(raw["format_version"], path)
        splits = {name: _split_info(s) for name, s in raw["splits"].items()}
        shape = tuple(int(d) for d in raw["image_shape"])
        return DatasetInfo(list(raw["classes"]), shape, splits, dict(raw.get("attributes", {})))  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError) as exc:
        raise PipelineError(f"{path}: malformed dataset metadata ({exc!r})")


def check_version(version: object, path: Path) -> None:
    """Refuse any other format version. Version 1 lacks the shard fingerprints that training's
    checkpoint key relies on, and every stage lists ``core`` as a DVC dependency, so ``dvc repro``
    rewrites such a dataset anyway: reading it half-way would only hide a stale workspace."""
    if version == FORMAT_VERSION:
        return
    if isinstance(version, int) and version < FORMAT_VERSION:
        raise PipelineError(
            f"{path}: format_version {version}, written by an older mlpipeline without shard "
            f"fingerprints; rerun the stage that writes it (dvc repro)"
        )
    raise PipelineError(f"{path}: format_version {version}, expected {FORMAT_VERSION}")


def _split_info(raw: dict[str, Any]) -> SplitInfo:
    shards = list(raw["shards"])
    sha256 = {str(name): str(digest) for name, digest in raw["sha256"].items()}
    if sorted(sha256) != sorted(shards):
        raise ValueError(f"sha256 lists {sorted(sha256)}, shards are {sorted(shards)}")
    return SplitInfo(int(raw["count"]), [int(c) for c in raw["class_counts"]], shards, sha256)


# Random access to a split's rows, for the training loader: batches of rows in any order, each
# row read from its shard at its raw offset, so memory holds the rows asked for, never the split.

_HEADER_LENGTH = struct.Struct("<Q")  # safetensors: a little-endian u64, then that many bytes of JSON
_DTYPES = {"images": "U8", "labels": "I64"}


@dataclass(frozen=True)
class ShardLayout:
    """Where a shard's images lie in its file, and its labels (8 bytes an image, read whole)."""

    path: Path
    images_offset: int  # of the first image's first byte
    labels: np.ndarray
    sha256: str | None = None  # as dataset.json records it, checked when the shard is read whole


def shard_layout(path: Path, image_shape: tuple[int, int, int], sha256: str | None = None) -> ShardLayout:
    """Read a shard's header and labels, not its images; refuse, naming the file, what
    ``Dataset`` would refuse."""
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
    return ShardLayout(path, start + header["images"]["data_offsets"][0], labels, sha256)


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
    """The rows of one or more splits (``concat``), read at random.

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
        dataset.count(split)  # a missing split fails here, naming the file
        info = dataset.info.splits[split]
        return cls(
            dataset.image_shape,
            [
                shard_layout(dataset.root / name, dataset.image_shape, info.sha256[name])
                for name in info.shards
            ],
        )

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
                    handle.seek(layout.images_offset + int(rows[i] - self.starts[shard]) * self.row_bytes)
                    self._fill(handle, flat[i], layout.path)

    def shards(self) -> Iterator[np.ndarray]:
        """Each shard's images in turn, read whole and checked against its sha256: memory bounded
        by one shard."""
        for layout in self.layouts:
            images = np.empty((len(layout.labels), *self.image_shape), dtype=np.uint8)
            with open(layout.path, "rb", buffering=0) as handle:
                handle.seek(layout.images_offset)
                self._fill(handle, images.reshape(-1), layout.path)
            if layout.path not in self._checked:
                check_shard(layout.path, layout.sha256)
                self._checked.add(layout.path)
            yield images

    @staticmethod
    def _fill(handle: Any, out: np.ndarray, path: Path) -> None:
        if handle.readinto(out) != out.nbytes:
            raise PipelineError(f"{path}: shorter than its header says")
