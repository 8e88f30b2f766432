"""Whether a transformers arch's model can be trained here, found before any training work.

transformers maps 42 model types to image classifiers, and their configs accept what their models
then cannot run: a default ConvNeXt downsamples an 8x8 image to nothing, DINAT needs the natten
package, ImageGPT reads color-cluster tokens rather than pixels, HGNet-V2's stem takes 3 channels
whatever ``num_channels`` says. So a config is checked by building its model: on the meta device
first, within the size bound (:mod:`mlpipeline.modeling.hf_size`), then for real, with a forward
pass on two images of the data's shape. Each failure is one line naming the arch, the reason and
what to try.

The classifier head is what the model says it is, not a name: the layers whose shape follows the
number of classes (``classifier`` for most, ``fc`` for HGNet-V2, ``head`` and ``dist_head`` for
SwiftFormer, a decoder layer for Perceiver). Fine-tuning trains them first, and a pretrained
checkpoint's copy of them is replaced.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import json
import re
import typing
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

from mlpipeline.core.errors import PipelineError, first_line
from mlpipeline.modeling.hf_size import check_size, made_on, max_parameters

PROBE_IMAGES = 2  # a batch, so batch normalization has more than one value per channel
# Inputs only a model's own transformers processor makes (a text prompt, patch sequences): this
# pipeline feeds images, N x C x H x W.
PROCESSOR_INPUTS = ("input_ids", "pixel_attention_mask", "spatial_shapes")
MISSING_PACKAGE = re.compile(r"requires the (\S+) library")


def model_class(config: PretrainedConfig) -> type[nn.Module]:
    """The class transformers builds for ``config``: the one its ``architectures`` names, else the
    first mapped (DeiT, LeViT and Perceiver map several; transformers fails on a config naming none)."""
    classes = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING[type(config)]
    if not isinstance(classes, tuple):
        return classes
    named = {cls.__name__: cls for cls in classes}
    return next((named[name] for name in config.architectures or () if name in named), classes[0])


def config_of(network: dict[str, Any]) -> PretrainedConfig:
    """The transformers config object of ``network`` (a config's full JSON, as model.json keeps it)."""
    return CONFIG_MAPPING[network["model_type"]].from_dict(network)


def check_trainable(network: dict[str, Any], image_shape: list[int], where: str, advice: str) -> None:
    """Refuse in one line (``where``: the params or file at fault; ``advice``: what to change when
    the model cannot run on the data's images) a ``network`` this pipeline cannot train on images
    of ``image_shape`` (C, H, W). A network checked once is not checked again in the process."""
    bound = max_parameters()  # read here: a run that raises it checks again
    _check_once(json.dumps(network, sort_keys=True), tuple(image_shape), where, advice, bound)


@functools.lru_cache(maxsize=8)
def _check_once(network: str, image_shape: tuple[int, ...], where: str, advice: str, bound: int) -> None:
    config = config_of(json.loads(network))
    arch = config.model_type
    _check_inputs(model_class(config), arch, where)
    channels, height, width = image_shape
    try:
        check_size(config, bound, where)
        if not head_modules(config):
            raise PipelineError(
                f"{where}: {arch}'s model has no layer sized by the number of classes: no head"
            )
        _trial_forward(config, image_shape, where)
    except ImportError as exc:  # transformers' requires_backends, as the model is made
        needed = MISSING_PACKAGE.search(str(exc))
        package = needed.group(1) if needed else first_line(exc)
        raise PipelineError(
            f"{where}: {arch} needs the {package} package, which is not installed here; choose another arch"
        ) from None
    except PipelineError:
        raise
    except Exception as exc:  # the model's own code refusing this config, whatever it raises
        raise PipelineError(
            f"{where}: {arch} does not run on {channels}x{height}x{width} images with this config "
            f"({first_line(exc)}); {advice}"
        ) from None


def _check_inputs(cls: type[nn.Module], arch: str, where: str) -> None:
    inputs = list(inspect.signature(cls.forward).parameters)
    if "pixel_values" not in inputs:
        raise PipelineError(
            f"{where}: {arch} classifies {inputs[1]} (made by its own transformers processor), not "
            "pixels: this pipeline feeds images; choose another arch"
        )
    if needed := [name for name in PROCESSOR_INPUTS if name in inputs]:
        raise PipelineError(
            f"{where}: {arch} needs {', '.join(needed)} beside the pixels, made by its own transformers "
            "processor: this pipeline feeds images alone; choose another arch"
        )
    if (declared := _declared_output(cls)) is not None and "logits" not in declared.__dataclass_fields__:
        raise PipelineError(
            f"{where}: {arch}'s model gives no logits (its output is a {declared.__name__}): this "
            "pipeline trains image classifiers; choose another arch"
        )


def _declared_output(cls: type[nn.Module]) -> type | None:
    """The output class ``cls.forward`` declares (a ``ModelOutput`` dataclass), None if unknown."""
    try:
        declared = typing.get_type_hints(cls.forward).get("return")
    except Exception:  # an annotation that does not resolve: the trial forward will tell
        return None
    options = typing.get_args(declared) or (declared,)
    outputs = [option for option in options if dataclasses.is_dataclass(option)]
    return outputs[0] if len(outputs) == 1 else None


def head_modules(config: PretrainedConfig) -> tuple[str, ...]:
    """The prefixes (``classifier.``) of the modules whose parameters' shapes follow the number of
    classes: the classifier head, whatever the arch names it."""
    return _head_modules(config.to_json_string(use_diff=False))


@functools.lru_cache(maxsize=8)
def _head_modules(network: str) -> tuple[str, ...]:
    config = config_of(json.loads(network))
    more = copy.deepcopy(config)
    more.num_labels = config.num_labels + 1
    ours, theirs = _shapes(made_on(config, "meta")), _shapes(made_on(more, "meta"))
    changed = {name.rpartition(".")[0] for name, shape in ours.items() if theirs.get(name) != shape}
    return tuple(sorted(f"{module}." for module in changed))


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(parameter.shape) for name, parameter in model.named_parameters()}


