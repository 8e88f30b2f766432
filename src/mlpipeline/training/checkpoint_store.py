"""Where checkpoints live, so that they can outlive the machine that wrote them.

``MLPIPELINE_CHECKPOINT_DIR`` names the place: a folder (absolute, or relative to the repository
root; a shared file system's mount lets any node resume) or an ``s3://bucket/prefix`` URL. Unset,
it is ``.cache/checkpoints`` of the repository. A queued experiment runs in DVC's temporary copy
of the repository (``.dvc/tmp/exps/...``), removed when it ends: its checkpoints go to the
repository that queued it, where the same run key finds them when the experiment is queued again.
Where checkpoints go cannot change a model byte, so it is an environment setting, not a param.

An S3 location is opened the way ``dvc push`` opens the DVC remote on the same bucket (the
repository's merged DVC config: ``endpointurl``, a ``profile``, keys in ``.dvc/config.local``,
then the environment), through dvc-s3 itself; on a bucket no remote names, boto's own chain
(environment, profile). Nothing is read from a URL but checkpoint bytes.

A checkpoint is read back whole or not at all: a local write goes to a temporary sibling that
is renamed over the last one (``core.atomic``), an S3 object appears only once its upload is
complete, and every checkpoint starts with the sha256 of the rest, so a file cut short or
damaged in any other way (a copy that stopped, a disk that lied) is refused and never loaded.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from mlpipeline.core import atomic
from mlpipeline.core.errors import PipelineError, first_line
from mlpipeline.core.urls import redact, redact_text

LOCATION_ENV = "MLPIPELINE_CHECKPOINT_DIR"
DEFAULT_ROOT = Path(".cache/checkpoints")
MAGIC = b"mlpipeline-checkpoint-1\n"
HEADER = len(MAGIC) + hashlib.sha256().digest_size
# DVC runs a queued experiment in <repository>/.dvc/tmp/exps/<queue>/<copy> (dvc's EXEC_TMP_DIR).
EXPERIMENT_COPIES = (".dvc", "tmp", "exps")

log = logging.getLogger("train")


class Store(Protocol):
    """Named byte blobs under one root: ``<key>/<name>``, each written from parts in one piece."""

    where: str  # the root as messages show it

    def read(self, name: str) -> bytes | None: ...

    def write(self, name: str, parts: list[bytes]) -> None: ...

    def remove(self, folder: str) -> None: ...


class LocalStore:
    """A folder on this machine or on a file system every node mounts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        here = Path.cwd()
        self.where = str(root.relative_to(here) if root.is_relative_to(here) else root)

    def read(self, name: str) -> bytes | None:
        path = self.root / name
        return path.read_bytes() if path.is_file() else None

    def write(self, name: str, parts: list[bytes]) -> None:
        with atomic.stream(self.root / name) as handle:
            for part in parts:
                handle.write(part)

    def remove(self, folder: str) -> None:
        shutil.rmtree(self.root / folder, ignore_errors=True)


class ObjectStore:
    """A prefix of an S3 bucket: one object per checkpoint, whole once its upload completes. Opened
    at first use: only rank 0 reads and writes, so other nodes need no credentials for it."""

    def __init__(self, url: str, repository: Path) -> None:
        self.url = url.rstrip("/")
        self.where = redact(self.url)
        self.repository = repository
        self.root = self.url.split("://", 1)[1]

    @functools.cached_property
    def fs(self) -> Any:
        return s3_filesystem(self.url, self.repository)

    def read(self, name: str) -> bytes | None:
        try:
            return self._call("read", self.fs.cat_file, f"{self.root}/{name}")
        except FileNotFoundError:
            return None

    def write(self, name: str, parts: list[bytes]) -> None:
        self._call("write", self.fs.pipe_file, f"{self.root}/{name}", b"".join(parts))

    def remove(self, folder: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call("remove", self.fs.rm, f"{self.root}/{folder}", recursive=True)

    def _call(self, what: str, method: Callable[..., Any], *args: object, **kwargs: object) -> Any:
        try:
            return method(*args, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as exc:  # no server, no credentials, no bucket: one line, whatever raised
            raise PipelineError(
                f"{LOCATION_ENV}={self.where}: cannot {what} checkpoints there ({_first_line(exc)})"
            ) from None


def seal(payload: bytes) -> list[bytes]:
    """``payload`` behind the marker and its sha256: what a store holds, in two parts (a local
    write never joins them: a copy of a ResNet-50's checkpoint took as long as its sha256)."""
    return [MAGIC + hashlib.sha256(payload).digest(), payload]


def unseal(data: bytes, shown: str) -> memoryview | None:
    """The payload of ``data`` as ``seal`` wrote it, or None (with a warning) when it is not whole."""
    view = memoryview(data)
    if (
        bytes(view[: len(MAGIC)]) != MAGIC
        or bytes(view[len(MAGIC) : HEADER]) != hashlib.sha256(view[HEADER:]).digest()
    ):
        log.warning("ignoring checkpoint %s: incomplete or damaged (its checksum does not match)", shown)
        return None
    return view[HEADER:]


def checkpoint_location() -> str:
    """``MLPIPELINE_CHECKPOINT_DIR`` as set (empty: the default folder)."""
    return os.environ.get(LOCATION_ENV, "").strip()


def open_store(location: str | Path, workspace: Path | None = None) -> Store:
    """The store at ``location`` (a path or an s3:// URL; empty: the default folder), local paths
    taken relative to the repository that ``workspace`` (default: the current folder) belongs to."""
    text = str(location)
    root = repository_root(workspace or Path.cwd())
    if "://" not in text:
        return LocalStore(root / (Path(text) if text else DEFAULT_ROOT))
    if not text.startswith("s3://") or not text[len("s3://") :].strip("/"):
        raise PipelineError(
            f"{LOCATION_ENV}={redact(text)}: must be a folder (local or shared) or an s3://bucket/prefix URL"
        )
    return ObjectStore(text, root)


def repository_root(workspace: Path) -> Path:
    """``workspace``, or the repository whose queued experiment runs in it (DVC's temporary copy)."""
    workspace = workspace.resolve()
    for parent in workspace.parents:
        if parent.parts[-len(EXPERIMENT_COPIES) :] == EXPERIMENT_COPIES:
            return parent.parents[len(EXPERIMENT_COPIES) - 1]
    return workspace


def s3_filesystem(url: str, repository: Path) -> Any:
    """An s3fs filesystem for ``url`` with the credentials of the DVC remote on its bucket, if any."""
    from dvc.config import Config, ConfigError
    from dvc_s3 import S3FileSystem

    bucket = url[len("s3://") :].split("/", 1)[0]
    settings: dict[str, object] = {"url": url}
    try:
        remotes = Config(dvc_dir=str(repository / ".dvc"))["remote"] if (repository / ".dvc").is_dir() else {}
    except ConfigError as exc:
        raise PipelineError(f"{repository / '.dvc'}: unreadable DVC config ({_first_line(exc)})") from None
    for remote in remotes.values():
        remote_url = str(remote.get("url", ""))
        if remote_url.startswith("s3://") and remote_url[len("s3://") :].split("/", 1)[0] == bucket:
            settings = {**remote, "url": url}
            break
    try:
        return S3FileSystem(**settings).fs
    except Exception as exc:
        raise PipelineError(f"{LOCATION_ENV}={redact(url)}: cannot open it ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    return redact_text(first_line(exc))
