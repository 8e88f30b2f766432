"""Synthesize: labelled synthetic training images that look like the real ones.

Reads ``data/ingested`` (classes, image shape, and the train split's pixel
statistics), runs the generator named by ``synthesize.generator`` in seeded
batches, and streams ``synthesize.count`` images into ``data/synthetic`` (one
split, ``train``, in the ingested shard format) plus, in ``reports/synthesize``, a
preview grid and the transfer score (``synthetic.realism``: how well a classifier
fitted on the synthetic images alone does on the real ones). The built-in
generator and the score compute exactly (see ``synthetic.glyphs`` and
``synthetic.realism``), so every output byte is the same on every CPU and DVC's
cache and run-cache hit everywhere. Rendering runs on the CPU, spread over
``MLPIPELINE_WORKERS`` processes (each batch's randomness is named by its
index, so the bytes are the same for any worker count).
``count: 0`` writes a valid empty dataset, so the pipeline stays whole; so do classes the
generator cannot draw (the glyphs generator and a photo class ``cat``), and the summary line
says why: training then runs on the real images alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mlpipeline.core import atomic, stage
from mlpipeline.core.device import limit_threads
from mlpipeline.core.params import load_section
from mlpipeline.core.paths import INGESTED, SYNTHESIZE_REPORTS, SYNTHETIC
from mlpipeline.core.progress import progress
from mlpipeline.core.shard_writer import DatasetWriter
from mlpipeline.core.shards import Dataset
from mlpipeline.core.workers import workers_for
from mlpipeline.synthetic import SynthesisTask, ValueStats, class_counts, generate, get_generator
from mlpipeline.synthetic.generators import CannotDraw, batch_size
from mlpipeline.synthetic.params import SynthesizeParams
from mlpipeline.synthetic.preview import PerClassSamples, samples_png
from mlpipeline.synthetic.realism import Sampler, transfer_score

PREVIEW = "samples.png"
METRICS = "metrics.json"
PREVIEW_PER_SOURCE = 6
SPLIT = "train"


@dataclass(frozen=True)
class Synthesized:
    counts: list[int]  # images written per class
    score: dict[str, object]  # the transfer score
    not_drawn: str | None  # why the generator drew nothing (``CannotDraw``), or None


def synthesize(
    params: SynthesizeParams,
    real_dir: Path,
    out_dir: Path,
    report_dir: Path,
    device: torch.device | None = None,
    workers: int | None = None,
) -> Synthesized:
    """Write ``params.count`` synthetic images, the preview and the transfer score. ``workers``
    processes render (None: ``workers_for`` the batches); the bytes do not depend on it. Classes
    the generator cannot draw get no images (an empty dataset whose ``dataset.json`` says why)."""
    device = device or torch.device("cpu")
    factory = get_generator(params.generator)  # a misspelt name fails even when count is 0
    real = Dataset(real_dir)
    real_samples = PerClassSamples(len(real.classes), PREVIEW_PER_SOURCE)
    stats = ValueStats(real.image_shape[0])
    real_for_score = Sampler(real.count(SPLIT), params.seed, "real")
    with progress("synthesize", f"reading real {SPLIT}", real.count(SPLIT)) as shown:
        for images, labels in real.iter_shards(SPLIT):
            stats.add(images)
            real_samples.add(images, labels)
            real_for_score.add(images, labels)
            shown.advance(len(labels))
    values = stats.value_map(f"{real_dir} ({SPLIT} split)")
    counts = class_counts(params.count, params.class_balance, real.info.splits[SPLIT].class_counts)
    synthetic_samples = PerClassSamples(len(real.classes), PREVIEW_PER_SOURCE)
    synthetic_for_score = Sampler(params.count, params.seed, "synthetic")
    attributes = {
        "generator": params.generator,
        "params": asdict(params),
        "values": values.to_json(),
        "derived_from": real_dir.as_posix(),
    }
    batches: Iterable[tuple[np.ndarray, np.ndarray]] = ()
    if params.count > 0:
        task = SynthesisTask(real.classes, real.image_shape, values, params, device)
        if workers is None:
            workers = workers_for(math.ceil(params.count / batch_size(real.image_shape)))
        try:
            batches = generate(factory, task, counts, params.seed, workers)
        except CannotDraw as refusal:  # the default generator and photos of cats: train on them alone
            counts, attributes["not_drawn"] = [0] * len(counts), str(refusal)
    with DatasetWriter(out_dir, real.classes, real.image_shape, attributes) as writer:
        writer.add_split(SPLIT)
        with progress("synthesize", "rendering", sum(counts)) as shown:
            for images, labels in batches:
                writer.write(SPLIT, images, labels)
                synthetic_samples.add(images, labels)
                synthetic_for_score.add(images, labels)
                shown.advance(len(labels))
        sources = {"real": real_samples, "synth": synthetic_samples}
        atomic.write_bytes(report_dir / PREVIEW, samples_png(real.classes, sources))
        score = transfer_score(synthetic_for_score, real_for_score, real.classes)
        atomic.write_json(report_dir / METRICS, {"transfer": score})
    return Synthesized(counts, score, attributes.get("not_drawn"))


def main() -> None:
    with stage.summary("synthesize") as report:
        params = load_section(SynthesizeParams, "synthesize")
        limit_threads()
        result = synthesize(params, INGESTED, SYNTHETIC, SYNTHESIZE_REPORTS)
        counts, score = result.counts, result.score
        made = f"{sum(counts)} '{params.generator}' images, {min(counts)}..{max(counts)} per class"
        if result.not_drawn is not None:
            made = f"no images: {result.not_drawn}; train uses the real images alone"
        report["wrote"] = f"{SYNTHETIC} ({made})"
        accuracy = f", transfer accuracy {score['accuracy']:.4f}" if "accuracy" in score else ""
        report["reports"] = f"{SYNTHESIZE_REPORTS / PREVIEW}, {SYNTHESIZE_REPORTS / METRICS}{accuracy}"


if __name__ == "__main__":
    stage.run("synthesize", main, SynthesizeParams)
