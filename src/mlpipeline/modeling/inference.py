"""Class probabilities from a trained network: the one inference loop evaluate and predict share."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.inference_mode()
def predict_probabilities(
    model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int
) -> np.ndarray:
    """Softmax probabilities (float64, N x classes) for N >= 1 uint8 images N x C x H x W.

    Batches bound the device memory. The softmax runs in float64 (on the CPU:
    MPS has no float64), so near-certain predictions keep their tiny
    probabilities for the log-loss instead of rounding to 0 or 1 in float32.
    """
    model.eval()
    parts = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
        logits = model(batch.to(device))
        parts.append(torch.softmax(logits.cpu().double(), dim=1).numpy())
    return np.concatenate(parts)
