"""A trained network as ONNX, and the check that ONNX Runtime computes what PyTorch does.

The exporter is torch's own ``torch.onnx.export(..., dynamo=True)`` (torch.export, then
onnxscript): the TorchScript one (``dynamo=False``) also exports every arch here, 10x faster, but is
deprecated since torch 2.9 and warns on every call; both give the same logits to 1e-7 and
byte-identical files run after run. The batch axis is dynamic; the model's config rides in the
file's metadata.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterable
from contextlib import redirect_stdout
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn

from mlpipeline.core.errors import PipelineError
from mlpipeline.modeling.config import CONFIG_METADATA_KEY, ModelConfig
from mlpipeline.modeling.onnx_model import INPUT, OUTPUT, OnnxModel

EXAMPLE_BATCH = 2  # the traced batch; any batch size runs
# The exporter's own chatter: a line per optimization pass, and torchvision ops it cannot register
# (torchvision is absent on purpose: its wheels break beside the CPU torch).
QUIET = {"onnxscript": logging.WARNING, "onnx_ir": logging.WARNING, "torch.onnx": logging.ERROR}


def to_onnx(model: nn.Module, config: ModelConfig, config_text: str) -> bytes:
    """The ONNX file of ``model`` (in eval mode, on the CPU) with ``config_text`` (model.json) in its
    metadata."""
    for name, level in QUIET.items():
        logging.getLogger(name).setLevel(level)
    model = model.cpu().eval()
    example = torch.zeros(EXAMPLE_BATCH, *config.image_shape, dtype=torch.uint8)
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):  # the exporter prints its progress
        warnings.simplefilter("ignore")  # torch.export's notes on the traced code, not ours to act on
        program = torch.onnx.export(
            model,
            (example,),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            verbose=False,
        )
    proto = program.model_proto
    strip_provenance(proto)
    proto.metadata_props.add(key=CONFIG_METADATA_KEY, value=config_text)
    return proto.SerializeToString(deterministic=True)


def strip_provenance(proto: onnx.ModelProto) -> None:
    """Drop what the exporter records about where it ran, so the file's bytes depend only on the
    model (DVC caches them across machines): each node's stack trace names the absolute path of
    the checkout, the graph's export notes name symbolic sizes by a counter, and the producer's
    version carries the torch build's local tag (``+cpu``, ``+cu128``)."""
    proto.producer_version = proto.producer_version.split("+")[0]
    proto.doc_string = ""
    del proto.metadata_props[:]
    graph = proto.graph
    for part in (graph, *proto.functions):
        part.doc_string = ""
        del part.metadata_props[:]
        for node in part.node:
            node.doc_string = ""
            del node.metadata_props[:]
    for info in (*graph.value_info, *graph.input, *graph.output):
        info.doc_string = ""
        del info.metadata_props[:]
    for tensor in graph.initializer:
        del tensor.metadata_props[:]


@dataclass(frozen=True)
class Parity:
    images: int
    max_abs_diff: float  # largest |ONNX logit - PyTorch logit|
    different_classes: int  # images whose predicted class differs

    def to_dict(self) -> dict[str, float | int]:
        return {
            "images": self.images,
            "max_abs_diff": self.max_abs_diff,
            "different_classes": self.different_classes,
        }


@torch.inference_mode()
def parity(model: nn.Module, onnx_model: OnnxModel, batches: Iterable[np.ndarray]) -> Parity:
    """How far ONNX Runtime's logits are from PyTorch's (CPU, float32) on ``batches`` of uint8 images."""
    model = model.cpu().eval()
    count, worst, different = 0, 0.0, 0
    for images in batches:
        ours = model(torch.from_numpy(np.ascontiguousarray(images))).numpy()
        theirs = onnx_model.logits(images, len(images))
        worst = max(worst, float(np.abs(ours - theirs).max()))
        different += int((ours.argmax(axis=1) != theirs.argmax(axis=1)).sum())
        count += len(images)
    if count == 0:
        raise PipelineError("no test images to check the ONNX model on")
    return Parity(count, worst, different)


def check(result: Parity, atol: float, where: str) -> None:
    """Refuse an export whose logits stray past ``atol`` or whose classes differ, in one line."""
    if result.max_abs_diff > atol or result.different_classes:
        raise PipelineError(
            f"{where}: ONNX Runtime disagrees with PyTorch on the test split: logits differ by up to "
            f"{result.max_abs_diff:.3g} (export.atol {atol:g}), {result.different_classes} of "
            f"{result.images} images get another class"
        )


def describe(model_bytes: bytes) -> str:
    """The opset and the input's shape, for the stage's summary."""
    proto = onnx.load_from_string(model_bytes)
    dims = [d.dim_param or str(d.dim_value) for d in proto.graph.input[0].type.tensor_type.shape.dim]
    return f"opset {proto.opset_import[0].version}, input {INPUT} {'x'.join(dims)} uint8"
