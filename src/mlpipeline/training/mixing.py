"""Mixup (Zhang et al., 2018) and CutMix (Yun et al., 2019), batch-level, as timm's ``Mixup`` in
its batch mode: a mixed batch is blended with itself in reverse order (mixup) or gets a box of
it pasted in (CutMix), and the loss is the same blend of the two targets' label-smoothed losses
(the cross-entropy against the blended smoothed targets).

A batch's mix is drawn on the host from a stream named like the batch's other draws (a
resumed run draws the same), so no step waits on the device: the blend share is a Python number
and the box Python slices. The images stay uint8 and are blended in integers (the share in
1/4096 steps, the targets using that very share), so the bytes are the same on any device. The
share itself comes from numpy's ``beta``, whose libm calls may round differently on another
CPU: that moves a training run, whose bytes are promised on one machine type only, never a
data stage's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mlpipeline.core.seeding import rng
from mlpipeline.training.losses import smoothed_loss
from mlpipeline.training.params import MixingParams

SHARE_BITS = 12
SHARE_ONE = 1 << SHARE_BITS  # mixup's share, in 1/4096 steps


@dataclass(frozen=True)
class Mix:
    """One batch's mix: the share of each image that stays itself (``lam``) and, for CutMix, the
    box (top, bottom, left, right) that comes from its partner, the image at the mirrored
    position in the batch."""

    lam: float
    box: tuple[int, int, int, int] | None  # CutMix; None: mixup

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """The mixed batch (uint8, on its device)."""
        partner = images.flip(0)
        if self.box is not None:
            top, bottom, left, right = self.box
            mixed = images.clone()
            mixed[:, :, top:bottom, left:right] = partner[:, :, top:bottom, left:right]
            return mixed
        share = round(self.lam * SHARE_ONE)
        total = images.to(torch.int32) * share + partner.to(torch.int32) * (SHARE_ONE - share)
        return ((total + SHARE_ONE // 2) >> SHARE_BITS).to(torch.uint8)

    def loss(
        self, logits: torch.Tensor, labels: torch.Tensor, smoothing: float, weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``lam`` x the loss against the images' own labels + the rest x against their partners'
        (the objective, and the summed plain cross-entropy likewise)."""
        own, own_nll = smoothed_loss(logits, labels, smoothing, weights)
        other, other_nll = smoothed_loss(logits, labels.flip(0), smoothing, weights)
        return self.lam * own + (1 - self.lam) * other, self.lam * own_nll + (1 - self.lam) * other_nll

    def correct(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Right answers counted against the mixed targets: ``lam`` for the own label, the rest
        for the partner's."""
        chosen = logits.argmax(dim=1)
        own, other = (chosen == labels).sum(), (chosen == labels.flip(0)).sum()
        return self.lam * own + (1 - self.lam) * other


def draw_mix(
    mixing: MixingParams, seed: int, count: int, size: tuple[int, int], *stream: str | int
) -> Mix | None:
    """The mix of a batch of ``count`` images of ``size`` (H, W) named by ``stream``, or None when
    the batch is not mixed (too small to pair, or the probability left it out)."""
    draws = rng(seed, "mixing", *stream)
    if count < 2 or not mixing.active or draws.random() >= mixing.probability:
        return None
    cutmix = mixing.cutmix_alpha > 0 and (
        mixing.mixup_alpha == 0 or draws.random() < mixing.switch_probability
    )
    alpha = mixing.cutmix_alpha if cutmix else mixing.mixup_alpha
    lam = float(draws.beta(alpha, alpha))
    if not cutmix:
        return Mix(round(lam * SHARE_ONE) / SHARE_ONE, None)
    box = cutmix_box(lam, size, draws)
    top, bottom, left, right = box
    return Mix(1 - (bottom - top) * (right - left) / (size[0] * size[1]), box)


def cutmix_box(lam: float, size: tuple[int, int], draws: np.random.Generator) -> tuple[int, int, int, int]:
    """timm's ``rand_bbox``: a box of about ``1 - lam`` of the area, centred anywhere, clipped to
    the image (the share is then worked out from the box as clipped)."""
    height, width = size
    cut = math.sqrt(1 - lam)
    box_h, box_w = int(height * cut), int(width * cut)
    centre_y, centre_x = int(draws.integers(0, height)), int(draws.integers(0, width))
    top, bottom = max(centre_y - box_h // 2, 0), min(centre_y + box_h // 2, height)
    left, right = max(centre_x - box_w // 2, 0), min(centre_x + box_w // 2, width)
    return top, bottom, left, right
