"""Class names and the source's spelling: what ingest writes must not depend on how a name is typed."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from imagedata import make_folder
from test_ingest import COUNTS, folder_rows, ingested, refusal, write_manifest

from mlpipeline.core.shards import Dataset

NFC = unicodedata.normalize("NFC", "café")
NFD = unicodedata.normalize("NFD", "café")


def test_a_control_character_in_a_class_folder_is_refused(tmp_path: Path) -> None:
    raw = make_folder(tmp_path / "raw", {"a": 5, "b\nc": 5})
    assert refusal(raw) == (
        f"{raw}/b\\nc/: class name 'b\\nc' holds a control character or line break; rename it"
    )


def test_a_control_character_in_a_manifest_label_is_refused(tmp_path: Path) -> None:
    raw = make_folder(tmp_path / "raw", COUNTS)
    (raw / "labels.csv").write_text('path,label\na/000.png,a\nb/000.png,"b\tx"\n')
    assert refusal(raw, manifest="labels.csv") == (
        f"{raw}/labels.csv: line 3: class name 'b\\tx' holds a control character or line break; rename it"
    )


def test_a_class_folder_in_nfd_is_stored_in_nfc(tmp_path: Path) -> None:
    raw = make_folder(tmp_path / "raw", {"a": 5, NFD: 5})
    result = ingested(raw)
    assert result.classes == ["a", NFC]
    assert f"{NFD}/000.png" in set(result.manifest["source"])  # the file's own path


def test_class_folders_in_two_spellings_are_refused(tmp_path: Path) -> None:
    raw = make_folder(tmp_path / "raw", {"a": 5, NFC: 5, NFD: 5})
    assert refusal(raw) == (
        f"{raw}: class folders 'cafe\\u0301' and 'café' are one name in two Unicode spellings "
        "(NFC and NFD); merge them into one folder"
    )


def test_manifest_labels_in_two_spellings_are_one_class(tmp_path: Path) -> None:
    raw = make_folder(tmp_path / "raw", {"a": 5, "b": 6})
    rows = [
        (path, NFC if label == "b" and n % 2 else NFD if label == "b" else label)
        for n, (path, label) in enumerate(folder_rows(raw))
    ]
    write_manifest(raw / "labels.csv", rows)
    result = ingested(raw, manifest="labels.csv")
    assert result.classes == ["a", NFC] and set(result.manifest["class"]) == {"a", NFC}


def test_declared_classes_match_in_either_spelling(tmp_path: Path) -> None:
    raw = make_folder(tmp_path / "raw", {"a": 5, NFC: 5})
    assert ingested(raw, classes=[NFD, "a"]).classes == [NFC, "a"]


def test_the_sources_spelling_does_not_change_a_byte(tmp_path: Path, monkeypatch) -> None:
    """``./data/raw``, ``data/raw/`` and the absolute path are one source: the same output bytes,
    recorded relative to the repository (an absolute path would differ from machine to machine)."""
    (tmp_path / "repo" / ".dvc").mkdir(parents=True)
    make_folder(tmp_path / "repo" / "data" / "raw", COUNTS)
    monkeypatch.chdir(tmp_path / "repo")
    written = []
    for n, spelling in enumerate(["data/raw", "./data/raw", "data/raw/", str(tmp_path / "repo/data/raw")]):
        ingested(spelling, Path(f"out-{n}"))
        written.append({f.name: f.read_bytes() for f in sorted(Path(f"out-{n}").iterdir())})
        assert Dataset(Path(f"out-{n}")).info.attributes["source"] == "data/raw"
    assert all(files == written[0] for files in written[1:])


def test_a_source_outside_the_repository_is_recorded_whole(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "repo" / ".dvc").mkdir(parents=True)
    make_folder(tmp_path / "photos", COUNTS)
    monkeypatch.chdir(tmp_path / "repo")
    ingested(f"{tmp_path}/photos/../photos/", Path("out"))
    assert Dataset(Path("out")).info.attributes["source"] == f"{tmp_path}/photos"
