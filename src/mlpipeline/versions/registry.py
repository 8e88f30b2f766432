"""Model versions by name: ``--model image-classifier@v1.2.0`` becomes a local model directory.

A version is a git tag GTO made (``make release VERSION=1.2.0``: tag ``image-classifier@v1.2.0``
on the commit whose dvc.lock records the model); the model's files are in the DVC remote.
``model_dir`` resolves the version with GTO, fetches it once through DVC's ``Artifacts.get``
(what ``dvc artifacts get`` runs: the artifact's path from that commit's dvc.yaml, the files
from the local DVC cache or the remote) into ``.cache/models/<name>/<version>``, and reuses
that copy afterwards: GTO never moves a registered version's tag. ``NAME@latest`` (the highest
version) and ``NAME#STAGE`` (GTO's stage assignments) resolve to a version first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlpipeline.core import atomic
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.urls import redact

CACHE_DIR = Path(".cache") / "models"
FORMS = "NAME@vMAJOR.MINOR.PATCH (e.g. image-classifier@v1.2.0), NAME@latest or NAME#STAGE"


def model_dir(spec: str) -> Path:
    """``spec`` itself if it is a path, else the local copy of the model version it names."""
    if Path(spec).exists() or not any(mark in spec for mark in "@#"):
        return Path(spec)
    name, version, stage = parse(spec)
    root = _repo_root(spec)
    version = resolve(root, spec, name, version, stage)
    target = root / CACHE_DIR / name / version
    if not target.is_dir():
        fetch(root, spec, name, version, target)
    return target


def parse(spec: str) -> tuple[str, str | None, str | None]:
    """(artifact name, version or None for latest, stage) by GTO's own shortcut grammar."""
    from gto.constants import parse_shortcut
    from gto.exceptions import GTOException

    try:
        shortcut = parse_shortcut(spec)
    except GTOException:
        shortcut = None
    if shortcut is None or not shortcut.shortcut:
        raise PipelineError(f"{spec}: not a model version: expected {FORMS}")
    return shortcut.name, shortcut.version, shortcut.stage


def _repo_root(spec: str) -> Path:
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Path(Repo.find_root())
    except NotDvcRepoError:
        raise PipelineError(
            f"{spec}: versions are looked up in the DVC project you run from, and {Path.cwd()} is in "
            "none: run from a checkout, or `dvc artifacts get REPO NAME --rev VERSION -o DIR` and --model DIR"
        )


def resolve(root: Path, spec: str, name: str, version: str | None, stage: str | None) -> str:
    """The registered version ``spec`` means, or an error that lists the registered ones."""
    import gto.api

    registered = registered_versions(root, name)
    if stage:
        assigned = gto.api.find_versions_in_stage(str(root), name, stage)  # newest assignment first
        version = assigned[0].version if assigned else None
    elif version is None:
        version = registered[-1] if registered else None  # @latest: GTO sorts by semver
    if version in registered:
        return version
    if not registered:
        raise PipelineError(
            f"{spec}: '{name}' has no registered version (`make release VERSION=1.0.0` makes one)"
        )
    missing = f"no version in stage '{stage}'" if stage else f"no version {version}"
    raise PipelineError(f"{spec}: '{name}' has {missing} (registered: {', '.join(registered)})")


def registered_versions(root: Path, name: str) -> list[str]:
    """The active registered versions of ``name``, lowest first (GTO sorts them by semver)."""
    import gto.api
    from gto.exceptions import ArtifactNotFound

    try:
        found = gto.api.find_latest_version(str(root), name, all=True) or []
    except ArtifactNotFound:
        return []
    return [found_version.version for found_version in reversed(found)]


def fetch(root: Path, spec: str, name: str, version: str, target: Path) -> None:
    """Download the version's files into ``target`` (whole or not at all) with ``dvc artifacts get``."""
    from dvc.exceptions import ArtifactNotFoundError, DvcException
    from dvc.repo.artifacts import Artifacts

    with atomic.directory(target) as download, _quiet("dvc"):
        download.rmdir()  # DVC creates its output directory itself
        try:
            Artifacts.get(str(root), name, version=version, out=str(download))
        except DvcException as exc:
            causes = list(_chain(exc))
            if any(isinstance(cause, ArtifactNotFoundError) for cause in causes):
                raise PipelineError(f"{spec}: the tagged commit's dvc.yaml declares no artifact '{name}'")
            missing = [cause for cause in causes if isinstance(cause, FileNotFoundError)]
            if missing:
                raise PipelineError(_missing_files(spec, f"{name}@{version}", root, missing[-1]))
            reason = str(causes[-1]).strip().splitlines()[0]
            raise PipelineError(f"{spec}: cannot fetch the model from {remote_label(root)}: {reason}")


def _missing_files(spec: str, tag: str, root: Path, missing: FileNotFoundError) -> str:
    """What is missing, where it was looked for, and how to get it back (never pushed, or a
    ``dvc gc`` elsewhere removed it)."""
    what = missing.filename or str(missing)  # DVC names the file, or the object it looked for
    return (
        f"{spec}: the model's files are in neither the local DVC cache nor {remote_label(root)} "
        f"(missing: {what}): on a machine whose DVC cache still holds them, "
        f"`git checkout {tag} && dvc push models`; else `dvc repro train` at that tag rebuilds them "
        "(bit for bit on the CPU type that trained them), then `dvc push models`"
    )


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from, outermost first."""
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def remote_label(root: Path) -> str:
    """The default remote as a user would recognise it: name, URL and endpoint."""
    from dvc.config import Config

    config = Config(dvc_dir=str(root / ".dvc"))
    name = config["core"].get("remote", "")
    settings = config["remote"].get(name, {})
    endpoint = f" at {redact(settings['endpointurl'])}" if settings.get("endpointurl") else ""
    return f"remote '{name}' ({redact(settings.get('url', '?'))}{endpoint})"


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence a library's logger: its failures come back as one ``PipelineError`` line."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)
