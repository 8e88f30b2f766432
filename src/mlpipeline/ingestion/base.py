"""The previous data version as the next ingest needs it (``ingest.base``): every row it stores,
with its source name, label, hashes and place, in a few numpy arrays (about 100 bytes a row: no
name is kept, only a hash of it), and those rows' pixels when a new shard needs them.

A source file whose name is a stored row's and whose bytes hash the same is that row's image:
ingest does not decode it again (``decoding`` skips it), and while its label and split are the
row's too, the row stays where it is (relabelled, it takes a new row, its pixels taken from the
old one). Only the rows' layout is needed for that; the previous version's shard files are read only
for the rows a new shard takes over (compaction, a changed split) and copied for the shards
kept (``history`` says where they come from).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.shards import META_FILE, DatasetInfo, parse_info, read_shard
from mlpipeline.core.workers import SharedFile
from mlpipeline.ingestion.history import VersionFiles
from mlpipeline.ingestion.records import DIGEST_BYTES, parse_records, records_name
from mlpipeline.ingestion.splitting import SPLITS


def name_key(name: str) -> int:
    """A source file's name as a 64-bit key: what a stored row is looked up by."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class BaseShard:
    split: int  # index into SPLITS
    name: str
    sha256: str
    rows: int
    classes: list[str]  # the class names its stored labels index
    first: int  # its first row among the base's rows


class BaseLayout:
    """Every row of every shard of a previous version, in its dataset order."""

    def __init__(self, files: VersionFiles, info: DatasetInfo, classes: list[str]) -> None:
        self.files = files
        self.info = info
        self.shards: list[BaseShard] = []
        for code, split in enumerate(SPLITS):
            split_info = info.splits.get(split)
            for name in split_info.shards if split_info else []:
                shard_classes = split_info.classes.get(name, info.classes)
                first = self.shards[-1].first + self.shards[-1].rows if self.shards else 0
                sha256, rows = split_info.sha256[name], split_info.rows[name]
                self.shards.append(BaseShard(code, name, sha256, rows, shard_classes, first))
        total = self.shards[-1].first + self.shards[-1].rows if self.shards else 0
        self.shard_of = np.repeat(np.arange(len(self.shards), dtype=np.int32), [s.rows for s in self.shards])
        self.split_of = np.array([s.split for s in self.shards], dtype=np.int8)[self.shard_of]
        self.stored_labels = np.zeros(total, dtype=np.int32)  # as the shard stores them
        self.labels = np.zeros(total, dtype=np.int32)  # index into ``classes``; -1: a class gone
        self.file_sha256 = np.zeros((total, DIGEST_BYTES), dtype=np.uint8)
        self.pixel_sha256 = np.zeros((total, DIGEST_BYTES), dtype=np.uint8)
        self.keys = np.zeros(total, dtype=np.uint64)
        self.mode_names: list[str] = []  # the files' pixel modes before conversion, by code
        self.modes = np.zeros(total, dtype=np.uint8)
        self.in_source = np.zeros(total, dtype=bool)  # live or held out: its file was in that source
        self._read_records(classes)
        self._matches = self._match_table()

    def _read_records(self, classes: list[str]) -> None:
        index = {name: i for i, name in enumerate(classes)}
        names = [records_name(shard.name) for shard in self.shards]
        paths = self.files.paths(names)
        for shard, name in zip(self.shards, names, strict=True):
            where = f"{self.files.where}: {name}"
            records = parse_records(paths[name].read_bytes(), where)
            if len(records) != shard.rows:
                raise PipelineError(f"{where}: {len(records)} records, {shard.name} has {shard.rows} rows")
            rows = slice(shard.first, shard.first + shard.rows)
            stored = {name: i for i, name in enumerate(shard.classes)}
            try:
                self.stored_labels[rows] = [stored[c] for c in records.classes]
            except KeyError as exc:
                raise PipelineError(f"{where}: class {exc} is not among the shard's classes")
            self.labels[rows] = [index.get(c, -1) for c in records.classes]
            self.file_sha256[rows] = records.file_sha256
            self.pixel_sha256[rows] = records.pixel_sha256
            self.keys[rows] = [name_key(source) for source in records.source]
            self.modes[rows] = [self._mode_code(mode) for mode in records.mode]
            self.in_source[rows] = self._in_source(shard)

    def _mode_code(self, mode: str) -> int:
        if mode not in self.mode_names:
            self.mode_names.append(mode)
        return self.mode_names.index(mode)

    def _in_source(self, shard: BaseShard) -> np.ndarray:
        split = self.info.splits[SPLITS[shard.split]]
        present = np.ones(shard.rows, dtype=bool)
        live = split.live_rows(shard.name)
        if live is not None:
            present[:] = False
            present[live] = True
            present[split.held_out_rows(shard.name)] = True
        return present

    def _match_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Each key once, sorted, with the row it finds: of rows sharing a name (a file replaced
        or relabelled, then brought back), the one in the source, else the latest."""
        rows = np.arange(len(self.keys))
        order = np.lexsort((rows, self.in_source, self.keys))
        keys = self.keys[order]
        last = np.append(keys[1:] != keys[:-1], True)
        return keys[last], order[last]

    def match(self, keys: np.ndarray) -> np.ndarray:
        """The base row each name key finds (int64), -1 where none."""
        found_keys, found_rows = self._matches
        at = np.minimum(np.searchsorted(found_keys, keys), max(len(found_keys) - 1, 0))
        hit = (found_keys[at] == keys) if len(found_keys) else np.zeros(len(keys), dtype=bool)
        return np.where(hit, found_rows[at] if len(found_keys) else -1, -1).astype(np.int64)

    def fill_pixels(self, base_rows: np.ndarray, scratch_rows: np.ndarray, pixels: SharedFile) -> None:
        """Write the images of ``base_rows`` into the scratch's pixel file at ``scratch_rows``,
        reading each base shard once, and refuse a row whose pixels are not its record's."""
        shape = self.info.image_shape
        row_bytes = int(np.prod(shape))
        shards = self.shard_of[base_rows]
        for shard_index in np.unique(shards):
            shard = self.shards[shard_index]
            path = self.files.paths([shard.name])[shard.name]
            images, _ = read_shard(path, shape, shard.sha256)
            chosen = np.flatnonzero(shards == shard_index)
            for base_row, scratch_row in zip(base_rows[chosen], scratch_rows[chosen], strict=True):
                image = np.ascontiguousarray(images[base_row - shard.first])
                if hashlib.sha256(image).digest() != self.pixel_sha256[base_row].tobytes():
                    where = f"{self.files.where}: {shard.name} row {base_row - shard.first}"
                    raise PipelineError(f"{where}: not the image its record names")
                pixels.write_at(image, int(scratch_row) * row_bytes)


def open_base(
    files: VersionFiles, classes: list[str], attributes: dict, image_shape: tuple
) -> tuple[BaseLayout | None, str]:
    """The base's layout, or None and why it cannot be built on (other preprocessing: its pixels
    are not this run's, so nothing of it is reused)."""
    info = parse_info(files.paths([META_FILE])[META_FILE].read_bytes(), f"{files.where}: {META_FILE}")
    theirs = info.attributes.get("preprocessing")
    if theirs != attributes["preprocessing"] or tuple(info.image_shape) != tuple(image_shape):
        return None, f"{files.where} was made with other preprocessing ({theirs}): nothing reused"
    return BaseLayout(files, info, classes), ""


def shard_index(name: str) -> int:
    """``train-00042.safetensors`` -> 42: new shards are numbered after the base's."""
    stem = Path(name).stem
    return int(stem.rsplit("-", 1)[1])
