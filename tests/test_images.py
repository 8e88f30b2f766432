"""Decoding real photo collections: EXIF orientation, every pixel mode converted by the stated rule
(or refused), JPEG draft decoding, and the preprocessing record predict repeats."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from imagedata import ingest_params, make_folder, noise, run_ingest
from PIL import Image, PngImagePlugin

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.shards import Dataset
from mlpipeline.ingestion.images import Preprocessing, decode, decode_image

GRAY = Preprocessing(1, (8, 8), "bicubic", convert=True, background=255, jpeg_draft=False)
RGB = Preprocessing(3, (8, 8), "bicubic", convert=True, background=255, jpeg_draft=False)


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def grey_palette(pixels: np.ndarray) -> Image.Image:
    image = Image.new("P", pixels.shape[::-1])
    image.putpalette([v for level in range(256) for v in (level, level, level)])
    image.putdata(pixels.ravel().tolist())
    return image


def test_exif_orientation_is_applied() -> None:
    """A phone JPEG stored sideways with orientation 6 is ingested as displayed (turned clockwise)."""
    stored = np.zeros((8, 16), dtype=np.uint8)
    stored[:, :4] = 255  # a bright left edge, which the display shows at the top
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(Image.fromarray(stored), "JPEG", quality=100, exif=exif)
    result = decode(data, "phone.jpg", Preprocessing(1, (16, 8), "bicubic", True, 255, False))
    as_stored = np.asarray(Image.open(io.BytesIO(data)))
    np.testing.assert_array_equal(result.pixels[0], np.rot90(as_stored, k=-1))
    assert result.conversion.rotated and not result.conversion.converted and result.pixels[0, :4].mean() > 200


def test_multi_picture_jpeg_is_its_main_photo() -> None:
    """A phone JPEG with a gain map or depth map after the photo (Pillow's MPO) is decoded as the photo."""
    photo, extra = noise(8, rgb=True), np.zeros((8, 8, 3), dtype=np.uint8)
    data = encoded(Image.fromarray(photo), "MPO", save_all=True, append_images=[Image.fromarray(extra)])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    single = decode_image(encoded(Image.fromarray(photo), "JPEG"), "single.jpg", RGB)
    np.testing.assert_array_equal(decode_image(data, "pixel.jpg", RGB), single)


def sideways_png(where: str) -> bytes:
    """An 8x16 PNG with a bright left edge and orientation 6, stored the way ``where`` says."""
    stored = np.zeros((8, 16), dtype=np.uint8)
    stored[:, :4] = 255
    if where == "eXIf chunk":
        exif = Image.Exif()
        exif[0x0112] = 6
        return encoded(Image.fromarray(stored), exif=exif)
    text = PngImagePlugin.PngInfo()
    if where == "XMP":
        text.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>')
    else:  # ImageMagick's hex dump of the EXIF block, in a text chunk
        exif = Image.Exif()
        exif[0x0112] = 6
        dump = exif.tobytes().hex()
        text.add_text("Raw profile type exif", f"\nexif\n{len(dump) // 2}\n{dump}\n")
    return encoded(Image.fromarray(stored), pnginfo=text)


@pytest.mark.parametrize("where", ["eXIf chunk", "XMP", "Raw profile type exif"])
def test_png_orientation_is_applied_wherever_it_is_stored(where: str) -> None:
    """Every place Pillow reads an orientation from in a PNG is honoured (decode skips the EXIF
    parser only when none of them is present)."""
    result = decode(sideways_png(where), "scan.png", Preprocessing(1, (16, 8), "bicubic", True, 255, False))
    assert result.conversion.rotated and result.pixels[0, :4].mean() > 200


def test_grey_palette_is_gray_even_without_conversion() -> None:
    pixels = noise(3)
    strict = Preprocessing(1, (8, 8), "bicubic", convert=False, background=255, jpeg_draft=False)
    result = decode(encoded(grey_palette(pixels)), "grey.png", strict)
    np.testing.assert_array_equal(result.pixels[0], pixels)
    assert result.conversion.mode == "P" and not result.conversion.converted


def test_colour_palette_to_gray_is_a_conversion() -> None:
    image = Image.fromarray(noise(4, rgb=True)).quantize(16)
    result = decode(encoded(image), "colour.png", GRAY)
    np.testing.assert_array_equal(result.pixels[0], np.asarray(image.convert("RGB").convert("L")))
    assert result.conversion.converted


@pytest.mark.parametrize("channels", [1, 3])
def test_alpha_is_composited_on_the_background(channels: int) -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:4, :, 3] = 255  # top half opaque, bottom half fully transparent
    pre = Preprocessing(channels, (8, 8), "bicubic", True, background=30, jpeg_draft=False)
    result = decode(encoded(Image.fromarray(rgba, "RGBA")), "logo.png", pre)
    colour = (200, 100, 50) if channels == 3 else (round(200 * 0.299 + 100 * 0.587 + 50 * 0.114),)
    assert result.pixels[:, 0, 0].tolist() == list(colour)
    assert result.pixels[:, 7, 7].tolist() == [30] * channels
    assert result.conversion.mode == "RGBA" and result.conversion.converted


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_partial_alpha_blends_with_the_background_by_its_weight(mode: str) -> None:
    """A half-transparent pixel is the alpha-weighted mean of its colour and ``background``;
    compositing on a transparent background would give the colour itself (alpha 0 and 255 agree)."""
    alphas = np.array([1, 64, 128, 200, 254], dtype=np.uint8)
    colour = (200, 100, 50) if mode == "RGBA" else (200,)
    pixels = np.zeros((len(alphas), 8, len(colour) + 1), dtype=np.uint8)
    pixels[..., :-1] = colour
    pixels[..., -1] = alphas[:, None]
    channels = len(colour)
    pre = Preprocessing(channels, (len(alphas), 8), "nearest", True, background=30, jpeg_draft=False)
    result = decode(encoded(Image.fromarray(pixels.squeeze(), mode)), "half.png", pre)
    weight = alphas[None, :].astype(np.float64) / 255
    expected = np.array(colour, dtype=np.float64)[:, None] * weight + 30 * (1 - weight)
    np.testing.assert_allclose(result.pixels[:, :, 0], expected, rtol=0, atol=1)


