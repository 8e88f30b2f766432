"""Augment: the training images (real and synthetic) -> originals plus randomly transformed copies.

Reads the ``train`` split of ``data/ingested`` (real) and of ``data/synthetic``,
each switchable, one shard at a time, and writes ``data/augmented`` with one split
per source, ``real`` and ``synthetic`` (empty when switched off), so training can
use them differently. Its shards mirror the input's: each input shard gives the
original (``keep_originals``: the input file itself, copied) and one shard per
augmented copy, ``<source>-<shard>-copy<k>``, so memory stays bounded by one shard
whatever the count. Val and test are never read: augmented data cannot leak into evaluation.
Each copy's randomness is named by (seed, source, the input shard's sha256, batch within
it, copy number): an output shard is a function of its input shard's bytes and the
params alone, whichever of the ``MLPIPELINE_WORKERS`` processes computes it. So a new
data version, which keeps its unchanged shards (docs/growing.md), gets the same
augmented shards for them, byte for byte, and DVC stores and moves only the new
ones; the input's dead rows are dead here too. Raising ``copies`` keeps the copies
already made. ``reports/augment/samples.png`` shows, per class, an original next to
its first augmented copies.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from mlpipeline.augmentation.online import OnlineAugmentation
from mlpipeline.augmentation.params import AugmentParams
from mlpipeline.augmentation.transforms import Transforms, augment
from mlpipeline.core import atomic, stage
from mlpipeline.core.channel_sums import ChannelSums
from mlpipeline.core.device import limit_threads
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import load_section
from mlpipeline.core.paths import AUGMENT_PREVIEW, AUGMENTED, INGESTED, SYNTHETIC
from mlpipeline.core.previews import image_grid
from mlpipeline.core.progress import progress
from mlpipeline.core.shard_rows import ShardLayout, SplitReader, live_layout
from mlpipeline.core.shard_writer import DatasetWriter, StoredShard, write_shard
from mlpipeline.core.shards import META_FILE, SHARD_SUFFIX, Dataset
from mlpipeline.core.workers import ordered_map_pairs, workers_for

SPLIT = "train"
SOURCES = ("real", "synthetic")  # also the names of the output's splits
PREVIEW_COPIES = 6
SHORT_NAMES = {"real": "real", "synthetic": "synth"}  # preview cells are 32 px wide


class Preview:
    """Per source and class, the first original seen and up to ``PREVIEW_COPIES`` of its copies."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], list[np.ndarray]] = {}

    def start_rows(self, source: str, images: np.ndarray, labels: np.ndarray) -> dict[int, int]:
        """Start a row for each class first seen in this batch; returns class -> index in the batch."""
        classes, first = np.unique(labels, return_index=True)
        picks = {
            int(c): int(i) for c, i in zip(classes, first, strict=True) if (source, int(c)) not in self.rows
        }
        for label, index in picks.items():
            self.rows[(source, label)] = [images[index].copy()]
        return picks

    def add(
        self, source: str, originals: np.ndarray, labels: np.ndarray, outputs: np.ndarray, copy: int
    ) -> None:
        """Offline: the preview rows of one output shard, copy number ``copy`` (0: the original)."""
        for original, label, output in zip(originals, labels.tolist(), outputs, strict=True):
            row = self.rows.setdefault((source, label), [original.copy()])
            if copy and len(row) <= PREVIEW_COPIES:
                row.append(output.copy())

    def add_copies(self, source: str, picks: dict[int, int], copies: np.ndarray) -> None:
        for label, index in picks.items():
            row = self.rows[(source, label)]
            if len(row) <= PREVIEW_COPIES:
                row.append(copies[index].copy())

    def png(self, classes: list[str]) -> bytes:
        keys = sorted(self.rows, key=lambda key: (key[1], key[0]))
        return image_grid(
            [self.rows[key] for key in keys],
            row_labels=[classes[label] for _, label in keys],
            cell_labels=[
                [SHORT_NAMES[source], *(f"aug{i}" for i in range(1, len(self.rows[(source, label)])))]
                for source, label in keys
            ],
        )


def open_sources(
    params: AugmentParams, ingested: Path, synthetic: Path
) -> tuple[Dataset, dict[str, Dataset]]:
    """The real dataset (its classes and shape are the reference) and the selected sources by name."""
    real = Dataset(ingested)
    sources = {"real": real} if params.include_real else {}
    if params.include_synthetic:
        other = Dataset(synthetic)
        for what, mine, theirs in (
            ("classes", other.classes, real.classes),
            ("image_shape", other.image_shape, real.image_shape),
        ):
            if mine != theirs:
                raise PipelineError(
                    f"{synthetic / META_FILE}: {what} {mine} differ from {ingested}'s {theirs}"
                )
        sources["synthetic"] = other
    for dataset in sources.values():
        dataset.count(SPLIT)  # a missing split fails here, naming the file
    return real, sources


