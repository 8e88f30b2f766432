"""The export stage's params: how closely ONNX Runtime must reproduce PyTorch."""

from __future__ import annotations

from mlpipeline.core.params import param, params_dataclass


@params_dataclass
class ExportParams:
    atol: float = param(gt=0, le=1)  # largest |ONNX logit - PyTorch logit| allowed on the test split
    batch_size: int = param(ge=1)  # test images per forward pass (both runtimes)
