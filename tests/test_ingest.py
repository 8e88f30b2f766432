"""Ingestion: layouts, validation errors that name the file, duplicates, resizing, output format."""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
from imagedata import Output, ingest_params, make_folder, noise, run_ingest, write_png
from PIL import Image

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.shards import Dataset
from mlpipeline.ingestion import scratch, scratch_rows, sources, writing
from mlpipeline.ingestion.splitting import SPLITS
from mlpipeline.stages import ingest as ingest_stage

COUNTS = {"a": 8, "b": 6, "c": 5}
_RUNS = itertools.count()


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    """A valid image folder: three classes of distinct 8x8 gray PNGs."""
    return make_folder(tmp_path / "raw", COUNTS)


@pytest.fixture(autouse=True)
def out_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLPIPELINE_WORKERS", "1")  # tests/test_ingest_workers.py runs several
    return tmp_path


def ingested(source: Path | str, out: Path | None = None, **overrides) -> Output:
    """Ingest ``source`` (with ``overrides`` of the repository's params) and read back the output."""
    out = out or Path(source).parent / f"out-{next(_RUNS)}"
    return run_ingest(ingest_params(source, **overrides), out)


def refusal(source: Path | str, **overrides) -> str:
    with pytest.raises(PipelineError) as caught:
        ingested(source, **overrides)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- the happy paths -------------------------------------------------------------------------------


def test_folder_is_read_in_natural_order(tmp_path: Path) -> None:
    """Classes in natural order, and each split's images in the listing's order."""
    raw = make_folder(tmp_path / "raw", {"10": 4, "2": 4, "1": 4})
    result = ingested(raw)
    assert result.classes == ["1", "2", "10"]
    images = result.images()
    assert images.shape == (12, 1, 8, 8) and images.dtype == np.uint8
    listing = [f"{label}/{n:03d}.png" for label in ("1", "2", "10") for n in range(4)]
    for split in SPLITS:
        rows = result.manifest[result.manifest["split"] == split]
        assert rows["source"].tolist() == [name for name in listing if name in set(rows["source"])]
        assert rows["label"].tolist() == [result.classes.index(s.split("/")[0]) for s in rows["source"]]
    np.testing.assert_array_equal(
        result.pixels("2/003.png")[0], np.asarray(Image.open(raw / "2" / "003.png"))
    )


def test_declared_classes_fix_the_order(raw: Path) -> None:
    assert ingested(raw, classes=["c", "a", "b"]).classes == ["c", "a", "b"]


def test_every_class_reaches_every_split(raw: Path) -> None:
    manifest = ingested(raw).manifest
    table = pd.crosstab(manifest["class"], manifest["split"])
    assert (table[list(SPLITS)] >= 1).all().all()
    assert table.sum(axis=1).to_dict() == COUNTS


def test_rgb_images_with_three_channels(tmp_path: Path) -> None:
    raw = make_folder(tmp_path / "rgb", {"x": 4, "y": 4, "z": 4}, rgb=True)
    result = ingested(raw, channels=3)
    assert result.images().shape == (12, 3, 8, 8)
    pixels = np.asarray(Image.open(raw / "x" / "000.png"))
    np.testing.assert_array_equal(result.pixels("x/000.png"), pixels.transpose(2, 0, 1))


def test_jpeg_and_bmp_are_read(raw: Path) -> None:
    for fmt, suffix in (("JPEG", "jpg"), ("BMP", "bmp")):
        buffer = io.BytesIO()
        Image.fromarray(noise(99)).save(buffer, format=fmt)
        (raw / "a" / f"extra.{suffix}").write_bytes(buffer.getvalue())
    assert {"a/extra.jpg", "a/extra.bmp"} <= set(ingested(raw).manifest["source"])


