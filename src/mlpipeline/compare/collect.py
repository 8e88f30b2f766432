"""What differs between BASE and the workspace, read through DVC's own diff machinery.

DVC reads each revision's params, metrics and plots from git and the DVC cache, and what the
cache lacks from the default remote (its data filesystem streams missing objects), so nothing
here parses a metrics or plots file or needs a separate ``dvc pull``. What DVC could not read
for a revision is kept, to be said in one line.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlpipeline.core.errors import PipelineError

if TYPE_CHECKING:
    from dvc.render.match import RendererWithErrors
    from dvc.repo import Repo

WORKSPACE = "workspace"


@dataclass(frozen=True)
class Comparison:
    """BASE against the workspace, in DVC's own shapes (diffs as ``{file: {key: {old, new, diff}}}``)."""

    base: str
    base_commit: str
    params: dict[str, dict[str, dict[str, Any]]]
    metrics: dict[str, dict[str, dict[str, Any]]]
    charts: dict[str, dict[str, Any]]  # plot name -> Vega-Lite spec with both revisions' data
    images: dict[str, dict[str, Path]]  # plot name -> revision -> the image file DVC wrote
    missing: dict[str, list[str]]  # revision -> what could not be read there, with why


def compare(repo: Repo, base: str, image_dir: Path) -> Comparison:
    """Diff ``base`` against the workspace; image plots are written into ``image_dir``."""
    base_commit = resolve(repo, base)
    params = repo.params.diff(a_rev=base, b_rev=WORKSPACE)
    metrics = repo.metrics.diff(a_rev=base, b_rev=WORKSPACE, all=True)
    plots = repo.plots.diff(revs=[base, WORKSPACE])
    renderers = plot_renderers(repo, plots, image_dir)
    missing: dict[str, set[str]] = defaultdict(set)
    for rev, per_rev in plots.items():
        if error := per_rev.get("definitions", {}).get("error"):
            missing[rev].add(described("the plot definitions", error))
    for result in (params, metrics):
        add_errors(missing, result.get("errors", {}))
    add_one_sided(missing, metrics.get("diff", {}), base)
    add_plot_errors(missing, renderers, [base, WORKSPACE])
    return Comparison(
        base=base,
        base_commit=base_commit,
        params=params.get("diff", {}),
        metrics=metrics.get("diff", {}),
        charts={r.renderer.name: r.renderer.get_filled_template() for r in renderers if is_chart(r)},
        images={r.renderer.name: image_files(r) for r in renderers if is_image(r)},
        missing={rev: sorted(found) for rev, found in missing.items()},
    )


def resolve(repo: Repo, base: str) -> str:
    """The commit ``base`` names, or one line saying it names none."""
    from scmrepo.exceptions import SCMError

    try:
        return repo.scm.resolve_rev(base)
    except SCMError:
        raise PipelineError(f"BASE {base!r} is not a git revision of this repository (git fetch it first?)")


def add_base_argument(parser: argparse.ArgumentParser) -> None:
    """``--base``, from ``MLPIPELINE_BASE`` as ``make`` hands BASE over (default: main)."""
    parser.add_argument(
        "--base",
        default=os.environ.get("MLPIPELINE_BASE", "main"),
        help="git revision to compare with (default: $MLPIPELINE_BASE, else main)",
    )


def check_base(base: str) -> str:
    """A revision git can only read as one: not empty (DVC would compare HEAD), not an option."""
    if not base.strip():
        raise PipelineError("BASE is empty: name the git revision to compare with (e.g. BASE=main)")
    if base.startswith("-"):
        raise PipelineError(f"BASE={base}: a git revision, not an option (e.g. BASE=main)")
    return base


def plot_renderers(repo: Repo, plots: dict[str, Any], image_dir: Path) -> list[RendererWithErrors]:
    """dvc-render's renderers for every plot, as ``dvc plots diff`` builds them."""
    from dvc.render.match import match_defs_renderers

    return match_defs_renderers(plots, out=str(image_dir), templates_dir=repo.plots.templates_dir)


def is_chart(result: RendererWithErrors) -> bool:
    return result.renderer.TYPE == "vega" and bool(result.renderer.datapoints)


def is_image(result: RendererWithErrors) -> bool:
    return result.renderer.TYPE == "image" and bool(result.renderer.datapoints)


def image_files(result: RendererWithErrors) -> dict[str, Path]:
    return {point["rev"]: Path(point["src"]) for point in result.renderer.datapoints}


def reason(error: BaseException) -> str:
    """One line: a missing file says nothing more; anything else (the remote, a parse error) says why."""
    if isinstance(error, FileNotFoundError):
        return ""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def described(path: str, error: BaseException) -> str:
    why = reason(error)
    return f"{path} ({why})" if why else path


def add_errors(missing: dict[str, set[str]], errors: dict[str, Any]) -> None:
    """DVC's ``errors`` of a params/metrics diff: per revision, one error or one per file."""
    for rev, error in errors.items():
        per_file = error if isinstance(error, dict) else {"params and metrics": error}
        missing[rev].update(described(path, exc) for path, exc in per_file.items())


def add_one_sided(missing: dict[str, set[str]], diff: dict[str, dict[str, Any]], base: str) -> None:
    """A metrics file with no value at all on one side was not there (DVC lists no error for it)."""
    for path, rows in diff.items():
        for rev, side in ((base, "old"), (WORKSPACE, "new")):
            if all(row.get(side) is None for row in rows.values()):
                missing[rev].add(path)


def add_plot_errors(
    missing: dict[str, set[str]], renderers: list[RendererWithErrors], revs: list[str]
) -> None:
    """Each plot's unreadable sources per revision, and plots a revision has no data for at all."""
    for result in renderers:
        for rev, sources in result.source_errors.items():
            missing[rev].update(described(path, exc) for path, exc in sources.items())
        for rev, error in result.definition_errors.items():
            missing[rev].add(described(result.renderer.name, error))
        drawn = {point.get("rev") for point in result.renderer.datapoints}
        for rev in revs:
            if rev not in drawn and not result.source_errors.get(rev) and rev not in result.definition_errors:
                missing[rev].add(result.renderer.name)
