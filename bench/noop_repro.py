"""No-op `dvc repro` of the whole pipeline against a pipeline of five trivial stages.

A no-op repro still hashes (or stats, through DVC's state database) every dependency and
output of every stage, so its time says how cheap the template's dependencies are to check.
The template runs ``dvc repro`` once in a throwaway copy of the repository (not timed), the
baseline is five chained one-line stages in a fresh git+DVC repo; both are then timed, in
turn, as ``dvc repro`` commands that find nothing to do. Both repos share the DVC settings that
are not about the pipeline (analytics off, as the template's ``.dvc/config`` has it). Prints the
medians, what the pipeline's deps and outs hold, and how much the template adds (target: under
20%).

Usage: ``nice -n 10 python bench/noop_repro.py [--repeat 7] [--tiny]``
"""

from __future__ import annotations

import argparse
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
        # Alternated, so a load change on a shared machine slows both sides alike.
        template_times, trivial_times = [], []
        for _ in range(args.repeat):
            template_times.append(noop_seconds(template))
            trivial_times.append(noop_seconds(trivial))
    full, base = statistics.median(template_times), statistics.median(trivial_times)
    print(f"no-op dvc repro, median of {args.repeat}:")
    print(
        f"  template: {full:.2f} s ({stages} stages, {entries} deps+outs, {dep_files} files behind the deps)"
    )
    print(f"  {TRIVIAL_STAGES} trivial stages: {base:.2f} s")
    print(f"  the template adds {100 * (full - base) / base:+.0f}% (target: under +20%)")


if __name__ == "__main__":
    main()
