"""List the samples of a raw source: an image folder or a labels manifest, local or on S3.

Both layouts resolve to the same thing, a sorted list of ``RawSample`` (where the
file is, what it is called in messages and the manifest, and its label), so the
rest of ingestion never cares where the data lives. Paths go through fsspec, so
``s3://bucket/prefix`` works wherever a local folder does.
"""

from __future__ import annotations

import io
import posixpath
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import fsspec
import pandas as pd
from fsspec.core import url_to_fs

from mlpipeline.core.errors import PipelineError
from mlpipeline.images import IMAGE_SUFFIXES

Layout = Literal["auto", "folder", "manifest"]


@dataclass(frozen=True)
class RawSample:
    location: str  # the path within the source's filesystem
    name: str  # stable, machine-independent name: relative to the source root
    label: str
    shown: str  # the path as the user wrote it (source joined with name): what messages name


def natural_key(text: str) -> list[int | str]:
    """Sort "2" before "10": class folders named by numbers read in numeric order."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def resolve_layout(source: str, layout: Layout) -> Literal["folder", "manifest"]:
    if layout != "auto":
        return layout
    return "manifest" if source.lower().endswith(".csv") else "folder"


def list_samples(source: str, layout: Layout) -> tuple[fsspec.AbstractFileSystem, list[RawSample]]:
    """The filesystem of ``source`` and its samples, sorted by name."""
    try:
        fs, root = url_to_fs(source)
    except (ImportError, ValueError) as exc:
        raise PipelineError(f"{source}: cannot open ingest.source ({exc})")
    kind = resolve_layout(source, layout)
    if not fs.exists(root):
        raise PipelineError(f"{source}: source not found (set ingest.source to a folder or a manifest CSV)")
    samples = _from_folder(fs, root, source) if kind == "folder" else _from_manifest(fs, root, source)
    if not samples:
        raise PipelineError(f"{source}: no images found ({', '.join(IMAGE_SUFFIXES)})")
    return fs, sorted(samples, key=lambda s: natural_key(s.name))


def _from_folder(fs: fsspec.AbstractFileSystem, root: str, source: str) -> list[RawSample]:
    if not fs.isdir(root):
        raise PipelineError(f"{source}: is a file; the folder layout needs <class>/<image> under a folder")
    root = root.rstrip("/")
    class_dirs = [
        d["name"] for d in fs.ls(root, detail=True) if d["type"] == "directory" and not _hidden(d["name"])
    ]
    if not class_dirs:
        raise PipelineError(f"{source}: no class folders (the folder layout is <class>/<image>)")
    samples = []
    for class_dir in class_dirs:
        label = posixpath.basename(class_dir.rstrip("/"))
        files = [f for f in fs.find(class_dir) if f.lower().endswith(IMAGE_SUFFIXES) and not _hidden(f)]
        if not files:
            raise PipelineError(f"{_join(source, label)}/: class '{label}' has no images")
        for path in files:
            rel = posixpath.relpath(path, root)
            samples.append(RawSample(_location(fs, path), rel, label, shown=_join(source, rel)))
    return samples


def _from_manifest(fs: fsspec.AbstractFileSystem, path: str, source: str) -> list[RawSample]:
    try:
        with fs.open(path, "rb") as handle:
            frame = pd.read_csv(io.BytesIO(handle.read()), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{source}: not a readable CSV manifest ({exc})")
    missing = [c for c in ("path", "label") if c not in frame.columns]
    if missing:
        raise PipelineError(f"{source}: manifest needs columns 'path,label', missing {', '.join(missing)}")
    base, shown_base = posixpath.dirname(path), posixpath.dirname(source)
    samples = []
    for row, (rel, label) in enumerate(zip(frame["path"], frame["label"], strict=True), start=2):
        if not rel or not label:
            raise PipelineError(f"{source}: line {row} has an empty path or label")
        absolute = "://" in rel or rel.startswith("/")
        target, shown = (
            (rel, rel) if absolute else (posixpath.join(base, rel), posixpath.join(shown_base, rel))
        )
        samples.append(RawSample(_location(fs, target), rel, label, shown))
    return samples


def read_files(
    fs: fsspec.AbstractFileSystem, samples: Sequence[RawSample], chunk: int = 512
) -> Iterator[tuple[RawSample, bytes]]:
    """Yield each sample with its bytes; remote files are fetched concurrently per chunk.

    ``cat_ranges`` rather than ``cat``: it reads each path as given, where ``cat``
    would expand glob characters (``scan[1].png``) and miss the file.
    """
    for start in range(0, len(samples), chunk):
        batch = list(samples[start : start + chunk])
        contents = fs.cat_ranges([s.location for s in batch], None, None, on_error="return")
        for sample, data in zip(batch, contents, strict=True):
            if isinstance(data, FileNotFoundError):
                raise PipelineError(f"{sample.shown}: file not found")
            if isinstance(data, Exception):
                raise PipelineError(f"{sample.shown}: cannot be read ({data})")
            yield sample, data


def _location(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The path as the filesystem keys it (no protocol), so ``fs.cat`` results match."""
    return fs._strip_protocol(path)


def _join(source: str, name: str) -> str:
    return f"{source.rstrip('/')}/{name}"


def _hidden(path: str) -> bool:
    return posixpath.basename(path.rstrip("/")).startswith(".")
