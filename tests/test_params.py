"""Params validation: every refusal is one line that names the dotted key and what is allowed."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import pytest
import yaml
from conftest import REPO_ROOT
from pydantic import Field, model_validator

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import ParamError, from_mapping, load_section, param, params_dataclass
from mlpipeline.stages.ingest import IngestParams


@params_dataclass
class Schedule:
    rate: float = param(gt=0, le=1)
    warmup: int = param(ge=0)


@params_dataclass
class Section:
    name: str
    count: int = param(ge=1, le=100)
    verbose: bool
    mode: Literal["fast", "exact"]
    size: list[Annotated[int, Field(ge=1)]] = param(min_len=2, max_len=2)
    tags: list[str] | None
    schedule: Schedule
    extras: dict[str, dict[str, Any]]  # free-form mappings under named keys, as train.model.hf

    @model_validator(mode="after")
    def check(self) -> Self:
        if self.mode == "fast" and self.count > 10:
            raise ValueError("count must be <= 10 when mode is 'fast'")
        return self


VALID: dict[str, Any] = {
    "name": "demo",
    "count": 3,
    "verbose": False,
    "mode": "exact",
    "size": [8, 8],
    "tags": None,
    "schedule": {"rate": 0.5, "warmup": 0},
    "extras": {"a": {"x": 1}},
}


def with_value(dotted: str, value: Any) -> dict[str, Any]:
    """A copy of VALID with ``dotted`` (relative to the section) set to ``value``."""
    values = yaml.safe_load(yaml.safe_dump(VALID))
    *parents, leaf = dotted.split(".")
    node = values
    for key in parents:
        node = node[key]
    node[leaf] = value
    return values


def refusal(values: Any) -> ParamError:
    with pytest.raises(ParamError) as caught:
        from_mapping(Section, values, "sec")
    message = str(caught.value)
    assert "\n" not in message
    return caught.value


def test_valid_section_is_built_with_nested_dataclass() -> None:
    section = from_mapping(Section, VALID, "sec")
    assert section.size == [8, 8]
    assert section.schedule == Schedule(rate=0.5, warmup=0)


def test_integer_is_accepted_where_a_number_is_expected() -> None:
    section = from_mapping(Section, with_value("schedule.rate", 1), "sec")
    assert isinstance(section.schedule.rate, float)


def test_unknown_key_is_named_with_the_allowed_ones() -> None:
    error = refusal({**VALID, "cuont": 3})
    assert error.key == "sec.cuont"
    assert "is not a known param" in str(error) and "count" in str(error)


def test_missing_key() -> None:
    values = dict(VALID)
    del values["count"]
    error = refusal(values)
    assert error.key == "sec.count"
    assert "is missing (expected an integer >= 1 and <= 100)" in str(error)


@pytest.mark.parametrize(
    ("dotted", "value", "key", "expected"),
    [
        ("count", "3", "sec.count", "must be an integer >= 1 and <= 100, got '3'"),
        ("count", 2.5, "sec.count", "must be an integer >= 1 and <= 100, got 2.5"),
        ("count", 3.0, "sec.count", "must be an integer >= 1 and <= 100, got 3.0"),
        ("count", True, "sec.count", "must be an integer >= 1 and <= 100, got True"),
        ("verbose", 1, "sec.verbose", "must be true or false, got 1"),
        ("name", "", "sec.name", "must be a non-empty string, got ''"),
        ("name", 7, "sec.name", "must be a non-empty string, got 7"),
        ("count", 0, "sec.count", "must be >= 1 and <= 100, got 0"),
        ("count", 101, "sec.count", "must be >= 1 and <= 100, got 101"),
        ("schedule.rate", 0, "sec.schedule.rate", "must be > 0 and <= 1, got 0"),
        ("schedule.rate", "0.5", "sec.schedule.rate", "must be a number > 0 and <= 1, got '0.5'"),
        ("schedule.rate", float("nan"), "sec.schedule.rate", "must be a number > 0 and <= 1, got nan"),
        ("schedule.rate", True, "sec.schedule.rate", "must be a number > 0 and <= 1, got True"),
        ("mode", "quick", "sec.mode", "must be one of 'fast', 'exact', got 'quick'"),
        ("size", [8], "sec.size", "must have 2 item(s), got 1"),
        ("size", [8, 8, 8], "sec.size", "must have 2 item(s), got 3"),
        ("size", 8, "sec.size", "must be a list of 2 item(s), each an integer >= 1, got 8"),
        ("size", [8, 0], "sec.size[1]", "must be >= 1, got 0"),
        ("tags", "a", "sec.tags", "must be a list, each a non-empty string or null, got 'a'"),
        ("tags", ["a", 3], "sec.tags[1]", "must be a non-empty string, got 3"),
        ("schedule", 3, "sec.schedule", "must be a mapping, got 3"),
        ("schedule.warmup", -1, "sec.schedule.warmup", "must be >= 0, got -1"),
        ("schedule.extra", 1, "sec.schedule.extra", "is not a known param (allowed: rate, warmup)"),
        ("extras.a", 5, "sec.extras.a", "must be a mapping, got 5"),
        ("extras", [1], "sec.extras", "must be a mapping, got a list"),
    ],
)
def test_bad_value_names_its_dotted_key(dotted: str, value: Any, key: str, expected: str) -> None:
    error = refusal(with_value(dotted, value))
    assert error.key == key
    assert str(error) == f"params.yaml: {key} {expected}"


def test_optional_list_takes_a_list() -> None:
    assert from_mapping(Section, with_value("tags", ["a", "b"]), "sec").tags == ["a", "b"]


def test_cross_field_rule_names_the_section() -> None:
    error = refusal({**VALID, "mode": "fast", "count": 11})
    assert str(error) == "params.yaml: sec count must be <= 10 when mode is 'fast'"


def test_section_must_be_a_mapping() -> None:
    assert refusal([1, 2]).key == "sec"


def write_params(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_load_section_reads_one_section(tmp_path: Path) -> None:
    path = write_params(tmp_path, yaml.safe_dump({"sec": VALID, "other": {"anything": 1}}))
    assert load_section(Section, "sec", path) == from_mapping(Section, VALID, "sec")


def test_load_section_errors_name_the_file(tmp_path: Path) -> None:
    path = write_params(tmp_path, yaml.safe_dump({"sec": {**VALID, "count": 0}}))
    with pytest.raises(ParamError, match=rf"^{path}: sec.count must be"):
        load_section(Section, "sec", path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "params file not found"),
        ("sec: [unclosed\n", "not valid YAML at line 2"),
        ("other: {}\n", "missing section 'sec'"),
        ("just a string\n", "holds a string, not a mapping of sections"),
        ("- sec\n- other\n", "holds a list, not a mapping of sections"),
        ("sec: {count: 1}\nsec: {count: 2}\n", "key 'sec' appears twice (line 2)"),
        ("sec:\n  count: 1\n  count: 2\n", "key 'count' appears twice (line 3)"),
    ],
)
def test_load_section_file_problems(tmp_path: Path, text: str | None, expected: str) -> None:
    path = tmp_path / "params.yaml" if text is None else write_params(tmp_path, text)
    with pytest.raises(PipelineError) as caught:
        load_section(Section, "sec", path)
    assert str(caught.value).startswith(f"{path}: ")
    assert expected in str(caught.value) and "\n" not in str(caught.value)


@params_dataclass
class Spelled:
    lr: float
    convert: bool | str
    count: int


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lr: 1e-3\nconvert: true\ncount: 017\n", Spelled(0.001, True, 17)),  # YAML 1.2: a float, decimal
        ("lr: 1.0e-3\nconvert: yes\ncount: 1\n", Spelled(0.001, "yes", 1)),  # `yes` is a string
        ("lr: .5\nconvert: 'on'\ncount: 0x10\n", Spelled(0.5, "on", 16)),
    ],
)
def test_params_are_read_as_dvc_reads_them(tmp_path: Path, text: str, expected: Spelled) -> None:
    """YAML 1.2, through DVC's own loader: the value a stage gets is the one `dvc params diff` shows."""
    from dvc.utils.serialize import parse_yaml

    path = write_params(tmp_path, "sec:\n" + "".join(f"  {line}\n" for line in text.splitlines()))
    assert load_section(Spelled, "sec", path) == expected
    seen = parse_yaml(path.read_text(), str(path))["sec"]
    assert (seen["lr"], seen["convert"], seen["count"]) == dataclasses.astuple(expected)


