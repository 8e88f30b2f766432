"""Ingest: raw images -> validated, canonical, deduplicated, stratified train/val/test shards.

Reads ``ingest.source`` (an image folder ``<class>/<file>`` or a ``path,label``
manifest CSV, local or ``s3://``), decodes every image to uint8 C x H x W at
``ingest.image_size``, refuses bad files by name, drops exact duplicates before
splitting (so none can leak across splits), and writes ``data/ingested``:
shards per split, ``dataset.json`` and ``manifest.csv`` with every sample's
origin, content hashes, label and split. The test split holds real data only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Self

import numpy as np
import pandas as pd
from pydantic import Field, TypeAdapter, ValidatorFunctionWrapHandler, WrapValidator, model_validator

from mlpipeline.core import stage
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import load_section, param, params_dataclass
from mlpipeline.core.paths import INGESTED
from mlpipeline.core.shards import DatasetWriter
from mlpipeline.images import Resample, decode_image
from mlpipeline.sources import Layout, RawSample, list_samples, natural_key, read_files
from mlpipeline.splitting import SPLITS, find_duplicates, keep_fraction, stratified_split

MANIFEST = "manifest.csv"


Side = Annotated[int, Field(ge=1, le=4096)]
SizePair = Annotated[list[Side], Field(min_length=2, max_length=2)]


def as_square(value: Any, validate_pair: ValidatorFunctionWrapHandler) -> list[int]:
    """``image_size: 28`` means ``[28, 28]`` (so ``-S ingest.image_size=28`` works)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [TypeAdapter(Side).validate_python(value)] * 2  # an error names image_size itself
    return validate_pair(value)


ImageSize = Annotated[SizePair, WrapValidator(as_square, json_schema_input_type=Side | SizePair)]


@params_dataclass
class SplitFractions:
    train: float = param(gt=0, lt=1)
    val: float = param(gt=0, lt=1)
    test: float = param(gt=0, lt=1)

    @model_validator(mode="after")
    def check(self) -> Self:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"fractions must sum to 1, got {total:g}")
        return self


@params_dataclass
class IngestParams:
    source: str
    layout: Layout
    classes: list[str] | None = param(min_len=1)
    channels: int = param(ge=1, le=3)
    image_size: ImageSize  # [height, width], or one side of a square
    resample: Resample
    split: SplitFractions
    keep_train_fraction: float = param(gt=0, le=1)
    seed: int = param(ge=0)

    @model_validator(mode="after")
    def check(self) -> Self:
        if self.channels == 2:
            raise ValueError("channels must be 1 (grayscale) or 3 (RGB)")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError("classes lists a class twice")
        return self


@dataclass(frozen=True)
class Ingested:
    images: np.ndarray  # N x C x H x W uint8, in source order
    labels: np.ndarray  # N int64
    manifest: pd.DataFrame  # one row per source file, including dropped ones


def decide_classes(samples: list[RawSample], declared: list[str] | None, source: str) -> list[str]:
    """The class list: as declared in params, or every label found (in natural order)."""
    found = {s.label for s in samples}
    if declared is None:
        return sorted(found, key=natural_key)
    for sample in samples:
        if sample.label not in declared:
            raise PipelineError(f"{sample.shown}: label '{sample.label}' is not in ingest.classes {declared}")
    empty = [c for c in declared if c not in found]
    if empty:
        raise PipelineError(f"{source}: class '{empty[0]}' in ingest.classes has no images")
    return list(declared)


def ingest(params: IngestParams) -> tuple[Ingested, list[str]]:
    """Read, validate, deduplicate and split the source. Pure of output I/O, so tests call it."""
    fs, samples = list_samples(params.source, params.layout)
    classes = decide_classes(samples, params.classes, params.source)
    index = {name: i for i, name in enumerate(classes)}
    size = (params.image_size[0], params.image_size[1])
    images = np.empty((len(samples), params.channels, *size), dtype=np.uint8)
    file_hashes, pixel_hashes = [], []
    for i, (sample, data) in enumerate(read_files(fs, samples)):
        images[i] = decode_image(data, sample.shown, params.channels, size, params.resample)
        file_hashes.append(hashlib.sha256(data).hexdigest())
        pixel_hashes.append(hashlib.sha256(images[i].tobytes()).hexdigest())
    labels = np.array([index[s.label] for s in samples], dtype=np.int64)

    duplicate = find_duplicates(pixel_hashes, labels.tolist(), [s.shown for s in samples])
    kept = ~duplicate
    split = np.full(len(samples), "duplicate", dtype=object)
    fractions = {"train": params.split.train, "val": params.split.val, "test": params.split.test}
    dropped = int(duplicate.sum())
    where = f"{params.source} ({dropped} duplicate(s) dropped)" if dropped else params.source
    split[kept] = stratified_split(labels[kept], classes, fractions, params.seed, where)
    in_train = split == "train"
    held_out = in_train & ~keep_fraction(labels, in_train, params.keep_train_fraction, params.seed)
    split[held_out] = "held_out"

    manifest = pd.DataFrame(
        {
            "source": [s.name for s in samples],
            "class": [s.label for s in samples],
            "label": labels,
            "split": split,
            "file_sha256": file_hashes,
            "pixel_sha256": pixel_hashes,
        }
    )
    return Ingested(images=images, labels=labels, manifest=manifest), classes


def write_ingested(
    result: Ingested, classes: list[str], params: IngestParams, out_dir: Path
) -> dict[str, int]:
    """Write shards, dataset.json and manifest.csv atomically; returns the per-split counts."""
    manifest = result.manifest.copy()
    manifest["index"] = -1
    attributes = {"source": params.source, "resample": params.resample}
    with DatasetWriter(out_dir, classes, result.images.shape[1:], attributes) as writer:
        for split in SPLITS:
            rows = np.flatnonzero(manifest["split"].to_numpy() == split)
            writer.add_split(split)
            for start in range(0, len(rows), writer.shard_images):  # one shard's copy at a time
                part = rows[start : start + writer.shard_images]
                writer.write(split, result.images[part], result.labels[part])
            manifest.loc[rows, "index"] = np.arange(len(rows))
        writer.add_file(MANIFEST, manifest.to_csv(index=False, lineterminator="\n").encode())
    counts = manifest["split"].value_counts()
    return {name: int(counts.get(name, 0)) for name in (*SPLITS, "duplicate", "held_out")}


def main() -> None:
    with stage.summary("ingest") as report:
        params = load_section(IngestParams, "ingest")
        result, classes = ingest(params)
        counts = write_ingested(result, classes, params, INGESTED)
        report["read"] = f"{len(result.manifest)} images in {len(classes)} classes from {params.source}"
        split_text = ", ".join(f"{s} {counts[s]}" for s in SPLITS)
        report["wrote"] = (
            f"{INGESTED} ({split_text}; dropped {counts['duplicate']} duplicates, "
            f"held out {counts['held_out']})"
        )


if __name__ == "__main__":
    stage.run("ingest", main)
