"""Class names and the source's spelling: what ingest writes must not depend on how a name is typed."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from imagedata import make_folder
from test_ingest import COUNTS, folder_rows, ingested, refusal, write_manifest

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
