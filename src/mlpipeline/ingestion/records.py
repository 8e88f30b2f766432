"""What ingest records of each image beside the pixels: where it came from and its hashes.

Each shard ``<split>-NNNNN.safetensors`` has a records file ``<split>-NNNNN.csv``, one row a
stored image, in the shard's row order: the source file's name (relative to ``ingest.source``),
its class, the sha256 of the file and of the decoded pixels, and the file's pixel mode before
conversion. Written once with its shard and never changed, so a new data version keeps both
files as they are (DVC stores and moves neither again), and the next ingest learns from them
which files it has seen, with which pixels, without decoding them (docs/growing.md).

``excluded.csv`` lists, per version, the source files that are no stored row: duplicates of a
kept image, and files skipped (unreadable, or one image under several labels), with why.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.shards import SHARD_SUFFIX

RECORD_COLUMNS = ("source", "class", "file_sha256", "pixel_sha256", "mode")
EXCLUDED = "excluded.csv"
EXCLUDED_COLUMNS = ("source", "class", "status", "file_sha256", "pixel_sha256", "mode", "error")
RECORDS_SUFFIX = ".csv"
DIGEST_BYTES = 32


def records_name(shard: str) -> str:
    """``train-00003.safetensors`` -> ``train-00003.csv``."""
    return shard.removesuffix(SHARD_SUFFIX) + RECORDS_SUFFIX


def csv_bytes(header: tuple[str, ...], rows: Iterable[tuple]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


@dataclass(frozen=True)
class Records:
    """A records file read back: one entry a stored row."""

    source: list[str]
    classes: list[str]
    file_sha256: np.ndarray  # uint8 N x 32
    pixel_sha256: np.ndarray  # uint8 N x 32
    mode: list[str]

    def __len__(self) -> int:
        return len(self.source)


def read_csv(data: bytes, columns: tuple[str, ...], where: str) -> pd.DataFrame:
    """A CSV ingest wrote, every cell a string; one line naming ``where`` if it is not one."""
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_filter=False)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{where}: not a CSV ingest wrote ({exc})")
    if tuple(frame.columns) != columns:
        raise PipelineError(f"{where}: columns {list(frame.columns)}, expected {list(columns)}")
    return frame


def parse_records(data: bytes, where: str) -> Records:
    frame = read_csv(data, RECORD_COLUMNS, where)
    return Records(
        source=frame["source"].tolist(),
        classes=frame["class"].tolist(),
        file_sha256=hex_digests(frame["file_sha256"], where),
        pixel_sha256=hex_digests(frame["pixel_sha256"], where),
        mode=frame["mode"].tolist(),
    )


def hex_digests(column: pd.Series, where: str) -> np.ndarray:
    """A column of sha256 hex digests as an N x 32 uint8 array."""
    try:
        joined = bytes.fromhex("".join(column.tolist()))
    except ValueError as exc:
        raise PipelineError(f"{where}: a sha256 that is not hex ({exc})")
    if len(joined) != DIGEST_BYTES * len(column):
        raise PipelineError(f"{where}: a sha256 that is not 64 hex digits")
    return np.frombuffer(joined, dtype=np.uint8).reshape(len(column), DIGEST_BYTES)
