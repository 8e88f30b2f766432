"""Scale benchmark: every stage of the pipeline on N generated 32x32 RGB PNGs, N = 100k, 300k, 1M.

    nice -n 10 python bench/scale.py [--quick] [--counts N ...]

For each N it writes N PNGs in the image-folder layout (10 classes of coloured shapes on noise;
made once under .cache/bench/scale and reused), lays out a scratch repository (params.yaml with
the repository's params, scaled to the data: 32x32 RGB, a tiny model trained for one epoch), and
runs the stages ``dvc.yaml`` lists, in its order, each as its own process exactly as DVC runs
it (``python -m mlpipeline.stages.<name>``, all cores through ``MLPIPELINE_WORKERS``). Where
``augment`` offers other modes than its default (an ``online`` mode), augment and train run
again in each. Per stage it prints wall time, images/s, the peak RSS of the largest process of
the stage's tree (the stage or one of its workers: ``wait4``'s ru_maxrss) and the bytes its
outputs take on disk; then, per stage, how the peak RSS moved from the smallest N to the largest
against the targets (flat within 15%, under 3 GiB at 1M). ``--quick``: 100k only.

Scratch data is large (about 15 KB per image at copies: 1), so only the generated PNGs are kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

import numpy as np
import yaml
from PIL import Image

from mlpipeline.augmentation.online import read_online
from mlpipeline.core.seeding import rng
from mlpipeline.core.shards import Dataset
from mlpipeline.core.workers import ordered_map, worker_count
from mlpipeline.stages.augment import AugmentParams

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRATCH = REPO_ROOT / ".cache" / "bench" / "scale"
COUNTS = (100_000, 300_000, 1_000_000)
SIDE, CLASSES, CHUNK = 32, 10, 1_000
RSS_FLAT, RSS_CEILING_MIB = 0.15, 3 * 1024
# The repository's params, scaled to the data and to a benchmark's patience.
OVERRIDES: dict[str, dict[str, Any]] = {
    "ingest": {"channels": 3, "image_size": [SIDE, SIDE]},
    "augment": {"copies": 1},
    "train": {
        "model": {"widths": [8, 16]},
        "epochs": 1,
        "min_steps": 0,
        "batch_size": 256,
        "synthetic": {"use": "mix", "pretrain_epochs": 1},
    },
    "evaluate": {"device": "cpu"},
}


@dataclasses.dataclass(frozen=True)
class Run:
    stage: str
    images: int
    seconds: float
    rss_mib: float
    disk_bytes: int


def write_chunk(job: tuple[Path, int, int]) -> int:
    """PNGs ``start .. start + n`` of the set: class c is a shape of colour c on noise."""
    root, start, n = job
    draws = rng(0, "bench-scale", start)
    labels = draws.integers(0, CLASSES, n)
    colours = rng(0, "bench-scale", "colours").integers(40, 256, (CLASSES, 3))
    yy, xx = np.mgrid[:SIDE, :SIDE]
    centre = draws.uniform(10, 22, (n, 2))
    radius = draws.uniform(5, 10, n)[:, None, None]
    distance = np.hypot(yy - centre[:, 0, None, None], xx - centre[:, 1, None, None])
    square = (labels % 2 == 1)[:, None, None]  # odd classes are squares, even ones discs
    chebyshev = np.maximum(abs(yy - centre[:, 0, None, None]), abs(xx - centre[:, 1, None, None]))
    inside = np.where(square, chebyshev < radius, distance < radius)
    noise = draws.normal(0, 12, (n, SIDE, SIDE, 3))
    pixels = np.where(inside[..., None], colours[labels][:, None, None, :], 30) + noise
    for i, image in enumerate(np.clip(pixels, 0, 255).astype(np.uint8)):
        Image.fromarray(image).save(root / str(labels[i]) / f"{start + i:07d}.png")
    return n


def generate(count: int) -> Path:
    """The ``count`` PNGs, written once by every core; a finished set is reused."""
    root = SCRATCH / f"raw-{count}"
    stamp = root / ".complete"
    if stamp.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for label in range(CLASSES):
        (root / str(label)).mkdir(parents=True)
    started = time.perf_counter()
    jobs = [(root, start, min(CHUNK, count - start)) for start in range(0, count, CHUNK)]
    sum(ordered_map(write_chunk, jobs, worker_count()))
    stamp.write_text(str(count))
    seconds, size = time.perf_counter() - started, disk_bytes(root) / 2**30
    print(f"generated {count:,} PNGs in {seconds:.0f} s ({size:.2f} GiB)", flush=True)
    return root


def pipeline_stages() -> list[tuple[str, str, list[str]]]:
    """(name, module, outs) of each stage, in dvc.yaml's order: what the code offers today."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    result = []
    for name, stage in stages.items():
        module = re.search(r"python -m (\S+)", stage["cmd"]).group(1)
        outs = [out if isinstance(out, str) else next(iter(out)) for out in stage.get("outs", [])]
        result.append((name, module, outs))
    return result


def augment_modes() -> list[tuple[str, str]]:
    """(field, value) for each mode ``augment`` offers beyond the one params.yaml sets, such as
    ``mode: online``: any Literal field of AugmentParams with an ``online`` choice."""
    defaults = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["augment"]
    modes = []
    for field, hint in get_type_hints(AugmentParams).items():
        choices = get_args(hint) if getattr(hint, "__origin__", None) is Literal else ()
        if "online" in choices:
            modes += [(field, value) for value in choices if value != defaults.get(field)]
    return modes


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = merge(base[key], value) if isinstance(value, dict) else value
    return merged