def test_repository_ingest_params_are_valid() -> None:
    params = load_section(IngestParams, "ingest", REPO_ROOT / "params.yaml")
    assert params.split.train + params.split.val + params.split.test == pytest.approx(1)


@pytest.mark.parametrize(
    ("dotted", "value", "expected"),
    [
        ("split", {"train": 0.8, "val": 0.15, "test": 0.15}, "ingest.split fractions must sum to 1, got 1.1"),
        ("channels", 2, "ingest channels must be 1 (grayscale) or 3 (RGB)"),
        ("classes", ["a", "b", "a"], "ingest classes lists a class twice"),
        ("classes", ["a"], "ingest.classes must have at least 2 item(s), got 1"),
        ("on_bad_file", "ignore", "ingest.on_bad_file must be one of 'fail', 'skip', got 'ignore'"),
        ("background", 256, "ingest.background must be >= 0 and <= 255, got 256"),
        ("image_size", [8, 0], "ingest.image_size[1] must be >= 1 and <= 4096, got 0"),
        ("resample", "cubic", "ingest.resample must be one of 'nearest', 'box', 'bilinear', 'bicubic', "),
    ],
)
def test_ingest_params_rules(tmp_path: Path, dotted: str, value: Any, expected: str) -> None:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["ingest"][dotted] = value
    path = write_params(tmp_path, yaml.safe_dump(params))
    with pytest.raises(ParamError) as caught:
        load_section(IngestParams, "ingest", path)
    assert str(caught.value).startswith(f"{path}: {expected}")


