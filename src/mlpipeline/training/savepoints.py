"""Checkpoints within an epoch: on a timer, every N steps, and on a stop signal, so a preempted
run loses minutes, not the epoch (at the docs' ImageNet figures, 25 to 40 minutes).

Each is taken at a step boundary, after the optimizer step: the weights, optimizer, schedule and
progress as after an epoch, plus where the epoch stands, on every rank: the step reached, the
sums the epoch's figures come from (still on the device) and the random generators' states
(dropout draws). Batch order and online augmentation draws are functions of (seed, phase,
epoch, rank, step), so a resumed run skips the batches already trained, unread, and ends bitwise
equal to an uninterrupted one on CPU.

When: ``MLPIPELINE_CHECKPOINT_MINUTES`` (default 10; 0: never on a timer) since the last save,
rank 0's clock; ``MLPIPELINE_CHECKPOINT_STEPS`` (unset: never) optimizer steps since the last
save; and SIGTERM or SIGUSR1 on any rank (``training.stopping``), after which the run ends with
``EXIT_REQUEUE``. How often a run saves cannot change a model byte, so these are environment
settings, not params. The work lost to a preemption is at most the interval plus one save.

No step waits on the device for this: the decision reads only the host's clock, step count and
signal flag. With several ranks, each posts its flags in an all-reduce on a gloo group (host
memory) that nobody waits for until the next step, by when it is long done; all ranks then act
at that same step. The save itself is the one sync: the epoch's sums and the state come to the
host.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from mlpipeline.core import settings
from mlpipeline.core.seeding import random_state
from mlpipeline.training.checkpoint import Checkpoints
from mlpipeline.training.distributed import World
from mlpipeline.training.stopping import EXIT_REQUEUE, Stopped, requested

MINUTES_ENV = "MLPIPELINE_CHECKPOINT_MINUTES"
STEPS_ENV = "MLPIPELINE_CHECKPOINT_STEPS"
DEFAULT_MINUTES = 10.0
LONGEST_MINUTES = 7 * 24 * 60.0  # a week: more is a slip
STOP, DUE = 0, 1  # the flags each rank posts: the stop signal's number (0: none), a save due

log = logging.getLogger("train")

# What an epoch adds up step by step, on the device: summed loss, correct count, first bad step,
# then the images seen (a host count).
EpochSums = tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]


@dataclass(frozen=True)
class SaveEvery:
    """How often a run saves within an epoch (None: never by that measure)."""

    seconds: float | None
    steps: int | None


def save_every() -> SaveEvery:
    """``MLPIPELINE_CHECKPOINT_MINUTES`` and ``MLPIPELINE_CHECKPOINT_STEPS``, checked."""
    unset = f"{DEFAULT_MINUTES:g}; 0: never on a timer"
    minutes = settings.minutes(MINUTES_ENV, unset, at_most=LONGEST_MINUTES)
    minutes = DEFAULT_MINUTES if minutes is None else minutes
    steps = settings.count(STEPS_ENV, 0)
    return SaveEvery(minutes * 60 if minutes > 0 else None, steps or None)


@dataclass(frozen=True)
class Within:
    """Where a checkpoint taken within an epoch stands, for one rank."""

    epoch: int
    step: int  # optimizer steps of the epoch done
    sums: EpochSums  # on the host
    random: dict[str, Any]  # random_state() at that step

    def sums_on(self, device: torch.device) -> EpochSums:
        loss, correct, first_bad, seen = self.sums
        return loss.to(device), correct.to(device), first_bad.to(device), seen


def within_epoch(state: dict[str, Any], rank: int) -> Within | None:
    """This rank's place in the epoch a checkpoint was taken in (None: taken after an epoch)."""
    saved = state.get("within_epoch")
    if saved is None:
        return None
    mine = saved["ranks"][rank]
    return Within(saved["epoch"], saved["step"], tuple(mine["sums"]), mine["random"])  # type: ignore[arg-type]


