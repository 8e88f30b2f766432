"""A trained model's directory: ``model.safetensors`` and ``model.json``, written atomically and
read back only if the two make a usable model.

The weights file also records the config it was trained with (in its safetensors metadata),
because tensor shapes alone cannot tell everything: the network pools its way down to one pixel
whatever the image size, and the class names, their order and the input normalization are in
no weight. So a ``model.json`` edited or swapped after training (``image_shape [1,16,16]`` beside
weights trained on 8x8, which would load and predict garbage) is refused by name, and a
damaged, empty or foreign weights file gets one line instead of a traceback. Weights written
before that record existed are still checked tensor by tensor.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from mlpipeline.core import atomic
from mlpipeline.core.device import nonfinite_tensors
from mlpipeline.modeling.config import (  # noqa: F401 (EXIT_MODEL_UNUSABLE: the exit code, here too)
    CONFIG_METADATA_KEY,
    CONVNET,
    EXIT_MODEL_UNUSABLE,
    ModelConfig,
    ModelError,
    read_config,
)
from mlpipeline.modeling.hub_layout import hub_files
from mlpipeline.modeling.network import build_model

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.json"
WRAPPER_PREFIX = "net."  # the pipeline's wrapper of a transformers model (HFNet.net)
log = logging.getLogger("model")


def save_model(model: nn.Module, config: ModelConfig, out_dir: Path | str) -> None:
    """Write weights (safetensors, recording ``config``) and config (JSON) atomically into ``out_dir``;
    a transformers arch also in the Hugging Face layout (``mlpipeline.modeling.hub_layout``): its
    weights under the transformers model's own names, and ``config.json`` and
    ``preprocessor_config.json`` beside them."""
    out_dir = Path(out_dir)
    model = _unwrap(model)
    config_text = atomic.to_json_text(config.to_dict())
    metadata = {CONFIG_METADATA_KEY: config_text}
    if config.arch != CONVNET:
        model = model.net
        metadata["format"] = "pt"  # transformers 4 refuses safetensors without it
        for name, text in hub_files(config, type(model).__name__).items():
            atomic.write_text(out_dir / name, text)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic.write_bytes(out_dir / WEIGHTS_FILE, save(state, metadata=metadata))
    atomic.write_text(out_dir / CONFIG_FILE, config_text)


def load_model(model_dir: Path | str, device: torch.device | str = "cpu") -> tuple[nn.Module, ModelConfig]:
    """Rebuild the network from ``model.json`` and load ``model.safetensors``, in eval mode.

    Raises ``ModelError`` (one line naming the file) for a missing, unreadable or invalid file,
    a config that does not match the weights, or weights holding NaN or infinity.
    """
    model_dir = Path(model_dir)
    config_path, weights_path = model_dir / CONFIG_FILE, model_dir / WEIGHTS_FILE
    try:
        config = read_config(config_path.read_bytes(), config_path)
    except OSError as exc:
        raise _unreadable(config_path, exc) from None
    tensors, recorded = _read_weights(weights_path)
    if recorded is not None:
        _check_same_config(config, read_config(recorded, weights_path), config_path, weights_path)
    model = build_model(config)
    holder = _weights_holder(model, config, tensors)
    _check_tensors(holder.state_dict(), tensors, config_path, weights_path)
    if bad := nonfinite_tensors(tensors):  # every prediction would be NaN: refuse, do not print it
        raise ModelError(
            f"{weights_path}: {bad[0]} holds NaN or infinity (the run that wrote it diverged; retrain "
            "with a lower train.lr)"
        )
    holder.load_state_dict(tensors)
    return model.to(device).eval(), config


def _weights_holder(model: nn.Module, config: ModelConfig, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """The module whose tensor names the weights file uses: a transformers arch's own model (the
    Hugging Face layout), or the whole wrapper for the CNN and for transformers weights written
    before that layout (every name under ``net.``)."""
    if config.arch == CONVNET or (tensors and all(name.startswith(WRAPPER_PREFIX) for name in tensors)):
        return model
    return model.net


def _unreadable(path: Path, exc: OSError) -> ModelError:
    if isinstance(exc, FileNotFoundError):
        return ModelError(f"{path}: not found (has the train stage run?)")
    return ModelError(f"{path}: cannot be read ({exc.strerror or exc})")


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """The tensors and the recorded config text (None for weights written before it was recorded)."""
    try:
        with safe_open(path, framework="pt") as weights:
            recorded = (weights.metadata() or {}).get(CONFIG_METADATA_KEY)
            names = weights.keys()  # a safe_open handle is not iterable
            return {name: weights.get_tensor(name) for name in names}, recorded
    except OSError as exc:
        raise _unreadable(path, exc) from None
    except SafetensorError as exc:
        raise ModelError(f"{path}: not a safetensors file, or truncated or damaged ({exc})") from None


def _check_same_config(
    config: ModelConfig, recorded: ModelConfig, config_path: Path, weights_path: Path
) -> None:
    for field in dataclasses.fields(ModelConfig):
        ours, theirs = getattr(config, field.name), getattr(recorded, field.name)
        if ours != theirs:
            raise ModelError(
                f"{config_path} does not match {weights_path}: {field.name} is {ours} in "
                f"{config_path.name}, {theirs} in the config the weights were trained with (restore "
                f"the {config_path.name} written with these weights, or retrain)"
            )


def _check_tensors(
    expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], config_path: Path, weights_path: Path
) -> None:
    """Names, shapes and dtypes of ``found`` must be those the network of ``config_path`` has."""
    where = f"{weights_path} does not match {config_path}"
    if missing := sorted(expected.keys() - found.keys()):
        raise ModelError(f"{where}: no tensor {missing[0]} ({len(missing)} missing)")
    if extra := sorted(found.keys() - expected.keys()):
        raise ModelError(f"{where}: tensor {extra[0]} has no place in the network ({len(extra)} extra)")
    for name, tensor in expected.items():
        if (found[name].shape, found[name].dtype) != (tensor.shape, tensor.dtype):
            raise ModelError(
                f"{where}: {name} is {_spec(found[name])} in the weights, {_spec(tensor)} in the network"
            )


def _spec(tensor: torch.Tensor) -> str:
    return f"{'x'.join(map(str, tensor.shape)) or 'scalar'} {str(tensor.dtype).removeprefix('torch.')}"


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside a DistributedDataParallel or torch.compile wrapper."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
