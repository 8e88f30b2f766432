"""Decode image files into the pipeline's canonical form: uint8, C x H x W, one fixed size.

Ingestion and prediction both go through ``decode_into`` with the same ``Preprocessing``
(ingest records it in ``dataset.json``, train copies it into ``model.json``), so a model
sees at inference exactly the preprocessing it was trained on, whatever the params were.

The conversion rule, applied in this order (``convert: false`` refuses every image that
needs step 3 instead):

1. EXIF orientation is applied: images are taken as a viewer displays them.
2. JPEG only, with ``jpeg_draft``: when the image is at least 4x the target size in both
   directions, libjpeg decodes it already shrunk by 2, 4 or 8 (DCT scaling, the largest
   that keeps it at least twice the target), then step 4 resizes as usual. Faster, and the
   pixels differ slightly from a full decode: deterministic for the pinned Pillow.
3. Pixel modes: 1-bit, 8-bit gray and grey-palette images are gray; RGB and colour-palette
   images are RGB. Anything else is converted: alpha (RGBA, LA, a palette with
   transparency) is composited on the grey level ``background``; CMYK and YCbCr go through
   Pillow's conversion to RGB; 16-bit gray is scaled to 8 bits (v * 255 / 65535, rounded;
   16-bit RGB PNGs reach Pillow as 8-bit already, their high byte); RGB becomes gray by
   Pillow's ITU-R 601-2 luma, gray becomes RGB by repeating the channel.
4. Other sizes are resized with ``resample``; Pillow antialiases every filter but
   ``nearest`` when shrinking. ``resize`` says how the aspect ratio is treated: ``squash``
   stretches the image to ``image_size``; ``shorter-side`` keeps it, scaling the image until
   it covers ``image_size`` (for a square, its shorter side fits) and keeping the centre;
   ``pad`` keeps it, scaling the image until it fits inside ``image_size``, centred on the
   ``background`` grey. Cropping and scaling are one resampling (Pillow's ``box``).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mlpipeline.core.errors import PipelineError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
# MPO: a JPEG with more pictures after the main one (phones' HDR gain maps and depth maps,
# stereo cameras); Pillow opens it as its first, the photo itself, which is what is decoded.
JPEG_FORMATS = ("JPEG", "MPO")
FORMATS = ("PNG", *JPEG_FORMATS, "BMP")
# Pillow refuses images past twice its MAX_IMAGE_PIXELS (89,478,485) as decompression bombs;
# that error threshold is the default limit here, and ingest.max_image_pixels sets it.
DEFAULT_MAX_PIXELS = 2 * 89_478_485

Resample = Literal["nearest", "box", "bilinear", "bicubic", "lanczos"]
Resize = Literal["squash", "shorter-side", "pad"]  # how the aspect ratio is treated (rule step 4)
SQUASH = "squash"  # every record written before resize existed; to_json leaves it out
RESAMPLING: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_NATIVE = {1: ("1", "L"), 3: ("RGB",)}  # modes taken as they are (besides palettes, see _native)
_CHANNELS = {"1": 1, "L": 1, "I;16": 1, "I;16L": 1, "I;16B": 1, "I;16N": 1, "I": 1, "LA": 2, "La": 2}
_CHANNELS |= {"PA": 2, "RGB": 3, "YCbCr": 3, "RGBA": 4, "RGBa": 4, "CMYK": 4}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA = ("LA", "La", "PA", "RGBA", "RGBa")
# Where Pillow's getexif finds an orientation in a PNG, JPEG or BMP (EXIF, PNG text, XMP).
_ORIENTATION_SOURCES = frozenset({"exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp"})
# Pillow's own bomb check in Image.open is replaced by decode's, whose limit is a param.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class Preprocessing:
    """Everything that turns an image file into the pixels a model sees."""

    channels: int  # 1 gray, 3 RGB
    image_size: tuple[int, int]  # height, width
    resample: Resample
    convert: bool  # other pixel modes are converted by the rule above (False: refused)
    background: int  # grey level that transparent pixels are composited on
    jpeg_draft: bool  # JPEGs of 4x the size or more are decoded shrunk by libjpeg
    resize: Resize = SQUASH

    def to_json(self) -> dict[str, Any]:
        """The record, without ``resize`` when it is ``squash``: the records (and the dataset and
        model files holding them) written before it existed keep their bytes."""
        fields = {**asdict(self), "image_size": list(self.image_size)}
        if self.resize == SQUASH:
            del fields["resize"]
        return fields

    @classmethod
    def from_json(cls, raw: Any) -> Preprocessing:
        """Read what ``to_json`` wrote; ``ValueError`` names the first field that is wrong."""
        needed = set(cls.__dataclass_fields__)
        if not isinstance(raw, Mapping) or set(raw) not in (needed, needed - {"resize"}):
            raise ValueError(f"preprocessing needs exactly {sorted(needed)} (resize may be left out)")
        raw = {"resize": SQUASH, **raw}
        size = raw["image_size"]
        checks = {
            "channels": raw["channels"] in (1, 3),
            "image_size": isinstance(size, list) and len(size) == 2 and all(_whole(v, 1) for v in size),
            "resample": raw["resample"] in get_args(Resample),
            "convert": isinstance(raw["convert"], bool),
            "background": _whole(raw["background"], 0) and raw["background"] <= 255,
            "jpeg_draft": isinstance(raw["jpeg_draft"], bool),
            "resize": raw["resize"] in get_args(Resize),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"preprocessing.{bad[0]} is invalid: {raw[bad[0]]!r}")
        return cls(**{**raw, "image_size": (size[0], size[1])})


@dataclass(frozen=True)
class Conversion:
    """What decoding did to a file, for the manifest and the summary line."""

    mode: str  # the file's pixel mode as Pillow names it, before any conversion
    converted: bool  # the mode was converted (step 3 of the rule)
    rotated: bool  # an EXIF orientation was applied


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray  # uint8 C x H x W
    conversion: Conversion


def decode_image(
    data: bytes, name: str, preprocessing: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """The image in ``data`` as uint8 ``channels x H x W``; ``PipelineError`` naming ``name``."""
    return decode(data, name, preprocessing, max_pixels).pixels


def decode(
    data: bytes, name: str, preprocessing: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Decoded:
    """Decode ``data`` by the module's rule, with what was done to it (for the manifest)."""
    height, width = preprocessing.image_size
    pixels = np.empty((height, width, preprocessing.channels), dtype=np.uint8)
    with quiet_pillow():
        conversion = decode_into(pixels, data, name, preprocessing, max_pixels)
    return Decoded(np.ascontiguousarray(pixels.transpose(2, 0, 1)), conversion)


