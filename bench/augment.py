"""Augment benchmark: images/s and peak RSS at 8x8 and 28x28 for 10k, 100k and 1M images, and the
vectorized path against a per-image loop of the same transforms.

    python bench/augment.py [--quick]      # --quick skips the 1M runs
    python bench/augment.py --online --size 224 [--size 32 ...] [--preset presets/photos-finetune.yaml]

``--online`` prints instead what one online batch (``ONLINE_BATCH`` RGB images, the params.yaml
transforms or a preset's, every image a copy) costs one core: the draws (``transforms.draw``
into memory reused batch after batch, as training's draw threads make them: all the host does
when training runs on a GPU) and the per-pixel work with the hashed noise (``Draws.apply``: on
the GPU there, measured here on the CPU), per image, best of 3 CPU times; and the host memory of
one batch in flight: the draw memory it holds (pinned on CUDA) and the scratch it takes at
most while drawn (numpy's allocations, traced).

Each (size, count) run is the stage's own ``augment_dataset`` (read shards, augment, write shards,
preview) in a fresh child process, so its peak RSS is its own: it must stay flat as the count grows
and the time must grow linearly. Transforms are the ones in params.yaml; one copy per image and no
originals, so every output image went through the transforms. Scratch data lives in .cache/bench.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from common import peak_rss_mib, print_run, print_scaling

from mlpipeline.augmentation.transforms import Draws, Transforms, augment, draw
from mlpipeline.core.params import PARAMS_FILE, from_mapping, load_section, read_document
from mlpipeline.core.seeding import rng
from mlpipeline.core.shard_writer import DatasetWriter
from mlpipeline.devtools.preset import apply_preset
from mlpipeline.stages.augment import AugmentParams, augment_dataset, limit_threads

SCRATCH = Path(".cache/bench/augment")
SIDES = (8, 28)
COUNTS = (10_000, 100_000, 1_000_000)
CLASSES = [str(i) for i in range(10)]
WRITE_CHUNK = 65_536
LOOP_IMAGES = 1_000
ONLINE_BATCH = 128
ONLINE_SIDES = (224, 32)


def bench_params() -> AugmentParams:
    return dataclasses.replace(load_section(AugmentParams, "augment"), copies=1, keep_originals=False)


def random_images(n: int, side: int, *stream: str | int) -> tuple[np.ndarray, np.ndarray]:
    draws = rng(0, "bench", side, *stream)
    return draws.integers(0, 256, (n, 1, side, side), dtype=np.uint8), draws.integers(0, 10, n)


def write_inputs(root: Path, side: int, count: int) -> None:
    """A real dataset of ``count`` random images and an empty synthetic one, written in chunks."""
    with DatasetWriter(root / "ingested", CLASSES, (1, side, side)) as writer:
        for start in range(0, count, WRITE_CHUNK):
            writer.write("train", *random_images(min(WRITE_CHUNK, count - start), side, start))
    with DatasetWriter(root / "synthetic", CLASSES, (1, side, side)) as writer:
        writer.add_split("train")


def child(root: Path) -> None:
    """Run the stage's streaming loop on ``root``'s inputs; print seconds and peak RSS as JSON."""
    limit_threads()
    params = bench_params()
    rss_before = peak_rss_mib()
    started = time.perf_counter()
    augment_dataset(params, root / "ingested", root / "synthetic", root / "augmented", root / "samples.png")
    seconds = time.perf_counter() - started
    report = {"seconds": seconds, "rss_mib": peak_rss_mib(), "rss_before_mib": rss_before}
    print(json.dumps({**report, "threads": torch.get_num_threads()}))


ROW = "{:>7} {:>10} {:>8} {:>10} {:>13} {:>15} {:>8}"


def run_scaling(counts: tuple[int, ...]) -> None:
    print("stage throughput (read + augment + write, 1 copy per image), one child process per run")
    print(ROW.format("size", "images", "seconds", "images/s", "peak RSS MiB", "RSS after import", "threads"))
    for side in SIDES:
        times = {}
        for count in counts:
            root = SCRATCH / f"{side}x{side}-{count}"
            shutil.rmtree(root, ignore_errors=True)
            write_inputs(root, side, count)
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(root)], capture_output=True, text=True, check=True
            )
            shutil.rmtree(root)
            result = json.loads(out.stdout.splitlines()[-1])
            times[count] = result["seconds"]
            print_run(ROW, side, count, result)
        print_scaling(side, counts, times)


def best_seconds(work: Callable[[], None], repeats: int) -> float:
    """The least CPU time of ``repeats`` runs: on a shared machine, wall time would also count the
    other processes' turns on the cores (the kernel runs on one thread)."""
    times = []
    for _ in range(repeats):
        started = time.process_time()
        work()
        times.append(time.process_time() - started)
    return min(times)


