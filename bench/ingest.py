"""Wall time and peak memory of the ingest stage, run as DVC runs it (a child process).

Cases: the demo digits (1,797 8x8 PNGs) and N generated 28x28 grayscale PNGs in the
image-folder layout (10 classes of noisy, shifted, scaled-up digits). The generated
folder is made once and reused (``--data-dir``); generating it is not timed.

Usage: ``nice -n 10 python bench/ingest.py [--count 100000] [--data-dir .cache/bench/...]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import yaml
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO = REPO_ROOT / "data" / "raw" / "digits"


@dataclass(frozen=True)
class Measure:
    name: str
    images: int
    seconds: float
    peak_rss_mb: float  # the largest sum of RSS over the stage's process tree, sampled


def generate(root: Path, count: int, size: int = 28, seed: int = 0) -> None:
    """``count`` noisy digits in ``root/<digit>/<n>.png``; skipped if a finished set is there."""
    stamp = root / ".complete"
    if stamp.exists() and stamp.read_text() == f"{count} {size} {seed}":
        return
    from sklearn.datasets import load_digits

    digits = load_digits()
    gen = np.random.default_rng(seed)
    glyphs = np.kron(digits.images / 16.0, np.ones((2, 2)))  # 16x16 templates
    started = time.perf_counter()
    for start in range(0, count, 10_000):
        n = min(10_000, count - start)
        picks = gen.integers(0, len(glyphs), n)
        offsets = gen.integers(0, size - 16 + 1, (n, 2))
        canvas = np.zeros((n, size, size))
        for i, (pick, (top, left)) in enumerate(zip(picks, offsets, strict=True)):
            canvas[i, top : top + 16, left : left + 16] = glyphs[pick]
        images = np.clip(canvas * 230 + gen.normal(0, 20, canvas.shape), 0, 255).astype(np.uint8)
        for i in range(n):
            path = root / str(digits.target[picks[i]]) / f"{start + i:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(path)
    stamp.write_text(f"{count} {size} {seed}")
    print(f"generated {count} images in {root} in {time.perf_counter() - started:.1f} s", file=sys.stderr)


def run_ingest(name: str, source: Path, image_size: int, images: int) -> Measure:
    """Run ``python -m mlpipeline.stages.ingest`` on ``source`` in a scratch directory."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["ingest"].update({"source": str(source), "image_size": [image_size, image_size]})
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as work:
        Path(work, "params.yaml").write_text(yaml.safe_dump(params))
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
        started = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-m", "mlpipeline.stages.ingest"], cwd=work, env=env, stderr=subprocess.PIPE
        )
        peak = 0
        tree = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                processes = [tree, *tree.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in processes))
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        stderr = child.stderr.read().decode() if child.stderr else ""
        if child.returncode != 0:
            raise SystemExit(f"ingest failed on {source}:\n{stderr}")
        print(stderr.strip(), file=sys.stderr)
    return Measure(name, images, seconds, peak / 2**20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="generated images (default 100000)")
    parser.add_argument("--data-dir", type=Path, help="where the generated images live (reused)")
    args = parser.parse_args()
    data_dir = args.data_dir or REPO_ROOT / ".cache" / "bench" / f"digits28-{args.count}"
    generate(data_dir, args.count)

    results = [
        run_ingest("demo digits 8x8", DEMO, 8, sum(1 for _ in DEMO.rglob("*.png"))),
        run_ingest("generated 28x28", data_dir, 28, args.count),
    ]
    print(f"{'case':<18} {'images':>8} {'wall s':>8} {'images/s':>10} {'us/image':>9} {'peak RSS MB':>12}")
    for m in results:
        print(
            f"{m.name:<18} {m.images:>8} {m.seconds:>8.2f} {m.images / m.seconds:>10.0f} "
            f"{1e6 * m.seconds / m.images:>9.1f} {m.peak_rss_mb:>12.0f}"
        )
    demo, big = results
    print(
        f"ratios generated/demo: images {big.images / demo.images:.1f}x, "
        f"wall {big.seconds / demo.seconds:.1f}x, peak RSS {big.peak_rss_mb / demo.peak_rss_mb:.1f}x"
    )


if __name__ == "__main__":
    main()
