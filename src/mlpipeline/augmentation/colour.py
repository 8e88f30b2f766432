"""Colour jitter, as torchvision's ``ColorJitter``: each chosen copy's brightness, contrast and
saturation scaled by factors uniform in [1 - x, 1 + x] and its hue turned by up to ``hue`` of a
full turn either way, in that fixed order (torchvision shuffles the order per image), each an
exact integer kernel of ``augmentation.pixels``."""

from __future__ import annotations

import numpy as np

from mlpipeline.augmentation.pixels import PixelOp, hue_matrices, pixel_op, to_factors
from mlpipeline.core.bitexact import uniform
from mlpipeline.core.params import param, params_dataclass

FACTORS = ("brightness", "contrast", "saturation")


@params_dataclass
class ColourParams:
    probability: float = param(ge=0, le=1)  # share of copies whose colours are jittered
    brightness: float = param(ge=0, le=1)  # factor uniform in [1 - brightness, 1 + brightness]
    contrast: float = param(ge=0, le=1)
    saturation: float = param(ge=0, le=1)
    hue: float = param(ge=0, le=0.5)  # turn of the colour circle, uniform in [-hue, hue]

    @property
    def active(self) -> bool:
        return bool(self.probability and (self.brightness or self.contrast or self.saturation or self.hue))


def colour_ops(colour: ColourParams, n: int, draws: np.random.Generator) -> list[PixelOp]:
    """The jitter's pixel ops for a batch of ``n`` images (saturation and hue leave gray ones
    as they are). Every factor is drawn whether or not it
    is used, so switching one off leaves the others' draws as they were."""
    chosen = np.flatnonzero(draws.random(n) < colour.probability)
    spreads = [getattr(colour, name) for name in FACTORS]
    factors = [uniform(draws, 1 - spread, 1 + spread, len(chosen)) for spread in spreads]
    turns = uniform(draws, -colour.hue, colour.hue, len(chosen))
    ops = [
        pixel_op(name, chosen, to_factors(values))
        for name, spread, values in zip(FACTORS, spreads, factors, strict=True)
        if spread
    ]
    if colour.hue:
        ops.append(pixel_op("hue", chosen, hue_matrices(turns)))
    return ops
