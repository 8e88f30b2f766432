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