@dataclass(frozen=True)
class MirrorTask:
    """An input shard and the output shards it gives: copy k for each k of ``copies`` (0: the
    original, its file copied as it is)."""

    source: str  # the output split, named after the source
    dataset: Dataset
    shard: str
    copies: tuple[int, ...]
    out: Path  # the folder the output shards go to
    preview: np.ndarray  # stored rows whose original and copies the preview shows
    preview_labels: np.ndarray  # their classes

    def name(self, copy: int) -> str:
        stem = self.shard.removesuffix(SHARD_SUFFIX)
        return f"{self.source}-{stem}{'' if copy == 0 else f'-copy{copy}'}{SHARD_SUFFIX}"

    def entry(self, copy: int, sha256: str, labels: np.ndarray, sums: ChannelSums) -> StoredShard:
        """The output shard as dataset.json records it: the input's live rows and class map, and
        its own live rows' channel sums."""
        info = self.dataset.split_info(SPLIT)
        live = info.live_mask(self.shard)
        return StoredShard(self.name(copy), sha256, labels, live, None, info.classes.get(self.shard), sums)


def mirror_tasks(sources: dict[str, Dataset], params: AugmentParams, out_dir: Path) -> Iterator[MirrorTask]:
    """A task for every input shard of every source, in order, found a shard at a time."""
    copies = tuple(range(0 if params.keep_originals else 1, params.copies + 1))
    for name, dataset in sources.items():
        found: set[int] = set()
        for shard in dataset.split_info(SPLIT).shards:
            preview, preview_labels = new_classes(live_layout(dataset, SPLIT, shard), found)
            yield MirrorTask(name, dataset, shard, copies, out_dir, preview, preview_labels)