class Savepoints:
    """When one phase's run saves, and the saving (rank 0 writes; every rank stops together)."""

    def __init__(
        self,
        checkpoints: Checkpoints,
        world: World,
        every: SaveEvery,
        phase: str,
        steps_per_epoch: int,
        say: Callable[[str], None] = log.info,
    ) -> None:
        self.checkpoints = checkpoints
        self.world = world
        self.every = every
        self.phase = phase
        self.steps_per_epoch = steps_per_epoch
        self.say = say
        self.last_save = time.monotonic()
        self.steps_since = 0
        self.posted: tuple[dist.Work | None, torch.Tensor] | None = None

    def after_step(self, state: Callable[[], dict[str, Any]], epoch: int, step: int, sums: EpochSums) -> None:
        """At the boundary after ``step`` of ``epoch``: save when due, and stop after a stop signal."""
        self.steps_since += 1
        stop, due = self._agreed_flags()
        due = due or (self.every.steps is not None and self.steps_since >= self.every.steps)
        if stop or due:
            place = {"epoch": epoch, "step": step, "ranks": self.world.gather_to_main(self._mine(sums))}
            when = f"in epoch {epoch} of the {self.phase} phase after step {step} of {self.steps_per_epoch}"
            self._save(lambda: {**state(), "within_epoch": place}, when, say=not stop)
            if stop:
                self._stop(stop, when)
        if self.world.size > 1:
            flags = self._flags()
            self.posted = self.world.any_rank(flags), flags

    def after_epoch(self, state: Callable[[], dict[str, Any]], epoch: int) -> None:
        """The epoch's checkpoint, then a stop if any rank was asked to since its last step."""
        self._agreed_flags()  # the last step's posting: done with, whatever it says
        self.posted = None
        self._save(state, f"after epoch {epoch}", say=False)
        flags = self._flags(with_timer=False)
        work = self.world.any_rank(flags)
        if work is not None:
            work.wait()
        if flags[STOP]:
            self._stop(int(flags[STOP]), f"after epoch {epoch} of the {self.phase} phase")

    def _mine(self, sums: EpochSums) -> dict[str, Any]:
        loss, correct, first_bad, seen = sums
        return {"sums": (loss.cpu(), correct.cpu(), first_bad.cpu(), seen), "random": random_state()}

    def _flags(self, with_timer: bool = True) -> torch.Tensor:
        flags = torch.zeros(2, dtype=torch.int64)
        flags[STOP] = int(requested() or 0)
        timer = self.every.seconds
        if with_timer and timer is not None and self.world.is_main:  # one clock decides for all
            flags[DUE] = time.monotonic() - self.last_save >= timer
        return flags

    def _agreed_flags(self) -> tuple[int, bool]:
        """(stop signal or 0, save due) as every rank agreed on them: one process reads its own
        flags at once; ranks read what they posted a step earlier (reduced by now: no wait)."""
        if self.world.size == 1:
            flags = self._flags()
        elif self.posted is None:
            return 0, False
        else:
            work, flags = self.posted
            if work is not None:
                work.wait()
        return int(flags[STOP]), bool(flags[DUE])

    def _save(self, state: Callable[[], dict[str, Any]], when: str, say: bool) -> None:
        if self.world.is_main:
            started = time.perf_counter()
            size = self.checkpoints.save(state())
            seconds = time.perf_counter() - started
            if say:
                self.say(
                    f"checkpoint {when}: {size / 1e6:.1f} MB in {seconds:.2f} s to {self.checkpoints.path}"
                )
        self.last_save = time.monotonic()
        self.steps_since = 0

    def _stop(self, signum: int, where: str) -> None:
        """Every rank leaves together once rank 0's checkpoint is written (the others wait for it:
        a launcher that sees one rank end may kill the rest)."""
        self.world.barrier()
        raise Stopped(
            f"stopped by {signal.Signals(signum).name} {where}: checkpoint saved to {self.checkpoints.path}; "
            f"run again to resume (exit {EXIT_REQUEUE})"
        )
