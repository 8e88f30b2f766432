"""Training's ``train.image_size`` windows of the stored images: a window at a random position per
image for the training batches, the centre for validation (``core.windows``, as evaluate, export
and predict take it). The random positions are drawn on the host per batch, named by the
batch's stream like its other draws (a resumed run draws the same ones), and staged for the
device; the device gathers the windows from them without a sync."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlpipeline.core.device import to_device
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.seeding import rng
from mlpipeline.core.windows import centre_window


@dataclass(frozen=True)
class Window:
    size: tuple[int, int]  # height, width of the network's input
    stored: tuple[int, int]  # height, width of the stored images
    seed: int
    random: bool  # training batches: a random position per image; else the centre

    def offsets(self, count: int, device: torch.device, *stream: str | int) -> torch.Tensor:
        """Top and left (int64 ``count`` x 2) of a batch's random windows, staged for ``device``."""
        spans = [stored - side + 1 for stored, side in zip(self.stored, self.size, strict=True)]
        corners = torch.from_numpy(rng(self.seed, "window", *stream).integers(0, spans, (count, 2)))
        return corners.pin_memory() if device.type == "cuda" else corners  # copied without blocking

    def apply(self, images: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
        """The windows of ``images`` (N x C x H x W): at ``offsets`` (``offsets()``, random
        windows), else the centre."""
        if offsets is None:
            return centre_window(images, self.size)
        count, channels, _, width = images.shape
        corners = to_device(offsets, images.device)
        height, across = self.size
        rows = corners[:, :1] + torch.arange(height, device=images.device)  # N x h
        columns = corners[:, 1:] + torch.arange(across, device=images.device)  # N x w
        index = (rows[:, :, None] * width + columns[:, None, :]).view(count, 1, -1)
        flat = images.reshape(count, channels, -1)
        return flat.gather(2, index.expand(count, channels, -1)).view(count, channels, height, across)


def training_window(
    size: list[int] | None, stored: tuple[int, int], seed: int, source: str
) -> tuple[Window, Window] | None:
    """The training and the validation windows of ``train.image_size`` (None: the stored size,
    no window). A size larger than the stored images (``source`` names them) is refused."""
    if size is None or tuple(size) == tuple(stored):
        return None
    if any(side > limit for side, limit in zip(size, stored, strict=True)):
        raise PipelineError(
            f"params.yaml: train.image_size {list(size)} is larger than the stored images' "
            f"{list(stored)} ({source}): ingest them at least this large (ingest.image_size), "
            "or train at a smaller size"
        )
    window = (size[0], size[1])
    return Window(window, stored, seed, random=True), Window(window, stored, seed, random=False)
