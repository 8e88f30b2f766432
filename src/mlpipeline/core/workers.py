"""How many worker processes a stage spreads its work over, and the ordered map that does it.

The worker count cannot change an output byte, so it is not a DVC param (changing one would
rerun stages for nothing): it comes from the environment, ``MLPIPELINE_WORKERS`` (default:
every core this process may run on; 1: everything in this process, as a debugger wants).
Results come back in the order of the inputs, whoever computed them, so a stage that writes
them in that order writes the same bytes for any worker count.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import platform
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from functools import partial
from multiprocessing import reduction
from typing import Any, TypeVar

from mlpipeline.core.errors import PipelineError

WORKERS_ENV = "MLPIPELINE_WORKERS"
IN_FLIGHT_PER_WORKER = 2  # tasks queued per worker: enough to keep it busy, few enough to bound memory
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
RETURN_FREED_FROM = 1 << 20  # bytes: a freed block this large goes back to the system at once

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


def check_worker_count() -> None:
    """Refuse a bad ``MLPIPELINE_WORKERS`` at a stage's start (``stage.run``), not only where a stage
    spawns workers: ingest does that only from 4,096 images, so a typo ran to exit 0 below that."""
    worker_count()


def ordered_map(
    function: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    initializer: Callable[[], None] | None = None,
) -> Iterator[R]:
    """``function(item)`` for each item, in the items' order, computed by ``workers`` processes
    (``WorkerPool.map`` in a pool of its own)."""
    with WorkerPool(workers, initializer) as pool:
        yield from pool.map(function, items)


class WorkerPool:
    """``workers`` spawned processes that several ordered maps share, so a stage with more than
    one parallel step starts its workers once (a fresh interpreter costs about a second).

    ``initializer`` runs once in each worker before its first task. Functions and initializer
    must be importable module-level functions: workers are spawned (a fresh interpreter, as on
    macOS and Windows; forking a process that holds torch's thread pools is unsafe). With one
    worker everything runs in this process, with no pickling at all.
    """

    def __init__(self, workers: int, initializer: Callable[[], None] | None = None) -> None:
        self.workers = workers
        self._initializer = initializer
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> WorkerPool:
        return_freed_memory()  # this process too: it receives every result
        if self.workers <= 1:
            if self._initializer is not None:
                self._initializer()
        else:
            context = multiprocessing.get_context("spawn")
            start = partial(start_worker, self._initializer)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=start)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def map(self, function: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """``function(item)`` for each item, in the items' order, whoever computed it.

        At most ``IN_FLIGHT_PER_WORKER * workers`` items are submitted ahead of the one being
        yielded, so memory is bounded by the window, not by the number of items. An exception
        raised by ``function`` is re-raised here.
        """
        if self._pool is None:
            yield from map(function, items)
            return
        window: deque[Future[R]] = deque()
        try:
            for item in items:
                window.append(self._pool.submit(function, item))
                if len(window) >= IN_FLIGHT_PER_WORKER * self.workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()

    def map_pairs(self, function: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[T, R]]:
        """``(item, function(item))`` for each item, as ``map`` computes them, for a caller that
        writes each item beside its result (a batch and its copies).

        Each item is held from when the map takes it until its pair is yielded: the map's window.
        ``itertools.tee`` did not bound it so: it stores items in blocks of 57 and frees a block
        only once both of its ends have passed it, so up to 57 batches stayed alive (in augment's
        parent, 4,096 32x32 RGB images each, views that kept 21 shards resident: 650 MiB more at
        1M images).
        """
        taken: deque[T] = deque()

        def take() -> Iterator[T]:
            for item in items:
                taken.append(item)
                yield item

        for result in self.map(function, take()):
            yield taken.popleft(), result


def ordered_map_pairs(
    function: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    initializer: Callable[[], None] | None = None,
) -> Iterator[tuple[T, R]]:
    """``(item, function(item))`` for each item (``WorkerPool.map_pairs`` in a pool of its own)."""
    with WorkerPool(workers, initializer) as pool:
        yield from pool.map_pairs(function, items)


def start_worker(initializer: Callable[[], None] | None) -> None:
    """What a spawned worker does before its first task."""
    return_freed_memory()
    if initializer is not None:
        initializer()


def return_freed_memory() -> None:
    """Have glibc hand blocks of ``RETURN_FREED_FROM`` bytes or more back to the system when freed.

    Left to itself, glibc raises its mmap threshold to the size of each large block freed (up to
    32 MiB) and serves later ones from a heap that fragments and never shrinks, so a worker's
    peak grew with the number of batches it had done (augment's: 816 MiB of working set, over
    1 GiB after a few hundred batches). Other C libraries are left as they are.
    """
    if platform.libc_ver()[0] == "glibc":
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, RETURN_FREED_FROM)


class SharedFile:
    """An open file that each spawned worker receives as a descriptor of its own, even a file
    with no name (an unnamed temporary file). Give it to a worker through ``ordered_map``'s
    ``initializer``: it is pickled while the worker is spawned, and the descriptor goes to the
    child the way multiprocessing passes its own pipes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write_at(self, data: bytes | memoryview, offset: int) -> None:
        """Write all of ``data`` at ``offset`` (processes writing apart need no lock)."""
        view = memoryview(data).cast("B")
        while view:
            written = os.pwrite(self.fd, view, offset)
            view, offset = view[written:], offset + written

    def __reduce__(self) -> tuple[Callable[[Any], SharedFile], tuple[Any]]:
        return _received, (reduction.DupFd(self.fd),)


def _received(duplicate: Any) -> SharedFile:
    return SharedFile(duplicate.detach())


MIN_BATCHES_PER_WORKER = 8  # a spawned worker costs about a second (a fresh interpreter imports torch)


def workers_for(batches: int) -> int:
    """``worker_count()``, but no more workers than ``batches // MIN_BATCHES_PER_WORKER`` (at least
    one): spawning pays only when each worker gets several batches, so small data (the demo) stays
    in one process. The bytes are the same either way."""
    return max(1, min(worker_count(), batches // MIN_BATCHES_PER_WORKER))
