"""The ``train`` section of params.yaml, validated: every knob of a training run lives here."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import Field, model_validator

from mlpipeline.core.device import DeviceChoice
from mlpipeline.core.params import ImageSize, param, params_dataclass

Optimizer = Literal["adamw", "sgd"]
Schedule = Literal["onecycle", "cosine", "constant"]
Monitor = Literal["val_loss", "val_acc", "val_macro_f1", "last"]
ClassWeights = Literal["none", "balanced"]
SyntheticUse = Literal["pretrain", "mix"]
Precision = Literal["auto", "float32", "bf16", "fp16"]  # float32, or autocast to bf16 or fp16


@params_dataclass
class ArchitectureParams:
    """Which network: ``convnet`` (the built-in CNN, sized by ``widths`` and ``dropout``) or a
    transformers image-classification model type, configured by its own key under ``hf``. Only the
    chosen arch's settings are read, so switching is one ``-S train.model.arch=resnet``.
    ``weights`` names a folder of ``data/weights`` in transformers' format (the arch then comes
    from its ``config.json``) or a release to fine-tune, ``image-classifier@v1.2.0``."""

    arch: str
    weights: str | None = param(min_len=1)
    widths: list[Annotated[int, Field(ge=1, le=4096)]] = param(min_len=1, max_len=8)
    dropout: float = param(ge=0, lt=1)
    hf: dict[str, dict[str, Any]]  # model type -> config overrides (depths, hidden_sizes, patch_size...)
    freeze_epochs: int = param(ge=0)  # first epochs of each phase: the classifier head alone learns
    backbone_lr_scale: float = param(gt=0, le=10)  # everything but the head learns at lr times this

    @model_validator(mode="after")
    def check(self) -> Self:
        if self.weights is not None and not _is_folder_name(self.weights):
            raise ValueError(f"weights names a folder of data/weights, not a path (got {self.weights!r})")
        return self


def _is_folder_name(name: str) -> bool:
    return "/" not in name and "\\" not in name and name not in (".", "..")


@params_dataclass
class EarlyStoppingParams:
    monitor: Monitor
    patience: int | None = param(ge=1)

    @model_validator(mode="after")
    def check(self) -> Self:
        if self.monitor == "last" and self.patience is not None:
            raise ValueError(
                "patience needs monitor val_loss, val_acc or val_macro_f1: with last no epoch is ever worse"
            )
        return self


@params_dataclass
class SyntheticParams:
    """How training uses the synthetic images: ``pretrain`` runs ``pretrain_epochs`` on them alone,
    then the real run starts from those weights with a fresh optimizer and schedule; ``mix``
    shuffles them in with the real images (fine when they look just like the real ones)."""

    use: SyntheticUse
    pretrain_epochs: int = param(ge=1)


@params_dataclass
class MixingParams:
    """Mixup and CutMix (timm's ``Mixup`` in batch mode): a mixed batch is blended with itself in
    reverse order (mixup) or gets a box of it pasted in (CutMix), with targets mixed in the same
    proportion; label smoothing applies to both targets."""

    mixup_alpha: float = param(ge=0, le=10)  # the mixing share is Beta(alpha, alpha); 0: no mixup
    cutmix_alpha: float = param(ge=0, le=10)  # the same for CutMix's box area; 0: no CutMix
    probability: float = param(ge=0, le=1)  # share of batches mixed
    switch_probability: float = param(ge=0, le=1)  # both on: the chance a mixed batch is CutMix

    @property
    def active(self) -> bool:
        return bool(self.probability and (self.mixup_alpha or self.cutmix_alpha))


@params_dataclass
class TrainParams:
    model: ArchitectureParams
    image_size: ImageSize | None  # the network's input: a window of the stored images; None: all of them
    optimizer: Optimizer
    schedule: Schedule
    epochs: int = param(ge=1)
    min_steps: int = param(ge=0)
    batch_size: int = param(ge=1)
    lr: float = param(gt=0, le=10)
    weight_decay: float = param(ge=0, lt=1)
    label_smoothing: float = param(ge=0, lt=1)
    class_weights: ClassWeights  # balanced: each class's loss weighted by images / (classes x its images)
    mixing: MixingParams
    accumulate: int = param(ge=1, le=1024)  # batches per optimizer step: effective batch batch_size x this
    clip_grad_norm: float | None = param(gt=0)  # the gradients' global norm is clipped to this; None: off
    ema_decay: float = param(ge=0, lt=1)  # an average of the weights is evaluated and saved; 0: off
    synthetic: SyntheticParams
    early_stopping: EarlyStoppingParams
    seed: int = param(ge=0)
    device: DeviceChoice
    precision: Precision
    tf32: bool  # CUDA float32 training steps in TF32 (validation, evaluate, predict never)
    compile: bool  # torch.compile the training forward and backward
    nodes: int = param(ge=1, le=4096)
    processes: int = param(ge=1, le=1024)
    num_threads: int = param(ge=0, le=1024)

    @property
    def world_size(self) -> int:
        """Training processes in all: ``processes`` on each of ``nodes`` nodes."""
        return self.nodes * self.processes

    @model_validator(mode="after")
    def check(self) -> Self:
        if self.batch_size % self.world_size:
            across = f"nodes x processes ({self.nodes} x {self.processes})" if self.nodes > 1 else ""
            raise ValueError(
                f"batch_size ({self.batch_size}) is the global batch and must be divisible by "
                f"{across or f'processes ({self.processes})'}"
            )
        if self.world_size > 1 and self.device == "mps":
            what = "processes > 1" if self.processes > 1 else "nodes > 1"
            raise ValueError(f"{what} needs cuda or cpu: DistributedDataParallel does not run on mps")
        return self
