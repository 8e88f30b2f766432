"""A trained model as one ONNX file, run by ONNX Runtime alone: what serving machines load.

The graph takes uint8 images N x C x H x W (any N) and returns logits, normalization inside, as
the PyTorch network does; ``model.json`` travels in the file's metadata, so the class names and
the preprocessing of image files come with it. No torch here: ``mlpipeline-predict --onnx``
imports this module on machines that have onnxruntime and nothing heavier.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

from mlpipeline.core.errors import PipelineError
from mlpipeline.modeling.config import CONFIG_METADATA_KEY, ModelConfig, ModelError, read_config

INPUT, OUTPUT = "images", "logits"


class OnnxModel:
    """An ONNX Runtime session on the CPU and the ``ModelConfig`` recorded in the file."""

    def __init__(self, path: Path | str, model_bytes: bytes | None = None) -> None:
        """The model in the file at ``path``, or in ``model_bytes`` (then ``path`` only names it)."""
        path = Path(path)
        try:
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3  # errors only
            options.intra_op_num_threads = 1  # the same sums in the same order on any machine
            self.session = onnxruntime.InferenceSession(
                model_bytes if model_bytes is not None else str(path),
                options,
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # onnxruntime raises its own unexported types for any bad file
            if not path.is_file():
                raise ModelError(f"{path}: not found (has the export stage run?)") from None
            raise ModelError(f"{path}: not an ONNX model, or damaged ({str(exc).splitlines()[0]})") from None
        recorded = self.session.get_modelmeta().custom_metadata_map.get(CONFIG_METADATA_KEY)
        if recorded is None:
            raise ModelError(f"{path}: no model config in its metadata (not written by the export stage)")
        self.config: ModelConfig = read_config(recorded, path)

    def logits(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """float32 logits N x classes of uint8 images N x C x H x W, ``batch_size`` at a time."""
        if images.dtype != np.uint8 or list(images.shape[1:]) != list(self.config.image_shape):
            raise PipelineError(
                f"images must be uint8 N x {self.config.image_shape}, got {images.dtype} {images.shape}"
            )
        parts = [
            self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(images[start : start + batch_size])})[0]
            for start in range(0, len(images), batch_size)
        ]
        return np.concatenate(parts)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities, in float64 (as evaluate's)."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)
