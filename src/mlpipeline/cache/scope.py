"""What ``make gc`` keeps (``Scope``, in ``dvc gc``'s own terms) and what it found in each object
store (``Store``): the types both the gc command and its listing use, kept below both."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlpipeline.cache.origins import Origin


@dataclass(frozen=True)
class Scope:
    """What to keep, in ``dvc gc``'s own terms (its flags, its ``Repo.gc`` arguments)."""

    workspace: bool = False
    all_branches: bool = False
    all_tags: bool = False
    all_experiments: bool = False
    all_commits: bool = False
    rev: str | None = None
    num: int | None = None
    commit_date: str | None = None

    def flags(self) -> str:
        """The same scope as ``dvc gc`` flags."""
        switches = {"-w": self.workspace, "-a": self.all_branches, "-T": self.all_tags}
        switches |= {"--all-experiments": self.all_experiments, "-A": self.all_commits}
        options = {"--rev": self.rev, "-n": self.num, "--date": self.commit_date}
        words = [flag for flag, on in switches.items() if on]
        return " ".join(words + [f"{flag} {value}" for flag, value in options.items() if value])


DEFAULT_SCOPE = Scope(workspace=True, all_branches=True, all_tags=True, all_experiments=True)


@dataclass
class Store:
    """One object store (the local cache, a remote) and what ``dvc gc`` would do to it."""

    label: str
    odb: Any  # dvc_data HashFileDB
    kept: int
    unused: list[str]
    sizes: dict[str, int] = field(default_factory=dict)
    origins: dict[str, Origin] = field(default_factory=dict)
    git_tracked: set[str] = field(default_factory=set)  # `cache: false` outputs: git keeps them

    @property
    def unused_bytes(self) -> int:
        return sum(self.sizes.values())
