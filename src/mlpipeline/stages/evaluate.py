"""Evaluate: the trained network and an SVM baseline, scored on the real test split.

Reads ``models/`` and ``data/ingested`` (the test split, real data only, and
the train split to fit the baseline) and writes ``reports/evaluate``:
``metrics.json`` (network under ``test``, baseline under ``baseline``, the same
keys in both), ``predictions.csv`` for DVC's confusion template, and
``misclassified.png``, the network's most confident mistakes.
Per-class figures make wide tables; ``dvc exp show --drop '.*per_class.*'``
keeps the summary columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlpipeline.core import atomic, stage
from mlpipeline.core.device import DeviceChoice, pick_device
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import load_section, param, params_dataclass
from mlpipeline.core.paths import EVALUATE_REPORTS, INGESTED, MODELS
from mlpipeline.core.shards import META_FILE, Dataset
from mlpipeline.evaluation.baseline import BaselineParams, baseline_probabilities, fit_baseline
from mlpipeline.evaluation.metrics import score
from mlpipeline.evaluation.report import misclassified_png, predictions_csv
from mlpipeline.inference import predict_probabilities
from mlpipeline.model import ModelConfig
from mlpipeline.model_files import CONFIG_FILE, load_model


@params_dataclass
class EvaluateParams:
    device: DeviceChoice
    batch_size: int = param(ge=1)
    ece_bins: int = param(ge=1)
    misclassified: int = param(ge=1)
    baseline: BaselineParams


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, Any]
    predictions_csv: str
    misclassified_png: bytes
    test_count: int
    train_count: int


def check_compatible(config: ModelConfig, data: Dataset, model_dir: Path) -> None:
    """Refuse a model trained on other classes or image shape: its scores would be meaningless."""
    where = f"{model_dir / CONFIG_FILE} and {data.root / META_FILE}"
    if list(config.classes) != list(data.classes):
        raise PipelineError(f"{where} disagree on the classes: {config.classes} vs {data.classes}")
    if tuple(config.image_shape) != tuple(data.image_shape):
        raise PipelineError(
            f"{where} disagree on the image shape: {config.image_shape} vs {list(data.image_shape)}"
        )


def evaluate(params: EvaluateParams, model_dir: Path, data_dir: Path) -> Evaluation:
    """Score the network and the baseline on the test split. No output I/O, so tests call it."""
    data = Dataset(data_dir)
    device = pick_device(params.device, "evaluate.device")
    model, config = load_model(model_dir, device)
    check_compatible(config, data, model_dir)
    classes = data.classes
    images, labels = data.load("test")
    if not len(labels):
        raise PipelineError(f"{data.root / META_FILE}: the test split is empty")
    network = predict_probabilities(model, images, device, params.batch_size)
    train_images, train_labels = data.load("train")
    svm = fit_baseline(train_images, train_labels, params.baseline)
    baseline = baseline_probabilities(svm, images, len(classes))
    return Evaluation(
        metrics={
            "test": score(labels, network, classes, params.ece_bins),
            "baseline": score(labels, baseline, classes, params.ece_bins),
        },
        predictions_csv=predictions_csv(labels, network, classes),
        misclassified_png=misclassified_png(images, labels, network, classes, params.misclassified),
        test_count=len(labels),
        train_count=len(train_labels),
    )


def write_reports(result: Evaluation, out_dir: Path) -> None:
    atomic.write_json(out_dir / "metrics.json", result.metrics)
    atomic.write_text(out_dir / "predictions.csv", result.predictions_csv)
    atomic.write_bytes(out_dir / "misclassified.png", result.misclassified_png)


def main() -> None:
    with stage.summary("evaluate") as report:
        params = load_section(EvaluateParams, "evaluate")
        result = evaluate(params, MODELS, INGESTED)
        write_reports(result, EVALUATE_REPORTS)
        net, svm = result.metrics["test"], result.metrics["baseline"]
        report["read"] = (
            f"{MODELS}, {result.test_count} test and {result.train_count} train images from {INGESTED}"
        )
        report["wrote"] = (
            f"{EVALUATE_REPORTS} (accuracy {net['accuracy']:.4f}, baseline {svm['accuracy']:.4f}; "
            f"macro-F1 {net['macro_f1']:.4f}, baseline {svm['macro_f1']:.4f})"
        )


if __name__ == "__main__":
    stage.run("evaluate", main)
