"""Training throughput and memory: the template's loop against a bare PyTorch loop, and streamed
against resident data at scale, each pair in one run.

``--arch``: the same comparison for a transformers arch (its ``train.model.hf`` settings) on
generated 32x32 RGB images (target: the template's loop >= 0.95x the bare one's images/s).

Default: the stage's own inputs and params (run from the repository root after ``dvc repro
augment``) on whatever device ``train.device`` picks. Same model architecture and initial
weights, same batches delivered the same way (data placed as the stage places it), same
precision (autocast and a grad scaler where the runtime uses them), same batch size, order and
loss, the model and the batches channels_last as the stage has them: the bare loop does only
forward, backward and step; the template's adds what the stage needs (the LR schedule, loss and
accuracy bookkeeping), and is timed again with the photo recipe's weight average (EMA) and
gradient accumulation on. Epochs alternate between the two, so
load changes on the machine hit both alike; the medians are compared.

``--scale``: generated 32x32 RGB images (10 classes) in .cache/bench/train, one dataset per
``--counts``. At the first count, the train loop on the data resident against the same loop
streaming it from the shards, interleaved as above (target: streamed >= 0.9x). Then, per
count, the stage's ``train()`` for one epoch, streamed, in a child process of its own: its
peak RSS must stay flat as the count grows.

    nice -n 10 python bench/train.py [--epochs 5]
    nice -n 10 python bench/train.py --arch resnet|vit [--images 4096] [--epochs 5]
    nice -n 10 python bench/train.py --scale [--counts 100000 1000000] [--widths 8 16]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import peak_rss_mib, plain_step

from mlpipeline.core.params import from_mapping, load_section
from mlpipeline.core.paths import AUGMENTED, INGESTED
from mlpipeline.core.seeding import rng, seed_everything
from mlpipeline.core.shard_rows import SplitReader
from mlpipeline.core.shard_writer import DatasetWriter
from mlpipeline.core.shards import Dataset
from mlpipeline.core.workers import worker_count
from mlpipeline.modeling.network import build_model, new_config
from mlpipeline.stages.train import train
from mlpipeline.training.data import VAL_SPLIT, Inputs, epoch_order, open_inputs, steps
from mlpipeline.training.device import Runtime, configure
from mlpipeline.training.distributed import World
from mlpipeline.training.loader import PLACEMENT_ENV, Feed, Resident, Streamed, chosen_placement, place
from mlpipeline.training.loop import Trainer
from mlpipeline.training.params import TrainParams
from mlpipeline.training.phases import plan

SCRATCH = Path(".cache/bench/train")
SHAPE = (3, 32, 32)
CLASSES = [str(i) for i in range(10)]
VAL_IMAGES = 1_000
WRITE_CHUNK = 65_536


RECIPE_EMA = 0.999  # the photo recipe's loop options the default run also times
RECIPE_ACCUMULATE = 2


def bare_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    train: Feed,
    order: np.ndarray,
    batch_size: int,
    smoothing: float,
) -> None:
    """Forward, backward and step only, at the template's precision (autocast, and a grad scaler
    for fp16) on batches delivered as the template's are: the same work, none of the bookkeeping."""
    model.train()
    scaler = runtime.grad_scaler()
    for images, labels in train.batches(order, batch_size, drop_last=True):
        with runtime.autocast():
            logits = model(runtime.channels_last(images))
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)
        plain_step(loss, optimizer, scaler)


def timed(runtime: Runtime, run: Callable[[], object]) -> float:
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    run()
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def build(params: TrainParams, runtime: Runtime, inputs: Inputs, rows: SplitReader) -> torch.nn.Module:
    """The network the stage would train (any ``train.model.arch``), as the stage places it."""
    spec, shape = params.model, list(inputs.image_shape)
    stats = rows.channel_sums().mean_std()  # as the stage does: from dataset.json
    config = new_config(
        spec.arch, inputs.classes, shape, lambda: stats, None, spec.widths, spec.dropout, spec.hf, None
    )
    seed_everything(params.seed)
    return runtime.place(build_model(config))


def interleaved(runs: dict[str, Callable[[int], float]], rounds: int) -> dict[str, float]:
    """Median seconds of each run over ``rounds`` rounds, taking turns, the first turn passing
    to the next run each round (whatever favours a place in the round favours each alike); round
    0 warms up."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for round_ in range(rounds + 1):
        turn = round_ % len(names)
        for name in names[turn:] + names[:turn]:
            seconds = runs[name](round_)
            if round_:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def arch_params(arch: str) -> TrainParams:
    """The repository's train params with the model ``arch`` (its ``train.model.hf`` settings), on the CPU."""
    section = asdict(load_section(TrainParams, "train"))
    section.update(model={**section["model"], "arch": arch}, batch_size=64, device="cpu", precision="float32")
    return from_mapping(TrainParams, section, "train")


