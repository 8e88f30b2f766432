"""Epoch checkpoints that let an interrupted training resume where it stopped: to the very same
bytes on CPU (deterministic kernels), to a statistically equivalent model on a GPU.

DVC 3 has no checkpoint outputs, and a ``persist`` output takes the stage out of
the run-cache, so checkpoints live outside DVC, in ``.cache/checkpoints/<key>/``
(gitignored). The key hashes everything the run's result depends on: the train
params and what they resolved to on this machine (device type, precision, thread
count), the input datasets' ``dataset.json`` files (which hold every shard's sha256,
so they cover the shards' bytes without reading them again), the package's source
code (which also fixes the checkpoint format) and the torch version. A checkpoint
from other params, data or code has another key and is never resumed. The latest
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
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from mlpipeline.core import atomic
from mlpipeline.core.shards import META_FILE, Dataset
from mlpipeline.training.device import Runtime
from mlpipeline.training.params import TrainParams

CHECKPOINT_ROOT = Path(".cache/checkpoints")
LATEST = "latest.pt"
_CHUNK = 1 << 20

log = logging.getLogger("train")


def run_key(
    params: TrainParams, runtime: Runtime, datasets: Iterable[Dataset], phase: str, weights: str = ""
) -> str:
    """A hash of what a phase's model depends on: params, how they resolved on this machine
    (device type, precision, threads: ``auto`` and ``0`` resolve per machine), the inputs'
    dataset.json files, the pretrained ``weights``' hash, code, torch version."""
    digest = hashlib.sha256()
    digest.update(phase.encode())
    digest.update(f"weights {weights}".encode())
    digest.update(atomic.to_json_text(dataclasses.asdict(params)).encode())
    digest.update(f"{runtime.device.type} {runtime.precision} {runtime.threads} threads".encode())
    digest.update(f"torch {torch.__version__}".encode())
    for dataset in datasets:  # their shards' sha256 are in dataset.json: no need to read gigabytes
        _hash_file(digest, dataset.root / META_FILE)
    package = Path(__file__).resolve().parents[1]  # the mlpipeline package
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode())
        _hash_file(digest, source)
    return digest.hexdigest()[:20]


def _hash_file(digest: Any, path: Path) -> None:
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)


class Checkpoints:
    """The checkpoint directory of one run key."""

    def __init__(self, key: str, root: Path = CHECKPOINT_ROOT) -> None:
        self.directory = root / key

    @property
    def path(self) -> Path:
        return self.directory / LATEST

    def save(self, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic.write_bytes(self.path, buffer.getvalue())

    def load(self) -> dict[str, Any] | None:
        """The latest checkpoint of this key, or None if there is none (or it is unreadable)."""
        if not self.path.exists():
            return None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # damaged in any way: a checkpoint only saves time, start afresh
            log.warning("ignoring unreadable checkpoint %s (%s)", self.path, exc)
            return None

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
