"""A tiny, well-separated image dataset and a network trained on it in a second, for the
evaluate and predict tests (independent of the train stage)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mlpipeline.core.seeding import rng
from mlpipeline.core.shard_writer import DatasetWriter
from mlpipeline.modeling.files import save_model
from mlpipeline.modeling.network import ConvNet, ModelConfig, build_model, channel_stats

CLASSES = ["top", "left", "center"]
SHAPE = (1, 8, 8)


def tiny_images(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy 8x8 images of three shapes: a bright top half, left half, or centre square."""
    masks = np.zeros((3, 8, 8), dtype=bool)
    masks[0, :4, :] = True
    masks[1, :, :4] = True
    masks[2, 2:6, 2:6] = True
    labels = np.repeat(np.arange(3), per_class)
    noise = rng(seed, "tiny").integers(0, 90, size=(len(labels), 8, 8))
    images = np.where(masks[labels], 255 - noise, noise).astype(np.uint8)
    return images[:, None], labels.astype(np.int64)


def write_tiny_dataset(out_dir: Path, per_class: dict[str, int] | None = None) -> Path:
    """A dataset directory with train/val/test splits, as ingest writes it."""
    counts = per_class or {"train": 12, "val": 4, "test": 8}
    with DatasetWriter(out_dir, CLASSES, SHAPE, {"resample": "bicubic"}) as writer:
        for index, (split, count) in enumerate(counts.items()):
            writer.write(split, *tiny_images(count, seed=index))
    return out_dir


def tiny_model(steps: int = 30) -> tuple[ConvNet, ModelConfig]:
    """A small ConvNet after ``steps`` full-batch Adam steps: 30 get every tiny image right,
    5 leave a third of them wrong (useful where mistakes must exist)."""
    images, labels = tiny_images(12, seed=0)
    mean, std = channel_stats(images)
    config = ModelConfig(CLASSES, list(SHAPE), widths=[8], dropout=0.0, mean=mean, std=std)
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    inputs, targets = torch.from_numpy(images), torch.from_numpy(labels)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), config


def write_tiny_model(out_dir: Path, steps: int = 30) -> Path:
    save_model(*tiny_model(steps), out_dir)
    return out_dir