def test_other_sizes_are_resized_with_the_stated_filter(raw: Path) -> None:
    big = noise(1234, size=(16, 20))
    write_png(raw / "a" / "big.png", big)
    for resample, pil_filter in (
        ("bicubic", Image.Resampling.BICUBIC),
        ("nearest", Image.Resampling.NEAREST),
    ):
        result = ingested(raw, resample=resample)
        expected = np.asarray(Image.fromarray(big).resize((8, 8), pil_filter))
        np.testing.assert_array_equal(result.pixels("a/big.png")[0], expected)


def test_image_size_sets_the_output_shape(tmp_path: Path) -> None:
    raw = make_folder(tmp_path / "raw", COUNTS, size=(5, 12))
    assert ingested(raw, image_size=[5, 12]).images().shape[1:] == (1, 5, 12)


def test_file_names_with_glob_characters(raw: Path) -> None:
    write_png(raw / "a" / "scan[1]*.png", noise(555))
    assert "a/scan[1]*.png" in set(ingested(raw).manifest["source"])


def test_hidden_files_are_skipped_and_other_files_counted(raw: Path) -> None:
    (raw / "a" / "notes.txt").write_text("not an image")
    (raw / "a" / ".DS_Store").write_bytes(b"\0")
    write_png(raw / "a" / ".thumbs" / "x.png", noise(78))
    write_png(raw / ".cache" / "x.png", noise(77))
    for fmt, suffix in (("GIF", "gif"), ("WEBP", "webp"), ("TIFF", "tiff")):
        Image.fromarray(noise(5)).save(raw / "b" / f"extra.{suffix}", format=fmt)
    result = ingested(raw)
    assert result.classes == ["a", "b", "c"] and len(result.manifest) == sum(COUNTS.values())
    assert dict(result.summary.ignored) == {".gif": 1, ".tiff": 1, ".txt": 1, ".webp": 1}


def test_source_inside_a_hidden_folder(tmp_path: Path) -> None:
    """Only hidden names below the source are skipped: .cache/raw is a source like any other."""
    raw = make_folder(tmp_path / ".cache" / "raw", COUNTS)
    assert ingested(raw).classes == ["a", "b", "c"]


# --- validation errors name the file ---------------------------------------------------------------


def test_undecodable_file(raw: Path) -> None:
    (raw / "b" / "002.png").write_bytes(b"this is text, not a PNG")
    assert refusal(raw) == f"{raw}/b/002.png: not a decodable image (expected PNG, JPEG or BMP)"


def test_truncated_file(raw: Path) -> None:
    path = raw / "b" / "002.png"
    path.write_bytes(path.read_bytes()[:40])
    assert refusal(raw).startswith(f"{raw}/b/002.png: not a decodable image")


