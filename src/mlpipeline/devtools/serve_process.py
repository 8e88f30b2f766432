"""``mlpipeline-serve`` in a child process on a free loopback port, for the tests and the load
test: started, waited for until ``/health`` answers, and stopped when the block ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlpipeline.devtools.s3server import free_port

SERVE = [sys.executable, "-m", "mlpipeline.serving.serve"]
SRC = Path(__file__).resolve().parents[2]  # this checkout's code, whichever checkout the venv installed


@contextmanager
def serving(onnx_file: Path, *options: str, start_timeout: float = 60) -> Iterator[str]:
    """The base URL (``http://127.0.0.1:PORT``) of a server of ``onnx_file`` started with ``options``."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    command = [*SERVE, "--onnx", str(onnx_file), "--port", str(port), *options]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as answer:
                    json.load(answer)
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlpipeline-serve did not start: {process.stderr.read()}") from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stderr.close()
