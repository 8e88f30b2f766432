"""Evaluate: the trained network and an SVM baseline, scored on the real test split.

Reads ``models/`` and ``data/ingested`` (the test split, real data only, and
the train split to fit the baseline) and writes ``reports/evaluate``:
``metrics.json`` (network under ``test``, baseline under ``baseline``, the same
keys in both, plus ``baseline.model``: the exact RBF-SVM or its Nystroem
approximation; ``evaluate.baseline.method: none`` leaves the baseline out, and the
train split unread), ``predictions.csv`` for DVC's confusion template (with each test image's
id, the start of its pixels' sha256, so ``make report`` scores two models on the test
images their data versions share), and ``misclassified.png``, the network's most
confident mistakes.
Everything streams: the test split is scored batch by batch and the baseline's
training subset is copied out shard by shard, so memory is set by the shard,
batch and subset sizes, not by the number of images. The baseline's batches are
predicted by ``MLPIPELINE_WORKERS`` processes.
Per-class figures make wide tables; ``dvc exp show --drop '.*per_class.*'``
keeps the summary columns.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from mlpipeline.core import atomic, stage
from mlpipeline.core.device import pick_device
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import load_section
from mlpipeline.core.paths import EVALUATE_REPORTS, INGESTED, MODELS
from mlpipeline.core.progress import progress
from mlpipeline.core.shards import META_FILE, Dataset
from mlpipeline.core.workers import ordered_map_pairs, workers_for
from mlpipeline.evaluation.baseline import (
    NAMES,
    Baseline,
    BaselineParams,
    choose_kernel,
    fit_baseline,
    predict_batch,
    start_predicting,
)
from mlpipeline.evaluation.metrics import Scores
from mlpipeline.evaluation.params import EvaluateParams
from mlpipeline.evaluation.report import WorstErrors, image_ids, misclassified_png, predictions_csv
from mlpipeline.evaluation.subset import pick_rows
from mlpipeline.modeling.files import CONFIG_FILE, load_model
from mlpipeline.modeling.inference import predict_probabilities
from mlpipeline.modeling.network import ModelConfig

TEST, TRAIN = "test", "train"


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, Any]
    predictions_csv: str
    misclassified_png: bytes
    test_count: int
    train_count: int  # training images the baseline was fitted on


def check_compatible(config: ModelConfig, data: Dataset, model_dir: Path) -> None:
    """Refuse a model trained on other classes or image shape: its scores would be meaningless."""
    where = f"{model_dir / CONFIG_FILE} and {data.root / META_FILE}"
    if list(config.classes) != list(data.classes):
        raise PipelineError(f"{where} disagree on the classes: {config.classes} vs {data.classes}")
    if tuple(config.stored_shape) != tuple(data.image_shape):
        raise PipelineError(
            f"{where} disagree on the image shape: {config.stored_shape} vs {list(data.image_shape)}"
        )


def split_batches(data: Dataset, split: str, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``split`` as (images, labels) batches cut within each shard: one shard in memory, and the
    same batches for any worker count."""
    for images, labels in data.iter_shards(split):
        for start in range(0, len(labels), batch_size):
            yield images[start : start + batch_size], labels[start : start + batch_size]


def evaluate(
    params: EvaluateParams, model_dir: Path, data_dir: Path, workers: int | None = None
) -> Evaluation:
    """Score the network and the baseline on the test split as it streams past, the baseline's
    batches predicted by ``workers`` processes (None: ``workers_for`` the batches; the bytes do
    not depend on it). No output I/O, so tests call it."""
    data = Dataset(data_dir)
    device = pick_device(params.device, "evaluate.device")
    model, config = load_model(model_dir, device)
    check_compatible(config, data, model_dir)
    if not data.count(TEST):
        raise PipelineError(f"{data.root / META_FILE}: the {TEST} split is empty")
    baseline = fit_on_train(data, params.baseline) if params.baseline.method == "svm" else None
    report = Scoreboard(len(data.classes), params, baseline)
    with progress("evaluate", "predicting", data.count(TEST)) as shown:
        for (images, labels), svm_probabilities in with_baseline(data, params, baseline, workers):
            network = predict_probabilities(model, config.input_window(images), device, params.batch_size)
            report.add(images, labels, network, svm_probabilities)
            shown.advance(len(labels))
    return report.evaluation(data.classes)


