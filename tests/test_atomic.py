"""Atomic writes: the target holds the old content or the new, never a part, and no temp file stays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlpipeline.core import atomic


def test_write_bytes_creates_parents_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file.bin"
    atomic.write_bytes(target, b"first")
    atomic.write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_failed_write_keeps_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    atomic.write_text(target, "old")
    with pytest.raises(TypeError):
        atomic.write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_json_is_canonical(tmp_path: Path) -> None:
    atomic.write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2], "é": None})
    atomic.write_json(tmp_path / "b.json", {"é": None, "a": [1, 2], "b": 1})
    text = (tmp_path / "a.json").read_text(encoding="utf-8")
    assert text == (tmp_path / "b.json").read_text(encoding="utf-8")
    assert text.endswith("}\n") and "é" in text
    assert json.loads(text) == {"a": [1, 2], "b": 1, "é": None}


def test_directory_appears_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic.directory(target) as aside:
        (aside / "x").write_text("1")
        assert not target.exists()
    assert [p.name for p in target.iterdir()] == ["x"]
    with pytest.raises(RuntimeError), atomic.directory(target) as aside:
        (aside / "y").write_text("2")
        raise RuntimeError("crash")
    assert [p.name for p in target.iterdir()] == ["x"]
    with atomic.directory(target) as aside:
        (aside / "z").write_text("3")
    assert [p.name for p in target.iterdir()] == ["z"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