def _trial_forward(config: PretrainedConfig, image_shape: tuple[int, ...], where: str) -> None:
    """Build the model for real and run it on ``PROBE_IMAGES`` random images (in training mode,
    without gradients, the global random state left as it was): its logits must be one finite
    value per class. A model that fails on the data's channels but runs on 3 ignores them."""
    arch, (channels, height, width) = config.model_type, image_shape
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        model = made_on(config).train()
        try:
            output = model(pixel_values=torch.rand(PROBE_IMAGES, *image_shape))
        except Exception:
            if channels != 3 and _runs_on_rgb(config, height, width):
                raise PipelineError(
                    f"{where}: {arch} takes 3-channel images whatever num_channels says, the data has "
                    f"{channels} (set ingest.channels: 3)"
                ) from None
            raise
    logits = getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (PROBE_IMAGES, config.num_labels):
        raise PipelineError(
            f"{where}: {arch} gives {_shape(logits)} for {PROBE_IMAGES} images of {config.num_labels} classes"
        )
    if not torch.isfinite(logits).all():
        raise PipelineError(f"{where}: {arch} gives non-finite logits at initialization with this config")


def _shape(logits: Any) -> str:
    return f"logits of shape {list(logits.shape)}" if isinstance(logits, torch.Tensor) else "no logits"


def _runs_on_rgb(config: PretrainedConfig, height: int, width: int) -> bool:
    """Whether ``config``'s model, made for 3 channels, runs on 3-channel images of the data's
    size: then it takes 3 whatever ``num_channels`` says (HGNet-V2 checks that its input has
    ``num_channels``, but its stem takes ``stem_channels[0]``, 3)."""
    rgb = copy.deepcopy(config)
    vision = getattr(rgb, "vision_config", None) or rgb
    if hasattr(vision, "num_channels"):
        vision.num_channels = 3
    try:
        made_on(rgb)(pixel_values=torch.rand(PROBE_IMAGES, 3, height, width))
    except Exception:  # whatever it raises: the data's channels are not the only problem
        return False
    return True
