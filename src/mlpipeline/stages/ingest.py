"""Ingest: raw images -> validated, canonical, deduplicated, stratified train/val/test shards.

Reads ``ingest.source`` (a folder, local or ``s3://``: class folders ``<class>/<file>``, or
the ``path,label`` CSV ``ingest.manifest`` inside it), decodes every image to uint8
C x H x W by ``ingest``'s preprocessing (``mlpipeline.ingestion.images``), lists every bad file,
drops exact duplicates before splitting (so none can leak across splits), and writes
``data/ingested``: shards per split, ``dataset.json`` (with the preprocessing, which train
hands on to predict) and ``manifest.csv`` with every file's origin, pixel mode, content
hashes, label and split. The test split holds real data only.

Memory stays bounded at any dataset size: images are decoded once, by
``MLPIPELINE_WORKERS`` processes, into a disk-backed scratch (``mlpipeline.ingestion.scratch``);
duplicates and the split are decided from a few bytes an image; the same processes then
write the shards from the scratch's rows, a shard a task, while the manifest is written
row by row. Pixels never pass between processes (``mlpipeline.ingestion.scratch_rows``).
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from itertools import chain, islice
from pathlib import Path
from typing import BinaryIO

import fsspec
import numpy as np

from mlpipeline.core import atomic, stage
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import load_section
from mlpipeline.core.paths import INGESTED
from mlpipeline.core.progress import progress
from mlpipeline.core.shards import DatasetWriter
from mlpipeline.core.urls import redact
from mlpipeline.core.workers import WorkerPool, worker_count
from mlpipeline.ingestion.decoding import Batch, batch_images, decode_batch
from mlpipeline.ingestion.params import IngestParams
from mlpipeline.ingestion.scratch import Scratch
from mlpipeline.ingestion.scratch_rows import ShardTask, use_pixel_file, write_shard_rows
from mlpipeline.ingestion.sources import RawSample, Source, open_source
from mlpipeline.ingestion.splitting import (
    SPLITS,
    Duplicates,
    conflict_reasons,
    find_duplicates,
    keep_fraction,
    stratified_split,
)
from mlpipeline.ingestion.unhashed import LeftOut

BAD_FILES = Path("reports/ingest/bad_files.csv")
MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = (
    "source",
    "class",
    "label",
    "split",
    "file_sha256",
    "pixel_sha256",
    "index",
    "mode",
    "error",
)
STATUSES = (*SPLITS, "duplicate", "held_out", "skipped")  # the manifest's split column, by code
DUPLICATE, HELD_OUT, SKIPPED = (STATUSES.index(s) for s in ("duplicate", "held_out", "skipped"))
PARALLEL_FROM = 4096  # fewer images are decoded in this process: starting workers would cost more
ROW_BLOCK = 65_536  # rows whose status or manifest columns are taken out of numpy at once
SHOWN_BAD_FILES = 3  # bad files named on the error line (all of them go to BAD_FILES)


class BadFiles(PipelineError):
    """Files that could not be ingested, every one of them, in source order: (file, reason)."""

    def __init__(self, files: list[tuple[str, str]]) -> None:
        self.files = files
        shown = "; ".join(f"{name}: {reason}" for name, reason in files[:SHOWN_BAD_FILES])
        super().__init__(shown if len(files) == 1 else f"{len(files)} bad files, the first: {shown}")


@dataclass(frozen=True)
class Summary:
    """What a run read and wrote, for the stage's one summary line."""

    images: int
    classes: list[str]
    counts: dict[str, int]  # per manifest status
    converted: Counter[str]  # original pixel mode -> images converted from it
    rotated: int
    ignored: Counter[str]  # suffix -> files in class folders that are not PNG/JPEG/BMP
    left_out: LeftOut  # what class folders hold that DVC does not hash
    conflicting: tuple[int, int]  # copies, and images, filed under several labels (skipped)


