"""Does the stage feed its device? The train stage's epoch loop against a plain PyTorch loop over
tensors already on the device, same model, batch and precision, for each way data reaches it.

    python bench/gpu.py                                   # on the best device: 224x224 RGB, params.yaml model
    python bench/gpu.py --arch resnet --defaults          # a transformers ResNet-50 (its own defaults)
    python bench/gpu.py --size 32 --warmup 4 --steps 8 --widths 8 16   # a tiny run (CI smokes it on CPU)

Rows: resident or streamed, without and with online augmentation (one copy per image, the
params.yaml transforms). The plain loop slices batches out of one resident uint8 tensor and
does no augmentation: it is the device's ceiling, so the ratio is how much of it the stage
keeps (target on a GPU: 0.9 or more for every row). Each figure is steady state: the device is
synchronized after ``--warmup`` steps (cuDNN's autotuner, the allocator, the page cache and the
loader's read-ahead all filled) and again after ``--steps`` more, which alone are timed. Both
loops run with the stage's thread settings (``train.num_threads`` for torch, the node's
``MLPIPELINE_WORKERS`` for readers and draw threads). Scratch data lives in .cache/bench/gpu.
On a CPU the two loops share the cores with the reads and draws, so the ratio there measures
the host's work, not a device's starvation.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import plain_step

from mlpipeline.augmentation.online import OnlineAugmentation
from mlpipeline.augmentation.params import AugmentParams
from mlpipeline.core.params import load_section
from mlpipeline.core.shard_rows import SplitReader
from mlpipeline.core.shard_writer import DatasetWriter
from mlpipeline.core.shards import Dataset
from mlpipeline.modeling.network import build_model, new_config
from mlpipeline.training.data import epoch_order
from mlpipeline.training.device import Runtime, configure
from mlpipeline.training.distributed import World
from mlpipeline.training.loader import Feed, place, rank_workers
from mlpipeline.training.loop import Trainer
from mlpipeline.training.optim import make_optimizer
from mlpipeline.training.params import TrainParams

SCRATCH = Path(".cache/bench/gpu")
CLASSES = [str(i) for i in range(10)]
STATS = ([0.5] * 3, [0.29] * 3)
WRITE_CHUNK = 1024
ROW = "{:>9} {:>7} {:>16} {:>16} {:>7}"


def write_images(root: Path, count: int, side: int) -> SplitReader:
    """``count`` random RGB images of ``side`` px with random labels, as ingest writes a split."""
    shutil.rmtree(root, ignore_errors=True)
    draws = np.random.default_rng(0)
    with DatasetWriter(root, CLASSES, (3, side, side)) as writer:
        for start in range(0, count, WRITE_CHUNK):
            n = min(WRITE_CHUNK, count - start)
            writer.write(
                "train", draws.integers(0, 256, (n, 3, side, side), dtype=np.uint8), draws.integers(0, 10, n)
            )
    return SplitReader.open(Dataset(root), "train")


def train_params(args: argparse.Namespace) -> TrainParams:
    """params.yaml's train section with this run's arch, batch, device and precision."""
    section = load_section(TrainParams, "train")
    hf = {} if args.defaults else section.model.hf  # no entry: the arch's own defaults
    model = dataclasses.replace(
        section.model, arch=args.arch or section.model.arch, widths=args.widths or section.model.widths, hf=hf
    )
    return dataclasses.replace(
        section, model=model, batch_size=args.batch, device=args.device, precision=args.precision
    )


def new_model(params: TrainParams, runtime: Runtime, side: int) -> torch.nn.Module:
    """The network the stage would build for ``params`` on 3 x ``side`` x ``side`` images."""
    spec = params.model
    config = new_config(
        spec.arch, CLASSES, [3, side, side], lambda: STATS, None, spec.widths, spec.dropout, spec.hf, None
    )
    torch.manual_seed(0)
    return runtime.place(build_model(config))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class SteadyClock:
    """Called after every step: synchronizes the device after ``warmup`` steps and after
    ``warmup + steps``, and keeps the seconds between."""

    def __init__(self, device: torch.device, warmup: int, steps: int) -> None:
        self.device, self.warmup, self.steps = device, warmup, steps
        self.done = 0
        self.started = self.seconds = 0.0

    def __call__(self) -> None:
        self.done += 1
        if self.done == self.warmup:
            synchronize(self.device)
            self.started = time.perf_counter()
        elif self.done == self.warmup + self.steps:
            synchronize(self.device)
            self.seconds = time.perf_counter() - self.started


def stage_rate(params: TrainParams, runtime: Runtime, feed: Feed, args: argparse.Namespace) -> float:
    """images/s of the stage's own epoch loop (``Trainer.train_epoch``) on ``feed``, steady state."""
    trainer = Trainer(new_model(params, runtime, args.size), params, runtime, World(), feed, feed, "bench")
    clock = SteadyClock(runtime.device, args.warmup, args.steps)
    trainer.train_epoch(epoch_order(len(feed), params.seed, "bench", 1), 1, on_batch=clock)
    return args.steps * params.batch_size / clock.seconds


