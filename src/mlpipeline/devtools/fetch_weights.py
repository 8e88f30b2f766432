"""Fetch a pretrained checkpoint from the Hugging Face hub once, as DVC-tracked data.

    make weights MODEL=microsoft/resnet-50 [NAME=resnet-50]

Run on a machine with internet: it downloads the checkpoint's ``config.json``, its safetensors
weights and ``preprocessor_config.json`` (the input mean and std) into ``data/weights/<NAME>``
(NAME defaults to the part of MODEL after the slash), then ``dvc add``s the folder; commit the
``.dvc`` file and ``dvc push``. Pipeline stages never download (they run with
``HF_HUB_OFFLINE=1``); ``train.model.weights: <NAME>`` starts training from the folder, and a GPU
machine gets it with ``dvc pull`` like any data. Checkpoints with pickle weights only are refused.

``make weights`` hands MODEL and NAME over in the environment (``MLPIPELINE_MODEL``,
``MLPIPELINE_NAME``), as typed, so no shell ever reads them; both are checked here before
anything is removed or downloaded: MODEL is a hub id (``owner/name`` of the characters the hub
allows), NAME one plain folder of ``data/weights``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from mlpipeline.core import stage
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.paths import WEIGHTS

FILES = ["config.json", "preprocessor_config.json", "*.safetensors", "*.safetensors.index.json"]
MODEL_ENV, NAME_ENV = "MLPIPELINE_MODEL", "MLPIPELINE_NAME"
USAGE = "make weights MODEL=microsoft/resnet-50 [NAME=resnet-50]"
# The hub's rule for an owner or a repository name: letters, digits, '-', '_' and '.', at most 96,
# neither starting nor ending with '-' or '.', and no '--' or '..' anywhere.
HUB_NAME = r"(?!.*(?:--|\.\.))[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
HUB_ID = re.compile(rf"{HUB_NAME}/{HUB_NAME}")
PLAIN_NAME = re.compile(HUB_NAME)
CHARACTERS = "letters, digits, '-', '_' and '.', no '--' or '..'"


def hub_id(model: str) -> str:
    """``model`` if it is a hub id ``owner/name``, else one line naming it."""
    if not HUB_ID.fullmatch(model):
        raise PipelineError(f"MODEL={model}: not a hub id (owner/name: {CHARACTERS})")
    return model


def folder_name(name: str) -> str:
    """``name`` if it is one plain folder of ``data/weights``, else one line naming it."""
    if not PLAIN_NAME.fullmatch(name):
        raise PipelineError(
            f"NAME={name}: not a plain folder name (one folder of data/weights: {CHARACTERS})"
        )
    return name


def fetch(model: str, name: str, root: Path = WEIGHTS) -> Path:
    """Download ``model``'s checkpoint into ``root/name`` (atomically: aside, then renamed); the
    folder. ``model`` and ``name`` are checked first, and nothing is left aside on failure."""
    target, aside = root / folder_name(name), root / f".{name}.download"
    _check_target(hub_id(model), target)
    os.environ["HF_HUB_OFFLINE"] = "0"  # this command is the one place that downloads
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    _remove(aside)  # a fetch killed halfway left it
    try:
        try:
            snapshot_download(repo_id=model, local_dir=aside, allow_patterns=FILES)
        except (HfHubHTTPError, OSError, ValueError) as exc:
            raise PipelineError(
                f"{model}: cannot be fetched from the hub ({str(exc).splitlines()[0]})"
            ) from None
        shutil.rmtree(aside / ".cache", ignore_errors=True)  # the hub client's own bookkeeping
        if not any(aside.glob("*.safetensors")) or not (aside / "config.json").is_file():
            raise PipelineError(
                f"{model}: no config.json and safetensors weights (pickle-only checkpoints are refused)"
            )
        try:
            os.replace(aside, target)
        except OSError as exc:
            raise PipelineError(
                f"{target}: the download cannot be moved there ({exc.strerror or exc})"
            ) from None
    finally:
        _remove(aside)
    return target


def _check_target(model: str, target: Path) -> None:
    if not target.parent.is_dir():
        raise PipelineError(f"{target.parent}: not found (run make weights at the repository's root)")
    if (target / "config.json").is_file():
        raise PipelineError(f"{target}: already fetched (remove it first to fetch {model} again)")
    if os.path.lexists(target):
        raise PipelineError(
            f"{target}: already there, without a config.json (a fetch cut short?): remove it, "
            "then fetch again"
        )


def _remove(path: Path) -> None:
    """``path`` gone, whatever it is (a link is removed, never followed)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def dvc_add(folder: Path) -> None:
    """``dvc add folder``, its failure in one line (the fetched folder stays)."""
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "add", str(folder)], stderr=subprocess.PIPE, text=True, check=False
    )
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        why = next((line for line in lines if line.startswith("ERROR")), lines[-1] if lines else "no message")
        raise PipelineError(
            f"dvc add {folder} failed ({why}): the weights are fetched into {folder}; dvc add them once "
            "that is fixed"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="make weights", description=__doc__.split("\n")[0])
    parser.add_argument(
        "model",
        nargs="?",
        default=os.environ.get(MODEL_ENV),
        help=f"a hub id, e.g. microsoft/resnet-50 (default: ${MODEL_ENV})",
    )
    parser.add_argument(
        "--name",
        default=os.environ.get(NAME_ENV) or None,
        help=f"the folder under data/weights (default: ${NAME_ENV}, else the id after its slash)",
    )
    parser.add_argument("--no-dvc-add", action="store_true", help="leave the folder untracked")
    args = parser.parse_args(argv)
    if not args.model:
        raise PipelineError(f"MODEL is missing: `{USAGE}`")
    name = args.name if args.name is not None else hub_id(args.model).rpartition("/")[2]
    folder = fetch(args.model, name)
    if not args.no_dvc_add:
        dvc_add(folder)
    print(f"weights: fetched {args.model} into {folder}; set train.model.weights: {name}, then dvc push")


if __name__ == "__main__":
    stage.run("weights", main)
