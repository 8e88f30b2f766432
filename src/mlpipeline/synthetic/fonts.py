"""Fonts for glyph rendering: matplotlib's bundled TrueType files, the same on every machine.

Relying on the system's fonts would make the synthetic data depend on what a
machine happens to have installed; matplotlib (a dependency) ships DejaVu, STIX
and Computer Modern, so a font name resolves to the same file everywhere.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import matplotlib
from matplotlib.ft2font import FT2Font

from mlpipeline.core.params import ParamError


def font_dir() -> Path:
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def available_fonts() -> list[str]:
    """Names a ``fonts`` param may use: the file stems in matplotlib's font folder."""
    return sorted(path.stem for path in font_dir().glob("*.ttf"))


def resolve_fonts(names: list[str], key: str) -> list[Path]:
    """The font file for each name; an unknown name is a ``ParamError`` naming ``key[i]``."""
    paths = []
    for i, name in enumerate(names):
        path = font_dir() / f"{name}.ttf"
        if not path.is_file():
            raise ParamError(
                f"{key}[{i}]", f"'{name}' is not a bundled font (available: {', '.join(available_fonts())})"
            )
        paths.append(path)
    return paths


@cache
def _charmap(path: Path) -> frozenset[int]:
    return frozenset(FT2Font(str(path)).get_charmap())


def has_glyph(path: Path, char: str) -> bool:
    """Whether the font maps ``char`` to a glyph of its own (not the missing-glyph box)."""
    return ord(char) in _charmap(path)
