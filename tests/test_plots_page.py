"""The offline plots page: ``dvc plots show`` output drawn by a real headless Chromium with no network.

DVC's default page loads its Vega scripts from a CDN, so offline every chart stays blank (no
canvas at all; the images still show). The page ``.dvc/config`` names carries them inline; these
tests check it is the one DVC uses, that it holds the pinned versions and loads nothing from
outside, that every chart is drawn, and that ``make plots-page`` rebuilds it byte for byte.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import REPO_ROOT, run
from dvcflow import dvc

from mlpipeline.devtools import plots_page

VENDOR = REPO_ROOT / "vendor" / "vega"
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
# As the machine notes say Chromium needs here (root, no display, a closed network); the resolver
# rule makes every host unknown, so a page that loads anything from outside fails visibly.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--virtual-time-budget=20000",
]


def configured_page(repo: Path = REPO_ROOT) -> Path:
    """The page ``plots.html_template`` names (DVC resolves it against ``.dvc``)."""
    config = configparser.ConfigParser()
    config.read(repo / ".dvc" / "config")
    return repo / ".dvc" / config["plots"]["html_template"]


def locked_versions() -> dict[str, str]:
    packages = json.loads((VENDOR / "package-lock.json").read_text())["packages"]
    return {name: packages[f"node_modules/{name}"]["version"] for name in plots_page.BUNDLES}


def test_dvc_uses_the_page_and_it_carries_the_pinned_scripts_and_loads_nothing() -> None:
    page = configured_page().read_text()
    carried = re.findall(r'<script data-package="([^"@]+)@([^"]+)">', page)
    assert dict(carried) == locked_versions() and [name for name, _ in carried] == list(plots_page.BUNDLES)
    assert not re.search(r"<script[^>]*\bsrc=", page), "a script loaded from outside the page"
    assert "{plot_divs}" in page and "{scripts}" not in page  # DVC would put its CDN tags there


class DrawnElements(HTMLParser):
    """Canvases vega-embed drew (with their sizes) and images, in a page's rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.canvases: list[tuple[int, int]] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "canvas":
            self.canvases.append((int(values.get("width") or 0), int(values.get("height") or 0)))
        elif tag == "img":
            self.images.append(values.get("src") or "")


def rendered_dom(page: Path, profile: Path) -> str:
    """The DOM after the page's scripts ran, as headless Chromium dumps it."""
    command = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


def write_epoch_times(repo: Path) -> None:
    """The one curve git does not keep (wall time), written as a local training run would."""
    steps = (repo / "reports/train/plots/metrics/lr.tsv").read_text().splitlines()[1:]
    rows = [f"{line.split()[0]}\t0.5" for line in steps]
    times = repo / "reports/train/plots/metrics/epoch_seconds.tsv"
    times.write_text("step\tepoch_seconds\n" + "\n".join(rows))


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="no chromium: see `make browser`")
def test_every_plot_is_drawn_offline_in_a_real_browser(pipeline_repo: Path, tmp_path: Path) -> None:
    assert CHROMIUM, "no Chromium: `make browser` installs Debian's chromium"
    write_epoch_times(pipeline_repo)
    dvc(pipeline_repo, "plots", "show")
    index = pipeline_repo / "dvc_plots" / "index.html"
    charts = len(re.findall(r"vegaEmbed\('#", index.read_text()))
    drawn = DrawnElements()
    drawn.feed(rendered_dom(index, tmp_path / "profile"))

    assert charts >= 5  # the training curves and the confusion matrix
    assert len(drawn.canvases) == charts and all(w > 0 and h > 0 for w, h in drawn.canvases), drawn.canvases
    assert drawn.images and all((index.parent / src).is_file() for src in drawn.images), drawn.images


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("npm") is None, reason="no npm")
def test_make_plots_page_rebuilds_the_committed_page(tmp_path: Path) -> None:
    for name in ("package.json", "package-lock.json"):
        shutil.copy(VENDOR / name, tmp_path / name)
    run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], tmp_path)
    assert plots_page.build_page(tmp_path / "node_modules") == configured_page().read_text()
