"""Where the files of a previous data version come from: a folder, or DVC's cache by the md5
that ``dvc.lock`` recorded for ``data/ingested`` (``ingest.base``).

Ingest builds a new version on a previous one (docs/growing.md) and needs that version's
files: its small ones (``dataset.json``, the records) always, its shard files to copy or to
take rows from. DVC deletes a stage's outputs before it runs, so they are read from DVC's
cache, where every committed version lives; a file the local cache lacks (a fresh clone that
pulled only the newest version) is fetched from the default remote, as ``dvc fetch`` would,
object by object: only what ingest reads, never the whole version. The files are the same
bytes wherever they come from, so the output is too.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Protocol

from mlpipeline.core.errors import PipelineError
from mlpipeline.ingestion.sources import reaching


class VersionFiles(Protocol):
    """A data version's files, by their names inside it."""

    where: str  # what messages call the version

    def paths(self, names: list[str]) -> dict[str, Path]:
        """A local file holding each of ``names`` (fetched first where needed); read only."""
        ...


class FolderVersion:
    """A version that is a folder on disk: what tests and benchmarks build on."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.where = str(self.root)

    def paths(self, names: list[str]) -> dict[str, Path]:
        missing = [name for name in names if not (self.root / name).is_file()]
        if missing:
            raise PipelineError(f"{self.root / missing[0]}: missing from the base version")
        return {name: self.root / name for name in names}


class CachedVersion:
    """``data/ingested`` as DVC stored it under ``md5`` (its ``.dir`` object), read from the DVC
    cache of the repository at ``root``, and from its default remote where the cache lacks a file."""

    def __init__(self, md5: str, root: Path | None = None) -> None:
        from dvc.exceptions import DvcException
        from dvc.repo import Repo

        self.oid = md5 if md5.endswith(".dir") else f"{md5}.dir"
        self.where = f"ingest.base {self.oid}"
        try:
            self.repo = Repo(str(root) if root is not None else None)
        except DvcException as exc:
            raise PipelineError(f"{self.where}: needs the DVC repository it came from ({exc})")
        self.cache = self.repo.cache.local
        listing = json.loads(self._local([self.oid])[self.oid].read_bytes())
        self.md5s = {str(entry["relpath"]): str(entry["md5"]) for entry in listing}

    def paths(self, names: list[str]) -> dict[str, Path]:
        unknown = [name for name in names if name not in self.md5s]
        if unknown:
            raise PipelineError(f"{self.where}: has no file {unknown[0]}")
        found = self._local([self.md5s[name] for name in names])
        return {name: found[self.md5s[name]] for name in names}

    def _local(self, oids: list[str]) -> dict[str, Path]:
        """Each object's file in the local cache, fetching the missing ones from the remote."""
        paths = {oid: Path(self.cache.oid_to_path(oid)) for oid in oids}
        missing = [oid for oid, path in paths.items() if not path.is_file()]
        if missing:
            self._fetch(missing)
        for oid in missing:
            check_md5(paths[oid], oid.removesuffix(".dir"), self.where)
        return paths

    def _fetch(self, oids: list[str]) -> None:
        """Copy ``oids`` from the default remote into the cache; one line if it cannot."""
        from dvc.config import NoRemoteError
        from dvc.exceptions import DvcException

        why = f"{len(oids)} of its files are not in the DVC cache"
        todo = "dvc fetch the commit that made it, or set ingest.base: null to build from scratch"
        try:
            remote = self.repo.cloud.get_remote_odb(None, "ingest")
        except NoRemoteError:
            raise PipelineError(f"{self.where}: {why} and no default remote is set; {todo}") from None
        except DvcException as exc:
            raise PipelineError(f"{self.where}: {why} and the remote is unusable ({exc}); {todo}") from None
        failed: list[tuple[str, BaseException]] = []
        shown = f"{self.where}: {why}, nor on remote {remote.fs.unstrip_protocol(remote.path)}"
        try:
            with reaching(shown):
                self.cache.add(
                    [remote.oid_to_path(oid) for oid in oids],
                    remote.fs,
                    oids,
                    on_error=lambda oid, exc: failed.append((oid, exc)),
                )
        except PipelineError as exc:
            raise PipelineError(f"{exc}; {todo}") from None
        if failed:
            oid, exc = failed[0]
            cause = "not found" if isinstance(exc, FileNotFoundError) else str(exc).splitlines()[0]
            raise PipelineError(f"{shown} ({oid}: {cause}; was it pushed?); {todo}") from None


def check_md5(path: Path, md5: str, where: str) -> None:
    """Refuse a fetched object whose bytes are not the ones its name promises."""
    with open(path, "rb") as handle:
        found = hashlib.file_digest(handle, "md5").hexdigest()
    if found != md5:
        os.unlink(path)
        raise PipelineError(f"{where}: the remote's copy of {md5} is damaged (its md5 is {found})")
