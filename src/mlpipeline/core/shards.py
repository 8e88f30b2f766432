"""The on-disk dataset format every stage reads and writes.

A dataset is one directory (``core.shard_writer`` writes it)::

    dataset.json                  classes, image shape, per-split counts, shard list,
                                  each shard's sha256 and row count, and which rows are live
    <split>-00000.safetensors     "images" uint8 N x C x H x W, "labels" int64 N

Few, size-bounded files keep DVC hashing and S3 transfers cheap; safetensors is
safe to load (no pickle) and byte-deterministic for the same arrays, so equal
inputs give equal md5s. Shards are read one at a time, so memory stays bounded
by the shard size, not the dataset size. The shard fingerprints are hashed from
the bytes as they are written, so ``dataset.json`` alone identifies the data:
whoever needs a key for it (training's checkpoints) hashes that one small file
instead of re-reading gigabytes of shards.

A shard, once written, is never rewritten while a dataset grows (docs/growing.md): a new
version keeps the previous version's shard files, so DVC stores and moves only new ones. So
``dataset.json`` may say, per shard, which of its rows are live (``live``: a removed or
relabelled image is a dead row until compaction), which are held out (``held_out``: ingest's
``keep_train_fraction``) and which class names its stored labels index, where those are not the
dataset's (``classes``: a class list that grew). Every reader goes through ``Dataset`` or
``shard_rows.SplitReader``, which honour all three in one place: a reader sees live rows only,
labelled by the dataset's classes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from mlpipeline.core.errors import PipelineError

FORMAT_VERSION = 3  # 2: shard fingerprints (sha256); 3: rows per shard, live rows, class maps
META_FILE = "dataset.json"
SHARD_SUFFIX = ".safetensors"


def pack_mask(mask: np.ndarray) -> str:
    """A boolean row mask as dataset.json stores it: its bits, little-endian, in base64 (a row
    costs an eighth of a byte, so a version's masks stay small beside its shards)."""
    return base64.b64encode(np.packbits(mask, bitorder="little").tobytes()).decode("ascii")


def unpack_mask(text: str, rows: int) -> np.ndarray:
    """The boolean mask of ``rows`` rows that ``pack_mask`` wrote; ValueError if it is not one."""
    try:
        packed = np.frombuffer(base64.b64decode(text, validate=True), dtype=np.uint8)
    except (binascii.Error, TypeError) as exc:
        raise ValueError(f"a row mask is not base64 ({exc})")
    if len(packed) != (rows + 7) // 8:
        raise ValueError(f"a row mask holds {len(packed) * 8} bits for {rows} rows")
    return np.unpackbits(packed, count=rows, bitorder="little").astype(bool)


@dataclass(frozen=True)
class SplitInfo:
    count: int  # live rows
    class_counts: list[int]  # live rows per class
    shards: list[str]
    sha256: dict[str, str]  # shard name -> hex digest of its bytes
    rows: dict[str, int]  # shard name -> rows it stores, live or not
    live: dict[str, str] = field(default_factory=dict)  # shard -> packed mask, where some row is dead
    held_out: dict[str, str] = field(default_factory=dict)  # shard -> packed mask of held-out rows
    classes: dict[str, list[str]] = field(default_factory=dict)  # shard -> what its labels index

    def live_rows(self, name: str) -> np.ndarray | None:
        """The live rows of shard ``name`` (ascending), or None when every row is live."""
        if name not in self.live:
            return None
        return np.flatnonzero(unpack_mask(self.live[name], self.rows[name]))

    def held_out_rows(self, name: str) -> np.ndarray:
        """The rows of shard ``name`` that are kept but held out of training (ascending)."""
        if name not in self.held_out:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(unpack_mask(self.held_out[name], self.rows[name]))

    def to_json(self) -> dict[str, Any]:
        extra = {key: value for key in ("live", "held_out", "classes") if (value := getattr(self, key))}
        return {
            "count": self.count,
            "class_counts": self.class_counts,
            "shards": self.shards,
            "sha256": self.sha256,
            "rows": self.rows,
            **extra,
        }


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
            "splits": {name: s.to_json() for name, s in self.splits.items()},
            "attributes": self.attributes,
        }

    def label_map(self, split: str, shard: str) -> np.ndarray | None:
        """Stored label -> the dataset's class index (-1: a class it no longer has) for a shard
        whose labels index another class list; None where they index the dataset's."""
        names = self.splits[split].classes.get(shard)
        if names is None:
            return None
        index = {name: i for i, name in enumerate(self.classes)}
        return np.array([index.get(name, -1) for name in names], dtype=np.int64)


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


