"""``make report BASE=<rev>``: BASE against the workspace, as Markdown and PNGs in ``reports/compare``:
params, metrics (ingest's data counts among them), what changed in the data, both models on the
test images both data versions hold, and the plots.

    python -m mlpipeline.compare.report [--base main] [--out reports/compare] [--images-url URL]

``make report`` hands BASE and IMAGES_URL over in the environment (``MLPIPELINE_BASE``,
``MLPIPELINE_IMAGES_URL``), as typed: no shell reads them, and an empty BASE is refused rather
than read as HEAD.

Charts are the filled Vega-Lite specs of ``dvc plots diff``, drawn to PNG by vl-convert (Vega in
an embedded JavaScript engine: no browser, no network); image plots are the files DVC writes for
each revision. ``--images-url`` prefixes the image links, for a comment posted where the PNGs
are published elsewhere; by default they are relative to the report. The directory is replaced
whole, so no image of an earlier report lingers.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from mlpipeline.compare.collect import Comparison, add_base_argument, check_base, compare
from mlpipeline.compare.data_diff import data_section
from mlpipeline.compare.markdown import not_found_line, report_markdown
from mlpipeline.compare.shared_test import shared_section
from mlpipeline.core import atomic, stage
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.progress import counted, progress

if TYPE_CHECKING:
    from dvc.repo import Repo

OUTPUT = Path("reports/compare")
REPORT = "report.md"
SCALE = 2  # pixels per Vega unit: sharp on high-density screens, still small files


def write_report(repo_root: Path, base: str, out_dir: Path, images_url: str | None = None) -> Comparison:
    """Compare ``base`` with ``repo_root``'s workspace and write the report into ``out_dir``."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    with atomic.directory(out_dir) as tmp:
        try:
            with Repo(str(repo_root)) as repo:
                comparison = compare(repo, base, tmp)
                sections = data_sections(repo, base)
        except DvcException as exc:
            raise PipelineError(f"DVC could not compare {base!r} with the workspace: {exc}")
        # a chart of the test set's predictions grows with it: about 1 s per 100,000 rows
        with progress("report", "drawing charts", len(comparison.charts), "chart") as shown:
            charts = {
                name: draw_chart(spec, tmp, name) for name, spec in counted(comparison.charts.items(), shown)
            }
        markdown = report_markdown(comparison, charts, linker(images_url), sections)
        atomic.write_text(tmp / REPORT, markdown)
    return comparison


def data_sections(repo: Repo, base: str) -> dict[str, str]:
    """What changed in the data, and both models on the test images both data versions hold."""
    found = {}
    for heading, (body, unread) in (
        ("Data", data_section(repo, base)),
        ("Test images both versions share", shared_section(repo, base)),
    ):
        found[heading] = body or f"Not compared: cannot read {unread}."
    return found


def draw_chart(spec: dict, out_dir: Path, name: str) -> str:
    """Draw one Vega-Lite chart to ``<slug>.png`` in ``out_dir``; return the file name."""
    import vl_convert

    file = f"{slug(name)}.png"
    atomic.write_bytes(out_dir / file, vl_convert.vegalite_to_png(spec, scale=SCALE))
    return file


def slug(name: str) -> str:
    """``Loss (cross-entropy)`` -> ``loss-cross-entropy``: a file name that needs no quoting."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def linker(images_url: str | None):
    """File name -> link: relative to the report, or under ``images_url``."""
    prefix = f"{images_url.rstrip('/')}/" if images_url else ""
    return lambda file: prefix + quote(file)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mlpipeline.compare.report", description=__doc__.split("\n")[0]
    )
    add_base_argument(parser)
    parser.add_argument("--out", type=Path, default=OUTPUT, help=f"output directory (default: {OUTPUT})")
    parser.add_argument(
        "--images-url",
        default=os.environ.get("MLPIPELINE_IMAGES_URL") or None,
        help="URL the image links start with (default: $MLPIPELINE_IMAGES_URL, else relative)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    def body() -> None:
        logging.getLogger("dvc").setLevel(logging.ERROR)  # its "failed to load some plots": said below
        comparison = write_report(Path.cwd(), check_base(args.base), args.out, args.images_url)
        if line := not_found_line(comparison):
            print(f"report: {line}", file=sys.stderr)
        print(args.out / REPORT)

    stage.run("report", body)


if __name__ == "__main__":
    main()