def lay_out(count: int, raw: Path) -> Path:
    """A scratch repository: params.yaml scaled to the data, nothing else (stages make the rest)."""
    work = SCRATCH / f"run-{count}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    params = merge(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()), OVERRIDES)
    params["ingest"]["source"] = str(raw)
    params["synthesize"]["count"] = count // 10
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return work


def set_param(work: Path, section: str, field: str, value: str) -> None:
    params = yaml.safe_load((work / "params.yaml").read_text())
    params[section][field] = value
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


# Runs the stage and reports the peak RSS of its tree. Through this small launcher because Linux
# carries a parent's RSS peak into a forked child's ru_maxrss (exec records the old mm's high-water
# mark): measured straight from this process, a stage would show this process's own peak.
LAUNCHER = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)"
)


def run_stage(work: Path, module: str) -> tuple[float, float]:
    """Wall seconds and the largest ru_maxrss (MiB) of the stage's process tree: the stage's own
    peak or that of its largest descendant (its workers), not a sum."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    log = work / f"{module.rsplit('.', 1)[-1]}.log"
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.run(
            [sys.executable, "-c", LAUNCHER, sys.executable, "-m", module],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
    seconds = time.perf_counter() - started
    *messages, peak = process.stderr.splitlines()
    with log.open("a") as out:
        out.write("\n".join(messages))
    if process.returncode:
        raise SystemExit(f"{module} failed (exit {process.returncode}); see {log}")
    return seconds, int(peak) / 1024


def disk_bytes(path: Path) -> int:
    """Bytes the files under ``path`` occupy on disk (allocated blocks, not apparent sizes)."""
    files = [path] if path.is_file() else (p for p in path.rglob("*") if p.is_file())
    return sum(p.stat().st_blocks * 512 for p in files)


def images_handled(work: Path, stage: str, count: int) -> int:
    """What a stage's images/s counts: the PNGs it decoded, or the images it rendered, wrote,
    trained on for its one epoch (the augmented set, synthetic mixed in) or scored."""
    data = work / "data"
    if stage == "synthesize":
        return Dataset(data / "synthetic").count("train")
    if stage in ("augment", "train"):
        augmented = Dataset(data / "augmented")
        online = read_online(augmented)
        if online is None:
            return sum(augmented.count(split) for split in augmented.splits)
        # online: augment wrote the record; training's epoch has a row per view of each original
        originals = sum(source["images"] for source in augmented.info.attributes["sources"].values())
        return originals if stage == "augment" else originals * online.views
    if stage == "evaluate":
        return Dataset(data / "ingested").count("test")
    return count


def measure(work: Path, stage: str, module: str, outs: list[str], count: int) -> Run:
    seconds, rss = run_stage(work, module)
    size = sum(disk_bytes(work / out) for out in outs if (work / out).exists())
    return Run(stage, images_handled(work, stage, count), seconds, rss, size)


ROW = "{:>8} {:>20} {:>10} {:>9} {:>11} {:>13} {:>11}"


def print_run(count: int, run: Run) -> None:
    cells = (f"{count:,}", run.stage, f"{run.images:,}", f"{run.seconds:.1f}")
    print(
        ROW.format(
            *cells,
            f"{run.images / run.seconds:,.0f}",
            f"{run.rss_mib:,.0f}",
            f"{run.disk_bytes / 2**20:,.0f}",
        )
    )


def run_pipeline(count: int) -> dict[str, Run]:
    work = lay_out(count, generate(count))
    stages = pipeline_stages()
    runs = {}
    for stage, module, outs in stages:
        runs[stage] = measure(work, stage, module, outs, count)
        print_run(count, runs[stage])
    for field, value in augment_modes():
        set_param(work, "augment", field, value)
        for stage, module, outs in stages:
            if stage in ("augment", "train"):
                name = f"{stage}[{value}]"
                runs[name] = measure(work, stage, module, outs, count)
                print_run(count, runs[name])
    shutil.rmtree(work / "data")
    return runs


def print_targets(results: dict[int, dict[str, Run]]) -> None:
    """Per stage: the peak RSS from the smallest N to the largest, and the two targets."""
    small, large = min(results), max(results)
    print(
        f"\npeak RSS from {small:,} to {large:,} images (targets: within {RSS_FLAT:.0%}, under 3 GiB at 1M)"
    )
    for stage, first in results[small].items():
        last = results[large][stage]
        growth = last.rss_mib / first.rss_mib - 1
        verdict = "flat" if abs(growth) <= RSS_FLAT else "NOT flat"
        ceiling = "under 3 GiB" if last.rss_mib < RSS_CEILING_MIB else "OVER 3 GiB"
        peaks = f"{first.rss_mib:,.0f} -> {last.rss_mib:,.0f} MiB"
        print(f"  {stage:>20}: {peaks} ({growth:+.0%}, {verdict}; {ceiling})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="100k images only")
    parser.add_argument("--counts", type=int, nargs="+", help=f"image counts (default: {COUNTS})")
    args = parser.parse_args()
    counts = args.counts or (COUNTS[:1] if args.quick else COUNTS)
    print(f"up to {worker_count()} worker(s) per stage (MLPIPELINE_WORKERS); scratch in {SCRATCH}")
    print(ROW.format("images", "stage", "handled", "seconds", "images/s", "peak RSS MiB", "disk MiB"))
    results = {count: run_pipeline(count) for count in counts}
    if len(results) > 1:
        print_targets(results)


if __name__ == "__main__":
    main()
