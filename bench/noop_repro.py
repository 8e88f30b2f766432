"""No-op `dvc repro` of the whole pipeline against a pipeline of five trivial stages.

A no-op repro still hashes (or stats, through DVC's state database) every dependency and
output of every stage, so its time says how cheap the template's dependencies are to check.
The template runs ``dvc repro`` once in a throwaway copy of the repository (not timed), the
baseline is five chained one-line stages in a fresh git+DVC repo; all are then timed, in
turn, as ``dvc repro`` commands that find nothing to do. All repos share the DVC settings that
are not about the pipeline (analytics off, as the template's ``.dvc/config`` has it). Prints the
medians, what the pipeline's deps and outs hold, and how much the template adds (target: under
20%).

A third pipeline measures the floor that the project's requirements set for any version of
this template: the same five trivial stages plus the demo's image folder as the
``${ingest.source}`` dependency, and one ``params:`` section per stage reading the template's
params.yaml. What the template adds beyond that floor is its code deps, data deps and outputs:
the part its own layout decides.

Usage: ``nice -n 10 python bench/noop_repro.py [--repeat 7] [--tiny]``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the tests' repo-copy and dvc helpers

from conftest import copy_repo, run  # noqa: E402
from dvcflow import commit_all, dvc, stages_ran, use_tiny_params  # noqa: E402

TRIVIAL_STAGES = 5
DEMO_DATA = "data/raw/digits"  # the default ingest.source


def trivial_pipeline(root: Path) -> Path:
    """Five stages, each copying its one input file to its one output: the least DVC can check."""
    root.mkdir(parents=True)
    run(["git", "init", "-q"], root)
    dvc(root, "init", "-q")
    # As in the template's .dvc/config: with analytics on, every command of the baseline alone
    # would also fork DVC's report sender (about 10% of a no-op repro on two cores).
    dvc(root, "config", "core.analytics", "false")
    (root / "input.txt").write_text("seed\n")
    stages, previous = {}, "input.txt"
    for index in range(1, TRIVIAL_STAGES + 1):
        out = f"out{index}.txt"
        stages[f"s{index}"] = {"cmd": f"cp {previous} {out}", "deps": [previous], "outs": [out]}
        previous = out
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    commit_all(root, "trivial pipeline")
    return root


def floor_pipeline(root: Path, template: Path) -> Path:
    """The trivial stages plus the templated demo-data dep and a params section per stage."""
    trivial_pipeline(root)
    shutil.copytree(template / DEMO_DATA, root / DEMO_DATA)
    shutil.copy(template / "params.yaml", root / "params.yaml")
    sections = list(yaml.safe_load((root / "params.yaml").read_text()))  # one per template stage
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    first = next(iter(pipeline["stages"].values()))
    first["deps"].insert(0, "${ingest.source}")
    for stage, section in zip(pipeline["stages"].values(), sections, strict=True):
        stage["params"] = [section]
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    commit_all(root, "floor pipeline")
    return root


def prepare(repo: Path) -> Path:
    """The real run, and a first no-op that warms DVC's state database."""
    dvc(repo, "repro")
    dvc(repo, "repro")
    return repo


def noop_seconds(repo: Path) -> float:
    started = time.perf_counter()
    result = dvc(repo, "repro")
    seconds = time.perf_counter() - started
    assert stages_ran(result.stdout) == [], f"not a no-op in {repo}:\n{result.stdout}"
    return seconds


def checked_paths(repo: Path) -> tuple[int, int, int]:
    """Stages, and the files behind their deps and outs, as ``dvc.lock`` records them."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    entries = [entry for stage in lock.values() for kind in ("deps", "outs") for entry in stage.get(kind, [])]
    deps = sum(entry.get("nfiles", 1) for stage in lock.values() for entry in stage.get("deps", []))
    return len(lock), len(entries), deps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--tiny", action="store_true", help="tests' tiny params: a quicker first run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-noop-") as scratch:
        template = copy_repo(Path(scratch) / "template")
        if args.tiny:
            use_tiny_params(template)
        prepare(template)
        stages, entries, dep_files = checked_paths(template)
        trivial = prepare(trivial_pipeline(Path(scratch) / "trivial"))
        floor = prepare(floor_pipeline(Path(scratch) / "floor", template))
        # Alternated, so a load change on a shared machine slows every side alike.
        times: dict[Path, list[float]] = {template: [], floor: [], trivial: []}
        for _ in range(args.repeat):
            for repo, runs in times.items():
                runs.append(noop_seconds(repo))
    full, least, base = (statistics.median(times[repo]) for repo in (template, floor, trivial))
    print(f"no-op dvc repro, median of {args.repeat}:")
    print(
        f"  template: {full:.2f} s ({stages} stages, {entries} deps+outs, {dep_files} files behind the deps)"
    )
    print(f"  {TRIVIAL_STAGES} trivial stages: {base:.2f} s")
    print(f"  the template adds {100 * (full - base) / base:+.0f}% (target: under +20%)")
    print(
        f"  floor ({TRIVIAL_STAGES} trivial stages + ${{ingest.source}} on the demo's images + a params "
        f"section each): {least:.2f} s, {100 * (least - base) / base:+.0f}%"
    )
    print(f"  the template beyond the floor: {100 * (full - least) / base:+.0f}%")


if __name__ == "__main__":
    main()
