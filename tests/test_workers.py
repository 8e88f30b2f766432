"""The worker count comes from the environment, and the ordered map returns results in input order."""

from __future__ import annotations

import math
import os
import platform
import tempfile
import weakref
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from mlpipeline.core import stage
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.workers import (
    IN_FLIGHT_PER_WORKER,
    MIN_BATCHES_PER_WORKER,
    WORKERS_ENV,
    SharedFile,
    available_cores,
    ordered_map,
    ordered_map_pairs,
    worker_count,
    workers_for,
)


def test_worker_count_defaults_to_the_available_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert worker_count() == available_cores()
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert worker_count() == 3


@pytest.mark.parametrize("raw", ["0", "-1", "two", "1.5"])
def test_a_bad_worker_count_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv(WORKERS_ENV, raw)
    with pytest.raises(PipelineError, match=f"^{WORKERS_ENV}="):
        worker_count()


@pytest.mark.parametrize("workers", [1, 2])
def test_results_come_back_in_input_order(workers: int) -> None:
    items = list(range(40, 0, -1))  # later items are cheaper: out-of-order completion is likely
    assert list(ordered_map(math.factorial, items, workers)) == [math.factorial(i) for i in items]


@pytest.mark.parametrize("workers", [1, 2])
def test_an_error_in_a_worker_reaches_the_caller(workers: int) -> None:
    with pytest.raises(ValueError, match="not-a-number"):
        list(ordered_map(int, ["1", "2", "not-a-number", "4"], workers))


@pytest.mark.parametrize("workers", [1, 2])
def test_pairs_hold_each_item_only_while_the_map_needs_it(workers: int) -> None:
    """A stage writes each batch beside its result, so it keeps the batches the map has taken and
    not yet returned: its window, not more (itertools.tee kept them in blocks of 57, and augment's
    parent held 21 shards of batches at a million images)."""
    live: set[int] = set()

    def items() -> Iterator[np.ndarray]:
        for i in range(200):
            item = np.full(4, i)
            live.add(i)
            weakref.finalize(item, live.discard, i)
            yield item

    held = []
    for item, total in ordered_map_pairs(np.sum, items(), workers):
        assert total == 4 * item[0]
        held.append(len(live))
    assert len(held) == 200
    assert max(held) <= IN_FLIGHT_PER_WORKER * workers + 1


def test_small_work_stays_in_one_process_and_large_work_gets_every_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(WORKERS_ENV, "4")
    assert workers_for(0) == workers_for(MIN_BATCHES_PER_WORKER - 1) == 1  # the demo's few batches
    assert workers_for(2 * MIN_BATCHES_PER_WORKER) == 2
    assert workers_for(1000) == 4


def retained_after_free(megabytes: int) -> int:
    """Bytes of resident memory a process keeps after it frees a large array it just used
    (allocated and freed once before, as a stage's worker does batch after batch)."""
    size = megabytes << 20
    np.ones(size, dtype=np.uint8)  # freed at once: glibc's dynamic threshold now keeps such blocks
    before = resident_bytes()
    block = np.ones(size, dtype=np.uint8)
    del block
    return resident_bytes() - before


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
@pytest.mark.parametrize("workers", [1, 2])
def test_workers_give_large_freed_blocks_back(workers: int) -> None:
    """A worker's peak is its working set, not its history: a 16 MiB array freed leaves nothing
    resident behind (glibc's default kept it in the heap, and workers grew batch after batch)."""
    retained = list(ordered_map(retained_after_free, [16] * workers, workers))
    assert max(retained) < 4 << 20


_shared: SharedFile | None = None  # set in each worker by keep_shared


def keep_shared(file: SharedFile) -> None:
    global _shared
    _shared = file


def write_at(item: tuple[int, bytes]) -> int:
    """Write ``item``'s bytes at its offset of the shared file; the writer's process id."""
    assert _shared is not None
    offset, data = item
    os.pwrite(_shared.fd, data, offset)
    return os.getpid()


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_write_in_place_into_a_file_with_no_name(workers: int) -> None:
    with tempfile.TemporaryFile() as unnamed:
        items = [(100 * k, bytes([k]) * 100) for k in range(40)]
        writers = set(
            ordered_map(write_at, items, workers, partial(keep_shared, SharedFile(unnamed.fileno())))
        )
        assert os.pread(unnamed.fileno(), 4000, 0) == b"".join(data for _, data in items)
    assert (writers == {os.getpid()}) == (workers == 1)  # spawned workers wrote it, with 2


@pytest.mark.parametrize("raw", ["abc", "0", "-1"])
def test_every_stage_refuses_a_bad_worker_count_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], raw: str
) -> None:
    """Not only where workers are spawned (ingest from 4,096 images): before the stage does anything."""
    monkeypatch.setenv(WORKERS_ENV, raw)
    ran = []
    with pytest.raises(SystemExit) as exited:
        stage.run("evaluate", lambda: ran.append(True))
    assert exited.value.code == 2 and not ran
    assert capsys.readouterr().err.splitlines() == [
        f"evaluate: error: {WORKERS_ENV}={raw!r}: must be a whole number >= 1 "
        f"(unset: all {available_cores()} cores)"
    ]
