"""Throughput of the template's training loop against a bare PyTorch loop, in one run.

Same model architecture and initial weights, same batches delivered the same way
(data placed where the device reads it fastest), same precision (autocast and a
grad scaler where the runtime uses them), same batch size, order and loss: the
bare loop does only forward, backward and step; the template's adds what the
stage needs (the LR schedule, loss and accuracy bookkeeping). Runs on whatever
device ``train.device`` picks.
Epochs alternate between the two so load changes on the machine hit both alike;
the medians are compared. Reads the train stage's inputs and params; run from the
repository root after ``dvc repro augment``:

    nice -n 10 python bench/train.py [--epochs 5]
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from mlpipeline.core.params import load_section
from mlpipeline.core.seeding import seed_everything
from mlpipeline.model import ModelConfig, build_model, channel_stats
from mlpipeline.stages.train import TRAIN_DATA, VAL_DATA
from mlpipeline.training.data import (
    REAL_SPLIT,
    SYNTHETIC_SPLIT,
    VAL_SPLIT,
    Split,
    epoch_order,
    open_inputs,
    place,
    steps,
)
from mlpipeline.training.device import Runtime, configure
from mlpipeline.training.distributed import World
from mlpipeline.training.loop import Trainer
from mlpipeline.training.params import TrainParams
from mlpipeline.training.phases import plan


def bare_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    train: Split,
    order: np.ndarray,
    batch_size: int,
    smoothing: float,
) -> None:
    """Forward, backward and step only, at the template's precision (autocast, and a grad scaler
    for fp16) on batches delivered as the template's are: the same work, none of the bookkeeping."""
    model.train()
    scaler = runtime.grad_scaler()
    for images, labels in train.batches(order, batch_size, runtime.device, drop_last=True):
        with runtime.autocast():
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs of each loop")
    args = parser.parse_args()

    params = load_section(TrainParams, "train")
    runtime = configure(params.device, params.precision, params.num_threads)
    inputs = open_inputs(TRAIN_DATA, VAL_DATA)
    mixed = replace(params, synthetic=replace(params.synthetic, use="mix"))  # one phase on all images
    (phase,) = plan(
        mixed, inputs.train.load(REAL_SPLIT), inputs.train.load(SYNTHETIC_SPLIT), inputs.train.root
    )
    images, labels = phase.images, phase.labels
    val_images, val_labels = inputs.val.load(VAL_SPLIT)
    mean, std = channel_stats(images)
    config = ModelConfig(
        inputs.classes, list(inputs.image_shape), list(params.model.widths), params.model.dropout, mean, std
    )
    seed_everything(params.seed)
    model = runtime.place(build_model(config))
    bare_model = copy.deepcopy(model)
    train = place(images, labels, runtime.device)
    val = place(val_images, val_labels, runtime.device)
    trainer = Trainer(model, params, runtime, World(), train, val, phase=phase.name)
    bare_optimizer = torch.optim.AdamW(
        bare_model.parameters(), lr=params.lr, weight_decay=params.weight_decay
    )

    def time_it(run) -> float:
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        run()
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    per_epoch = steps(len(train), params.batch_size) * params.batch_size
    bare_times, loop_times = [], []
    for epoch in range(args.epochs + 1):  # the first round warms up and is not counted
        order = epoch_order(len(train), params.seed, phase.name, epoch)
        bare = time_it(
            functools.partial(
                bare_epoch,
                bare_model,
                bare_optimizer,
                runtime,
                train,
                order,
                params.batch_size,
                params.label_smoothing,
            )
        )
        loop = time_it(functools.partial(trainer.train_epoch, order))
        if epoch:
            bare_times.append(bare)
            loop_times.append(loop)
    bare_rate = per_epoch / statistics.median(bare_times)
    loop_rate = per_epoch / statistics.median(loop_times)
    shape = tuple(inputs.image_shape)
    print(f"device: {runtime.describe()}; {len(train)} images {shape}, batch {params.batch_size}")
    print(f"widths {list(params.model.widths)}; median of {args.epochs} epochs each, interleaved")
    print(f"bare PyTorch loop:   {bare_rate:10.0f} images/s")
    print(f"template train loop: {loop_rate:10.0f} images/s")
    print(f"overhead: {100 * (bare_rate / loop_rate - 1):+.1f}% time per image (target < 15%)")


if __name__ == "__main__":
    main()
