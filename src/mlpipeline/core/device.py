"""Which torch device a stage runs on: the best one present, unless a param forces one."""

from __future__ import annotations

from typing import Literal

import torch

from mlpipeline.core.errors import PipelineError

DeviceChoice = Literal["auto", "cpu", "cuda", "mps"]


def pick_device(choice: DeviceChoice, param_key: str) -> torch.device:
    """CUDA, then MPS, then CPU for ``auto``; a forced device that is absent is an error naming
    ``param_key``, not a silent fallback that would make a GPU run quietly take hours on CPU."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if choice == "auto":
        return torch.device(next(name for name, present in available.items() if present))
    if not available[choice]:
        raise PipelineError(f"{param_key}: {choice} is not available on this machine (use auto or cpu)")
    return torch.device(choice)
