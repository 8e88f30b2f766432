"""The part of a stored image a model sees: a ``train.image_size`` window of the image ingest
stored at ``ingest.image_size``. Evaluation, export and predict take its centre (as ImageNet's
resize-then-centre-crop does: store at 256, train and evaluate at 224); training takes a window
at a random position per image instead. Slicing only, so numpy arrays and torch tensors alike,
with no arithmetic that could round."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

Images = TypeVar("Images")  # numpy arrays or torch tensors, N x C x H x W


def centre_offsets(stored: Sequence[int], size: Sequence[int]) -> tuple[int, int]:
    """Top and left of the centre ``size`` (h, w) window of a ``stored`` (H, W) image: the extra
    row or column of an odd difference goes to the bottom and right."""
    return (stored[0] - size[0]) // 2, (stored[1] - size[1]) // 2


def centre_window(images: Images, size: Sequence[int]) -> Images:
    """The centre ``size`` (h, w) window of each of ``images`` (N x C x H x W), a view."""
    height, width = images.shape[-2:]  # type: ignore[attr-defined]
    if (height, width) == tuple(size):
        return images
    top, left = centre_offsets((height, width), size)
    return images[..., top : top + size[0], left : left + size[1]]  # type: ignore[index]
