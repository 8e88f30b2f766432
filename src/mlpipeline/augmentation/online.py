"""Online augmentation: the record the augment stage writes in its online mode, and the copies
training makes from it, batch by batch, on its own device.

Offline (the default) augment writes every copy: at scale that multiplies the training set on
disk, and again in the DVC cache. Online, ``data/augmented`` holds this record in its
``dataset.json`` (mode, transforms, seed, copies, keep_originals) and the synthetic originals,
and training reads the real originals where ingest wrote them. Each row of an epoch is then one
view of an original: the original itself (with ``keep_originals``) or its copy number k, made
by the same ``augment`` kernel when the row's batch is drawn, with draws named by (phase, epoch,
rank, step): a resumed run draws exactly what an uninterrupted one would have. The draws are
made on the host ahead of their batch (``draw_copies``, in training's draw threads) and only
the per-pixel integer work waits for the images (``BatchCopies.apply``), on their device. An epoch has as
many rows as the offline training set, so ``epochs`` and ``min_steps`` mean the same budget in
both modes; unlike offline, every epoch sees fresh copies.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mlpipeline.augmentation.transforms import Draws, Transforms, draw
from mlpipeline.core.device import staged_for, to_device
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import from_mapping
from mlpipeline.core.shards import META_FILE, Dataset

ONLINE = "online"  # attributes["mode"] of a dataset whose copies training makes


@dataclass(frozen=True)
class OnlineAugmentation:
    transforms: Transforms
    seed: int
    copies: int
    keep_originals: bool

    def attributes(self) -> dict[str, Any]:
        """The record, as augment stores it among its dataset's attributes."""
        return {"mode": ONLINE, **dataclasses.asdict(self)}

    @property
    def views(self) -> int:
        """Rows an original gives each epoch: itself (with keep_originals) and its copies."""
        return int(self.keep_originals) + self.copies

    def copy_numbers(self, rows: np.ndarray, originals: int) -> np.ndarray:
        """The view each of ``rows`` is: row r shows original ``r % originals`` as copy number
        ``r // originals`` (counted from 1 without keep_originals; 0 is the original)."""
        return rows // originals + (0 if self.keep_originals else 1)

    def draw_copies(
        self, copies: np.ndarray, image_shape: tuple[int, ...], device: torch.device, *stream: str | int
    ) -> BatchCopies | None:
        """The copies of a batch whose rows are the views ``copies``, drawn on the host from the
        named ``stream`` and staged for ``device``; None when every row is an original."""
        chosen = np.flatnonzero(copies)
        if not len(chosen):
            return None
        draws = draw(self.transforms, self.seed, (len(chosen), *image_shape), *stream)
        return BatchCopies(staged_for(torch.from_numpy(chosen), device), draws.staged_for(device))


@dataclass(frozen=True)
class BatchCopies:
    """The augmented copies of one batch, drawn before its images arrive: which of its rows are
    copies, and their draws (``augmentation.transforms.Draws``)."""

    rows: torch.Tensor  # int64 positions in the batch
    draws: Draws

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` (uint8, any device, changed in place) with the copies' rows augmented."""
        index = to_device(self.rows, images.device)
        images[index] = self.draws.to(images.device).apply(images[index])
        return images


def read_online(dataset: Dataset) -> OnlineAugmentation | None:
    """The online record of ``dataset``; None for an offline one (its copies are in its splits)."""
    attributes = dataset.info.attributes
    if attributes.get("mode") != ONLINE:
        return None
    source = str(dataset.root / META_FILE)
    try:
        transforms = from_mapping(Transforms, attributes["transforms"], "transforms", source=source)
        copies, keep = int(attributes["copies"]), attributes["keep_originals"]
        return OnlineAugmentation(transforms, int(attributes["seed"]), copies, bool(keep))
    except (KeyError, TypeError, ValueError) as exc:
        raise PipelineError(f"{source}: malformed online augmentation record ({exc!r})")
