"""Multi-process and multi-node training with DistributedDataParallel, launched through torchrun.

``train.processes > 1`` or ``train.nodes > 1`` makes the stage start itself again under
torchrun: ``--standalone`` on one node (a free rendezvous port on this machine), a static
rendezvous at ``MASTER_ADDR:MASTER_PORT`` across nodes. One process per GPU, or per share
of the cores with the gloo backend on CPU. Every rank trains on its own shard of each
epoch's order and holds the same weights after every step; global rank 0 (on node 0)
alone writes checkpoints and outputs. See docs/multinode.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.elastic.rendezvous import RendezvousError
from torch.nn.parallel import DistributedDataParallel

from mlpipeline.core import stage
from mlpipeline.core.errors import EXIT_USER_ERROR, PipelineError
from mlpipeline.training.rendezvous import (
    check_before_meeting,
    refused_port,
    rendezvous_from_env,
    torchrun_timeout,
)

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
    node: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all ranks, in place."""
        if self.size > 1:
            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.size > 1:
            dist.barrier()

    def from_main(self, compute: Callable[[], T]) -> T:
        """``compute()`` run by rank 0 alone and its (small, picklable) result sent to every rank:
        what all ranks need but one read is enough for, such as the channel stats, which read the
        whole training split."""
        if self.size == 1:
            return compute()
        box = [compute() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, parts: dict[str, str]) -> None:
        """Refuse to train unless every rank holds rank 0's ``parts`` (params, code, inputs: see
        ``checkpoint.fingerprint``), before any work: a node at another commit or with other data
        would otherwise train a model nobody can reproduce. Every node says so in one line (its
        local rank 0; the others leave quietly)."""
        if self.size == 1:
            return
        gathered: list[tuple[int, dict[str, str]] | None] = [None] * self.size
        dist.all_gather_object(gathered, (self.node, parts))
        main = parts if self.is_main else gathered[0][1]  # type: ignore[index]
        for node, theirs in gathered:  # type: ignore[misc]
            differing = sorted(key for key in main.keys() | theirs.keys() if main.get(key) != theirs.get(key))
            if differing:
                what = _differences(differing, main, theirs, node)
                refusal = PipelineError(
                    f"node {node} differs from node 0 in {what}: every node must run the same commit, "
                    "params and inputs (git checkout, dvc pull)"
                )
                self.stop_together(refusal, says=self.local_rank == 0)

    def stop_together(self, error: PipelineError, says: bool) -> NoReturn:
        """End this rank on ``error``, which every rank reached at the same point: the ranks that
        ``says`` print its one line, then all wait for each other before exiting (torchrun stops
        every rank once one exits, maybe before a line is out)."""
        if says:
            stage.print_error("train", error)
        self.barrier()
        raise SystemExit(error.exit_code)

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


def _differences(
    keys: list[str], main: dict[str, str], theirs: dict[str, str], node: int, shown: int = 3
) -> str:
    """``train.lr (0.01 on node 0, 0.02 on node 1)`` for params, the name alone for files."""
    named = [
        f"{key} ({main.get(key)} on node 0, {theirs.get(key)} on node {node})"
        if key.startswith("train.")
        else key
        for key in keys[:shown]
    ]
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(named) + more


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
        node=int(env.get("GROUP_RANK", "0")),  # torchrun's name for the node's index
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


def launch(module: str, nodes: int, processes: int, threads_per_process: int) -> None:
    """Run ``python -m module`` in ``processes`` workers on each of ``nodes`` nodes under torchrun
    (in this process, so a failure is one line, not torchrun's traceback) and wait for them.

    One node: a standalone rendezvous on a free port. Several: a static rendezvous at
    ``MASTER_ADDR:MASTER_PORT`` (checked first: ``training.rendezvous``), node ``NODE_RANK``
    taking global ranks ``NODE_RANK * processes`` onwards, so global rank 0, which alone writes,
    runs on node 0.
    """
    where = ["--standalone"]
    meeting = None
    if nodes > 1:
        meeting = rendezvous_from_env(nodes)
        check_before_meeting(meeting)
        where = [
            f"--nnodes={nodes}",
            f"--node-rank={meeting.node}",
            "--rdzv-backend=static",
            f"--master-addr={meeting.address}",
            f"--master-port={meeting.port}",
            f"--rdzv-conf=timeout={torchrun_timeout(meeting)}",
        ]
    argv = [*where, f"--nproc-per-node={processes}", "--max-restarts=0", "-m", module]
    os.environ["OMP_NUM_THREADS"] = str(threads_per_process)  # torchrun would set 1 and warn
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # its failure report
    try:
        torchrun.run(torchrun.get_args_parser().parse_args(argv))
    except ChildFailedError as failed:
        codes = sorted({failure.exitcode for failure in failed.failures.values()})
        if EXIT_USER_ERROR in codes:  # a worker said why in its one error line
            raise SystemExit(EXIT_USER_ERROR) from None
        raise PipelineError(
            f"training processes under torchrun failed (exit {', '.join(map(str, codes))}); see above"
        ) from None
    except (dist.DistError, RendezvousError) as exc:
        assert meeting is not None, exc  # a standalone rendezvous has no one to wait for
        taken = "EADDRINUSE" in str(exc)  # taken since the check: node 0's TCPStore could not listen
        raise (refused_port(meeting) if taken else meeting.not_all_met()) from None
