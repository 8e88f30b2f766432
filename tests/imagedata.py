"""Small generated image sources for ingestion tests: PNG folders, manifests, ingest params, and
what an ingest run wrote, read back."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from conftest import repo_params
from PIL import Image

from mlpipeline.core.params import from_mapping
from mlpipeline.core.shards import Dataset
from mlpipeline.ingestion.splitting import SPLITS
from mlpipeline.stages.ingest import MANIFEST, IngestParams, Summary, ingest


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


def make_folder(root: Path, counts: dict[str, int], size: tuple[int, int] = (8, 8)) -> Path:
    """An image folder ``root/<class>/<n>.png`` with ``counts[class]`` distinct gray images."""
    seed = 0
    for label, count in counts.items():
        for n in range(count):
            write_png(root / label / f"{n:03d}.png", noise(seed, size))
            seed += 1
    return root


def ingest_params(source: Path | str, **overrides: Any) -> IngestParams:
    """The repository's ingest params with ``source`` and ``overrides``, validated as the stage does."""
    values = {**repo_params()["ingest"], "source": str(source), **overrides}
    return from_mapping(IngestParams, values, "ingest")


@dataclass(frozen=True)
class Output:
    """What ingest wrote to ``root``: the manifest, the classes and each file's stored pixels."""

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
        """Every stored image, in source order (duplicates, held-out and skipped files left out)."""
        rows = self.manifest[self.manifest["index"] >= 0]
        return np.stack([self.splits[s][0][i] for s, i in zip(rows["split"], rows["index"], strict=True)])


def run_ingest(params: IngestParams, out: Path) -> Output:
    """Run ingestion into ``out`` and read back what it wrote."""
    summary = ingest(params, out)
    dataset = Dataset(out)
    manifest = pd.read_csv(out / MANIFEST, dtype={"error": str, "mode": str}, keep_default_na=False)
    return Output(out, summary, manifest, {split: dataset.load(split) for split in SPLITS})
