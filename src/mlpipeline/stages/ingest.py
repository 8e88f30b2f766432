"""Ingest: raw images -> validated, canonical, deduplicated train/val/test shards, a new version
built on the previous one.

Reads ``ingest.source`` (a folder, local or ``s3://``: class folders ``<class>/<file>``, or
the ``path,label`` CSV ``ingest.manifest`` inside it, with optional ``split`` and ``group``
columns), decodes every image to uint8 C x H x W by ``ingest``'s preprocessing
(``mlpipeline.ingestion.images``), lists every bad file, drops exact duplicates before
splitting (so none can leak across splits), puts each image in the split a keyed hash of it
says (``mlpipeline.ingestion.splitting``: never moved by other images), and writes
``data/ingested``: shards per split with a records file each (every image's origin, pixel
mode and content hashes), ``dataset.json`` (with the preprocessing, which train hands on to
predict, and which rows are live) and ``excluded.csv`` (duplicates and skipped files, with
why), plus ``reports/ingest/metrics.json`` (counts per split and class) for ``dvc metrics
diff``. The test split holds real data only.

``ingest.base`` names the previous version (the md5 ``dvc.lock`` records for ``data/ingested``):
its shards are kept as they are, files it stores are not decoded again, and only new images go
to new shards (``mlpipeline.ingestion.layout``; docs/growing.md), so a version costs DVC, S3 and
the GPU box's pull what changed. Its files come from DVC's cache or remote
(``mlpipeline.ingestion.history``); the output is the same bytes either way.

Memory stays bounded at any dataset size: images are decoded once, by
``MLPIPELINE_WORKERS`` processes, into a disk-backed scratch (``mlpipeline.ingestion.scratch``);
duplicates and the split are decided from a few bytes an image; the same processes then
write the shards from the scratch's rows, a shard a task, while the records are written
row by row. Pixels never pass between processes (``mlpipeline.ingestion.scratch_rows``).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from functools import partial
from itertools import chain, islice
from pathlib import Path

import fsspec
import numpy as np

from mlpipeline.core import atomic, stage
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import load_section
from mlpipeline.core.paths import INGEST_REPORTS, INGESTED
from mlpipeline.core.progress import progress
from mlpipeline.core.urls import redact
from mlpipeline.core.workers import WorkerPool, worker_count
from mlpipeline.ingestion.base import BaseLayout, name_key, open_base
from mlpipeline.ingestion.decoding import Batch, DecodedBatch, batch_images, decode_batch
from mlpipeline.ingestion.history import CachedVersion, VersionFiles
from mlpipeline.ingestion.layout import plan_layout
from mlpipeline.ingestion.params import IngestParams
from mlpipeline.ingestion.records import DIGEST_BYTES, csv_bytes
from mlpipeline.ingestion.scratch import Scratch
from mlpipeline.ingestion.scratch_rows import use_pixel_file
from mlpipeline.ingestion.sources import RawSample, Source, open_source
from mlpipeline.ingestion.splitting import (
    SPLITS,
    Duplicates,
    conflict_reasons,
    find_duplicates,
    hashed_keep,
    hashed_split,
    refuse_missing_classes,
)
from mlpipeline.ingestion.unhashed import LeftOut
from mlpipeline.ingestion.writing import Version, write_version

BAD_FILES = INGEST_REPORTS / "bad_files.csv"
METRICS = INGEST_REPORTS / "metrics.json"
STATUSES = (*SPLITS, "duplicate", "skipped")  # a source row's fate, by code (excluded.csv's status)
DUPLICATE, SKIPPED = (STATUSES.index(s) for s in ("duplicate", "skipped"))
PARALLEL_FROM = 4096  # fewer images are decoded in this process: starting workers would cost more
NEW_SHARE_FOR_WORKERS = 0.05  # on a base: workers decode when this share of the listing's head is new
SHOWN_BAD_FILES = 3  # bad files named on the error line (all of them go to BAD_FILES)


class BadFiles(PipelineError):
    """Files that could not be ingested, every one of them, in source order: (file, reason)."""

    def __init__(self, files: list[tuple[str, str]]) -> None:
        self.files = files
        shown = "; ".join(f"{name}: {reason}" for name, reason in files[:SHOWN_BAD_FILES])
        super().__init__(shown if len(files) == 1 else f"{len(files)} bad files, the first: {shown}")


@dataclass(frozen=True)
class Growth:
    """What a run took from the previous version, for the summary line."""

    base: str | None  # the base as messages name it; None: built from scratch
    note: str  # why nothing of it was reused, where that is so
    decoded: int  # images decoded (the rest were known by their file's hash)
    kept: int  # the base's shards kept as they are
    new: int  # shards written
    compacted: int  # the base's shards dropped, their live rows (if any) moved to new shards


@dataclass(frozen=True)
class Summary:
    """What a run read and wrote, for the stage's one summary line and its metrics."""

    images: int
    classes: list[str]
    counts: dict[str, int]  # per split (live images), held_out, duplicate, skipped
    per_class: dict[str, list[int]]  # per split: its live images per class
    converted: Counter[str]  # original pixel mode -> images converted from it (of those decoded)
    rotated: int
    ignored: Counter[str]  # suffix -> files in class folders that are not PNG/JPEG/BMP
    left_out: LeftOut  # what class folders hold that DVC does not hash
    conflicting: tuple[int, int]  # copies, and images, filed under several labels (skipped)
    growth: Growth


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