def decide_classes(source: Source, declared: list[str] | None) -> list[str]:
    """The class list: as declared in params, or every label found (in natural order)."""
    found = source.labels
    if declared is not None:
        declared = [unicodedata.normalize("NFC", name) for name in declared]  # as labels are found
        unknown = [label for label in found if label not in declared]
        if unknown:
            first = next(s for s in source.samples() if s.label == unknown[0])
            raise PipelineError(f"{first.shown}: label '{unknown[0]}' is not in ingest.classes {declared}")
        empty = [c for c in declared if c not in found]
        if empty:
            raise PipelineError(f"{source.shown}: class '{empty[0]}' in ingest.classes has no images")
    classes = list(declared or found)
    if len(classes) < 2:
        raise PipelineError(
            f"{source.shown}: one class only ('{classes[0]}'); a classifier needs at least two"
        )
    return classes


def ingest(params: IngestParams, out_dir: Path) -> Summary:
    """Read, validate, deduplicate, split and write ``params.source`` to ``out_dir``."""
    source = open_source(params.source, params.manifest)
    classes = decide_classes(source, params.classes)
    preprocessing = params.preprocessing()
    listed = source.samples()
    head = list(islice(listed, PARALLEL_FROM))
    workers = worker_count() if len(head) == PARALLEL_FROM else 1  # spawning costs more than a few images
    with (
        closing(Scratch(out_dir.parent, (params.channels, *preprocessing.image_size))) as scratch,
        WorkerPool(workers, initializer=partial(use_pixel_file, scratch.pixel_file())) as pool,
    ):
        decode_all(chain(head, listed), source.fs, classes, params, scratch, pool)
        duplicates = refuse_conflicts(scratch, classes)
        if scratch.errors and params.on_bad_file == "fail":
            raise BadFiles(bad_files(scratch, source))
        status = assign_splits(scratch, classes, params, source, duplicates.drop)
        attributes = {
            "source": source.recorded,
            "resample": params.resample,
            "preprocessing": preprocessing.to_json(),
        }
        write_dataset(scratch, status, classes, attributes, out_dir, pool)
    counts = np.bincount(status, minlength=len(STATUSES))
    modes = scratch.modes.array()[scratch.converted.array()]
    return Summary(
        images=scratch.count,
        classes=classes,
        counts={name: int(n) for name, n in zip(STATUSES, counts, strict=True)},
        converted=Counter({scratch.mode_names[m]: int(n) for m, n in enumerate(np.bincount(modes)) if n}),
        rotated=int(scratch.rotated.array().sum()),
        ignored=source.ignored,
        left_out=source.left_out,
        conflicting=(len(scratch.conflicting), len(duplicates.conflicts)),
    )


def decode_all(
    samples: Iterator[RawSample],
    fs: fsspec.AbstractFileSystem,
    classes: list[str],
    params: IngestParams,
    scratch: Scratch,
    pool: WorkerPool,
) -> None:
    """Decode every sample into ``scratch``, in source order, over the pool's workers."""
    index = {name: i for i, name in enumerate(classes)}
    preprocessing = params.preprocessing()

    def batches() -> Iterator[Batch]:
        row, size = 0, batch_images(preprocessing)
        while chunk := list(islice(samples, size)):
            yield Batch(fs, chunk, preprocessing, params.max_image_pixels, first_row=row)
            row += len(chunk)

    # Listing streams as decoding goes, so the number of images is known only at the end.
    with progress("ingest", "listing and decoding") as shown:
        for batch, decoded in pool.map_pairs(decode_batch, batches()):
            labels = np.array([index[s.label] for s in batch.samples], dtype=np.int32)
            scratch.append(batch.samples, labels, decoded)
            shown.advance(len(batch.samples))


def bad_files(scratch: Scratch, source: Source) -> list[tuple[str, str]]:
    """Every refused file as (shown path, reason), in source order."""
    return [
        (source.shown_name(name), scratch.errors[row])
        for row, (name, _, _) in enumerate(scratch.records())
        if row in scratch.errors
    ]


def refuse_conflicts(scratch: Scratch, classes: list[str]) -> Duplicates:
    """Find duplicates, and refuse every copy of each image filed under several labels as a bad
    file (``scratch.errors``), so that one run lists them all."""
    decoded = np.ones(scratch.count, dtype=bool)
    decoded[list(scratch.errors)] = False
    labels = scratch.labels.array()
    duplicates = find_duplicates(scratch.keys.array(), decoded, labels, scratch.pixel_digest)
    rows = {row for group in duplicates.conflicts for row in group}
    if rows:
        names = {row: name for row, (name, _, _) in enumerate(scratch.records()) if row in rows}
        scratch.errors.update(conflict_reasons(duplicates.conflicts, labels, classes, names))
        scratch.conflicting = rows
    return duplicates


