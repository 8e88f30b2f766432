"""A trained model's config (``model.json``): everything needed to rebuild the network and feed
it: architecture (the built-in CNN's sizes, or a transformers model's full config), input shape,
class names, the input normalization, and how image files become its input (ingest's
preprocessing, then the centre window of the input shape when training took a smaller one).
Train writes it; evaluate and predict read it through ``mlpipeline.modeling.files``, the ONNX
runtime through ``mlpipeline.modeling.onnx_model``. No torch here: a serving machine reads it
with onnxruntime alone.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.windows import Images, centre_window
from mlpipeline.ingestion.images import Preprocessing

Positive = Annotated[int, Field(ge=1)]
CONVNET = "convnet"
EXIT_MODEL_UNUSABLE = 3
CONFIG_METADATA_KEY = "mlpipeline.model_config"  # model.json as train wrote it, in the weights and ONNX


class ModelError(PipelineError):
    """The model directory cannot be used: missing, damaged, or its two files disagree."""

    exit_code = EXIT_MODEL_UNUSABLE


# Strict: model.json is written by train, so a string where a number belongs is damage, not
# something to coerce. Unknown keys are refused too (a typo would otherwise pass unnoticed).
@with_config(ConfigDict(strict=True, extra="forbid"))
@dataclass(frozen=True)
class ModelConfig:
    """Architecture and input contract of a trained model (written as ``model.json``)."""

    classes: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=2)]
    # C, H, W of the network's input: the stored images (preprocessing's size) or, trained at a smaller
    # train.image_size, their centre window of this size (input_window)
    image_shape: Annotated[list[Positive], Field(min_length=3, max_length=3)]
    _: KW_ONLY
    widths: Annotated[list[Positive], Field(min_length=1)] | None = None  # convnet: each conv block's
    dropout: Annotated[float, Field(ge=0, lt=1)] | None = None  # convnet
    mean: list[Annotated[float, Field(ge=0, le=1)]]  # per-channel input mean, in [0, 1]
    std: list[Annotated[float, Field(gt=0)]]  # per-channel input std
    # How ingest turned files into pixels (images.Preprocessing.to_json), for predict to repeat;
    # None in models trained before ingest recorded it.
    preprocessing: dict[str, Any] | None = None
    # The fields below are left out of model.json for the CNN, so its files keep their bytes (and a
    # model.json without them is a CNN, as every model before transformers archs was).
    arch: Annotated[str, Field(min_length=1)] = CONVNET  # convnet, or a transformers model type
    network: dict[str, Any] | None = None  # a transformers arch's full config (config.json's keys)
    transformers: str | None = None  # the transformers version that trained it
    # Weights it started from: {"source": folder, "sha256": ...}, or a release (any arch) with its
    # tag's "commit" too (mlpipeline.modeling.finetune).
    pretrained: dict[str, str] | None = None

    def __post_init__(self) -> None:
        self._check_arch()
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes repeat a name: {self.classes}")
        channels = self.image_shape[0] if self.image_shape else 0
        if not len(self.mean) == len(self.std) == channels:
            raise ValueError(
                f"mean and std need one value per channel ({channels}), got {self.mean}, {self.std}"
            )
        made = self.input_preprocessing()
        smaller = all(
            side <= stored for side, stored in zip(self.image_shape[1:], made.image_size, strict=True)
        )
        if made.channels != self.image_shape[0] or not smaller:
            raise ValueError(
                f"preprocessing gives {made.channels}x{made.image_size[0]}x{made.image_size[1]} images, "
                f"image_shape is {self.image_shape} (it must be the same or a window of them)"
            )

    def _check_arch(self) -> None:
        if self.arch == CONVNET:
            if self.widths is None or self.dropout is None:
                raise ValueError("arch convnet needs widths and dropout")
            if self.network is not None or self.transformers is not None:
                raise ValueError("arch convnet has no network or transformers")
        elif self.network is None or self.transformers is None:
            raise ValueError(f"arch {self.arch} needs network (its transformers config) and transformers")
        elif self.widths is not None or self.dropout is not None:
            raise ValueError(f"widths and dropout size the convnet, not arch {self.arch}")
        elif self.network.get("model_type") != self.arch:
            raise ValueError(f"network.model_type is {self.network.get('model_type')!r}, arch is {self.arch}")

    def to_dict(self) -> dict[str, Any]:
        """model.json's content: the CNN's without the fields it leaves at their defaults."""
        fields = asdict(self)
        if self.arch == CONVNET:
            for name in (
                "arch",
                "network",
                "transformers",
                *(("pretrained",) if self.pretrained is None else ()),
            ):
                del fields[name]
        else:
            del fields["widths"], fields["dropout"]
        return fields

    def input_preprocessing(self) -> Preprocessing:
        """How an image file becomes this model's input, as ingest did it for the training images.

        A model trained before ingest recorded it gets what ingest did then: bicubic, no
        conversion, no JPEG draft.
        """
        if self.preprocessing is None:
            channels, height, width = self.image_shape
            return Preprocessing(channels, (height, width), "bicubic", False, 255, False)
        return Preprocessing.from_json(self.preprocessing)

    @property
    def stored_shape(self) -> list[int]:
        """C, H, W of the images preprocessing makes (ingest stores): ``image_shape`` or larger."""
        made = self.input_preprocessing()
        return [made.channels, *made.image_size]

    def input_window(self, images: Images) -> Images:
        """The network's input from stored images (N x ``stored_shape``): their centre
        ``image_shape`` window (``core.windows``), as evaluation saw the validation images."""
        return centre_window(images, self.image_shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


_CONFIG = TypeAdapter(ModelConfig)


def read_config(text: str | bytes, path: Path) -> ModelConfig:
    """The ``ModelConfig`` in JSON ``text`` read from ``path``, or ``ModelError`` naming what is wrong."""
    try:
        return _CONFIG.validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors(include_url=False)[:3])
        more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
        raise ModelError(f"{path}: not a valid model config: {problems}{more}") from None


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    quiet = error["type"] in ("missing", "json_invalid", "value_error")  # the message says it all
    shown = "" if quiet else f" (got {error['input']!r:.60})"
    return f"{where}: {message}{shown}" if where else f"{message}{shown}"
