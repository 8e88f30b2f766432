"""mlpipeline-predict at scale: images/s and peak memory at 10k and 100k images, torch and ONNX.

    nice -n 10 python bench/predict.py [--counts 10000 100000] [--side 8] [--channels 1]

The inputs are a manifest of N rows over 1,000 distinct PNGs (the decoding work of N files, the
disk of 1,000), predicted by the demo's CNN layout (8x8 grey by default, the demo's digits) into
a CSV. Each run is a child process; its tree is sampled every 50 ms for the peak RSS of the main
process and of the largest worker. Flat memory prints a 100k/10k peak ratio near 1.0x (the
target: under 1.1x), where a table built in memory would grow with the count. Images/s is held
against the ceiling of one process decoding the PNGs (already in memory) and scoring them in
batches of 256 on one thread, as each worker does, times the worker count: what is left is
listing, reading the files, the workers' start, moving batches between processes and writing
the table. MLPIPELINE_WORKERS sets the workers, as for predict.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from scoring_fixtures import write_models, write_pngs

from mlpipeline.core.workers import worker_count
from mlpipeline.ingestion.images import decode_image
from mlpipeline.modeling.scoring import ModelSpec

REPO_ROOT = Path(__file__).resolve().parents[1]
DISTINCT = 1000
SAMPLE_SECONDS = 0.05


def write_manifest(root: Path, files: list[Path], count: int) -> Path:
    manifest = root / f"manifest-{count}.csv"
    with open(manifest, "w") as out:
        out.write("path\n")
        for index in range(count):
            out.write(f"{files[index % len(files)].name}\n")
    return manifest


def run_predict(manifest: Path, model: list[str]) -> tuple[float, float, float]:
    """Seconds, peak RSS (MiB) of the main process and of the largest worker."""
    output = manifest.with_suffix(".out.csv")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "MLPIPELINE_PROGRESS": "0"}
    command = [
        sys.executable,
        "-m",
        "mlpipeline.modeling.predict",
        str(manifest),
        *model,
        "--output",
        str(output),
    ]
    started = time.perf_counter()
    process = psutil.Popen(command, env=env, stderr=subprocess.PIPE)
    main_peak = worker_peak = 0
    while process.poll() is None:
        try:
            main_peak = max(main_peak, process.memory_info().rss)
            for child in process.children(recursive=True):
                worker_peak = max(worker_peak, child.memory_info().rss)
        except psutil.Error:  # a process ended between listing and reading it
            pass
        time.sleep(SAMPLE_SECONDS)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(process.stderr.read().decode())
    return seconds, main_peak / 2**20, worker_peak / 2**20


def ceiling(spec: ModelSpec, files: list[Path]) -> float:
    """Images/s of decoding PNG bytes and scoring them, a batch at a time on one thread in this
    process, times the workers: predict with no listing, reading, processes or output."""
    config, scorer = spec.load()
    preprocessing, data = config.input_preprocessing(), [path.read_bytes() for path in files]
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < 3:
        for start in range(0, len(data), spec.batch_size):
            chunk = data[start : start + spec.batch_size]
            scorer(np.stack([decode_image(item, "image", preprocessing) for item in chunk]))
            done += len(chunk)
    return done / (time.perf_counter() - started) * worker_count()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--side", type=int, default=8)
    parser.add_argument("--channels", type=int, choices=(1, 3), default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as scratch:
        root = Path(scratch)
        models, onnx_file = write_models(root, args.side, args.channels)
        files = write_pngs(root, DISTINCT, args.side, args.channels)
        print(f"{args.side}x{args.side}x{args.channels} images, {worker_count()} workers")
        print("  model    images   seconds  images/s  ceiling/s  of ceiling  main MiB  worker MiB")
        runs = {
            "torch": (ModelSpec(str(models), False), ["--model", str(models), "--device", "cpu"]),
            "onnx": (ModelSpec(str(onnx_file), True), ["--onnx", str(onnx_file)]),
        }
        for name, (spec, model) in runs.items():
            fastest, peaks = ceiling(spec, files), []
            for count in args.counts:
                seconds, main_peak, worker_peak = run_predict(write_manifest(root, files, count), model)
                peaks.append((main_peak, worker_peak))
                rate = count / seconds
                cells = f"{count:>9,} {seconds:9.1f} {rate:9,.0f} {fastest:10,.0f} {rate / fastest:11.2f}"
                print(f"  {name:5} {cells} {main_peak:9.0f} {worker_peak:11.0f}", flush=True)
            (main_low, worker_low), (main_high, worker_high) = peaks[0], peaks[-1]
            ratios = f"main {main_high / main_low:.2f}x, worker {worker_high / max(worker_low, 1):.2f}x"
            print(f"        peak at {args.counts[-1]:,} / at {args.counts[0]:,}: {ratios} (flat: under 1.1x)")


if __name__ == "__main__":
    main()
