"""Rehash every byte DVC tracks here against ``dvc.lock`` and the ``.dvc`` files: ``make verify``.

DVC trusts its cache: ``dvc checkout`` copies whatever bytes a cache file holds, and ``dvc
status`` rehashes one only when its size, mtime or inode changed (its state database), so a
corrupted cache file can come back into the workspace without a word. This reads every tracked
file in the workspace and every cache object behind it (a directory output's ``.dir`` listing
included), hashes it as DVC does (``dvc_data``'s ``file_md5``) and prints one line per file whose
bytes differ from what was recorded, then a summary. Exit 0: all match; 1: some differ.
Files not present locally (not pulled, stage not run) are counted, not judged.

Usage: ``python -m mlpipeline.cache.verify`` from the repository root (``make verify``).
Hashing runs on ``MLPIPELINE_WORKERS`` threads (default: every core).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.progress import progress
from mlpipeline.core.workers import worker_count


@dataclass(frozen=True)
class Tracked:
    """One file DVC recorded: where it lives, its expected hash, and where the cache keeps it."""

    path: str  # in the workspace, relative to the repository root
    md5: str
    cache: str | None  # the cache object (relative to the root), None for ``cache: false``
    hash_name: str  # "md5", or "md5-dos2unix" for outputs recorded by DVC 2
    record: str  # the file that records it: dvc.lock or a .dvc file


@dataclass
class Report:
    mismatches: list[str]
    checked: int = 0  # files hashed, workspace and cache together
    absent: int = 0  # tracked files or cache objects not present here

    def summary(self) -> str:
        verdict = f"{len(self.mismatches)} differ" if self.mismatches else "all match"
        return (
            f"verify: {self.checked} files hashed against dvc.lock and .dvc files: {verdict}; "
            f"{self.absent} not present here (not pulled, or the stage has not run)"
        )


def verify(root: Path | str = ".") -> Report:
    """Hash every tracked workspace file and cache object under the DVC repository ``root``."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        repo = Repo(str(root))
    except DvcException as exc:
        raise PipelineError(f"{root}: not a DVC repository ({exc})") from None
    report = Report(mismatches=[])
    with repo:
        root = Path(repo.root_dir)
        files = [item for out in repo.index.outs for item in _tracked(out, root, report)]
    with (
        ThreadPoolExecutor(worker_count()) as pool,
        progress("verify", "hashing", len(files), "file") as shown,
    ):
        for problems, hashed, absent in pool.map(partial(_check, root=root), files):
            report.mismatches += problems
            report.checked += hashed
            report.absent += absent
            shown.advance()
    return report


def _tracked(out: Any, root: Path, report: Report) -> Iterator[Tracked]:
    """The files of one output: itself, or for a directory the entries its ``.dir`` object lists."""
    if not out.hash_info or not out.hash_info.value:
        return  # never built or committed: nothing recorded
    path, md5 = os.path.relpath(out.fs_path, root), out.hash_info.value
    record = os.path.relpath(out.stage.dvcfile.path, root)
    record = record.removesuffix(".yaml") + ".lock" if record.endswith("dvc.yaml") else record
    cached = partial(_cache_path, out, root) if out.use_cache else lambda oid: None
    if not out.hash_info.isdir:
        yield Tracked(path, md5, cached(md5), out.hash_name, record)
        return
    for entry in _directory_listing(cached(md5), root, path, md5, report) if out.use_cache else []:
        oid = entry["md5"]
        yield Tracked(f"{path}/{entry['relpath']}", oid, cached(oid), out.hash_name, record)


def _cache_path(out: Any, root: Path, oid: str) -> str:
    return os.path.relpath(out.cache.oid_to_path(oid), root)


def _directory_listing(listing: str, root: Path, path: str, md5: str, report: Report) -> list[dict[str, Any]]:
    """The entries a directory output's ``.dir`` object lists, if it is present and intact."""
    from dvc_data.hashfile.hash import file_md5

    if not (root / listing).exists():
        report.absent += 1
        return []
    report.checked += 1
    actual = file_md5(str(root / listing))
    if actual != md5.removesuffix(".dir"):
        report.mismatches.append(_corrupt_cache(listing, path, actual))
        return []
    return json.loads((root / listing).read_text(encoding="utf-8"))


def _check(item: Tracked, root: Path) -> tuple[list[str], int, int]:
    """Mismatch lines, files hashed and files absent, for one tracked file and its cache object."""
    from dvc_data.hashfile.hash import file_md5

    problems, hashed, absent = [], 0, 0
    digests: dict[tuple[int, int], str] = {}  # a hard- or symlinked workspace file is its cache object
    for where in (item.path, item.cache):
        if where is None:
            continue
        try:
            stat = os.stat(root / where)
        except FileNotFoundError:
            absent += 1
            continue
        key = (stat.st_dev, stat.st_ino)
        if key not in digests:
            digests[key] = file_md5(str(root / where), name=item.hash_name)
            hashed += 1
        if digests[key] != item.md5:
            problems.append(
                _corrupt_cache(where, item.path, digests[key])
                if where == item.cache
                else f"{item.path}: differs from {item.record} (md5 {digests[key]}, recorded {item.md5}); "
                f"restore it with dvc checkout --relink {item.path} (dvc status and a plain checkout "
                "trust an unchanged size and mtime; if the change was meant, dvc commit it)"
            )
    return problems, hashed, absent


def _corrupt_cache(cache: str, path: str, actual: str) -> str:
    return (
        f"{cache} (the cache of {path}): corrupted, its bytes hash to {actual}; delete it, "
        f"then dvc pull {path} or dvc repro, and dvc checkout --relink {path}"
    )


def main() -> int:
    try:
        report = verify(".")
    except PipelineError as exc:
        print(f"verify: error: {exc}", file=sys.stderr)
        return 2
    for line in report.mismatches:
        print(line)
    print(report.summary())
    return 1 if report.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
