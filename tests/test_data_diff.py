"""The data diff names exactly the images added, removed, relabelled and moved between two data
versions, and the report scores both models on the test images both versions hold."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from imagedata import ingest_params, make_folder, noise, run_ingest, write_png

from mlpipeline.compare.data_diff import diff_markdown, diff_versions, images_of, per_split_and_class
from mlpipeline.compare.shared_test import read_predictions, shared_accuracy, shared_markdown
from mlpipeline.ingestion.history import FolderVersion
from mlpipeline.ingestion.version import folder_reader
from mlpipeline.ingestion.version import main as version_main


@pytest.fixture(autouse=True)
def one_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLPIPELINE_WORKERS", "1")


def write_manifest(raw: Path, name: str, rows: list[tuple[str, str, str]]) -> str:
    (raw / name).write_text(
        "path,label,split\n" + "".join(f"{p},{label},{split}\n" for p, label, split in rows)
    )
    return name


def test_the_diff_names_exactly_the_changed_images(tmp_path: Path) -> None:
    raw = make_folder(tmp_path / "raw", {"a": 30, "b": 30, "c": 30})
    rows = [(f"{label}/{n:03d}.png", label, "") for label in "abc" for n in range(30)]
    before = run_ingest(ingest_params(raw, manifest=write_manifest(raw, "v1.csv", rows)), tmp_path / "v1")
    table = before.manifest.set_index("source")
    write_png(raw / "a" / "new-1.png", noise(7001))
    write_png(raw / "c" / "new-2.png", noise(7002))
    rows += [("a/new-1.png", "a", ""), ("c/new-2.png", "c", "")]
    rows = [row for row in rows if row[0] != "b/010.png"]  # removed
    rows = [(p, "c" if p == "a/020.png" else label, split) for p, label, split in rows]  # relabelled
    moved = "b/021.png"
    target = "test" if table.loc[moved, "split"] != "test" else "val"
    rows = [(p, label, target if p == moved else split) for p, label, split in rows]  # pinned elsewhere
    manifest = write_manifest(raw, "v2.csv", rows)
    after = run_ingest(
        ingest_params(raw, manifest=manifest), tmp_path / "v2", base=FolderVersion(before.root)
    )

    diff = diff_versions(
        images_of(folder_reader(before.root), "v1"), images_of(folder_reader(after.root), "v2")
    )
    assert set(diff.changes["added"]["source_now"]) == {"a/new-1.png", "c/new-2.png"}
    assert set(diff.changes["removed"]["source_base"]) == {"b/010.png"}
    assert set(diff.changes["relabelled"]["source_now"]) == {"a/020.png"}
    assert diff.changes["relabelled"][["class_base", "class_now"]].values.tolist() == [["a", "c"]]
    assert set(diff.changes["moved"]["source_now"]) == {moved}
    assert (diff.before, diff.after) == (90, 91)

    counts = per_split_and_class(diff).set_index(["split", "class"])
    assert counts["added"].sum() == 2 and counts["removed"].sum() == 1
    assert counts.loc[(table.loc[moved, "split"], "b"), "moved out"] == 1
    assert counts.loc[(target, "b"), "moved"] == 1
    text = diff_markdown(diff, "v1")
    assert text.startswith(
        "90 images at `v1`, 91 in the workspace: 2 added, 1 removed, 1 relabelled, 1 moved."
    )
    assert "- relabelled (1): `a/020.png` (a -> c)" in text and "`b/010.png`" in text


def test_no_change_says_so(tmp_path: Path) -> None:
    raw = make_folder(tmp_path / "raw", {"a": 10, "b": 10})
    first = run_ingest(ingest_params(raw), tmp_path / "v1")
    renamed = tmp_path / "renamed"
    shutil.copytree(raw, renamed, copy_function=os.link)
    (renamed / "a" / "005.png").rename(renamed / "a" / "005-renamed.png")  # the same image: no change
    second = run_ingest(ingest_params(renamed), tmp_path / "v2", base=FolderVersion(first.root))
    diff = diff_versions(
        images_of(folder_reader(first.root), "v1"), images_of(folder_reader(second.root), "v2")
    )
    assert diff.empty
    assert diff_markdown(diff, "main").endswith("Every image is where it was, with its label.")


def test_both_models_are_scored_on_the_shared_test_images_with_the_new_labels() -> None:
    base = read_predictions(b"actual,predicted,image\na,a,01\nb,b,02\nb,a,03\n", "base")
    now = read_predictions(b"actual,predicted,image\na,a,01\na,a,02\nc,c,04\n", "now")  # 02 relabelled
    figures = shared_accuracy(base, now)
    assert figures == {"shared": 2, "base_images": 3, "images": 3, "base_accuracy": 0.5, "accuracy": 1.0}
    assert shared_markdown(figures, "main") == (
        "2 of the workspace's 3 test images were test images at `main` too (of its 3). Accuracy on them, "
        "with the workspace's labels: `main` 0.5000, workspace 1.0000 (+0.5000)."
    )


def test_predictions_without_image_ids_are_named() -> None:
    with pytest.raises(ValueError, match="names no test images"):
        read_predictions(b"actual,predicted\na,a\n", "reports/evaluate/predictions.csv at main")


def test_a_version_prints_as_one_table_and_a_missing_one_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = make_folder(tmp_path / "raw", {"a": 10, "b": 10})
    run_ingest(ingest_params(raw), tmp_path / "v1")
    version_main([str(tmp_path / "v1")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "source,class,label,split,file_sha256,pixel_sha256,index,mode,error"
    assert len(lines) == 21 and lines[1].split(",")[2] == "0"  # labels stay whole numbers
    with pytest.raises(SystemExit) as caught:
        version_main([str(tmp_path / "nowhere")])
    assert caught.value.code == 2
    assert capsys.readouterr().err == (
        f"version: error: {tmp_path / 'nowhere' / 'dataset.json'}: not found (has ingest written "
        f"{tmp_path / 'nowhere'}?)\n"
    )