def decode_into(
    out: np.ndarray,
    data: bytes,
    name: str,
    preprocessing: Preprocessing,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Conversion:
    """Decode ``data`` by the module's rule into ``out`` (uint8 H x W x C, as Pillow lays pixels out).

    Writing in Pillow's layout lets a batch of images be transposed to C x H x W in one
    step (``decoding.decode_batch``), not one copy an image. Refuses, in one line naming
    ``name``: an empty or undecodable file, a format other than PNG/JPEG/BMP, more than
    ``max_pixels`` pixels, and (``convert`` off) a pixel mode that does not have
    ``channels`` channels. Call it under ``quiet_pillow()``.
    """
    if not data:
        raise PipelineError(f"{name}: file is empty")
    try:
        with Image.open(io.BytesIO(data)) as image:
            _check_header(image, name, max_pixels)
            target, conversion = _canonical(image, name, preprocessing)
            out[...] = np.asarray(target, dtype=np.uint8).reshape(out.shape)
            return conversion
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise PipelineError(f"{name}: not a decodable image (expected PNG, JPEG or BMP)")


@contextmanager
def quiet_pillow() -> Iterator[None]:
    """Silence Pillow's warnings about odd files, which ``decode_into`` decodes or refuses itself.

    Entered once for a batch of images, not once an image (a few microseconds each time).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _check_header(image: Image.Image, name: str, max_pixels: int) -> None:
    if image.format not in FORMATS:
        raise PipelineError(f"{name}: {image.format} images are not supported (use PNG, JPEG or BMP)")
    width, height = image.size
    if width * height > max_pixels:
        raise PipelineError(
            f"{name}: {width}x{height} is {width * height:,} pixels, over the decompression-bomb "
            f"limit of {max_pixels:,} (ingest.max_image_pixels)"
        )


def _canonical(image: Image.Image, name: str, pre: Preprocessing) -> tuple[Image.Image, Conversion]:
    """The image upright, in the target mode and size, with what was done to it."""
    mode = image.mode
    if image.format in JPEG_FORMATS and pre.jpeg_draft:
        _draft(image, pre.image_size)
    image.load()
    rotated = _orientation(image) not in (0, 1)
    upright = ImageOps.exif_transpose(image) if rotated else image
    native = _native(upright, pre.channels)
    if native is None and not pre.convert:
        _refuse(upright, name, pre.channels)
    target = native or _converted(upright, pre.channels, pre.background)
    return _resized(target, pre), Conversion(mode, native is None, rotated)


def _resized(image: Image.Image, pre: Preprocessing) -> Image.Image:
    """``image`` at ``pre.image_size``, its aspect ratio treated as ``pre.resize`` says."""
    height, width = pre.image_size
    if image.size == (width, height):
        return image
    resample = RESAMPLING[pre.resample]
    if pre.resize == SQUASH:
        return image.resize((width, height), resample)
    across, down = image.size
    if pre.resize == "shorter-side":  # the centre part of the target's shape, scaled in one pass
        # The side that covers exactly is the image's own (compared in integers); the other is
        # cut to the target's aspect: no float error can put a corner outside the image.
        if width * down >= height * across:
            box_w, box_h = float(across), min(float(down), height * across / width)
        else:
            box_w, box_h = min(float(across), width * down / height), float(down)
        box = ((across - box_w) / 2, (down - box_h) / 2, (across + box_w) / 2, (down + box_h) / 2)
        return image.resize((width, height), resample, box=box)
    scale = min(width / across, height / down)
    inner = (min(width, max(1, round(across * scale))), min(height, max(1, round(down * scale))))
    canvas = Image.new(
        image.mode, (width, height), pre.background if image.mode == "L" else (pre.background,) * 3
    )
    canvas.paste(image.resize(inner, resample), ((width - inner[0]) // 2, (height - inner[1]) // 2))
    return canvas


def _draft(image: Image.Image, size: tuple[int, int]) -> None:
    """Ask libjpeg for a DCT-scaled decode of at least twice the target, in the stored orientation."""
    height, width = size
    if _orientation(image) in (5, 6, 7, 8):  # stored sideways: the target's sides swap
        height, width = width, height
    image.draft(image.mode, (2 * width, 2 * height))


def _orientation(image: Image.Image) -> int:
    if _ORIENTATION_SOURCES.isdisjoint(image.info):  # no EXIF or XMP: skip Pillow's getexif (8 us)
        return 1
    return int(image.getexif().get(ImageOps.ExifTags.Base.Orientation, 1) or 1)


def _native(image: Image.Image, channels: int) -> Image.Image | None:
    """The image as it is if it already has ``channels`` channels (palettes expanded), else None."""
    if image.mode in _NATIVE[channels]:
        return image.convert("L") if image.mode == "1" else image
    if image.mode == "P" and "transparency" not in image.info:
        rgb = image.convert("RGB")
        if channels == 3:
            return rgb
        if _is_grey(rgb):
            return rgb.convert("L")  # exact: the luma of r = g = b is that value
    return None


def _is_grey(rgb: Image.Image) -> bool:
    pixels = np.asarray(rgb)
    return bool((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all())


def _converted(image: Image.Image, channels: int, background: int) -> Image.Image:
    target = "L" if channels == 1 else "RGB"
    if image.mode in _SIXTEEN_BIT:
        wide = np.asarray(image).astype(np.int64)
        image = Image.fromarray(((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8), "L")
    elif image.mode in _ALPHA or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (background,) * 3 + (255,)), rgba)
    return image.convert(target)


def _refuse(image: Image.Image, name: str, channels: int) -> None:
    mode = image.mode
    if mode == "P":
        mode = "palette with transparency" if "transparency" in image.info else "colour palette"
    found = _CHANNELS.get(image.mode, 4 if "transparency" in image.info else 3)
    bits = "16-bit " if image.mode in _SIXTEEN_BIT else ""
    raise PipelineError(
        f"{name}: has {found} {bits}channel(s) ({mode}), ingest.channels is {channels} "
        "(ingest.convert: true converts it)"
    )


def _whole(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least
