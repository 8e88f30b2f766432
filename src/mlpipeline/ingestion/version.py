"""A data version as one table, a row a source file: where each went and with which hashes.

What ``manifest.csv`` was before the data could grow: built from the version's records files,
its ``dataset.json`` (which stored rows are live or held out) and its ``excluded.csv``, so no
per-version file repeats what the shards' records already say. The data diff (``compare``)
and ``python -m mlpipeline.ingestion.version [data/ingested]`` (the table as CSV on stdout) read it.

Rows come split by split in the dataset's order (``index``: the place a reader sees the image
at), held-out rows after their split's, then the excluded files in source order; the rows of
images that left the source (a version's dead rows) are not in it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from mlpipeline.core import stage
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.paths import INGESTED
from mlpipeline.core.shards import META_FILE, DatasetInfo, parse_info
from mlpipeline.ingestion.records import (
    EXCLUDED,
    EXCLUDED_COLUMNS,
    RECORD_COLUMNS,
    read_csv,
    records_name,
)
from mlpipeline.ingestion.splitting import SPLITS

COLUMNS = ("source", "class", "label", "split", "file_sha256", "pixel_sha256", "index", "mode", "error")
HELD_OUT = "held_out"

Reader = Callable[[str], bytes]  # a file of the version, by its name in it -> its bytes


def folder_reader(root: Path) -> Reader:
    """The files of a version on disk; a missing one is one line naming it."""

    def read(name: str) -> bytes:
        try:
            return (Path(root) / name).read_bytes()
        except FileNotFoundError:
            raise PipelineError(f"{Path(root) / name}: not found (has ingest written {root}?)") from None

    return read


def version_table(read: Reader, where: str) -> pd.DataFrame:
    """Every source file of the version: ``COLUMNS``, ``where`` naming it in errors."""
    info = parse_info(read(META_FILE), f"{where}/{META_FILE}")
    parts = [split_table(read, where, info, split) for split in SPLITS if split in info.splits]
    excluded = read_csv(read(EXCLUDED), EXCLUDED_COLUMNS, f"{where}/{EXCLUDED}")
    index = {name: i for i, name in enumerate(info.classes)}
    parts.append(
        excluded.rename(columns={"status": "split"}).assign(
            label=[index.get(name, -1) for name in excluded["class"]], index=-1
        )
    )
    return pd.concat(parts, ignore_index=True)[list(COLUMNS)].astype({"label": int, "index": int})


def split_table(read: Reader, where: str, info: DatasetInfo, split: str) -> pd.DataFrame:
    """The split's live rows in reader order, then its held-out ones."""
    split_info = info.splits[split]
    live, held = [], []
    for name in split_info.shards:
        records = read_csv(read(records_name(name)), RECORD_COLUMNS, f"{where}/{records_name(name)}")
        rows = split_info.live_rows(name)
        live.append(records if rows is None else records.iloc[rows])
        held.append(records.iloc[split_info.held_out_rows(name)])
    index = {name: i for i, name in enumerate(info.classes)}
    frames = [
        pd.concat(part or [pd.DataFrame(columns=RECORD_COLUMNS)], ignore_index=True).assign(split=name)
        for part, name in ((live, split), (held, HELD_OUT))
    ]
    frames[0]["index"] = np.arange(len(frames[0]))
    frames[1]["index"] = -1
    table = pd.concat(frames, ignore_index=True)
    return table.assign(label=[index[name] for name in table["class"]], error="")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mlpipeline.ingestion.version", description=__doc__.split("\n")[0]
    )
    parser.add_argument("root", nargs="?", type=Path, default=INGESTED, help=f"default: {INGESTED}")
    args = parser.parse_args(argv)

    def show() -> None:
        text = version_table(folder_reader(args.root), str(args.root)).to_csv(
            index=False, lineterminator="\n"
        )
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:  # piped into head: what was wanted is shown
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    stage.run("version", show)


if __name__ == "__main__":
    main()
