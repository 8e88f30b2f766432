"""What changed in the data between a git revision and the workspace (``make data-diff BASE=<rev>``,
and a section of ``make report``): images added, removed, relabelled and moved between splits,
per split and class, with example paths.

    python -m mlpipeline.compare.data_diff [--base main]

An image is its pixels (ingest's ``pixel_sha256``), so a renamed or re-encoded file is the same
image, and a relabel is the same image under another class. Each version is read as
``ingestion.version`` tables it: BASE's through DVC (``DVCFileSystem`` at that revision, from
the cache or the default remote, file by file), the workspace's too where ``data/ingested``
is not checked out.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from tabulate import tabulate

from mlpipeline.compare.collect import add_base_argument, check_base, resolve
from mlpipeline.core import stage
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.paths import INGESTED
from mlpipeline.ingestion.splitting import SPLITS
from mlpipeline.ingestion.version import HELD_OUT, Reader, version_table

if TYPE_CHECKING:
    from dvc.repo import Repo

EXAMPLES = 3  # paths shown per kind of change
STORED = (*SPLITS, HELD_OUT)  # the rows that are images of the version (not duplicates or skipped)


def revision_reader(repo: Repo, rev: str | None, folder: Path) -> Reader:
    """A file of ``folder`` at ``rev`` (None: the workspace) by its name, through DVC: git-tracked
    or DVC-tracked alike, from the workspace, the cache or the default remote (a CI clone that
    pulled no data still compares)."""
    from dvc.fs import DVCFileSystem

    fs = DVCFileSystem(repo=repo.root_dir, rev=rev)  # by path: given a Repo, DVC ignores rev
    return lambda name: fs.read_bytes(f"{folder.as_posix()}/{name}")


def images_of(read: Reader, where: str) -> pd.DataFrame:
    """The version's images by pixel sha256: source, class, split (held out: ``held_out``)."""
    table = version_table(read, where)
    table = table[table["split"].isin(STORED)]
    return table.set_index("pixel_sha256")[["source", "class", "split"]]


@dataclass(frozen=True)
class DataDiff:
    """The images of each kind of change, as rows of both versions' columns (``_base``, ``_now``)."""

    before: int
    after: int
    changes: dict[str, pd.DataFrame]

    @property
    def empty(self) -> bool:
        return not any(len(frame) for frame in self.changes.values())


def diff_versions(before: pd.DataFrame, after: pd.DataFrame) -> DataDiff:
    joined = before.join(after, how="outer", suffixes=("_base", "_now"))
    both = joined["source_base"].notna() & joined["source_now"].notna()
    changes = {
        "added": joined[joined["source_base"].isna()],
        "removed": joined[joined["source_now"].isna()],
        "relabelled": joined[both & (joined["class_base"] != joined["class_now"])],
        "moved": joined[both & (joined["split_base"] != joined["split_now"])],
    }
    ordered = {
        kind: frame.sort_values("source_base" if kind == "removed" else "source_now")
        for kind, frame in changes.items()
    }
    return DataDiff(len(before), len(after), ordered)


def per_split_and_class(diff: DataDiff) -> pd.DataFrame:
    """Counts of each kind per split and class: an image counts where it is now (removed ones:
    where they were; a relabel or move also where it came from, as ``... out``)."""
    counts = []
    for kind, frame in diff.changes.items():
        side = "base" if kind == "removed" else "now"
        counts.append(frame.groupby([f"split_{side}", f"class_{side}"]).size().rename(kind))
        if kind in ("relabelled", "moved"):
            counts.append(frame.groupby(["split_base", "class_base"]).size().rename(f"{kind} out"))
    table = pd.concat([c.rename_axis(["split", "class"]) for c in counts], axis=1)
    table = table.fillna(0).astype(int).reset_index()
    table["split"] = pd.Categorical(table["split"], STORED, ordered=True)
    return table.sort_values(["split", "class"])


def examples(diff: DataDiff) -> list[str]:
    lines = []
    for kind, frame in diff.changes.items():
        if not len(frame):
            continue
        shown = [describe(kind, row) for _, row in frame.head(EXAMPLES).iterrows()]
        more = f", and {len(frame) - EXAMPLES} more" if len(frame) > EXAMPLES else ""
        lines.append(f"- {kind} ({len(frame)}): {', '.join(shown)}{more}")
    return lines


def describe(kind: str, row: pd.Series) -> str:
    if kind == "added":
        return f"`{row['source_now']}` ({row['class_now']}, {row['split_now']})"
    if kind == "removed":
        return f"`{row['source_base']}` ({row['class_base']}, {row['split_base']})"
    if kind == "relabelled":
        return f"`{row['source_now']}` ({row['class_base']} -> {row['class_now']})"
    return f"`{row['source_now']}` ({row['split_base']} -> {row['split_now']})"


def diff_markdown(diff: DataDiff, base: str) -> str:
    """The data section: a summary line, the counts per split and class, examples."""
    counts = ", ".join(f"{len(frame)} {kind}" for kind, frame in diff.changes.items())
    head = f"{diff.before} images at `{base}`, {diff.after} in the workspace: {counts}."
    if diff.empty:
        return f"{head} Every image is where it was, with its label."
    table = per_split_and_class(diff)
    rows = table.astype(str).values.tolist()
    body = tabulate(rows, headers=list(table.columns), tablefmt="github", disable_numparse=True)
    return "\n\n".join([head, body, "\n".join(examples(diff))])


def unreadable() -> tuple[type[BaseException], ...]:
    """What reading a version's files raises when they are not there or not what ingest writes:
    not in the cache and no remote (DVC's errors, its data index's), gone, malformed."""
    from dvc.exceptions import DvcException
    from dvc_data.index import DataIndexError

    return (PipelineError, DvcException, DataIndexError, OSError, ValueError)


def data_section(repo: Repo, base: str) -> tuple[str, str]:
    """The report's data section, and what could not be read for it (one line, or "")."""
    try:
        before = images_of(revision_reader(repo, base, INGESTED), f"{INGESTED} at {base}")
        after = images_of(revision_reader(repo, None, INGESTED), str(INGESTED))
    except unreadable() as exc:
        return "", f"{INGESTED} ({first_line(exc)})"
    return diff_markdown(diff_versions(before, after), base), ""


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mlpipeline.compare.data_diff", description=__doc__.split("\n")[0]
    )
    add_base_argument(parser)
    args = parser.parse_args(argv)

    def body() -> None:
        from dvc.repo import Repo

        logging.getLogger("dvc").setLevel(logging.ERROR)
        with Repo(os.getcwd()) as repo:
            resolve(repo, check_base(args.base))
            section, missing = data_section(repo, args.base)
        if missing:
            raise PipelineError(f"data-diff: cannot read {missing}")
        print(section)

    stage.run("data-diff", body)


if __name__ == "__main__":
    main()