def one_by_one(images: torch.Tensor, spec: Transforms) -> None:
    """The naive way: the same transforms, one image per call."""
    for i in range(len(images)):
        augment(images[i : i + 1], spec, 0, i)


def run_loop_comparison() -> None:
    print(f"\nvectorized vs per-image loop, transforms only, {LOOP_IMAGES:,} images, best of 3, CPU time")
    spec = bench_params().transforms
    for side in SIDES:
        images = torch.from_numpy(random_images(LOOP_IMAGES, side, "loop")[0])
        augment(images, spec, 0, "warm-up")
        vectorized = best_seconds(partial(augment, images, spec, 0, "batch"), 3)
        loop = best_seconds(partial(one_by_one, images, spec), 3)
        print(
            f"{side:>3}x{side:<2} vectorized {LOOP_IMAGES / vectorized:>10,.0f} images/s, "
            f"loop {LOOP_IMAGES / loop:>8,.0f} images/s, ratio {loop / vectorized:,.0f}x"
        )


def run_online(sides: list[int], preset: Path | None) -> None:
    """Per-image CPU cost of one online batch, on one core, and its host memory (module docstring)."""
    torch.set_num_threads(1)
    spec, which = bench_params().transforms, "params.yaml"
    if preset is not None:
        spec, which = preset_transforms(preset), str(preset)
    print(f"online batch of {ONLINE_BATCH} RGB images, {which} transforms, one core, best of 3 CPU time")
    print(
        f"{'size':>9} {'draws ms/image':>15} {'apply ms/image':>15} {'total ms/image':>15} "
        f"{'held MiB':>9} {'scratch MiB':>12}"
    )
    for side in sides:
        shape = (ONLINE_BATCH, 3, side, side)
        images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
        into = Draws.empty(spec, ONLINE_BATCH, (side, side))
        drawn = draw(spec, 0, shape, "bench", into=into)
        draws = best_seconds(partial(draw, spec, 0, shape, "bench", into=into), 3)
        apply = best_seconds(partial(drawn.apply, images), 3)
        per_image = [1000 * seconds / ONLINE_BATCH for seconds in (draws, apply, draws + apply)]
        held = sum(tensor.nbytes for tensor in drawn.tensors()) / 2**20
        tracemalloc.start()
        draw(spec, 0, shape, "bench", into=into)
        scratch = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        memory = f"{held:>10.1f}{scratch:>13.1f}"
        print(f"{side:>4}x{side:<4}" + "".join(f"{ms:>16.3f}" for ms in per_image) + memory)


def preset_transforms(preset: Path) -> Transforms:
    """params.yaml's transforms with a preset's written in (``make preset``)."""
    text = apply_preset(PARAMS_FILE.read_text(), read_document(preset.read_text(), preset), preset)
    return from_mapping(Transforms, read_document(text, PARAMS_FILE)["augment"]["transforms"], "transforms")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="skip the 1M-image runs")
    parser.add_argument("--online", action="store_true", help="per-image cost of one online batch")
    parser.add_argument("--size", type=int, action="append", help="image side for --online (repeatable)")
    parser.add_argument("--preset", type=Path, help="--online with a preset's transforms (presets/*.yaml)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    if args.online:
        run_online(args.size or list(ONLINE_SIDES), args.preset)
        return
    limit_threads()
    run_scaling(COUNTS[:2] if args.quick else COUNTS)
    run_loop_comparison()


if __name__ == "__main__":
    main()
