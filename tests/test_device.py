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
