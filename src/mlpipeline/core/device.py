"""Which torch device a stage runs on: the best one present, unless a param forces one; and
which of a model's tensors hold NaN or infinity, read back from that device in one sync (a
diverged run's weights must never become a model)."""

from __future__ import annotations

import os
from collections.abc import Mapping
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


def limit_threads() -> None:
    """One torch thread unless ``OMP_NUM_THREADS`` asks for more.

    Batches of small images split poorly over threads, and oversubscribed cores
    are far worse than idle ones: synthesizing 8x8 digits on 2 cores ran at 33k
    images/s with one thread, 50k with two on a quiet machine, but 12k each when
    two runs shared the cores (as under ``dvc exp run --queue -j 2``) against
    33k each with one thread. Outputs do not depend on the thread count.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors holding a NaN or an infinity, in the given order.

    The flags are computed where the tensors are (one device: a model's) and read back once,
    not once per tensor."""
    floating = {name: t for name, t in tensors.items() if t.is_floating_point()}
    if not floating:
        return []
    flags = torch.stack([torch.isfinite(t).all() for t in floating.values()])
    return [name for name, finite in zip(floating, flags.tolist(), strict=True) if not finite]
