"""A trained model as one ONNX file, run by ONNX Runtime alone: what serving machines load.

The graph takes uint8 images N x C x H x W (any N) and returns logits, normalization inside, as
the PyTorch network does; ``model.json`` travels in the file's metadata, so the class names and
the preprocessing of image files come with it. No torch here: ``mlpipeline-predict --onnx``
imports this module on machines that have onnxruntime and nothing heavier.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from mlpipeline.core.errors import PipelineError
from mlpipeline.modeling.config import CONFIG_METADATA_KEY, ModelConfig, ModelError, read_config

INPUT, OUTPUT = "images", "logits"
INPUT_TYPE, OUTPUT_TYPE = "tensor(uint8)", "tensor(float)"  # as ONNX Runtime names them
# What ONNX Runtime raises for a graph that loads but cannot run the batch it is given.
RUN_ERRORS = (ort_errors.Fail, ort_errors.InvalidArgument, ort_errors.RuntimeException)


class OnnxModel:
    """An ONNX Runtime session on the CPU and the ``ModelConfig`` recorded in the file."""

    def __init__(self, path: Path | str, model_bytes: bytes | None = None, threads: int = 1) -> None:
        """The model in the file at ``path``, or in ``model_bytes`` (then ``path`` only names it).
        ``threads``: ONNX Runtime's threads per batch; 1, the default, gives the same sums in the
        same order on any machine (a server trades that for latency)."""
        self.path = path = Path(path)
        if model_bytes is None:
            _check_readable(path)
        try:
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3  # errors only
            options.intra_op_num_threads = threads
            self.session = onnxruntime.InferenceSession(
                model_bytes if model_bytes is not None else str(path),
                options,
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # onnxruntime raises its own unexported types for any bad file
            raise ModelError(f"{path}: not an ONNX model, or damaged ({str(exc).splitlines()[0]})") from None
        recorded = self.session.get_modelmeta().custom_metadata_map.get(CONFIG_METADATA_KEY)
        if recorded is None:
            raise ModelError(f"{path}: no model config in its metadata (not written by the export stage)")
        self.config: ModelConfig = read_config(recorded, path)
        if problem := self._graph_disagreement():
            raise ModelError(f"{path}: {problem} (not as the export stage writes it)")

    def _graph_disagreement(self) -> str | None:
        """How the graph's input and output differ from the config in the metadata, if they do: a
        file edited or made elsewhere would fail at the first batch with ONNX Runtime's traceback,
        or, with more logits than classes, take labels from the wrong list."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        takes, gives = ", ".join(arg.name for arg in inputs), ", ".join(arg.name for arg in outputs)
        if (takes, gives) != (INPUT, OUTPUT):
            return f"its graph takes {takes} and gives {gives}, not {INPUT} and {OUTPUT}"
        (images,), (logits,) = inputs, outputs
        if (images.type, logits.type) != (INPUT_TYPE, OUTPUT_TYPE):
            return (
                f"its graph takes {images.type} and gives {logits.type}, not {INPUT_TYPE} and {OUTPUT_TYPE}"
            )
        shape, classes = self.config.image_shape, self.config.num_classes
        if not _fits(images.shape, shape):
            return f"its model config says {_dims(shape)} images, its graph takes {_dims(images.shape[1:])}"
        if not _fits(logits.shape, [classes]):
            return (
                f"its model config names {classes} classes, its graph gives {_dims(logits.shape[1:])} logits"
            )
        return None

    def logits(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """float32 logits N x classes of uint8 images N x C x H x W, ``batch_size`` at a time."""
        if images.dtype != np.uint8 or list(images.shape[1:]) != list(self.config.image_shape):
            raise PipelineError(
                f"images must be uint8 N x {self.config.image_shape}, got {images.dtype} {images.shape}"
            )
        return np.concatenate(
            [self._run(images[start : start + batch_size]) for start in range(0, len(images), batch_size)]
        )

    def _run(self, batch: np.ndarray) -> np.ndarray:
        try:
            return self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(batch)})[0]
        except RUN_ERRORS as exc:
            raise ModelError(
                f"{self.path}: ONNX Runtime cannot run it on a batch of {len(batch)} "
                f"{_dims(batch.shape[1:])} images ({str(exc).splitlines()[0]})"
            ) from None


def _check_readable(path: Path) -> None:
    """A missing, folder or unreadable ``path`` said as such (ONNX Runtime says "failed to load")."""
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise ModelError(f"{path}: not found (has the export stage run?)") from None
    except IsADirectoryError:
        raise ModelError(
            f"{path}: is a folder; name the ONNX file in it, e.g. {path / 'model.onnx'}"
        ) from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _fits(shape: list[int | str | None], expected: list[int]) -> bool:
    """Whether a graph's shape (batch first; a name or None for a size it leaves open) takes ``expected``."""
    sizes = shape[1:]
    return len(sizes) == len(expected) and all(
        not isinstance(size, int) or size == want for size, want in zip(sizes, expected, strict=True)
    )


def _dims(sizes: Sequence[int | str | None]) -> str:
    return "x".join(str(size) for size in sizes) or "scalars"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities, in float64 (as evaluate's)."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)
