"""Ingest reads only what DVC hashes of its source: ``.dvcignore``d paths and symlinked folders are
left out of a class-folder listing (and counted), refused when a manifest names them."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest
from imagedata import make_folder, noise, write_png
from test_ingest import COUNTS, ingested, refusal, write_manifest

from mlpipeline.ingestion.unhashed import Unhashed
from mlpipeline.stages.ingest import describe_read


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DVC repository (the stage runs at its root) whose .dvcignore is the project's."""
    root = tmp_path / "repo"
    (root / ".dvc").mkdir(parents=True)
    (root / ".dvcignore").write_text("__pycache__/\n*.pyc\n")
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A folder of images outside the source (and the repository)."""
    return make_folder(tmp_path / "elsewhere", {"x": 3})


def test_a_manifest_row_through_a_symlinked_folder_is_refused(repo: Path, elsewhere: Path) -> None:
    """DVC does not walk into a symlinked folder: the files it holds could change unnoticed."""
    raw = make_folder(repo / "data" / "src", COUNTS)
    (raw / "3").symlink_to(elsewhere)
    write_manifest(raw / "labels.csv", [("a/000.png", "a"), ("b/000.png", "b"), ("3/x/000.png", "3")])
    assert refusal("data/src", manifest="labels.csv") == (
        "data/src/labels.csv: line 4: '3/x/000.png' is in the symlinked folder '3', whose files "
        "DVC does not hash; ingest reads only what DVC hashes"
    )


def test_a_symlinked_folder_is_refused_even_when_it_points_inside_the_source(repo: Path) -> None:
    raw = make_folder(repo / "data" / "src", COUNTS)
    (raw / "alias").symlink_to(raw / "a")
    write_manifest(raw / "labels.csv", [("b/000.png", "b"), ("alias/000.png", "a")])
    assert "'alias/000.png' is in the symlinked folder 'alias'" in refusal("data/src", manifest="labels.csv")


def test_a_symlinked_file_is_read_as_its_target(repo: Path, elsewhere: Path) -> None:
    """DVC hashes a symlinked file by its target's content, so a change to it is seen."""
    raw = make_folder(repo / "data" / "src", COUNTS)
    (raw / "a" / "linked.png").symlink_to(write_png(elsewhere / "own.png", noise(904)))
    assert "a/linked.png" in set(ingested("data/src").manifest["source"])


def test_dvcignored_files_in_class_folders_are_left_out_and_counted(repo: Path) -> None:
    raw = make_folder(repo / "data" / "src", COUNTS)
    write_png(raw / "a" / "__pycache__" / "x.png", noise(900))
    write_png(raw / "b" / "deep" / "__pycache__" / "y.png", noise(901))
    write_png(raw / "c" / "z.pyc", noise(902))
    result = ingested("data/src")
    assert len(result.manifest) == sum(COUNTS.values())
    assert result.summary.left_out.excluded == 3
    assert "left out 3 files .dvcignore excludes" in describe_read(result.summary, "data/src")


def test_the_sources_own_dvcignore_applies(repo: Path) -> None:
    raw = make_folder(repo / "data" / "src", COUNTS)
    (raw / ".dvcignore").write_text("drafts/\n")
    write_png(raw / "a" / "drafts" / "x.png", noise(903))
    assert ingested("data/src").summary.left_out.excluded == 1


def test_a_manifest_row_naming_a_dvcignored_file_is_refused(repo: Path) -> None:
    raw = make_folder(repo / "data" / "src", COUNTS)
    write_png(raw / "a" / "__pycache__" / "x.png", noise(900))
    write_manifest(raw / "labels.csv", [("b/000.png", "b"), ("a/__pycache__/x.png", "a")])
    assert refusal("data/src", manifest="labels.csv") == (
        "data/src/labels.csv: line 3: 'a/__pycache__/x.png' is excluded by .dvcignore, so DVC does "
        "not hash it; ingest reads only what DVC hashes"
    )


def test_a_dvcignored_manifest_is_refused(repo: Path) -> None:
    raw = make_folder(repo / "data" / "src", COUNTS)
    write_manifest(raw / "__pycache__" / "labels.csv", [("../a/000.png", "a"), ("../b/000.png", "b")])
    assert "ingest.manifest: '__pycache__/labels.csv' is excluded by .dvcignore" in refusal(
        "data/src", manifest="__pycache__/labels.csv"
    )


def test_a_symlinked_class_folder_is_left_out_and_named(repo: Path, elsewhere: Path) -> None:
    raw = make_folder(repo / "data" / "src", COUNTS)
    (raw / "3").symlink_to(elsewhere / "x")
    (raw / "a" / "more").symlink_to(elsewhere)
    result = ingested("data/src")
    assert result.classes == ["a", "b", "c"] and len(result.manifest) == sum(COUNTS.values())
    assert result.summary.left_out.linked == ["3", "a/more"]
    assert "left out 2 symlinked folders (3/, a/more/): DVC does not hash their files" in describe_read(
        result.summary, "data/src"
    )


def test_outside_a_dvc_repository_dvcignore_does_not_apply(tmp_path: Path, monkeypatch) -> None:
    """DVC applies .dvcignore only inside its repository; a source elsewhere is hashed whole."""
    raw = make_folder(tmp_path / "src", COUNTS)
    (tmp_path / ".dvcignore").write_text("__pycache__/\n")
    write_png(raw / "a" / "__pycache__" / "x.png", noise(900))
    monkeypatch.chdir(tmp_path)
    assert "a/__pycache__/x.png" in set(ingested(raw).manifest["source"])


def test_ingest_reads_exactly_the_files_dvc_hashes(repo: Path, elsewhere: Path) -> None:
    """The rules above against DVC's own hashing of the stage's dependency folder."""
    from dvc.repo import Repo
    from dvc_data.hashfile.build import build

    raw = make_folder(repo / "data" / "src", COUNTS)
    write_png(raw / "a" / "__pycache__" / "x.png", noise(900))
    write_png(raw / "c" / "z.pyc", noise(902))
    (raw / "3").symlink_to(elsewhere / "x")
    (raw / "b" / "more").symlink_to(raw / "a")
    (raw / "b" / "linked.png").symlink_to(write_png(elsewhere / "own.png", noise(904)))
    os.rmdir(repo / ".dvc")
    dvc = Repo.init(str(repo), no_scm=True)
    _, _, tree = build(dvc.cache.local, str(raw), dvc.fs, "md5", ignore=dvc.dvcignore)
    hashed = {"/".join(key) for key, _, _ in tree}
    assert set(ingested("data/src").manifest["source"]) == hashed


def test_the_matcher_forgets_the_paths_it_matched(repo: Path) -> None:
    """DVC's matcher caches every path it matches: emptied after each folder, memory stays flat."""
    folder = repo / "data" / "src" / "a"
    folder.mkdir(parents=True)
    for n in range(10_000):
        (folder / f"{n}.png").touch()
    unhashed = Unhashed(str(folder.parent))
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        assert sum(1 for _ in unhashed.walk(str(folder))) == 10_000
        held = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert held < 1_000_000  # the cache held 3 MB (300 bytes a file)
