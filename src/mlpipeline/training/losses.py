"""The training objective: label-smoothed cross-entropy, optionally weighted per class (for
imbalanced data), and what the loop reports beside it (the plain cross-entropy, so train and val
losses are the same quantity)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mlpipeline.training.params import ClassWeights


def smoothed_loss(
    logits: torch.Tensor, labels: torch.Tensor, smoothing: float, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The label-smoothed training objective (as ``F.cross_entropy(label_smoothing=)``: the
    cross-entropy against targets of ``1 - smoothing + smoothing / K`` and ``smoothing / K``) and
    the batch's summed plain cross-entropy. With class ``weights`` the objective is each image's
    loss weighted by its class's weight, over the batch's total weight."""
    log_probs = F.log_softmax(logits.float(), dim=1)
    nll = -log_probs.gather(1, labels[:, None]).squeeze(1)
    loss = nll if smoothing == 0 else (1 - smoothing) * nll - smoothing * log_probs.mean(dim=1)
    if weights is None:
        return loss.mean(), nll.detach().sum()
    per_image = weights[labels]
    return (loss * per_image).sum() / per_image.sum(), nll.detach().sum()


def class_weights(kind: ClassWeights, counts: np.ndarray) -> np.ndarray | None:
    """Per class, ``images / (classes x its images)`` from the training images per class
    (scikit-learn's "balanced": every class then weighs as much in the loss as if all were
    equally common); None for ``none``. A class without training images gets weight 0 (it has no
    loss to weigh)."""
    if kind == "none":
        return None
    counts = counts.astype(np.float64)
    return np.divide(counts.sum(), len(counts) * counts, out=np.zeros(len(counts)), where=counts > 0)
