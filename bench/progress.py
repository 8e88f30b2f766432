"""What showing progress costs: each stage of bench/scale.py's pipeline at N images, run with
progress (stderr a pipe: plain lines, as under DVC or CI) and without (``MLPIPELINE_PROGRESS=0``).

    nice -n 10 python bench/progress.py [--count N]   (default 100,000)

Per stage it prints wall and CPU seconds (the stage's whole process tree) both ways and their
ratio; the target is under 1% more. The two runs of a stage follow each other, so drift in the
machine's load hits both alike, but on a shared machine a run-to-run spread of a few percent is
noise, not progress: so it also prints what one ``advance()`` costs (plain lines, and a tqdm bar
as a terminal shows it) and the upper bound that puts on a stage (as if it advanced twice per image), which
no load can blur. Data and scratch as bench/scale.py's (its PNGs are reused).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import resource
import subprocess
import sys
import time
import timeit
from contextlib import redirect_stderr
from pathlib import Path

from scale import generate, lay_out, pipeline_stages

from mlpipeline.core import progress

REPO_ROOT = Path(__file__).resolve().parents[1]
CALLS = 200_000  # advance() calls timed
HEADER = "       stage  wall off   wall on   ratio   cpu off    cpu on   ratio   bound"
PER_IMAGE = 2  # advance() calls per source image, an upper bound: train sees each about 1.6 times


def run_stage(work: Path, module: str, shown: bool) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, the stage and its workers) of one run."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "MLPIPELINE_PROGRESS": "1" if shown else "0"}
    env.pop(progress.INTERVAL_ENV, None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", module],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode:
        raise SystemExit(f"{module} failed:\n{result.stderr}")
    lines = [line for line in result.stderr.splitlines() if shown and re.match(r"\S+: [^:]+: \d", line)]
    if lines:
        print(f"    {len(lines)} progress line(s), the last: {lines[-1]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def advance_cost() -> dict[str, float]:
    """Seconds per ``advance()`` of plain lines (an interval never reached) and of a tqdm bar."""
    lines = progress.Lines("bench: lines", CALLS, "image", interval=3600)
    with redirect_stderr(io.StringIO()):
        bar = progress.Bar("bench: bar", CALLS, "image")
        costs = {
            "lines": timeit.timeit(lines.advance, number=CALLS) / CALLS,
            "bar": timeit.timeit(bar.advance, number=CALLS) / CALLS,
        }
        bar.close()
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=100_000, help="images (default: 100,000)")
    args = parser.parse_args()
    costs = advance_cost()
    print(
        f"one advance(): {costs['lines'] * 1e6:.2f} us (plain lines), {costs['bar'] * 1e6:.2f} us (tqdm bar)"
    )
    work = lay_out(args.count, generate(args.count))
    print(HEADER)
    for stage, module, _ in pipeline_stages():
        wall_off, cpu_off = run_stage(work, module, shown=False)
        wall_on, cpu_on = run_stage(work, module, shown=True)
        bound = PER_IMAGE * args.count * max(costs.values()) / wall_off
        print(
            f"{stage:>12} {wall_off:9.1f} {wall_on:9.1f} {wall_on / wall_off:7.3f} "
            f"{cpu_off:9.1f} {cpu_on:9.1f} {cpu_on / cpu_off:7.3f} {bound:7.3%}",
            flush=True,
        )
    print(f"bound: {PER_IMAGE} advance() calls per image (stages advance once per batch), at the dearer cost")


if __name__ == "__main__":
    main()
