"""Helpers the benchmarks share."""

from __future__ import annotations

import itertools
import resource
import sys
from pathlib import Path

import torch


def peak_rss_mib() -> float:
    """This process's peak RSS. Linux's VmHWM starts afresh at exec; ``ru_maxrss`` would carry
    over the parent's peak, which grew while writing the inputs."""
    status = Path("/proc/self/status")
    if status.exists():
        (line,) = [line for line in status.read_text().splitlines() if line.startswith("VmHWM:")]
        return int(line.split()[1]) / 2**10
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def print_run(row: str, side: int, count: int, result: dict) -> None:
    """One table row of a throughput run: size, images, seconds, images/s, peak RSS, threads, and
    CPU seconds and images per CPU second when the run reports ``cpu_seconds``."""
    seconds = result["seconds"]
    cells = (f"{side}x{side}", f"{count:,}", f"{seconds:.2f}", f"{count / seconds:,.0f}")
    memory = (f"{result['rss_mib']:.0f}", f"{result['rss_before_mib']:.0f}", result["threads"])
    cpu = result.get("cpu_seconds")
    per_cpu = () if cpu is None else (f"{cpu:.2f}", f"{count / cpu:,.0f}")
    print(row.format(*cells, *memory, *per_cpu), flush=True)


def print_scaling(side: int, counts: list[int], times: dict[int, float]) -> None:
    """How time grows with the image count: linear growth prints ~10x time for 10x images."""
    steps = [f"{b // a}x images -> {times[b] / times[a]:.1f}x time" for a, b in itertools.pairwise(counts)]
    print(f"        scaling at {side}x{side}: {', '.join(steps)}")


def plain_step(
    loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
) -> None:
    """Backward and one optimizer step as a plain PyTorch loop takes them (through the grad
    scaler on the fp16 path): the peer the benchmarks hold the template's loop against."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
