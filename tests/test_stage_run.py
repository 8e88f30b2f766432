"""What a stage's user sees when the machine refuses: one line and exit 2, never a traceback,
and no half-written output."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, repo_params
from imagedata import make_folder

from mlpipeline.core import stage, workers
from mlpipeline.core.workers import ordered_map
from mlpipeline.stages import ingest


def error_line(body, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        stage.run("ingest", body)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_full_disk_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Ingest's scratch fills the disk: one line, and neither output nor scratch left behind."""
    make_folder(tmp_path / "raw", {"a": 8, "b": 6})
    params = repo_params()
    params["ingest"]["source"] = "raw"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLPIPELINE_WORKERS", "1")
    written, real_pwrite = [], os.pwrite

    def pwrite(fd: int, data, offset: int) -> int:
        written.append(offset)
        if len(written) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(workers.os, "pwrite", pwrite)
    assert error_line(ingest.main, capsys) == "ingest: error: No space left on device"
    assert not (tmp_path / "data" / "ingested").exists()
    assert [p.name for p in (tmp_path / "data").iterdir()] == []  # the scratch's files had no names


def test_a_refusal_names_the_file(capsys) -> None:
    def body() -> None:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), "data/ingested")

    assert error_line(body, capsys) == "ingest: error: data/ingested: Permission denied"


def test_a_worker_killed_under_the_stage_is_one_line(capsys) -> None:
    def body() -> None:
        list(ordered_map(os._exit, [9] * 8, 2))  # as the OOM killer would

    assert error_line(body, capsys).startswith("ingest: error: a worker process died")


def test_any_other_os_error_keeps_its_traceback() -> None:
    """An error the user cannot cause is a bug, and its traceback is how it gets fixed."""

    def body() -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "src/missing.py")

    with pytest.raises(FileNotFoundError):
        stage.run("ingest", body)


# A stage whose body logs, prints to stderr and fails in one line; run by a shell with stderr closed.
CLOSED_STDERR_STAGE = """
import logging, os, sys
{before}
from mlpipeline.core import stage
from mlpipeline.core.errors import PipelineError

def body():
    logging.getLogger("x").info("a log line")
    print("a line", file=sys.stderr)
    raise PipelineError("one line")

stage.run("x", body)
"""


@pytest.mark.parametrize(
    "before",
    ["", "os.open(os.devnull, os.O_RDONLY)"],
    ids=["descriptor 2 free", "descriptor 2 taken by a read-only file"],
)
def test_a_stage_with_stderr_closed_exits_as_with_it_open(tmp_path: Path, before: str) -> None:
    # onnxruntime opens /dev/null read-only when imported, and gets descriptor 2 if it is free:
    # the export stage with `2>&-` wrote its lines there and exited 120 (a failed flush at exit).
    code = CLOSED_STDERR_STAGE.format(before=before)
    done = subprocess.run(["sh", "-c", '"$@" 2>&-', "sh", sys.executable, "-c", code], capture_output=True)
    assert (done.returncode, done.stdout) == (2, b"")


CLOSED_STDERR_BODY = """
import os, sys
from mlpipeline.core import progress, stage
from mlpipeline.core.errors import PipelineError

def body():
    with open("out.txt", "w") as out:
        os.write(2, b"a warning from C code\\n")  # as torch's and gloo's C++ write theirs
        with progress.progress("ingest", "decoding", 3) as shown:
            shown.advance(3)
        out.write("the output")
    if sys.argv[1] == "fail":
        raise PipelineError("a bad param")

stage.run("ingest", body)
"""


@pytest.mark.parametrize("outcome", ["succeed", "fail"])
def test_stderr_closed_changes_nothing_but_what_is_seen(tmp_path: Path, outcome: str) -> None:
    """``2>&-``: progress once failed every stage (AttributeError on None.isatty), an error line went
    to stdout, and the first file opened took descriptor 2, where C code writes."""
    result = subprocess.run(
        ["sh", "-c", '"$0" "$@" 2>&-', sys.executable, "-c", CLOSED_STDERR_BODY, outcome],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "MLPIPELINE_PROGRESS_INTERVAL": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == (0 if outcome == "succeed" else 2)
    assert result.stdout == "" and result.stderr == ""
    assert (tmp_path / "out.txt").read_text() == "the output"
