"""List the samples of a raw source folder: its class folders, or a labels manifest inside it.

``ingest.source`` is always a folder, local or ``s3://bucket/prefix``: it is the stage's DVC
dependency, so every file that can reach the model is hashed by DVC. A manifest
(``ingest.manifest``, a ``path,label`` CSV) lives inside that folder and may only name files
inside it; a path that escapes it (absolute, ``..`` past the folder, another URL) is refused.
What DVC does not hash in a local source (``.dvcignore``d paths, symlinked folders: see
``mlpipeline.ingestion.unhashed``) is left out of a class-folder listing and counted, and
refused when a manifest names it.

Both layouts resolve to the same thing, a stream of ``RawSample`` in a fixed order (class
folders in natural order, each folder's files in natural order; a manifest in its own row
order), produced class by class or row by row so that memory never holds the whole listing.
Paths go through fsspec, so S3 works wherever a local folder does.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.urls import redact
from mlpipeline.ingestion.images import IMAGE_SUFFIXES
from mlpipeline.ingestion.labels import class_name, folder_classes
from mlpipeline.ingestion.unhashed import LeftOut, Unhashed, inside, refuse_unhashed, repo_root

# The first look at an S3 source fails fast: one attempt with a short connect timeout, not
# botocore's and s3fs's retries with backoff (which took 10 s to end in a 138-line traceback).
# Reading the files afterwards keeps s3fs's retries: a million reads meet transient errors.
S3_PROBE_OPTIONS = {
    "skip_instance_cache": True,
    "config_kwargs": {"connect_timeout": 3, "retries": {"max_attempts": 1}},
}
S3_PROBE_RETRIES = 1
REMOTE_FETCH = 16  # remote files fetched at once: enough to hide latency, few enough for camera JPEGs
_DIGIT_RUNS = re.compile(r"(\d+)")
REMOTE_ERROR_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "fsspec")
MANIFEST_COLUMNS = ("path", "label", "split", "group")  # split and group are optional
PINNED_SPLITS = ("train", "val", "test")  # what a manifest's split column may say


@dataclass(frozen=True)
class RawSample:
    location: str  # the path within the source's filesystem (its root, as fsspec keys it, + name)
    name: str  # stable, machine-independent name: relative to the source root (or as the manifest says)
    label: str
    shown: str  # the source (password redacted) joined with the name: what messages name
    split: str | None = None  # pinned by the manifest's split column (or its group's), else None
    group: str | None = None  # the manifest's group column: a group's images share one split


@dataclass
class Source:
    """An opened source folder: where it is, its classes, and what the listing passed over."""

    fs: fsspec.AbstractFileSystem
    url: str  # ingest.source as written
    root: str  # the folder's path within ``fs``
    manifest: str | None  # ingest.manifest: a path inside the folder, or None for class folders
    labels: list[str]  # every label found (in NFC: ``mlpipeline.ingestion.labels``), in natural order
    unhashed: Unhashed | None = None  # what DVC does not hash, for a local source
    folders: dict[str, str] = field(default_factory=dict)  # class folders: label -> folder name
    group_pins: dict[str, str] = field(default_factory=dict)  # manifest: group -> the split a row pins
    ignored: Counter[str] = field(default_factory=Counter)  # non-image files per suffix, filled as listed

    @property
    def recorded(self) -> str:
        """The source as what ingest writes records it, the same bytes however ``ingest.source`` is
        spelled: a local folder relative to the repository (``./data/raw/`` is ``data/raw``), or
        whole and normalized outside it; a URL without its password or a trailing slash."""
        if self.unhashed is None:
            return self.shown.rstrip("/")
        folder = self.unhashed.root
        base = repo_root() or os.getcwd()
        return (os.path.relpath(folder, base) if inside(folder, base) else folder).replace(os.sep, "/")

    @property
    def left_out(self) -> LeftOut:
        """What the listing passed over because DVC does not hash it."""
        return self.unhashed.left_out if self.unhashed is not None else LeftOut()

    @property
    def shown(self) -> str:
        return redact(self.url)

    def shown_name(self, name: str) -> str:
        """How messages show the sample ``name`` (a manifest's paths are relative to the manifest)."""
        if self.manifest is None:
            return _join(self.shown, name)
        return _join(self.shown, posixpath.normpath(posixpath.join(posixpath.dirname(self.manifest), name)))

    def samples(self) -> Iterator[RawSample]:
        """Every sample, in the fixed order, streamed (class folder by class folder, or row by row)."""
        if self.manifest is None:
            for label in self.labels:
                yield from self._class_folder(label)
        else:
            yield from self._manifest_rows()

    def _class_folder(self, label: str) -> Iterator[RawSample]:
        folder_name = self.folders[label]
        folder = f"{self.root}/{folder_name}"
        with reaching(self.shown):
            files = list(self.unhashed.walk(folder)) if self.unhashed is not None else _find(self.fs, folder)
        images = []
        for rel in files:
            if _hidden(rel):
                continue
            if rel.lower().endswith(IMAGE_SUFFIXES):
                images.append(rel)
            else:
                self.ignored[posixpath.splitext(rel)[1].lower() or "(no suffix)"] += 1
        shown = self.shown
        if not images:
            raise PipelineError(f"{_join(shown, folder_name)}/: class '{label}' has no images")
        for rel in natural_sorted(images):  # the same order as with "<folder>/" in front
            name = f"{folder_name}/{rel}"
            yield RawSample(f"{self.root}/{name}", name, label, _join(shown, name))

    def _manifest_rows(self) -> Iterator[RawSample]:
        assert self.manifest is not None
        base = posixpath.dirname(self.manifest)
        for row in _read_manifest(self):
            where = f"{_join(self.shown, self.manifest)}: line {row.line}"
            name = _inside(base, row.path, where)
            refuse_unhashed(self.unhashed, name, where)
            split = row.split or self.group_pins.get(row.group or "")
            shown = _join(self.shown, name)
            yield RawSample(f"{self.root}/{name}", row.path, row.label, shown, split, row.group)


def natural_key(text: str) -> str:
    """Sort "2" before "10": names with numbers read in numeric order.

    One string about as long as the name, not a list of text and numbers (listing a folder of
    100k names took twice the memory with those): each run of digits becomes NUL, its length
    and its digits without leading zeros. NUL sorts before any character a name can hold, so
    shorter text sorts first, and a longer number after a shorter one.
    """
    parts = _DIGIT_RUNS.split(text)  # text and digit runs alternate, text first
    for i in range(1, len(parts), 2):
        digits = parts[i].lstrip("0") or "0"
        parts[i] = f"\0{chr(len(digits))}{digits}"
    return "".join(parts)


def natural_sorted(names: list[str]) -> list[str]:
    """``names`` in natural order; names that read as equal ("a07", "a7") in plain order, so the
    order never depends on the order a filesystem lists them in."""
    names = sorted(names)
    names.sort(key=natural_key)
    return names


def open_source(url: str, manifest: str | None) -> Source:
    """Check that ``url`` is a reachable folder and find its labels; errors are one line."""
    shown = redact(url)
    try:
        fs, root = url_to_fs(url)
        probe = _probe_fs(url)
    except (ImportError, ValueError) as exc:
        raise PipelineError(f"{shown}: cannot open ingest.source ({exc})")
    root = root.rstrip("/")
    with reaching(shown):
        if not probe.isdir(root):
            if probe.exists(root):
                raise PipelineError(
                    f"{shown}: ingest.source must be a folder (a manifest inside it goes in ingest.manifest)"
                )
            raise PipelineError(f"{shown}: source not found (set ingest.source to a folder)")
        unhashed = Unhashed(root) if isinstance(fs, LocalFileSystem) else None
        source = Source(probe, url, root, manifest, labels=[], unhashed=unhashed)
        folders = folder_classes(_class_labels(source), shown) if manifest is None else {}
        labels, pins = (folders.keys(), {}) if manifest is None else _manifest_labels(source)
    return Source(fs, url, root, manifest, natural_sorted(list(labels)), unhashed, folders, pins)


def _probe_fs(url: str) -> fsspec.AbstractFileSystem:
    """The filesystem for the first look at ``url``: for S3, one that gives up at once."""
    if not url.startswith(("s3://", "s3a://")):
        return url_to_fs(url)[0]
    probe = url_to_fs(url, **S3_PROBE_OPTIONS)[0]
    probe.retries = S3_PROBE_RETRIES
    return probe


@contextmanager
def reaching(shown: str) -> Iterator[None]:
    """Turn a failure to reach a remote store (no server, no credentials, no bucket) into one line."""
    try:
        yield
    except (PipelineError, FileNotFoundError):  # the caller says what is missing
        raise
    except Exception as exc:
        if not _remote_failure(exc):
            raise
        raise PipelineError(f"{shown}: cannot be read ({_cause(exc)})") from None


def read_files(
    fs: fsspec.AbstractFileSystem, samples: Sequence[RawSample]
) -> Iterator[tuple[RawSample, bytes | str]]:
    """Each sample with its bytes, or with the reason it could not be read (a short phrase).

    Local files are read one at a time with plain ``open`` (fsspec's path handling cost a
    sixth of the time of decoding a small PNG), so memory holds one file. Remote files are
    fetched concurrently, ``REMOTE_FETCH`` at a time. ``cat_ranges`` rather than ``cat``: it
    reads each path as given, where ``cat`` would expand glob characters (``scan[1].png``).
    """
    if isinstance(fs, LocalFileSystem):
        yield from ((sample, _read_local(sample.location)) for sample in samples)
        return
    for start in range(0, len(samples), REMOTE_FETCH):
        chunk = samples[start : start + REMOTE_FETCH]
        with reaching(chunk[0].shown):
            contents = fs.cat_ranges([s.location for s in chunk], None, None, on_error="return")
        yield from ((sample, _read_result(data)) for sample, data in zip(chunk, contents, strict=True))


def _read_local(path: str) -> bytes | str:
    """The file's bytes, as many as ``fstat`` gave its size when opened: one read call for a
    local file (``readall`` made a second one to find the end, a sixth of the reading cost)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            remaining, parts = os.fstat(fd).st_size, []
            while remaining > 0 and (part := os.read(fd, remaining)):  # network file systems read short
                parts.append(part)
                remaining -= len(part)
            return b"".join(parts)
        finally:
            os.close(fd)
    except OSError as error:
        return _read_result(error)


def _read_result(data: bytes | Exception) -> bytes | str:
    if isinstance(data, (FileNotFoundError, NotADirectoryError)):
        return "file not found"
    if isinstance(data, Exception):
        return f"cannot be read ({_cause(data)})"
    return data


def _find(fs: fsspec.AbstractFileSystem, folder: str) -> list[str]:
    """Every file below the remote ``folder``, relative to it (a local one is walked by
    ``Unhashed.walk``, through ``os.walk``: fsspec's ``find`` stats each file, which took longer
    than decoding a small PNG)."""
    return [path[len(folder) + 1 :] for path in fs.find(folder) if path.startswith(f"{folder}/")]


def _class_labels(source: Source) -> list[str]:
    if source.unhashed is not None:
        root = source.unhashed.root
        names = os.listdir(root)
        folders = [n for n in names if os.path.isdir(os.path.join(root, n))]  # a link to one too, so
        labels, _ = source.unhashed.filter(root, folders, [])  # that the filter names it as left out
    else:
        entries = source.fs.ls(source.root, detail=True)
        labels = [
            posixpath.basename(d["name"].rstrip("/"))
            for d in entries
            if d["type"] == "directory" and not _hidden(posixpath.basename(d["name"].rstrip("/")))
        ]
    if not labels:
        raise PipelineError(f"{source.shown}: no class folders (the folder layout is <class>/<image>)")
    return labels


def _manifest_labels(source: Source) -> tuple[set[str], dict[str, str]]:
    """Every label of the manifest, and the split each pinned group's rows pin (all must agree)."""
    labels: set[str] = set()
    pins: dict[str, tuple[str, int]] = {}  # group -> (split, the line that pinned it)
    for row in _read_manifest(source):
        labels.add(row.label)
        if row.group and row.split:
            split, line = pins.setdefault(row.group, (row.split, row.line))
            if split != row.split:
                raise PipelineError(
                    f"{_join(source.shown, source.manifest or '')}: line {row.line} pins group "
                    f"'{row.group}' to {row.split}, line {line} to {split}; a group shares one split"
                )
    if not labels:
        raise PipelineError(f"{_join(source.shown, source.manifest or '')}: manifest lists no images")
    return labels, {group: split for group, (split, _) in pins.items()}


@dataclass(frozen=True)
class ManifestRow:
    line: int
    path: str
    label: str
    split: str | None  # the optional split column: train, val or test (empty: not pinned)
    group: str | None  # the optional group column (empty: no group)


def _read_manifest(source: Source) -> Iterator[ManifestRow]:
    """Each row, streamed; malformed files and rows are refused."""
    assert source.manifest is not None
    shown = _join(source.shown, source.manifest)
    relative = _inside("", source.manifest, "ingest.manifest")
    refuse_unhashed(source.unhashed, relative, "ingest.manifest")
    path = f"{source.root}/{relative}"
    try:
        with reaching(shown), source.fs.open(path, "rb") as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
            reader = csv.reader(text)
            header = next(reader, [])
            missing = [c for c in ("path", "label") if c not in header]
            if missing:
                raise PipelineError(
                    f"{shown}: manifest needs columns 'path,label', missing {', '.join(missing)}"
                )
            columns = [header.index(c) if c in header else None for c in MANIFEST_COLUMNS]
            for line, cells in enumerate(reader, start=2):
                yield _row(cells, columns, shown, line)
    except FileNotFoundError:
        raise PipelineError(f"{shown}: manifest not found (ingest.manifest is a path inside ingest.source)")
    except (UnicodeDecodeError, csv.Error) as exc:
        raise PipelineError(f"{shown}: not a readable CSV manifest ({exc})")


def _row(cells: list[str], columns: list[int | None], shown: str, line: int) -> ManifestRow:
    if not cells:
        raise PipelineError(f"{shown}: line {line} is empty")
    if len(cells) <= max(c for c in columns if c is not None):
        raise PipelineError(f"{shown}: line {line} has {len(cells)} column(s), the header more")
    rel, label, split, group = (cells[c].strip() if c is not None else "" for c in columns)
    if not rel or not label:
        raise PipelineError(f"{shown}: line {line} has an empty path or label")
    if split and split not in PINNED_SPLITS:
        raise PipelineError(f"{shown}: line {line}: split '{split}' is none of {', '.join(PINNED_SPLITS)}")
    where = f"{shown}: line {line}"
    return ManifestRow(line, rel, class_name(label, where), split or None, group or None)


def _inside(base: str, rel: str, where: str) -> str:
    """``rel`` (relative to ``base``) as a path inside the source folder, or a one-line refusal."""
    joined = posixpath.normpath(posixpath.join(base, rel)) if rel else ""
    if "://" in rel or rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        raise PipelineError(f"{where}: '{rel}' is not a path inside ingest.source (absolute or a URL)")
    if joined in ("", ".") or joined == ".." or joined.startswith("../"):
        raise PipelineError(f"{where}: '{rel}' points outside ingest.source, which DVC hashes")
    return joined


def _remote_failure(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return isinstance(exc, (OSError, TimeoutError)) or module.split(".")[0] in REMOTE_ERROR_MODULES


def _cause(exc: BaseException) -> str:
    """A one-line reason, without any URL's password."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"\w+://\S+", lambda m: redact(m.group(0)), text)


def _join(source: str, name: str) -> str:
    return f"{source.rstrip('/')}/{name}"


def _hidden(path: str) -> bool:
    """Some part of ``path`` starts with a dot."""
    return "/." in f"/{path.strip('/')}"
