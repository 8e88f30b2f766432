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
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.elastic.rendezvous import RendezvousError
from torch.nn.parallel import DistributedDataParallel

from mlpipeline.core import stage
from mlpipeline.core.errors import EXIT_USER_ERROR, PipelineError
from mlpipeline.training import stopping
from mlpipeline.training.rendezvous import (
    Rendezvous,
    check_before_meeting,
    note_meeting,
    refused_port,
    rendezvous_from_env,
    torchrun_timeout,
)
from mlpipeline.training.stopping import EXIT_REQUEUE, STOP_SIGNALS

# Set by torchrun in every worker it starts.
WORKER_ENV = "TORCHELASTIC_RUN_ID"
# What torchrun handles by default (it dies of the others); the stop signals are added to them.
TORCHRUN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
# How long torchrun waits for its workers once signalled, before it kills them (its default: 30 s).
# The launcher's own grace (SLURM's KillWait, Kubernetes' terminationGracePeriodSeconds) is what
# bounds a save; torchrun must not cut it shorter.
SHUTDOWN_SECONDS = 24 * 3600

T = TypeVar("T")

# The gloo group of host-side agreements (when to save, whether to stop) when the training group
# is nccl: they must never wait on the device. None: the training group itself (gloo already).
_host_group: dist.ProcessGroup | None = None


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
        what all ranks need but one read is enough for, such as the checkpoint to resume from."""
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

    def any_rank(self, flags: torch.Tensor) -> dist.Work | None:
        """Start taking the element-wise maximum of ``flags`` (a CPU int tensor, changed in place)
        over all ranks, on the host, without waiting for it: the returned work's ``wait()`` does
        (None with one rank: ``flags`` already is the answer)."""
        if self.size == 1:
            return None
        return dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=_host_group, async_op=True)

    def gather_to_main(self, value: T) -> list[T] | None:
        """Every rank's small, picklable ``value``, in rank order, on rank 0 (None elsewhere)."""
        if self.size == 1:
            return [value]
        gathered: list[T] | None = [None] * self.size if self.is_main else None  # type: ignore[list-item]
        dist.gather_object(value, gathered, dst=0, group=_host_group)
        return gathered

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
        saves (in training each rank updates its own from its batches: see ``wrap``)."""
        if self.size > 1:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module to train: DDP averages gradients across ranks; one process uses the model.

        Without DDP's buffer broadcast before every forward (a collective a step): the buffers
        that change in training are BatchNorm's running stats (the others, such as position
        ids, never change), and a training forward normalizes by the batch's own stats, never
        reads them. Rank 0's evolve from its own batches with or without the broadcast, and
        ``sync_buffers`` gives every rank rank 0's before each evaluation, so the saved model is
        the same bytes (``tests/test_distributed.py``)."""
        if self.size == 1:
            return model
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


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
    global _host_group
    if not world.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    _host_group = dist.new_group(backend="gloo") if backend != "gloo" else None
    try:
        yield
    finally:
        _host_group = None
        dist.destroy_process_group()


def _first_failure(failed: ChildFailedError) -> BaseException:
    """How a run under torchrun ended, from the failure that came first (torchrun then stops the
    other workers with SIGTERM; a worker that lost its peers ends with ``EXIT_REQUEUE``): the exit
    code of a worker that said why in its one line, or a line for one that could not say."""
    if any(failure.exitcode == EXIT_USER_ERROR for failure in failed.failures.values()):
        return SystemExit(EXIT_USER_ERROR)
    consequences = (EXIT_REQUEUE, -signal.SIGTERM)
    rank, first = min(
        failed.failures.items(), key=lambda item: (item[1].timestamp, item[1].exitcode in consequences)
    )
    if first.exitcode == EXIT_REQUEUE:
        return SystemExit(EXIT_REQUEUE)
    if first.exitcode < 0:
        killed = signal.Signals(-first.exitcode)
        why = " (out of memory?)" if killed == signal.SIGKILL else ""
        return PipelineError(f"the training process of rank {rank} was killed by {killed.name}{why}")
    return PipelineError(f"the training process of rank {rank} failed (exit {first.exitcode}); see above")


def peer_lost(exc: BaseException) -> str | None:
    """The cause, in a few words, when ``exc`` is a collective failing because another training
    process went away (gloo's errors are plain RuntimeErrors naming its transport), else None."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if not (isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and "/gloo/" in text)):
        return None
    cause = text.split("] ", 1)[1] if text.startswith("[") and "] " in text else text
    return cause.split(". ", 1)[0]


def meet(nodes: int) -> Rendezvous | None:
    """Where this node meets the others (None: one node), checked before any work: node 0 that it
    can listen, every other node that node 0 answers (they wait for it here, so they read the
    training inputs only once node 0, which may have pulled them into a shared clone, is ready),
    or that node 0 ran no training this time (``training.rendezvous``)."""
    if nodes == 1:
        return None
    meeting = rendezvous_from_env(nodes)
    check_before_meeting(meeting)
    return meeting


def launch(module: str, processes: int, threads_per_process: int, meeting: Rendezvous | None) -> None:
    """Run ``python -m module`` in ``processes`` workers on this node under torchrun (in this
    process, so a failure is one line, not torchrun's traceback) and wait for them.

    One node (``meeting`` None): a standalone rendezvous on a free port. Several: a static
    rendezvous at ``meeting`` (see ``meet``), node ``meeting.node`` taking global ranks
    ``node * processes`` onwards, so global rank 0, which alone writes, runs on node 0.
    A stop signal (``training.stopping``) goes on to the workers, which save and end with
    ``EXIT_REQUEUE``; torchrun waits for them as long as the launcher lets it.
    """
    where = ["--standalone"]
    if meeting is not None:
        where = [
            f"--nnodes={meeting.nodes}",
            f"--node-rank={meeting.node}",
            "--rdzv-backend=static",
            f"--master-addr={meeting.address}",
            f"--master-port={meeting.port}",
            f"--rdzv-conf=timeout={torchrun_timeout(meeting)}",
        ]
    handled = ",".join(dict.fromkeys(sig.name for sig in (*TORCHRUN_SIGNALS, *STOP_SIGNALS)))
    argv = [
        *where,
        f"--nproc-per-node={processes}",
        "--max-restarts=0",
        f"--signals-to-handle={handled}",
        f"--shutdown-timeout={SHUTDOWN_SECONDS}",
        "-m",
        module,
    ]
    os.environ["OMP_NUM_THREADS"] = str(threads_per_process)  # torchrun would set 1 and warn
    for name in [*logging.root.manager.loggerDict, "torch.distributed.elastic"]:  # each sets its own level
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)  # its reports of what we say in one line
    if stopping.requested():
        raise SystemExit(EXIT_REQUEUE)  # asked to stop before any training: nothing to save
    if meeting is not None:
        note_meeting()
    try:
        torchrun.run(torchrun.get_args_parser().parse_args(argv))
    except ChildFailedError as failed:
        raise _first_failure(failed) from None
    except SignalException as signalled:  # torchrun passed it on and waited for the workers
        code = EXIT_REQUEUE if signalled.sigval in STOP_SIGNALS else 128 + signalled.sigval
        raise SystemExit(code) from None
    except (dist.DistError, RendezvousError) as exc:
        assert meeting is not None, exc  # a standalone rendezvous has no one to wait for
        taken = "EADDRINUSE" in str(exc)  # taken since the check: node 0's TCPStore could not listen
        raise (refused_port(meeting) if taken else meeting.not_all_met()) from None
