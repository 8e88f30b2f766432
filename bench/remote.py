"""`dvc push`/`dvc pull` of the whole pipeline's outputs against plain boto3 moving the same bytes.

In a throwaway copy of the repository (no outputs, like a fresh clone) it runs ``dvc repro``
once (not timed), starts a local S3 server (rclone on loopback, see
``mlpipeline.devtools.s3server``), then, per repetition and on a fresh bucket prefix each time:

- push: ``dvc push`` against a fresh process uploading every file of every cached output
  with boto3, as many transfers at once as DVC's default ``jobs`` (4 x CPUs);
- pull: ``dvc pull`` into an emptied cache and workspace against a fresh process downloading
  the same objects with boto3.

Both sides are commands started from scratch, so both pay interpreter start and imports, as
a user does. Prints the file count and size per output, the medians and the DVC/boto3 ratios
(target: DVC within 1.5x), and each side's fixed cost (a push with nothing to push; a boto3
process with no file) to read them by: on small outputs the fixed costs dominate, and DVC's
alone, over boto3's whole transfer, is the least ratio any layout of the outputs could reach.

Usage: ``nice -n 10 python bench/remote.py [--repeat 5] [--tiny] [--count N]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # the tests' repo-copy and dvc helpers

from conftest import copy_repo, set_params  # noqa: E402
from dvcflow import dvc, use_tiny_params  # noqa: E402

from mlpipeline.devtools import s3server  # noqa: E402

BUCKET = "bench"
JOBS = 4 * (os.cpu_count() or 1)  # DVC's default for S3 remotes


def cached_outputs(repo: Path) -> dict[str, list[Path]]:
    """Every output DVC caches (and so pushes), with its files; uncached ones live in git."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        paths = sorted({Path(out.fs_path) for out in dvc_repo.index.outs if out.use_cache})
    return {
        path.relative_to(repo).as_posix(): [path]
        if path.is_file()
        else sorted(f for f in path.rglob("*") if f.is_file())
        for path in paths
    }


def raw_transfer(action: str, endpoint: str, root: str, files: list[str], prefix: str) -> None:
    """The baseline, run in its own process: boto3 ``upload_file``/``download_file`` in a pool."""
    client = s3server.client(endpoint)

    def one(rel: str) -> None:
        key = f"{prefix}/{rel}"
        if action == "put":
            client.upload_file(os.path.join(root, rel), BUCKET, key)
        else:
            target = os.path.join(root, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            client.download_file(BUCKET, key, target)

    with ThreadPoolExecutor(JOBS) as pool:
        list(pool.map(one, files))


def raw(action: str, server: s3server.S3Server, root: Path, files: list[str], prefix: str) -> float:
    """Time a fresh process running ``raw_transfer`` (its arguments go as JSON on stdin)."""
    spec = json.dumps([action, server.endpoint, str(root), files, prefix])
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    started = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--raw"], input=spec, text=True, env=env, check=True)
    return time.perf_counter() - started


def dvc_time(repo: Path, *args: str) -> float:
    started = time.perf_counter()
    dvc(repo, *args)
    return time.perf_counter() - started


def empty_workspace(repo: Path, outputs: dict[str, list[Path]]) -> None:
    """What a fresh clone has: no DVC cache, no outputs (the server's directory is elsewhere)."""
    shutil.rmtree(repo / ".dvc" / "cache", ignore_errors=True)
    for out in outputs:
        target = repo / out
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="tests' tiny params: quick, smaller outputs")
    parser.add_argument(
        "--count", type=int, help="synthesize.count: larger outputs than the demo's few MB (after --tiny)"
    )
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw:
        raw_transfer(*json.loads(sys.stdin.read()))
        return

    with tempfile.TemporaryDirectory(prefix="bench-remote-") as scratch:
        work = Path(scratch)
        repo = copy_repo(work / "repo")
        if args.tiny:
            use_tiny_params(repo)
        if args.count is not None:
            set_params(repo, {"synthesize.count": args.count})
        dvc(repo, "repro")
        outputs = cached_outputs(repo)
        files = [f.relative_to(repo).as_posix() for paths in outputs.values() for f in paths]
        total = sum((repo / f).stat().st_size for f in files)
        print(
            f"cached outputs ({len(outputs)}), each pushed as its files plus one .dir manifest per directory:"
        )
        for out, paths in outputs.items():
            size = sum(p.stat().st_size for p in paths)
            print(f"  {out:<32} {len(paths):>6} files {size / 1e6:>10.2f} MB")
        print(f"  {'total':<32} {len(files):>6} files {total / 1e6:>10.2f} MB")

        server = s3server.start(work / "objects", buckets=[BUCKET])
        try:
            times: dict[str, list[float]] = {"dvc push": [], "boto3 put": [], "dvc pull": [], "boto3 get": []}
            fixed: dict[str, list[float]] = {"dvc": [], "boto3": []}
            for rep in range(args.repeat):
                s3server.configure_remote(repo, server, url=f"s3://{BUCKET}/dvc-{rep}")
                times["dvc push"].append(dvc_time(repo, "push"))
                fixed["dvc"].append(dvc_time(repo, "push"))  # nothing left to push
                fixed["boto3"].append(raw("put", server, repo, [], f"raw-{rep}"))  # start-up only
                times["boto3 put"].append(raw("put", server, repo, files, f"raw-{rep}"))
                empty_workspace(repo, outputs)
                times["dvc pull"].append(dvc_time(repo, "pull"))
                downloads = work / f"download-{rep}"
                times["boto3 get"].append(raw("get", server, downloads, files, f"raw-{rep}"))
        finally:
            s3server.stop(server)

    med = {name: statistics.median(values) for name, values in times.items()}
    print(f"median of {args.repeat}, {JOBS} parallel transfers on both sides, local rclone S3 server:")
    for op, raw_op in (("push", "put"), ("pull", "get")):
        ratio = med[f"dvc {op}"] / med[f"boto3 {raw_op}"]
        print(
            f"  {op}: dvc {med[f'dvc {op}']:.2f} s, boto3 {med[f'boto3 {raw_op}']:.2f} s, "
            f"ratio {ratio:.2f}x (target <= 1.5x)"
        )
    cost = {name: statistics.median(values) for name, values in fixed.items()}
    print(
        f"  fixed costs: dvc push with nothing to push {cost['dvc']:.2f} s, "
        f"python + boto3 start-up {cost['boto3']:.2f} s"
    )
    for op, raw_op in (("push", "put"), ("pull", "get")):
        dvc_part, raw_part = med[f"dvc {op}"] - cost["dvc"], med[f"boto3 {raw_op}"] - cost["boto3"]
        floor = cost["dvc"] / med[f"boto3 {raw_op}"]
        print(
            f"  {op} beyond fixed costs: dvc {dvc_part:.2f} s, boto3 {raw_part:.2f} s; "
            f"floor: dvc's fixed cost alone is {floor:.2f}x boto3's whole {raw_op}"
        )


if __name__ == "__main__":
    main()
