"""The photo recipe's test accuracy with and without the photo augmentations, on generated photos
(``mlpipeline.devtools.photos``: objects whose silhouette is the class, in random colours, places,
sizes and lighting, on textured backgrounds; nothing downloaded), each variant the stages' own
functions run in this process on one CPU thread: ingest once (presets/photos-small.yaml: stored
at 40x40, aspect kept), then per variant augment (online), train and evaluate.

- ``recipe``: presets/photos-small.yaml as it is (random 32x32 windows of the 40x40 images,
  flips, colour jitter; the weight average, class weights, label smoothing);
- ``no augmentation``: the same with every augmentation off (no transforms, the whole 40x40
  image);
- ``digit augmentations``: the template's default transforms (affine, elastic, noise, cutout)
  instead, as the template trained photos before the recipe;
- ``imagenet-style``: the recipe plus what ImageNet recipes add: the random-resized crop (area
  0.35..1), TrivialAugment, cutout, mixup and CutMix.

    nice -n 10 python bench/photos.py [--per-class 200] [--seeds 0 1] [--epochs 40] [--variants recipe ...]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

from mlpipeline.core.params import PARAMS_FILE, from_mapping, read_document
from mlpipeline.core.shard_writer import DatasetWriter
from mlpipeline.core.shards import Dataset
from mlpipeline.devtools.photos import write_photos
from mlpipeline.devtools.preset import apply_preset
from mlpipeline.evaluation.params import EvaluateParams
from mlpipeline.modeling.files import save_model
from mlpipeline.stages.augment import AugmentParams, augment_dataset
from mlpipeline.stages.evaluate import evaluate
from mlpipeline.stages.ingest import IngestParams, ingest
from mlpipeline.stages.train import train
from mlpipeline.training.data import open_inputs
from mlpipeline.training.params import TrainParams

SCRATCH = Path(".cache/bench/photos")
PRESET = Path("presets/photos-small.yaml")
CLASSES = ["cat", "dog", "bird", "fish", "frog", "deer"]
OFF = {"crop": {"probability": 0.0}, "policy": {"kind": "none"}, "cutout": {"probability": 0.0}}
OFF |= {"flip": {"horizontal": 0.0}, "colour": {"probability": 0.0}}
# What ImageNet recipes add to the preset: the random-resized crop, TrivialAugment, cutout
# (random erasing), mixup and CutMix.
IMAGENET_STYLE = {
    "augment": {
        "transforms": {
            "crop": {"probability": 1.0, "scale": [0.35, 1.0]},
            "policy": {"kind": "trivialaugment"},
            "cutout": {"probability": 0.25},
        }
    },
    "train": {"mixing": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "probability": 0.5}},
}


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) else value
    return out


def variants(params: dict[str, Any], digits: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each variant's sections."""
    plain = {"mixing": {"probability": 0.0}, "image_size": None}
    return {
        "recipe": params,
        "no augmentation": merged(params, {"augment": {"transforms": OFF}, "train": plain}),
        "digit augmentations": merged(params, {"augment": {"transforms": digits}, "train": plain}),
        "imagenet-style": merged(params, IMAGENET_STYLE),
    }


def run_variant(name: str, sections: dict[str, Any], ingested: Path, seed: int) -> dict[str, float]:
    root = SCRATCH / name.replace(" ", "-") / str(seed)
    synthetic = root / "synthetic"
    with DatasetWriter(synthetic, Dataset(ingested).classes, Dataset(ingested).image_shape) as writer:
        writer.add_split("train")
    augment = from_mapping(AugmentParams, sections["augment"], "augment")
    augment_dataset(augment, ingested, synthetic, root / "augmented", root / "samples.png", workers=1)
    params = from_mapping(TrainParams, {**sections["train"], "seed": seed, "num_threads": 1}, "train")
    started = time.perf_counter()
    result = train(params, open_inputs(root / "augmented", ingested), None, root / "checkpoints")
    seconds = time.perf_counter() - started
    save_model(result.trainer.model, result.config, root / "models")
    for checkpoints in result.checkpoints:
        checkpoints.clear()
    scores = evaluate(
        from_mapping(EvaluateParams, sections["evaluate"], "evaluate"), root / "models", ingested
    )
    test = scores.metrics["test"]
    return {"accuracy": test["accuracy"], "macro_f1": test["macro_f1"], "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=200, help="generated photos per class")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train.seed of each run")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs (default: the preset's)")
    parser.add_argument("--variants", nargs="+", help="run only these (default: all four)")
    args = parser.parse_args()
    repo = read_document(PARAMS_FILE.read_text(), PARAMS_FILE)
    sections = read_document(
        apply_preset(PARAMS_FILE.read_text(), read_document(PRESET.read_text(), PRESET), PRESET), PRESET
    )
    sections["evaluate"] = merged(sections["evaluate"], {"device": "cpu", "baseline": {"method": "none"}})
    sections["train"] = merged(
        sections["train"], {"device": "cpu"} | ({"epochs": args.epochs} if args.epochs else {})
    )
    raw, ingested = SCRATCH / "raw", SCRATCH / "ingested"
    if not raw.exists():
        write_photos(raw, CLASSES, args.per_class)
    ingest(from_mapping(IngestParams, {**sections["ingest"], "source": str(raw)}, "ingest"), ingested)
    data = Dataset(ingested)
    counts = ", ".join(f"{data.count(split)} {split}" for split in ("train", "val", "test"))
    print(f"{len(CLASSES)} classes of generated photos: {counts}; stored {data.image_shape}")
    print(f"{'variant':22} {'seed':>4} {'test acc':>9} {'macro-F1':>9} {'train s':>8}")
    for name, variant in variants(sections, repo["augment"]["transforms"]).items():
        if args.variants and name not in args.variants:
            continue
        for seed in args.seeds:
            scores = run_variant(name, variant, ingested, seed)
            figures = f"{scores['accuracy']:9.4f} {scores['macro_f1']:9.4f} {scores['seconds']:8.0f}"
            print(f"{name:22} {seed:>4} {figures}", flush=True)


if __name__ == "__main__":
    main()
