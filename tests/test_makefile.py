"""`make help` lists every target the Makefile documents."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_every_documented_target() -> None:
    documented = re.findall(r"^([^\s:#]+):.*## ", (REPO / "Makefile").read_text(), flags=re.MULTILINE)
    shown = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True)
    assert [line.split()[0] for line in shown.stdout.splitlines()] == documented
    assert {"s3-up", "s3-down"} <= set(documented)


def make_in(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The repository's Makefile run in ``tmp_path`` (nothing of the checkout is touched), with this
    test run's venv taken as set up."""
    venv = Path(sys.prefix)
    command = ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "-o", str(venv / ".installed")]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [*command, *args, f"VENV={venv}"], cwd=tmp_path, capture_output=True, text=True, env=env
    )


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["release", "VERSION=1.0.0;touch INJECTED"], "release: error: VERSION=1.0.0;touch INJECTED: not a"),
        (
            ["release", "VERSION=1.0.0' && touch INJECTED && echo '"],
            "release: error: VERSION=1.0.0' && touch",
        ),
        (
            ["release", "VERSION=$(shell touch INJECTED)"],
            "release: error: VERSION=$(shell touch INJECTED): not",
        ),
        (["release"], "release: error: VERSION is missing: `make release VERSION=1.2.0`"),
        (["report", "BASE="], "report: error: BASE is empty: name the git revision"),
        (["report", "BASE=--help"], "report: error: BASE=--help: a git revision, not an option"),
        (["gc", "KEEP=--confirm"], "gc: error: KEEP=--confirm: --confirm is not a scope flag"),
        (["gc", "KEEP=-w --cloud", "CONFIRM=1"], "gc: error: KEEP=-w --cloud: --cloud is not a scope flag"),
        (["gc", "KEEP=-w; touch INJECTED"], "gc: error: KEEP=-w; touch INJECTED: argument -w"),
        (
            ["gc", "KEEP=--date yesterday"],
            "gc: error: KEEP=--date yesterday: argument --date: 'yesterday' is",
        ),
        (
            ["gc", "KEEP=--date 2026-13-45"],
            "gc: error: KEEP=--date 2026-13-45: argument --date: '2026-13-45'",
        ),
        (["gc", "KEEP=--rev 'unclosed"], "gc: error: KEEP=--rev 'unclosed: No closing quotation"),
    ],
)
def test_make_variables_reach_the_programs_as_typed_and_are_checked_there(
    tmp_path: Path, args: list[str], error: str
) -> None:
    """No shell reads what a user types into a make variable: one line naming it, exit 2, nothing run."""
    done = make_in(tmp_path, *args)
    assert done.returncode == 2, done
    *program, made = done.stderr.splitlines()
    assert program[-1].startswith(error) and made.startswith("make: ***"), done.stderr
    assert not (tmp_path / "INJECTED").exists()


def test_a_quote_in_base_stays_inside_the_revision(tmp_path: Path) -> None:
    done = make_in(tmp_path, "report", "BASE=main' ; touch INJECTED ; echo '")
    assert done.returncode == 2, done
    assert not (tmp_path / "INJECTED").exists()
    assert done.stderr.splitlines()[-2].startswith("report: error: "), done.stderr