def ingest(
    params: IngestParams, out_dir: Path, base: VersionFiles | None = None, max_shard_bytes: int | None = None
) -> Summary:
    """Read, validate, deduplicate, split and write ``params.source`` to ``out_dir``, building on
    the data version ``base`` (None: from scratch). ``max_shard_bytes``: tests' small shards."""
    source = open_source(params.source, params.manifest)
    classes = decide_classes(source, params.classes)
    preprocessing = params.preprocessing()
    attributes = {
        "source": source.recorded,
        "resample": params.resample,
        "preprocessing": preprocessing.to_json(),
    }
    row_shape = (params.channels, *preprocessing.image_size)
    layout, note = open_base(base, classes, attributes, row_shape) if base is not None else (None, "")
    listed = source.samples()
    head = list(islice(listed, PARALLEL_FROM))
    workers = worker_count() if worth_workers(head, layout) else 1
    with (
        closing(Scratch(out_dir.parent, row_shape)) as scratch,
        WorkerPool(workers, initializer=partial(use_pixel_file, scratch.pixel_file())) as pool,
    ):
        decode_all(chain(head, listed), source.fs, classes, params, scratch, pool, layout)
        duplicates = refuse_conflicts(scratch, classes, layout)
        if scratch.errors and params.on_bad_file == "fail":
            raise BadFiles(bad_files(scratch, source))
        status, held_out = assign_splits(scratch, classes, params, source, duplicates.drop)
        base_rows, labels = scratch.base_rows.array(), scratch.labels.array()
        kept = status < len(SPLITS)
        plan = plan_layout(layout, kept, labels, status, held_out, base_rows, params.compact_dead_share)
        if layout is not None and (taken := np.flatnonzero(plan.from_base >= 0)).size:
            layout.fill_pixels(plan.from_base[taken], taken, scratch.pixel_file())
        version = Version(status, held_out, plan, layout, STATUSES)
        new_shards = write_version(version, scratch, classes, attributes, out_dir, pool, max_shard_bytes)
    growth = Growth(
        base=base.where if base is not None else None,
        note=note,
        decoded=int(np.count_nonzero((base_rows < 0) & ~error_mask(scratch))),
        kept=len(plan.kept),
        new=new_shards,
        compacted=plan.compacted,
    )
    return summarize(scratch, source, classes, status, held_out, duplicates, growth)


def summarize(
    scratch: Scratch,
    source: Source,
    classes: list[str],
    status: np.ndarray,
    held_out: np.ndarray,
    duplicates: Duplicates,
    growth: Growth,
) -> Summary:
    """The run's counts per status, split and class, and what it converted and passed over."""
    live = {split: (status == code) & ~held_out for code, split in enumerate(SPLITS)}
    labels = scratch.labels.array()
    by_status = np.bincount(status, minlength=len(STATUSES))
    counts = {name: int(n) for name, n in zip(STATUSES, by_status, strict=True)}
    counts |= {split: int(mask.sum()) for split, mask in live.items()} | {"held_out": int(held_out.sum())}
    modes = scratch.modes.array()[scratch.converted.array()]
    return Summary(
        images=scratch.count,
        classes=classes,
        counts=counts,
        per_class={
            split: np.bincount(labels[m], minlength=len(classes)).tolist() for split, m in live.items()
        },
        converted=Counter({scratch.mode_names[m]: int(n) for m, n in enumerate(np.bincount(modes)) if n}),
        rotated=int(scratch.rotated.array().sum()),
        ignored=source.ignored,
        left_out=source.left_out,
        conflicting=(len(scratch.conflicting), len(duplicates.conflicts)),
        growth=growth,
    )


