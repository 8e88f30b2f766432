"""Epoch checkpoints that let an interrupted training resume where it stopped: to the very same
bytes on CPU (deterministic kernels), to a statistically equivalent model on a GPU.

DVC 3 has no checkpoint outputs, and a ``persist`` output takes the stage out of
the run-cache, so checkpoints live outside DVC, in ``.cache/checkpoints/<key>/``
(gitignored). The key hashes everything the run's result depends on: the train
params and what they resolved to on this machine (device type, precision, thread
count), the input datasets' ``dataset.json`` files (which hold every shard's sha256,
so they cover the shards' bytes without reading them again), the pretrained weights'
hash, the package's source code (which also fixes the checkpoint format), the torch
version and the phase. A checkpoint from other params, data, weights or code has
another key and is never resumed. The latest
epoch's checkpoint replaces the previous one atomically; the directory is removed
once the model is written.

Checkpoints are local files this process wrote, so loading them with
``torch.load(weights_only=True)`` (tensors and plain containers only) is safe;
nothing fetched from a remote is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from mlpipeline.core import atomic
from mlpipeline.core.shards import META_FILE, Dataset
from mlpipeline.training.device import Runtime
from mlpipeline.training.distributed import World
from mlpipeline.training.params import TrainParams

CHECKPOINT_ROOT = Path(".cache/checkpoints")
LATEST = "latest.pt"
_CHUNK = 1 << 20

log = logging.getLogger("train")


def fingerprint(
    params: TrainParams, runtime: Runtime, datasets: Iterable[Dataset], weights: str = ""
) -> dict[str, str]:
    """What a run's model depends on, part by part, so ranks that disagree can say on what: each
    param, how params resolved on this machine (device type, precision, threads: ``auto`` and
    ``0`` resolve per machine), the torch version, the inputs' dataset.json files and each
    source file of the package (which also fixes the checkpoint format), and the pretrained
    ``weights``' hash (empty: none)."""
    parts = {f"train.{key}": json.dumps(value) for key, value in _leaves(dataclasses.asdict(params))}
    parts["device and precision"] = f"{runtime.device.type} {runtime.precision}"
    parts["threads"] = str(runtime.threads)
    parts["torch"] = torch.__version__
    parts["pretrained weights"] = weights
    for dataset in datasets:  # their shards' sha256 are in dataset.json: no need to read gigabytes
        root = dataset.root if not dataset.root.is_absolute() else Path(dataset.root.name)
        parts[(root / META_FILE).as_posix()] = _file_digest(dataset.root / META_FILE)
    package = Path(__file__).resolve().parents[1]  # the mlpipeline package
    for source in sorted(package.rglob("*.py")):
        parts[f"mlpipeline/{source.relative_to(package).as_posix()}"] = _file_digest(source)
    return parts


def run_key(
    params: TrainParams, runtime: Runtime, datasets: Iterable[Dataset], phase: str, weights: str = ""
) -> str:
    """A hash of a phase's name and ``fingerprint``: a checkpoint is resumed only by the run it
    belongs to."""
    text = atomic.to_json_text({"phase": phase, **fingerprint(params, runtime, datasets, weights)})
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _leaves(tree: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Checkpoints:
    """The checkpoint directory of one run key, on the node of rank 0 (which alone saves): on
    resume, rank 0 reads it and sends it to every rank, so ranks on other nodes, which hold no
    checkpoint, start from the same state."""

    def __init__(self, key: str, root: Path = CHECKPOINT_ROOT, world: World | None = None) -> None:
        self.directory = root / key
        self.world = world or World()

    @property
    def path(self) -> Path:
        return self.directory / LATEST

    def save(self, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic.write_bytes(self.path, buffer.getvalue())

    def load(self) -> dict[str, Any] | None:
        """The latest checkpoint of this key, or None if there is none (or it is unreadable)."""
        data = self.world.from_main(lambda: self.path.read_bytes() if self.path.exists() else None)
        if data is None:
            return None
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # damaged in any way: a checkpoint only saves time, start afresh
            log.warning("ignoring unreadable checkpoint %s (%s)", self.path, exc)
            return None

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
