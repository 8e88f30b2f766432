"""The data flywheel at scale: what a 1% growth costs, in time and in new bytes.

N PNGs of 32x32 RGB in class folders (``bench/ingest.py``'s pool, 100 classes), for N = 20k and
200k (``--counts``). In a throwaway DVC repository whose one stage is ingest (as ``dvc.yaml``
declares it, outputs cached), per N:

- ``dvc repro``: the first version, from scratch;
- 1% new images, named among the old ones (``0000042a.png`` after ``0000042.png``), and
  ``ingest.base`` set as ``make data-update`` sets it; ``dvc repro``: the second version.

Printed per N: each run's stage time (its summary line's) and ``dvc repro`` time (DVC's hashing
of the source and outputs included), the second run's ratio to the first (target: at most 0.3x
at 20k), the floor of the second run (one process listing the folder and reading and hashing
every file, what no incremental ingest can skip: its share of the second stage run says where the
rest goes), and the share of the second version's bytes that are files of the first (what DVC
neither stores nor pushes again; target 90%).

Usage: ``nice -n 10 python bench/flywheel.py [--counts 20000 200000]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from ingest import BENCH_DIR, POOL, SIDE, fill_pool, generate, image_path

REPO_ROOT = Path(__file__).resolve().parents[1]
COUNTS = (20_000, 200_000)
STAGE_TIME = re.compile(r"^ingest: read .* in ([\d.]+) s$", re.MULTILINE)
STAGE = {
    "cmd": "python -m mlpipeline.stages.ingest",
    "deps": ["data/raw"],
    "params": ["ingest"],
    "outs": ["data/ingested"],
    "metrics": [{"reports/ingest/metrics.json": {"cache": False}}],
}


@dataclass(frozen=True)
class Run:
    stage_seconds: float
    repro_seconds: float


def command(args: list[str], cwd: Path) -> str:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # the venv's python, dvc
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "PATH": path}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout + result.stderr


def make_repo(count: int) -> Path:
    """A git and DVC repository holding the first ``count`` images of the pool as data/raw."""
    repo = BENCH_DIR / f"flywheel-{count}"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(generate(count), repo / "data" / "raw", copy_function=os.link)
    (repo / "data" / "raw" / ".complete").unlink()
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["ingest"].update({"source": "data/raw", "channels": 3, "image_size": [SIDE, SIDE]})
    (repo / "params.yaml").write_text(yaml.safe_dump({"ingest": params["ingest"]}, sort_keys=False))
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"ingest": STAGE}}, sort_keys=False))
    command(["git", "init", "-q"], repo)
    command(["dvc", "init", "-q"], repo)
    return repo


def repro(repo: Path) -> Run:
    started = time.perf_counter()
    output = command(["dvc", "repro", "-q"], repo)
    seconds = time.perf_counter() - started
    found = STAGE_TIME.search(output)
    if not found:
        raise SystemExit(f"no ingest summary line in:\n{output}")
    return Run(float(found.group(1)), seconds)


def grow(repo: Path, count: int) -> None:
    """1% more images, from the pool past the first ``count``, named among the old ones."""
    fill_pool(count + count // 100)
    for index in range(count, count + count // 100):
        old = image_path(repo / "data" / "raw", index - count)
        os.link(image_path(POOL, index), old.with_name(f"{old.stem}a.png"))


def set_base(repo: Path) -> None:
    script = "from mlpipeline.devtools.data_update import main; main()"
    command([sys.executable, "-c", script], repo)


def floor_seconds(root: Path) -> float:
    """One process listing ``root`` and reading and hashing every file in it."""
    started = time.perf_counter()
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as handle:
                hashlib.file_digest(handle, "sha256")
    return time.perf_counter() - started


def version_files(repo: Path) -> dict[str, tuple[str, int]]:
    """data/ingested as dvc.lock records it: each file's md5 and size, from the DVC cache."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["ingest"]
    md5 = next(out["md5"] for out in lock["outs"] if out["path"] == "data/ingested")
    cache = repo / ".dvc" / "cache" / "files" / "md5"
    listing = json.loads((cache / md5[:2] / md5[2:]).read_text())
    return {e["relpath"]: (e["md5"], (cache / e["md5"][:2] / e["md5"][2:]).stat().st_size) for e in listing}


def reused_share(first: dict[str, tuple[str, int]], second: dict[str, tuple[str, int]]) -> float:
    known = {md5 for md5, _ in first.values()}
    return sum(size for md5, size in second.values() if md5 in known) / sum(
        size for _, size in second.values()
    )


def measure(count: int) -> None:
    repo = make_repo(count)
    first = repro(repo)
    first_files = version_files(repo)
    grow(repo, count)
    set_base(repo)
    second = repro(repo)
    floor = floor_seconds(repo / "data" / "raw")
    reuse = reused_share(first_files, version_files(repo))
    print(
        f"{count:>9,} {first.stage_seconds:>8.1f} {first.repro_seconds:>8.1f} {second.stage_seconds:>8.1f} "
        f"{second.repro_seconds:>8.1f} {second.stage_seconds / first.stage_seconds:>7.2f}x "
        f"{second.repro_seconds / first.repro_seconds:>7.2f}x {floor:>8.1f} "
        f"{floor / second.stage_seconds:>7.0%} {reuse:>8.1%}",
        flush=True,
    )
    shutil.rmtree(repo, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=list(COUNTS), help=f"default {COUNTS}")
    args = parser.parse_args()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    columns = ("1st stage", "1st dvc", "2nd stage", "2nd dvc", "stage", "dvc", "floor s", "floor", "reused")
    print(f"{'images':>9} " + " ".join(f"{c:>8}" for c in columns), flush=True)
    for count in args.counts:
        measure(count)


if __name__ == "__main__":
    main()
