"""What keeps every DVC command of the project cheap (``bench/noop_repro.py`` measures it)."""

from __future__ import annotations

import platform

import pytest
from ruamel.yaml import YAML


@pytest.mark.skipif(platform.python_implementation() != "CPython", reason="a C extension")
def test_dvc_parses_yaml_with_the_c_parser() -> None:
    # DVC parses dvc.yaml, dvc.lock and params.yaml with YAML(typ="safe") on every command;
    # since ruamel.yaml 0.19.1 the C parser comes only from pyproject.toml's ruamel.yaml.clib.
    assert YAML(typ="safe").Parser.__name__ == "CParser"
