"""Small generated image sources for ingestion tests: PNG folders, manifests, ingest params, and
what an ingest run wrote, read back."""

from __future__ import annotations

import hashlib
import io
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from conftest import repo_params
from PIL import Image

from mlpipeline.core.params import from_mapping
from mlpipeline.core.shards import Dataset
from mlpipeline.ingestion.splitting import SPLITS, hashed_split
from mlpipeline.ingestion.version import folder_reader, version_table
from mlpipeline.stages.ingest import IngestParams, Summary, ingest


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode an H x W (gray) or H x W x 3 (RGB) uint8 array as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def noise(seed: int, size: tuple[int, int] = (8, 8), rgb: bool = False) -> np.ndarray:
    """A random image, distinct for every seed (collisions are astronomically unlikely)."""
    shape = (*size, 3) if rgb else size
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(pixels))
    return path


FOLDER_SEEDS = 1_000_000  # make_folder's images: far from the seeds tests draw extra images with


def make_folder(
    root: Path, counts: dict[str, int], size: tuple[int, int] = (8, 8), rgb: bool = False
) -> Path:
    """An image folder ``root/<class>/<n>.png`` with ``counts[class]`` distinct gray (or RGB)
    images, the first three of each class (where it has three) in train, val and test by the
    repository's ingest params: a split is a hash of each image, and a small class could miss one."""
    seeds = itertools.count(FOLDER_SEEDS)
    for label, count in counts.items():
        for n in range(count):
            wanted = SPLITS[n] if n < len(SPLITS) else None
            write_png(root / label / f"{n:03d}.png", image_in(wanted, seeds, size, rgb))
    return root


def image_in(split: str | None, seeds: Iterator[int], size: tuple[int, int], rgb: bool = False) -> np.ndarray:
    """The next noise image (of ``seeds``) that ingest puts in ``split`` (None: any)."""
    params = repo_params()["ingest"]
    while True:
        pixels = noise(next(seeds), size, rgb)
        if split is None or split_of(pixels, params) == split:
            return pixels


def split_of(pixels: np.ndarray, params: dict[str, Any]) -> str:
    """The split ingest gives an image (H x W, or H x W x 3): a keyed hash of its pixels' sha256,
    taken as ingest stores them (C x H x W)."""
    planar = np.ascontiguousarray(np.atleast_3d(pixels).transpose(2, 0, 1))
    key = np.frombuffer(hashlib.sha256(planar.tobytes()).digest()[:8], dtype="<u8")
    pinned = np.full(1, -1, dtype=np.int8)
    return SPLITS[int(hashed_split(key, pinned, params["split"], params["seed"])[0])]


def ingest_params(source: Path | str, **overrides: Any) -> IngestParams:
    """The repository's ingest params with ``source`` and ``overrides``, validated as the stage does."""
    values = {**repo_params()["ingest"], "source": str(source), **overrides}
    return from_mapping(IngestParams, values, "ingest")


@dataclass(frozen=True)
class Output:
    """What ingest wrote to ``root``: the version's table (a row a source file: ``ingestion.version``),
    the classes and each file's stored pixels."""

    root: Path
    summary: Summary
    manifest: pd.DataFrame
    splits: dict[str, tuple[np.ndarray, np.ndarray]]

    @property
    def classes(self) -> list[str]:
        return self.summary.classes

    def pixels(self, source: str) -> np.ndarray:
        """The stored C x H x W image of the source file ``source`` (it must be in a split)."""
        row = self.manifest.set_index("source").loc[source]
        return self.splits[row["split"]][0][row["index"]]

    def images(self) -> np.ndarray:
        """Every live image, split by split in reader order (duplicates, held-out and skipped
        files left out)."""
        rows = self.manifest[self.manifest["index"] >= 0]
        return np.stack([self.splits[s][0][i] for s, i in zip(rows["split"], rows["index"], strict=True)])


def run_ingest(params: IngestParams, out: Path, **options: Any) -> Output:
    """Run ingestion into ``out`` (``options``: ``ingest``'s base and max_shard_bytes) and read
    back what it wrote."""
    summary = ingest(params, out, **options)
    dataset = Dataset(out)
    table = version_table(folder_reader(out), str(out))
    return Output(out, summary, table, {split: dataset.load(split) for split in SPLITS})
