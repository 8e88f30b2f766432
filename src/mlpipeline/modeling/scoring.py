"""Scoring a stream of images in batches, on every core: what ``mlpipeline-predict`` runs.

The images are cut into batches in their order; worker processes (``MLPIPELINE_WORKERS``,
default every core; ``mlpipeline.core.workers``) read and decode each batch as ingest decoded
the training images and, on the CPU, also run the model on it, one thread each; the results
come back in order. On a GPU the workers decode and this process runs the model, so the device
is fed by every core. A batch is always scored the same way (same images, one thread), so the
probabilities are the same bytes for any number of workers. Memory holds the batches in flight
(two per worker), never the whole list.

With ``--onnx`` the model runs on ONNX Runtime alone: neither this module nor its workers import
torch then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from itertools import chain, islice
from typing import Any

import numpy as np
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.workers import MIN_BATCHES_PER_WORKER, WorkerPool, worker_count, workers_for
from mlpipeline.ingestion.images import Preprocessing, decode_image
from mlpipeline.ingestion.sources import RawSample, read_files
from mlpipeline.modeling.config import ModelConfig
from mlpipeline.modeling.predict_inputs import Item

# class probabilities (float64) of a batch of decoded images, their centre window when training
# took a smaller train.image_size (ModelConfig.input_window), as evaluation scored them
Scorer = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ModelSpec:
    """Which model scores and where: picklable, so each worker loads its own copy."""

    path: str  # a model directory, or an ONNX file
    onnx: bool
    device: str = "cpu"  # torch's device choice (auto, cpu, cuda, mps); the CPU for ONNX
    batch_size: int = 256

    def load(self) -> tuple[ModelConfig, Scorer]:
        """The model's config and its probabilities of a batch; ``ModelError`` if it is unusable."""
        return _onnx_scorer(self) if self.onnx else _torch_scorer(self)

    def resolved(self) -> ModelSpec:
        """This spec with ``auto`` resolved to the device torch picks here."""
        if self.onnx:
            return self
        from mlpipeline.core.device import pick_device

        return ModelSpec(self.path, False, pick_device(self.device, "device").type, self.batch_size)


def _onnx_scorer(spec: ModelSpec) -> tuple[ModelConfig, Scorer]:
    from mlpipeline.modeling.onnx_model import OnnxModel, softmax

    model = OnnxModel(spec.path)
    window = model.config.input_window
    return model.config, lambda images: softmax(model.logits(window(images), spec.batch_size))


def _torch_scorer(spec: ModelSpec) -> tuple[ModelConfig, Scorer]:
    from mlpipeline.core.device import pick_device
    from mlpipeline.modeling.files import load_model
    from mlpipeline.modeling.inference import predict_probabilities

    device = pick_device(spec.device, "device")
    model, config = load_model(spec.path, device)

    def scorer(images: np.ndarray) -> np.ndarray:
        with _one_thread(device.type):
            return predict_probabilities(model, config.input_window(images), device, spec.batch_size)

    return config, scorer


