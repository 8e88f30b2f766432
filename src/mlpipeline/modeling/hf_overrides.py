"""``train.model.hf``: a transformers arch's config overrides, checked before anything is built.

transformers' configs are strict dataclasses that check each value's type, but they accept values
that build a different network than the one asked for, silently: ``depths: [-1, 1]`` builds as
``[1, 1]``, ``hidden_sizes: [32]`` with two ``depths`` drops a stage, ``num_hidden_layers: -3``
builds none, ``num_attention_heads: 3`` on a hidden size of 64 shrinks the attention to 63. So
beyond transformers' own checks (each turned into one line here): every key of ``train.model.hf``
is a model type, only the arch's own keys are set (the data sets the classes, channels and image
size; the pipeline the dtype), a count or size stays positive where the arch's default is,
epsilons stay above 0, per-stage lists keep one value per stage, and the hidden size splits evenly
over the attention heads. Imported by :mod:`mlpipeline.modeling.hf` only.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from huggingface_hub.errors import StrictDataclassError
from transformers import PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from mlpipeline.core.errors import PipelineError, first_line

WHERE = "params.yaml: train.model.hf"
_DTYPE = "the pipeline sets it (float32 weights; train.precision sets autocast)"
OWNED = {  # keys of every config that the data or the pipeline sets: an override would be ignored
    "num_labels": "the data's classes set it",
    "id2label": "the data's classes set it",
    "label2id": "the data's classes set it",
    "num_channels": "ingest.channels sets it",
    "image_size": "ingest.image_size sets it",
    "model_type": "it is the arch: set train.model.arch",
    "dtype": _DTYPE,
    "torch_dtype": _DTYPE,
}
# Counts whose 0 means "none" (in transformers 5's image classifiers); every other count or size
# whose default is positive must stay positive.
ZERO_MEANS_NONE = frozenset({"padding", "down_pad", "num_register_tokens", "num_query_pool"})
STAGE_LISTS = ("depths", "depth")  # the per-stage list that says how many stages there are
STAGE_COUNTS = ("num_stages", "num_encoder_blocks")  # a stage count kept beside it


def closest(name: str, choices: Iterable[str]) -> str:
    """`` (closest: a, b)`` for the names of ``choices`` like ``name``, or nothing."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (closest: {', '.join(close)})" if close else ""


def check_model_types(hf: Mapping[str, Any], known: list[str]) -> None:
    """Every key of ``train.model.hf`` names a model type: a misspelled one would leave its arch at
    transformers' defaults (ImageNet-sized) without a word."""
    for name in hf:
        if name not in known:
            hint = closest(name, known)
            raise PipelineError(
                f"{WHERE}.{name} is not an image-classification model type of transformers{hint}"
            )


def arch_config(arch: str, overrides: Any) -> PretrainedConfig:
    """``arch``'s transformers config with the user's ``overrides`` (``train.model.hf.<arch>``), or
    one line naming the override at fault."""
    where = f"{WHERE}.{arch}"
    config_class = CONFIG_MAPPING[arch]
    defaults = config_class()
    values = _checked_keys(overrides, defaults, where)
    try:
        config = config_class(**values)
    except StrictDataclassError as exc:  # "Validation error for field 'x':\n    TypeError: ..."
        raise PipelineError(_described(exc, config_class, values, where)) from None
    except (ValueError, TypeError, ArithmeticError, IndexError, KeyError) as exc:
        raise PipelineError(f"{where}: {arch} refuses this config ({first_line(exc)})") from None
    _check_values(config, defaults, values, where)
    return config


def own_keys(config: PretrainedConfig) -> set[str]:
    """The keys that shape ``config``'s arch: its dataclass fields and settable properties
    (``out_features``), without those every transformers config has."""
    base = {field.name for field in dataclasses.fields(PretrainedConfig)}
    fields = {field.name for field in dataclasses.fields(config)} - base
    return fields | (_settable_properties(type(config)) - _settable_properties(PretrainedConfig))


def _settable_properties(cls: type) -> set[str]:
    return {
        name
        for klass in cls.__mro__
        for name, value in vars(klass).items()
        if isinstance(value, property) and value.fset is not None
    }


def _checked_keys(overrides: Any, defaults: PretrainedConfig, where: str) -> dict[str, Any]:
    """``overrides`` as config arguments: a mapping of the arch's own keys (a sub-config's, such as
    CLIP's ``vision_config``, checked the same way), an integer where a float belongs made one."""
    if not isinstance(overrides, Mapping):
        raise PipelineError(f"{where} must be a mapping of config keys, got {overrides!r:.60}")
    known = own_keys(defaults)
    values = {}
    for key, value in overrides.items():
        if key in OWNED:
            raise PipelineError(f"{where}.{key} is not for params.yaml: {OWNED[key]}")
        if key not in known:
            raise PipelineError(
                f"{where}.{key} is no {defaults.model_type} config key{closest(key, sorted(known))}"
            )
        default = getattr(defaults, key, None)
        if isinstance(default, PretrainedConfig):
            value = _checked_keys(value, default, f"{where}.{key}")
        values[key] = _as_float_where_float(value, default)
    return values


