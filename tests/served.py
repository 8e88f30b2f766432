"""A served model for the server's tests: the tiny CNN as an ONNX file, images to post, and
``mlpipeline-serve`` on a free loopback port (``mlpipeline.devtools.serve_process``)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


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
