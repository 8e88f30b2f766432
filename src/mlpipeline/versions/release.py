"""``make release VERSION=1.2.0``: register the committed model as a version of its artifact.

A release carries everything: the model (artifact ``image-classifier``, ``models/``), its ONNX file
(artifact ``image-classifier-onnx``, ``exported/model.onnx``) and its model card
(``cards/image-classifier/README.md``, ``mlpipeline.versions.card``). Before anything is written
this makes sure anyone with the tag can fetch them (``mlpipeline.versions.registry``): HEAD's
dvc.lock records what the workspace holds, the pipeline is up to date for the model, its ONNX
file and its metrics (``dvc status``), and their files are in the DVC remote (pushed here). Then
it writes the card, commits it alone on top of HEAD ("image-classifier v1.2.0: model card"), and
GTO tags that commit ``image-classifier@v1.2.0``: a tag names a commit, so the card must be in
the one it names, and it names its parent as the pipeline's commit. There is no release without
a card: a card that cannot be written stops the release before any commit or tag, and a tag that
cannot be made takes its card commit back. A version that could not be fetched is never tagged.

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

from mlpipeline.core import atomic, stage
from mlpipeline.core.errors import PipelineError
from mlpipeline.versions.card import METRICS, card_path, model_card
from mlpipeline.versions.registry import ONNX_SUFFIX, registered_versions, remote_label

DEFAULT_ARTIFACT = "image-classifier"


def release(root: Path, name: str, version: str) -> str:
    """Push the artifacts' files, commit the model card, then tag it as ``name@version``; return
    what was done."""
    from dvc.repo import Repo

    version = _semver(version, name)
    if version in registered_versions(root, name):
        raise PipelineError(f"{name}@{version} is already registered: pick the next version")
    with Repo(str(root)) as repo:
        paths = [_artifact_path(repo, artifact) for artifact in (name, f"{name}{ONNX_SUFFIX}")]
        _check_committed(repo, root, [*paths, METRICS.as_posix()])
        _push(repo, root, paths)
    pipeline = _git(root, "rev-parse", "HEAD")
    card = card_path(name)
    atomic.write_text(root / card, model_card(root, name, version, pipeline))
    _git(root, "add", "--", card.as_posix())
    _git(root, "commit", "-q", "-m", f"{name} {version}: model card", "--", card.as_posix())
    try:
        tag = _register(root, name, version)
    except PipelineError:
        _git(root, "reset", "-q", "--soft", "HEAD~1")  # no tag: the card commit goes back too
        raise
    return (
        f"registered {tag} on the card commit above {pipeline[:12]} ({', '.join(paths)} pushed to "
        f"{remote_label(root)}; card {card}); publish it with: git push origin {tag} (and push the branch, "
        "whose tip the card commit is)"
    )


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["failed"]
        raise PipelineError(f"git {args[0]}: {reason[0]}")
    return done.stdout.strip()


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
        what = " (the ONNX file a release carries)" if name.endswith(ONNX_SUFFIX) else ""
        raise PipelineError(
            f"dvc.yaml declares no artifact '{name}'{what} (artifacts: {', '.join(declared)})"
        )
    return declared[name].path


def _check_committed(repo, root: Path, paths: list[str]) -> None:
    """HEAD records what the workspace holds, and the pipeline that made ``paths`` is up to date."""
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--", "dvc.yaml", "dvc.lock"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if changed:
        raise PipelineError("dvc.yaml or dvc.lock has uncommitted changes: commit them, then release")
    stale = repo.status(targets=[str(root / path) for path in paths], with_deps=True)
    if stale:
        raise PipelineError(
            f"{', '.join(paths)}: not up to date (dvc status: {', '.join(stale)}): run `dvc repro` "
            "(or `dvc pull`), commit dvc.lock, then release"
        )


def _push(repo, root: Path, paths: list[str]) -> None:
    """The artifacts' files into the default remote, which must answer first (fails fast, in one line)."""
    from dvc.exceptions import DvcException

    from mlpipeline.cache.remote_check import RemoteCheckFailed, check_remote

    try:
        check_remote(root)
        repo.push(targets=[str(root / path) for path in paths])
    except RemoteCheckFailed as exc:
        raise PipelineError(str(exc))
    except DvcException as exc:
        raise PipelineError(
            f"pushing {', '.join(paths)} to {remote_label(root)}: {str(exc).strip().splitlines()[0]}"
        )


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