def test_cmyk_jpeg_goes_through_pillows_conversion() -> None:
    data = encoded(Image.fromarray(noise(5, rgb=True)).convert("CMYK"), "JPEG", quality=95)
    result = decode(data, "print.jpg", RGB)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(result.pixels, expected)
    assert result.conversion.mode == "CMYK" and result.conversion.converted


def test_grayscale_jpeg_in_an_rgb_set_repeats_its_channel() -> None:
    data = encoded(Image.fromarray(noise(6)), "JPEG", quality=95)
    result = decode(data, "gray.jpg", RGB)
    gray = np.asarray(Image.open(io.BytesIO(data)))
    np.testing.assert_array_equal(result.pixels, np.stack([gray] * 3))
    assert result.conversion.mode == "L" and result.conversion.converted


def test_sixteen_bit_gray_is_scaled_not_clipped() -> None:
    wide = np.array([[0, 257 * 100, 65535, 32896] * 2] * 8, dtype=np.uint16)
    result = decode(encoded(Image.fromarray(wide)), "scan.png", GRAY)
    assert result.pixels[0, 0, :4].tolist() == [0, 100, 255, 128]
    assert result.conversion.mode.startswith("I") and result.conversion.converted


def test_without_conversion_a_mismatch_is_refused() -> None:
    strict = Preprocessing(3, (8, 8), "bicubic", convert=False, background=255, jpeg_draft=False)
    rgba = encoded(Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA"))
    with pytest.raises(PipelineError, match=r"^logo.png: has 4 channel\(s\) \(RGBA\), ingest.channels is 3"):
        decode_image(rgba, "logo.png", strict)


def test_jpeg_draft_decodes_large_jpegs_shrunk() -> None:
    """Draft changes pixels (libjpeg's DCT scaling before the resize), deterministically."""
    big = np.kron(noise(7, size=(16, 16)), np.ones((8, 8), dtype=np.uint8))  # 128x128
    data = encoded(Image.fromarray(big), "JPEG", quality=90)
    drafted = decode_image(data, "big.jpg", Preprocessing(1, (8, 8), "bicubic", True, 255, True))
    full = decode_image(data, "big.jpg", GRAY)
    expected = Image.open(io.BytesIO(data))
    expected.draft("L", (16, 16))  # 128 -> 16: scale 1/8, still twice the target
    assert expected.size == (16, 16)
    np.testing.assert_array_equal(drafted[0], np.asarray(expected.resize((8, 8), Image.Resampling.BICUBIC)))
    assert not np.array_equal(drafted, full)
    assert np.abs(drafted.astype(int) - full.astype(int)).mean() < 8


def test_preprocessing_round_trips_through_json() -> None:
    assert Preprocessing.from_json(RGB.to_json()) == RGB
    for bad in ({**RGB.to_json(), "channels": 2}, {**RGB.to_json(), "resample": "cubic"}, {"channels": 1}):
        with pytest.raises(ValueError):
            Preprocessing.from_json(bad)


def test_ingest_records_modes_and_counts_conversions(tmp_path: Path) -> None:
    raw = make_folder(tmp_path / "raw", {"a": 6, "b": 6})
    Image.fromarray(noise(50, rgb=True)).save(raw / "a" / "colour.png")
    Image.fromarray(np.dstack([noise(51), noise(52)]), "LA").save(raw / "b" / "alpha.png")
    grey_palette(noise(53)).save(raw / "b" / "palette.png")
    result = run_ingest(ingest_params(raw), tmp_path / "out")
    modes = result.manifest.set_index("source")["mode"]
    assert modes[["a/colour.png", "b/alpha.png", "b/palette.png", "a/000.png"]].tolist() == [
        "RGB",
        "LA",
        "P",
        "L",
    ]
    assert dict(result.summary.converted) == {"LA": 1, "RGB": 1}


def halves(size: tuple[int, int] = (20, 40)) -> bytes:
    """A gray PNG, dark on the left quarter, bright on the right quarter, mid-grey between."""
    pixels = np.full(size, 128, dtype=np.uint8)
    pixels[:, : size[1] // 4] = 0
    pixels[:, -size[1] // 4 :] = 255
    return encoded(Image.fromarray(pixels))


def resized(mode: str, size: tuple[int, int] = (10, 10)) -> np.ndarray:
    pre = Preprocessing(1, size, "bilinear", True, background=77, jpeg_draft=False, resize=mode)
    return decode_image(halves(), "wide.png", pre)[0]


def test_shorter_side_keeps_the_aspect_and_the_centre() -> None:
    """A 40x20 image at 10x10: scaled to 20x10, the centre 10 columns kept: the mid-grey band."""
    centre = resized("shorter-side")
    assert centre.shape == (10, 10)
    np.testing.assert_array_equal(centre[:, 2:-2], 128)
    assert 50 < centre[:, 0].mean() < 128 < centre[:, -1].mean() < 210  # the bands' edges, blurred


def test_pad_keeps_the_aspect_on_background_borders() -> None:
    """A 40x20 image at 10x10: scaled to 10x5, centred, rows of the background above and below."""
    padded = resized("pad")
    np.testing.assert_array_equal(padded[:2], 77)
    np.testing.assert_array_equal(padded[-3:], 77)
    assert padded[2:7, 0].max() < 40 and padded[2:7, -1].min() > 215 and (padded[2:7, 4:6] == 128).all()


def test_squash_stretches_and_every_mode_keeps_an_image_of_the_right_size() -> None:
    squashed = resized("squash")
    assert squashed[:, 0].max() < 40 and squashed[:, -1].min() > 215  # the dark and bright quarters
    for mode in ("squash", "shorter-side", "pad"):
        assert resized(mode, (6, 9)).shape == (6, 9)
        assert resized(mode, (20, 40)).tobytes() == resized("squash", (20, 40)).tobytes()  # the size already


def test_preprocessing_record_leaves_squash_out_and_reads_records_without_it() -> None:
    assert "resize" not in GRAY.to_json()  # datasets and models written before resize keep their bytes
    assert Preprocessing.from_json(GRAY.to_json()) == GRAY
    padded = Preprocessing(3, (8, 8), "bicubic", True, 255, False, resize="pad")
    assert padded.to_json()["resize"] == "pad" and Preprocessing.from_json(padded.to_json()) == padded
    with pytest.raises(ValueError, match=r"preprocessing\.resize is invalid: 'crop'"):
        Preprocessing.from_json({**padded.to_json(), "resize": "crop"})


def test_ingest_resize_param_reaches_the_dataset_record(tmp_path: Path) -> None:
    # make_folder picks images whose split is known at their own size; these are resized, so
    # enough of them that each class reaches every split
    raw = make_folder(tmp_path / "raw", {"a": 24, "b": 24}, size=(12, 24))
    result = run_ingest(ingest_params(raw, resize="shorter-side"), tmp_path / "out")
    assert Dataset(result.root).info.attributes["preprocessing"]["resize"] == "shorter-side"
    assert result.splits["train"][0].shape[1:] == (1, 8, 8)


@pytest.mark.parametrize("size", [(127, 122), (122, 127), (40, 200), (33, 33)])
def test_shorter_side_fits_any_image_size(size: tuple[int, int]) -> None:
    """The box's float arithmetic once put a corner at -7e-15 px (a 122x127 photo at 40x40),
    which Pillow refused: the photo was reported as undecodable."""
    pixels = noise(5, size, rgb=True)
    pre = Preprocessing(3, (40, 40), "bicubic", True, 255, False, resize="shorter-side")
    assert decode_image(encoded(Image.fromarray(pixels)), "photo.png", pre).shape == (3, 40, 40)
