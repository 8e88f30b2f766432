"""How far a long phase has got, for whoever is watching: a bar on a terminal, a plain line now
and then in a log, nothing when asked.

At real sizes a stage runs for minutes; without this a slow run and a hung one look the same.
Every stage and tool shows its phases through ``progress`` (one helper, so they all look and
behave alike), always on stderr, never in an output, so no output byte depends on it:

- stderr is a terminal: a tqdm bar per phase (count, rate, time left), cleared when the phase
  ends, so the stage's summary line stays the one line a user reads;
- stderr is a pipe or a file (DVC's log, CI, ``dvc queue logs``): a plain line, no carriage
  return, once ``MLPIPELINE_PROGRESS_INTERVAL`` seconds (default 10) *and* a tenth of the
  work have passed since the last, and a last one when such a phase ends; a phase done
  within the interval prints nothing;
- ``MLPIPELINE_PROGRESS=0``, a torchrun rank other than 0 (``RANK``: every rank runs the
  same loop, one shows it), or stderr closed (``2>&-``: Python's ``sys.stderr`` is None):
  nothing. Progress never changes a run's outcome.

Worker processes never report: the parent advances a phase as their results come back.
These are environment variables, not DVC params: they change no output.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from logging import Logger
from typing import TypeVar

from tqdm import tqdm

from mlpipeline.core import settings
from mlpipeline.core.errors import PipelineError

T = TypeVar("T")

PROGRESS_ENV = "MLPIPELINE_PROGRESS"
INTERVAL_ENV = "MLPIPELINE_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0  # seconds between plain lines, at least
LINE_FRACTION = 0.1  # of a phase's total between plain lines, at least


class Progress:
    """One phase's progress when nobody is shown it (and the interface of those that show it)."""

    def advance(self, count: int = 1) -> None:
        """``count`` more units of the phase are done."""

    def write(self, line: str, log: Logger) -> None:
        """Log ``line`` (an epoch's figures) where it does not break the display."""
        log.info(line)

    def close(self) -> None:
        """The phase is over (or abandoned)."""


class Bar(Progress):
    """A tqdm bar on stderr, cleared when the phase ends."""

    def __init__(self, label: str, total: int | None, unit: str) -> None:
        # ' images' reads '12410 images [00:03, 6000.66 images/s]' (tqdm joins its unit to the count)
        self.bar = tqdm(
            total=total, desc=label, unit=f" {plural(unit)}", leave=False, file=sys.stderr, dynamic_ncols=True
        )

    def advance(self, count: int = 1) -> None:
        self.bar.update(count)

    def write(self, line: str, log: Logger) -> None:
        """Logged as without a bar (same words, same logger prefix), the bar cleared meanwhile."""
        with self.bar.external_write_mode(file=sys.stderr):
            log.info(line)

    def close(self) -> None:
        self.bar.close()


class Lines(Progress):
    """Plain lines on stderr, at most one per ``interval`` seconds and per tenth of the total."""

    def __init__(
        self, label: str, total: int | None, unit: str, interval: float, clock=time.monotonic
    ) -> None:
        self.label, self.total, self.unit, self.interval, self.clock = label, total, unit, interval, clock
        self.started = self.last_time = clock()
        self.done = self.last_done = 0
        self.printed = False

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = self.clock()
        if now - self.last_time < self.interval:
            return
        if self.total and self.done - self.last_done < self.total * LINE_FRACTION and self.done < self.total:
            return
        self._print(now)

    def close(self) -> None:
        """A last line for a phase that printed any, so a log shows where each phase ended."""
        if self.printed and self.done != self.last_done:
            self._print(self.clock())

    def _print(self, now: float) -> None:
        self.last_time, self.last_done, self.printed = now, self.done, True
        print(self.line(now - self.started), file=sys.stderr, flush=True)

    def line(self, elapsed: float) -> str:
        """'ingest: decoding: 4000/10000 images (40%) in 00:32, 125 images/s, 00:48 left', as the bar
        shows it (the label's colon keeps it apart from a stage's own lines, 'train: pretrain epoch')."""
        rate = self.done / elapsed if elapsed > 0 else 0.0
        units = plural(self.unit)
        if not self.total:
            return (
                f"{self.label}: {self.done} {units} in {tqdm.format_interval(elapsed)}, {rate:.0f} {units}/s"
            )
        text = (
            f"{self.label}: {self.done}/{self.total} {units} ({100 * self.done // self.total}%) "
            f"in {tqdm.format_interval(elapsed)}, {rate:.0f} {units}/s"
        )
        if self.done < self.total and rate > 0:
            text += f", {tqdm.format_interval((self.total - self.done) / rate)} left"
        return text


def plural(unit: str) -> str:
    """'image' -> 'images', 'batch' -> 'batches': the units are English nouns."""
    return f"{unit}es" if unit.endswith(("s", "sh", "ch", "x")) else f"{unit}s"


def enabled() -> bool:
    """``MLPIPELINE_PROGRESS`` (unset or 1: on; 0: off) and this process is rank 0 of torchrun's."""
    raw = os.environ.get(PROGRESS_ENV, "").strip()
    if raw not in ("", "0", "1"):
        raise PipelineError(f"{PROGRESS_ENV}={raw!r}: must be 0 (no progress) or 1 (unset: 1)")
    return raw != "0" and os.environ.get("RANK", "0") == "0"


def interval() -> float:
    """``MLPIPELINE_PROGRESS_INTERVAL``: seconds between plain lines (unset: 10)."""
    value = settings.seconds(INTERVAL_ENV, unset=f"{DEFAULT_INTERVAL:g}")
    return DEFAULT_INTERVAL if value is None else value


def start(stage: str, phase: str, total: int | None = None, unit: str = "image") -> Progress:
    """A phase ``phase`` of ``stage`` over ``total`` units (None: not known ahead), shown the way
    stderr and the environment ask; the caller closes it (``progress`` does)."""
    if not enabled() or sys.stderr is None:
        return Progress()
    label = f"{stage}: {phase}"
    if sys.stderr.isatty():
        return Bar(label, total, unit)
    return Lines(label, total, unit, interval())


@contextmanager
def progress(stage: str, phase: str, total: int | None = None, unit: str = "image") -> Iterator[Progress]:
    """``start``, closed when the block ends, by an error too (a bar is never left behind)."""
    shown = start(stage, phase, total, unit)
    try:
        yield shown
    finally:
        shown.close()


def counted(items: Iterable[T], shown: Progress) -> Iterator[T]:
    """``items``, advancing ``shown`` by one for each."""
    for item in items:
        yield item
        shown.advance()
