"""Atomic writes: the target holds the old content or the new, never a part, and no temp file stays."""

from __future__ import annotations

import json
import subprocess
import sys
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


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped), so nothing runs under it."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def leftover(parent: Path, name: str, pid: int) -> Path:
    """A temporary as a killed stage leaves it: the aside folder with a partial shard."""
    aside = parent / f".{name}.tmp-{atomic.HOST}-{pid}"
    aside.mkdir(parents=True)
    (aside / "train-00000.safetensors").write_bytes(b"partial")
    return aside


def test_next_run_removes_temporaries_of_dead_processes(tmp_path: Path) -> None:
    stale_dir = leftover(tmp_path, "out", dead_pid())
    stale_file = tmp_path / f".model.json.tmp-{atomic.HOST}-{dead_pid()}"
    stale_file.write_text("half")
    old_style = tmp_path / f".out.tmp-{dead_pid()}"  # named before the host was part of the name
    old_style.mkdir()
    with atomic.directory(tmp_path / "out") as aside:
        (aside / "x").write_text("1")
    atomic.write_text(tmp_path / "model.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "out"]
    assert not stale_dir.exists() and not stale_file.exists() and not old_style.exists()


def test_temporaries_of_live_processes_and_other_hosts_are_kept(tmp_path: Path) -> None:
    """A concurrent run (alive here, or on another machine sharing the folder) keeps its temporary."""
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as sleeper:
        try:
            live = leftover(tmp_path, "out", sleeper.pid)
            elsewhere = tmp_path / f".out.tmp-other-host-{dead_pid()}"
            elsewhere.mkdir()
            unrelated = tmp_path / f".outer.tmp-{atomic.HOST}-{dead_pid()}"
            unrelated.mkdir()
            with atomic.directory(tmp_path / "out") as aside:
                (aside / "x").write_text("1")
            assert live.exists() and elsewhere.exists() and unrelated.exists()
        finally:
            sleeper.kill()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_json_is_strict_a_non_finite_value_is_refused_by_key(tmp_path: Path, value: float) -> None:
    """Python's json writes a bare NaN/Infinity, which strict readers (and the JSON spec) refuse."""
    target = tmp_path / "metrics.json"
    with pytest.raises(ValueError, match=r"^.*metrics\.json: test\.per_class\.1\.f1 is (nan|inf|-inf)"):
        atomic.write_json(target, {"test": {"accuracy": 0.5, "per_class": [{"f1": 1.0}, {"f1": value}]}})
    assert list(tmp_path.iterdir()) == []


def test_a_stream_appears_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "rows.csv"
    with atomic.stream(target) as handle:
        handle.write(b"a\n")
        assert not target.exists()
        handle.write(b"b\n")
    assert target.read_bytes() == b"a\nb\n"
    with pytest.raises(RuntimeError), atomic.stream(target) as handle:
        handle.write(b"half")
        raise RuntimeError("failed midway")
    assert target.read_bytes() == b"a\nb\n" and sorted(tmp_path.iterdir()) == [target]
