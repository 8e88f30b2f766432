"""Online augmentation: the record the augment stage writes in its online mode, and the copies
training makes from it, batch by batch, on its own device.

Offline (the default) augment writes every copy: at scale that multiplies the training set on
disk, and again in the DVC cache. Online, ``data/augmented`` holds this record in its
``dataset.json`` (mode, transforms, seed, copies, keep_originals) and the synthetic originals,
and training reads the real originals where ingest wrote them. Each row of an epoch is then one
view of an original: the original itself (with ``keep_originals``) or its copy number k, made
by the same ``augment`` kernel when the row's batch is drawn, with draws named by (phase, epoch,
rank, step): a resumed run draws exactly what an uninterrupted one would have. The draws are
made on the host ahead of their batch (``draw_copies``, in training's draw threads, into host
memory reused batch after batch: ``BatchCopies.empty``) and only the per-pixel integer work
(and the noise, hashed from its positions) waits for the images (``BatchCopies.apply``), on
their device. An epoch has as many rows as the offline training set, so ``epochs`` and
``min_steps`` mean the same budget in both modes; unlike offline, every epoch sees fresh copies.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mlpipeline.augmentation.transforms import Draws, Transforms, draw
from mlpipeline.core.device import to_device_all
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
        self, copies: np.ndarray, image_shape: tuple[int, ...], into: BatchCopies, *stream: str | int
    ) -> BatchCopies | None:
        """The copies of a batch whose rows are the views ``copies``, drawn on the host from the
        named ``stream`` into ``into`` (``BatchCopies.empty``, of at least the batch's rows);
        None when every row is an original."""
        chosen = np.flatnonzero(copies)
        if not len(chosen):
            return None
        rows = into.rows[: len(chosen)]
        rows.numpy()[:] = chosen
        draws = draw(self.transforms, self.seed, (len(chosen), *image_shape), *stream, into=into.draws)
        return BatchCopies(rows, draws)


@dataclass(frozen=True)
class BatchCopies:
    """The augmented copies of one batch, drawn before its images arrive: which of its rows are
    copies, and their draws (``augmentation.transforms.Draws``)."""

    rows: torch.Tensor  # int64 positions in the batch
    draws: Draws

    @classmethod
    def empty(
        cls, transforms: Transforms, capacity: int, image_shape: tuple[int, ...], pinned: bool
    ) -> BatchCopies:
        """Host memory for the copies of a batch of up to ``capacity`` rows, for ``draw_copies`` to
        fill batch after batch (pinned when bound for CUDA): 7 bytes a pixel of a copy."""
        rows = torch.empty(capacity, dtype=torch.int64, pin_memory=pinned)
        return cls(rows, Draws.empty(transforms, capacity, image_shape[1:], pinned))

    def apply(self, images: torch.Tensor, copied: torch.cuda.Event | None = None) -> torch.Tensor:
        """``images`` (uint8, any device, changed in place) with the copies' rows augmented;
        ``copied`` marks the end of the copies out of this host memory (``to_device_all``)."""
        index, *tensors = to_device_all([self.rows, *self.draws.tensors()], images.device, copied)
        images[index] = self.draws.with_tensors(tensors).apply(images[index])
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
