"""Decode image files into the pipeline's canonical form: uint8, C x H x W, one fixed size.

Ingestion and prediction both go through ``decode_image``, so a model sees at
inference exactly the preprocessing it was trained on.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from mlpipeline.core.errors import PipelineError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
FORMATS = ("PNG", "JPEG", "BMP")

Resample = Literal["nearest", "box", "bilinear", "bicubic", "lanczos"]
RESAMPLING: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
# Channel count of each 8-bit Pillow mode we accept as it is.
_MODE_CHANNELS = {"1": 1, "L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4, "YCbCr": 3}


def decode_image(
    data: bytes,
    name: str,
    channels: int,
    size: tuple[int, int],
    resample: Resample,
) -> np.ndarray:
    """Return the image in ``data`` as uint8 ``channels x H x W`` at ``size`` (H, W).

    Raises ``PipelineError`` naming ``name`` for an empty or undecodable file, a
    format other than PNG/JPEG/BMP, or a channel count other than ``channels``.
    Images of another size are resized with ``resample``; Pillow antialiases
    every filter but ``nearest`` when shrinking.
    """
    if not data:
        raise PipelineError(f"{name}: file is empty")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return _canonical(image, name, channels, size, resample)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise PipelineError(f"{name}: not a decodable image (expected PNG, JPEG or BMP)")


def _canonical(
    image: Image.Image, name: str, channels: int, size: tuple[int, int], resample: Resample
) -> np.ndarray:
    if image.format not in FORMATS:
        raise PipelineError(f"{name}: {image.format} images are not supported (use PNG, JPEG or BMP)")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    found = _MODE_CHANNELS.get(image.mode)
    if found is None:
        raise PipelineError(f"{name}: pixel mode {image.mode} is not supported (use 8-bit gray or RGB)")
    if found != channels:
        raise PipelineError(f"{name}: has {found} channel(s) ({image.mode}), ingest.channels is {channels}")
    image = image.convert("L" if channels == 1 else "RGB")
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), RESAMPLING[resample])
    array = np.asarray(image, dtype=np.uint8)
    array = array[None, :, :] if array.ndim == 2 else array.transpose(2, 0, 1)
    return np.ascontiguousarray(array)
