"""Progress: a bar on a terminal, plain lines in a log, nothing when asked, never an output byte.

Each stage and cache tool runs as a user runs it, five ways: with ``MLPIPELINE_PROGRESS=0``
(the reference), through a pipe with the default interval (a short run prints no progress),
through a pipe with ``MLPIPELINE_PROGRESS_INTERVAL=0`` (plain lines, no carriage return), on a
fake terminal (a pty: bars, cleared before the summary line) and with stderr closed (``2>&-``).
Every way writes the same bytes and the same summary.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import GIT_ENV, REPO_ROOT, repo_params, run
from dvcflow import commit_all, dvc
from imagedata import make_folder
from tiny_training import tiny_section

from mlpipeline.core import progress
from mlpipeline.core.errors import PipelineError

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
SECONDS = re.compile(r"\d+\.\d+ s\b")  # elapsed times in summary and epoch lines
DVC_BAR = re.compile(r"!|\d+% .*\|.*\]")  # DVC's own bar, on a terminal only ('make report' reading plots)
STAGE_PHASES = {
    "ingest": ["ingest: listing and decoding", "ingest: writing shards"],
    "synthesize": ["synthesize: reading real train", "synthesize: rendering"],
    "augment": ["augment: augmenting"],
    "train": ["train: pretrain", "train: train"],
    "export": ["export: checking against PyTorch"],
    "evaluate": ["evaluate: reading the baseline's train images", "evaluate: predicting"],
}
OUTPUTS = {
    "ingest": ["data/ingested"],
    "synthesize": ["data/synthetic", "reports/synthesize"],
    "augment": ["data/augmented", "reports/augment"],
    "train": ["models", "reports/train"],
    "export": ["exported", "reports/export"],
    "evaluate": ["reports/evaluate"],
}


# -- the helper itself ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_wait_for_the_interval_and_a_tenth_of_the_work(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = Clock()
    lines = progress.Lines("ingest: decoding", 1000, "image", interval=10, clock=clock)
    for second in range(1, 70):  # slow for 50 s (a tenth takes 51 s), then fast (the interval holds)
        clock.now = second
        lines.advance(1 if second <= 50 else 50)
    lines.close()
    assert capsys.readouterr().err.splitlines() == [
        "ingest: decoding: 100/1000 images (10%) in 00:51, 2 images/s, 07:39 left",
        "ingest: decoding: 600/1000 images (60%) in 01:01, 10 images/s, 00:40 left",
        "ingest: decoding: 1000/1000 images (100%) in 01:09, 14 images/s",  # the end, when closed
    ]


def test_a_phase_within_the_interval_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    lines = progress.Lines("verify: hashing", None, "file", interval=10, clock=clock)
    for _ in range(90):
        clock.now += 0.1
        lines.advance()
    lines.close()
    assert capsys.readouterr().err == ""


def test_an_unknown_total_prints_count_and_rate(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    lines = progress.Lines("gc: listing", None, "object", interval=10, clock=clock)
    clock.now = 20
    lines.advance(400)
    assert capsys.readouterr().err == "gc: listing: 400 objects in 00:20, 20 objects/s\n"


def test_a_bar_names_its_unit_as_a_word(capsys: pytest.CaptureFixture[str]) -> None:
    bar = progress.Bar("ingest: listing and decoding", None, "image")
    bar.advance(12410)
    bar.bar.refresh()
    batches = progress.Bar("train: train", 40, "batch")
    batches.advance(4)
    batches.bar.refresh()
    err = capsys.readouterr().err
    assert "ingest: listing and decoding: 12410 images [" in err and " images/s]" in err
    assert re.search(r"\| 4/40 \[.* batches/s\]", err), err


@pytest.mark.parametrize(
    ("env", "kind"),
    [
        ({}, progress.Lines),
        ({"MLPIPELINE_PROGRESS": "1"}, progress.Lines),
        ({"MLPIPELINE_PROGRESS": "0"}, progress.Progress),
        ({"RANK": "1"}, progress.Progress),  # torchrun's other ranks
        ({"RANK": "0"}, progress.Lines),
    ],
)
def test_who_shows_progress(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], kind: type) -> None:
    for name in ("MLPIPELINE_PROGRESS", "RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert type(progress.start("train", "train", 10)) is kind


def test_stderr_closed_shows_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """``2>&-``: Python's sys.stderr is None; asking it whether it is a terminal failed every stage."""
    monkeypatch.delenv("MLPIPELINE_PROGRESS", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(sys, "stderr", None)
    assert type(progress.start("ingest", "decoding", 10)) is progress.Progress


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MLPIPELINE_PROGRESS", "off"),
        ("MLPIPELINE_PROGRESS_INTERVAL", "-1"),
        ("MLPIPELINE_PROGRESS_INTERVAL", "x"),
    ],
)
def test_bad_settings_are_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(PipelineError, match=f"^{name}='{value}': must be"):
        progress.start("ingest", "decoding", 10)


