"""Batches on their way to the device: from a split kept resident, or streamed from its shards.

When the data a run trains on fits one budget together (the validation split and the largest
phase's training split: at most ``RESIDENT_MAX_BYTES``, and on CUDA half the free GPU memory),
both stay resident: loaded once, shard by shard, onto the device (on the CPU: into memory), and
each batch is gathered there by indexing. Otherwise both stream, so memory stays within the one
budget however the data divides between splits: each batch's rows are read
from the shards at their raw offsets by reader threads (``MLPIPELINE_WORKERS`` of them; the
reads release the GIL) ``PREFETCH_BATCHES`` ahead of the batch the device trains on, so memory
holds a few batches, never the split. On CUDA they are read into pinned staging buffers, taken
in turn, and copied without blocking on a side stream (``core.device.to_device``), so the copy
of batch k+1 overlaps the step on batch k; a buffer is refilled only once the copy out of it is
done (its reader sleeps on a blocking CUDA event meanwhile). Labels and row indices go to the device
once an epoch, so no step copies anything with a blocking copy (``tests/test_feed.py`` counts).
Both paths deal the same rows in the same order, so they train the same model (bit for bit on
CPU). ``MLPIPELINE_TRAIN_DATA=resident`` or ``streamed`` forces one: it cannot change the
model, so it is no DVC param. A DataLoader's worker processes would earn their cost where a
batch needs CPU work (decoding); here a batch is bytes at known offsets.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

import numpy as np
import torch

from mlpipeline.augmentation.online import BatchCopies, OnlineAugmentation
from mlpipeline.core.device import to_device
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.shard_rows import SplitReader
from mlpipeline.core.workers import worker_count
from mlpipeline.training.windows import Window

PLACEMENT_ENV = "MLPIPELINE_TRAIN_DATA"
RESIDENT_MAX_BYTES = 1 << 30  # a larger split streams: host memory stays bounded
DEVICE_MEMORY_SHARE = 0.5  # at most this share of free GPU memory holds a resident split
# Batches read ahead of the one the device trains on. One would hand the device every hiccup of
# a read (a page-cache miss, another process's turn on the cores); two absorb one slow read
# while memory holds four batches (the reads, the copy in flight, the batch in training).
PREFETCH_BATCHES = 2
STAGING_BUFFERS = PREFETCH_BATCHES + 1  # the batches being read and the one whose copy may be in flight

T = TypeVar("T")
Placement = Literal["resident", "streamed"]
Batch = tuple[torch.Tensor, torch.Tensor]  # uint8 images N x C x H x W, int64 labels N, on the device


class Rows(Protocol):
    """A split placed for the device: batches of any of its rows, in the order asked."""

    device: torch.device
    image_shape: tuple[int, ...]

    def batches(self, rows: np.ndarray, batch_size: int, drop_last: bool) -> Iterator[Batch]: ...


def batch_bounds(count: int, batch_size: int, drop_last: bool) -> list[slice]:
    """The batches of ``count`` rows. With ``drop_last`` only full batches (a ragged last one would
    give BatchNorm a tiny, noisy sample; the next epoch's shuffle uses the dropped rows), or all
    rows as one if there are fewer than a batch."""
    if count == 0:
        return []
    batches = max(1, count // batch_size) if drop_last else -(-count // batch_size)
    return [slice(step * batch_size, (step + 1) * batch_size) for step in range(batches)]


class Resident:
    """The whole split on the device, loaded shard by shard (peak: the split and one shard)."""

    def __init__(self, reader: SplitReader, device: torch.device) -> None:
        self.device = device
        self.image_shape = reader.image_shape
        self.images = torch.empty((len(reader), *reader.image_shape), dtype=torch.uint8, device=device)
        start = 0
        for shard in reader.shards():
            self.images[start : start + len(shard)] = torch.from_numpy(shard)
            start += len(shard)
        self.labels = torch.from_numpy(reader.labels).to(device)

    def batches(self, rows: np.ndarray, batch_size: int, drop_last: bool) -> Iterator[Batch]:
        index = to_device(torch.from_numpy(rows), self.device)  # once an epoch, without blocking
        for bounds in batch_bounds(len(rows), batch_size, drop_last):
            chosen = index[bounds]
            yield self.images[chosen], self.labels[chosen]


class Turns(Generic[T]):
    """Host buffers reused in turn, each refilled only once the copy out of it is done.

    On CUDA each buffer has the event recorded after the last copy out of it, which whoever
    refills it waits for first (a blocking event: the waiting thread sleeps in the driver
    instead of spinning on a core). Elsewhere a copy is done when it returns: no events.
    """

    def __init__(self, buffers: list[T], cuda: bool) -> None:
        self.buffers = buffers
        self.cuda = cuda
        self.copied: list[torch.cuda.Event | None] = [None] * len(buffers)  # the last copy out of each
        self.turn = 0

    def take(self) -> tuple[int, T, torch.cuda.Event | None]:
        """The next buffer's slot, the buffer, and the copy to wait for before writing it."""
        slot, self.turn = self.turn, (self.turn + 1) % len(self.buffers)
        return slot, self.buffers[slot], self.copied[slot]

    def copy_event(self, slot: int) -> torch.cuda.Event | None:
        """A new event to record after the copy out of ``slot`` (``to_device``'s ``copied``)."""
        if not self.cuda:
            return None
        self.copied[slot] = torch.cuda.Event(blocking=True)
        return self.copied[slot]


class Staging:
    """Host memory a batch is read into before it goes to the device.

    On CUDA: ``STAGING_BUFFERS`` pinned buffers taken in turn (``Turns``). Elsewhere a new
    buffer per batch: the CPU trains on it as it is (no copy), and a reused buffer would
    overwrite a batch the caller may still hold.
    """

    def __init__(self, device: torch.device, batch_size: int, image_shape: tuple[int, ...]) -> None:
        self.device = device
        self.image_shape = image_shape
        self.pinned = device.type == "cuda"
        shape = (batch_size, *image_shape)
        count = STAGING_BUFFERS if self.pinned else 0
        buffers = [torch.empty(shape, dtype=torch.uint8, pin_memory=True) for _ in range(count)]
        self.turns = Turns(buffers, cuda=True)

    def take(self, count: int) -> tuple[torch.Tensor, int, torch.cuda.Event | None]:
        """A buffer for ``count`` images, its slot, and the copy to wait for before writing it."""
        if not self.pinned:
            return torch.empty((count, *self.image_shape), dtype=torch.uint8), -1, None
        slot, buffer, wait = self.turns.take()
        return buffer[:count], slot, wait

    def to_device(self, host: torch.Tensor, slot: int) -> torch.Tensor:
        if not self.pinned:
            return to_device(host, self.device)
        return to_device(host, self.device, self.turns.copy_event(slot))


def _read(reader: SplitReader, rows: np.ndarray, out: np.ndarray, wait: torch.cuda.Event | None) -> None:
    if wait is not None:
        wait.synchronize()  # the buffer's last batch has left for the device
    reader.read(rows, out)


class Streamed:
    """Batches read from the shards as they are needed, one batch ahead (see the module docstring)."""

    def __init__(self, reader: SplitReader, device: torch.device, workers: int) -> None:
        self.reader = reader
        self.device = device
        self.image_shape = reader.image_shape
        self.workers = workers

    def batches(self, rows: np.ndarray, batch_size: int, drop_last: bool) -> Iterator[Batch]:
        bounds = batch_bounds(len(rows), batch_size, drop_last)
        if not bounds:
            return
        labels = to_device(torch.from_numpy(self.reader.labels[rows]), self.device)  # the epoch's, at once
        staging = Staging(self.device, batch_size, self.reader.image_shape)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="shard-reader") as pool:
            ahead = deque(self._start(pool, staging, rows[bound]) for bound in bounds[:PREFETCH_BATCHES])
            for step, bound in enumerate(bounds):
                host, slot, reads = ahead.popleft()
                for read in reads:
                    read.result()
                images = staging.to_device(host, slot)
                if step + PREFETCH_BATCHES < len(bounds):
                    ahead.append(self._start(pool, staging, rows[bounds[step + PREFETCH_BATCHES]]))
                yield images, labels[bound]

    def _start(
        self, pool: ThreadPoolExecutor, staging: Staging, rows: np.ndarray
    ) -> tuple[torch.Tensor, int, list[Future[None]]]:
        """Start reading ``rows`` into a staging buffer, its rows shared out among the workers."""
        host, slot, wait = staging.take(len(rows))
        out = host.numpy()
        parts = np.array_split(np.arange(len(rows)), min(self.workers, len(rows)))
        reads = [
            pool.submit(_read, self.reader, rows[part], out[part[0] : part[-1] + 1], wait) for part in parts
        ]
        return host, slot, reads


