"""The augment stage's params: offline or online, which sources, how many copies, the transforms."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import model_validator

from mlpipeline.augmentation.transforms import Transforms
from mlpipeline.core.params import param, params_dataclass


@params_dataclass
class AugmentParams:
    mode: Literal["offline", "online"]  # online: training makes the copies (augmentation.online)
    include_real: bool
    include_synthetic: bool
    copies: int = param(ge=0, le=1000)
    keep_originals: bool
    transforms: Transforms
    seed: int = param(ge=0)
    batch_size: int = param(ge=1, le=1_000_000)

    @model_validator(mode="after")
    def check(self) -> Self:
        if not (self.include_real or self.include_synthetic):
            raise ValueError("include_real and include_synthetic are both false: nothing to augment")
        if self.copies == 0 and not self.keep_originals:
            raise ValueError("copies is 0 and keep_originals is false: the output would be empty")
        return self