def read_shard(
    path: Path, image_shape: tuple[int, int, int], sha256: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Every row a shard file stores, labels as stored, checked against ``sha256``."""
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
    if images.dtype != np.uint8 or images.shape[1:] != image_shape or labels.dtype != np.int64:
        raise PipelineError(
            f"{path}: expected uint8 images N x {image_shape} and int64 labels, "
            f"got {images.dtype} {images.shape} and {labels.dtype}"
        )
    return images, labels


class Dataset:
    """Read access to a dataset directory written by ``DatasetWriter``: its live rows."""

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
        return self.split_info(split).count

    def iter_shards(self, split: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield the live (images, labels) one shard at a time: memory bounded by one shard."""
        for name in self.split_info(split).shards:
            yield self._live(split, name)  # no local holds a shard while the next one is read

    def _live(self, split: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        images, labels = self.read_stored(split, name)
        labels = self.live_labels(split, name, labels)
        rows = self.split_info(split).live_rows(name)
        return (images, labels) if rows is None else (images[rows], labels[rows])

    def read_stored(self, split: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Every row shard ``name`` stores, dead ones too, labels as stored: for a stage whose
        output mirrors the shards (augment) and for ``iter_shards``."""
        info = self.split_info(split)
        images, labels = read_shard(self.root / name, self.image_shape, info.sha256[name])
        if len(labels) != info.rows[name]:
            raise PipelineError(
                f"{self.root / name}: holds {len(labels)} rows, {META_FILE} says {info.rows[name]}"
            )
        return images, labels

    def live_labels(self, split: str, name: str, stored: np.ndarray) -> np.ndarray:
        """Shard ``name``'s stored labels as the dataset's class indices (-1 on dead rows of a
        class the dataset no longer has); a live row of no class is refused."""
        info, mapping = self.split_info(split), self.info.label_map(split, name)
        if mapping is None:
            return stored
        if len(stored) and (stored.min() < 0 or stored.max() >= len(mapping)):
            raise PipelineError(f"{self.root / name}: labels outside its {len(mapping)} recorded classes")
        labels = mapping[stored]
        rows = info.live_rows(name)
        if (labels if rows is None else labels[rows]).min(initial=0) < 0:
            raise PipelineError(f"{self.root / META_FILE}: a live row of {name} has a class it does not list")
        return labels

    def load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The whole split in memory; for splits known to be small (val, test, training sets)."""
        parts = list(self.iter_shards(split))
        if not parts:
            c, h, w = self.image_shape
            return np.empty((0, c, h, w), np.uint8), np.empty((0,), np.int64)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def split_info(self, split: str) -> SplitInfo:
        try:
            return self.info.splits[split]
        except KeyError:
            raise PipelineError(f"{self.root / META_FILE}: has no split '{split}' (has {self.splits})")


def read_info(root: Path | str) -> DatasetInfo:
    """Parse and check ``dataset.json``; errors name the file."""
    path = Path(root) / META_FILE
    try:
        return parse_info(path.read_bytes(), path)
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found (has the stage that writes {Path(root)} run?)")


def parse_info(data: bytes, path: Path | str) -> DatasetInfo:
    """``dataset.json``'s bytes, parsed and checked; errors name ``path`` (where they came from)."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: not valid JSON ({exc})")
    try:
        check_version(raw["format_version"], path)
        splits = {name: _split_info(s) for name, s in raw["splits"].items()}
        shape = tuple(int(d) for d in raw["image_shape"])
        return DatasetInfo(list(raw["classes"]), shape, splits, dict(raw.get("attributes", {})))  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError) as exc:
        raise PipelineError(f"{path}: malformed dataset metadata ({exc!r})")


def check_version(version: object, path: Path | str) -> None:
    """Refuse any other format version. Older versions lack the shard fingerprints that training's
    checkpoint key relies on, or the rows and live masks of a growing dataset, and every stage
    lists ``core`` as a DVC dependency, so ``dvc repro`` rewrites such a dataset anyway: reading it
    half-way would only hide a stale workspace."""
    if version == FORMAT_VERSION:
        return
    if isinstance(version, int) and version < FORMAT_VERSION:
        raise PipelineError(
            f"{path}: format_version {version}, written by an older mlpipeline; rerun the stage "
            "that writes it (dvc repro)"
        )
    raise PipelineError(f"{path}: format_version {version}, expected {FORMAT_VERSION}")


def _split_info(raw: dict[str, Any]) -> SplitInfo:
    shards = list(raw["shards"])
    sha256 = {str(name): str(digest) for name, digest in raw["sha256"].items()}
    rows = {str(name): int(count) for name, count in raw["rows"].items()}
    for what, keys in (("sha256", sha256), ("rows", rows)):
        if sorted(keys) != sorted(shards):
            raise ValueError(f"{what} lists {sorted(keys)}, shards are {sorted(shards)}")
    info = SplitInfo(
        int(raw["count"]),
        [int(c) for c in raw["class_counts"]],
        shards,
        sha256,
        rows,
        live={str(k): str(v) for k, v in raw.get("live", {}).items()},
        held_out={str(k): str(v) for k, v in raw.get("held_out", {}).items()},
        classes={str(k): [str(c) for c in v] for k, v in raw.get("classes", {}).items()},
    )
    for masks in (info.live, info.held_out, info.classes):
        if not set(masks) <= set(shards):
            raise ValueError(f"row records for shards not listed: {sorted(set(masks) - set(shards))}")
    for name in info.live:
        info.live_rows(name)  # a mask of the wrong length fails here, naming the file
    for name in info.held_out:
        info.held_out_rows(name)
    return info