@contextmanager
def _one_thread(device_type: str) -> Iterator[None]:
    """One CPU thread while a batch is scored: the same sums in the same order in any process."""
    import torch

    if device_type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Prediction:
    """One image's top classes (indices, best first) and their probabilities, or its error."""

    path: str
    classes: tuple[int, ...] = ()
    probabilities: tuple[float, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class Decoded:
    """A batch decoded by a worker, for this process to score (a GPU's batches)."""

    items: list[Item]
    pixels: np.ndarray | None  # the decodable images, in order
    errors: dict[int, str]  # position in ``items`` -> why it could not be decoded


@dataclass(frozen=True)
class Job:
    """What each worker holds: the preprocessing, how many classes to keep, and the model when
    the workers score (None: they decode only)."""

    preprocessing: dict[str, Any]
    topk: int
    spec: ModelSpec | None


_scorer: Scorer | None = None
_job: Job | None = None


def start_job(job: Job) -> None:
    """A worker's start: keep the job and load its own copy of the model."""
    global _scorer, _job
    _job = job
    if job.spec is not None:
        _scorer = job.spec.load()[1]


def run_batch(items: list[Item]) -> list[Prediction] | Decoded:
    """Decode ``items``; score them too when this worker holds the model."""
    assert _job is not None
    decoded = decode_batch(items, Preprocessing.from_json(_job.preprocessing))
    return decoded if _scorer is None else top_classes(decoded, _scorer, _job.topk)


def decode_batch(items: list[Item], preprocessing: Preprocessing) -> Decoded:
    errors = {i: item.error for i, item in enumerate(items) if item.error is not None}
    readable = [i for i in range(len(items)) if i not in errors]
    images = {}
    for i, data in zip(readable, _read([items[i] for i in readable]), strict=True):
        try:
            if isinstance(data, str):
                raise PipelineError(f"{items[i].path}: {data}")
            images[i] = decode_image(data, items[i].path, preprocessing)
        except PipelineError as exc:
            errors[i] = str(exc)
    return Decoded(items, np.stack([images[i] for i in sorted(images)]) if images else None, errors)


def _read(items: list[Item]) -> list[bytes | str]:
    """Each item's bytes, or why they could not be read: local files one by one, remote ones
    (``s3://``) fetched together, per store."""
    read: dict[int, bytes | str] = {}
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.location.split("://", 1)[0] if "://" in item.location else "", []).append(i)
    for protocol, members in groups.items():
        fs = url_to_fs(items[members[0]].location)[0] if protocol else LocalFileSystem()
        samples = [RawSample(_in_store(items[i].location), items[i].path, "", items[i].path) for i in members]
        for i, (_, data) in zip(members, read_files(fs, samples), strict=True):
            read[i] = data
    return [read[i] for i in range(len(items))]


def _in_store(location: str) -> str:
    return location.split("://", 1)[1] if "://" in location else location


def top_classes(decoded: Decoded, scorer: Scorer, topk: int) -> list[Prediction]:
    """Each item's ``topk`` classes (ties: the lower index first) and probabilities, or its error."""
    scores = scorer(decoded.pixels) if decoded.pixels is not None else np.empty((0, 0))
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :topk]
    rows = iter(zip(ranked, np.take_along_axis(scores, ranked, axis=1), strict=True))
    predictions = []
    for i, item in enumerate(decoded.items):
        if i in decoded.errors:
            predictions.append(Prediction(item.path, error=decoded.errors[i]))
        else:
            classes, probabilities = next(rows)
            predictions.append(
                Prediction(item.path, tuple(map(int, classes)), tuple(map(float, probabilities)))
            )
    return predictions


def predictions(
    items: Iterable[Item], spec: ModelSpec, config: ModelConfig, scorer: Scorer, topk: int
) -> Iterator[list[Prediction]]:
    """The predictions of ``items``, a batch at a time, in order. ``spec`` is resolved (its device
    known); ``config`` and ``scorer`` are its model's, loaded here already (errors before any work),
    and score the batches this process scores: a GPU's, or all of them with one worker."""
    batches = _batched(items, spec.batch_size)
    ahead = list(islice(batches, MIN_BATCHES_PER_WORKER * worker_count()))  # few images: few workers
    workers = workers_for(len(ahead)) if len(ahead) < MIN_BATCHES_PER_WORKER * worker_count() else None
    count = workers or worker_count()
    in_workers = (spec.onnx or spec.device == "cpu") and count > 1
    job = Job(config.input_preprocessing().to_json(), topk, spec if in_workers else None)
    with WorkerPool(count, partial(start_job, job)) as pool:
        for done in pool.map(run_batch, chain(ahead, batches)):
            yield done if isinstance(done, list) else top_classes(done, scorer, topk)


def _batched(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
