"""Ingest at scale: wall time, images/s, peak RSS and bytes on disk, against a bare Pillow loop.

N PNGs of 32x32 RGB in the image-folder layout (100 classes of smooth colour blobs with noise),
for N = 100k, 300k and 1M (``--quick``: 100k only). Generated once under ``.cache/bench``
(not timed): one pool of images, and per N a folder of hard links to its first N.

For each N, run as DVC runs it (a child process, ``nice -n 10`` recommended):
- the ingest stage with ``MLPIPELINE_WORKERS=1`` and ``=2``;
- the floor: a bare loop in one process that lists the same files and opens, decodes and
  resizes each with Pillow into a numpy array (what ingest cannot do without);
- the same loop in two processes at once, each over half the classes: what two processes
  gain on this machine for this work, the ceiling for two workers.

Peak RSS is sampled every 20 ms: the largest single process of the stage's tree, and the
tree's sum (the parent plus its workers); CPU seconds are the tree's and the stage process's
own. Targets (the issue): the largest process's peak flat within 15% from 100k to 1M and under
3 GiB at 1M; 2 workers at least 1.6x one worker; one worker at least 0.8x the floor. Ratios
are taken within one run, and also from CPU seconds, since the machine is shared.

Usage: ``nice -n 10 python bench/ingest.py [--quick] [--counts 100000 ...] [--repeat 2]``
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import yaml
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / ".cache" / "bench"
POOL = BENCH_DIR / "rgb32-pool"
CLASSES = 100
SIDE = 32
COUNTS = (100_000, 300_000, 1_000_000)
FLOOR = """
import os, sys, numpy as np
from PIL import Image
root, side, part, parts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for label in sorted(d for d in os.listdir(root) if not d.startswith("."))[part::parts]:
    for name in sorted(os.listdir(os.path.join(root, label))):
        with open(os.path.join(root, label, name), "rb") as handle:
            image = Image.open(handle)
            image.load()
            if image.size != (side, side):
                image = image.resize((side, side), Image.Resampling.BICUBIC)
            np.asarray(image.convert("RGB"))
"""
FLOOR_PAIR = """
import subprocess, sys
python, code, root, side = sys.argv[1:]
loops = [subprocess.Popen([python, "-c", code, root, side, str(k), "2"]) for k in range(2)]
sys.exit(max(loop.wait() for loop in loops))
"""


@dataclass(frozen=True)
class Measure:
    seconds: float
    peak_mib: float  # the largest process of the tree
    tree_mib: float  # the whole tree (parent and workers)
    cpu_seconds: float  # user + system of the whole tree
    parent_cpu_seconds: float  # user + system of the stage's own process
    disk_mib: float = 0.0  # what the run wrote


def image_path(root: Path, index: int) -> Path:
    return root / f"c{index % CLASSES:03d}" / f"{index:07d}.png"


def _write_images(args: tuple[str, int, int]) -> None:
    root, start, stop = Path(args[0]), args[1], args[2]
    gen = np.random.default_rng(start)
    blobs = gen.integers(0, 256, (stop - start, 4, 1, 4, 1, 3), dtype=np.int16)  # smooth colours...
    blobs = np.broadcast_to(blobs, (stop - start, 4, 8, 4, 8, 3)).reshape(-1, SIDE, SIDE, 3)
    noise = gen.integers(-12, 13, blobs.shape, dtype=np.int16)  # ...and noise
    images = np.clip(blobs + noise, 0, 255).astype(np.uint8)
    for label in range(CLASSES):
        (root / f"c{label:03d}").mkdir(parents=True, exist_ok=True)
    for index, pixels in zip(range(start, stop), images, strict=True):
        Image.fromarray(pixels).save(image_path(root, index))


def generate(count: int) -> Path:
    """A folder of ``count`` images: hard links to the first ``count`` of one shared pool."""
    root = BENCH_DIR / f"rgb32-{count}"
    stamp = root / ".complete"
    if stamp.exists():
        return root
    started = time.perf_counter()
    fill_pool(count)
    shutil.rmtree(root, ignore_errors=True)
    for index in range(count):
        target = image_path(root, index)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(image_path(POOL, index), target)
    stamp.write_text(f"{count}\n")
    print(f"prepared {root} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return root


def fill_pool(count: int) -> None:
    """Write the pool's images up to ``count``, 10k a step; a step whose last image exists is done."""
    steps = [(str(POOL), s, min(s + 10_000, count)) for s in range(0, count, 10_000)]
    todo = [step for step in steps if not image_path(POOL, step[2] - 1).exists()]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write_images, todo))


