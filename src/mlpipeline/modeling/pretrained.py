"""A pretrained checkpoint folder (``data/weights/<name>``) read as data, never as code.

The folder arrives through ``dvc pull`` like any data, so it is read as the design's contract
reads data: nothing in it runs, and nothing outside it, or that DVC does not hash, is read.
So transformers is never pointed at the folder: its loaders would import the
``configuration_*.py`` an ``auto_map`` names (after asking on a terminal, where ``y`` runs it),
read the shards an index names wherever they are, and look for pickles. This module reads
``config.json``, ``preprocessor_config.json`` and the safetensors weights itself, and
``mlpipeline.modeling.hf`` hands transformers a config dict and a state dict:

- an ``auto_map`` (code to import) is refused, in config.json and in a model.json's network;
  a folder of pickle weights only is refused, and a pickle is never loaded;
- every file is named relative to the folder and stays inside it (an index's shard
  ``../x.safetensors`` is refused), and DVC must hash it: not below a symlinked folder (the
  weights folder itself included), not excluded by ``.dvcignore``; these are ingest's rules
  (``mlpipeline.ingestion.unhashed``), rooted at the folder's parent, the stage's dependency
  (``data/weights``). A symlinked *file* is read: DVC hashes it by its target's content, and
  ``cache.type: symlink`` checks every file out that way;
- the tensors must read whole (a truncated file is named), be finite (damaged weights stop
  train before its first step, with advice of their own) and be floating-point where the
  network holds floats (an int32 convolution would load cast, without a word).
"""

from __future__ import annotations

import json
import math
import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mlpipeline.core.device import nonfinite_tensors
from mlpipeline.core.errors import PipelineError
from mlpipeline.ingestion.unhashed import Unhashed, refuse_unhashed

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
EXPLICIT_WEIGHTS = "transformers_weights"  # config.json's own name for its weights file


