"""The ingest stage's params: where the raw images are, how they are converted, and the split."""

from __future__ import annotations

import unicodedata
from functools import partial
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from mlpipeline.core.params import ImageSize, param, params_dataclass
from mlpipeline.ingestion.images import Preprocessing, Resample, Resize

nfc = partial(unicodedata.normalize, "NFC")
DirMd5 = Annotated[
    str,
    Field(
        pattern=r"^[0-9a-f]{32}(\.dir)?$",
        description="the md5 dvc.lock records for data/ingested (32 hex digits, .dir or not)",
    ),
]


@params_dataclass
class SplitFractions:
    train: float = param(gt=0, lt=1)
    val: float = param(gt=0, lt=1)
    test: float = param(gt=0, lt=1)

    @model_validator(mode="after")
    def check(self) -> Self:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"fractions must sum to 1, got {total:g}")
        return self


@params_dataclass
class IngestParams:
    source: str
    manifest: str | None
    classes: list[str] | None = param(min_len=2)
    channels: int = param(ge=1, le=3)
    image_size: ImageSize  # [height, width], or one side of a square
    resize: Resize  # squash | shorter-side | pad: how the aspect ratio is treated
    resample: Resample
    convert: bool
    background: int = param(ge=0, le=255)
    jpeg_draft: bool
    max_image_pixels: int = param(ge=1)
    on_bad_file: Literal["fail", "skip"]
    split: SplitFractions
    keep_train_fraction: float = param(gt=0, le=1)
    seed: int = param(ge=0)
    base: DirMd5 | None  # the previous data version, built on (docs/growing.md); None: from scratch
    compact_dead_share: float = param(ge=0, le=1)  # a kept shard's dead rows above this share: rewritten

    @model_validator(mode="after")
    def check(self) -> Self:
        if self.channels == 2:
            raise ValueError("channels must be 1 (grayscale) or 3 (RGB)")
        if self.classes is not None and len(set(map(nfc, self.classes))) != len(self.classes):
            raise ValueError(
                "classes lists a class twice (in NFC, the one spelling class names are stored in)"
            )
        return self

    def preprocessing(self) -> Preprocessing:
        size = (self.image_size[0], self.image_size[1])
        return Preprocessing(
            self.channels, size, self.resample, self.convert, self.background, self.jpeg_draft, self.resize
        )
