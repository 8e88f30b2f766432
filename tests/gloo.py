"""Processes that meet on 127.0.0.1 as ranks or nodes do: a free port, and two gloo ranks in
spawned processes (a target here is imported again in each: keep its module light)."""

from __future__ import annotations

import multiprocessing
import socket
from collections.abc import Callable


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_gloo_ranks(target: Callable[..., None], *args: object) -> list[int | None]:
    """``target(rank, port, *args)`` in two spawned processes meeting on a free port; their exit
    codes (None: still running after two minutes)."""
    port = free_port()
    context = multiprocessing.get_context("spawn")
    ranks = [context.Process(target=target, args=(rank, port, *args)) for rank in range(2)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(120)
    return [process.exitcode for process in ranks]
