"""What ``mlpipeline-predict`` reads: image files, folders, manifests and ``s3://`` prefixes, listed
as a stream in a fixed order, so a million images never sit in memory as a list.

- a file is taken whatever its suffix (decoding judges it), except a ``.csv``: a manifest, whose
  ``path`` column names the images (relative to the manifest's folder, or absolute, or URLs;
  other columns, such as ingest's ``label``, are ignored), in its row order;
- a folder, local or ``s3://bucket/prefix``, is walked depth first, each folder's entries in
  natural order (``2.png`` before ``10.png``, whatever order the file system lists them in),
  hidden names (``.x``) skipped, image suffixes only. Memory holds one folder's names at a time;
- ``s3://bucket/key`` of one object is that image.

What cannot be listed (a path that does not exist, a folder without images) becomes an item with
its error, at its place in the order; a manifest that cannot be read stops the run in one line.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fsspec.core import url_to_fs

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.urls import redact
from mlpipeline.ingestion.images import IMAGE_SUFFIXES
from mlpipeline.ingestion.sources import natural_sorted, reaching

MANIFEST_SUFFIX = ".csv"
PATH_COLUMN = "path"


@dataclass(frozen=True)
class Item:
    """One image to predict: the name the output shows, where to read it (a local path or a URL),
    or the error that stops it."""

    path: str
    location: str = ""
    error: str | None = None


def list_inputs(paths: Iterable[str]) -> Iterator[Item]:
    """Every image ``paths`` name, in order (see the module's docstring)."""
    for raw in paths:
        raw = str(raw)
        yield from _remote(raw) if "://" in raw else _local(raw)


def _local(raw: str) -> Iterator[Item]:
    if os.path.isdir(raw):
        yield from _nonempty(raw, _walk_local(raw, set()))
    elif os.path.exists(raw):
        yield from _manifest(raw) if raw.lower().endswith(MANIFEST_SUFFIX) else [Item(raw, raw)]
    else:
        yield Item(raw, error=f"{raw}: not found")


def _walk_local(folder: str, above: set[str]) -> Iterator[Item]:
    """The images below ``folder``; a link back to a folder being walked is not followed again."""
    real = os.path.realpath(folder)
    if real in above:
        return
    with os.scandir(folder) as entries:
        kinds = {entry.name: entry.is_dir() for entry in entries if not entry.name.startswith(".")}
    for name in natural_sorted(list(kinds)):
        path = os.path.join(folder, name)
        if kinds[name]:
            yield from _walk_local(path, above | {real})
        elif name.lower().endswith(IMAGE_SUFFIXES):
            yield Item(path, path)


def _remote(raw: str) -> Iterator[Item]:
    shown = redact(raw)
    try:
        fs, root = url_to_fs(raw)
    except (ImportError, ValueError) as exc:
        raise PipelineError(f"{shown}: cannot be opened ({exc})")
    protocol = raw.split("://", 1)[0]
    with reaching(shown):
        is_dir, exists = fs.isdir(root), fs.exists(root)
    if is_dir:
        yield from _nonempty(shown, _walk_remote(fs, root.rstrip("/"), protocol))
    elif not exists:
        yield Item(shown, error=f"{shown}: not found")
    elif raw.lower().endswith(MANIFEST_SUFFIX):
        yield from _manifest(raw)
    else:
        yield Item(shown, raw)


def _walk_remote(fs, folder: str, protocol: str) -> Iterator[Item]:
    with reaching(redact(f"{protocol}://{folder}")):
        entries = fs.ls(folder, detail=True)
    kinds = {
        posixpath.basename(entry["name"].rstrip("/")): entry["type"] == "directory"
        for entry in entries
        if entry["name"].rstrip("/") != folder
    }
    for name in natural_sorted([name for name in kinds if not name.startswith(".")]):
        if kinds[name]:
            yield from _walk_remote(fs, f"{folder}/{name}", protocol)
        elif name.lower().endswith(IMAGE_SUFFIXES):
            url = f"{protocol}://{folder}/{name}"
            yield Item(redact(url), url)


def _nonempty(shown: str, items: Iterator[Item]) -> Iterator[Item]:
    """``items``, or one error item when the folder held no image."""
    found = False
    for item in items:
        found = True
        yield item
    if not found:
        yield Item(shown, error=f"{shown}: folder has no images ({', '.join(IMAGE_SUFFIXES)})")


def _manifest(raw: str) -> Iterator[Item]:
    """The images of the manifest ``raw``, row by row."""
    shown = redact(raw)
    remote = "://" in raw
    base = raw.rsplit("/", 1)[0] if remote else os.path.dirname(raw)
    try:
        fs, path = url_to_fs(raw)
        with reaching(shown), fs.open(path, "rb") as handle:
            reader = csv.reader(io.TextIOWrapper(handle, encoding="utf-8-sig", newline=""))
            header = next(reader, [])
            if PATH_COLUMN not in header:
                raise PipelineError(f"{shown}: a manifest needs a '{PATH_COLUMN}' column (header: {header})")
            column = header.index(PATH_COLUMN)
            for line, cells in enumerate(reader, start=2):
                yield _row(cells, column, base, remote, f"{shown}: line {line}")
    except (UnicodeDecodeError, csv.Error) as exc:
        raise PipelineError(f"{shown}: not a readable CSV manifest ({exc})")


def _row(cells: list[str], column: int, base: str, remote: bool, where: str) -> Item:
    name = cells[column].strip() if len(cells) > column else ""
    if not name:
        return Item(where, error=f"{where}: no path")
    if "://" in name:
        return Item(redact(name), name)
    if remote:
        if name.startswith("/"):
            return Item(
                name,
                error=f"{where}: '{name}' is absolute: a manifest on a store names URLs or relative paths",
            )
        protocol, folder = base.split("://", 1)
        location = f"{protocol}://{posixpath.normpath(posixpath.join(folder, name))}"
        return Item(redact(location), location)
    location = name if os.path.isabs(name) else os.path.join(base, name)
    return (
        Item(location, location)
        if os.path.exists(location)
        else Item(location, error=f"{location}: not found")
    )
