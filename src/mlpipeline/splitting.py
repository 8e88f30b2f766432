"""Stratified, seeded train/val/test assignment and duplicate removal: pure functions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.seeding import rng

SPLITS = ("train", "val", "test")


def find_duplicates(hashes: Sequence[str], labels: Sequence[int], names: Sequence[str]) -> np.ndarray:
    """Mask of samples to drop because an earlier sample has the same content hash.

    The first occurrence (in the given order) is kept. The same content under two
    different labels cannot be resolved safely, so it is refused, naming both files.
    """
    first: dict[str, int] = {}
    drop = np.zeros(len(hashes), dtype=bool)
    for i, digest in enumerate(hashes):
        j = first.setdefault(digest, i)
        if j == i:
            continue
        if labels[i] != labels[j]:
            raise PipelineError(
                f"{names[i]}: same image as {names[j]} but a different label; fix or remove one of them"
            )
        drop[i] = True
    return drop


def stratified_split(
    labels: np.ndarray,
    class_names: Sequence[str],
    fractions: dict[str, float],
    seed: int,
    source: str,
) -> np.ndarray:
    """Assign each sample to a split, class by class, so every split keeps the class mix.

    Returns an array of split names. Each class is shuffled with its own seeded
    stream and cut by ``fractions`` (rounded, train takes the remainder); every
    split must get at least one sample of every class, else the error names ``source``.
    """
    assignment = np.empty(len(labels), dtype=object)
    for index, name in enumerate(class_names):
        members = np.flatnonzero(labels == index)
        counts = split_counts(len(members), fractions)
        if min(counts.values()) < 1:
            need = max(len(SPLITS), _min_class_size(fractions))
            raise PipelineError(
                f"{source}: class '{name}' has {len(members)} sample(s); ingest.split "
                f"{_describe(fractions)} needs at least {need} to give every split one"
            )
        order = rng(seed, "split", name).permutation(members)
        start = 0
        for split in SPLITS:
            assignment[order[start : start + counts[split]]] = split
            start += counts[split]
    return assignment


def split_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    val = round(n * fractions["val"])
    test = round(n * fractions["test"])
    return {"train": n - val - test, "val": val, "test": test}


def keep_fraction(labels: np.ndarray, selected: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Mask keeping ``fraction`` of the ``selected`` samples per class (at least one each)."""
    keep = selected.copy()
    if fraction >= 1.0:
        return keep
    for label in np.unique(labels[selected]):
        members = np.flatnonzero(selected & (labels == label))
        kept = max(1, round(len(members) * fraction))
        dropped = rng(seed, "keep", int(label)).permutation(members)[kept:]
        keep[dropped] = False
    return keep


def _min_class_size(fractions: dict[str, float]) -> int:
    n = 1
    while min(split_counts(n, fractions).values()) < 1 and n < 10_000:
        n += 1
    return n


def _describe(fractions: dict[str, float]) -> str:
    return "/".join(f"{fractions[s]:g}" for s in SPLITS)
