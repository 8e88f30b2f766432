"""Typed, validated access to one stage's section of ``params.yaml``, through pydantic.

Each stage describes its section as a ``@params_dataclass`` (a frozen pydantic dataclass) whose
fields carry their allowed range in ``param(...)``; cross-field rules are pydantic
``model_validator``s. ``load_section`` reads the YAML with DVC's own loader (``read_document``:
YAML 1.2, duplicate keys refused), so a stage sees the values ``dvc params diff`` and the schema
check see, and refuses, in one line naming the file and the dotted key, anything unknown,
missing, mistyped or out of range. Validation is strict ("3" is not an integer, 1 is not true,
1.5 is not an integer), so a typo never turns into another value, and no field has a default:
``params.yaml`` is the single source of truth. The same classes generate ``params.schema.json``
(``make schema``), which editors check params.yaml against.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar, dataclass_transform

import pydantic
from pydantic import (
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from mlpipeline.core.errors import PipelineError

PARAMS_FILE = Path("params.yaml")
CONFIG = ConfigDict(strict=True, extra="forbid", str_min_length=1, allow_inf_nan=False)
UNKNOWN_KEY = ("unexpected_keyword_argument", "extra_forbidden")

T = TypeVar("T")

Side = Annotated[int, Field(ge=1, le=4096)]
SizePair = Annotated[list[Side], Field(min_length=2, max_length=2)]


def as_square(value: Any, validate_pair: ValidatorFunctionWrapHandler) -> list[int]:
    """``image_size: 28`` means ``[28, 28]`` (so ``-S ingest.image_size=28`` works)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [TypeAdapter(Side).validate_python(value)] * 2  # an error names image_size itself
    return validate_pair(value)


# An image size param: [height, width], or one side of a square.
ImageSize = Annotated[SizePair, WrapValidator(as_square, json_schema_input_type=Side | SizePair)]


def param(
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    min_len: int | None = None,
    max_len: int | None = None,
) -> Any:
    """A field's allowed range: a number's bounds, or a list's length (its items are bounded in
    their type: ``list[Annotated[int, Field(ge=1)]]``).

    A ``dataclasses.field`` whose metadata pydantic reads as ``Field`` arguments: unlike
    ``Field()`` it sets no default, so fields keep params.yaml's order.
    """
    bounds = {"ge": ge, "gt": gt, "le": le, "lt": lt, "min_length": min_len, "max_length": max_len}
    return dataclasses.field(metadata={k: v for k, v in bounds.items() if v is not None})


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, pydantic.Field, param))
def params_dataclass(cls: type[T]) -> type[T]:
    """Declare a section of params.yaml (or a part of one): a frozen pydantic dataclass, strict."""
    return pydantic.dataclasses.dataclass(frozen=True, config=CONFIG)(cls)


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
    document = read_document(text, path)
    if not isinstance(document, Mapping):
        kind = {list: "a list", str: "a string"}.get(type(document), repr(document))
        raise PipelineError(f"{path}: holds {kind}, not a mapping of sections")
    if section not in document:
        raise PipelineError(f"{path}: missing section '{section}'")
    return from_mapping(cls, document[section], section, source=str(path))


def read_document(text: str, path: Path) -> Any:
    """``text`` as DVC reads params.yaml (``dvc.utils.serialize.parse_yaml``: ruamel, YAML 1.2, a
    duplicated key refused): PyYAML's YAML 1.1 would read ``1e-3`` as a string and ``yes`` as true."""
    from dvc.utils.serialize import YAMLFileCorruptedError, parse_yaml

    try:
        return parse_yaml(text, str(path))
    except YAMLFileCorruptedError as exc:
        cause = exc.__cause__
        mark = getattr(cause, "problem_mark", None)
        line = f"line {mark.line + 1}" if mark is not None else ""
        duplicate = re.search(r'found duplicate key "(.*?)"', str(getattr(cause, "problem", "")))
        if duplicate:  # DVC refuses the file too: the last value must not win silently
            raise PipelineError(f"{path}: key '{duplicate.group(1)}' appears twice ({line})") from None
        raise PipelineError(f"{path}: not valid YAML{' at ' + line if line else ''}") from None


@functools.cache
def _adapter(cls: type[T]) -> TypeAdapter[T]:
    return TypeAdapter(cls)


