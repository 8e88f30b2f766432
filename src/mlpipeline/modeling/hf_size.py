"""The size bound on a transformers model: its parameters, counted before any memory is taken.

``MLPIPELINE_MAX_PARAMETERS`` (default one billion: float32 weights, gradients and AdamW moments
take 16 GB) says what this machine can train. It is an environment variable, not a DVC param: it
never changes an output byte, only whether a run on this machine starts, so raising it must not
rerun a stage. The count is made on the meta device (shapes, no storage) and stops as soon as it
passes the bound, so ShieldGemma2's 2.7 billion are refused in a fraction of a second. A typo of
200,000 layers of a narrow ViT would still take minutes to make, layer after layer, before the
count passed the bound; so settings far above transformers' defaults first get a quick lower
bound: the model made with each at its default and at twice that, the growth extended linearly.
A parameter count grows at least linearly in every count and size (its terms are products of
them), so the extension underestimates, and refusing on it is safe.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook
from transformers import AutoModelForImageClassification, PretrainedConfig

from mlpipeline.core import settings
from mlpipeline.core.errors import PipelineError

MAX_PARAMETERS_ENV = "MLPIPELINE_MAX_PARAMETERS"
DEFAULT_MAX_PARAMETERS = 1_000_000_000
FAR = 8  # a setting more than this many times its default gets the quick lower bound first

Setting = tuple[PretrainedConfig, str, int | None]  # the config holding it, its key, a list index


class _OverBound(Exception):
    """Raised while the model is being made, as soon as its parameters pass the bound."""


def made_on(config: PretrainedConfig, device: str = "cpu") -> nn.Module:
    """``config``'s image classifier, made on ``device`` (``meta``: shapes alone, no storage)."""
    with torch.device(device):
        return AutoModelForImageClassification.from_config(config)


def max_parameters() -> int:
    """The bound: ``MLPIPELINE_MAX_PARAMETERS``, or one line if it is not a whole number >= 1."""
    return settings.count(MAX_PARAMETERS_ENV, DEFAULT_MAX_PARAMETERS)


def check_size(config: PretrainedConfig, bound: int, where: str) -> int:
    """The parameter count of ``config``'s model, or one line if it passes ``bound``."""
    if (least := _lower_bound(config)) > bound:
        raise PipelineError(_too_large(config.model_type, f"at least {least:,}", bound, where))
    made = 0

    def count(module: nn.Module, name: str, parameter: nn.Parameter | None) -> None:
        nonlocal made
        made += parameter.numel() if parameter is not None else 0
        if made > bound:
            raise _OverBound

    handle = register_module_parameter_registration_hook(count)
    try:
        model = made_on(config, "meta")
    except _OverBound:
        raise PipelineError(_too_large(config.model_type, f"over {bound:,}", bound, where)) from None
    finally:
        handle.remove()
    total = _count(model)
    if total > bound:  # tied weights count once here
        raise PipelineError(_too_large(config.model_type, f"{total:,}", bound, where))
    return total


def _too_large(arch: str, count: str, bound: int, where: str) -> str:
    return (
        f"{where}: {arch} would hold {count} parameters, more than {MAX_PARAMETERS_ENV}={bound:,} "
        "allows (smaller overrides, or raise it if this machine can train that)"
    )


def _count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def _lower_bound(config: PretrainedConfig) -> int:
    """At most the parameter count of ``config``'s model, found quickly from small models when
    some integer settings are ``FAR`` above their defaults (0 when none is, or a small model
    cannot be made: the full count then decides)."""
    small = copy.deepcopy(config)
    far = list(_far_settings(small))
    for setting, _, default in far:
        _set(setting, default)
    if not far:
        return 0
    try:
        least = base = _count(made_on(small, "meta"))
        for setting, value, default in far:
            _set(setting, 2 * default)
            least += (_count(made_on(small, "meta")) - base) * (value - default) // default
            _set(setting, default)
    except Exception:  # the full count will say what is wrong with the model
        return 0
    return least


def _far_settings(config: PretrainedConfig) -> Iterator[tuple[Setting, int, int]]:
    """Integer settings of ``config`` (and of its vision sub-config) more than ``FAR`` times their
    default: (where it is, its value, its default)."""
    for holder in (config, getattr(config, "vision_config", None)):
        if not isinstance(holder, PretrainedConfig):
            continue
        defaults = type(holder)()
        for key, value in vars(holder).items():
            default = getattr(defaults, key, None)
            pairs = (
                zip(value, default, strict=False) if _ints(value) and _ints(default) else [(value, default)]
            )
            for index, (item, item_default) in enumerate(pairs):
                if (
                    _is_int(item)
                    and _is_int(item_default)
                    and item_default >= 1
                    and item > FAR * item_default
                ):
                    yield (
                        (holder, key, index if isinstance(value, list | tuple) else None),
                        item,
                        item_default,
                    )


def _ints(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(_is_int(item) for item in value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _get(setting: Setting) -> int:
    holder, key, index = setting
    value = getattr(holder, key)
    return value if index is None else value[index]


def _set(setting: Setting, value: int) -> None:
    holder, key, index = setting
    if index is None:
        setattr(holder, key, value)
    else:
        items = list(getattr(holder, key))
        items[index] = value
        setattr(holder, key, items)
