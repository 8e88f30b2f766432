"""Export scikit-learn's bundled digits as an image folder, the demo's raw data.

The digits are 8x8 counts of set pixels in 4x4 blocks (0..16); they are written
as 8-bit grayscale PNGs (value * 255 / 16, rounded) under ``<digit>/<index>.png``,
so the demo goes through exactly the code path a user's image folder takes.
The export is committed to git: a fresh clone has its raw data with no remote.
Usage: ``python -m mlpipeline.devtools.demo data/raw/digits``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

DIGITS_MAX = 16


def digits_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map digits' 0..16 block counts onto 0..255, the range images are stored in."""
    return np.rint(values.astype(np.float64) * 255.0 / DIGITS_MAX).astype(np.uint8)


def export_digits(out_dir: Path) -> int:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = digits_to_uint8(digits.images)
    for index, (image, label) in enumerate(zip(pixels, digits.target, strict=True)):
        path = out_dir / str(label) / f"{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(path, optimize=True)
    return len(pixels)


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "data/raw/digits")
    print(f"wrote {export_digits(target)} images to {target}")