def loop_overhead(args: argparse.Namespace) -> None:
    """The stage's loop against a bare one on the same model: the stage's data and params, or with
    ``--arch`` the repository's params with that arch on ``--images`` generated 32x32 RGB images."""
    params = load_section(TrainParams, "train") if args.arch is None else arch_params(args.arch)
    params = replace(params, schedule="constant")  # no end to run past
    runtime = configure(params.device, params.precision, params.num_threads)
    inputs = open_inputs(AUGMENTED, INGESTED) if args.arch is None else open_generated(args.images)
    mixed = replace(params, synthetic=replace(params.synthetic, use="mix"))  # one phase on all images
    (phase,) = plan(mixed, inputs.real, inputs.synthetic, inputs.train.root)
    model = build(params, runtime, inputs, phase.originals)
    bare_model = copy.deepcopy(model)
    val_rows = SplitReader.open(inputs.val, VAL_SPLIT)
    placement = chosen_placement(val_rows.nbytes + phase.originals.nbytes, runtime.device)  # as train()
    workers = worker_count()
    data = Feed(
        place(phase.originals, runtime.device, placement, workers), len(phase.originals), inputs.online
    )
    val = Feed(place(val_rows, runtime.device, placement, workers), len(val_rows))
    recipe_model = copy.deepcopy(model)
    trainer = Trainer(model, params, runtime, World(), data, val, phase=phase.name)
    recipe = replace(params, ema_decay=RECIPE_EMA, accumulate=RECIPE_ACCUMULATE)
    recipe_trainer = Trainer(recipe_model, recipe, runtime, World(), data, val, phase=phase.name)
    optimizer = torch.optim.AdamW(bare_model.parameters(), lr=params.lr, weight_decay=params.weight_decay)

    def order(epoch: int) -> np.ndarray:
        return epoch_order(len(data), params.seed, phase.name, epoch)

    def bare(epoch: int) -> float:
        batch, smoothing = params.batch_size, params.label_smoothing
        return timed(
            runtime, lambda: bare_epoch(bare_model, optimizer, runtime, data, order(epoch), batch, smoothing)
        )

    def template(epoch: int) -> float:
        return timed(runtime, lambda: trainer.train_epoch(order(epoch), epoch))

    def with_recipe(epoch: int) -> float:
        return timed(runtime, lambda: recipe_trainer.train_epoch(order(epoch), epoch))

    medians = interleaved({"bare": bare, "template": template, "recipe": with_recipe}, args.epochs)
    per_epoch = steps(len(data), params.batch_size) * params.batch_size
    bare_rate, loop_rate = per_epoch / medians["bare"], per_epoch / medians["template"]
    recipe_rate = recipe_trainer.batches_per_epoch * params.batch_size / medians["recipe"]
    kind = "resident" if isinstance(data.rows, Resident) else "streamed"
    shape, batch = inputs.image_shape, params.batch_size
    print(f"device: {runtime.describe()}; {len(data)} images {shape} {kind}, batch {batch}")
    spec = params.model
    size = f"widths {list(spec.widths)}" if spec.arch == "convnet" else f"{spec.hf.get(spec.arch, {})}"
    print(f"{spec.arch} {size}; median of {args.epochs} epochs each, interleaved")
    print(f"bare PyTorch loop:   {bare_rate:10.0f} images/s (channels_last model and batches, as the stage)")
    print(f"template train loop: {loop_rate:10.0f} images/s")
    print(f"  with EMA {RECIPE_EMA} + accumulate {RECIPE_ACCUMULATE}: {recipe_rate:10.0f} images/s")
    print(f"template / bare: {loop_rate / bare_rate:.2f}x images/s (target >= 0.95x)")
    print(
        f"template with EMA + accumulation / bare: {recipe_rate / bare_rate:.2f}x images/s (target >= 0.95x)"
    )


def scale_params(widths: list[int]) -> TrainParams:
    """The repository's train params with a small model, one epoch, one CPU thread."""
    section = {
        **asdict(load_section(TrainParams, "train")),
        "model": {**asdict(load_section(TrainParams, "train"))["model"], "widths": widths, "dropout": 0.0},
        "schedule": "constant",  # the timed rounds run past any end a schedule would have
        "epochs": 1,
        "min_steps": 0,
        "batch_size": 256,
        "early_stopping": {"monitor": "last", "patience": None},
        "num_threads": 1,
    }
    return from_mapping(TrainParams, section, "train")


def generated(count: int) -> Path:
    """``count`` random 32x32 RGB training images and a small val split, written once."""
    root = SCRATCH / str(count)
    done = root / "augmented" / "dataset.json"
    if done.exists() and Dataset(root / "augmented").count("real") == count:
        return root
    draws = rng(0, "bench-train", count)
    with DatasetWriter(root / "augmented", CLASSES, SHAPE) as writer:
        writer.add_split("synthetic")
        for start in range(0, count, WRITE_CHUNK):
            size = min(WRITE_CHUNK, count - start)
            writer.write(
                "real", draws.integers(0, 256, (size, *SHAPE), dtype=np.uint8), draws.integers(0, 10, size)
            )
    with DatasetWriter(root / "ingested", CLASSES, SHAPE) as writer:
        writer.write(
            VAL_SPLIT,
            draws.integers(0, 256, (VAL_IMAGES, *SHAPE), dtype=np.uint8),
            draws.integers(0, 10, VAL_IMAGES),
        )
    return root


