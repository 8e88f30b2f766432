"""Class names as ingest records them: one Unicode spelling, nothing that breaks a line.

A class name ends up in ``dataset.json``, the model's label map, metrics files and every report.
A control character (a newline in a folder name, say) breaks ``dvc metrics show`` and the CSVs,
so it is refused. Two spellings of one name (NFC ``é`` and NFD ``e`` + combining accent, as
macOS writes file names) print alike but would be two classes, so names are stored in NFC: a
manifest's labels in either spelling are one class, and two class folders whose names differ
only in spelling are refused (merge them) rather than silently joined.
"""

from __future__ import annotations

import unicodedata

from mlpipeline.core.errors import PipelineError

BREAKING = ("Cc", "Zl", "Zp")  # control characters and line/paragraph separators


def class_name(raw: str, where: str) -> str:
    """``raw`` in NFC, or a one-line refusal naming ``where`` if it holds a control character."""
    if any(unicodedata.category(char) in BREAKING for char in raw):
        raise PipelineError(
            f"{where}: class name '{escaped(raw)}' holds a control character or line break; rename it"
        )
    return unicodedata.normalize("NFC", raw)


def folder_classes(folders: list[str], where: str) -> dict[str, str]:
    """Class name -> folder, for class folders; twins in two spellings are refused."""
    classes: dict[str, str] = {}
    for folder in sorted(folders):
        name = class_name(folder, f"{where}/{escaped(folder)}/")
        if name in classes:
            raise PipelineError(
                f"{where}: class folders '{escaped(classes[name])}' and '{escaped(folder)}' are one name "
                "in two Unicode spellings (NFC and NFD); merge them into one folder"
            )
        classes[name] = folder
    return classes


def escaped(text: str) -> str:
    """``text`` with control and combining characters written as escapes, so it shows on one line
    and two spellings of a name can be told apart."""
    return "".join(
        char.encode("unicode_escape").decode("ascii")
        if unicodedata.category(char) in (*BREAKING, "Mn") or char == "\\"
        else char
        for char in text
    )
