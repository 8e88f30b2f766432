"""Augment: the training images (real and synthetic) -> originals plus randomly transformed copies.

Reads the ``train`` split of ``data/ingested`` (real) and of ``data/synthetic``,
each switchable, one shard at a time, and writes ``data/augmented`` with one split
per source, ``real`` and ``synthetic`` (empty when switched off), so training can
use them differently: per batch the originals (``keep_originals``) then ``copies``
augmented copies, so memory stays bounded by one shard whatever the count.
Val and test are never read: augmented data cannot leak into evaluation.
Each copy's randomness is named by (seed, source, shard, batch, copy number),
so the output depends only on the inputs and the params, whichever of the
``MLPIPELINE_WORKERS`` processes computes it, and raising ``copies`` keeps the
copies already made. ``reports/augment/samples.png``
shows, per class, an original next to its first augmented copies.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import torch

from mlpipeline.augmentation.online import OnlineAugmentation
from mlpipeline.augmentation.params import AugmentParams
from mlpipeline.augmentation.transforms import Transforms, augment
from mlpipeline.core import atomic, stage
from mlpipeline.core.device import limit_threads
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import load_section
from mlpipeline.core.paths import AUGMENT_PREVIEW, AUGMENTED, INGESTED, SYNTHETIC
from mlpipeline.core.previews import image_grid
from mlpipeline.core.progress import progress
from mlpipeline.core.shards import (
    META_FILE,
    Dataset,
    DatasetWriter,
    ShardLayout,
    SplitReader,
    shard_layout,
)
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


def batches(
    sources: dict[str, Dataset], batch_size: int
) -> Iterator[tuple[tuple[str, int, int], np.ndarray, np.ndarray]]:
    """Every selected image in order as ((source, shard, batch), images, labels); one shard in memory."""
    for name, dataset in sources.items():
        for shard, (images, labels) in enumerate(dataset.iter_shards(SPLIT)):
            for batch, start in enumerate(range(0, len(images), batch_size)):
                yield (
                    (name, shard, batch),
                    images[start : start + batch_size],
                    labels[start : start + batch_size],
                )


def augment_dataset(
    params: AugmentParams,
    ingested: Path,
    synthetic: Path,
    output: Path,
    preview: Path,
    workers: int | None = None,
) -> dict[str, dict[str, int]]:
    """Stream the selected sources through ``augment`` into ``output``, the batches spread over
    ``workers`` processes (None: ``workers_for`` the batches; the bytes do not depend on it);
    returns counts per source."""
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
    if workers is None:
        workers = workers_for(sum(math.ceil(c["images"] / params.batch_size) for c in counts.values()))
    samples = Preview()
    work = partial(augment_copies, transforms=params.transforms, seed=params.seed, copies=params.copies)
    with DatasetWriter(output, real.classes, real.image_shape, attributes) as writer:
        for name in SOURCES:
            writer.add_split(name)
        done = ordered_map_pairs(work, batches(sources, params.batch_size), workers, limit_threads)
        with progress("augment", "augmenting", sum(c["images"] for c in counts.values())) as shown:
            for ((name, _, _), originals, labels), copies in done:
                picks = samples.start_rows(name, originals, labels)
                if params.keep_originals:
                    writer.write(name, originals, labels)
                for copy in copies:
                    writer.write(name, copy, labels)
                    samples.add_copies(name, picks, copy)
                shown.advance(len(labels))
    atomic.write_bytes(preview, samples.png(real.classes))
    return counts


def augment_copies(
    item: tuple[tuple[str, int, int], np.ndarray, np.ndarray], transforms: Transforms, seed: int, copies: int
) -> list[np.ndarray]:
    """The ``copies`` augmented copies of one batch; their randomness is named by (source, shard,
    batch, copy number), so whichever worker process computes them, the bytes are the same."""
    (name, shard, batch), originals, _ = item
    images = torch.from_numpy(originals)
    return [
        augment(images, transforms, seed, name, shard, batch, copy).numpy() for copy in range(1, copies + 1)
    ]


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
        layout = shard_layout(dataset.root / name, dataset.image_shape)
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
