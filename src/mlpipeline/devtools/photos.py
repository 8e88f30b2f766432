"""Generated photos: a stand-in for a user's photo folder, for the tests and the photo recipe's
measured figures (``bench/photos.py``), made here with numpy and Pillow, nothing downloaded.

Each image shows one object whose silhouette is its class (a disc, a square, a triangle, a
ring, a cross, a star, a bar, a diamond: class i draws shape i modulo 8) in a random colour,
size, place, tilt and shading, on a textured background (a colour gradient, a grating at a random
angle and noise) with a few clutter blobs, under random lighting, as a JPEG or PNG of a random
size and aspect ratio. Colour, position, scale and lighting carry no information: what a photo
recipe's crops, flips and colour jitter teach a network to ignore. Every shape is symmetric
left to right, so horizontal flips keep the label. Deterministic for a seed, on one machine
(numpy's trigonometry may differ in the last bit elsewhere: not DVC-cached data).

    python -m mlpipeline.devtools.photos OUT [--classes cat0 dog bird] [--per-class 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mlpipeline.core.seeding import rng

SUPERSAMPLE = 2  # drawn at twice the size, then averaged: antialiased edges
SIDES = (48, 160)  # width and height range of the files, in pixels
Shape = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (u, v) object coordinates -> inside


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    radius, angle = np.hypot(u, v), np.arctan2(u, v)
    return radius <= 0.55 + 0.4 * np.cos(5 * angle)


SHAPES: tuple[Shape, ...] = (
    lambda u, v: u * u + v * v <= 1,  # disc
    lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.8,  # square
    lambda u, v: (v >= -0.7) & (v <= 0.9 - 1.9 * np.abs(u)),  # triangle
    lambda u, v: (u * u + v * v <= 1) & (u * u + v * v >= 0.36),  # ring
    lambda u, v: ((np.abs(u) <= 0.3) & (np.abs(v) <= 1)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1)),  # cross
    _star,
    lambda u, v: (np.abs(u) <= 1) & (np.abs(v) <= 0.3),  # bar
    lambda u, v: np.abs(u) + np.abs(v) <= 1,  # diamond
)


def photo(shape: Shape, draws: np.random.Generator) -> np.ndarray:
    """One generated photo of ``shape``: uint8 H x W x 3."""
    width, height = (int(side) for side in draws.integers(*SIDES, 2))
    rows, cols = np.mgrid[0 : height * SUPERSAMPLE, 0 : width * SUPERSAMPLE] / SUPERSAMPLE
    image = background(rows, cols, draws)
    for _ in range(int(draws.integers(0, 4))):  # clutter: small blobs of other colours
        centre, radius = draws.random(2) * (height, width), draws.uniform(0.03, 0.1) * min(height, width)
        blob = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2
        image[blob] = draws.random(3) * 255
    side = min(height, width) * draws.uniform(0.2, 0.45)  # the object's half size
    centre = (draws.uniform(side * 0.6, height - side * 0.6), draws.uniform(side * 0.6, width - side * 0.6))
    turn = draws.uniform(-0.35, 0.35)
    cos, sin = math.cos(turn), math.sin(turn)
    down, across = (rows - centre[0]) / side, (cols - centre[1]) / side
    u, v = cos * across - sin * down, sin * across + cos * down
    inside = shape(u, -v)  # v up
    shading = 1 + draws.uniform(-0.35, 0.35) * u + draws.uniform(-0.35, 0.35) * v
    colour = draws.random(3) * 200 + 30
    image[inside] = (colour[None, :] * np.clip(shading[inside], 0.3, 1.6)[:, None]).clip(0, 255)
    image = image * draws.uniform(0.6, 1.3) + draws.uniform(-30, 30)  # lighting
    image += draws.normal(0, draws.uniform(2, 10), image.shape)  # sensor noise
    pixels = image.clip(0, 255).reshape(height, SUPERSAMPLE, width, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.rint(pixels).astype(np.uint8)


def background(rows: np.ndarray, cols: np.ndarray, draws: np.random.Generator) -> np.ndarray:
    """A colour gradient with a grating at a random angle: float64 H x W x 3 in 0..255."""
    height, width = rows.max() + 1, cols.max() + 1
    start, end = draws.random(3) * 255, draws.random(3) * 255
    slope = draws.uniform(-1, 1, 2)
    ramp = np.clip(0.5 + (slope[0] * rows / height + slope[1] * cols / width) / 2, 0, 1)[..., None]
    angle, period = draws.uniform(0, math.pi), draws.uniform(4, 24)
    grating = np.sin((math.cos(angle) * cols + math.sin(angle) * rows) * (2 * math.pi / period))
    return start + (end - start) * ramp + (draws.uniform(5, 40) * grating)[..., None]


def write_photos(out: Path, classes: Sequence[str], per_class: int, seed: int = 0) -> int:
    """``per_class`` generated photos of each class under ``out/<class>/``; returns the count."""
    for index, name in enumerate(classes):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(per_class):
            draws = rng(seed, "photos", name, number)
            pixels = photo(SHAPES[index % len(SHAPES)], draws)
            fmt = "JPEG" if draws.random() < 0.7 else "PNG"
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
            (folder / f"{number:04d}.{'jpg' if fmt == 'JPEG' else 'png'}").write_bytes(buffer.getvalue())
    return len(classes) * per_class


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="the folder to write <class>/<image> into")
    parser.add_argument("--classes", nargs="+", default=["cat0", "dog", "bird"], help="class names")
    parser.add_argument("--per-class", type=int, default=100, help="photos per class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"wrote {write_photos(args.out, args.classes, args.per_class, args.seed)} photos to {args.out}")


if __name__ == "__main__":
    main()
