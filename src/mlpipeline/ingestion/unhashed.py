"""What of a local source DVC does not hash, so that ingest leaves it out too (and train, of a
pretrained weights folder: ``mlpipeline.modeling.pretrained``).

``dvc.yaml`` declares ``ingest.source`` as the stage's dependency: DVC's hash of that folder is
all that tells a later ``dvc repro`` or ``dvc status`` that the data changed, so a file outside
the hash must not reach the model. DVC 3 hashes a dependency folder by walking it (dvc-data's
``build``, checked with dvc 3.67) and passes over:

- paths that ``.dvcignore`` excludes (for a folder inside the DVC repository), read here with
  DVC's own matcher, ``dvc.ignore.DvcIgnoreFilter``, so every pattern means what it means to DVC;
- everything below a symlinked folder, wherever the link points, even inside the source: the
  walk does not follow it, so retargeting the link or changing what it holds goes unnoticed.

A symlinked *file* is hashed by its target's content, so it is read like any other file. An S3
source has no links, and DVC applies ``.dvcignore`` only to the workspace: it hashes every object
under the prefix, and ingest reads them all.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mlpipeline.core.errors import PipelineError

FORGET_EVERY = 4096  # manifest paths checked between emptyings of the matcher's caches


@dataclass
class LeftOut:
    """What a class-folder listing passed over because DVC does not hash it, for the summary line."""

    excluded: int = 0  # files that .dvcignore excludes
    linked: list[str] = field(default_factory=list)  # symlinked folders, relative to the source


class Unhashed:
    """The rules above for the local folder ``root``: a filtered walk, and a check of one path."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.left_out = LeftOut()
        self._ignore = _dvcignore(self.root)
        self._linked_dirs: dict[str, bool] = {}  # one entry a folder, not a file
        self._checked = 0  # manifest paths checked since the matcher's caches were last emptied

    def walk(self, folder: str) -> Iterator[str]:
        """Every file below ``folder`` (inside the root) that DVC hashes, relative to ``folder``;
        hidden names are passed over silently, the rest of what is left out is counted."""
        folder = os.path.abspath(folder)
        for top, dirs, files in os.walk(folder):
            dirs[:], files = self.filter(top, dirs, files)
            prefix = os.path.relpath(top, folder).replace(os.sep, "/") + "/" if top != folder else ""
            yield from (prefix + name for name in files)

    def filter(self, top: str, dirs: list[str], files: list[str]) -> tuple[list[str], list[str]]:
        """The folders to walk into and the files to read in the listed folder ``top``."""
        dirs, files = [d for d in dirs if not d.startswith(".")], [f for f in files if not f.startswith(".")]
        if self._ignore is not None:
            kept_dirs, kept_files = self._ignore(top, list(dirs), list(files))
            self._forget()
            self.left_out.excluded += len(files) - len(kept_files)
            for name in set(dirs) - set(kept_dirs):
                self.left_out.excluded += _count_files(os.path.join(top, name))
            dirs, files = kept_dirs, kept_files
        linked = [d for d in dirs if os.path.islink(os.path.join(top, d))]
        self.left_out.linked += sorted(os.path.relpath(os.path.join(top, d), self.root) for d in linked)
        return [d for d in dirs if d not in linked], files

    def refusal(self, name: str) -> str | None:
        """Why DVC does not hash the file ``name`` (relative to the root), or None if it does."""
        parts = name.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if self._is_linked_dir(folder):
                return f"is in the symlinked folder '{folder}', whose files DVC does not hash"
        if self._ignore is not None:
            self._checked = (self._checked + 1) % FORGET_EVERY
            if self._checked == 0:
                self._forget()
            if self._ignore.is_ignored_file(os.path.join(self.root, name)):
                return "is excluded by .dvcignore, so DVC does not hash it"
        return None

    def _forget(self) -> None:
        """Empty the matcher's caches: each ``DvcIgnorePatterns`` remembers every path it matched
        (an unbounded ``functools.cache``: 300 bytes a file, 300 MB at a million files)."""
        for patterns in self._ignore.ignores_trie_fs.values():
            patterns.find_matching_pattern.cache_clear()

    def _is_linked_dir(self, folder: str) -> bool:
        if folder not in self._linked_dirs:
            path = os.path.join(self.root, folder)
            self._linked_dirs[folder] = os.path.islink(path) and os.path.isdir(path)
        return self._linked_dirs[folder]


def repo_root() -> str | None:
    """The DVC repository that runs the stage (the working directory's), found as DVC finds it."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Repo.find_root()
    except NotDvcRepoError:
        return None


def inside(path: str, folder: str) -> bool:
    """The absolute ``path`` is ``folder`` or below it."""
    return os.path.commonpath([folder, path]) == folder


def _dvcignore(root: str) -> Any:
    """DVC's ``.dvcignore`` matcher for the repository that runs the stage, or None when ``root`` is
    outside it: DVC applies no ``.dvcignore`` there."""
    from dvc.fs import LocalFileSystem
    from dvc.ignore import DvcIgnoreFilter

    repository = repo_root()
    if repository is None or not inside(root, repository):
        return None
    return DvcIgnoreFilter(LocalFileSystem(), repository)


def _count_files(folder: str) -> int:
    if os.path.islink(folder):
        return 0
    return sum(len(files) for _, _, files in os.walk(folder))


def refuse_unhashed(unhashed: Unhashed | None, name: str, where: str, reader: str = "ingest") -> None:
    """A one-line refusal of a path ``reader`` (a stage) was to read that DVC does not hash."""
    reason = unhashed.refusal(name) if unhashed is not None else None
    if reason is not None:
        raise PipelineError(f"{where}: '{name}' {reason}; {reader} reads only what DVC hashes")