def from_mapping(cls: type[T], values: Any, key: str, source: str = str(PARAMS_FILE)) -> T:
    """Build and validate ``cls`` from the value found at dotted ``key`` of ``source``."""

    def not_json(value: Any) -> None:
        raise ParamError(key, f"holds {value!r}: not a number, string, true/false, list or mapping", source)

    # Through JSON, which YAML's types map onto: from Python objects pydantic's strict mode would
    # take only dataclass instances, not mappings, for the nested sections.
    try:
        return _adapter(cls).validate_json(json.dumps(values, default=not_json))
    except ValidationError as exc:
        unknown_first = sorted(exc.errors(), key=lambda error: error["type"] not in UNKNOWN_KEY)
        raise _translate(unknown_first[0], _adapter(cls).json_schema(), key, source) from None


def section_keys(cls: type, section: str) -> list[str]:
    """One line per leaf key of ``section`` (as ``cls`` validates it): its dotted name and what it
    takes, in the words of the one-line errors (``train.epochs: an integer >= 1``)."""
    schema = _adapter(cls).json_schema()
    return list(_leaf_lines(schema, schema, section))


def _leaf_lines(schema: dict[str, Any], node: dict[str, Any], key: str) -> Iterator[str]:
    node = _deref(schema, node)
    if "properties" not in node:
        yield f"{key}: {_expected(schema, node)}"
        return
    for name, child in node["properties"].items():
        yield from _leaf_lines(schema, child, f"{key}.{name}")


def _translate(error: Any, schema: dict[str, Any], key: str, source: str) -> ParamError:
    """One line for a person out of one pydantic error, in the terms of the field's JSON schema."""
    dotted = key + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])
    return ParamError(dotted, _problem(error, schema), source)


def _problem(error: Any, schema: dict[str, Any]) -> str:
    kind, loc, value = error["type"], error["loc"], error["input"]
    node = _node_at(schema, loc)
    if kind in UNKNOWN_KEY:
        return f"is not a known param (allowed: {', '.join(_node_at(schema, loc[:-1])['properties'])})"
    if kind in ("missing", "missing_argument"):
        return f"is missing (expected {_expected(schema, node)})"
    if kind == "value_error":  # a cross-field rule: its message names the fields
        return str(error["ctx"]["error"])
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"must be{_range(_branch(schema, node, 'type'))}, got {value!r}"
    if kind in ("too_short", "too_long"):
        return f"must have {_count(_branch(schema, node, 'items'))} item(s), got {len(value)}"
    return f"must be {_expected(schema, node)}, got {_describe(value)}"


def _deref(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return schema["$defs"][ref.rsplit("/", 1)[-1]] if ref else node


def _branch(schema: dict[str, Any], node: dict[str, Any], needed: str) -> dict[str, Any]:
    """``node`` itself, or the branch of its ``anyOf`` that has ``needed`` (e.g. the non-null one)."""
    options = [_deref(schema, option) for option in node.get("anyOf", [])]
    return next((option for option in options if needed in option), node)


def _node_at(schema: dict[str, Any], loc: tuple[Any, ...]) -> dict[str, Any]:
    node = schema
    for part in loc:
        if isinstance(part, int):
            node = _deref(schema, _branch(schema, node, "items")["items"])
        elif isinstance(free := node.get("additionalProperties"), dict):  # a mapping of free keys
            node = _deref(schema, free)  # (train.model.hf): the schema of each value
        else:
            node = _deref(schema, _branch(schema, node, "properties")["properties"].get(part, {}))
    return node


def _expected(schema: dict[str, Any], node: dict[str, Any]) -> str:
    node = _deref(schema, node)
    if "anyOf" in node:
        return " or ".join(_expected(schema, option) for option in node["anyOf"])
    if "enum" in node:
        return "one of " + ", ".join(repr(choice) for choice in node["enum"])
    if "pattern" in node:  # a string of a given form: its description says which
        return node.get("description") or f"a string matching {node['pattern']}"
    kind = node.get("type")
    if kind == "array":
        count = "" if _count(node) is None else f" of {_count(node)} item(s)"
        return f"a list{count}, each {_expected(schema, node['items'])}"
    names = {"integer": "an integer", "number": "a number", "boolean": "true or false", "null": "null"}
    names |= {"object": "a mapping", "string": "a non-empty string" if node.get("minLength") else "a string"}
    return names.get(kind, "a value") + _range(node)


def _range(node: dict[str, Any]) -> str:
    symbols = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    parts = [f"{symbol} {node[name]}" for name, symbol in symbols.items() if name in node]
    return f" {' and '.join(parts)}" if parts else ""


def _count(node: dict[str, Any]) -> str | None:
    low, high = node.get("minItems"), node.get("maxItems")
    if low == high:
        return None if low is None else f"{low}"
    if high is None:
        return f"at least {low}"
    return f"at most {high}" if low is None else f"{low} to {high}"


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)