def worth_workers(head: list[RawSample], base: BaseLayout | None) -> bool:
    """Whether spawning workers pays (the bytes are the same either way): for at least
    ``PARALLEL_FROM`` images to decode, judged by the listing's first ones. A file the base
    stores is only hashed, which this process does faster alone than by sending batches to
    workers (200k files: 12 s here against 17 s with two): workers only when the head holds
    ``NEW_SHARE_FOR_WORKERS`` new names."""
    if len(head) < PARALLEL_FROM or base is None:
        return len(head) == PARALLEL_FROM
    new = np.count_nonzero(base.match(np.array([name_key(s.name) for s in head], dtype=np.uint64)) < 0)
    return new >= NEW_SHARE_FOR_WORKERS * len(head)


def decode_all(
    samples: Iterator[RawSample],
    fs: fsspec.AbstractFileSystem,
    classes: list[str],
    params: IngestParams,
    scratch: Scratch,
    pool: WorkerPool,
    base: BaseLayout | None,
) -> None:
    """Decode every sample into ``scratch``, in source order, over the pool's workers; a file
    that ``base`` stores (same name and bytes) is only hashed, its record taken from there."""
    index = {name: i for i, name in enumerate(classes)}
    preprocessing = params.preprocessing()
    matches: dict[int, np.ndarray] = {}  # first row of a batch in flight -> its samples' base rows

    def batches() -> Iterator[Batch]:
        row, size = 0, batch_images(preprocessing)
        while chunk := list(islice(samples, size)):
            known = None
            if base is not None:
                matches[row] = base.match(np.array([name_key(s.name) for s in chunk], dtype=np.uint64))
                known = np.zeros((len(chunk), DIGEST_BYTES), dtype=np.uint8)
                found = matches[row] >= 0
                known[found] = base.file_sha256[matches[row][found]]
            yield Batch(fs, chunk, preprocessing, params.max_image_pixels, first_row=row, known=known)
            row += len(chunk)

    # Listing streams as decoding goes, so the number of images is known only at the end.
    with progress("ingest", "listing and decoding") as shown:
        for batch, decoded in pool.map_pairs(decode_batch, batches()):
            labels = np.array([index[s.label] for s in batch.samples], dtype=np.int32)
            base_rows = np.full(len(labels), -1, dtype=np.int64)
            if base is not None:
                base_rows = np.where(decoded.known, matches.pop(batch.first_row), -1)
                decoded = with_base_records(decoded, base, base_rows)
            scratch.append(batch.samples, labels, decoded, base_rows)
            shown.advance(len(batch.samples))


def with_base_records(decoded: DecodedBatch, base: BaseLayout, base_rows: np.ndarray) -> DecodedBatch:
    """The batch with its known files' pixel digests and modes as the base's records hold them."""
    known = base_rows >= 0
    if not known.any():
        return decoded
    pixel_digests = decoded.pixel_digests.copy()
    pixel_digests[known] = base.pixel_sha256[base_rows[known]]
    modes = [
        base.mode_names[base.modes[row]] if row >= 0 else mode
        for mode, row in zip(decoded.modes, base_rows.tolist(), strict=True)
    ]
    return replace(decoded, pixel_digests=pixel_digests, modes=modes)


def bad_files(scratch: Scratch, source: Source) -> list[tuple[str, str]]:
    """Every refused file as (shown path, reason), in source order."""
    return [
        (source.shown_name(name), scratch.errors[row])
        for row, (name, _, _) in enumerate(scratch.records())
        if row in scratch.errors
    ]


def error_mask(scratch: Scratch) -> np.ndarray:
    failed = np.zeros(scratch.count, dtype=bool)
    failed[list(scratch.errors)] = True
    return failed


