"""``make release VERSION=1.2.0``: register the committed model as a version of its artifact.

GTO makes the version: an annotated git tag ``image-classifier@v1.2.0`` on HEAD. Before that,
this makes sure anyone with the tag can fetch the model (``mlpipeline.versions.registry``): HEAD's
dvc.lock records the model the workspace holds, the pipeline is up to date (``dvc status``),
and the model's files are in the DVC remote (pushed here). A version that could not be fetched
is never tagged.

Usage: ``python -m mlpipeline.versions.release VERSION [--name ARTIFACT]``; ``make release`` hands
VERSION and ARTIFACT over in the environment (``MLPIPELINE_VERSION``, ``MLPIPELINE_ARTIFACT``), as
typed, so no shell ever reads them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from mlpipeline.core import stage
from mlpipeline.core.errors import PipelineError
from mlpipeline.versions.registry import registered_versions, remote_label

DEFAULT_ARTIFACT = "image-classifier"


def release(root: Path, name: str, version: str) -> str:
    """Push the artifact's files, then tag HEAD as ``name@version``; return what was done."""
    from dvc.repo import Repo

    version = _semver(version, name)
    if version in registered_versions(root, name):
        raise PipelineError(f"{name}@{version} is already registered: pick the next version")
    with Repo(str(root)) as repo:
        path = _artifact_path(repo, name)
        _check_committed(repo, root, path)
        _push(repo, root, path)
    tag = _register(root, name, version)
    return (
        f"registered {tag} on HEAD ({path} pushed to {remote_label(root)}); "
        f"publish it with: git push origin {tag}"
    )


def _semver(version: str, name: str) -> str:
    """``1.2.0`` or ``v1.2.0`` as GTO spells versions (``v1.2.0``), or an error naming it."""
    from gto.versions import SemVer

    tagged = version if version.startswith("v") else f"v{version}"
    if not SemVer.is_valid(tagged):
        raise PipelineError(f"VERSION={version}: not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.2.0)")
    return tagged


def _artifact_path(repo, name: str) -> str:
    """The artifact's path from dvc.yaml's ``artifacts:`` (checked committed below)."""
    declared = {key: artifact for file in repo.artifacts.read().values() for key, artifact in file.items()}
    if name not in declared:
        raise PipelineError(f"dvc.yaml declares no artifact '{name}' (artifacts: {', '.join(declared)})")
    return declared[name].path


def _check_committed(repo, root: Path, path: str) -> None:
    """HEAD records the model the workspace holds, and the pipeline that made it is up to date."""
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--", "dvc.yaml", "dvc.lock"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if changed:
        raise PipelineError("dvc.yaml or dvc.lock has uncommitted changes: commit them, then release")
    stale = repo.status(targets=[str(root / path)], with_deps=True)
    if stale:
        raise PipelineError(
            f"{path} is not up to date (dvc status: {', '.join(stale)}): run `dvc repro` "
            "(or `dvc pull`), commit dvc.lock, then release"
        )


def _push(repo, root: Path, path: str) -> None:
    """The model's files into the default remote, which must answer first (fails fast, in one line)."""
    from dvc.exceptions import DvcException

    from mlpipeline.cache.remote_check import RemoteCheckFailed, check_remote

    try:
        check_remote(root)
        repo.push(targets=[str(root / path)])
    except RemoteCheckFailed as exc:
        raise PipelineError(str(exc))
    except DvcException as exc:
        raise PipelineError(f"pushing {path} to {remote_label(root)}: {str(exc).strip().splitlines()[0]}")


def _register(root: Path, name: str, version: str) -> str:
    import gto.api
    from gto.exceptions import GTOException

    try:
        return gto.api.register(str(root), name, "HEAD", version=version).tag
    except GTOException as exc:
        raise PipelineError(f"{name}@{version}: {exc}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mlpipeline.versions.release", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "version",
        metavar="VERSION",
        nargs="?",
        default=os.environ.get("MLPIPELINE_VERSION"),
        help="MAJOR.MINOR.PATCH, e.g. 1.2.0 (default: $MLPIPELINE_VERSION)",
    )
    parser.add_argument(
        "--name",
        default=os.environ.get("MLPIPELINE_ARTIFACT") or DEFAULT_ARTIFACT,
        help=f"artifact (default: $MLPIPELINE_ARTIFACT, else {DEFAULT_ARTIFACT})",
    )
    args = parser.parse_args(argv)
    if not args.version:
        raise PipelineError("VERSION is missing: `make release VERSION=1.2.0`")
    print(f"release: {release(Path.cwd(), args.name, args.version)}")


if __name__ == "__main__":
    stage.run("release", main)
