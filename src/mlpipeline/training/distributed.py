"""Multi-process training with DistributedDataParallel, launched through torchrun.

``train.processes > 1`` makes the stage start itself again under
``python -m torch.distributed.run --standalone`` (a free rendezvous port on this
machine), one process per GPU, or per share of the cores with the gloo backend on
CPU. Every rank trains on its own shard of each epoch's order and holds the same
weights after every step; rank 0 alone writes checkpoints and outputs.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mlpipeline.core.errors import PipelineError

# Set by torchrun in every worker it starts.
WORKER_ENV = "TORCHELASTIC_RUN_ID"

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all ranks, in place."""
        if self.size > 1:
            dist.all_reduce(tensor)
        return tensor

    def from_main(self, compute: Callable[[], T]) -> T:
        """``compute()`` run by rank 0 alone and its (small, picklable) result sent to every rank:
        what all ranks need but one read is enough for, such as the channel stats, which read the
        whole training split."""
        if self.size == 1:
            return compute()
        box = [compute() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's BatchNorm statistics, so all ranks evaluate the model rank 0
        saves (DDP syncs buffers at the start of a forward, each rank then updates its own)."""
        if self.size > 1:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module to train: DDP averages gradients across ranks; one process uses the model."""
        if self.size == 1:
            return model
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def in_worker() -> bool:
    return WORKER_ENV in os.environ


def world_from_env() -> World:
    if not in_worker():
        return World()
    env = os.environ
    return World(
        rank=int(env["RANK"]),
        size=int(env["WORLD_SIZE"]),
        local_rank=int(env["LOCAL_RANK"]),
        local_size=int(env["LOCAL_WORLD_SIZE"]),
    )


@contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Join the process group (nccl on CUDA, gloo otherwise) for the duration of the block.

    Ranks other than 0 log warnings only: one process reports for all.
    """
    if world.size == 1:
        yield
        return
    if not world.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def launch(module: str, processes: int, threads_per_process: int) -> None:
    """Run ``python -m module`` in ``processes`` workers under torchrun and wait for them."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        module,
    ]
    # torchrun would otherwise set 1 thread per worker and warn about it.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_process)}
    code = subprocess.run(command, env=env, check=False).returncode
    if code != 0:
        raise PipelineError(f"{processes} training processes under torchrun failed (exit {code}); see above")