def refuse_conflicts(scratch: Scratch, classes: list[str], base: BaseLayout | None) -> Duplicates:
    """Find duplicates (keeping the copy the base holds, where it holds one), and refuse every
    copy of each image filed under several labels as a bad file (``scratch.errors``), so that
    one run lists them all."""
    decoded = ~error_mask(scratch)
    labels = scratch.labels.array()
    base_rows = scratch.base_rows.array()
    preferred = None
    if base is not None:  # the copy the base holds, if it can stay: in its source, same label
        preferred = base_rows >= 0
        rows = base_rows[preferred]
        preferred[preferred] = base.in_source[rows] & (base.labels[rows] == labels[preferred])
    duplicates = find_duplicates(scratch.keys.array(), decoded, labels, scratch.pixel_digest, preferred)
    rows = {row for group in duplicates.conflicts for row in group}
    if rows:
        names = {row: name for row, (name, _, _) in enumerate(scratch.records()) if row in rows}
        scratch.errors.update(conflict_reasons(duplicates.conflicts, labels, classes, names))
        scratch.conflicting = rows
    return duplicates


def assign_splits(
    scratch: Scratch, classes: list[str], params: IngestParams, source: Source, duplicate: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's status code (``STATUSES``: its split, a duplicate, or skipped: a bad file, or
    an image under several labels), and which training rows ``keep_train_fraction`` holds out."""
    labels = scratch.labels.array()
    status = np.full(scratch.count, SKIPPED, dtype=np.int8)
    status[duplicate] = DUPLICATE
    kept = ~error_mask(scratch) & ~duplicate
    dropped = int(duplicate.sum())
    where = f"{source.shown} ({dropped} duplicate(s) dropped)" if dropped else source.shown
    fractions = {"train": params.split.train, "val": params.split.val, "test": params.split.test}
    codes = hashed_split(scratch.split_keys.array()[kept], scratch.pins.array()[kept], fractions, params.seed)
    status[kept] = codes
    keep = hashed_keep(scratch.keys.array().astype(np.uint64), params.keep_train_fraction, params.seed)
    refuse_missing_classes(labels[kept], codes, keep[kept], classes, params.seed, where)
    return status, (status == SPLITS.index("train")) & ~keep


def write_bad_files(files: list[tuple[str, str]], path: Path) -> None:
    atomic.write_bytes(path, csv_bytes(("file", "error"), files))


def metrics(summary: Summary) -> dict:
    """What ``reports/ingest/metrics.json`` holds: the version's counts, so ``dvc metrics diff``
    shows a data change beside the model's. Only what the data is, never how it was built (what
    was decoded or reused), so a rerun on a newer base of the same source writes the same file."""
    conflict_copies, conflicts = summary.conflicting
    splits = {
        split: {"images": summary.counts[split], "per_class": dict(zip(summary.classes, counts, strict=True))}
        for split, counts in summary.per_class.items()
    }
    return {
        "images": summary.images,
        **splits,
        "held_out": summary.counts["held_out"],
        "duplicates": summary.counts["duplicate"],
        "bad_files": summary.counts["skipped"] - conflict_copies,
        "conflicts": conflicts,
    }


def describe_growth(growth: Growth) -> str:
    """What the run took from its base, for the summary line."""
    if growth.base is None:
        return f"{growth.new} shards"
    if growth.note:
        return f"{growth.new} shards; {growth.note}"
    compacted = f", compacted {growth.compacted}" if growth.compacted else ""
    return (
        f"on {growth.base}: kept {growth.kept} shards{compacted}, wrote {growth.new}, "
        f"decoded {growth.decoded} images"
    )


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
            f"skipped {summary.counts['skipped'] - copies} bad files (see excluded.csv's error column)"
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
        base = CachedVersion(params.base) if params.base is not None else None
        try:
            summary = ingest(params, INGESTED, base)
        except BadFiles as exc:
            write_bad_files(exc.files, BAD_FILES)
            every = "listed" if len(exc.files) == 1 else f"all {len(exc.files)} listed"
            raise PipelineError(f"{exc} ({every} in {BAD_FILES}; ingest.on_bad_file: skip leaves them out)")
        BAD_FILES.unlink(missing_ok=True)  # the list of an earlier failed run
        atomic.write_json(METRICS, metrics(summary))
        report["read"] = describe_read(summary, params.source)
        split_text = ", ".join(f"{s} {summary.counts[s]}" for s in SPLITS)
        report["wrote"] = (
            f"{INGESTED} ({split_text}; dropped {summary.counts['duplicate']} duplicates, "
            f"held out {summary.counts['held_out']}; {describe_growth(summary.growth)}), {METRICS}"
        )


if __name__ == "__main__":
    stage.run("ingest", main, IngestParams)
