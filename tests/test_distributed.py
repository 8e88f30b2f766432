"""The ranks of one run stopping together: whatever rank says why, none leaves before its line is
out (torchrun stops every rank once one exits). Two gloo ranks in spawned processes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from gloo import two_gloo_ranks

from mlpipeline.core.errors import PipelineError
from mlpipeline.training import distributed
from mlpipeline.training.distributed import World


def _rank_stops(rank: int, port: int, record: Path) -> None:
    """One of two gloo ranks stopping on one error that rank 0 says, slowly: it waits until rank 1
    has left (or 2 s), as a rank whose line is not out yet when torchrun stops the others."""

    def slow_print(stage: str, error: PipelineError) -> None:
        deadline = time.monotonic() + 2
        while "left" not in record.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        with open(record, "a") as out:
            out.write(f"{stage}: error: {error}\n")

    distributed.stage.print_error = slow_print
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    world = World(rank=rank, size=2, local_rank=rank, local_size=2)
    with distributed.process_group(world, torch.device("cpu")):
        try:
            world.stop_together(PipelineError("diverged"), says=world.is_main)
        finally:
            with open(record, "a") as out:
                out.write(f"rank {rank} left\n")


def test_stop_together_lets_no_rank_leave_before_the_line_is_out(tmp_path: Path) -> None:
    """torchrun stops every rank once one exits: rank 0's line must be out before any rank leaves."""
    record = tmp_path / "record"
    record.write_text("")

    assert two_gloo_ranks(_rank_stops, record) == [2, 2]
    lines = record.read_text().splitlines()
    assert lines[0] == "train: error: diverged" and sorted(lines[1:]) == ["rank 0 left", "rank 1 left"]


def _rank_trains(rank: int, port: int, out: Path, broadcast: bool) -> None:
    """One of two gloo ranks taking three steps of a BatchNorm model on data of its own, its
    buffers broadcast at every forward (DDP's default) or not (``World.wrap``); rank 0 writes
    the model it would save, after the epoch's ``sync_buffers``, and whether DDP broadcast."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    world = World(rank=rank, size=2, local_rank=rank, local_size=2)
    with distributed.process_group(world, torch.device("cpu")):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(144, 3)
        )
        module = world.wrap(model, torch.device("cpu"))
        wrapped = module.broadcast_buffers
        module.broadcast_buffers = broadcast
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        data = torch.Generator().manual_seed(rank)  # each rank its own batches
        for _ in range(3):
            loss = module(torch.randn(8, 1, 8, 8, generator=data) * (rank + 1)).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        world.sync_buffers(model)
        if world.is_main:
            torch.save({"wrapped_broadcast": wrapped, "state": model.state_dict()}, out)


def test_ddp_broadcasts_no_buffers_and_rank_0_saves_the_same_model(tmp_path: Path) -> None:
    """``broadcast_buffers=False`` spares a collective per step. The only buffers that change are
    BatchNorm's running stats, which a training forward does not read: rank 0's evolve from its own
    batches either way, and ``sync_buffers`` gives every rank rank 0's before evaluation."""
    saved = {}
    for broadcast in (False, True):
        out = tmp_path / f"broadcast-{broadcast}.pt"
        assert two_gloo_ranks(_rank_trains, out, broadcast) == [0, 0]
        saved[broadcast] = torch.load(out)
    assert saved[False]["wrapped_broadcast"] is False
    state, reference = saved[False]["state"], saved[True]["state"]
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[name], reference[name]) for name in state)
    assert state["1.num_batches_tracked"] == 3
