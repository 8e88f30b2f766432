"""How many worker processes a stage spreads its work over, and the ordered map that does it.

The worker count cannot change an output byte, so it is not a DVC param (changing one would
rerun stages for nothing): it comes from the environment, ``MLPIPELINE_WORKERS`` (default:
every core this process may run on; 1: everything in this process, as a debugger wants).
Results come back in the order of the inputs, whoever computed them, so a stage that writes
them in that order writes the same bytes for any worker count.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

from mlpipeline.core.errors import PipelineError

WORKERS_ENV = "MLPIPELINE_WORKERS"
IN_FLIGHT_PER_WORKER = 2  # tasks queued per worker: enough to keep it busy, few enough to bound memory

T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count() -> int:
    """``MLPIPELINE_WORKERS`` as a count >= 1, or every available core when it is unset or empty."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if not raw:
        return available_cores()
    if not raw.isdigit() or int(raw) < 1:
        raise PipelineError(
            f"{WORKERS_ENV}={raw!r}: must be a whole number >= 1 (unset: all {available_cores()} cores)"
        )
    return int(raw)


def ordered_map(
    function: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    initializer: Callable[[], None] | None = None,
) -> Iterator[R]:
    """``function(item)`` for each item, in the items' order, computed by ``workers`` processes.

    At most ``IN_FLIGHT_PER_WORKER * workers`` items are submitted ahead of the one being
    yielded, so memory is bounded by the window, not by the number of items. ``function`` and
    ``initializer`` must be importable module-level functions: workers are spawned (a fresh
    interpreter, as on macOS and Windows; forking a process that holds torch's thread pools is
    unsafe). An exception raised by ``function`` is re-raised here. With one worker everything
    runs in this process, with no pickling at all.
    """
    if workers <= 1:
        if initializer is not None:
            initializer()
        yield from map(function, items)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=initializer) as pool:
        window: deque[Future[R]] = deque()
        try:
            for item in items:
                window.append(pool.submit(function, item))
                if len(window) >= IN_FLIGHT_PER_WORKER * workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()


MIN_BATCHES_PER_WORKER = 8  # a spawned worker costs about a second (a fresh interpreter imports torch)


def workers_for(batches: int) -> int:
    """``worker_count()``, but no more workers than ``batches // MIN_BATCHES_PER_WORKER`` (at least
    one): spawning pays only when each worker gets several batches, so small data (the demo) stays
    in one process. The bytes are the same either way."""
    return max(1, min(worker_count(), batches // MIN_BATCHES_PER_WORKER))