def new_classes(layout: ShardLayout, found: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """The stored rows of the first live image of each class not in ``found`` (then added), and
    those classes."""
    classes, first = np.unique(layout.labels, return_index=True)
    fresh = ~np.isin(classes, list(found))
    found.update(classes[fresh].tolist())
    rows = first[fresh]
    return (rows if layout.rows is None else layout.rows[rows]), classes[fresh]


@dataclass(frozen=True)
class Mirrored:
    """What a task wrote: the input's stored labels and preview originals, and per copy the
    output's sha256, its live rows' channel sums and its preview images."""

    labels: np.ndarray
    originals: np.ndarray
    outputs: list[tuple[str, ChannelSums, np.ndarray]]


def mirror_shard(task: MirrorTask, transforms: Transforms, seed: int, batch_size: int) -> Mirrored:
    """Write the task's output shards, reading its input shard once (memory: it and one copy)."""
    images, labels = task.dataset.read_stored(SPLIT, task.shard)
    sha256 = task.dataset.split_info(SPLIT).sha256[task.shard]
    key = int(sha256[:16], 16)  # the input's bytes name its copies' draws
    live = task.dataset.split_info(SPLIT).live_mask(task.shard)
    made = np.empty_like(images)
    outputs = []
    for copy in task.copies:
        if copy == 0:
            shutil.copyfile(task.dataset.root / task.shard, task.out / task.name(copy))
            outputs.append((sha256, ChannelSums.of(images[live]), images[task.preview]))
            continue
        for batch, start in enumerate(range(0, len(images), batch_size)):
            chunk = torch.from_numpy(images[start : start + batch_size])
            made[start : start + batch_size] = augment(
                chunk, transforms, seed, task.source, key, batch, copy
            ).numpy()
        written = write_shard(task.out / task.name(copy), made, labels)
        outputs.append((written, ChannelSums.of(made[live]), made[task.preview].copy()))
    return Mirrored(labels, images[task.preview], outputs)


def augment_dataset(
    params: AugmentParams,
    ingested: Path,
    synthetic: Path,
    output: Path,
    preview: Path,
    workers: int | None = None,
) -> dict[str, dict[str, int]]:
    """Mirror the selected sources' shards through ``augment`` into ``output``, the input shards
    spread over ``workers`` processes (None: ``workers_for`` them; the bytes do not depend on
    it); returns counts per source."""
    real, sources = open_sources(params, ingested, synthetic)
    counts = {
        name: {
            "images": dataset.count(SPLIT),
            "originals": dataset.count(SPLIT) if params.keep_originals else 0,
            "augmented": dataset.count(SPLIT) * params.copies,
        }
        for name, dataset in sources.items()
    }
    if not any(c["originals"] + c["augmented"] for c in counts.values()):
        chosen = " and ".join(f"{n} ({d.root})" for n, d in sources.items())
        raise PipelineError(f"augment: the selected sources have no {SPLIT} images: {chosen}")
    attributes = {"copies": params.copies, "keep_originals": params.keep_originals, "sources": counts}
    if params.mode == "online":
        record_online(params, real, sources, output, attributes)
        atomic.write_bytes(preview, online_preview(params, sources).png(real.classes))
        return counts
    samples = Preview()
    work = partial(mirror_shard, transforms=params.transforms, seed=params.seed, batch_size=params.batch_size)
    shards = sum(len(d.split_info(SPLIT).shards) for d in sources.values())
    stored = sum(sum(d.split_info(SPLIT).rows.values()) for d in sources.values())
    with DatasetWriter(output, real.classes, real.image_shape, attributes) as writer:
        for name in SOURCES:
            writer.add_split(name)
        tasks = mirror_tasks(sources, params, writer.directory)
        with progress("augment", "augmenting", stored) as shown:
            for task, done in ordered_map_pairs(work, tasks, workers or workers_for(shards), limit_threads):
                for copy, (sha256, sums, outputs) in zip(task.copies, done.outputs, strict=True):
                    writer.add_shard(task.source, task.entry(copy, sha256, done.labels, sums))
                    samples.add(task.source, done.originals, task.preview_labels, outputs, copy)
                shown.advance(len(done.labels))
    atomic.write_bytes(preview, samples.png(real.classes))
    return counts


def record_online(
    params: AugmentParams, real: Dataset, sources: dict[str, Dataset], output: Path, attributes: dict
) -> None:
    """Online mode: write the record training makes its copies from, and the synthetic originals
    (it reads the real ones where ingest wrote them); nothing is multiplied on disk."""
    record = OnlineAugmentation(params.transforms, params.seed, params.copies, params.keep_originals)
    with DatasetWriter(
        output, real.classes, real.image_shape, {**attributes, **record.attributes()}
    ) as writer:
        for name in SOURCES:
            writer.add_split(name)
        if "synthetic" in sources:
            total = sources["synthetic"].count(SPLIT)
            with progress("augment", "copying synthetic originals", total) as shown:
                for images, labels in sources["synthetic"].iter_shards(SPLIT):
                    writer.write("synthetic", images, labels)
                    shown.advance(len(labels))
                    del images, labels  # or the next shard is read while this one is still held


def online_preview(params: AugmentParams, sources: dict[str, Dataset]) -> Preview:
    """The preview of online mode: the first image of each class, read by itself, and copies of it
    (from streams of their own: training draws its copies batch by batch)."""
    samples = Preview()
    for name, dataset in sources.items():
        originals, labels = first_of_each_class(dataset, SPLIT)
        if not len(labels):
            continue
        picks = samples.start_rows(name, originals, labels)
        for copy in range(1, min(params.copies, PREVIEW_COPIES) + 1):
            copies = augment(
                torch.from_numpy(originals), params.transforms, params.seed, "preview", name, copy
            )
            samples.add_copies(name, picks, copies.numpy())
    return samples


def first_of_each_class(dataset: Dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The first image of each class in ``split``, by class, and their labels. Found a shard's
    labels at a time: a whole split's labels and their sort held 35 bytes an image (28 MB at
    800,000 images)."""
    found: dict[int, np.ndarray] = {}
    for name in dataset.info.splits[split].shards:
        layout = live_layout(dataset, split, name)
        found |= first_of_new_classes(layout, dataset.image_shape, known=found.keys())
        if len(found) == dataset.info.num_classes:
            break
    labels = np.array(sorted(found), dtype=np.int64)
    originals = np.empty((len(labels), *dataset.image_shape), dtype=np.uint8)
    for index, label in enumerate(labels):
        originals[index] = found[label]
    return originals, labels


def first_of_new_classes(
    layout: ShardLayout, image_shape: tuple[int, int, int], known: Iterable[int]
) -> dict[int, np.ndarray]:
    """Class -> its first image in this shard, for each class of the shard not in ``known``."""
    classes, rows = np.unique(layout.labels, return_index=True)
    new = ~np.isin(classes, list(known))
    images = np.empty((int(new.sum()), *image_shape), dtype=np.uint8)
    SplitReader(image_shape, [layout]).read(rows[new], images)
    return dict(zip(classes[new].tolist(), images, strict=True))


def main() -> None:
    with stage.summary("augment") as report:
        params = load_section(AugmentParams, "augment")
        limit_threads()
        counts = augment_dataset(params, INGESTED, SYNTHETIC, AUGMENTED, AUGMENT_PREVIEW)
        report["read"] = ", ".join(f"{c['images']} {name} {SPLIT} images" for name, c in counts.items())
        originals = sum(c["originals"] for c in counts.values())
        augmented = sum(c["augmented"] for c in counts.values())
        made = "augmented copies" if params.mode == "offline" else "copies made online by training, per epoch"
        report["wrote"] = f"{AUGMENTED} ({originals} originals + {augmented} {made}), {AUGMENT_PREVIEW}"


if __name__ == "__main__":
    stage.run("augment", main, AugmentParams)
