"""Model versions by name: ``--model image-classifier@v1.2.0`` becomes a local model directory.

A version is a git tag GTO made (``make release VERSION=1.2.0``: tag ``image-classifier@v1.2.0``
on the commit whose dvc.lock records the model); the model's files are in the DVC remote.
``model_dir`` resolves the version with GTO, fetches it once through DVC's ``Artifacts.get``
(what ``dvc artifacts get`` runs: the artifact's path from that commit's dvc.yaml, the files
from the local DVC cache or the remote) into ``.cache/models/<name>/<version>``, and reuses
that copy afterwards: GTO never moves a registered version's tag. ``NAME@latest`` (the highest
version) and ``NAME#STAGE`` (GTO's stage assignments) resolve to a version first.

A release carries its ONNX file too: the tagged commit's dvc.yaml declares it as the artifact
``NAME-onnx`` (the export stage's ``exported/model.onnx``), and ``onnx_file`` fetches it from that
commit into ``.cache/models/<name>/<version>-onnx/model.onnx``, for serving machines without
torch (``mlpipeline-predict --onnx --model NAME@vX.Y.Z``, ``mlpipeline-serve``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlpipeline.core import atomic
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.paths import MODELS
from mlpipeline.core.urls import redact

CACHE_DIR = Path(".cache/models")
FORMS = "NAME@vMAJOR.MINOR.PATCH (e.g. image-classifier@v1.2.0), NAME@latest or NAME#STAGE"
ONNX_SUFFIX = "-onnx"  # the ONNX file's artifact: image-classifier-onnx beside image-classifier
ONNX_FILE = "model.onnx"


def is_version(spec: str) -> bool:
    """Whether ``spec`` names a version (``NAME@...``, ``NAME#...``) rather than a path."""
    return not Path(spec).exists() and any(mark in spec for mark in "@#")


def model_dir(spec: str) -> Path:
    """``spec`` itself if it is a path, else the local copy of the model version it names."""
    if not is_version(spec):
        return Path(spec)
    root, name, version = located(spec)
    target = root / CACHE_DIR / name / version
    if not target.is_dir():
        fetch(root, spec, name, version, target)
    return target


def onnx_file(spec: str) -> Path:
    """The local copy of the ONNX file released with the version ``spec`` names."""
    root, name, version = located(spec)
    target = root / CACHE_DIR / name / f"{version}{ONNX_SUFFIX}"
    if not target.is_dir():
        fetch(root, spec, name, version, target, artifact=f"{name}{ONNX_SUFFIX}")
    return target / ONNX_FILE


def located(spec: str) -> tuple[Path, str, str]:
    """The project the version ``spec`` is looked up in, its artifact and its exact version."""
    name, version, stage = parse(spec)
    root = _repo_root(spec)
    return root, name, resolve(root, spec, name, version, stage)


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


def fetch(root: Path, spec: str, name: str, version: str, target: Path, artifact: str | None = None) -> None:
    """Download the version's files into ``target`` (whole or not at all) with ``dvc artifacts get``;
    ``artifact``: another artifact of the version's commit (its ONNX file), into ``target`` too."""
    from dvc.exceptions import ArtifactNotFoundError, DvcException

    with atomic.directory(target) as download, _quiet("dvc"):
        try:
            _download(root, name, version, artifact, download)
        except (DvcException, FileNotFoundError) as exc:
            causes = list(_chain(exc))
            if any(isinstance(cause, ArtifactNotFoundError) for cause in causes):
                raise PipelineError(_undeclared(spec, artifact or name))
            missing = [cause for cause in causes if isinstance(cause, FileNotFoundError)]
            if missing:
                raise PipelineError(_missing_files(spec, f"{name}@{version}", root, missing[-1]))
            reason = str(causes[-1]).strip().splitlines()[0]
            raise PipelineError(f"{spec}: cannot fetch the model from {remote_label(root)}: {reason}")


def _download(root: Path, name: str, version: str, artifact: str | None, folder: Path) -> None:
    """The artifact ``name`` of ``version`` into ``folder`` as ``dvc artifacts get`` does, or the
    file of ``artifact`` declared in the same commit into ``folder``, by its own name."""
    from dvc.fs import download
    from dvc.repo import Repo
    from dvc.repo.artifacts import Artifacts

    if artifact is None:
        folder.rmdir()  # DVC creates its output directory itself
        Artifacts.get(str(root), name, version=version, out=str(folder))
        return
    with Repo.open(str(root), subrepos=True, uninitialized=True) as repo:
        rev = repo.artifacts.get_rev(name, version=version)
        with repo.switch(rev):
            path = Path(repo.artifacts.get_path(artifact)).as_posix()
            download(repo.dvcfs, repo.fs.join(repo.fs.root_marker, path), str(folder / Path(path).name))


def _undeclared(spec: str, artifact: str) -> str:
    if artifact.endswith(ONNX_SUFFIX):
        return (
            f"{spec}: the tagged commit's dvc.yaml declares no artifact '{artifact}' (released before "
            "releases carried their ONNX file): predict without --onnx, or release a new version"
        )
    return f"{spec}: the tagged commit's dvc.yaml declares no artifact '{artifact}'"


def _missing_files(spec: str, tag: str, root: Path, missing: FileNotFoundError) -> str:
    """What is missing, where it was looked for, and how to get it back (never pushed, or a
    ``dvc gc`` elsewhere removed it)."""
    what = missing.filename or str(missing)  # DVC names the file, or the object it looked for
    return (
        f"{spec}: the model's files are in neither the local DVC cache nor {remote_label(root)} "
        f"(missing: {what}): on a machine whose DVC cache still holds them, "
        f"`git checkout {tag} && dvc push {MODELS}`; else `dvc repro train` at that tag rebuilds them "
        f"(bit for bit on the CPU type that trained them), then `dvc push {MODELS}`"
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
