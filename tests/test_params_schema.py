"""params.schema.json: generated from the params classes, committed, and the contract they keep.

The bounds test walks the committed schema, not the live classes: a bound dropped from a class
(``train.model.dropout`` without ``lt=1``) then still has its value just past it tried, and
the stage accepting that value fails the test (the stale-schema test fails too).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_type_hints

import jsonschema
import pydantic
import pytest
import yaml
from conftest import GIT_ENV, REPO_ROOT

from mlpipeline.core.params import ParamError, from_mapping, load_section
from mlpipeline.devtools.params_schema import SCHEMA_FILE, ParamsFile, schema_text

COMMITTED = json.loads((REPO_ROOT / SCHEMA_FILE).read_text())
SECTIONS = get_type_hints(ParamsFile)  # section name -> the class its stage validates it with
RANGE = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
PARAMS_TEXT = json.dumps(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()))


def repo_params() -> dict[str, Any]:
    """A fresh copy of the repository's params.yaml (parsed once: PyYAML is slow)."""
    return json.loads(PARAMS_TEXT)


def test_committed_schema_is_the_generated_one() -> None:
    assert (REPO_ROOT / SCHEMA_FILE).read_text() == schema_text(), (
        f"{SCHEMA_FILE} is stale: run `make schema` and commit it"
    )


def test_params_yaml_names_the_schema_for_editors_and_matches_it() -> None:
    text = (REPO_ROOT / "params.yaml").read_text()
    assert text.startswith(f"# yaml-language-server: $schema={SCHEMA_FILE}\n")
    jsonschema.Draft202012Validator(COMMITTED).validate(yaml.safe_load(text))


def test_every_stage_section_has_a_class_and_nothing_else_does() -> None:
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    read_by_stages = {section for stage in stages.values() for section in stage.get("params", [])}
    assert set(SECTIONS) == set(repo_params()) == read_by_stages


def params_classes(cls: type) -> Iterator[type]:
    """``cls`` and every dataclass its fields hold, however deep (lists and optionals included)."""
    yield cls
    pending = list(get_type_hints(cls).values())
    while pending:
        hint = pending.pop()
        pending.extend(get_args(hint))
        if dataclasses.is_dataclass(hint):
            yield from params_classes(hint)


@pytest.mark.parametrize("cls", sorted(set(params_classes(ParamsFile)), key=lambda c: c.__name__))
def test_every_params_class_is_validated_by_pydantic(cls: type) -> None:
    # A plain @dataclass nested in a params class is still type- and range-checked by pydantic,
    # but a check() method on it would never run: declare it with @params_dataclass.
    assert pydantic.dataclasses.is_pydantic_dataclass(cls), f"declare {cls.__name__} with @params_dataclass"
    if "check" in vars(cls):
        validators = cls.__pydantic_decorators__.model_validators
        assert "check" in validators, f"{cls.__name__}.check needs @model_validator(mode='after')"


def deref(node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return COMMITTED["$defs"][ref.rsplit("/", 1)[-1]] if ref else node


def bounded(node: dict[str, Any], path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple, dict]]:
    """(path in params.yaml, schema node) of every value with a range, a length or a non-empty rule."""
    node = deref(node)
    for option in node.get("anyOf", []):
        yield from bounded(option, path)
    for name, child in node.get("properties", {}).items():
        yield from bounded(child, (*path, name))
    if "items" in node:
        yield from bounded(node["items"], (*path, 0))
    if any(keyword in node for keyword in (*RANGE, "minItems", "maxItems", "minLength")):
        yield path, node


def just_past(node: dict[str, Any], current: Any) -> Iterator[tuple[str, Any]]:
    """(bound, a value just outside it) for each bound of ``node``; ``current`` is the valid value."""
    step = {"integer": 1}.get(node.get("type"), 0)
    below = (lambda b: b - 1) if step else (lambda b: math.nextafter(b, -math.inf))
    above = (lambda b: b + 1) if step else (lambda b: math.nextafter(b, math.inf))
    if "minimum" in node:
        yield f">={node['minimum']}", below(node["minimum"])
    if "exclusiveMinimum" in node:
        yield f">{node['exclusiveMinimum']}", node["exclusiveMinimum"]
    if "maximum" in node:
        yield f"<={node['maximum']}", above(node["maximum"])
    if "exclusiveMaximum" in node:
        yield f"<{node['exclusiveMaximum']}", node["exclusiveMaximum"]
    items = current if isinstance(current, list) else []
    if node.get("minItems"):
        yield f"minItems {node['minItems']}", items[: node["minItems"] - 1]
    if "maxItems" in node:
        yield f"maxItems {node['maxItems']}", (items or [None])[:1] * (node["maxItems"] + 1)
    if node.get("minLength"):
        yield f"minLength {node['minLength']}", ""


