"""Train/val/test assignment by a keyed hash of each image, and duplicate removal: pure functions.

An image's split is a hash of its own key (its pixels' sha256, or its group's name) with
``ingest.seed``, so adding, removing or relabelling other images never moves it, and a data
version's test images stay test images in the next (docs/growing.md). Class balance holds
statistically; a split left without some class is refused.
"""

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
    preferred: np.ndarray | None = None,
) -> Duplicates:
    """Samples to drop because an earlier sample has the same content hash, and conflicts.

    ``keys`` holds a short prefix (uint32) of each sample's digest, so memory stays at a few
    bytes a sample; samples whose prefixes collide are compared by their full ``digest(i)``.
    Only ``candidates`` (a mask: decoded samples) take part. The first ``preferred`` copy (the
    one the previous data version holds, so a new copy never displaces it), else the first
    occurrence (in index order), is kept. The same content under two different labels cannot be
    resolved safely: every copy of it (whatever its label) is a conflict, each group's rows in
    index order, all of them found in one pass so a user fixes them in one run.
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
        _sort_copies([int(i) for i in group], labels, digest, found, preferred)
    return found


def _sort_copies(
    group: list[int],
    labels: np.ndarray,
    digest: Callable[[int], bytes],
    found: Duplicates,
    preferred: np.ndarray | None,
) -> None:
    """Rows whose keys are equal, by whole digest: later copies dropped, or all of them a conflict."""
    copies: dict[bytes, list[int]] = {}
    for i in group:  # in index order: the packed sort put the row number in the low bits
        copies.setdefault(digest(i), []).append(i)
    for rows in copies.values():
        if len({int(labels[i]) for i in rows}) > 1:
            found.conflicts.append(rows)
        else:
            kept = next((i for i in rows if preferred is not None and preferred[i]), rows[0])
            found.drop[[i for i in rows if i != kept]] = True


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


MASK64 = (1 << 64) - 1


def mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on uint64s: a bijection whose every output bit depends on every
    input bit, in integer numpy ops, so the same on every machine."""
    z = values.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def keyed_hash(keys: np.ndarray, seed: int, purpose: str) -> np.ndarray:
    """Each key (uint64: an image's pixel digest prefix, or its group's) hashed with ``seed`` and
    ``purpose``: uniform over the uint64s, and for a key the same whatever other keys exist."""
    salt = int(rng(seed, "keyed-hash", purpose).integers(0, MASK64, dtype=np.uint64, endpoint=True))
    return mix64(keys ^ np.uint64(salt))


def hashed_split(keys: np.ndarray, pinned: np.ndarray, fractions: dict[str, float], seed: int) -> np.ndarray:
    """Each image's split (int8 index into ``SPLITS``): its pin where ``pinned`` holds one (>= 0),
    else where its keyed hash falls among the ``fractions``' shares of the uint64 range. An image's
    split depends on that image alone (its key), never on which others exist."""
    hashed = keyed_hash(keys, seed, "split")
    bounds = np.cumsum([fractions["train"], fractions["val"]]) * 2.0**64
    limits = np.array([min(int(b), MASK64) for b in bounds], dtype=np.uint64)
    codes = np.searchsorted(limits, hashed, side="right").astype(np.int8)
    return np.where(pinned >= 0, pinned, codes).astype(np.int8)


def hashed_keep(keys: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Mask of the images ``keep_train_fraction`` keeps: a keyed hash below the fraction's share,
    so raising the fraction only adds images (and never moves one)."""
    if fraction >= 1.0:
        return np.ones(len(keys), dtype=bool)
    return keyed_hash(keys, seed, "keep") < np.uint64(int(fraction * 2.0**64))


def refuse_missing_classes(
    labels: np.ndarray, codes: np.ndarray, kept: np.ndarray, classes: Sequence[str], seed: int, source: str
) -> None:
    """Refuse a split that holds no image of some class, or a class whose training images
    ``keep_train_fraction`` all held out: its scores (or its model) would be meaningless."""
    for code, split in enumerate(SPLITS):
        found = np.bincount(labels[codes == code], minlength=len(classes))
        if (missing := np.flatnonzero(found == 0)).size:
            name = classes[missing[0]]
            total = int(np.count_nonzero(labels == missing[0]))
            raise PipelineError(
                f"{source}: class '{name}' has no {split} image (each image's split is a hash of its "
                f"pixels with ingest.seed {seed}, and none of its {total} fell in {split}); add images, "
                f"pin some to {split} with a manifest 'split' column, or change ingest.seed"
            )
    train = codes == SPLITS.index("train")
    kept_counts = np.bincount(labels[train & kept], minlength=len(classes))
    if (missing := np.flatnonzero(kept_counts == 0)).size:
        raise PipelineError(
            f"{source}: class '{classes[missing[0]]}' keeps none of its training images at "
            "ingest.keep_train_fraction; raise it"
        )
