"""Ingest's hot loop: read and decode one batch of source files, in this process or a worker.

A batch carries what a spawned worker needs (the filesystem, the samples, the preprocessing,
its first row) and the decoded pixels go straight into the scratch's pixel file at the batch's
rows (``scratch_rows``), so only a few bytes an image travel back: the digests and what the
decoder found. The parent records those in order
(``core.workers.WorkerPool.map_pairs``): any worker count, same bytes. Workers read their files
themselves, so reading spreads over the cores along with decoding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

from mlpipeline.core.errors import PipelineError
from mlpipeline.ingestion.images import Conversion, Preprocessing, decode_into, quiet_pillow
from mlpipeline.ingestion.scratch_rows import write_rows
from mlpipeline.ingestion.sources import RawSample, read_files

# Decoded pixels per task. A task costs the parent most of a millisecond here (sending it, taking
# its result, recording it), so a task should hold many times that in decoding: 512 KiB is 170
# 32x32 RGB images, 36 ms here (64 images a task was 9% slower with two workers; 1 MiB no
# faster), and a worker's buffers hold about a MiB (or four images, where four are larger: a
# task of 224x224 RGB images holds four).
BATCH_PIXEL_BYTES = 512 * 1024
BATCH_IMAGES = (4, 1024)  # fewest and most samples per task
DIGEST_BYTES = 32  # sha256
NO_DIGEST = bytes(DIGEST_BYTES)  # where a sample failed
FAILED = Conversion("", False, False)


@dataclass(frozen=True)
class Batch:
    fs: fsspec.AbstractFileSystem
    samples: list[RawSample]
    preprocessing: Preprocessing
    max_pixels: int
    first_row: int  # the scratch row of the batch's first sample
    known: np.ndarray | None = None  # uint8 n x 32: the file sha256 a previous version stored
    # for the sample's name and label (zeros: none); a file that still hashes so is not decoded

    def __reduce__(self) -> tuple[Callable[..., Batch], tuple[Any, ...]]:
        """Travel as plain tuples of strings: pickling the RawSample objects themselves cost the
        parent, which sends every batch, 3.3 µs an image; the tuples cost 0.5 µs."""
        fields = [(s.location, s.name, s.label, s.shown) for s in self.samples]
        return _batch, (self.fs, fields, self.preprocessing, self.max_pixels, self.first_row, self.known)


@dataclass(frozen=True)
class DecodedBatch:
    file_digests: np.ndarray  # uint8 n x 32, sha256 of the file bytes (zeros where failed)
    pixel_digests: np.ndarray  # uint8 n x 32, sha256 of the decoded pixels
    modes: list[str]  # each file's pixel mode before conversion ("" where failed)
    converted: np.ndarray  # bool n: the mode was converted
    rotated: np.ndarray  # bool n: an EXIF orientation was applied
    errors: list[str | None]  # why a sample failed ("file is empty"), else None
    known: np.ndarray  # bool n: the file is the one ``Batch.known`` names, not decoded (no pixel digest)


def batch_images(preprocessing: Preprocessing) -> int:
    """Samples per task: ``BATCH_PIXEL_BYTES`` of decoded pixels, within ``BATCH_IMAGES``."""
    height, width = preprocessing.image_size
    fewest, most = BATCH_IMAGES
    return max(fewest, min(most, BATCH_PIXEL_BYTES // (preprocessing.channels * height * width)))


def decode_batch(batch: Batch) -> DecodedBatch:
    """Read and decode every sample of ``batch`` into the pixel file (zeros where a sample
    failed: a bad file is reported, not raised), but for the files a previous version stored
    (``Batch.known``): those are only hashed.

    Images land in one H x W x C buffer, transposed to C x H x W once for the batch;
    digests are gathered as bytes and turned into arrays at the end. Per-image numpy
    calls cost as much as decoding a small PNG does.
    """
    n = len(batch.samples)
    channels, (height, width) = batch.preprocessing.channels, batch.preprocessing.image_size
    pixels = np.zeros((n, height, width, channels), dtype=np.uint8)
    file_digests, conversions, errors = [NO_DIGEST] * n, [FAILED] * n, [None] * n
    known = np.zeros(n, dtype=bool)
    with quiet_pillow():
        for i, (sample, data) in enumerate(read_files(batch.fs, batch.samples)):
            if isinstance(data, str):
                errors[i] = data
                continue
            if batch.known is not None and batch.known[i].any():
                digest = hashlib.sha256(data).digest()
                if digest == batch.known[i].tobytes():
                    file_digests[i], known[i] = digest, True
                    continue
            try:
                conversions[i] = decode_into(
                    pixels[i], data, sample.shown, batch.preprocessing, batch.max_pixels
                )
            except PipelineError as exc:
                errors[i] = str(exc).removeprefix(f"{sample.shown}: ")
                continue
            file_digests[i] = hashlib.sha256(data).digest()
    decoded = np.flatnonzero(~known)
    planar = np.ascontiguousarray(pixels[decoded].transpose(0, 3, 1, 2))  # of the decoded rows
    pixel_digests = [NO_DIGEST] * n
    for i, image in zip(decoded.tolist(), planar, strict=True):
        if errors[i] is None:
            pixel_digests[i] = hashlib.sha256(image).digest()
    if len(decoded) == n:
        write_rows(planar, batch.first_row)
    else:  # only the decoded rows: the scratch's file stays sparse, its disk what was decoded
        for i, image in zip(decoded.tolist(), planar, strict=True):
            write_rows(image[None], batch.first_row + i)
    return DecodedBatch(
        file_digests=_digest_array(file_digests),
        pixel_digests=_digest_array(pixel_digests),
        modes=[c.mode for c in conversions],
        converted=np.array([c.converted for c in conversions], dtype=bool),
        rotated=np.array([c.rotated for c in conversions], dtype=bool),
        errors=errors,
        known=known,
    )


def _batch(fs: fsspec.AbstractFileSystem, fields: list[tuple[str, str, str, str]], *rest: Any) -> Batch:
    return Batch(fs, [RawSample(*f) for f in fields], *rest)


def _digest_array(digests: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), DIGEST_BYTES)