def open_generated(count: int) -> Inputs:
    root = generated(count)
    return open_inputs(root / "augmented", root / "ingested")


def streamed_against_resident(count: int, widths: list[int], rounds: int, batches: int) -> None:
    params = scale_params(widths)
    runtime = configure("cpu", "float32", 1)
    inputs = open_generated(count)
    model = build(params, runtime, inputs, inputs.real)
    val = Feed(Resident(SplitReader.open(inputs.val, VAL_SPLIT), runtime.device), VAL_IMAGES)
    trainers = {}
    for name, rows in (
        ("resident", Resident(inputs.real, runtime.device)),
        ("streamed", Streamed(inputs.real, runtime.device, worker_count())),
    ):
        trainers[name] = Trainer(
            copy.deepcopy(model), params, runtime, World(), Feed(rows, count), val, phase="bench"
        )

    def run(trainer: Trainer) -> Callable[[int], float]:
        def epoch(round_: int) -> float:
            order = epoch_order(count, params.seed, "bench", round_)[: batches * params.batch_size]
            return timed(runtime, lambda: trainer.train_epoch(order, round_))

        return epoch

    medians = interleaved({name: run(trainer) for name, trainer in trainers.items()}, rounds)
    rate = {name: batches * params.batch_size / seconds for name, seconds in medians.items()}
    print(
        f"{count:,} images {SHAPE}, widths {widths}, batch {params.batch_size}, {runtime.describe()}; "
        f"median of {rounds} rounds of {batches} batches, interleaved"
    )
    for name, value in rate.items():
        print(f"  {name:9} {value:8.0f} images/s")
    print(f"  streamed / resident: {rate['streamed'] / rate['resident']:.2f}x (target >= 0.9x)")


def one_epoch(count: int, widths: list[int], placement: str) -> dict[str, float]:
    """The stage's train() for one epoch in this process (run as a child: its peak RSS is its own)."""
    os.environ[PLACEMENT_ENV] = placement
    inputs = open_generated(count)
    rss_before = peak_rss_mib()
    started = time.perf_counter()
    result = train(scale_params(widths), inputs, None, SCRATCH / "checkpoints" / f"{count}-{placement}")
    seconds = time.perf_counter() - started
    for checkpoints in result.checkpoints:
        checkpoints.clear()
    images = result.trainer.batches_per_epoch * result.trainer.batch_size
    return {"seconds": seconds, "images": images, "rss_mib": peak_rss_mib(), "rss_before_mib": rss_before}


def memory_scaling(counts: list[int], widths: list[int]) -> None:
    print(f"one epoch of train() per count, each in a process of its own, widths {widths}:")
    columns = ("images", "placement", "seconds", "images/s", "peak RSS MiB", "at start")
    print("  {:>10} {:>9} {:>8} {:>9} {:>13} {:>9}".format(*columns))
    rss = {}
    runs = [(count, "streamed") for count in counts] + [(counts[0], "resident")]
    for count, placement in runs:
        open_generated(count)  # written here, not in the measured child
        command = [sys.executable, __file__, "--child", str(count), placement, "--widths", *map(str, widths)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        rss[(count, placement)] = result["rss_mib"]
        seconds, rate = result["seconds"], result["images"] / result["seconds"]
        memory = f"{result['rss_mib']:13.0f} {result['rss_before_mib']:9.0f}"
        print(f"  {count:>10,} {placement:>9} {seconds:8.1f} {rate:9.0f} {memory}", flush=True)
    first, last = rss[(counts[0], "streamed")], rss[(counts[-1], "streamed")]
    compared = f"{counts[-1]:,} against {counts[0]:,} images"
    print(f"  streamed peak RSS, {compared}: {last / first:.2f}x (target <= 1.15x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs of each loop")
    parser.add_argument("--scale", action="store_true", help="streamed against resident on generated data")
    parser.add_argument("--counts", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 16], help="the model of --scale")
    parser.add_argument("--batches", type=int, default=100, help="batches per timed round of --scale")
    parser.add_argument("--arch", help="a train.model.arch (resnet, vit, ...) on generated 32x32 RGB images")
    parser.add_argument("--images", type=int, default=4096, help="generated training images of --arch")
    parser.add_argument("--child", nargs=2, metavar=("COUNT", "PLACEMENT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_epoch(int(args.child[0]), args.widths, args.child[1])))
    elif args.scale:
        streamed_against_resident(args.counts[0], args.widths, args.epochs, args.batches)
        memory_scaling(args.counts, args.widths)
    else:
        loop_overhead(args)


if __name__ == "__main__":
    main()
