"""`make help` lists every target the Makefile documents."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_every_documented_target() -> None:
    documented = re.findall(r"^([^\s:#]+):.*## ", (REPO / "Makefile").read_text(), flags=re.MULTILINE)
    shown = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True)
    assert [line.split()[0] for line in shown.stdout.splitlines()] == documented
    assert {"s3-up", "s3-down"} <= set(documented)