def with_baseline(
    data: Dataset, params: EvaluateParams, baseline: FittedBaseline | None, workers: int | None
) -> Iterator[tuple[tuple[np.ndarray, np.ndarray], np.ndarray | None]]:
    """The test split's batches, each with the baseline's probabilities (None without one),
    predicted by ``workers`` processes (None: ``workers_for`` the batches)."""
    batches = split_batches(data, TEST, params.batch_size)
    if baseline is None:
        return ((batch, None) for batch in batches)
    if workers is None:
        workers = workers_for(math.ceil(data.count(TEST) / params.batch_size))
    start = partial(start_predicting, baseline.model)
    predict = partial(predict_batch, num_classes=len(data.classes))
    return ordered_map_pairs(predict, batches, workers, start)


class Scoreboard:
    """Everything the reports need, added batch by batch: the network's scores and the
    baseline's (when there is one), the worst mistakes and, per test image, its label and the
    network's choice (for the confusion plot)."""

    def __init__(self, num_classes: int, params: EvaluateParams, baseline: FittedBaseline | None) -> None:
        self.network = Scores(num_classes, params.ece_bins)
        self.fitted = baseline
        self.baseline = Scores(num_classes, params.ece_bins) if baseline is not None else None
        self.worst = WorstErrors(params.misclassified)
        self.choices: list[tuple[np.ndarray, np.ndarray]] = []
        self.ids: list[str] = []

    def add(
        self, images: np.ndarray, labels: np.ndarray, network: np.ndarray, baseline: np.ndarray | None
    ) -> None:
        self.network.add(labels, network)
        if self.baseline is not None and baseline is not None:
            self.baseline.add(labels, baseline)
        self.worst.add(images, labels, network)
        self.choices.append((labels, network.argmax(axis=1)))
        self.ids += image_ids(images)

    def evaluation(self, classes: list[str]) -> Evaluation:
        labels, choices = (np.concatenate(column) for column in zip(*self.choices, strict=True))
        metrics: dict[str, Any] = {"test": self.network.result(classes)}
        if self.baseline is not None and self.fitted is not None:
            metrics["baseline"] = {**self.baseline.result(classes), "model": NAMES[self.fitted.kernel]}
        return Evaluation(
            metrics=metrics,
            predictions_csv=predictions_csv(labels, choices, classes, self.ids),
            misclassified_png=misclassified_png(self.worst, classes),
            test_count=self.network.samples,
            train_count=self.fitted.images if self.fitted is not None else 0,
        )


@dataclass(frozen=True)
class FittedBaseline:
    kernel: str  # exact or nystroem
    model: Baseline
    images: int  # training images it was fitted on


def fit_on_train(data: Dataset, params: BaselineParams) -> FittedBaseline:
    """The baseline fitted on the train split's seeded subset, with the kernel chosen for its size."""
    kernel = choose_kernel(params, data.count(TRAIN), data.count(TEST), int(np.prod(data.image_shape)))
    with progress("evaluate", f"reading the baseline's {TRAIN} images", data.count(TRAIN)) as shown:
        images, labels = pick_rows(data, TRAIN, params.max_train, params.seed, shown.advance)
    return FittedBaseline(kernel, fit_baseline(images, labels, params, kernel), len(labels))


def write_reports(result: Evaluation, out_dir: Path) -> None:
    atomic.write_json(out_dir / "metrics.json", result.metrics)
    atomic.write_text(out_dir / "predictions.csv", result.predictions_csv)
    atomic.write_bytes(out_dir / "misclassified.png", result.misclassified_png)


def main() -> None:
    with stage.summary("evaluate") as report:
        params = load_section(EvaluateParams, "evaluate")
        result = evaluate(params, MODELS, INGESTED)
        write_reports(result, EVALUATE_REPORTS)
        net, svm = result.metrics["test"], result.metrics.get("baseline")
        fitted = f" and {result.train_count} train" if svm is not None else ""
        report["read"] = f"{MODELS}, {result.test_count} test{fitted} images from {INGESTED}"
        scores = [f"accuracy {net['accuracy']:.4f}", f"macro-F1 {net['macro_f1']:.4f}"]
        if svm is not None:
            scores = [
                f"accuracy {net['accuracy']:.4f}, baseline {svm['model']} {svm['accuracy']:.4f}",
                f"macro-F1 {net['macro_f1']:.4f}, baseline {svm['macro_f1']:.4f}",
            ]
        report["wrote"] = f"{EVALUATE_REPORTS} ({'; '.join(scores)})"


if __name__ == "__main__":
    stage.run("evaluate", main, EvaluateParams)
