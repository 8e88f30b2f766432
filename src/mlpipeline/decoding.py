"""Ingest's hot loop: read and decode one batch of source files, in this process or a worker.

A batch carries what a spawned worker needs (the filesystem, the samples, the preprocessing)
and comes back as a few arrays, so pickling costs little per image and the parent only
writes results in order (``core.workers.ordered_map``): any worker count, same bytes.
Workers read their files themselves, so reading spreads over the cores along with decoding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import fsspec
import numpy as np

from mlpipeline.core.errors import PipelineError
from mlpipeline.images import Preprocessing, decode
from mlpipeline.sources import RawSample, read_files

BATCH_IMAGES = 64  # samples per task: amortizes the pickling, bounds what is in flight


@dataclass(frozen=True)
class Batch:
    fs: fsspec.AbstractFileSystem
    samples: list[RawSample]
    preprocessing: Preprocessing
    max_pixels: int


@dataclass(frozen=True)
class DecodedBatch:
    pixels: np.ndarray  # uint8 n x C x H x W; zeros where the sample failed
    file_digests: np.ndarray  # uint8 n x 32, sha256 of the file bytes (zeros where failed)
    pixel_digests: np.ndarray  # uint8 n x 32, sha256 of the decoded pixels
    modes: list[str]  # each file's pixel mode before conversion ("" where failed)
    converted: np.ndarray  # bool n: the mode was converted
    rotated: np.ndarray  # bool n: an EXIF orientation was applied
    errors: list[str | None]  # why a sample failed ("file is empty"), else None


def decode_batch(batch: Batch) -> DecodedBatch:
    """Read and decode every sample of ``batch``; a bad file is reported, not raised."""
    n = len(batch.samples)
    channels, (height, width) = batch.preprocessing.channels, batch.preprocessing.image_size
    out = DecodedBatch(
        pixels=np.zeros((n, channels, height, width), dtype=np.uint8),
        file_digests=np.zeros((n, 32), dtype=np.uint8),
        pixel_digests=np.zeros((n, 32), dtype=np.uint8),
        modes=[""] * n,
        converted=np.zeros(n, dtype=bool),
        rotated=np.zeros(n, dtype=bool),
        errors=[None] * n,
    )
    for i, (sample, data) in enumerate(read_files(batch.fs, batch.samples)):
        if isinstance(data, str):
            out.errors[i] = data
            continue
        try:
            decoded = decode(data, sample.shown, batch.preprocessing, batch.max_pixels)
        except PipelineError as exc:
            out.errors[i] = str(exc).removeprefix(f"{sample.shown}: ")
            continue
        out.pixels[i] = decoded.pixels
        out.file_digests[i] = np.frombuffer(hashlib.sha256(data).digest(), np.uint8)
        out.pixel_digests[i] = np.frombuffer(hashlib.sha256(decoded.pixels.tobytes()).digest(), np.uint8)
        out.modes[i], out.converted[i], out.rotated[i] = decoded.mode, decoded.converted, decoded.rotated
    return out
