"""Random-resized crop: a random part of the image, of a random share of its area and a random
aspect ratio, resampled to the whole frame, as every ImageNet recipe crops (torchvision's
``RandomResizedCrop``).

Here the crop is resampled to the image's own size (augment writes copies of the stored size);
training then takes its ``train.image_size`` window of it, at random (``training.windows``), so
with the stored size equal to the training size this is the recipe's crop exactly. The box is
drawn as torchvision draws it: ten tries of an area share uniform in ``scale`` and an aspect ratio
log-uniform in ``ratio``, the first that fits wins, else the whole image cut to the nearest ratio
in range (a pixel at least); then a position uniform over where it fits. Its corners need not be
whole pixels. The box's outer pixel centres map onto the frame's, so no sample reads beyond the
image, and a box of the whole image is the identity.
"""

from __future__ import annotations

from typing import Annotated, Self

import numpy as np
from pydantic import Field, model_validator

from mlpipeline.augmentation.maps import Maps
from mlpipeline.core.bitexact import exp, log, uniform
from mlpipeline.core.params import param, params_dataclass

ATTEMPTS = 10  # boxes tried per image before the fallback, as torchvision tries


@params_dataclass
class CropParams:
    probability: float = param(ge=0, le=1)  # share of copies that are cropped
    scale: list[Annotated[float, Field(gt=0, le=1)]] = param(min_len=2, max_len=2)  # [low, high] area share
    ratio: list[Annotated[float, Field(gt=0, le=10)]] = param(
        min_len=2, max_len=2
    )  # [low, high] width / height

    @model_validator(mode="after")
    def check(self) -> Self:
        for name, pair in (("scale", self.scale), ("ratio", self.ratio)):
            if pair[0] > pair[1]:
                raise ValueError(f"{name} must be [low, high] with low <= high, got {pair}")
        return self

    @property
    def active(self) -> bool:
        """Off at probability 0, and when every box is the whole image (all of the area)."""
        return bool(self.probability and self.scale[0] < 1)


def crop_maps(crop: CropParams, n: int, size: tuple[int, int], draws: np.random.Generator) -> Maps:
    """Per image, the map from an output pixel to where it reads in the image: its box, scaled to
    the frame (the identity for the images the probability leaves out)."""
    height, width = size
    chosen = draws.random(n) < crop.probability
    box_w, box_h = crop_boxes(crop, n, size, draws)
    left = draws.random(n) * (width - box_w)
    top = draws.random(n) * (height - box_h)
    zeros = np.zeros(n)
    # The output's centre reads the box's centre, and its outer pixel centres the box's outer ones
    # (corners aligned): every sample lies within the image, whatever the padding.
    crop_map = Maps(
        xx=(box_w - 1) / max(width - 1, 1),
        xy=zeros,
        yx=zeros.copy(),
        yy=(box_h - 1) / max(height - 1, 1),
        x0=left + (box_w - width) / 2,
        y0=top + (box_h - height) / 2,
    )
    return crop_map.where(chosen)


def crop_boxes(
    crop: CropParams, n: int, size: tuple[int, int], draws: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Each image's box width and height in pixels (float64 N), drawn as the module says."""
    height, width = size
    area = uniform(draws, crop.scale[0], crop.scale[1], (n, ATTEMPTS)) * (height * width)
    aspect = exp(uniform(draws, log(crop.ratio[0]), log(crop.ratio[1]), (n, ATTEMPTS)))
    box_w, box_h = np.sqrt(area * aspect), np.sqrt(area / aspect)
    fits = (box_w <= width) & (box_h <= height)
    first = fits.argmax(axis=1)
    rows = np.arange(n)
    fallback_w, fallback_h = whole_image_box(crop, size)
    found = fits.any(axis=1)
    return (  # a pixel at least: a box's outer pixel centres then lie inside it
        np.maximum(np.where(found, box_w[rows, first], fallback_w), 1.0),
        np.maximum(np.where(found, box_h[rows, first], fallback_h), 1.0),
    )


def whole_image_box(crop: CropParams, size: tuple[int, int]) -> tuple[float, float]:
    """The fallback: the whole image, cut to the ratio range's nearest end if it lies outside."""
    height, width = size
    own = width / height
    if own < crop.ratio[0]:
        return float(width), width / crop.ratio[0]
    if own > crop.ratio[1]:
        return height * crop.ratio[1], float(height)
    return float(width), float(height)