def test_files_read_a_few_bytes_at_a_time_are_read_whole(raw: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Network file systems may answer a read with fewer bytes than asked for."""
    whole = ingested(raw)
    read = os.read
    monkeypatch.setattr(sources.os, "read", lambda fd, size: read(fd, min(size, 7)))
    assert ingested(raw).manifest.equals(whole.manifest)


def test_empty_file(raw: Path) -> None:
    (raw / "c" / "001.png").write_bytes(b"")
    assert refusal(raw) == f"{raw}/c/001.png: file is empty"


def test_unsupported_format_with_an_image_suffix(raw: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(noise(5)).save(buffer, format="GIF")
    (raw / "c" / "001.png").write_bytes(buffer.getvalue())
    assert refusal(raw).startswith(f"{raw}/c/001.png: GIF images are not supported")


def test_every_bad_file_is_listed_in_one_run(raw: Path) -> None:
    (raw / "a" / "001.png").write_bytes(b"")
    (raw / "b" / "002.png").write_bytes(b"text")
    (raw / "c" / "003.png").write_bytes(b"")
    (raw / "c" / "004.png").write_bytes(b"more text")
    with pytest.raises(PipelineError) as caught:
        ingested(raw)
    assert caught.value.files == [  # type: ignore[attr-defined]
        (f"{raw}/a/001.png", "file is empty"),
        (f"{raw}/b/002.png", "not a decodable image (expected PNG, JPEG or BMP)"),
        (f"{raw}/c/003.png", "file is empty"),
        (f"{raw}/c/004.png", "not a decodable image (expected PNG, JPEG or BMP)"),
    ]
    assert str(caught.value) == (
        f"4 bad files, the first: {raw}/a/001.png: file is empty; {raw}/b/002.png: not a decodable image "
        f"(expected PNG, JPEG or BMP); {raw}/c/003.png: file is empty"
    )


def test_bad_files_can_be_skipped_and_are_recorded(raw: Path) -> None:
    (raw / "a" / "004.png").write_bytes(b"")  # not among each class's first three (every split's)
    (raw / "b" / "005.png").write_bytes(b"text")
    result = ingested(raw, on_bad_file="skip")
    manifest = result.manifest.set_index("source")
    assert manifest.loc["a/004.png", ["split", "error", "index"]].tolist() == ["skipped", "file is empty", -1]
    assert manifest.loc["b/005.png", "error"].startswith("not a decodable image")
    assert manifest.loc["a/004.png", ["file_sha256", "pixel_sha256", "mode"]].tolist() == ["", "", ""]
    assert result.summary.counts["skipped"] == 2
    assert len(result.images()) == sum(COUNTS.values()) - 2


def test_splits_and_records_written_in_blocks_are_the_same(
    raw: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks of 4 rows (3 records) cut through classes, splits, a skipped file and a duplicate:
    the same files as one block (each row's place in its shard carries over)."""
    (raw / "b" / "002.png").write_bytes(b"")
    shutil.copy(raw / "c" / "001.png", raw / "c" / "001x.png")
    shutil.copy(raw / "a" / "004.png", raw / "a" / "004x.png")
    whole = ingested(raw, on_bad_file="skip")
    monkeypatch.setattr(writing, "ROW_BLOCK", 4)
    monkeypatch.setattr(scratch_rows, "READ_BYTES", 4 * 64)  # four 8x8 gray images
    monkeypatch.setattr(scratch, "RECORD_BLOCK", 3)
    blocks = ingested(raw, on_bad_file="skip")
    files = sorted(p.name for p in whole.root.iterdir())
    assert files == sorted(p.name for p in blocks.root.iterdir())
    for name in files:
        assert (blocks.root / name).read_bytes() == (whole.root / name).read_bytes(), name
    assert set(whole.manifest["split"]) == {*SPLITS, "skipped", "duplicate"}


def test_image_over_the_decompression_bomb_limit(raw: Path) -> None:
    write_png(raw / "a" / "huge.png", noise(3, size=(30, 20)))
    assert refusal(raw, max_image_pixels=500) == (
        f"{raw}/a/huge.png: 20x30 is 600 pixels, over the decompression-bomb limit of 500 "
        "(ingest.max_image_pixels)"
    )
    assert len(ingested(raw, max_image_pixels=600).manifest) == sum(COUNTS.values()) + 1


def test_decompression_bomb_is_refused_from_its_header(raw: Path) -> None:
    """A 20000x20000 PNG (a few hundred KB, 400 M pixels) is refused before any decoding."""
    header = io.BytesIO()
    Image.new("1", (20000, 20000)).save(header, format="PNG")
    (raw / "a" / "bomb.png").write_bytes(header.getvalue())
    assert refusal(raw).startswith(
        f"{raw}/a/bomb.png: 20000x20000 is 400,000,000 pixels, "
        "over the decompression-bomb limit of 178,956,970"
    )


def test_rgb_image_when_channels_is_one_and_conversion_is_off(raw: Path) -> None:
    write_png(raw / "a" / "004.png", noise(5, rgb=True))
    assert refusal(raw, convert=False) == (
        f"{raw}/a/004.png: has 3 channel(s) (RGB), ingest.channels is 1 (ingest.convert: true converts it)"
    )


def test_gray_image_when_channels_is_three_and_conversion_is_off(raw: Path) -> None:
    assert refusal(raw, channels=3, convert=False).startswith(
        f"19 bad files, the first: {raw}/a/000.png: has 1 channel(s) (L), ingest.channels is 3"
    )


def test_sixteen_bit_image_when_conversion_is_off(raw: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(buffer, format="PNG")
    (raw / "a" / "004.png").write_bytes(buffer.getvalue())
    assert refusal(raw, convert=False).startswith(f"{raw}/a/004.png: has 1 16-bit channel(s) (I;16)")


def test_label_outside_declared_classes(raw: Path) -> None:
    assert (
        refusal(raw, classes=["a", "b"]) == f"{raw}/c/000.png: label 'c' is not in ingest.classes ['a', 'b']"
    )


def test_declared_class_without_images(raw: Path) -> None:
    assert refusal(raw, classes=["a", "b", "c", "d"]) == f"{raw}: class 'd' in ingest.classes has no images"


def test_empty_class_folder(raw: Path) -> None:
    (raw / "d").mkdir()
    (raw / "d" / "readme.txt").write_text("no images here")
    assert refusal(raw) == f"{raw}/d/: class 'd' has no images"


def test_folder_without_class_folders(tmp_path: Path) -> None:
    write_png(tmp_path / "flat" / "0.png", noise(0))
    assert refusal(tmp_path / "flat").startswith(f"{tmp_path / 'flat'}: no class folders")


def test_single_class_is_refused(tmp_path: Path) -> None:
    raw = make_folder(tmp_path / "raw", {"cat": 10})
    assert refusal(raw) == f"{raw}: one class only ('cat'); a classifier needs at least two"


def test_a_split_without_some_class_is_refused(tmp_path: Path) -> None:
    raw = make_folder(tmp_path / "raw", {"a": 8, "b": 2})  # b's two images: in train and val
    assert refusal(raw) == (
        f"{raw}: class 'b' has no test image (each image's split is a hash of its pixels with "
        "ingest.seed 42, and none of its 2 fell in test); add images, pin some to test with a "
        "manifest 'split' column, or change ingest.seed"
    )


def test_the_refusal_counts_images_once_duplicates_are_dropped(tmp_path: Path) -> None:
    raw = make_folder(tmp_path / "raw", {"a": 8, "b": 2})
    shutil.copy(raw / "b" / "000.png", raw / "b" / "copy.png")
    assert refusal(raw).startswith(f"{raw} (1 duplicate(s) dropped): class 'b' has no test image")


def test_missing_source(tmp_path: Path) -> None:
    assert refusal(tmp_path / "nowhere").startswith(f"{tmp_path / 'nowhere'}: source not found")


def test_source_must_be_a_folder(raw: Path) -> None:
    manifest = write_manifest(raw / "labels.csv", folder_rows(raw))
    assert refusal(manifest).startswith(f"{manifest}: ingest.source must be a folder")


def test_unknown_protocol() -> None:
    assert refusal("nosuchproto://bucket/data").startswith(
        "nosuchproto://bucket/data: cannot open ingest.source"
    )


# --- duplicates ------------------------------------------------------------------------------------


def test_duplicates_with_the_same_label_are_dropped_before_splitting(raw: Path) -> None:
    for n in range(COUNTS["a"]):  # every image of class a twice more
        for copy in ("x", "y"):
            shutil.copy(raw / "a" / f"{n:03d}.png", raw / "a" / f"{n:03d}{copy}.png")
    manifest = ingested(raw).manifest
    assert (manifest["split"] == "duplicate").sum() == 2 * COUNTS["a"]
    assert set(manifest.loc[manifest["split"] == "duplicate", "source"]) == {
        f"a/{n:03d}{copy}.png" for n in range(COUNTS["a"]) for copy in "xy"
    }
    kept = manifest[manifest["split"].isin(SPLITS)]
    assert kept["pixel_sha256"].is_unique  # so no image can sit in two splits


def test_every_image_under_two_labels_is_listed_in_one_run(raw: Path) -> None:
    """Not only the first pair: every copy of every conflicting image, with the other bad files."""
    shutil.copy(raw / "a" / "003.png", raw / "c" / "zz.png")
    shutil.copy(raw / "a" / "003.png", raw / "a" / "zz.png")  # a same-label copy of it: listed too
    shutil.copy(raw / "b" / "001.png", raw / "a" / "zzz.png")
    (raw / "c" / "000.png").write_bytes(b"")
    with pytest.raises(PipelineError) as caught:
        ingested(raw)
    assert caught.value.files == [  # type: ignore[attr-defined]
        (f"{raw}/a/003.png", "same image as a/zz.png, c/zz.png under labels 'a', 'c'; keep one label"),
        (f"{raw}/a/zz.png", "same image as a/003.png, c/zz.png under labels 'a', 'c'; keep one label"),
        (f"{raw}/a/zzz.png", "same image as b/001.png under labels 'a', 'b'; keep one label"),
        (f"{raw}/b/001.png", "same image as a/zzz.png under labels 'a', 'b'; keep one label"),
        (f"{raw}/c/000.png", "file is empty"),
        (f"{raw}/c/zz.png", "same image as a/003.png, a/zz.png under labels 'a', 'c'; keep one label"),
    ]


def test_skip_leaves_every_copy_of_an_image_under_two_labels_out(raw: Path) -> None:
    shutil.copy(raw / "a" / "003.png", raw / "c" / "zz.png")
    shutil.copy(raw / "a" / "003.png", raw / "a" / "zz.png")
    (raw / "b" / "004.png").write_bytes(b"")  # not one of the first three: b keeps every split
    result = ingested(raw, on_bad_file="skip")
    manifest = result.manifest.set_index("source")
    left_out = manifest.loc[["a/003.png", "a/zz.png", "c/zz.png"]]
    assert left_out["split"].tolist() == ["skipped"] * 3 and left_out["index"].tolist() == [-1] * 3
    assert (
        left_out["error"].tolist()[2]
        == "same image as a/003.png, a/zz.png under labels 'a', 'c'; keep one label"
    )
    assert left_out["pixel_sha256"].nunique() == 1 and left_out["pixel_sha256"].iloc[0] != ""
    assert result.summary.counts["skipped"] == 4 and result.summary.conflicting == (3, 1)
    assert len(result.images()) == sum(COUNTS.values()) - 2
    line = ingest_stage.describe_read(result.summary, str(raw))
    assert (
        "skipped 1 bad files" in line and "left out 3 copies of 1 images filed under several labels" in line
    )


def test_duplicates_are_found_after_decoding(raw: Path) -> None:
    """A PNG re-encoded differently is the same image: file hashes differ, pixel hashes match."""
    pixels = np.asarray(Image.open(raw / "a" / "000.png"))
    Image.fromarray(pixels).save(raw / "a" / "recoded.png", compress_level=0)
    rows = ingested(raw).manifest.set_index("source").loc[["a/000.png", "a/recoded.png"]]
    assert rows["file_sha256"].nunique() == 2 and rows["pixel_sha256"].nunique() == 1
    assert rows["split"].tolist()[1] == "duplicate"


# --- the manifest layout ---------------------------------------------------------------------------


def write_manifest(path: Path, rows: list[tuple[str, str]], header: str = "path,label") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *(f"{p},{label}" for p, label in rows)]) + "\n")
    return path


