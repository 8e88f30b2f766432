"""Which torch device a stage runs on: the best one present, unless a param forces one; and
which of a model's tensors hold NaN or infinity, read back from that device in one sync (a
diverged run's weights must never become a model)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
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
    if choice != "auto" and not available[choice]:
        raise PipelineError(f"{param_key}: {choice} is not available on this machine (use auto or cpu)")
    device = torch.device(choice if choice != "auto" else next(n for n, ok in available.items() if ok))
    if device.type == "cuda":
        exact_float32()
    return device


def exact_float32() -> None:
    """float32 means float32 on CUDA too: cuDNN's default runs float32 convolutions in TF32 on
    Ampere and later (a 10-bit mantissa), so validation, evaluate and predict would score a
    model differently from the CPU in the third digit. Training's mixed precision is autocast's
    bf16 or fp16 and does not care."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


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


def to_device(
    host: torch.Tensor, device: torch.device, copied: torch.cuda.Event | None = None
) -> torch.Tensor:
    """``host`` (CPU memory) on ``device``, without making the host wait for the device
    (``to_device_all`` of one tensor)."""
    return to_device_all([host], device, copied)[0]


def to_device_all(
    hosts: Sequence[torch.Tensor], device: torch.device, copied: torch.cuda.Event | None = None
) -> list[torch.Tensor]:
    """``hosts`` (CPU memory) on ``device``, without making the host wait for the device.

    A blocking copy waits for everything already queued on the device, so the host could not
    prepare the next batch while the device runs this one. CUDA copies from pinned memory
    without blocking, on the device's side stream (``copy_stream``), so copies issued while the
    device still runs the step before overlap it instead of queueing behind it; the compute
    stream waits for them only before its next kernel, and their device memory is marked as
    used there (``record_stream``), so the allocator reuses it only once that stream is done
    with it. ``copied``, if given, is recorded on the side stream after the copies: once it has
    passed, ``hosts`` may be overwritten (reused pinned buffers). A host tensor that is dropped
    instead needs no event: PyTorch's pinned-memory cache keeps its block until its copy is
    done. MPS copies block: a non-blocking one there reads its source after returning and
    silently corrupts the data once the source is freed (pytorch issues 139550 and 189690, open
    in torch 2.13). The CPU trains on ``hosts`` themselves.
    """
    if device.type == "cpu":
        return list(hosts)
    if device.type == "mps":
        return [host.to(device) for host in hosts]
    side = copy_stream(device)
    if side is None:
        return [host.to(device, non_blocking=True) for host in hosts]
    compute = torch.cuda.current_stream(device)
    pinned = [host if host.is_pinned() else host.pin_memory() for host in hosts]
    with torch.cuda.stream(side):
        copies = [host.to(device, non_blocking=True) for host in pinned]
        if copied is not None:
            copied.record(side)
    compute.wait_stream(side)
    for copy in copies:
        copy.record_stream(compute)
    return copies


_copy_streams: dict[int, torch.cuda.Stream] = {}


def copy_stream(device: torch.device) -> torch.cuda.Stream | None:
    """The side stream that host-to-device copies to a CUDA ``device`` take (made once a device);
    None for devices without streams."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _copy_streams:
        _copy_streams[index] = torch.cuda.Stream(index)
    return _copy_streams[index]