def test_a_yaml_value_json_has_no_type_for_is_refused_in_one_line() -> None:
    error = refusal(with_value("name", "x") | {"name": datetime.date(2024, 1, 2)})
    assert str(error) == (
        "params.yaml: sec holds datetime.date(2024, 1, 2): not a number, string, true/false, list or mapping"
    )


SQUARE_OR_PAIR = "an integer >= 1 and <= 4096 or a list of 2 item(s), each an integer >= 1 and <= 4096"


@pytest.mark.parametrize(("value", "size"), [(28, [28, 28]), ([28, 32], [28, 32])])
def test_image_size_takes_one_side_of_a_square_or_height_and_width(value: Any, size: list[int]) -> None:
    section = {**yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["ingest"], "image_size": value}
    assert from_mapping(IngestParams, section, "ingest").image_size == size


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "ingest.image_size must be >= 1 and <= 4096, got 0"),
        (True, f"ingest.image_size must be {SQUARE_OR_PAIR}, got True"),
        ("28", f"ingest.image_size must be {SQUARE_OR_PAIR}, got '28'"),
        ([28], "ingest.image_size must have 2 item(s), got 1"),
        ([28, 4097], "ingest.image_size[1] must be >= 1 and <= 4096, got 4097"),
    ],
)
def test_image_size_refusals_name_the_key(value: Any, expected: str) -> None:
    section = {**yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["ingest"], "image_size": value}
    with pytest.raises(ParamError) as caught:
        from_mapping(IngestParams, section, "ingest")
    assert str(caught.value) == f"params.yaml: {expected}"