def folder_rows(raw: Path, prefix: str = "") -> list[tuple[str, str]]:
    return [(f"{prefix}{p.parent.name}/{p.name}", p.parent.name) for p in sorted(raw.glob("*/*.png"))]


def test_manifest_gives_the_same_data_as_the_folder(raw: Path) -> None:
    from_folder = ingested(raw)
    write_manifest(raw / "meta" / "labels.csv", folder_rows(raw, prefix="../"))
    from_manifest = ingested(raw, manifest="meta/labels.csv")
    assert from_manifest.classes == ["a", "b", "c"]
    np.testing.assert_array_equal(from_manifest.images(), from_folder.images())
    np.testing.assert_array_equal(from_manifest.manifest["split"], from_folder.manifest["split"])
    assert from_manifest.manifest["source"].iloc[0] == "../a/000.png"


def test_manifest_keeps_its_row_order(raw: Path) -> None:
    """Each split's images in the manifest's row order."""
    rows = folder_rows(raw)[::-1]
    write_manifest(raw / "labels.csv", rows)
    table = ingested(raw, manifest="labels.csv").manifest
    for split in SPLITS:
        stored = table.loc[table["split"] == split, "source"].tolist()
        assert stored == [path for path, _ in rows if path in set(stored)]


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("../outside.png", "points outside ingest.source, which DVC hashes"),
        ("a/../../raw/a/000.png", "points outside ingest.source, which DVC hashes"),
        ("/etc/passwd", "is not a path inside ingest.source (absolute or a URL)"),
        ("s3://other-bucket/x.png", "is not a path inside ingest.source (absolute or a URL)"),
    ],
)
def test_manifest_paths_outside_the_source_are_refused(raw: Path, path: str, problem: str) -> None:
    write_png(raw.parent / "outside.png", noise(1000))
    write_manifest(raw / "labels.csv", [*folder_rows(raw), (path, "a")])
    assert refusal(raw, manifest="labels.csv") == f"{raw}/labels.csv: line 21: '{path}' {problem}"


def test_manifest_itself_must_be_inside_the_source(raw: Path) -> None:
    write_manifest(raw.parent / "labels.csv", folder_rows(raw, prefix="raw/"))
    assert refusal(raw, manifest="../labels.csv") == (
        "ingest.manifest: '../labels.csv' points outside ingest.source, which DVC hashes"
    )


def test_manifest_with_a_byte_order_mark(raw: Path) -> None:
    """Spreadsheets export CSV with a UTF-8 BOM; it must not hide the 'path' column."""
    manifest = write_manifest(raw / "labels.csv", folder_rows(raw))
    manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    assert len(ingested(raw, manifest="labels.csv").manifest) == sum(COUNTS.values())


def test_manifest_missing_column(raw: Path) -> None:
    manifest = write_manifest(raw / "labels.csv", folder_rows(raw), header="file,label")
    assert (
        refusal(raw, manifest="labels.csv")
        == f"{manifest}: manifest needs columns 'path,label', missing path"
    )


def test_manifest_not_found(raw: Path) -> None:
    assert refusal(raw, manifest="labels.csv").startswith(f"{raw}/labels.csv: manifest not found")


def test_manifest_missing_file(raw: Path) -> None:
    write_manifest(raw / "labels.csv", [*folder_rows(raw), ("a/nope.png", "a")])
    assert refusal(raw, manifest="labels.csv") == f"{raw}/a/nope.png: file not found"


def test_manifest_empty_label(raw: Path) -> None:
    manifest = write_manifest(raw / "labels.csv", [("a/000.png", ""), *folder_rows(raw)[1:]])
    assert refusal(raw, manifest="labels.csv") == f"{manifest}: line 2 has an empty path or label"


def test_manifest_label_outside_declared_classes(raw: Path) -> None:
    write_manifest(raw / "labels.csv", [*folder_rows(raw)[:-1], ("c/004.png", "q")])
    assert refusal(raw, manifest="labels.csv", classes=["a", "b", "c"]) == (
        f"{raw}/c/004.png: label 'q' is not in ingest.classes ['a', 'b', 'c']"
    )


def test_manifest_that_is_not_csv(raw: Path) -> None:
    (raw / "labels.csv").write_bytes(b"\xff\xfe\x00binary")
    assert refusal(raw, manifest="labels.csv").startswith(f"{raw}/labels.csv: not a readable CSV manifest")


# --- keep_train_fraction, remote filesystems, output -----------------------------------------------


def test_keep_train_fraction_thins_only_train(tmp_path: Path) -> None:
    """By a hash of each image, so a higher fraction keeps what a lower one kept, and more."""
    raw = make_folder(tmp_path / "raw", {"a": 200, "b": 100})
    splits = {
        fraction: ingested(raw, keep_train_fraction=fraction).manifest.set_index("source")["split"]
        for fraction in (1.0, 0.75, 0.5)
    }
    full, three_quarters, half = (splits[f].sort_index() for f in (1.0, 0.75, 0.5))
    assert (half[full != "train"] == full[full != "train"]).all()
    assert set(half[full == "train"]) == {"train", "held_out"}
    assert set(three_quarters[half == "train"]) == {"train"}  # nested: raising it only adds
    assert 0.4 < (half == "train").sum() / (full == "train").sum() < 0.6


def test_remote_filesystem_reads_like_a_local_folder(raw: Path, tmp_path: Path) -> None:
    memory = fsspec.filesystem("memory")
    root = f"/ingest-test-{id(raw)}"
    try:
        for path in sorted(raw.rglob("*.png")):
            memory.pipe(f"{root}/{path.relative_to(raw).as_posix()}", path.read_bytes())
        remote = ingested(f"memory://{root}", tmp_path / "remote")
        rows = [f"{p.parent.name}/{p.name},{p.parent.name}" for p in sorted(raw.rglob("*.png"))]
        memory.pipe(f"{root}/labels.csv", ("path,label\n" + "\n".join(rows) + "\n").encode())
        remote_manifest = ingested(f"memory://{root}", tmp_path / "remote-manifest", manifest="labels.csv")
        memory.rm(f"{root}/b/001.png")
        with pytest.raises(PipelineError) as caught:
            ingested(f"memory://{root}", tmp_path / "missing", manifest="labels.csv")
    finally:
        memory.rm(root, recursive=True)
    local = ingested(raw)
    np.testing.assert_array_equal(remote.images(), local.images())
    np.testing.assert_array_equal(remote_manifest.images(), local.images())
    pd.testing.assert_frame_equal(remote.manifest, local.manifest)
    assert str(caught.value) == f"memory://{root}/b/001.png: file not found"


def test_output_matches_the_manifest(raw: Path, tmp_path: Path) -> None:
    shutil.copy(raw / "a" / "000.png", raw / "a" / "dup.png")
    result = ingested(raw, tmp_path / "out")
    dataset = Dataset(tmp_path / "out")
    manifest = result.manifest
    counts = result.summary.counts
    assert sum(counts[s] for s in SPLITS) == sum(COUNTS.values())
    assert (counts["duplicate"], counts["held_out"], counts["skipped"]) == (1, 0, 0)
    assert dataset.classes == result.classes and dataset.image_shape == (1, 8, 8)
    for split in SPLITS:
        images, labels = dataset.load(split)
        rows = manifest[manifest["split"] == split]
        assert len(images) == result.summary.counts[split] == dataset.count(split)
        assert rows["index"].tolist() == list(range(len(rows)))
        for _, row in rows.iterrows():
            assert hashlib.sha256(images[row["index"]].tobytes()).hexdigest() == row["pixel_sha256"]
            assert labels[row["index"]] == row["label"] == result.classes.index(row["class"])
    assert manifest.loc[manifest["source"] == "a/dup.png", "index"].item() == -1
    assert set(manifest["mode"]) == {"L"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]  # the scratch is gone


def test_output_records_the_preprocessing(raw: Path, tmp_path: Path) -> None:
    ingested(raw, tmp_path / "out", resample="nearest", background=0)
    recorded = Dataset(tmp_path / "out").info.attributes["preprocessing"]
    assert recorded == {
        "channels": 1, "image_size": [8, 8], "resample": "nearest", "convert": True, "background": 0,
        "jpeg_draft": True,
    }  # fmt: skip


def test_output_is_byte_identical_across_runs(raw: Path, tmp_path: Path) -> None:
    for out in ("one", "two"):
        ingested(raw, tmp_path / out)
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in files:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