def watch(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, ...]:
    """Run ``command``: wall time, peak RSS (MiB) of its largest process and of its tree, CPU
    seconds of the tree (every descendant is waited for, so RUSAGE_CHILDREN holds it) and of
    its own process (last sampled)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    peak = tree = own = 0.0
    parent = psutil.Process(child.pid)
    while child.poll() is None:
        try:
            sizes = [p.memory_info().rss for p in [parent, *parent.children(recursive=True)]]
            peak, tree = max(peak, *sizes), max(tree, sum(sizes))
            own = sum(parent.cpu_times()[:2])
        except psutil.Error:
            pass
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    stderr = child.stderr.read() if child.stderr else ""
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr}")
    print(stderr.strip(), file=sys.stderr)
    return seconds, peak / 2**20, tree / 2**20, cpu, own


def run_ingest(source: Path, workers: int) -> Measure:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["ingest"].update({"source": str(source), "channels": 3, "image_size": [SIDE, SIDE]})
    with tempfile.TemporaryDirectory(prefix="bench-ingest-", dir=BENCH_DIR) as work:
        Path(work, "params.yaml").write_text(yaml.safe_dump(params))
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "MLPIPELINE_WORKERS": str(workers)}
        measured = watch([sys.executable, "-m", "mlpipeline.stages.ingest"], Path(work), env)
        disk = sum(p.stat().st_size for p in Path(work, "data", "ingested").iterdir())
    return Measure(*measured, disk_mib=disk / 2**20)


def run_floor(source: Path) -> Measure:
    command = [sys.executable, "-c", FLOOR, str(source), str(SIDE), "0", "1"]
    return Measure(*watch(command, REPO_ROOT, dict(os.environ)))


def run_floor_pair(source: Path) -> Measure:
    """The bare loop in two processes at once, each over half the classes: how far two
    processes can speed this work up on this machine (cores that share a host's caches
    and memory bandwidth do not give 2x)."""
    command = [sys.executable, "-c", FLOOR_PAIR, sys.executable, FLOOR, str(source), str(SIDE)]
    return Measure(*watch(command, REPO_ROOT, dict(os.environ)))


def measure(count: int, repeat: int) -> dict[str, Measure]:
    """The fastest of ``repeat`` runs of each case, run in turn (so a busy spell hits all alike)."""
    source = generate(count)
    runs: dict[str, list[Measure]] = {"floor": [], "floor x2": [], "1 worker": [], "2 workers": []}
    for _ in range(repeat):
        runs["floor"].append(run_floor(source))
        runs["floor x2"].append(run_floor_pair(source))
        runs["1 worker"].append(run_ingest(source, 1))
        runs["2 workers"].append(run_ingest(source, 2))
    return runs


def report(count: int, runs: dict[str, list[Measure]]) -> None:
    """The table rows for ``count`` images (each case's fastest run) and the ratios the targets
    name, by wall and by CPU time.

    This machine's speed drifts by a fifth from minute to minute (the host is shared), so a ratio
    is taken within each round, whose cases ran back to back, and the median over the rounds is
    given with its range. The ratios are also given from CPU seconds: one worker's against the
    floor's, and for two workers the wall time two free cores would allow, the larger of the
    stage's own CPU time (its serial part) and half the tree's.
    """
    found = {name: min(measured, key=lambda m: m.seconds) for name, measured in runs.items()}
    for name, m in found.items():
        print(
            f"{count:>9,} {name:<10} {m.seconds:>8.1f} {count / m.seconds:>9,.0f} {m.cpu_seconds:>8.1f} "
            f"{m.parent_cpu_seconds:>8.1f} {m.peak_mib:>9.0f} {m.tree_mib:>9.0f} {m.disk_mib:>9.0f}",
            flush=True,
        )
    rounds = [dict(zip(runs, measured, strict=True)) for measured in zip(*runs.values(), strict=True)]

    def ratio(of: Callable[[dict[str, Measure]], float]) -> str:
        values = sorted(of(round_) for round_ in rounds)
        spread = f" ({values[0]:.2f}-{values[-1]:.2f})" if len(values) > 1 else ""
        return f"{statistics.median(values):.2f}x{spread}"

    def two_free_cores(r: dict[str, Measure]) -> float:
        two = r["2 workers"]
        return r["1 worker"].cpu_seconds / max(two.parent_cpu_seconds, two.cpu_seconds / 2)

    workers = ratio(lambda r: r["1 worker"].seconds / r["2 workers"].seconds)
    machine = ratio(lambda r: r["floor"].seconds / r["floor x2"].seconds)
    one = ratio(lambda r: r["floor"].seconds / r["1 worker"].seconds)
    one_cpu = ratio(lambda r: r["floor"].cpu_seconds / r["1 worker"].cpu_seconds)
    print(
        f"{count:>9,} wall: 2 workers {workers} one (target 1.6x; the bare loop in 2 processes runs "
        f"{machine} one), one worker {one} the floor (target 0.8x); CPU: one worker {one_cpu} the "
        f"floor, 2 workers on two free cores {ratio(two_free_cores)} one",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k images only")
    parser.add_argument("--counts", type=int, nargs="+", help=f"image counts (default {COUNTS})")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every case; ratios per round")
    args = parser.parse_args()
    counts = args.counts or ([COUNTS[0]] if args.quick else list(COUNTS))
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    columns = ("wall s", "images/s", "cpu s", "own cpu", "peak MiB", "tree MiB", "disk MiB")
    print(f"{'images':>9} {'case':<10} " + " ".join(f"{c:>9}" for c in columns), flush=True)
    results = {count: measure(count, args.repeat) for count in counts}
    for count in counts:
        report(count, results[count])
    if len(counts) > 1:
        low, high = counts[0], counts[-1]
        for name in ("1 worker", "2 workers"):
            peaks = [max(m.peak_mib for m in results[n][name]) for n in (low, high)]
            growth = peaks[1] / peaks[0] - 1
            print(f"peak RSS {name}: {low:,} -> {high:,} images: {growth:+.0%} (target within 15%)")


if __name__ == "__main__":
    main()
