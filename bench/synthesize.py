"""Synthesize benchmark: images/s and peak RSS at 8x8 and 28x28 for 10k, 100k and 1M images.

    python bench/synthesize.py [--quick] [--threads N]   # --quick skips the 1M runs

Each (size, count) run is the stage's own ``synthesize`` (learn the real values, render, write
shards, preview, transfer score) with the params in params.yaml but ``count``, in a fresh child
process, so its peak RSS is its own: it must stay flat as the count grows, and the time must grow
linearly. The real inputs are the demo digits ingested at 8x8 (17 grey levels: the snapping path)
and at 28x28 (bicubic, many levels: the continuous path). Each child renders in its own process
(no worker processes) with the stage's thread policy (one torch thread) unless ``--threads`` sets
``OMP_NUM_THREADS``, so images per CPU second are per-core figures; on a shared machine the CPU
seconds are the ones to trust. Scratch data lives in .cache/bench.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import peak_rss_mib, print_run, print_scaling

from mlpipeline.core.device import limit_threads
from mlpipeline.core.params import load_section
from mlpipeline.stages.ingest import IngestParams, ingest
from mlpipeline.stages.synthesize import SynthesizeParams, synthesize

SCRATCH = Path(".cache/bench/synthesize")
SIDES = (8, 28)
COUNTS = (10_000, 100_000, 1_000_000)


def write_real(side: int) -> Path:
    """The demo digits ingested at ``side`` x ``side``, as the synthesize stage's input."""
    params = dataclasses.replace(load_section(IngestParams, "ingest"), image_size=[side, side])
    out = SCRATCH / f"real-{side}x{side}"
    ingest(params, out)
    return out


def child(real: Path, count: int, out: Path) -> None:
    """Run the stage on ``real`` for ``count`` images; print seconds and peak RSS as JSON."""
    limit_threads()
    params = dataclasses.replace(load_section(SynthesizeParams, "synthesize"), count=count)
    rss_before = peak_rss_mib()
    started, cpu_started = time.perf_counter(), time.process_time()
    synthesize(params, real, out / "synthetic", out, workers=1)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    report = {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "rss_mib": peak_rss_mib(),
        "rss_before_mib": rss_before,
    }
    print(json.dumps({**report, "threads": torch.get_num_threads()}))


ROW = "{:>7} {:>10} {:>8} {:>10} {:>13} {:>15} {:>8} {:>8} {:>12}"


def run_scaling(counts: tuple[int, ...], threads: int | None) -> None:
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    print("stage throughput (learn real values + render + write shards + preview), one child per run")
    columns = ("size", "images", "seconds", "images/s", "peak RSS MiB", "RSS after import", "threads")
    print(ROW.format(*columns, "CPU s", "images/CPU-s"))
    for side in SIDES:
        real = write_real(side)
        times = {}
        for count in counts:
            out = SCRATCH / f"{side}x{side}-{count}"
            command = [sys.executable, __file__, "--child", str(real), str(count), str(out)]
            result = json.loads(
                subprocess.run(
                    command, capture_output=True, text=True, check=True, env=env
                ).stdout.splitlines()[-1]
            )
            shutil.rmtree(out)
            times[count] = result["cpu_seconds"]
            print_run(ROW, side, count, result)
        print_scaling(side, counts, times)
        shutil.rmtree(real)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="skip the 1M-image runs")
    parser.add_argument("--threads", type=int, help="torch threads per child (default: the stage's policy)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        real, count, out = args.child
        child(Path(real), int(count), Path(out))
        return
    run_scaling(COUNTS[:2] if args.quick else COUNTS, args.threads)


if __name__ == "__main__":
    main()
