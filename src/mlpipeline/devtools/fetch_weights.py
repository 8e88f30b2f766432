"""Fetch a pretrained checkpoint from the Hugging Face hub once, as DVC-tracked data.

    make weights MODEL=microsoft/resnet-50 [NAME=resnet-50]

Run on a machine with internet: it downloads the checkpoint's ``config.json``, its safetensors
weights and ``preprocessor_config.json`` (the input mean and std) into ``data/weights/<NAME>``
(NAME defaults to the part of MODEL after the slash), then ``dvc add``s the folder; commit the
``.dvc`` file and ``dvc push``. Pipeline stages never download (they run with
``HF_HUB_OFFLINE=1``); ``train.model.weights: <NAME>`` starts training from the folder, and a GPU
machine gets it with ``dvc pull`` like any data. Checkpoints with pickle weights only are refused.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from mlpipeline.core import stage
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.paths import WEIGHTS

FILES = ["config.json", "preprocessor_config.json", "*.safetensors", "*.safetensors.index.json"]


def fetch(model: str, name: str, root: Path = WEIGHTS) -> Path:
    """Download ``model``'s checkpoint into ``root/name`` (atomically); the folder."""
    os.environ["HF_HUB_OFFLINE"] = "0"  # this command is the one place that downloads
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    target = root / name
    if (target / "config.json").is_file():
        raise PipelineError(f"{target}: already fetched (remove it first to fetch {model} again)")
    aside = root / f".{name}.download"
    shutil.rmtree(aside, ignore_errors=True)
    try:
        snapshot_download(repo_id=model, local_dir=aside, allow_patterns=FILES)
    except (HfHubHTTPError, OSError, ValueError) as exc:
        shutil.rmtree(aside, ignore_errors=True)
        raise PipelineError(f"{model}: cannot be fetched from the hub ({str(exc).splitlines()[0]})") from None
    shutil.rmtree(aside / ".cache", ignore_errors=True)  # the hub client's own bookkeeping
    if not any(aside.glob("*.safetensors")) or not (aside / "config.json").is_file():
        shutil.rmtree(aside, ignore_errors=True)
        raise PipelineError(
            f"{model}: no config.json and safetensors weights (pickle-only checkpoints are refused)"
        )
    os.replace(aside, target)
    return target


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="make weights", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a hub id, e.g. microsoft/resnet-50")
    parser.add_argument("--name", help="the folder under data/weights (default: the id after its slash)")
    parser.add_argument("--no-dvc-add", action="store_true", help="leave the folder untracked")
    args = parser.parse_args(argv)
    name = args.name or args.model.rstrip("/").rpartition("/")[2]
    folder = fetch(args.model, name)
    if not args.no_dvc_add:
        subprocess.run(["dvc", "add", str(folder)], check=True)
    print(f"weights: fetched {args.model} into {folder}; set train.model.weights: {name}, then dvc push")


if __name__ == "__main__":
    stage.run("weights", main)
