"""Hugging Face transformers image-classification models, inside the pipeline's network contract.

Why transformers and not timm: timm imports torchvision, whose PyPI wheels link the CUDA build of
torch and fail to import beside the CPU torch these machines install; transformers' vision models
import with torch alone, and their checkpoint folders (``config.json`` + safetensors) are already
the format this pipeline stores. Only :mod:`mlpipeline.modeling.network` imports this module, and
only when an arch other than the CNN is asked for, so the CNN's start-up does not import
transformers. The hub is offline here: weights are DVC-tracked folders, never a download.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"  # a stage never downloads: before transformers reads it

import torch
import transformers
from torch import nn
from transformers import (
    AutoModelForImageClassification,
    PretrainedConfig,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
)

from mlpipeline.core.errors import PipelineError, first_line
from mlpipeline.modeling.hf_build import check_trainable, config_of, head_modules, model_class
from mlpipeline.modeling.hf_overrides import arch_config, check_model_types, closest
from mlpipeline.modeling.inputs import NormalizedInput
from mlpipeline.modeling.pretrained import CONFIG_FILE, CheckpointFolder, refuse_casts, refuse_code

transformers.logging.set_verbosity_error()  # its load report would list the replaced head
# Its 'Loading weights' bar would reach a piped log as carriage returns, progress off or on:
# loading takes a second, and a stage's stderr is its own lines (mlpipeline.core.progress).
transformers.utils.logging.disable_progress_bar()

FETCH = "make weights MODEL=<hub id> NAME={name}"


class HFNet(NormalizedInput):
    """A transformers model behind the CNN's interface: uint8 (or [0, 1] float) images in,
    normalized here, logits out (transformers returns an output object)."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__(mean, std)
        self.net = net

    @functools.cached_property
    def HEAD(self) -> tuple[str, ...]:  # the name ConvNet.HEAD has: one interface for both
        """The prefixes of the classifier head's parameter names (found when fine-tuning asks)."""
        return tuple(f"net.{prefix}" for prefix in head_modules(self.net.config))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=self.normalized(images)).logits


def supported() -> list[str]:
    """The model types the installed transformers builds image classifiers for."""
    return sorted(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)


def check_arch(arch: str, where: str) -> None:
    if arch not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        hint = closest(arch, ["convnet", *supported()]) or f" (one of convnet, {', '.join(supported())})"
        raise PipelineError(
            f"{where}: {arch!r} is not convnet or an image-classification model type of "
            f"transformers {transformers.__version__}{hint}"
        )


def new_network(
    arch: str, hf: Mapping[str, Any], classes: list[str], image_shape: list[int]
) -> dict[str, Any]:
    """The full config of a fresh ``arch`` fitted to the data, with the user's overrides
    (``hf[arch]``, ``train.model.hf``'s entry for it), checked to train on the data's images."""
    check_arch(arch, "params.yaml: train.model.arch")
    check_model_types(hf, supported())
    config = arch_config(arch, hf.get(arch, {}))
    advice = (
        f"try a larger ingest.image_size, or smaller patch, kernel, window or stride settings "
        f"under train.model.hf.{arch}"
    )
    return _fit(config, classes, image_shape, f"params.yaml: train.model.hf.{arch}", advice)


def pretrained_network(
    folder: Path, classes: list[str], image_shape: list[int]
) -> tuple[dict[str, Any], tuple[list[float], list[float]] | None, dict[str, str]]:
    """The config of the checkpoint in ``folder`` fitted to the data, its preprocessor's mean and
    std (None when it has none) and the record of where the weights came from."""
    if not (folder / CONFIG_FILE).is_file():
        raise PipelineError(
            f"{folder}: no pretrained weights here (train.model.weights); fetch them once on a machine "
            f"with internet: {FETCH.format(name=folder.name)}, then dvc push (or dvc pull them)"
        )
    checkpoint = CheckpointFolder(folder)
    config = _checkpoint_config(checkpoint)
    advice = "try a larger ingest.image_size (the checkpoint's own, say)"
    network = _fit(config, classes, image_shape, f"{folder / CONFIG_FILE}", advice, pretrained=True)
    source = {"source": folder.as_posix(), "sha256": folder_sha256(folder)}
    return network, checkpoint.stats(image_shape[0]), source


def _checkpoint_config(checkpoint: CheckpointFolder) -> PretrainedConfig:
    """config.json as the config class transformers has for its model type: read here, as data,
    where ``AutoConfig.from_pretrained`` would import the code an ``auto_map`` names."""
    values, path = checkpoint.config(), checkpoint.folder / CONFIG_FILE
    model_type = values.get("model_type")
    if not isinstance(model_type, str):
        raise PipelineError(f"{path}: no model_type: not a transformers config")
    check_arch(model_type, f"{path}: model_type")
    try:
        return CONFIG_MAPPING[model_type].from_dict(values)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PipelineError(f"{path}: not a {model_type} config ({message})") from None