def assign_splits(
    scratch: Scratch, classes: list[str], params: IngestParams, source: Source, duplicate: np.ndarray
) -> np.ndarray:
    """Each row's status code (``STATUSES``): split, duplicate (``duplicate``), held out, or
    skipped (a bad file, or an image under several labels)."""
    labels = scratch.labels.array()
    decoded = np.ones(scratch.count, dtype=bool)
    decoded[list(scratch.errors)] = False
    status = np.full(scratch.count, SKIPPED, dtype=np.int8)
    status[duplicate] = DUPLICATE
    kept = decoded & ~duplicate
    dropped = int(duplicate.sum())
    where = f"{source.shown} ({dropped} duplicate(s) dropped)" if dropped else source.shown
    fractions = {"train": params.split.train, "val": params.split.val, "test": params.split.test}
    status[kept] = stratified_split(labels[kept], classes, fractions, params.seed, where)
    in_train = status == SPLITS.index("train")
    status[in_train & ~keep_fraction(labels, in_train, params.keep_train_fraction, params.seed)] = HELD_OUT
    return status


def write_dataset(
    scratch: Scratch,
    status: np.ndarray,
    classes: list[str],
    attributes: dict,
    out_dir: Path,
    pool: WorkerPool,
) -> None:
    """Each split's shards, written from the scratch's rows by the pool's workers while a
    thread here writes the manifest; all in one atomic step."""
    labels = scratch.labels.array()
    with (
        DatasetWriter(out_dir, classes, scratch.row_shape, attributes) as writer,
        ThreadPoolExecutor(1) as beside,
    ):
        manifest = beside.submit(write_manifest_file, writer, scratch, status, classes)

        def shard_tasks() -> Iterator[ShardTask]:
            for code, split in enumerate(SPLITS):
                writer.add_split(split)
                for index, rows in enumerate(split_shards(status, code, writer.shard_images)):
                    path = writer.directory / writer.shard_name(split, index)
                    yield ShardTask(split, path, rows, labels[rows].astype(np.int64), scratch.row_shape)

        with progress("ingest", "writing shards", int(np.count_nonzero(status < len(SPLITS)))) as shown:
            for task, sha256 in pool.map_pairs(write_shard_rows, shard_tasks()):
                writer.add_shard(task.split, task.path.name, sha256, task.labels)
                shown.advance(len(task.labels))
        manifest.result()


def split_shards(status: np.ndarray, code: int, per_shard: int) -> Iterator[np.ndarray]:
    """The rows of split ``code``, ascending, ``per_shard`` at a time (the last maybe fewer),
    found a block of ``status`` at a time."""
    pending = np.empty(0, dtype=np.int64)
    for block in range(0, len(status), ROW_BLOCK):
        found = np.flatnonzero(status[block : block + ROW_BLOCK] == code) + block
        pending = np.concatenate([pending, found])
        while len(pending) >= per_shard:
            yield pending[:per_shard]
            pending = pending[per_shard:]
    if len(pending):
        yield pending


def write_manifest_file(
    writer: DatasetWriter, scratch: Scratch, status: np.ndarray, classes: list[str]
) -> None:
    with writer.open_file(MANIFEST) as handle:
        write_manifest(handle, scratch, status, classes)


def write_manifest(handle: BinaryIO, scratch: Scratch, status: np.ndarray, classes: list[str]) -> None:
    """One CSV row per source file, in source order, streamed."""
    text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
    out = csv.writer(text, lineterminator="\n")
    out.writerow(MANIFEST_COLUMNS)
    out.writerows(manifest_rows(scratch, status, classes))
    text.flush()
    text.detach()


