"""Device choice: CUDA, then MPS, then CPU; a forced device that is absent is refused by name."""

from __future__ import annotations

import pytest
import torch

from mlpipeline.core.device import pick_device
from mlpipeline.core.errors import PipelineError


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_auto_prefers_cuda_then_mps_then_cpu(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, mps: bool, expected: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert pick_device("auto", "stage.device") == torch.device(expected)


def test_forced_device_that_is_absent_names_the_param(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PipelineError, match=r"^evaluate\.device: cuda is not available on this machine"):
        pick_device("cuda", "evaluate.device")
    assert pick_device("cpu", "evaluate.device") == torch.device("cpu")


def test_cuda_runs_float32_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """TF32 off for cuDNN and matmul whenever CUDA is picked: validation, evaluate and predict
    promise float32 (cuDNN's default is TF32 convolutions on Ampere and later)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul  # flags monkeypatch cannot set
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = True
    try:
        assert pick_device("auto", "train.device").type == "cuda"
        assert not cudnn.allow_tf32 and not matmul.allow_tf32
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved
