"""The ingest stage run as a user runs it: each bad input gives one line, exit 2 and no output."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO_ROOT, repo_params, run
from imagedata import make_folder, noise, write_png

from mlpipeline.core import atomic
from mlpipeline.core.shards import Dataset


def project(tmp_path: Path, **ingest: Any) -> Path:
    """A working directory holding ``raw/`` (three valid classes) and a params.yaml reading it."""
    make_folder(tmp_path / "raw", {"a": 8, "b": 6, "c": 5})
    params = repo_params()
    params["ingest"].update({"source": "raw", **ingest})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path


def run_stage(cwd: Path):
    return run(
        [sys.executable, "-m", "mlpipeline.stages.ingest"],
        cwd,
        check=False,
        env={"PYTHONPATH": str(REPO_ROOT / "src")},
        timeout=120,
    )


def manifest_without(column: str) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        rows = [
            f"{p.relative_to(root / 'raw').as_posix()},{p.parent.name}"
            for p in sorted(root.glob("raw/*/*.png"))
        ]
        (root / "raw" / "labels.csv").write_text(f"{column},label\n" + "\n".join(rows) + "\n")

    return damage


def edit_params(**changes: Any) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["ingest"].update(changes)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    return damage


def remove_class_images(root: Path) -> None:
    """All of b but 000.png and 001.png: in train and val (imagedata.make_folder), none in test."""
    for path in (root / "raw" / "b").glob("00[2-5].png"):
        path.unlink()


BAD_INPUTS: dict[str, tuple[Callable[[Path], Any], str]] = {
    "undecodable": (
        lambda root: (root / "raw/b/002.png").write_bytes(b"not a png"),
        "raw/b/002.png: not a decodable image (expected PNG, JPEG or BMP)",
    ),
    "empty file": (lambda root: (root / "raw/c/001.png").write_bytes(b""), "raw/c/001.png: file is empty"),
    "wrong channels": (
        lambda root: (
            write_png(root / "raw/a/004.png", noise(1, rgb=True)),
            edit_params(convert=False)(root),
        ),
        "raw/a/004.png: has 3 channel(s) (RGB), ingest.channels is 1",
    ),
    "single class": (
        lambda root: (shutil.rmtree(root / "raw/b"), shutil.rmtree(root / "raw/c")),
        "raw: one class only ('a'); a classifier needs at least two",
    ),
    "over the pixel limit": (
        edit_params(max_image_pixels=63),
        "19 bad files, the first: raw/a/000.png: 8x8 is 64 pixels, over the decompression-bomb limit of 63",
    ),
    "manifest outside the source": (
        edit_params(manifest="../labels.csv"),
        "ingest.manifest: '../labels.csv' points outside ingest.source, which DVC hashes",
    ),
    "label not declared": (
        edit_params(classes=["a", "b"]),
        "raw/c/000.png: label 'c' is not in ingest.classes ['a', 'b']",
    ),
    "declared class missing": (
        edit_params(classes=["a", "b", "c", "d"]),
        "raw: class 'd' in ingest.classes has no images",
    ),
    "empty class folder": (lambda root: (root / "raw/d").mkdir(), "raw/d/: class 'd' has no images"),
    "a split without a class": (
        remove_class_images,
        "raw: class 'b' has no test image (each image's split is a hash of its pixels with ingest.seed 42, "
        "and none of its 2 fell in test); add images, pin some to test with a manifest 'split' column, or "
        "change ingest.seed",
    ),
    "duplicate across labels": (
        lambda root: shutil.copy(root / "raw/a/003.png", root / "raw/c/zz.png"),
        "2 bad files, the first: raw/a/003.png: same image as c/zz.png under labels 'a', 'c'; keep one "
        "label; raw/c/zz.png: same image as a/003.png under labels 'a', 'c'; keep one label (all 2 listed",
    ),
    "manifest column": (
        lambda root: (manifest_without("file")(root), edit_params(manifest="labels.csv")(root)),
        "raw/labels.csv: manifest needs columns 'path,label', missing path",
    ),
    "manifest file missing": (
        lambda root: (
            manifest_without("path")(root),
            (root / "raw/a/000.png").unlink(),
            edit_params(manifest="labels.csv")(root),
        ),
        "raw/a/000.png: file not found",
    ),
    "source missing": (edit_params(source="nowhere"), "nowhere: source not found"),
    "unknown param": (
        edit_params(sourc="raw"),
        "params.yaml: ingest.sourc is not a known param (allowed: source, manifest, classes, channels, ",
    ),
    "fractions": (
        edit_params(split={"train": 0.8, "val": 0.15, "test": 0.15}),
        "params.yaml: ingest.split fractions must sum to 1, got 1.1",
    ),
    "wrong type": (edit_params(channels="one"), "params.yaml: ingest.channels must be an integer >= 1"),
    "a base that is no md5": (
        edit_params(base="latest"),
        "params.yaml: ingest.base must be the md5 dvc.lock records for data/ingested (32 hex digits, .dir "
        "or not) or null, got 'latest'",
    ),
    "a base not in the cache, no remote": (
        edit_params(base="0123456789abcdef0123456789abcdef"),
        "ingest.base 0123456789abcdef0123456789abcdef.dir: needs the DVC repository it came from",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_fails_cleanly(tmp_path: Path, case: str) -> None:
    damage, expected = BAD_INPUTS[case]
    root = project(tmp_path)
    damage(root)
    result = run_stage(root)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"ingest: error: {expected}")
    assert not (root / "data" / "ingested").exists()
    assert list(root.glob("data/.ingested.tmp-*")) == []


def test_good_input_writes_one_summary_line(tmp_path: Path) -> None:
    root = project(tmp_path)
    result = run_stage(root)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ingest: read 19 images in 3 classes from raw;")
    dataset = Dataset(root / "data" / "ingested")
    counts = ", ".join(f"{split} {dataset.count(split)}" for split in ("train", "val", "test"))
    assert f"wrote data/ingested ({counts}; dropped 0 duplicates, held out 0; 3 shards)" in lines[0]
    assert dataset.splits == ["test", "train", "val"]
    assert sorted(p.name for p in (root / "data").iterdir()) == ["ingested"]


def test_every_bad_file_is_listed_then_a_fixed_run_clears_the_list(tmp_path: Path) -> None:
    root = project(tmp_path)
    bad = (
        "a/003.png",
        "a/004.png",
        "b/004.png",
        "c/003.png",
    )  # each class keeps its first three: every split
    for name in bad:
        (root / "raw" / name).write_bytes(b"")
    result = run_stage(root)
    assert result.returncode == 2
    assert result.stderr.startswith("ingest: error: 4 bad files, the first: raw/a/003.png: file is empty; ")
    assert result.stderr.rstrip().endswith(
        "(all 4 listed in reports/ingest/bad_files.csv; ingest.on_bad_file: skip leaves them out)"
    )
    listed = (root / "reports/ingest/bad_files.csv").read_text().splitlines()
    assert listed == [
        "file,error",
        *(f"raw/{n},file is empty" for n in bad),
    ]
    edit_params(on_bad_file="skip")(root)
    result = run_stage(root)
    assert result.returncode == 0, result.stderr
    assert "skipped 4 bad files (see excluded.csv's error column)" in result.stderr
    assert not (root / "reports/ingest/bad_files.csv").exists()


def test_a_run_removes_what_a_killed_run_left(tmp_path: Path) -> None:
    root = project(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for leftover in (f".ingested.tmp-{atomic.HOST}-{dead.pid}", f".ingested.tmp-{dead.pid}"):
        (root / "data" / leftover).mkdir(parents=True)
        (root / "data" / leftover / "train-00000.safetensors").write_bytes(b"partial")
    assert run_stage(root).returncode == 0
    assert sorted(p.name for p in (root / "data").iterdir()) == ["ingested"]