def plain_rate(params: TrainParams, runtime: Runtime, args: argparse.Namespace) -> float:
    """images/s of a plain loop: batches sliced from uint8 tensors resident on the device."""
    device, batch, side = runtime.device, params.batch_size, args.size
    model = new_model(params, runtime, side)
    optimizer = make_optimizer(model, params, device)
    scaler = runtime.grad_scaler()
    count = (args.warmup + args.steps) * batch
    images = torch.randint(0, 256, (count, 3, side, side), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (count,), device=device)
    clock = SteadyClock(device, args.warmup, args.steps)
    model.train()
    for step in range(args.warmup + args.steps):
        chosen = slice(step * batch, (step + 1) * batch)
        with runtime.autocast():
            loss = F.cross_entropy(model(images[chosen]), labels[chosen])
        plain_step(loss, optimizer, scaler)
        clock()
    return args.steps * batch / clock.seconds


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be 1 or more")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--precision", default="auto", choices=["auto", "float32", "bf16", "fp16"])
    parser.add_argument(
        "--arch", help="train.model.arch: convnet or a transformers arch (default: params.yaml's)"
    )
    parser.add_argument(
        "--defaults", action="store_true", help="the arch at transformers' defaults, not params.yaml's"
    )
    parser.add_argument("--size", type=int, default=224, help="image side, px (RGB)")
    parser.add_argument("--warmup", type=positive, default=8, help="steps before the clock starts")
    parser.add_argument("--steps", type=positive, default=24, help="steps timed")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--widths", type=int, nargs="+", help="convnet widths (default: params.yaml's)")
    args = parser.parse_args()

    params = train_params(args)
    runtime = configure(params.device, params.precision, params.num_threads)  # as the stage does
    workers = rank_workers(1)  # one rank: the node's readers and draw threads
    images = (args.warmup + args.steps) * args.batch
    reader = write_images(SCRATCH / f"{args.size}-{images}", images, args.size)
    augment = load_section(AugmentParams, "augment")
    online = OnlineAugmentation(augment.transforms, augment.seed, copies=1, keep_originals=False)
    spec = params.model
    size = (
        f"widths {list(spec.widths)}" if spec.arch == "convnet" else f"{spec.hf.get(spec.arch, 'defaults')}"
    )
    print(
        f"{runtime.describe()}; {spec.arch} {size}; 3x{args.size}x{args.size}, batch {args.batch}, "
        f"{args.steps} steps timed after {args.warmup}; {workers} readers and draw threads"
    )
    plain = plain_rate(params, runtime, args)
    print(ROW.format("placement", "online", "stage images/s", "plain images/s", "ratio"))
    for placement in ("resident", "streamed"):
        for record in (None, online):
            rows = place(reader, runtime.device, placement, workers)  # type: ignore[arg-type]
            rate = stage_rate(params, runtime, Feed(rows, len(reader), record, workers=workers), args)
            cells = (
                placement,
                "yes" if record else "no",
                f"{rate:,.0f}",
                f"{plain:,.0f}",
                f"{rate / plain:.2f}",
            )
            print(ROW.format(*cells), flush=True)


if __name__ == "__main__":
    main()