# -- every stage and tool, five ways -------------------------------------------------------------


@dataclass(frozen=True)
class Ran:
    stdout: str
    stderr: str
    outputs: dict[str, bytes]


def environment(**extra: str) -> dict[str, str]:
    """This checkout's code (not an installed copy), a git identity, and ``extra``."""
    env = {**os.environ, **GIT_ENV, "PYTHONPATH": str(REPO_ROOT / "src"), **extra}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for name in ("MLPIPELINE_PROGRESS", "MLPIPELINE_PROGRESS_INTERVAL", "RANK"):
        if name not in extra:
            env.pop(name, None)
    return env


def on_terminal(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[str, str]:
    """Run ``command`` with stderr on a pty 100 columns wide; its (stdout, stderr)."""
    main, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    stdout = cwd / ".stdout"
    with open(stdout, "w") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=secondary
        )
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: every process holding the terminal has closed it
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    assert process.wait(timeout=900) == 0, b"".join(chunks).decode()
    return stdout.read_text(), b"".join(chunks).decode()


def run_way(command: list[str], cwd: Path, outputs: list[str], way: str) -> Ran:
    if way == "terminal":
        stdout, stderr = on_terminal(command, cwd, environment())
    elif way == "closed":  # 2>&-: Python's sys.stderr is None
        result = run(["sh", "-c", '"$0" "$@" 2>&-', *command], cwd, env=environment())
        stdout, stderr = result.stdout, result.stderr
    else:
        extra = {
            "off": {"MLPIPELINE_PROGRESS": "0"},
            "log": {},
            "lines": {"MLPIPELINE_PROGRESS_INTERVAL": "0"},
        }
        result = run(command, cwd, env=environment(**extra[way]))
        stdout, stderr = result.stdout, result.stderr
    files = [p for out in outputs for p in sorted((cwd / out).rglob("*")) if p.is_file()]
    written = {str(p.relative_to(cwd)): p.read_bytes() for p in files if "epoch_seconds" not in p.name}
    return Ran(stdout, stderr, written)


def is_progress(line: str, phase: str) -> bool:
    """A bar or a plain line of ``phase`` (its label, maybe named further, a colon, a count), not
    a stage's own line that starts alike ('train: pretrain epoch 1/1: ...')."""
    return re.match(rf"{re.escape(phase)}[^:]*: +\d", line) is not None


def shown_lines(text: str, phases: list[str]) -> list[str]:
    """What a reader is left with: lines without timings, bars and progress lines."""
    lines = (SECONDS.sub("T s", line.strip()) for line in re.split(r"[\r\n]+", ANSI.sub("", text)))
    shown = (line for line in lines if line and not DVC_BAR.fullmatch(line))
    return [line for line in shown if not any(is_progress(line, phase) for phase in phases)]


