"""Stratified, seeded train/val/test assignment and duplicate removal: pure functions."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.seeding import rng

SPLITS = ("train", "val", "test")


@dataclass
class Duplicates:
    """What ``find_duplicates`` found: copies to drop, and images filed under several labels."""

    drop: np.ndarray  # mask: a later copy of an image under one label
    conflicts: list[list[int]] = field(default_factory=list)  # rows of each image under several labels


def find_duplicates(
    keys: np.ndarray,
    candidates: np.ndarray,
    labels: np.ndarray,
    digest: Callable[[int], bytes],
) -> Duplicates:
    """Samples to drop because an earlier sample has the same content hash, and conflicts.

    ``keys`` holds a short prefix (uint32) of each sample's digest, so memory stays at a few
    bytes a sample; samples whose prefixes collide are compared by their full ``digest(i)``.
    Only ``candidates`` (a mask: decoded samples) take part. The first occurrence (in index
    order) is kept. The same content under two different labels cannot be resolved safely:
    every copy of it (whatever its label) is a conflict, each group's rows in index order, all
    of them found in one pass so a user fixes them in one run.
    """
    # In place, one 8-byte array (and the row numbers while they are merged in): at a million
    # images the temporaries of the plain expressions held 40 MB, a sixth of ingest's peak.
    packed = keys[candidates].astype(np.uint64)
    packed <<= np.uint64(32)
    packed |= np.flatnonzero(candidates).astype(np.uint64, copy=False)
    packed.sort()
    prefix = packed.view(np.uint32)[1::2] if sys.byteorder == "little" else packed.view(np.uint32)[::2]
    repeated = np.concatenate(([False], prefix[1:] == prefix[:-1], [False]))
    edges = np.diff(repeated.astype(np.int8))  # +1 where a run of equal prefixes starts, -1 after it
    found = Duplicates(np.zeros(len(keys), dtype=bool))
    for first, last in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        group = packed[first : last + 1] & np.uint64(0xFFFFFFFF)
        _sort_copies([int(i) for i in group], labels, digest, found)
    return found


def _sort_copies(
    group: list[int], labels: np.ndarray, digest: Callable[[int], bytes], found: Duplicates
) -> None:
    """Rows whose keys are equal, by whole digest: later copies dropped, or all of them a conflict."""
    copies: dict[bytes, list[int]] = {}
    for i in group:  # in index order: the packed sort put the row number in the low bits
        copies.setdefault(digest(i), []).append(i)
    for rows in copies.values():
        if len({int(labels[i]) for i in rows}) > 1:
            found.conflicts.append(rows)
        else:
            found.drop[rows[1:]] = True


SHOWN_COPIES = 3  # other copies a conflict's reason names (a blank frame may have thousands)


def conflict_reasons(
    conflicts: list[list[int]], labels: np.ndarray, classes: Sequence[str], names: dict[int, str]
) -> dict[int, str]:
    """Why each row of each conflict is refused: the other copies' ``names`` and the labels."""
    reasons = {}
    for rows in conflicts:
        filed = ", ".join(f"'{classes[c]}'" for c in sorted({int(labels[i]) for i in rows}))
        for row in rows:
            others = [names[i] for i in rows if i != row]
            more = f" and {len(others) - SHOWN_COPIES} more" if len(others) > SHOWN_COPIES else ""
            shown = ", ".join(others[:SHOWN_COPIES]) + more
            reasons[row] = f"same image as {shown} under labels {filed}; keep one label"
    return reasons


def stratified_split(
    labels: np.ndarray,
    class_names: Sequence[str],
    fractions: dict[str, float],
    seed: int,
    source: str,
) -> np.ndarray:
    """Assign each sample to a split, class by class, so every split keeps the class mix.

    Returns each sample's split as an index into ``SPLITS`` (int8). Each class is shuffled with its own seeded
    stream and cut by ``fractions`` (rounded, train takes the remainder); every
    split must get at least one sample of every class, else the error names ``source``.
    """
    assignment = np.full(len(labels), -1, dtype=np.int8)
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
        for code, split in enumerate(SPLITS):
            assignment[order[start : start + counts[split]]] = code
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
