"""The model card of a photo recipe's release: with ``evaluate.baseline.method: none`` the card
has no baseline to show (and says so), and its preprocessing is the one evaluation applied: the
aspect ratio kept as ingest kept it, the centre window of a ``train.image_size`` smaller than the
stored images. (The card of the demo's release is checked end to end in ``test_registry``.)"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from tiny_model import CLASSES, tiny_images, write_tiny_dataset
from tiny_training import write_training_set

from mlpipeline.core.paths import AUGMENTED, INGESTED
from mlpipeline.ingestion.images import Preprocessing
from mlpipeline.versions.card import CARD_STAGES, METRICS, MODEL_CONFIG, PARITY, model_card

SCORES = {"accuracy": 0.75, "macro_f1": 0.7, "per_class": {"top": {"f1": 0.6}}}
STORED = Preprocessing(3, (40, 40), "bicubic", True, 255, False, resize="shorter-side")


def workspace(root: Path, baseline: bool, image_shape: list[int]) -> Path:
    """What a pipeline run leaves for ``make release``: the data's records, dvc.lock, the model's
    config, the metrics (with the SVM baseline or without) and the ONNX parity."""
    write_tiny_dataset(root / INGESTED)
    write_training_set(root / AUGMENTED, tiny_images(4, seed=0))
    lock = {
        "stages": {stage: {"params": {"params.yaml": {}}, "deps": [], "outs": []} for stage in CARD_STAGES}
    }
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    model = {"classes": CLASSES, "image_shape": image_shape, "mean": [0.5] * 3, "std": [0.25] * 3}
    model["preprocessing"] = STORED.to_json()
    metrics = {"test": SCORES, **({"baseline": {**SCORES, "accuracy": 0.5}} if baseline else {})}
    for path, content in ((MODEL_CONFIG, model), (METRICS, metrics), (PARITY, {"max_abs_diff": 0.0})):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(json.dumps(content))
    return root


def card(root: Path) -> tuple[dict, str]:
    _, front, body = model_card(root, "photos", "v1.0.0", "abc123").split("---\n", 2)
    return yaml.safe_load(front), body


def test_a_release_evaluated_without_the_baseline_has_a_card_that_says_so(tmp_path: Path) -> None:
    meta, body = card(workspace(tmp_path, baseline=False, image_shape=[3, 40, 40]))
    assert set(meta["mlpipeline"]["metrics"]) == {"test"}
    assert "| metric | network |\n" in body and "| accuracy | 0.7500 |" in body
    assert "No baseline was fitted (evaluate.baseline.method: none)." in body
    assert "SVM" not in body.split("## Evaluation")[1].split("##")[0].replace("No baseline", "")


def test_the_card_with_a_baseline_compares_against_it(tmp_path: Path) -> None:
    meta, body = card(workspace(tmp_path, baseline=True, image_shape=[3, 40, 40]))
    assert meta["mlpipeline"]["metrics"]["baseline"]["accuracy"] == 0.5
    assert "| metric | network | SVM baseline |" in body and "| accuracy | 0.7500 | 0.5000 |" in body


def test_the_card_says_the_aspect_ratio_and_the_centre_window_evaluation_took(tmp_path: Path) -> None:
    meta, body = card(workspace(tmp_path, baseline=True, image_shape=[3, 32, 32]))
    preprocessing = body.split("## Preprocessing")[1].split("##")[0]
    assert (
        "scaled to cover 40x40 with bicubic resampling, aspect ratio kept, the centre kept" in preprocessing
    )
    assert "the centre 32x32 window of the 40x40 image" in preprocessing
    limits = body.split("## Intended use and limitations")[1].split("##")[0]
    assert "aspect ratio not kept" not in limits and "40x40 (bicubic, aspect ratio kept)" in limits
    assert meta["mlpipeline"]["preprocessing"]["window"] == [32, 32]
