"""``make report``: BASE against the workspace in a throwaway copy of the repository, with no remote.

The copy holds the committed results (metrics, training curves, confusion matrix and image plots
are small files git keeps); the workspace then changes a param and some results as a new run
would. Against the S3 remote, after a real GPU-style run: ``tests/test_pr_workflow.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import run, set_params
from dvcflow import commit_all, dvc
from PIL import Image

from mlpipeline.compare import report
from mlpipeline.compare.markdown import not_found_line

pytestmark = pytest.mark.slow  # DVC reads two revisions

CACHED_PLOT = "reports/augment/samples.png"  # the one plot in the DVC cache, not in git
LOSS = Path("reports/train/plots/metrics/train/loss.tsv")


def without_remote(repo: Path) -> Path:
    dvc(repo, "remote", "remove", "storage")
    commit_all(repo, "no remote")
    return repo


def set_test_accuracy(repo: Path, accuracy: float) -> None:
    metrics_path = repo / "reports/evaluate/metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["test"]["accuracy"] = accuracy
    metrics_path.write_text(json.dumps(metrics))


def change_results(repo: Path) -> None:
    """The workspace after a run with a doubled learning rate: new params, metrics and curves
    (BASE's test accuracy is pinned to 1 first, so the expected row does not follow the demo's)."""
    set_test_accuracy(repo, 1.0)
    commit_all(repo, "BASE scores 1")
    set_params(repo, {"train.lr": 2 * learning_rate(repo)})
    set_test_accuracy(repo, 0.5)
    header, *rows = (repo / LOSS).read_text().splitlines()
    (repo / LOSS).write_text("\n".join([header, *(row.rsplit("\t", 1)[0] + "\t9.5" for row in rows)]) + "\n")


def learning_rate(repo: Path) -> float:
    return yaml.safe_load((repo / "params.yaml").read_text())["train"]["lr"]


def linked_files(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def make_report(repo: Path, base: str, check: bool = True):
    return run(["python", "-m", "mlpipeline.compare.report", "--base", base], repo, check=check)


def test_report_shows_what_changed_with_every_plot_as_a_png(pipeline_repo: Path, monkeypatch) -> None:
    repo = without_remote(pipeline_repo)
    lr = learning_rate(repo)
    change_results(repo)
    monkeypatch.chdir(repo)
    out = repo / report.OUTPUT
    comparison = report.write_report(repo, "main", out)
    markdown = (out / report.REPORT).read_text()

    assert re.search(rf"\| train\.lr +\| {lr:g} +\| {2 * lr:g} +\|", markdown), markdown
    assert re.search(r"\| test\.accuracy +\| 1 +\| 0\.5 +\| -0\.5 +\|", markdown), markdown
    assert "| baseline.accuracy" in markdown and "| transfer.accuracy" in markdown
    links = linked_files(markdown)
    for plot in (LOSS, "reports/train/plots/metrics/val/acc.tsv", "reports/evaluate/predictions.csv"):
        assert f"{report.slug(str(plot))}.png" in links
    for rev in ("main", "workspace"):
        for plot in ("reports/evaluate/misclassified.png", "reports/synthesize/samples.png"):
            assert f"{rev}_{plot.replace('/', '_')}" in links
    for link in links:
        with Image.open(out / link) as image:
            assert image.format == "PNG" and min(image.size) > 0, link
    losses = {(p["rev"], p["loss"]) for p in comparison.charts[str(LOSS)]["data"]["values"]}
    assert {loss for rev, loss in losses if rev == "workspace"} == {"9.5"}
    assert {rev for rev, loss in losses if loss != "9.5"} == {"main"}
    # the cached plot is in no cache here and there is no remote: said in one line, per revision
    line = not_found_line(comparison)
    assert f"at `main`: {CACHED_PLOT}" in line and f"at `workspace`: {CACHED_PLOT}" in line
    assert f"> **{line}**" in markdown
    assert "## Data\n\nNot compared: cannot read data/ingested (" in markdown  # in no cache either


def test_a_base_that_never_ran_the_pipeline_is_named_in_one_line(pipeline_repo: Path) -> None:
    repo = without_remote(pipeline_repo)
    run(["git", "checkout", "-q", "-b", "before-results"], repo)
    run(["git", "rm", "-q", "-r", "reports", "dvc.lock"], repo)
    commit_all(repo, "the pipeline as it was before anyone ran it")
    run(["git", "checkout", "-q", "main"], repo)

    result = make_report(repo, "before-results")
    markdown = (repo / report.OUTPUT / report.REPORT).read_text()
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("report: ")]
    assert line.startswith(
        "report: Not found at `before-results`: no metrics at all (did the pipeline ever run there?)"
    )
    assert line.removeprefix("report: ") in markdown
    assert "workspace_reports_evaluate_misclassified.png" in linked_files(markdown)


def test_an_unknown_base_is_one_error_line_and_no_report(pipeline_repo: Path) -> None:
    result = make_report(pipeline_repo, "no-such-branch", check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "report: error: BASE 'no-such-branch' is not a git revision of this repository (git fetch it first?)"
    ]
    assert not (pipeline_repo / report.OUTPUT).exists()
