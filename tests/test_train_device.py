"""How training sets up its device, with the hardware's presence monkeypatched: CUDA first
(mixed precision, one GPU per process), then MPS, then CPU (deterministic, shared cores)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mlpipeline.core.errors import PipelineError
from mlpipeline.training import device as device_module
from mlpipeline.training.device import auto_threads, configure, mixed_precision


@pytest.fixture
def hardware(monkeypatch: pytest.MonkeyPatch):
    """Pretend the machine has the given accelerators; records what configure() touched."""
    touched: dict[str, object] = {}

    def present(cuda: int = 0, mps: bool = False, capability: tuple[int, int] = (8, 0)) -> dict[str, object]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        # What torch.cuda.is_bf16_supported reads: the GPU's compute capability, and whether a
        # bf16 tensor can be made at all (it can on every CUDA GPU, emulated before Ampere).
        monkeypatch.setattr(torch.version, "hip", None)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        major, minor = capability
        properties = SimpleNamespace(major=major, minor=minor)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: properties)
        monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: touched.setdefault("cuda_device", d))
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        monkeypatch.setattr(torch, "set_num_threads", lambda n: touched.setdefault("threads", n))
        monkeypatch.setattr(device_module, "available_cores", lambda: 8)
        monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
        return touched

    return present


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"), [(2, True, "cuda:0"), (0, True, "mps"), (0, False, "cpu")]
)
def test_auto_prefers_cuda_then_mps_then_cpu(hardware, cuda: int, mps: bool, expected: str) -> None:
    hardware(cuda=cuda, mps=mps)
    assert str(configure("auto", "auto", num_threads=0).device) == expected


def test_cuda_uses_bf16_where_supported_else_fp16_with_a_scaler(hardware) -> None:
    touched = hardware(cuda=1, capability=(8, 0))
    runtime = configure("auto", "auto", num_threads=0)
    assert runtime.amp_dtype == torch.bfloat16 and runtime.grad_scaler() is None
    assert touched["cuda_device"] == torch.device("cuda", 0) and torch.backends.cudnn.benchmark

    hardware(cuda=1, capability=(7, 5))  # a T4: bf16 only emulated, no bf16 tensor cores
    runtime = configure("auto", "auto", num_threads=0)
    assert runtime.amp_dtype == torch.float16 and runtime.grad_scaler() is not None
    assert mixed_precision(torch.device("cuda", 0)) == torch.float16


def test_each_process_takes_its_own_gpu_and_a_share_of_cores(hardware) -> None:
    touched = hardware(cuda=4)
    runtime = configure("cuda", "auto", num_threads=0, local_rank=2, processes_on_node=4)
    assert runtime.device == torch.device("cuda", 2) and touched["threads"] == 2

    with pytest.raises(PipelineError, match=r"^train\.processes: more processes than the 4 CUDA devices"):
        configure("cuda", "auto", num_threads=0, local_rank=4, processes_on_node=5)


def test_cpu_is_deterministic_with_the_cores_or_the_set_thread_count(hardware) -> None:
    touched = hardware()
    runtime = configure("auto", "auto", num_threads=0)
    assert runtime.device == torch.device("cpu") and runtime.amp_dtype is None
    assert runtime.threads == 8 and touched["threads"] == 8
    assert torch.are_deterministic_algorithms_enabled()
    assert configure("cpu", "auto", num_threads=3).threads == 3
    assert auto_threads(processes_on_node=3) == 2 and auto_threads(processes_on_node=16) == 1


def test_forcing_an_absent_device_names_the_param(hardware) -> None:
    hardware(cuda=0, mps=False)
    with pytest.raises(PipelineError, match=r"^train\.device: mps is not available"):
        configure("mps", "auto", num_threads=0)


def test_determinism_and_autotuning_are_set_for_each_device_anew(hardware) -> None:
    """A CPU run's deterministic mode must not leak into a later CUDA run in the same process:
    there the first cuBLAS call would raise without CUBLAS_WORKSPACE_CONFIG."""
    hardware(cuda=1)
    configure("cpu", "auto", num_threads=1)
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    configure("cuda", "auto", num_threads=1)
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    configure("cpu", "auto", num_threads=1)
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
