"""Training data on its way to the device: placement and batching, with a stand-in device where
the real one (MPS, CUDA) is absent."""

from __future__ import annotations

import numpy as np
import torch
from tiny_model import tiny_images

from mlpipeline.training.data import place


def test_batches_reach_an_indexed_device_without_pinning() -> None:
    """A tensor on MPS reports ``mps:0`` while the run's device is ``mps`` (and a caller's bare
    ``cuda`` meets tensors on ``cuda:0``): placement must not mistake the device's own data for
    host memory and pin it ("only dense CPU tensors can be pinned"). ``meta`` stands in here:
    its tensors report no index, so the run's device is given one."""
    images, labels = tiny_images(4, seed=0)
    split = place(images, labels, torch.device("meta"))
    batches = list(split.batches(np.arange(12), 5, torch.device("meta", 0), drop_last=False))
    assert [len(batch_labels) for _, batch_labels in batches] == [5, 5, 2]
    assert {tensor.device.type for batch in batches for tensor in batch} == {"meta"}
