"""The evaluate stage: its pure parts, the stage run as `python -m` (byte-deterministic), and
under `dvc repro` with the metrics and plots DVC reads."""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import repo_params, run, set_params
from PIL import Image
from tiny_model import CLASSES, write_tiny_dataset, write_tiny_model

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import from_mapping
from mlpipeline.core.shards import Dataset
from mlpipeline.evaluation.baseline import NAMES
from mlpipeline.evaluation.report import (
    WorstErrors,
    image_ids,
    message_png,
    misclassified_png,
    predictions_csv,
    worst_errors,
)
from mlpipeline.modeling.files import save_model
from mlpipeline.modeling.network import ModelConfig, build_model, channel_stats
from mlpipeline.stages.evaluate import EvaluateParams, evaluate

OUTPUTS = ("metrics.json", "predictions.csv", "misclassified.png")
SUMMARY = {"accuracy", "macro_f1", "log_loss", "ece", "per_class"}


def cpu_params() -> EvaluateParams:
    section = {**repo_params()["evaluate"], "device": "cpu"}
    return from_mapping(EvaluateParams, section, "evaluate")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory laid out as the stage expects: params.yaml, models/, data/ingested/."""
    params = repo_params()
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"evaluate": {**params["evaluate"], "device": "cpu"}})
    )
    write_tiny_dataset(tmp_path / "data" / "ingested")
    write_tiny_model(tmp_path / "models", steps=5)  # a third of the test images wrong
    return tmp_path


def test_evaluate_scores_network_and_baseline(workdir: Path) -> None:
    result = evaluate(cpu_params(), workdir / "models", workdir / "data" / "ingested")

    assert set(result.metrics) == {"test", "baseline"}
    assert set(result.metrics["test"]) == SUMMARY
    assert set(result.metrics["baseline"]) == SUMMARY | {"model"}
    assert result.metrics["baseline"]["model"] == "rbf_svm"  # the exact kernel, well within its budget
    for figures in result.metrics.values():
        assert list(figures["per_class"]) == CLASSES
        assert sum(row["support"] for row in figures["per_class"].values()) == 24
    assert result.metrics["baseline"]["accuracy"] > 0.9  # chance is 1/3
    table = pd.read_csv(io.StringIO(result.predictions_csv), dtype=str)
    assert list(table.columns) == ["actual", "predicted", "image"] and len(table) == 24
    right = (table["actual"] == table["predicted"]).mean()
    assert result.metrics["test"]["accuracy"] == pytest.approx(right, abs=1e-6) and right < 1.0
    assert Image.open(io.BytesIO(result.misclassified_png)).format == "PNG"
    assert result.misclassified_png != message_png("no misclassified test images")


def test_baseline_method_none_leaves_the_baseline_out_and_reads_no_train_image(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlpipeline.stages.evaluate as stage

    monkeypatch.setattr(stage, "pick_rows", lambda *_: pytest.fail("read the train split"))
    section = {**repo_params()["evaluate"], "device": "cpu"}
    section["baseline"] = {**section["baseline"], "method": "none"}
    params = from_mapping(EvaluateParams, section, "evaluate")
    result = evaluate(params, workdir / "models", workdir / "data" / "ingested")
    assert set(result.metrics) == {"test"} and set(result.metrics["test"]) == SUMMARY
    assert result.train_count == 0
    monkeypatch.undo()
    with_svm = evaluate(cpu_params(), workdir / "models", workdir / "data" / "ingested", workers=1)
    assert result.metrics["test"] == with_svm.metrics["test"]
    assert result.predictions_csv == with_svm.predictions_csv


@pytest.mark.parametrize("kernel", ["exact", "nystroem"])
def test_outputs_are_identical_for_one_and_two_workers(workdir: Path, kernel: str) -> None:
    write_tiny_dataset(workdir / "data" / "ingested", {"train": 12, "val": 4, "test": 300})
    section = {**repo_params()["evaluate"], "device": "cpu", "batch_size": 64}
    section["baseline"] = {**section["baseline"], "kernel": kernel, "components": 20}
    params = from_mapping(EvaluateParams, section, "evaluate")
    one, two = (evaluate(params, workdir / "models", workdir / "data" / "ingested", n) for n in (1, 2))
    assert one == two
    assert one.metrics["baseline"]["model"] == NAMES[kernel]
    assert one.test_count == 900 and one.metrics["test"]["accuracy"] < 1.0


def test_model_for_other_classes_is_refused(workdir: Path) -> None:
    other = ModelConfig(["a", "b", "c"], [1, 8, 8], widths=[4], dropout=0.0, mean=[0.5], std=[0.25])
    save_model(build_model(other), other, workdir / "models")
    with pytest.raises(
        PipelineError, match=r"models/model\.json and .*dataset\.json disagree on the classes"
    ):
        evaluate(cpu_params(), workdir / "models", workdir / "data" / "ingested")


def test_worst_errors_are_most_confident_first_then_by_index() -> None:
    labels = np.array([0, 0, 1, 1, 0])
    probabilities = np.array([[0.2, 0.8], [0.9, 0.1], [0.7, 0.3], [0.6, 0.4], [0.3, 0.7]])
    assert worst_errors(labels, probabilities, limit=10).tolist() == [0, 2, 4, 3]
    assert worst_errors(labels, probabilities, limit=2).tolist() == [0, 2]


def test_streamed_worst_errors_are_the_whole_splits_choice() -> None:
    generator = np.random.default_rng(5)
    labels = generator.integers(0, 3, 500)
    probabilities = generator.dirichlet(np.ones(3), 500).round(2)  # rounded: many ties on confidence
    images = generator.integers(0, 256, (500, 1, 4, 4), dtype=np.uint8)
    worst = WorstErrors(limit=20)
    for start in range(0, 500, 37):
        worst.add(images[start : start + 37], labels[start : start + 37], probabilities[start : start + 37])
    expected = worst_errors(labels, probabilities, limit=20)
    np.testing.assert_array_equal(worst.index, expected)
    np.testing.assert_array_equal(np.stack(worst.images), images[expected])
    np.testing.assert_array_equal(worst.predicted, probabilities[expected].argmax(axis=1))


def test_misclassified_png_says_so_when_nothing_is_wrong() -> None:
    labels = np.array([0, 1])
    worst = WorstErrors(limit=8)
    worst.add(np.zeros((2, 1, 8, 8), np.uint8), labels, np.eye(2)[labels])
    png = misclassified_png(worst, ["a", "b"])
    assert png == message_png("no misclassified test images")
    assert Image.open(io.BytesIO(png)).format == "PNG"


def test_predictions_csv_names_classes_and_images() -> None:
    text = predictions_csv(np.array([1, 0]), np.array([1, 1]), ["cat", "dog"], ["ab12", "cd34"])
    assert text == "actual,predicted,image\ndog,dog,ab12\ncat,dog,cd34\n"


def test_an_images_id_is_the_start_of_its_pixel_sha256_as_ingest_records_it() -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 5), dtype=np.uint8)
    assert image_ids(images) == [hashlib.sha256(image.tobytes()).hexdigest()[:16] for image in images]


@pytest.mark.slow
def test_stage_writes_reports_and_reruns_byte_identical(workdir: Path) -> None:
    command = [sys.executable, "-m", "mlpipeline.stages.evaluate"]
    run(command, workdir)
    reports = workdir / "reports" / "evaluate"
    first = {name: (reports / name).read_bytes() for name in OUTPUTS}
    metrics = json.loads(first["metrics.json"])
    assert set(metrics) == {"test", "baseline"} and set(metrics["test"]) == SUMMARY

    run(command, workdir)
    assert {name: (reports / name).read_bytes() for name in OUTPUTS} == first


def test_stage_error_is_one_line_naming_the_param(workdir: Path) -> None:
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["evaluate"]["baseline"]["C"] = 0
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    result = run([sys.executable, "-m", "mlpipeline.stages.evaluate"], workdir, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "evaluate: error: params.yaml: evaluate.baseline.C must be > 0, got 0"
    )
    assert not (workdir / "reports").exists()


@pytest.mark.slow
def test_dvc_repro_evaluate_declares_metrics_and_plots(pipeline_repo: Path) -> None:
    run(["dvc", "repro", "ingest"], pipeline_repo)
    data = Dataset(pipeline_repo / "data" / "ingested")
    mean, std = channel_stats(data.load("train")[0])
    config = ModelConfig(data.classes, list(data.image_shape), widths=[8], dropout=0.0, mean=mean, std=std)
    save_model(build_model(config), config, pipeline_repo / "models")  # untrained: only formats matter
    set_params(pipeline_repo, {"evaluate.device": "cpu"})

    run(["dvc", "repro", "--single-item", "evaluate"], pipeline_repo)
    again = run(["dvc", "repro", "--single-item", "evaluate"], pipeline_repo)
    assert "didn't change, skipping" in again.stdout

    shown = json.loads(run(["dvc", "metrics", "show", "--json"], pipeline_repo).stdout)
    (workspace,) = shown.values()
    metrics = workspace["data"]["reports/evaluate/metrics.json"]["data"]
    assert set(metrics) == {"test", "baseline"} and metrics["baseline"]["accuracy"] > 0.9
    plots = json.loads(run(["dvc", "plots", "show", "--json"], pipeline_repo).stdout)["data"]
    assert {"reports/evaluate/predictions.csv", "reports/evaluate/misclassified.png"} <= set(plots)
    assert plots["reports/evaluate/misclassified.png"][0]["type"] == "image"