def manifest_rows(scratch: Scratch, status: np.ndarray, classes: list[str]) -> Iterator[tuple]:
    """The manifest's rows, a block at a time: the block's columns leave numpy as lists (a numpy
    scalar a cell costs), and memory holds one block of them, not a million-row list."""
    records, taken = scratch.records(), np.zeros(len(SPLITS), dtype=np.int64)
    for start in range(0, len(status), ROW_BLOCK):
        block = slice(start, start + ROW_BLOCK)
        codes = status[block]
        positions = split_positions(codes, taken)
        columns = zip(
            islice(records, len(codes)),
            scratch.labels.array()[block].tolist(),
            scratch.modes.array()[block].tolist(),
            codes.tolist(),
            positions.tolist(),
            strict=True,
        )
        for row, ((name, file_digest, pixel_digest), label, mode, code, index) in enumerate(columns, start):
            error = scratch.errors.get(row, "")
            failed = error and row not in scratch.conflicting  # a conflict's hashes show its group
            hashes = ("", "") if failed else (file_digest.hex(), pixel_digest.hex())
            shown_mode = "" if failed else scratch.mode_names[mode]
            yield (name, classes[label], label, STATUSES[code], *hashes, index, shown_mode, error)


def split_positions(codes: np.ndarray, taken: np.ndarray) -> np.ndarray:
    """Each row's position within its split's shards (-1 outside the splits), ``taken[split]``
    rows of each split having come before; ``taken`` is advanced past these rows."""
    positions = np.full(len(codes), -1, dtype=np.int64)
    for code in range(len(SPLITS)):
        members = codes == code
        count = np.count_nonzero(members)
        positions[members] = np.arange(taken[code], taken[code] + count)
        taken[code] += count
    return positions


def write_bad_files(files: list[tuple[str, str]], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("file", "error"))
    writer.writerows(files)
    atomic.write_text(path, buffer.getvalue())


def describe_read(summary: Summary, source: str) -> str:
    """'N images in K classes from SRC', with what was converted, rotated, skipped or ignored."""
    notes = []
    if summary.converted:
        modes = ", ".join(f"{mode} {n}" for mode, n in sorted(summary.converted.items()))
        notes.append(f"converted {summary.converted.total()} ({modes})")
    if summary.rotated:
        notes.append(f"rotated {summary.rotated} by EXIF orientation")
    copies, images = summary.conflicting
    if summary.counts["skipped"] > copies:
        notes.append(
            f"skipped {summary.counts['skipped'] - copies} bad files (see the manifest's error column)"
        )
    if copies:
        notes.append(f"left out {copies} copies of {images} images filed under several labels")
    if summary.ignored:
        suffixes = ", ".join(f"{suffix} {n}" for suffix, n in sorted(summary.ignored.items()))
        notes.append(f"ignored {summary.ignored.total()} files that are not PNG/JPEG/BMP ({suffixes})")
    notes += describe_left_out(summary.left_out)
    text = f"{summary.images} images in {len(summary.classes)} classes from {redact(source)}"
    return text + (f" ({'; '.join(notes)})" if notes else "")


def describe_left_out(left_out: LeftOut) -> list[str]:
    """The summary line's notes on what was not read because DVC does not hash it."""
    notes = []
    if left_out.excluded:
        notes.append(f"left out {left_out.excluded} files .dvcignore excludes")
    if left_out.linked:
        shown = ", ".join(f"{name}/" for name in left_out.linked[:SHOWN_BAD_FILES])
        more = ", ..." if len(left_out.linked) > SHOWN_BAD_FILES else ""
        count = len(left_out.linked)
        notes.append(f"left out {count} symlinked folders ({shown}{more}): DVC does not hash their files")
    return notes


def main() -> None:
    with stage.summary("ingest") as report:
        params = load_section(IngestParams, "ingest")
        try:
            summary = ingest(params, INGESTED)
        except BadFiles as exc:
            write_bad_files(exc.files, BAD_FILES)
            every = "listed" if len(exc.files) == 1 else f"all {len(exc.files)} listed"
            raise PipelineError(f"{exc} ({every} in {BAD_FILES}; ingest.on_bad_file: skip leaves them out)")
        BAD_FILES.unlink(missing_ok=True)  # the list of an earlier failed run
        report["read"] = describe_read(summary, params.source)
        split_text = ", ".join(f"{s} {summary.counts[s]}" for s in SPLITS)
        report["wrote"] = (
            f"{INGESTED} ({split_text}; dropped {summary.counts['duplicate']} duplicates, "
            f"held out {summary.counts['held_out']})"
        )


if __name__ == "__main__":
    stage.run("ingest", main, IngestParams)
