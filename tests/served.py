"""A served model for the server's tests and its load test: the tiny CNN as an ONNX file, images
to post, and ``mlpipeline-serve`` started on a free loopback port and stopped afterwards."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from mlpipeline.devtools.s3server import free_port

SERVE = [sys.executable, "-m", "mlpipeline.serving.serve"]


def write_onnx(path: Path) -> Path:
    """The tiny CNN (``tests/tiny_model.py``) exported as the export stage does."""
    from tiny_model import tiny_model

    from mlpipeline.core import atomic
    from mlpipeline.modeling.export import to_onnx

    model, config = tiny_model()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_onnx(model, config, atomic.to_json_text(config.to_dict())))
    return path


def png(image: np.ndarray) -> bytes:
    """A 1 x H x W uint8 image as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image[0], mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@contextmanager
def serving(onnx_file: Path, *options: str, cwd: Path | None = None) -> Iterator[str]:
    """``mlpipeline-serve`` on a free 127.0.0.1 port; its base URL once /health answers."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    command = [*SERVE, "--onnx", str(onnx_file), "--port", str(port), "--threads", "1", *options]
    process = subprocess.Popen(command, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as answer:
                    json.load(answer)
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"mlpipeline-serve did not start: {process.stderr.read()}") from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stderr.close()
