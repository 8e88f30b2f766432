"""mlpipeline-serve under load on loopback: requests/s and p50/p99 latency, against calling ONNX
Runtime directly in one process.

    nice -n 10 python bench/serve.py [--requests 2000] [--concurrency 16] [--seconds 60] [--side 8]

The server runs in a child process on a free 127.0.0.1 port (nothing leaves the machine); the
client posts one PNG per request from ``--concurrency`` connections until ``--requests`` are
answered or ``--seconds`` have passed, whichever comes first. The peer is what a server cannot
beat: one process decoding each PNG and calling ONNX Runtime on it, in a loop, with as many
threads as the server has. The server's own figure per batch (from /health) shows how many
requests the micro-batching put together.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
from scoring_fixtures import write_models, write_pngs

from mlpipeline.core.workers import available_cores
from mlpipeline.devtools.serve_process import serving
from mlpipeline.ingestion.images import decode_image
from mlpipeline.modeling.onnx_model import OnnxModel, softmax


async def load(url: str, bodies: list[bytes], requests: int, concurrency: int, seconds: float) -> list[float]:
    """Latencies (s) of the requests answered, from ``concurrency`` connections at once."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    sent = iter(range(requests))

    async def client(session: aiohttp.ClientSession) -> None:
        for index in sent:
            if time.monotonic() > deadline:
                return
            started = time.perf_counter()
            body = bodies[index % len(bodies)]
            async with session.post(
                f"{url}/predict", data=body, headers={"Content-Type": "image/png"}
            ) as answer:
                await answer.read()
                if answer.status != 200:
                    raise SystemExit(f"the server answered {answer.status}: {await answer.text()}")
            latencies.append(time.perf_counter() - started)

    async def counts(session: aiohttp.ClientSession) -> np.ndarray:
        async with session.get(f"{url}/health") as health:
            figures = await health.json()
        return np.array([figures["images"], figures["batches"]])

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        before = await counts(session)
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        images, batches = await counts(session) - before
    print(f"        the server ran {images:,} images in {batches:,} batches ({images / batches:.1f} a batch)")
    return latencies


def direct(onnx_file: Path, bodies: list[bytes], requests: int, seconds: float, threads: int) -> list[float]:
    """Latencies of decoding and scoring one image at a time in this process."""
    model = OnnxModel(onnx_file, threads=threads)
    preprocessing = model.config.input_preprocessing()
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    for index in range(requests):
        if time.monotonic() > deadline:
            break
        started = time.perf_counter()
        pixels = decode_image(bodies[index % len(bodies)], "image", preprocessing)
        softmax(model.logits(pixels[None]))
        latencies.append(time.perf_counter() - started)
    return latencies


def report(name: str, latencies: list[float], elapsed: float) -> float:
    rate = len(latencies) / elapsed
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    print(f"  {name:28} {len(latencies):>8,} {rate:10,.0f} {p50:9.2f} {p99:9.2f}", flush=True)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--side", type=int, default=8)
    parser.add_argument("--channels", type=int, choices=(1, 3), default=1)
    args = parser.parse_args()
    threads = available_cores()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        root = Path(scratch)
        _, onnx_file = write_models(root, args.side, args.channels)
        bodies = [path.read_bytes() for path in write_pngs(root / "images", 100, args.side, args.channels)]
        print(f"{args.side}x{args.side}x{args.channels} PNGs, one per request, {threads} threads")
        print(f"  {'':28} {'requests':>8} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9}")
        started = time.perf_counter()
        alone = direct(onnx_file, bodies, args.requests, args.seconds, threads)
        peer = report("ONNX Runtime, in process", alone, time.perf_counter() - started)
        with serving(onnx_file, "--threads", str(threads)) as url:
            for concurrency in sorted({1, args.concurrency}):
                started = time.perf_counter()
                latencies = asyncio.run(load(url, bodies, args.requests, concurrency, args.seconds))
                served = report(
                    f"server, {concurrency} connections", latencies, time.perf_counter() - started
                )
                print(f"        {served / peer:.2f}x the in-process requests/s")


if __name__ == "__main__":
    main()
