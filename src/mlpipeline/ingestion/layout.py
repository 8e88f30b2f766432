"""Where each image of a new data version goes: a row the previous version already stores, or
a row of a new shard. Pure functions of arrays, a few bytes an image.

A stored row stays where it is while its image is in the source with the same name, label, file
bytes and split: its shard file is kept as it is, so DVC stores and moves it no more. Rows whose
image left (removed, relabelled, renamed, moved to another split) are dead: the new version's
``dataset.json`` marks them so (``core.shards``), and readers skip them. A shard whose dead share
passes ``ingest.compact_dead_share`` is compacted: its live rows move to new shards, and it is
dropped. Everything else (new images, moved ones, a compacted shard's survivors) goes to new
shards after the kept ones, in source order, so the same source and base give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlpipeline.ingestion.base import BaseLayout, BaseShard


@dataclass(frozen=True)
class KeptShard:
    shard: BaseShard
    live: np.ndarray  # bool a stored row
    held_out: np.ndarray  # bool a stored row: in the source, but held out (keep_train_fraction)


@dataclass(frozen=True)
class Plan:
    kept: list[KeptShard]  # the base's shards kept as they are, in the base's order
    fresh: np.ndarray  # bool a source row: it gets a row in a new shard
    from_base: np.ndarray  # int64 a source row: the base row whose pixels its new row takes, -1: none
    compacted: int  # base shards dropped: their live rows (if any) moved to new shards


def plan_layout(
    base: BaseLayout | None,
    kept: np.ndarray,
    labels: np.ndarray,
    split: np.ndarray,
    held_out: np.ndarray,
    base_rows: np.ndarray,
    compact_dead_share: float,
) -> Plan:
    """The plan for source rows ``kept`` (of class ``labels``, stored in ``split``, held out where
    ``held_out``), each the base row ``base_rows`` names (-1: none, so it was decoded)."""
    if base is None:
        return Plan([], kept.copy(), np.full(len(kept), -1, dtype=np.int64), 0)
    matched = kept & (base_rows >= 0)
    claimable = matched.copy()
    rows = base_rows[matched]
    claimable[matched] = (base.split_of[rows] == split[matched]) & (base.labels[rows] == labels[matched])
    claims = np.full(len(base.keys), -1, dtype=np.int64)  # base row -> the source row that is it
    claims[base_rows[claimable]] = np.flatnonzero(claimable)
    claimed = np.bincount(base.shard_of[claims >= 0], minlength=len(base.shards))
    sizes = np.array([shard.rows for shard in base.shards], dtype=np.int64)
    keep = (claimed > 0) & (1 - claimed / np.maximum(sizes, 1) <= compact_dead_share)
    kept_shards = []
    for index in np.flatnonzero(keep):
        shard = base.shards[index]
        owners = claims[shard.first : shard.first + shard.rows]
        present = owners >= 0
        held = np.zeros(shard.rows, dtype=bool)
        held[present] = held_out[owners[present]]
        kept_shards.append(KeptShard(shard, present & ~held, held))
    stays = claimable.copy()
    stays[claimable] = keep[base.shard_of[base_rows[claimable]]]
    fresh = kept & ~stays
    from_base = np.where(fresh & (base_rows >= 0), base_rows, -1)
    return Plan(kept_shards, fresh, from_base, compacted=int((~keep).sum()))