def chosen_placement(nbytes: int, device: torch.device) -> Placement:
    """``MLPIPELINE_TRAIN_DATA`` if set, else resident when ``nbytes`` of data fit (module docstring)."""
    forced = os.environ.get(PLACEMENT_ENV, "").strip()
    if forced in ("resident", "streamed"):
        return forced  # type: ignore[return-value]
    if forced not in ("", "auto"):
        raise PipelineError(f"{PLACEMENT_ENV}={forced!r}: must be auto, resident or streamed")
    limit = RESIDENT_MAX_BYTES
    if device.type == "cuda":
        limit = min(limit, int(DEVICE_MEMORY_SHARE * torch.cuda.mem_get_info(device)[0]))
    return "resident" if nbytes <= limit else "streamed"


def place(
    reader: SplitReader, device: torch.device, placement: Placement, workers: int
) -> Resident | Streamed:
    """The split for ``device``, as ``chosen_placement`` decided for all of the run's data;
    streamed by ``workers`` reader threads (``rank_workers``)."""
    if placement == "resident":
        return Resident(reader, device)
    return Streamed(reader, device, workers)


def rank_workers(ranks_on_node: int) -> int:
    """This rank's share of the node's ``MLPIPELINE_WORKERS`` (default: every core), at least one:
    the node's ranks (torchrun's ``LOCAL_WORLD_SIZE``) divide them, so eight ranks on a box start
    its cores' worth of reader threads and of draw threads between them, not eight times that."""
    return max(1, worker_count() // ranks_on_node)


@dataclass(frozen=True)
class BatchDraws:
    """What is random about one batch besides its rows, drawn on the host ahead of it: its online
    augmented copies and its random windows."""

    copies: BatchCopies | None
    offsets: torch.Tensor | None  # random windows' corners (``training.windows``)


class Feed:
    """What a phase trains (or validates) on: a placed split, each of its rows seen ``views``
    times an epoch, the copies augmented online as their batch is drawn, and the model's
    ``train.image_size`` window of each image taken (a random one for training)."""

    def __init__(
        self,
        rows: Rows,
        originals: int,
        online: OnlineAugmentation | None = None,
        window: Window | None = None,
        workers: int | None = None,
    ) -> None:
        self.rows = rows
        self.originals = originals
        self.online = online
        self.window = window
        self.draw_threads = draws_ahead(worker_count() if workers is None else workers)

    def __len__(self) -> int:
        return self.originals * (self.online.views if self.online is not None else 1)

    def batches(
        self,
        order: np.ndarray,
        batch_size: int,
        drop_last: bool,
        stream: tuple[str | int, ...] = (),
        skip: int = 0,
    ) -> Iterator[Batch]:
        """Batches of the rows in ``order`` but the first ``skip`` (not read: a run resumed within an
        epoch); ``stream`` names the epoch's draws (online augmentation, random windows), made by
        ``draw_threads`` threads as many batches ahead of the batch the device trains on."""
        bounds = batch_bounds(len(order), batch_size, drop_last)[skip:]
        rest = order[bounds[0].start :] if bounds else order[:0]
        batches = self.rows.batches(rest % self.originals, batch_size, drop_last)
        window = self.window
        if self.online is None and (window is None or not window.random):
            for images, labels in batches:
                yield (images if window is None else window.apply(images, None)), labels
            return
        online, device, shape, depth = self.online, self.rows.device, self.rows.image_shape, self.draw_threads
        copies = online.copy_numbers(order, self.originals) if online is not None else None
        slots = self._draw_slots(batch_size) if online is not None else None

        def drawn(step: int, into: BatchCopies | None, wait: torch.cuda.Event | None) -> BatchDraws:
            rows, named = bounds[step], skip + step  # draws named by the step in the whole epoch
            batch_copies = None
            if online is not None and copies is not None and into is not None:
                if wait is not None:
                    wait.synchronize()  # the slot's last draws have left for the device
                batch_copies = online.draw_copies(copies[rows], shape, into, "online", *stream, named)
            offsets = None if window is None else window.offsets(len(order[rows]), device, *stream, named)
            return BatchDraws(batch_copies, offsets)

        def start(step: int) -> tuple[int | None, Future[BatchDraws]]:
            slot, into, wait = slots.take() if slots is not None else (None, None, None)
            return slot, drawer.submit(drawn, step, into, wait)

        with ThreadPoolExecutor(depth, thread_name_prefix="online-draws") as drawer:
            ahead = deque(start(step) for step in range(min(depth, len(bounds))))
            for step, (images, labels) in enumerate(batches):
                slot, drawing = ahead.popleft()
                draws = drawing.result()
                if step + depth < len(bounds):
                    ahead.append(start(step + depth))  # into the slot of batch step - 1
                if draws.copies is not None and slots is not None and slot is not None:
                    images = draws.copies.apply(images, slots.copy_event(slot))
                yield (images if window is None else window.apply(images, draws.offsets)), labels

    def _draw_slots(self, batch_size: int) -> Turns[BatchCopies]:
        """Host memory for the draws in flight, reused batch after batch: one set a draw thread
        and one for the batch whose draws may still be copying; pinned on CUDA. The draws are
        dropped once applied, so the CPU and MPS (whose copies block) reuse them too."""
        assert self.online is not None
        cuda = self.rows.device.type == "cuda"
        online, shape = self.online, self.rows.image_shape
        count = self.draw_threads + 1
        return Turns(
            [BatchCopies.empty(online.transforms, batch_size, shape, cuda) for _ in range(count)], cuda
        )


def draws_ahead(workers: int) -> int:
    """Batches whose draws (online copies, random windows) are made at once, one a thread: as many
    as ``workers`` (a batch's draws come from one random stream, so one thread makes them; the
    cores are shared out by batch), and at least ``PREFETCH_BATCHES``. At 224x224 RGB, a batch of
    128 copies' draws take 45 MB of (pinned) host memory, reused (``Feed._draw_slots``)."""
    return max(PREFETCH_BATCHES, workers)