def check_five_ways(command: list[str], cwd: Path, outputs: list[str], phases: list[str]) -> None:
    off, log, lines, terminal, closed = (
        run_way(command, cwd, outputs, way) for way in ("off", "log", "lines", "terminal", "closed")
    )
    assert bool(off.outputs) == bool(outputs) and log.outputs == off.outputs
    assert lines.outputs == off.outputs and terminal.outputs == off.outputs
    assert log.stdout == lines.stdout == terminal.stdout == off.stdout
    # stderr closed: the same outcome, the same bytes, nothing of stderr's on stdout
    assert closed.outputs == off.outputs and closed.stdout == off.stdout and closed.stderr == ""
    summary = shown_lines(off.stderr, [])
    assert not any(is_progress(line, phase) for phase in phases for line in summary)
    # a short run through a pipe: exactly what it prints with progress off
    assert shown_lines(log.stderr, []) == summary
    # an interval of 0 s: every phase prints plain lines, and nothing else changes
    assert "\r" not in lines.stderr
    printed = lines.stderr.splitlines()
    for phase in phases:
        assert any(is_progress(line, phase) for line in printed), (phase, lines.stderr)
    assert shown_lines(lines.stderr, phases) == summary
    # a terminal: a bar per phase, redrawn in place (a carriage return not ending a line), cleared
    # before the summary line, which stays the last one
    assert re.search("\r(?!\n)", terminal.stderr), terminal.stderr
    for phase in phases:
        assert any(is_progress(line, phase) for line in re.split(r"[\r\n]+", terminal.stderr))
    assert shown_lines(terminal.stderr, phases) == summary
    drawn = re.split(r"[\r\n]+", ANSI.sub("", terminal.stderr))
    last = [segment for segment in drawn if segment.strip()][-1] if summary else drawn[-1]
    assert shown_lines(last, []) == summary[-1:]


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory the stages run in: 90 small images of 3 classes and params scaled to them."""
    root = tmp_path_factory.mktemp("progress")
    make_folder(root / "raw", {"0": 30, "1": 30, "2": 30})
    params = repo_params()
    params["ingest"]["source"] = "raw"
    params["synthesize"]["count"] = 60
    params["augment"]["copies"] = 1
    params["train"] = tiny_section()
    params["evaluate"]["device"] = "cpu"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def stage_command(name: str) -> list[str]:
    return [sys.executable, "-m", f"mlpipeline.stages.{name}"]


def run_stages_before(name: str, root: Path) -> None:
    """The stages ``name`` reads from, run quietly where their outputs are missing: whatever order
    the test workers take the stages in, each finds its inputs."""
    for before in list(OUTPUTS)[: list(OUTPUTS).index(name)]:
        if not all((root / out).exists() for out in OUTPUTS[before]):
            run(stage_command(before), root, env=environment(MLPIPELINE_PROGRESS="0"))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STAGE_PHASES))
def test_each_stage_shows_progress_only_where_it_should(pipeline_dir: Path, name: str) -> None:
    run_stages_before(name, pipeline_dir)
    check_five_ways(stage_command(name), pipeline_dir, OUTPUTS[name], STAGE_PHASES[name])


@pytest.mark.slow
def test_online_augment_shows_progress_only_where_it_should(pipeline_dir: Path, tmp_path: Path) -> None:
    """Online mode copies the synthetic originals (training makes the copies, under its bar)."""
    run_stages_before("augment", pipeline_dir)
    online = tmp_path / "online"
    shutil.copytree(pipeline_dir, online, ignore=shutil.ignore_patterns("augmented", "augment"))
    params = yaml.safe_load((online / "params.yaml").read_text())
    params["augment"]["mode"] = "online"
    (online / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    check_five_ways(
        stage_command("augment"), online, OUTPUTS["augment"], ["augment: copying synthetic originals"]
    )


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DVC repo with a tracked file, committed, and an older version of it left in the cache."""
    repo = tmp_path_factory.mktemp("progress-cache")
    env = environment()
    run(["git", "init", "-q"], repo, env=env)
    run(["dvc", "init", "-q"], repo, env=env)
    for content in (b"old weights", b"new weights"):
        (repo / "weights.bin").write_bytes(content)
        run(["dvc", "add", "-q", "weights.bin"], repo, env=env)
    run(["git", "add", "-A"], repo, env=env)
    run(["git", "commit", "-q", "-m", "weights"], repo, env=env)
    return repo


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "phases"),
    [
        ("mlpipeline.cache.verify", ["verify: hashing"]),
        ("mlpipeline.cache.gc", ["gc: reading commits", "gc: listing local cache"]),
    ],
)
def test_cache_tools_show_progress_only_where_they_should(
    dvc_repo: Path, module: str, phases: list[str]
) -> None:
    check_five_ways([sys.executable, "-m", module], dvc_repo, [], phases)


@pytest.mark.slow
def test_make_report_shows_progress_only_where_it_should(pipeline_repo: Path) -> None:
    """The committed results against a workspace whose loss curve moved: every chart drawn."""
    dvc(pipeline_repo, "remote", "remove", "storage")
    commit_all(pipeline_repo, "no remote")
    loss = pipeline_repo / "reports/train/plots/metrics/train/loss.tsv"
    header, *rows = loss.read_text().splitlines()
    loss.write_text("\n".join([header, *(row.rsplit("\t", 1)[0] + "\t9.5" for row in rows)]) + "\n")
    command = [sys.executable, "-m", "mlpipeline.compare.report", "--base", "HEAD"]
    check_five_ways(command, pipeline_repo, ["reports/compare"], ["report: drawing charts"])
