"""The model card ``make release`` writes: a Hugging Face ``README.md`` (YAML metadata, then text)
that records, beside the weights, where a version came from and what it is good for.

Everything in it is read from what the pipeline left in the workspace, which the release has
checked is what HEAD's ``dvc.lock`` records: the data's counts per split and class
(``data/ingested/dataset.json``, and the training set's in ``data/augmented``), every stage's
params and the DVC hashes of every data output and dependency (``dvc.lock``), the metrics with the
SVM baseline (``reports/evaluate/metrics.json``), the exact preprocessing and the classes
(``models/model.json``), the ONNX parity (``reports/export/parity.json``) and the commit. The
metadata's ``model-index`` is the Hub's own form of the results; ``mlpipeline`` holds the rest,
machine-readable. The limitations are stated from the same figures (a closed set of classes, the
input size, the test split's size and its confidence interval, the weakest class).

The card goes into the commit the version's tag names (``release``): a tag names a commit, so
what travels with the tag is what that commit holds. It names the pipeline's commit (its
parent): a commit cannot name itself.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.paths import AUGMENTED, EVALUATE_REPORTS, EXPORT_REPORTS, INGESTED, MODELS
from mlpipeline.core.shards import Dataset

CARDS = Path("cards")
CARD_FILE = "README.md"
METRICS = EVALUATE_REPORTS / "metrics.json"
PARITY = EXPORT_REPORTS / "parity.json"
MODEL_CONFIG = MODELS / "model.json"
CARD_STAGES = ("ingest", "synthesize", "augment", "train", "export", "evaluate")
# ingest.resize in words: for the limitations, and the preprocessing step (size, resampling, grey)
ASPECT = {"squash": "aspect ratio not kept", "shorter-side": "aspect ratio kept", "pad": "aspect ratio kept"}
RESIZED = {
    "squash": "Resize to {0} with {1} resampling, aspect ratio not kept",
    "shorter-side": "Resize: scaled to cover {0} with {1} resampling, aspect ratio kept, the centre kept",
    "pad": "Resize: scaled to fit inside {0} with {1} resampling, aspect ratio kept, grey {2} borders",
}


def card_path(name: str) -> Path:
    """Where the card of artifact ``name`` lives in the repository."""
    return CARDS / name / CARD_FILE


def model_card(root: Path, name: str, version: str, commit: str) -> str:
    """The card of ``name`` ``version``, made from the pipeline ``commit``'s outputs under ``root``."""
    facts = _facts(root, name, version, commit)
    metadata = yaml.safe_dump(_metadata(facts), sort_keys=False, allow_unicode=True, width=100)
    return f"---\n{metadata}---\n\n{_text(facts)}"


def _read_json(root: Path, path: Path) -> Any:
    try:
        return json.loads((root / path).read_text())
    except (OSError, ValueError) as exc:
        raise PipelineError(
            f"{path}: cannot be read for the model card ({exc}): run `dvc repro`, then release"
        )


def _facts(root: Path, name: str, version: str, commit: str) -> dict[str, Any]:
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    ingested = Dataset(root / INGESTED).info
    training = Dataset(root / AUGMENTED).info
    return {
        "artifact": name,
        "version": version,
        "commit": commit,
        "model": _read_json(root, MODEL_CONFIG),
        "metrics": _read_json(root, METRICS),
        "parity": _read_json(root, PARITY),
        "counts": {
            split: dict(zip(ingested.classes, info.class_counts, strict=True))
            for split, info in ingested.splits.items()
        },
        "training_images": {split: info.count for split, info in training.splits.items()},
        "params": {stage: lock[stage].get("params", {}).get("params.yaml", {}) for stage in CARD_STAGES},
        "dvc": _hashes(lock),
    }


def _hashes(lock: dict[str, Any]) -> dict[str, str]:
    """md5 of every data dependency and every output of the stages, as dvc.lock records them."""
    hashes = {}
    for stage in lock.values():
        for entry in [*stage.get("deps", []), *stage.get("outs", [])]:
            if not entry["path"].startswith("src/") and "md5" in entry:
                hashes[entry["path"]] = entry["md5"]
    return dict(sorted(hashes.items()))