def dotted(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".")


def get(document: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        if document is None:
            return None  # inside an optional list that params.yaml leaves null
        document = document[part]
    return document


def put(document: Any, path: tuple[str | int, ...], value: Any) -> None:
    *parents, leaf = path
    for part in parents:
        document = document[part]
    document[leaf] = value


def cases() -> Iterator[Any]:
    """(where to write, what, the key the error must name) for each bound of each value."""
    document = repo_params()
    for path, node in bounded(COMMITTED):
        for bound, value in just_past(node, get(document, path)):
            where, what = path, value
            if isinstance(path[-1], int) and get(document, path[:-1]) is None:
                where, what = path[:-1], [value]  # a null optional list: one item to bound
            yield pytest.param(where, what, dotted(path), id=f"{dotted(path)} {bound}")


@pytest.mark.parametrize(("where", "value", "key"), list(cases()))
def test_a_value_just_past_any_bound_is_refused_in_one_line_naming_the_key(
    where: tuple[str | int, ...], value: Any, key: str
) -> None:
    document = repo_params()
    put(document, where, value)
    section = where[0]
    with pytest.raises(ParamError) as caught:
        from_mapping(SECTIONS[section], document[section], section)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"params.yaml: {key} must "), message


def test_the_bounds_test_covers_the_fields_issue_9_named() -> None:
    # A guard on the walk itself: it must reach nested, listed and optional values.
    ids = {case.id for case in cases()}
    expected = {
        "train.model.dropout <1",
        "train.model.widths[0] >=1",
        "train.model.widths maxItems 8",
        "ingest.image_size >=1",
        "ingest.image_size[0] <=4096",
        "evaluate.baseline.gamma >0",
        "train.early_stopping.patience >=1",
        "ingest.classes minItems 2",
        "ingest.classes[0] minLength 1",
        "augment.transforms.affine.scale[0] >0",
    }
    assert expected <= ids, expected - ids


@pytest.mark.parametrize(
    ("dotted_key", "value"),
    [("train.lr", "0.003"), ("train.epochs", 2.5), ("augment.include_real", 1), ("ingest.seeed", 1)],
)
def test_the_schema_refuses_what_the_stages_refuse(tmp_path: Path, dotted_key: str, value: Any) -> None:
    document = repo_params()
    section, *rest = dotted_key.split(".")
    put(document, (section, *rest), value)
    assert not jsonschema.Draft202012Validator(COMMITTED).is_valid(document)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(document))
    with pytest.raises(ParamError, match=rf"^{params}: {dotted_key} "):
        load_section(SECTIONS[section], section, params)


def test_pre_commit_hook_checks_params_yaml_offline(tmp_path: Path) -> None:
    """The hook as .pre-commit-config.yaml declares it, in a repo of its own with no network use."""
    config = yaml.safe_load((REPO_ROOT / ".pre-commit-config.yaml").read_text())
    (hook,) = [h for repo in config["repos"] for h in repo["hooks"] if h["id"] == "params-schema"]
    only_this_hook = {"repos": [{"repo": "local", "hooks": [hook]}]}  # the others clone from GitHub
    (tmp_path / ".pre-commit-config.yaml").write_text(yaml.safe_dump(only_this_hook))
    for name in ("params.yaml", SCHEMA_FILE):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    env = {**os.environ, **GIT_ENV, "PRE_COMMIT_HOME": str(tmp_path / ".pre-commit-home")}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=env)
    subprocess.run(["git", "add", "."], cwd=tmp_path, check=True, env=env)
    pre_commit = [str(Path(sys.executable).parent / "pre-commit"), "run", "params-schema", "--all-files"]

    def run_hook() -> subprocess.CompletedProcess[str]:
        return subprocess.run(pre_commit, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    passed = run_hook()
    assert passed.returncode == 0, passed.stdout + passed.stderr
    text = (tmp_path / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text.replace("dropout: 0.25", "dropout: 1.5"))
    failed = run_hook()
    assert failed.returncode == 1 and "$.train.model.dropout" in failed.stdout, failed.stdout + failed.stderr