def _as_float_where_float(value: Any, default: Any) -> Any:
    """YAML's ``0`` for a float key (``layer_norm_eps: 0``) as ``0.0``: transformers refuses the int."""
    if isinstance(default, float) and type(value) is int:
        return float(value)
    floats = isinstance(default, (list, tuple)) and default and all(isinstance(v, float) for v in default)
    if floats and isinstance(value, list):
        return [float(v) if type(v) is int else v for v in value]
    return value


def _check_values(
    config: PretrainedConfig, defaults: PretrainedConfig, values: dict[str, Any], where: str
) -> None:
    """What transformers accepts but builds another network from (see the module's docstring)."""
    for key, value in values.items():
        if isinstance(sub_defaults := getattr(defaults, key, None), PretrainedConfig):
            _check_values(getattr(config, key), sub_defaults, value, f"{where}.{key}")
        else:
            _check_number(key, value, getattr(defaults, key, None), f"{where}.{key}")
    _check_stages(config, defaults, values, where)
    _check_heads(config, values, where)


def _check_number(key: str, value: Any, default: Any, where: str) -> None:
    if key.endswith(("eps", "epsilon")) and isinstance(value, float) and not value > 0:
        raise PipelineError(
            f"{where} must be > 0 (it keeps a normalization from dividing by zero), got {value}"
        )
    floor = _floor(key, default)
    items = value if isinstance(value, list) else [value]
    for index, item in enumerate(items):
        if floor is not None and _is_int(item) and item < floor:
            at = f"[{index}]" if isinstance(value, list) else ""
            raise PipelineError(f"{where}{at} must be >= {floor}, got {item}")


def _floor(key: str, default: Any) -> int | None:
    """The least an integer setting may be: 1 for a count or size whose default is positive (0
    where 0 means none), 0 for one whose default is 0; None for the others."""
    defaults = list(default) if isinstance(default, (list, tuple)) else [default]
    if not defaults or not all(_is_int(item) for item in defaults):
        return None
    if min(defaults) >= 1 and key not in ZERO_MEANS_NONE:
        return 1
    return 0 if min(defaults) >= 0 else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_stages(
    config: PretrainedConfig, defaults: PretrainedConfig, values: dict[str, Any], where: str
) -> None:
    """Per-stage lists (those as long as the default ``depths``) keep one value per stage: the
    models zip them, so a short one silently drops stages."""
    anchor = next((key for key in STAGE_LISTS if _length(getattr(defaults, key, None)) is not None), None)
    if anchor is None:
        return
    stages, default_stages = _length(getattr(config, anchor)), _length(getattr(defaults, anchor))
    per_stage = [
        key
        for key in sorted(own_keys(defaults))
        if key != anchor and _length(getattr(defaults, key, None)) == default_stages
    ]
    if stages is None or not set(values) & {anchor, *per_stage, *STAGE_COUNTS}:
        return
    for key in per_stage:
        if (length := _length(getattr(config, key))) not in (None, stages):
            raise PipelineError(
                f"{where}: {anchor} has {stages} stages, {key} {length} values "
                f"(give one per stage: set {key} too)"
            )
    for key in STAGE_COUNTS:
        if _is_int(count := getattr(config, key, None)) and count != stages:
            raise PipelineError(
                f"{where}: {anchor} has {stages} stages, {key} is {count} (set it to {stages})"
            )


def _length(value: Any) -> int | None:
    return len(value) if isinstance(value, (list, tuple)) else None


def _check_heads(config: PretrainedConfig, values: dict[str, Any], where: str) -> None:
    """Attention splits the hidden size evenly over the heads (transformers checks it for a few
    archs only; ViT would silently attend in 63 of 64 dimensions with 3 heads)."""
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if not {"hidden_size", "num_attention_heads"} & set(values) or not (_is_int(hidden) and _is_int(heads)):
        return
    if heads > 0 and hidden % heads:
        raise PipelineError(
            f"{where}: hidden_size {hidden} is not a multiple of num_attention_heads {heads} "
            "(each head takes an equal share of it)"
        )


def _described(exc: StrictDataclassError, config_class: type, values: dict[str, Any], where: str) -> str:
    """One line for a value transformers' strict config refused: the key, its type and the value
    for a field's type, else the validator's own message (``layer_type=foo is not one of ...``)."""
    field = re.match(r"Validation error for field '(\w+)'", str(exc))
    types = {f.name: f.type for f in dataclasses.fields(config_class)}
    if field and field.group(1) in values and field.group(1) in types:
        name = field.group(1)
        kind = types[name]
        kind_text = kind.__name__ if isinstance(kind, type) else str(kind).replace("NoneType", "None")
        return f"{where}.{name} must be {kind_text}, got {values[name]!r:.60}"
    return f"{where}: {first_line(exc.__cause__ or exc)}"