def _metadata(facts: dict[str, Any]) -> dict[str, Any]:
    model, metrics = facts["model"], facts["metrics"]
    arch = model.get("arch", "convnet")
    return {
        "library_name": "onnx" if arch == "convnet" else "transformers",
        "pipeline_tag": "image-classification",
        "tags": ["image-classification", "onnx", "dvc", "mlpipeline", arch],
        "metrics": ["accuracy", "f1"],
        "model-index": [
            {
                "name": facts["artifact"],
                "results": [
                    {
                        "task": {"type": "image-classification", "name": "Image classification"},
                        "dataset": {
                            "name": facts["params"]["ingest"].get("source", "?"),
                            "type": "imagefolder",
                            "split": "test",
                        },
                        "metrics": [
                            {"type": "accuracy", "value": metrics["test"]["accuracy"], "name": "Accuracy"},
                            {"type": "f1", "value": metrics["test"]["macro_f1"], "name": "Macro F1"},
                        ],
                    }
                ],
            }
        ],
        "mlpipeline": {
            "artifact": facts["artifact"],
            "version": facts["version"],
            "commit": facts["commit"],
            "classes": model["classes"],
            "image_shape": model["image_shape"],
            "arch": arch,
            "pretrained": model.get("pretrained"),
            "preprocessing": _preprocessing(model),
            "data": {"counts": facts["counts"], "training_images": facts["training_images"]},
            "params": facts["params"],
            "metrics": {part: _headline(metrics[part]) for part in ("test", "baseline") if part in metrics},
            "onnx_parity": facts["parity"],
            "dvc": facts["dvc"],
        },
    }


def _preprocessing(model: dict[str, Any]) -> dict[str, Any]:
    """From an image file to the network's input, every number as evaluation applied it: the
    window is the centre of the stored image the network takes (all of it but for a smaller
    ``train.image_size``)."""
    return {
        **(model.get("preprocessing") or {}),
        "window": model["image_shape"][1:],
        "rescale": "1/255",
        "mean": model["mean"],
        "std": model["std"],
    }


def _headline(part: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in part.items() if key != "per_class"}


def _text(facts: dict[str, Any]) -> str:
    model, metrics = facts["model"], facts["metrics"]
    sections = [
        f"# {facts['artifact']} {facts['version']}",
        _about(facts),
        "## Intended use and limitations\n\n" + "\n".join(f"- {line}" for line in limitations(facts)),
        "## Training data\n\n" + _counts_table(facts["counts"], model["classes"]) + _training_line(facts),
        "## Preprocessing\n\n" + _preprocessing_text(model),
        "## Evaluation (test split, real images only)\n\n" + _metrics_table(metrics),
        "## How to use\n\n" + _usage(facts),
        "## Provenance\n\n" + _provenance(facts),
    ]
    return "\n\n".join(sections) + "\n"


def _about(facts: dict[str, Any]) -> str:
    model = facts["model"]
    arch = model.get("arch", "convnet")
    start = model.get("pretrained")
    begun = f", fine-tuned from {start['source']}" if start else ", trained from scratch"
    channels, height, width = model["image_shape"]
    return (
        f"An image classifier ({arch}{begun}) for {channels}-channel {height}x{width} images and "
        f"{len(model['classes'])} classes: {', '.join(model['classes'])}. Trained by the mlpipeline "
        f"DVC pipeline at commit `{facts['commit']}`; the weights (safetensors) and the ONNX file are "
        "the DVC artifacts of this version."
    )


def limitations(facts: dict[str, Any]) -> list[str]:
    """What the figures say this model is not good for."""
    model, test = facts["model"], facts["metrics"]["test"]
    channels, height, width = model["image_shape"]
    count = sum(facts["counts"].get("test", {}).values())
    accuracy = test["accuracy"]
    margin = 1.96 * math.sqrt(max(accuracy * (1 - accuracy), 1 / max(count, 1)) / max(count, 1))
    weakest = min(test.get("per_class", {}).items(), key=lambda item: item[1]["f1"], default=None)
    lines = [
        f"A closed set of {len(model['classes'])} classes: every image gets one of them, with no "
        "'none of these'; an image of something else gets a wrong class, often confidently.",
        f"Every image is resized to {_stored(model)} ({_made(model).get('resample', '?')}, "
        f"{ASPECT[_made(model).get('resize', 'squash')]}) and made {channels}-channel"
        + (
            f", the network seeing its centre {height}x{width}"
            if _stored(model) != f"{height}x{width}"
            else ""
        )
        + ": detail finer than that is lost.",
        f"Measured on {count} test images from the training data's own source "
        f"({facts['params']['ingest'].get('source', '?')}): accuracy {accuracy:.4f}, about +/- "
        f"{margin:.4f} (95%); on images from elsewhere it is unknown.",
    ]
    if weakest is not None:
        lines.append(f"Weakest class on the test split: {weakest[0]} (F1 {weakest[1]['f1']:.4f}).")
    baseline = facts["metrics"].get("baseline", {}).get("accuracy", 0.0)
    if accuracy < baseline:
        lines.append(f"The SVM baseline scores higher on the test split ({baseline:.4f}): prefer it here.")
    if facts["training_images"].get("synthetic"):
        lines.append(
            f"Training also used {facts['training_images']['synthetic']} synthetic images "
            f"(train.synthetic.use: {facts['params']['train'].get('synthetic', {}).get('use', '?')})."
        )
    return lines


