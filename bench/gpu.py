"""Does the stage feed its device? The train stage's epoch loop against a plain PyTorch loop over
tensors already on the device, same model, batch and precision, for each way data reaches it.

    python bench/gpu.py                                   # on the best device: 224x224 RGB, params.yaml model
    python bench/gpu.py --size 32 --images 512 --widths 8 16   # a tiny run (what CI smokes on CPU)

Rows: resident or streamed, without and with online augmentation (one copy per image, the
params.yaml transforms). The plain loop slices batches out of one resident uint8 tensor and
does no augmentation: it is the device's ceiling, so the ratio is how much of it the stage
keeps (target on a GPU: 0.9 or more for every row). Each figure is the second of two epochs
(the first warms cuDNN's autotuner, the allocator and the page cache). Scratch data lives in
.cache/bench/gpu. On a CPU the two loops share the cores with the reads and draws, so the
ratio there measures the host's work, not a device's starvation.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from collections.abc import Callable
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
from mlpipeline.core.workers import worker_count
from mlpipeline.modeling.network import ModelConfig, build_model
from mlpipeline.training.data import epoch_order
from mlpipeline.training.device import Runtime, configure
from mlpipeline.training.distributed import World
from mlpipeline.training.loader import Feed, Resident, Streamed
from mlpipeline.training.loop import Trainer
from mlpipeline.training.optim import make_optimizer
from mlpipeline.training.params import TrainParams

SCRATCH = Path(".cache/bench/gpu")
CLASSES = [str(i) for i in range(10)]
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
    section = load_section(TrainParams, "train")
    model = dataclasses.replace(section.model, widths=args.widths or section.model.widths)
    return dataclasses.replace(
        section, model=model, batch_size=args.batch, device=args.device, precision=args.precision
    )


def new_model(params: TrainParams, runtime: Runtime, side: int) -> torch.nn.Module:
    config = ModelConfig(
        classes=CLASSES,
        image_shape=[3, side, side],
        widths=list(params.model.widths),
        dropout=params.model.dropout,
        mean=[0.5] * 3,
        std=[0.29] * 3,
    )
    torch.manual_seed(0)
    return runtime.place(build_model(config))


def seconds_of_second(epoch: Callable[[int], None]) -> float:
    """Wall time of the second of two epochs (the device is synchronized at the end of each)."""
    epoch(1)
    started = time.perf_counter()
    epoch(2)
    return time.perf_counter() - started


def stage_rate(params: TrainParams, runtime: Runtime, feed: Feed, side: int) -> float:
    """images/s of the stage's own epoch loop (``Trainer.train_epoch``) on ``feed``."""
    trainer = Trainer(new_model(params, runtime, side), params, runtime, World(), feed, feed, "bench")
    steps = len(feed) // params.batch_size

    def epoch(number: int) -> None:
        order = epoch_order(len(feed), params.seed, "bench", number)
        trainer.train_epoch(order, number)  # ends in .tolist(): synchronized

    return steps * params.batch_size / seconds_of_second(epoch)


def plain_rate(params: TrainParams, runtime: Runtime, count: int, side: int) -> float:
    """images/s of a plain loop: batches sliced from uint8 tensors resident on the device."""
    device, batch = runtime.device, params.batch_size
    model = new_model(params, runtime, side)
    optimizer = make_optimizer(model, params, device)
    scaler = runtime.grad_scaler()
    images = torch.randint(0, 256, (count, 3, side, side), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (count,), device=device)
    steps = count // batch

    def epoch(_: int) -> None:
        model.train()
        for step in range(steps):
            chosen = slice(step * batch, (step + 1) * batch)
            with runtime.autocast():
                loss = F.cross_entropy(model(images[chosen]), labels[chosen])
            plain_step(loss, optimizer, scaler)
        loss.item()  # synchronized

    return steps * batch / seconds_of_second(epoch)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--precision", default="auto", choices=["auto", "float32", "bf16", "fp16"])
    parser.add_argument("--size", type=int, default=224, help="image side, px (RGB)")
    parser.add_argument("--images", type=int, default=4096, help="images per epoch")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--widths", type=int, nargs="+", help="model widths (default: params.yaml's)")
    args = parser.parse_args()

    params = train_params(args)
    runtime = configure(params.device, params.precision, 0)
    reader = write_images(SCRATCH / f"{args.size}-{args.images}", args.images, args.size)
    augment = load_section(AugmentParams, "augment")
    online = OnlineAugmentation(augment.transforms, augment.seed, copies=1, keep_originals=False)
    print(
        f"{runtime.describe()}; {args.images} images of 3x{args.size}x{args.size}, batch {args.batch}, "
        f"widths {list(params.model.widths)}, {worker_count()} workers"
    )
    plain = plain_rate(params, runtime, args.images, args.size)
    print(ROW.format("placement", "online", "stage images/s", "plain images/s", "ratio"))
    for placement in (Resident(reader, runtime.device), Streamed(reader, runtime.device, worker_count())):
        for record in (None, online):
            rate = stage_rate(params, runtime, Feed(placement, len(reader), record), args.size)
            name = "resident" if isinstance(placement, Resident) else "streamed"
            print(
                ROW.format(
                    name, "yes" if record else "no", f"{rate:,.0f}", f"{plain:,.0f}", f"{rate / plain:.2f}"
                )
            )


if __name__ == "__main__":
    main()
