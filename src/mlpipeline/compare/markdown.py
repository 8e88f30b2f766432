"""The report as Markdown that a pull-request comment shows as is: tables, then linked PNGs.

Tables are DVC's own (``dvc.compare.diff_table``, as ``dvc metrics diff --md`` prints them), put
through tabulate's GitHub format; per-class rows go in a collapsed block so the headline figures
stay on one screen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from tabulate import tabulate

from mlpipeline.compare.collect import WORKSPACE, Comparison

PRECISION = 5  # dvc metrics diff's own default
HEADLINE_DEPTH = 2  # network.accuracy is a headline figure, network.per_class.3.f1 is not

Link = Callable[[str], str]  # an image file name -> the URL the Markdown uses


def report_markdown(
    comparison: Comparison, charts: dict[str, str], link: Link, sections: dict[str, str] | None = None
) -> str:
    """The whole report; ``charts`` maps each chart's name to its PNG file name, ``sections`` each
    further section's heading to its body (the data versions), shown after the metrics."""
    parts = [
        f"# Experiment report: `{comparison.base}` ({comparison.base_commit[:7]}) vs the workspace",
        f"> **{line}**" if (line := not_found_line(comparison)) else "",
        "## Params that differ",
        params_section(comparison),
        "## Metrics",
        *metrics_sections(comparison),
        *(part for heading, body in (sections or {}).items() for part in (f"## {heading}", body)),
        "## Plots",
        *(figure(name, link(file)) for name, file in charts.items()),
        *(image_pair(name, files, comparison.base, link) for name, files in comparison.images.items()),
    ]
    return "\n\n".join(part for part in parts if part) + "\n"


def not_found_line(comparison: Comparison) -> str:
    """One line naming what could not be read, per revision (empty when everything was there)."""
    where = [
        f"at `{rev}`: {listing(comparison, rev, items)}"
        for rev, items in sorted(comparison.missing.items())
        if items
    ]
    return f"Not found {'; '.join(where)}" if where else ""


def listing(comparison: Comparison, rev: str, items: list[str]) -> str:
    """The files, or for a BASE without a single metrics file, the likely reason instead."""
    lacking = [path for path in comparison.metrics if any(item.startswith(path) for item in items)]
    if rev == comparison.base and lacking and len(lacking) == len(comparison.metrics):
        return "no metrics at all (did the pipeline ever run there?)"
    return ", ".join(items)


def params_section(comparison: Comparison) -> str:
    if not any(comparison.params.values()):
        return "None: both use the same params."
    return table(comparison.params, "Param", comparison.base, show_changes=False, with_path=True)


def metrics_sections(comparison: Comparison) -> Iterable[str]:
    for path, rows in sorted(comparison.metrics.items()):
        headline = {k: v for k, v in rows.items() if k.count(".") < HEADLINE_DEPTH}
        detail = {k: v for k, v in rows.items() if k.count(".") >= HEADLINE_DEPTH}
        yield f"### `{path}`"
        if headline:
            yield table({path: headline}, "Metric", comparison.base)
        if detail:
            yield details(f"{len(detail)} more metrics", table({path: detail}, "Metric", comparison.base))


def table(
    diff: dict[str, dict[str, Any]], title: str, base: str, show_changes: bool = True, with_path: bool = False
) -> str:
    """DVC's diff table (old, new and change columns) in GitHub's Markdown."""
    from dvc.compare import diff_table

    rows = diff_table(
        diff, title, no_path=not with_path, show_changes=show_changes, precision=PRECISION, a_rev=base
    )
    return tabulate(list(rows), headers=rows.keys(), tablefmt="github", disable_numparse=True)


def details(summary: str, body: str) -> str:
    return f"<details><summary>{summary}</summary>\n\n{body}\n\n</details>"


def figure(name: str, url: str) -> str:
    return f"### {name}\n\n![{name}]({url})"


def image_pair(name: str, files: dict[str, Any], base: str, link: Link) -> str:
    """An image plot of both revisions side by side (one column where only one has it)."""
    revs = [rev for rev in (base, WORKSPACE) if rev in files]
    cells = [f"![{name} at {rev}]({link(files[rev].name)})" for rev in revs]
    return f"### {name}\n\n" + tabulate([cells], headers=revs, tablefmt="github")