def _counts_table(counts: dict[str, dict[str, int]], classes: list[str]) -> str:
    splits = list(counts)
    rows = ["| class | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    for name in classes:
        rows.append(f"| {name} | " + " | ".join(str(counts[split].get(name, 0)) for split in splits) + " |")
    rows.append("| **all** | " + " | ".join(str(sum(counts[split].values())) for split in splits) + " |")
    return "\n".join(rows)


def _training_line(facts: dict[str, Any]) -> str:
    parts = ", ".join(f"{count} {split}" for split, count in facts["training_images"].items())
    return f"\n\nTraining set after augmentation: {parts} images (`data/augmented`)."


def _preprocessing_text(model: dict[str, Any]) -> str:
    made, stored = _made(model), _stored(model)
    channels, height, width = model["image_shape"]
    resized = RESIZED[made.get("resize", "squash")].format(
        stored, made.get("resample"), made.get("background")
    )
    steps = [
        f"Decode (PNG, JPEG, BMP), apply the EXIF rotation, convert to {channels} channel(s) "
        f"(convert: {made.get('convert')}, transparent pixels on grey {made.get('background')}).",
        f"{resized} (JPEG draft decoding: {made.get('jpeg_draft')}).",
    ]
    if stored != f"{height}x{width}":
        steps.append(
            f"Take the centre {height}x{width} window of the {stored} image (training took windows of "
            "this size at random places): `ModelConfig.input_window`."
        )
    steps.append(
        f"Scale to [0, 1] (x / 255), then per channel (x - mean) / std with mean {model['mean']} "
        f"and std {model['std']}."
    )
    return (
        "\n".join(f"{number}. {step}" for number, step in enumerate(steps, 1))
        + "\n\nSteps 1-2 are `mlpipeline.ingestion.images.decode_image`; the last is inside the network "
        "and the ONNX graph, which take uint8 pixels."
    )


def _made(model: dict[str, Any]) -> dict[str, Any]:
    """Ingest's record of how image files became the stored images (empty in old models)."""
    return model.get("preprocessing") or {}


def _stored(model: dict[str, Any]) -> str:
    """The stored images' size, H x W: the network's input, or larger when it took a window."""
    height, width = _made(model).get("image_size") or model["image_shape"][1:]
    return f"{height}x{width}"


def _metrics_table(metrics: dict[str, Any]) -> str:
    baseline = metrics.get("baseline")
    rows = [
        "| metric | network |" + (" SVM baseline |" if baseline else ""),
        "|---|---:|" + ("---:|" if baseline else ""),
    ]
    for key in ("accuracy", "macro_f1", "log_loss", "ece"):
        if key in metrics["test"]:
            against = f" {baseline.get(key, float('nan')):.4f} |" if baseline else ""
            rows.append(f"| {key} | {metrics['test'][key]:.4f} |{against}")
    if not baseline:
        rows.append("\nNo baseline was fitted (evaluate.baseline.method: none).")
    return "\n".join(rows)


def _usage(facts: dict[str, Any]) -> str:
    spec = f"{facts['artifact']}@{facts['version']}"
    lines = [
        "```bash",
        f"mlpipeline-predict photos/ --model {spec} --output predictions.csv",
        f"mlpipeline-predict photos/ --onnx --model {spec}          # ONNX Runtime, no torch",
        f"mlpipeline-serve --model {spec}                           # HTTP",
        "```",
    ]
    if facts["model"].get("arch", "convnet") != "convnet":
        lines += [
            "",
            "The `models/` folder of this version loads with transformers alone:",
            "",
            "```python",
            "from transformers import AutoImageProcessor, AutoModelForImageClassification",
            'model = AutoModelForImageClassification.from_pretrained("models")',
            'processor = AutoImageProcessor.from_pretrained("models")',
            "```",
        ]
    return "\n".join(lines)


def _provenance(facts: dict[str, Any]) -> str:
    rows = [f"Pipeline commit: `{facts['commit']}`.", "", "| path | DVC md5 |", "|---|---|"]
    rows += [f"| `{path}` | `{md5}` |" for path, md5 in facts["dvc"].items()]
    return "\n".join(rows)
