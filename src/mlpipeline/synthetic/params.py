"""The synthesize stage's params: which generator, how many images, and the glyph generator's
pose and stroke ranges. Kept below both the generators and the stage, which read them."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from mlpipeline.core.params import param, params_dataclass


@params_dataclass
class GlyphParams:
    fonts: list[str] = param(min_len=1)
    rotation: float = param(ge=0, le=180)
    scale: list[Annotated[float, Field(gt=0, le=2)]] = param(min_len=2, max_len=2)
    shear: float = param(ge=0, le=2)
    translate: float = param(ge=0, le=0.5)
    stroke: list[Annotated[float, Field(ge=-0.1, le=0.1)]] = param(min_len=2, max_len=2)
    edge_noise: float = param(ge=0, le=0.1)
    pixel_noise: float = param(ge=0, le=1)

    @model_validator(mode="after")
    def check(self) -> Self:
        for name in ("scale", "stroke"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} must be [low, high] with low <= high, got {[low, high]}")
        if len(set(self.fonts)) != len(self.fonts):
            raise ValueError("fonts lists a font twice")
        return self


@params_dataclass
class SynthesizeParams:
    count: int = param(ge=0)
    class_balance: Literal["uniform", "match_real"]
    generator: str
    glyphs: GlyphParams
    seed: int = param(ge=0)