def refit(network: dict[str, Any], classes: list[str], image_shape: list[int], where: str) -> dict[str, Any]:
    """A trained model's ``network`` (model.json's) fitted to other ``classes`` and image size, its
    channels kept: the network a release is fine-tuned into (``mlpipeline.modeling.finetune``)."""
    refuse_code(network, where)
    check_arch(network.get("model_type", ""), where)
    return _fit(CONFIG_MAPPING[network["model_type"]].from_dict(network), classes, image_shape, where, True)


def _fit(
    config: PretrainedConfig,
    classes: list[str],
    image_shape: list[int],
    where: str,
    advice: str,
    pretrained: bool = False,
) -> dict[str, Any]:
    """``config`` with the data's classes, channels and image size (on its vision sub-config when
    it has one: CLIP's and SigLIP's top level has neither), checked to train on the data's images."""
    channels, height, width = image_shape
    config.num_labels = len(classes)
    config.id2label = dict(enumerate(classes))
    config.label2id = {name: index for index, name in enumerate(classes)}
    vision = getattr(config, "vision_config", None) or config
    if pretrained and getattr(vision, "num_channels", channels) != channels:  # its stem is fixed
        raise PipelineError(
            f"{where}: the checkpoint takes {vision.num_channels}-channel images, the data has "
            f"{channels} (set ingest.channels: {vision.num_channels})"
        )
    if hasattr(vision, "num_channels"):
        vision.num_channels = channels
    if hasattr(vision, "image_size"):  # a list where the arch takes only lists (Hiera)
        square = height == width and not isinstance(vision.image_size, (list, tuple))
        vision.image_size = height if square else [height, width]
    if isinstance(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES[config.model_type], tuple):
        config.architectures = [model_class(config).__name__]  # which of several: transformers needs it
    network = json.loads(config.to_json_string(use_diff=False))
    check_trainable(network, image_shape, where, advice)
    return network


def _from_network(network: dict[str, Any], where: str) -> nn.Module:
    refuse_code(network, where)
    model_type = network.get("model_type", "")
    if model_type not in CONFIG_MAPPING or model_type not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        raise PipelineError(
            f"{where}: arch {model_type!r} is unknown to the installed transformers "
            f"{transformers.__version__} (trained with {network.get('transformers_version')}; install that)"
        )
    try:
        return AutoModelForImageClassification.from_config(config_of(network), trust_remote_code=False)
    except (ValueError, TypeError, IndexError, KeyError, RuntimeError, AttributeError) as exc:
        message = first_line(exc)
        raise PipelineError(f"{where}: {model_type} cannot be built from this config ({message})") from None


def build(config: Any) -> HFNet:
    """A fresh network of ``config`` (a ``ModelConfig`` of a transformers arch)."""
    return HFNet(_from_network(config.network, "model.json: network"), config.mean, config.std)


def from_pretrained(config: Any, folder: Path) -> HFNet:
    """The network of ``config`` holding the checkpoint of ``folder``: every tensor but the head's
    loads (the head is new, sized for the classes), or one line names the first that does not.
    transformers gets the tensors, read and checked here (``mlpipeline.modeling.pretrained``),
    never the folder."""
    fitted = config_of(config.network)
    head = head_modules(fitted)
    tensors = CheckpointFolder(folder).tensors()
    kinds = {name: tensor.dtype for name, tensor in tensors.items()}
    net, info = model_class(fitted).from_pretrained(
        None,  # no folder: the state dict alone
        config=fitted,
        state_dict=tensors,
        ignore_mismatched_sizes=True,
        output_loading_info=True,
        dtype=torch.float32,
        trust_remote_code=False,
    )
    del tensors
    refuse_casts(kinds, net.state_dict(), net.base_model_prefix, folder)
    if mismatched := sorted(item for item in info["mismatched_keys"] if not item[0].startswith(head)):
        name, theirs, ours = mismatched[0]
        raise PipelineError(
            f"{folder}: tensor {name} is {list(theirs)} in the checkpoint, {list(ours)} in the network "
            f"({len(mismatched)} differ; for a position embedding set ingest.image_size to the checkpoint's)"
        )
    if missing := sorted(name for name in info["missing_keys"] if not name.startswith(head)):
        raise PipelineError(f"{folder}: the checkpoint has no tensor {missing[0]} ({len(missing)} missing)")
    return HFNet(net, config.mean, config.std)


def folder_sha256(folder: Path) -> str:
    """One hash over every file of ``folder`` (names and bytes, in sorted order)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def provenance(network: dict[str, Any], source: dict[str, str] | None) -> dict[str, Any]:
    """model.json's fields for a transformers arch: what rebuilds it and where its weights began."""
    return {
        "arch": network["model_type"],
        "network": network,
        "transformers": transformers.__version__,
        "pretrained": source,
    }