class CheckpointFolder:
    """The files of the checkpoint in ``folder`` that train may read, each checked as it is read."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._unhashed = Unhashed(str(folder.parent))

    def path(self, name: str, where: str | None = None) -> Path:
        """The file ``name`` (relative to the folder; ``where`` named it) to read, or one line
        saying why it may not be."""
        inside = posixpath.normpath(name)
        if (
            name.startswith("/")
            or any(c in name for c in "\\\0")
            or inside in (".", "..")
            or inside.startswith("../")
        ):
            raise PipelineError(
                f"{where or self.folder} names '{name}', outside {self.folder}; train reads only the "
                "files of the weights folder"
            )
        refuse_unhashed(self._unhashed, f"{self.folder.name}/{inside}", str(self.folder.parent), "train")
        return self.folder / inside

    def json(self, name: str) -> Any:
        """The JSON file ``name`` of the folder, parsed; None when there is none."""
        if not (self.folder / name).exists():
            return None
        path = self.path(name)
        try:
            return json.loads(path.read_bytes())
        except ValueError as exc:  # a JSONDecodeError, or bytes that are no UTF-8
            raise PipelineError(f"{path}: not JSON ({str(exc).splitlines()[0]})") from None
        except OSError as exc:
            raise PipelineError(f"{path}: cannot be read ({exc.strerror or exc})") from None

    def config(self) -> dict[str, Any]:
        """config.json, a JSON object that names no code."""
        path, config = self.folder / CONFIG_FILE, self.json(CONFIG_FILE)
        if not isinstance(config, dict):
            raise PipelineError(f"{path}: not a JSON object (a transformers config.json is one)")
        refuse_code(config, str(path))
        return config

    def stats(self, channels: int) -> tuple[list[float], list[float]] | None:
        """The input mean and std of preprocessor_config.json, one number per channel; None when
        it has none."""
        path, values = self.folder / PREPROCESSOR_FILE, self.json(PREPROCESSOR_FILE)
        if values is None:
            return None
        if not isinstance(values, dict):
            raise PipelineError(f"{path}: not a JSON object (a preprocessor config is one)")
        mean, std = values.get("image_mean"), values.get("image_std")
        if mean is None or std is None:
            return None
        if not (_numbers(mean, channels) and _numbers(std, channels)):
            raise PipelineError(
                f"{path}: image_mean and image_std need one finite number per channel ({channels})"
            )
        return [float(v) for v in mean], [float(v) for v in std]

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the checkpoint's safetensors file, or of the shards its index names;
        all finite."""
        tensors: dict[str, torch.Tensor] = {}
        for path in self._weight_files():
            read = _read_safetensors(path)
            if bad := nonfinite_tensors(read):
                raise PipelineError(
                    f"{path}: tensor {bad[0]} holds NaN or infinity: these pretrained weights are damaged "
                    "(fetch them again, or dvc pull them)"
                )
            tensors.update(read)
        return tensors

    def _weight_files(self) -> list[Path]:
        """The safetensors files to read: config.json's own choice, else the single file, else
        the shards of the index; a folder with pickles only is refused, never read."""
        explicit = self.config().get(EXPLICIT_WEIGHTS)
        if explicit is not None:
            if not isinstance(explicit, str) or not explicit.endswith(
                (".safetensors", ".safetensors.index.json")
            ):
                raise PipelineError(
                    f"{self.folder / CONFIG_FILE}: {EXPLICIT_WEIGHTS} must name a .safetensors file or index"
                )
            chosen = [explicit]
        else:
            chosen = [name for name in (WEIGHTS_FILE, INDEX_FILE) if (self.folder / name).is_file()][:1]
        if not chosen:
            raise PipelineError(self._no_weights())
        if chosen[0].endswith(".json"):
            return self._shards(chosen[0])
        return [self.path(chosen[0], f"{self.folder / CONFIG_FILE}: {EXPLICIT_WEIGHTS}")]

    def _shards(self, name: str) -> list[Path]:
        self.path(name, f"{self.folder / CONFIG_FILE}: {EXPLICIT_WEIGHTS}")
        index_path, index = self.folder / name, self.json(name)
        if index is None:
            raise PipelineError(f"{index_path}: not found ({self.folder / CONFIG_FILE} names it)")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise PipelineError(f"{index_path}: weight_map is not a mapping of tensor names to file names")
        where = f"{index_path}: weight_map"
        return [self.path(shard, where) for shard in dict.fromkeys(weight_map.values())]

    def _no_weights(self) -> str:
        pickles = sorted(p.name for p in self.folder.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
        if pickles:
            return (
                f"{self.folder}: pickle weights only ({', '.join(pickles)}), and a pickle is never loaded "
                "(unpickling can run code): convert them to model.safetensors where you trust them "
                "(docs/models.md), then dvc add the folder again"
            )
        return f"{self.folder}: no {WEIGHTS_FILE} or {INDEX_FILE}"


def refuse_code(config: Mapping[str, Any], where: str) -> None:
    """A one-line refusal of a transformers config (or one it nests) that names code to import."""
    for key, value in config.items():
        if key == "auto_map":
            names = ", ".join(value) if isinstance(value, dict) else str(value)
            raise PipelineError(
                f"{where}: names code to run (auto_map: {names}); code in a weights folder never runs: "
                "use a checkpoint of a model type transformers has built in"
            )
        if isinstance(value, Mapping):
            refuse_code(value, where)


def refuse_casts(
    kinds: Mapping[str, torch.dtype], state: Mapping[str, torch.Tensor], prefix: str, where: Path
) -> None:
    """Refuse checkpoint tensors (name -> dtype in ``kinds``) that are not floating-point where the
    network's tensor of that name in ``state`` (maybe under the base model's ``prefix``) is:
    loading would cast them."""
    cast = []
    for name, kind in kinds.items():
        if kind.is_floating_point:
            continue
        target = next((state[n] for n in (name, f"{prefix}.{name}") if n in state), None)
        if target is not None and target.is_floating_point():
            cast.append((name, kind, target.dtype))
    if cast:
        name, theirs, ours = sorted(cast)[0]
        raise PipelineError(
            f"{where}: tensor {name} is {_kind(theirs)} in the checkpoint, {_kind(ours)} in the network "
            f"({len(cast)} such; pretrained weights are floating-point)"
        )


def _numbers(value: Any, count: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == count
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )


def _kind(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found (dvc pull the weights folder again)") from None
    except OSError as exc:
        raise PipelineError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except SafetensorError as exc:
        raise PipelineError(f"{path}: not a safetensors file, or truncated or damaged ({exc})") from None
