"""Training across nodes: the channel stats read once, on rank 0, and broadcast."""

from __future__ import annotations

import multiprocessing
import os
import socket
from pathlib import Path

import pytest
from tiny_training import tiny_params, write_inputs

from mlpipeline.training.distributed import World


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank_reads_stats(rank: int, port: int, root: Path, calls: Path) -> None:
    """One of two gloo ranks running ``train``, counting its calls of the channel stats."""
    import mlpipeline.stages.train as stage

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    stats = stage.streamed_channel_stats

    def counted(shards):
        with open(calls / f"rank{rank}", "a") as out:
            out.write("call\n")
        return stats(shards)

    stage.streamed_channel_stats = counted
    world = World(rank=rank, size=2, local_rank=rank, local_size=2)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2")
    result = stage.train(tiny_params(processes=2, epochs=1), write_inputs(root), None, root / "ckpt", world)
    (calls / f"config{rank}").write_text(repr((result.config.mean, result.config.std)))


@pytest.mark.slow
def test_channel_stats_are_read_on_rank_0_alone_and_broadcast(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    port = free_port()
    context = multiprocessing.get_context("spawn")
    ranks = [
        context.Process(target=_rank_reads_stats, args=(rank, port, tmp_path / f"r{rank}", calls))
        for rank in range(2)
    ]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(120)
    assert [process.exitcode for process in ranks] == [0, 0]
    assert (calls / "rank0").read_text() == "call\n" and not (calls / "rank1").exists()
    assert (calls / "config0").read_text() == (calls / "config1").read_text()
