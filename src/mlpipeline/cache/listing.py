"""The text of ``make gc``'s listing: what stays, by scope flag and by name, then what each store
would lose, grouped by the output each object was and where that came from.

Formatting only: ``mlpipeline.cache.gc`` gathers the facts from DVC and git.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from mlpipeline.cache.origins import Origin
from mlpipeline.cache.scope import Scope, Store

NAMES_SHOWN = 6  # branches, tags or experiments named before "and N more"
UNNAMED = Origin("(unnamed)", "in no commit or run-cache entry", rank=1 << 30)
# A `cache: false` output (metrics, small plots) is in the cache only as the run-cache's copy.
RUN_CACHE_COPIES = Origin("(outputs git tracks)", "the run-cache's copies of `cache: false` outputs", rank=-1)


@dataclass(frozen=True)
class Refs:
    """The names behind the scope's flags, and the remote branches it would not keep."""

    branches: list[str]
    tags: list[str]
    experiments: list[str]
    not_kept: list[str]  # remote-tracking branches no local branch points at
    releases: list[str]  # registered model versions (GTO tags): kept whatever the scope
    unrecorded: dict[str, list[str]] = field(default_factory=dict)  # output -> revisions without its hash


def report(scope: Scope, refs: Refs, stores: list[Store], cloud: bool) -> list[str]:
    """What stays (by scope), then what each store would lose."""
    header = [f"keeping what these use (dvc gc {scope.flags()}):"]
    kept = [f"  {line}" for line in scope_lines(scope, refs)]
    holding = [store for store in stores if store.kept or store.unused]  # DVC 2's legacy one: often empty
    if not holding:
        where = "the local cache and the remote hold" if cloud else "the local cache holds"
        return [*header, *kept, f"{where} no objects"]
    return header + kept + [line for store in holding for line in store_lines(store)]


def scope_lines(scope: Scope, refs: Refs) -> list[str]:
    """What the scope keeps, by name, one line per ``dvc gc`` flag, and what a teammate may miss."""
    last = f"the last {scope.num} commits of " if scope.num else ""
    lines = ["the workspace (-w; every scope keeps it)"]
    if scope.all_branches:
        lines.append(f"{last}branches (-a): {names(refs.branches)}")
    if scope.all_tags:
        lines.append(f"tags (-T): {names(refs.tags)}")
    if scope.all_experiments:
        lines.append(f"experiments (--all-experiments): {names(refs.experiments)}")
    if scope.all_commits:
        lines.append("every commit (-A)")
    if scope.rev:
        lines.append(f"{last or 'commit '}{scope.rev} (--rev)")
    if scope.commit_date:
        lines.append(f"commits since {scope.commit_date} (--date)")
    if refs.releases:
        lines.append(f"model versions (registered releases, kept by every scope): {names(refs.releases)}")
    for output, revs in sorted(refs.unrecorded.items()):
        lines.append(
            f"{output}: no hash recorded in {names(revs)} (not run there yet): nothing of it to keep"
        )
    if refs.not_kept:
        lines.append(
            f"NOT kept, as no local branch points there (git checkout them first): {names(refs.not_kept)}"
        )
    return lines


def names(items: Iterable[str]) -> str:
    """Sorted, the first few of them, and how many more."""
    items = sorted(items)
    if not items:
        return "(none)"
    more = f" and {len(items) - NAMES_SHOWN} more" if len(items) > NAMES_SHOWN else ""
    return ", ".join(items[:NAMES_SHOWN]) + more


def store_lines(store: Store) -> list[str]:
    """The store's verdict, then a line per output and source of its unused objects, by output."""
    if not store.unused:
        return [f"{store.label}: keeps its {store.kept} objects, nothing to remove"]
    groups: dict[Origin, list[str]] = defaultdict(list)
    for oid in store.unused:
        origin = store.origins.get(oid, UNNAMED)
        groups[RUN_CACHE_COPIES if origin.output in store.git_tracked else origin].append(oid)
    width = max(len(origin.output) for origin in groups)
    lines = [
        f"{store.label}: keeps {store.kept} objects, {len(store.unused)} unused ({size(store.unused_bytes)}):"
    ]
    for origin, oids in sorted(groups.items(), key=lambda item: (item[0].output, item[0].rank)):
        count = f"{len(oids)} object{'s' if len(oids) > 1 else ''}"
        total = size(sum(store.sizes.get(oid, 0) for oid in oids))
        lines.append(f"  {origin.output:<{width}}  {count:>11}  {total:>8}  {origin.source}")
    return lines


def size(count: float) -> str:
    """Bytes in SI units, as S3's console shows them."""
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")
