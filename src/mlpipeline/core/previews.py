"""Small PNG grids of images, so ``dvc plots show`` lets a person see the data and the errors."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

CELL_PX = 32  # every image is scaled to this many pixels on its longer side
GAP_PX = 2
LABEL_PX = 12


def image_grid(
    rows: Sequence[Sequence[np.ndarray]],
    row_labels: Sequence[str] | None = None,
    cell_labels: Sequence[Sequence[str]] | None = None,
) -> bytes:
    """A PNG with one row per entry of ``rows``; each image is uint8 C x H x W (C = 1 or 3).

    Row labels are drawn at the left, cell labels under each image. Images are
    scaled with nearest-neighbour so pixels stay visible. PNG bytes are
    deterministic for the same input.
    """
    cells = [[_to_rgb(image) for image in row] for row in rows]
    cols = max((len(row) for row in cells), default=0)
    left = LABEL_PX * 3 if row_labels else 0
    below = LABEL_PX if cell_labels else 0
    cell_h = CELL_PX + below
    canvas = Image.new(
        "RGB",
        (left + cols * (CELL_PX + GAP_PX) + GAP_PX, len(cells) * (cell_h + GAP_PX) + GAP_PX),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(cells):
        y = GAP_PX + r * (cell_h + GAP_PX)
        if row_labels:
            draw.text((2, y + CELL_PX // 2 - 5), row_labels[r], fill="black")
        for c, cell in enumerate(row):
            x = left + GAP_PX + c * (CELL_PX + GAP_PX)
            canvas.paste(cell, (x, y))
            if cell_labels:
                draw.text((x + 1, y + CELL_PX), cell_labels[r][c], fill="black")
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def _to_rgb(image: np.ndarray) -> Image.Image:
    array = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    picture = Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
    scale = CELL_PX / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture.resize(size, Image.Resampling.NEAREST)
