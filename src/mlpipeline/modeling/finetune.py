"""Fine-tuning from one of our own releases: ``train.model.weights: image-classifier@v1.2.0``.

The version is fetched through DVC as ``mlpipeline-predict --model`` fetches it
(``mlpipeline.versions.registry``: the GTO tag, that commit's dvc.lock, the files from the DVC
cache or remote; never the hub) and read as data, as a weights folder is: ``load_model`` reads
exactly ``model.json`` and ``model.safetensors`` inside it, refuses code named in a config,
never unpickles, and refuses NaN weights.

The new model is the release's network (arch and sizes, input normalization: what its weights
learned with) fitted to the data: the data's classes, image size and ingest preprocessing.
Every tensor carries over; the classifier head's rows carry over by class name, so classes may
grow (a new class gets a fresh row, seeded), and the order of the data's classes may differ.
What cannot carry over is refused in one line each: a class of the release the data lacks, other
channels, an arch param naming another arch, a tensor whose shape the new image size changes.

Why only exact versions: the param's value is what DVC hashes for the train stage. A version's tag
never moves (GTO refuses to register a version twice), so ``@v1.2.0`` always names the same files
and a cached train stays true; ``@latest`` or ``#prod`` move when a version is released or
assigned while the param's text stays the same, and DVC would restore a model trained from what
they named before. So they are refused, naming the exact version they mean today. The version's
commit and the sha256 of the files read go into ``model.json`` (``pretrained``) and the
checkpoint key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.shards import file_sha256
from mlpipeline.modeling.config import CONVNET, ModelConfig
from mlpipeline.modeling.files import CONFIG_FILE, WEIGHTS_FILE, load_model
from mlpipeline.modeling.network import build_model
from mlpipeline.versions import registry

PARAM = "params.yaml: train.model.weights"


@dataclasses.dataclass(frozen=True)
class Release:
    """A registered version to start from, fetched: its spec, tag commit and local folder."""

    spec: str  # NAME@vX.Y.Z
    commit: str
    folder: Path

    def record(self) -> dict[str, str]:
        """model.json's ``pretrained``: where the weights began, and a hash of the files read."""
        digest = hashlib.sha256()
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            digest.update(f"{name}:{file_sha256(self.folder / name)}\n".encode())
        return {"source": self.spec, "commit": self.commit, "sha256": digest.hexdigest()}


def weights_source(weights: str | None, folders: Path) -> Path | Release | None:
    """What ``train.model.weights`` names: nothing, a folder of ``folders`` (``data/weights``), or
    a release (fetched here once, into ``.cache/models``)."""
    if weights is None:
        return None
    if not any(mark in weights for mark in "@#"):
        return folders / weights
    name, version, stage = registry.parse(weights)
    root, _, exact = registry.located(weights)
    if version is None or stage is not None:
        raise PipelineError(
            f"{PARAM}: {weights} moves (today it is {name}@{exact}), and DVC would keep a model trained "
            f"from what it named before: name the version, train.model.weights: {name}@{exact}"
        )
    folder = registry.model_dir(weights)
    commit = subprocess.run(
        ["git", "rev-parse", f"{name}@{exact}^{{commit}}"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return Release(weights, commit, folder)


def release_config(
    release: Release,
    arch: str,
    classes: list[str],
    image_shape: list[int],
    preprocessing: dict[str, Any] | None,
) -> ModelConfig:
    """The release's network fitted to the data's ``classes``, ``image_shape`` and ``preprocessing``."""
    _, released = load_model(release.folder)
    where = f"{PARAM}: {release.spec}"
    if arch not in (CONVNET, released.arch):
        raise PipelineError(
            f"{where} is a {released.arch}, train.model.arch is {arch} (with weights the arch is "
            "theirs: set arch to it, or to convnet)"
        )
    if released.image_shape[0] != image_shape[0]:
        raise PipelineError(
            f"{where} takes {released.image_shape[0]}-channel images, the data has {image_shape[0]} "
            f"(set ingest.channels: {released.image_shape[0]})"
        )
    if lost := [name for name in released.classes if name not in classes]:
        raise PipelineError(
            f"{where} predicts {', '.join(lost)}, which the data lacks: a fine-tuned model keeps every "
            "class of its release (restore their images, or start afresh: train.model.weights: null)"
        )
    network = released.network
    if network is not None:
        from mlpipeline.modeling import hf  # imports transformers: only for its archs

        network = hf.refit(network, classes, image_shape, where)
    return dataclasses.replace(
        released,
        classes=list(classes),
        image_shape=list(image_shape),
        preprocessing=preprocessing,
        network=network,
        pretrained=release.record(),
    )


def from_release(config: ModelConfig, release: Release) -> nn.Module:
    """A fresh network of ``config`` (seeded) holding the release's tensors, its head's rows moved
    to its classes' new places."""
    model = build_model(config)  # first: its fresh rows come from the seed alone
    released, old = load_model(release.folder)
    state, theirs = model.state_dict(), released.state_dict()
    rows = torch.tensor([config.classes.index(name) for name in old.classes])
    for name, tensor in state.items():
        if name not in theirs:
            raise PipelineError(f"{release.folder}: no tensor {name} for the network of {release.spec}")
        source = theirs[name]
        per_class = source.ndim and (len(source), len(tensor)) == (old.num_classes, config.num_classes)
        if name.startswith(model.HEAD) and per_class and source.shape[1:] == tensor.shape[1:]:
            tensor[rows] = source  # each old class's row, where that class now is
        elif source.shape == tensor.shape:
            tensor.copy_(source)
        else:
            raise PipelineError(
                f"{release.spec}: tensor {name} is {list(source.shape)} in the release, {list(tensor.shape)} "
                "in the network (for a position embedding, set ingest.image_size to the release's "
                f"{old.image_shape[1:]})"
            )
    model.load_state_dict(state)
    return model
