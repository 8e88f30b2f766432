"""Typed, validated access to one stage's section of ``params.yaml``.

Each stage describes its section as a frozen dataclass whose fields carry their
allowed range in ``param(...)`` metadata. ``load_section`` reads the YAML and
refuses, in one line naming the key, anything unknown, missing, mistyped or out
of range, so a typo in ``params.yaml`` never silently falls back to a default:
there are no defaults in code, ``params.yaml`` is the single source of truth.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from mlpipeline.core.errors import PipelineError

PARAMS_FILE = Path("params.yaml")

T = TypeVar("T")


def param(
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    min_len: int | None = None,
    max_len: int | None = None,
) -> Any:
    """Declare a param field with optional numeric bounds (applied to list items too)."""
    bounds = {"ge": ge, "gt": gt, "le": le, "lt": lt, "min_len": min_len, "max_len": max_len}
    return dataclasses.field(metadata={k: v for k, v in bounds.items() if v is not None})


class ParamError(PipelineError):
    """A bad value in params.yaml; the message names the dotted key."""

    def __init__(self, key: str, problem: str, source: str = str(PARAMS_FILE)) -> None:
        super().__init__(f"{source}: {key} {problem}")
        self.key = key


def load_section(cls: type[T], section: str, path: Path | str = PARAMS_FILE) -> T:
    """Read ``section`` of the params file at ``path`` and validate it as ``cls``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineError(f"{path}: params file not found (run from the repository root)")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise PipelineError(f"{path}: not valid YAML{where}") from None
    if not isinstance(document, Mapping) or section not in document:
        raise PipelineError(f"{path}: missing section '{section}'")
    return from_mapping(cls, document[section], section, source=str(path))


def from_mapping(cls: type[T], values: Any, key: str, source: str = str(PARAMS_FILE)) -> T:
    """Build and validate dataclass ``cls`` from a mapping found at dotted ``key``."""
    if not isinstance(values, Mapping):
        raise ParamError(key, f"must be a mapping, got {_describe(values)}", source)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        allowed = ", ".join(fields)
        raise ParamError(f"{key}.{unknown[0]}", f"is not a known param (allowed: {allowed})", source)
    kwargs = {}
    for name, field in fields.items():
        sub_key = f"{key}.{name}"
        if name not in values:
            raise ParamError(sub_key, f"is missing (expected {_type_name(hints[name])})", source)
        kwargs[name] = _coerce(values[name], hints[name], sub_key, field.metadata, source)
    instance = cls(**kwargs)
    check = getattr(instance, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as exc:
            raise ParamError(key, str(exc), source) from None
    return instance


def _coerce(value: Any, tp: Any, key: str, bounds: Mapping[str, Any], source: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, key, source)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _coerce(value, inner[0], key, bounds, source)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise ParamError(key, f"must be one of {allowed}, got {value!r}", source)
        return value
    if origin in (list, tuple):
        (item_type, *_) = get_args(tp)
        if not isinstance(value, list):
            raise ParamError(
                key, f"must be a list of {_type_name(item_type)}, got {_describe(value)}", source
            )
        _check_length(value, key, bounds, source)
        items = [_coerce(v, item_type, f"{key}[{i}]", bounds, source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    return _coerce_scalar(value, tp, key, bounds, source)


def _coerce_scalar(value: Any, tp: Any, key: str, bounds: Mapping[str, Any], source: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamError(key, f"must be true or false, got {_describe(value)}", source)
        return value
    if tp is str:
        if not isinstance(value, str) or not value:
            raise ParamError(key, f"must be a non-empty string, got {_describe(value)}", source)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamError(key, f"must be an integer{_range_text(bounds)}, got {_describe(value)}", source)
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ParamError(key, f"must be a number{_range_text(bounds)}, got {_describe(value)}", source)
        value = float(value)
    else:
        raise TypeError(f"unsupported param type {tp!r} for {key}")
    if not _in_range(value, bounds):
        raise ParamError(key, f"must be{_range_text(bounds)}, got {value!r}", source)
    return value


def _check_length(value: list, key: str, bounds: Mapping[str, Any], source: str) -> None:
    lo, hi = bounds.get("min_len"), bounds.get("max_len")
    if (lo is not None and len(value) < lo) or (hi is not None and len(value) > hi):
        if lo == hi:
            want = f"{lo}"
        elif hi is None:
            want = f"at least {lo}"
        else:
            want = f"at most {hi}" if lo is None else f"{lo} to {hi}"
        raise ParamError(key, f"must have {want} item(s), got {len(value)}", source)


def _in_range(value: float, bounds: Mapping[str, Any]) -> bool:
    checks = {
        "ge": lambda b: value >= b,
        "gt": lambda b: value > b,
        "le": lambda b: value <= b,
        "lt": lambda b: value < b,
    }
    return all(test(bounds[name]) for name, test in checks.items() if name in bounds)


def _range_text(bounds: Mapping[str, Any]) -> str:
    symbols = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    parts = [f"{symbols[name]} {bounds[name]}" for name in symbols if name in bounds]
    return f" {' and '.join(parts)}" if parts else ""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_type_name(get_args(tp)[0])}"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, "null")


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)
