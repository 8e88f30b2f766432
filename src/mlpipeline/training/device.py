"""How a training process uses its device: precision, determinism, threads.

The device itself comes from ``core.device.pick_device`` (shared with evaluate).
On CUDA the run favours speed: mixed precision (bf16 where the GPU has it, else
fp16 with a gradient scaler) and cuDNN autotuning. On CPU it favours
reproducibility: deterministic algorithms, so the same params, data and thread
count give bitwise the same model (the thread count matters: reductions split
across threads add in a different order). ``train.precision`` forces a precision
on any device, e.g. bf16 autocast on a CPU with fast bf16 units.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from mlpipeline.core.device import DeviceChoice, exact_float32, pick_device
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.workers import available_cores
from mlpipeline.training.params import Precision

AMP_DTYPES: dict[str, torch.dtype | None] = {"float32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype; None: plain float32
    threads: int  # intra-op CPU threads of this process
    tf32: bool = False  # CUDA training steps may run float32 matmuls and convolutions in TF32

    @property
    def precision(self) -> str:
        return next(name for name, dtype in AMP_DTYPES.items() if dtype == self.amp_dtype)

    def place(self, model: nn.Module) -> nn.Module:
        """``model`` on the device, channels-last except on MPS: with that layout oneDNN's CPU
        convolutions trained the demo CNN 30% faster, and CUDA's tensor cores want it too."""
        model = model.to(self.device)
        return model if self.device.type == "mps" else model.to(memory_format=torch.channels_last)

    def channels_last(self, images: torch.Tensor) -> torch.Tensor:
        """A batch in the model's memory layout (``place``): a uint8 copy here is cheaper than
        the float one the first convolution would make."""
        return images if self.device.type == "mps" else images.contiguous(memory_format=torch.channels_last)

    @contextmanager
    def training_math(self) -> Iterator[None]:
        """The training steps' float32 math: TF32 on CUDA when ``tf32`` (Ampere and later run
        float32 matmuls and convolutions several times faster on a 10-bit mantissa, as fast
        recipes do); validation, evaluate and predict stay in exact float32, restored on exit
        (``core.device.exact_float32``). No effect on the CPU."""
        if self.device.type != "cuda":
            yield
            return
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.tf32
        try:
            yield
        finally:
            exact_float32()

    def autocast(self) -> AbstractContextManager[object]:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 gradients underflow without loss scaling; bf16 has float32's range and needs none."""
        if self.amp_dtype != torch.float16:
            return None
        return torch.amp.GradScaler(self.device.type)

    def describe(self) -> str:
        autocast = "" if self.amp_dtype is None else " autocast"
        autocast += " (float32 steps in TF32)" if self.tf32 and self.device.type == "cuda" else ""
        threads = f"{self.threads} thread{'s' if self.threads > 1 else ''}"
        return f"{self.device}, {self.precision}{autocast}, {threads}"


def auto_threads(processes_on_node: int) -> int:
    """Share the cores among the node's training processes: oversubscription makes each slower."""
    return max(1, available_cores() // processes_on_node)


def mixed_precision(device: torch.device, precision: Precision = "auto") -> torch.dtype | None:
    """The autocast dtype (None: float32). ``auto``: bf16 on GPUs with bf16 tensor cores (Ampere
    and later), else fp16. Emulated bf16 does not count: torch's default check counts it, and
    on a V100 or T4 it is slow where it runs at all."""
    if precision != "auto":
        return AMP_DTYPES[precision]
    if device.type != "cuda":
        return None  # CPU autocast is slow on most CPUs; MPS stays in float32 for robustness
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def configure(
    choice: DeviceChoice,
    precision: Precision,
    num_threads: int,
    local_rank: int = 0,
    processes_on_node: int = 1,
    tf32: bool = False,
) -> Runtime:
    """Pick and set up this process's device; ``num_threads`` 0 means one share of the cores."""
    device = pick_device(choice, "train.device")
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise PipelineError(
                f"train.processes: more processes than the {torch.cuda.device_count()} CUDA devices here"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    # Both flags are process-wide: set them for this device, whatever an earlier run left.
    torch.use_deterministic_algorithms(device.type == "cpu")
    torch.backends.cudnn.benchmark = device.type == "cuda"
    threads = num_threads or auto_threads(processes_on_node)
    torch.set_num_threads(threads)
    return Runtime(device=device, amp_dtype=mixed_precision(device, precision), threads=threads, tf32=tf32)
