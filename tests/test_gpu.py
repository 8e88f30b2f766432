"""The GPU suite: what only a CUDA or MPS device proves (``make test-gpu``, i.e. ``pytest -m gpu``).

Skipped where neither is present. On the device: the tiny model trains two epochs with the
device's mixed precision, and with its data streamed (pinned staging buffers on CUDA) and
augmented online; a stage run killed after a checkpoint resumes; two NCCL processes train one
model where two GPUs are; the device's model evaluates and predicts, scoring within a point
of the same params trained on the CPU. The paths under test are the CPU's
(one ``train()``, one stage), so what the CPU suite proves holds here but for bitwise equality.
``MLPIPELINE_GPU_TESTS_DEVICE=cpu pytest -m gpu`` runs the suite on the CPU instead: a dry run
of the tests themselves on a machine without a GPU (the NCCL test still needs two GPUs).
``make test-gpu`` sets ``MLPIPELINE_GPU_REQUIRED``: without a device it then fails at collection
(a CPU wheel or an old driver would otherwise skip everything and pass).

Beyond training: streamed batches equal resident ones on the device, with each copy out of a
pinned buffer held back on the copy stream (``torch.cuda._sleep``) so a reader refilling a
buffer too early would show; an epoch of each placement takes no host-device sync in a step
(CUDA's sync debug mode, the CNN and a transformers ResNet); and the augmentation kernel and its
hashed noise give the same bytes on the device as on the CPU. Each device test runs with the
determinism settings its stage uses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import torch
import yaml
from conftest import repo_params, run
from PIL import Image
from tiny_model import CLASSES, tiny_images, write_tiny_dataset
from tiny_training import RECIPE, tiny_params, tiny_section, write_online_inputs, write_training_set

from mlpipeline.augmentation import online as online_module
from mlpipeline.augmentation.transforms import Transforms, augment
from mlpipeline.core.bitexact import hashed_noise, noise_table
from mlpipeline.core.device import copy_stream
from mlpipeline.core.params import from_mapping
from mlpipeline.core.shard_rows import SplitReader
from mlpipeline.core.shards import Dataset
from mlpipeline.modeling.files import save_model
from mlpipeline.modeling.network import build_model, new_config
from mlpipeline.modeling.predict import predict_paths
from mlpipeline.stages.evaluate import EvaluateParams, evaluate
from mlpipeline.stages.train import train
from mlpipeline.training import loader
from mlpipeline.training.data import epoch_order, open_inputs
from mlpipeline.training.device import configure, mixed_precision
from mlpipeline.training.distributed import World
from mlpipeline.training.loader import PLACEMENT_ENV, Feed, Placement, Resident, Streamed, place
from mlpipeline.training.loop import Trainer

T = TypeVar("T")
DEVICE_ENV = "MLPIPELINE_GPU_TESTS_DEVICE"
STAGE = [sys.executable, "-m", "mlpipeline.stages.train"]
TEST_PER_CLASS = 100  # 300 test images: a point of accuracy is 3 of them
LAST = {"monitor": "last", "patience": None}


def accelerator() -> str | None:
    """The device the suite runs on: CUDA, else MPS, else none (or the one ``DEVICE_ENV`` names)."""
    if os.environ.get(DEVICE_ENV):
        return os.environ[DEVICE_ENV]
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else None


DEVICE = accelerator()
REQUIRED_ENV = "MLPIPELINE_GPU_REQUIRED"
if DEVICE is None and os.environ.get(REQUIRED_ENV):
    pytest.exit(
        f"no CUDA or MPS device visible to torch: torch {torch.__version__}, built for CUDA "
        f"{torch.version.cuda or 'none'}, cuda.is_available() False"
        f"{'' if torch.version.cuda is None else ' (driver too old or no GPU?)'}, mps.is_available() False"
    )
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE is None,
        reason="no CUDA or MPS device here: the GPU suite runs on a GPU machine (make test-gpu)",
    ),
]
# auto is the device's own choice (CUDA: bf16 on Ampere and later, else fp16 with a scaler; MPS:
# float32); CUDA also runs fp16 with its grad scaler whatever the GPU.
PRECISIONS = {"cuda": ["auto", "fp16"], "mps": ["auto"], "cpu": ["auto", "bf16"]}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The train stage's inputs, as ingest and augment lay them out, with a larger test split."""
    root = tmp_path_factory.mktemp("gpu")
    write_tiny_dataset(root / "data" / "ingested", {"train": 12, "val": 10, "test": TEST_PER_CLASS})
    write_training_set(root / "data" / "augmented", tiny_images(40, seed=7))
    return root


def stage_dir(workdir: Path, tmp_path: Path, **overrides: object) -> Path:
    """A directory the stage runs in on the device: the inputs and a tiny params.yaml."""
    shutil.copytree(workdir / "data", tmp_path / "data")
    section = tiny_section(device=DEVICE, precision="auto", early_stopping=LAST, **overrides)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": section}))
    return tmp_path


@pytest.mark.parametrize("precision", PRECISIONS.get(DEVICE or "", []))
def test_trains_two_epochs_on_the_device_with_its_precision(
    workdir: Path, tmp_path: Path, precision: str
) -> None:
    inputs = open_inputs(workdir / "data" / "augmented", workdir / "data" / "ingested")
    params = tiny_params(device=DEVICE, precision=precision, epochs=2, early_stopping=LAST)
    result = train(params, inputs, tmp_path / "report", tmp_path / "ckpt")

    runtime, trainer = result.runtime, result.trainer
    assert runtime.device.type == DEVICE
    assert runtime.amp_dtype == mixed_precision(runtime.device, precision)
    if DEVICE == "cuda":
        assert runtime.amp_dtype in (torch.bfloat16, torch.float16)  # mixed precision, whatever the GPU
    assert (trainer.scaler is not None) == (runtime.amp_dtype == torch.float16)
    weights = list(trainer.model.parameters())
    assert all(w.device.type == DEVICE and bool(torch.isfinite(w).all()) for w in weights)
    history = trainer.progress.history
    assert [r.epoch for r in history] == [1, 2] and history[1].train_loss < history[0].train_loss
    assert result.best.val_acc >= 0.8  # chance is 1/3
    assert (tmp_path / "report" / "metrics.json").exists() and Path(result.checkpoints[-1].path).exists()


def test_the_photo_recipe_trains_on_the_device(workdir: Path, tmp_path: Path) -> None:
    """The weight average, accumulation, clipping, mixing and class weights on the device's
    kernels (int64 index_add_, _foreach_lerp_, TF32 steps on CUDA), through the grad scaler
    where the precision has one; validation back in exact float32 afterwards."""
    inputs = open_inputs(workdir / "data" / "augmented", workdir / "data" / "ingested")
    params = tiny_params(device=DEVICE, precision="auto", epochs=3, early_stopping=LAST, **RECIPE)
    result = train(params, inputs, None, tmp_path / "ckpt")
    assert result.trainer.average is not None and result.trainer.average.updates > 0
    assert all(torch.isfinite(w).all() for w in result.trainer.model.parameters())
    assert result.best.val_acc >= 0.6  # chance is 1/3
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


def test_streams_and_augments_online_on_the_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The streamed path (on CUDA: pinned staging buffers, copies without blocking) and the online
    augmentation kernel on the device, against the same run with the data resident."""
    inputs = write_online_inputs(tmp_path, synthetic_per_class=10)
    params = tiny_params(device=DEVICE, precision="auto", epochs=2, early_stopping=LAST)
    accuracy = {}
    for placement in ("streamed", "resident"):
        monkeypatch.setenv(PLACEMENT_ENV, placement)
        result = train(params, inputs, None, tmp_path / f"ckpt-{placement}")
        assert isinstance(result.trainer.train.rows, Streamed if placement == "streamed" else Resident)
        assert result.runtime.device.type == DEVICE
        accuracy[placement] = result.best.val_acc
    assert min(accuracy.values()) >= 0.8, accuracy  # chance is 1/3


def test_a_killed_stage_run_resumes_on_the_device(workdir: Path, tmp_path: Path) -> None:
    run_dir = stage_dir(workdir, tmp_path, epochs=30)
    checkpoints = run_dir / ".cache" / "checkpoints"
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(STAGE, cwd=run_dir, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 600
            while not list(checkpoints.glob("*/latest.ckpt")) and first.poll() is None:
                assert time.monotonic() < deadline, "no checkpoint after 10 minutes"
                time.sleep(0.005)
            assert first.poll() is None, f"ended before a kill:\n{(tmp_path / 'first.log').read_text()}"
        finally:
            first.kill()
            first.wait()

    resumed = run(STAGE, run_dir)
    assert "resumed after epoch " in resumed.stderr and f"on {DEVICE}" in resumed.stderr
    assert (run_dir / "models" / "model.safetensors").exists() and not list(checkpoints.iterdir())
    accuracy = yaml.safe_load((run_dir / "reports" / "train" / "metrics.json").read_text())["val"]["acc"]
    assert accuracy >= 0.9


@pytest.mark.skipif(
    DEVICE != "cuda" or torch.cuda.device_count() < 2, reason="DDP with NCCL needs two CUDA GPUs"
)
def test_two_gpus_train_one_model_with_nccl(workdir: Path, tmp_path: Path) -> None:
    run_dir = stage_dir(workdir, tmp_path, processes=2, epochs=3)
    result = run(STAGE, run_dir)

    summaries = [line for line in result.stderr.splitlines() if line.startswith("train: read ")]
    assert len(summaries) == 1 and "on cuda:0" in summaries[0] and "x 2 processes" in summaries[0]
    accuracy = yaml.safe_load((run_dir / "reports" / "train" / "metrics.json").read_text())["val"]["acc"]
    assert accuracy >= 0.9 and (run_dir / "models" / "model.safetensors").exists()


@pytest.fixture(scope="module")
def models(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same params trained on the device and on the CPU, saved as the stage saves them.

    Training sets process-wide flags for its device (on the CPU: deterministic algorithms);
    evaluate and predict set none, so the tests after this one get the process's own back."""
    inputs = open_inputs(workdir / "data" / "augmented", workdir / "data" / "ingested")
    root = tmp_path_factory.mktemp("models")
    saved = {}
    flags = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    try:
        for device in (DEVICE, "cpu"):
            params = tiny_params(device=device, precision="auto", early_stopping=LAST)
            result = train(params, inputs, None, root / f"checkpoints-{device}")
            save_model(result.trainer.model, result.config, root / f"models-{device}")
            saved[str(device)] = root / f"models-{device}"
    finally:
        torch.use_deterministic_algorithms(flags[0])
        torch.backends.cudnn.benchmark = flags[1]
    return saved


def test_evaluate_and_predict_run_with_their_stages_determinism(models: dict[str, Path]) -> None:
    """Neither stage sets deterministic algorithms (cuBLAS would want CUBLAS_WORKSPACE_CONFIG):
    the CPU training in ``models`` must not leave them on for the device tests after it."""
    assert models and not torch.are_deterministic_algorithms_enabled()


def test_the_device_model_scores_within_a_point_of_the_cpu_one(
    workdir: Path, models: dict[str, Path]
) -> None:
    accuracy = {}
    for device, model_dir in models.items():
        params = from_mapping(EvaluateParams, {**repo_params()["evaluate"], "device": device}, "evaluate")
        result = evaluate(params, model_dir, workdir / "data" / "ingested")
        assert result.test_count == 3 * TEST_PER_CLASS
        accuracy[device] = result.metrics["test"]["accuracy"]
    assert accuracy["cpu"] >= 0.9 and abs(accuracy[DEVICE] - accuracy["cpu"]) <= 0.01, accuracy


def test_predict_on_the_device_agrees_with_the_cpu(models: dict[str, Path], tmp_path: Path) -> None:
    images, labels = tiny_images(4, seed=11)
    paths = [tmp_path / f"{i}.png" for i in range(len(labels))]
    for path, image in zip(paths, images, strict=True):
        Image.fromarray(image[0]).save(path)
    on_device = predict_paths(paths, models[DEVICE], device=DEVICE)
    on_cpu = predict_paths(paths, models[DEVICE], device="cpu")

    assert on_device["error"].isna().all() and list(on_device["label"]) == list(on_cpu["label"])
    assert (on_device["label"] == [CLASSES[label] for label in labels]).mean() >= 0.9
    np.testing.assert_allclose(on_device["probability"], on_cpu["probability"], rtol=0, atol=0.01)


@pytest.fixture
def flags_kept() -> Iterator[None]:
    """The process-wide flags a test's ``configure`` sets for its device, as they were before."""
    flags = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(flags[0])
    torch.backends.cudnn.benchmark = flags[1]


# The built-in CNN and a ResNet from transformers (tiny: the check is for syncs, not speed).
SYNC_ARCHS = {"convnet": {}, "resnet": {"depths": [1, 1], "hidden_sizes": [8, 16], "embedding_size": 8}}


@contextmanager
def syncs_refused() -> Iterator[None]:
    """Any host-device sync raises inside (CUDA's sync debug mode: ``.item()``, ``.tolist()``, a
    blocking copy, a stream or device synchronize). Elsewhere the block runs unchecked (a dry run)."""
    if DEVICE != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("precision", PRECISIONS.get(DEVICE or "", []))
@pytest.mark.parametrize("placement", ["resident", "streamed"])
@pytest.mark.parametrize("arch", list(SYNC_ARCHS))
def test_an_epochs_steps_never_sync_with_the_host(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flags_kept: None,
    arch: str,
    placement: Placement,
    precision: str,
) -> None:
    """One epoch of each placement, with online augmentation, each precision (fp16: the grad
    scaler and fused AdamW's found-inf), the CNN and a transformers ResNet: every step under the
    sync check, which the CPU suite's stand-in device cannot make (its pinned staging, autocast,
    scaler and fused branches run on CUDA only). The epoch's means are read once, after its last
    step: outside the check."""
    inputs = write_online_inputs(tmp_path)
    params = tiny_params(
        device=DEVICE, precision=precision, model={"arch": arch, "hf": {arch: SYNC_ARCHS[arch]}}
    )
    runtime = configure(params.device, params.precision, params.num_threads)
    spec, shape, stats = params.model, list(inputs.image_shape), ([0.5], [0.25])
    config = new_config(
        arch, inputs.classes, shape, lambda: stats, None, spec.widths, spec.dropout, spec.hf, None
    )
    model = runtime.place(build_model(config))
    rows = place(inputs.real, runtime.device, placement, workers=2)
    feed = Feed(rows, len(inputs.real), inputs.online, workers=2)
    trainer = Trainer(model, params, runtime, World(), train=feed, val=feed, phase="main")
    means = trainer._mean_over_ranks

    def read_back(*totals: object) -> tuple[float, float]:
        if DEVICE == "cuda":
            torch.cuda.set_sync_debug_mode("default")  # the epoch's one read, by design
        return means(*totals)

    monkeypatch.setattr(trainer, "_mean_over_ranks", read_back)
    order = epoch_order(len(feed), params.seed, "main", 1)
    with syncs_refused():
        loss, _ = trainer.train_epoch(order, epoch=1)
    assert loss > 0 and trainer.steps_per_epoch > loader.STAGING_BUFFERS


def delayed_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hold every copy out of host memory (a batch's images, an online batch's draws) back on the
    copy stream for about 10 ms, so the window in which a reader or a draw thread could
    overwrite pinned memory still being copied is wide open."""
    if DEVICE != "cuda":
        return

    def held_back(copy: Callable[..., T]) -> Callable[..., T]:
        def late(hosts: object, device: torch.device, copied: torch.cuda.Event | None = None) -> T:
            with torch.cuda.stream(copy_stream(device)):
                torch.cuda._sleep(10_000_000)  # cycles: about 10 ms, queued on the stream before the copy
            return copy(hosts, device, copied)

        return late

    monkeypatch.setattr(loader, "to_device", held_back(loader.to_device))
    monkeypatch.setattr(online_module, "to_device_all", held_back(online_module.to_device_all))


@pytest.mark.parametrize("online", [False, True], ids=["offline", "online"])
def test_streamed_batches_equal_resident_ones_on_the_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, online: bool
) -> None:
    if online:
        inputs = write_online_inputs(tmp_path)
        reader, record = inputs.real, inputs.online
    else:
        root = write_tiny_dataset(tmp_path / "ds", {"train": 60})
        reader, record = SplitReader.open(Dataset(root), "train"), None
    device = torch.device(DEVICE)
    delayed_copies(monkeypatch)
    batches = {}
    for placement in (Resident(reader, device), Streamed(reader, device, workers=4)):
        feed = Feed(placement, len(reader), record)
        order = epoch_order(len(feed), seed=0, phase="main", epoch=1)
        batches[type(placement)] = list(feed.batches(order, 16, drop_last=False, stream=("main", 1, 0)))
    assert len(batches[Streamed]) == len(batches[Resident]) > loader.STAGING_BUFFERS
    for (streamed, streamed_labels), (resident, resident_labels) in zip(
        batches[Streamed], batches[Resident], strict=True
    ):
        assert streamed.device.type == DEVICE and torch.equal(streamed, resident)
        assert torch.equal(streamed_labels, resident_labels)


@pytest.mark.parametrize("photo", [False, True], ids=["digit-transforms", "photo-transforms"])
@pytest.mark.parametrize("shape", [(9, 1, 8, 8), (4, 3, 224, 160)])
def test_augment_on_the_device_gives_the_cpus_bytes(shape: tuple[int, ...], photo: bool) -> None:
    """Every transform on (the elastic field on its coarse grid at 224 x 160), and with ``photo``
    the crop, RandAugment, colour jitter and flips too (the integer pixel kernels on the device)."""
    section = {**repo_params()["augment"]["transforms"], "drop_values": 0.05}
    for name in ("affine", "elastic", "cutout", *(("crop", "colour") if photo else ())):
        section[name] = {**section[name], "probability": 1.0}
    if photo:
        section["policy"] = {"kind": "randaugment", "ops": 3, "magnitude": 15}
        section["flip"] = {"horizontal": 0.5, "vertical": 0.5}
    spec = from_mapping(Transforms, section, "transforms")
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
    on_device = augment(images.to(DEVICE), spec, 7, "device")
    assert on_device.device.type == DEVICE
    assert torch.equal(on_device.cpu(), augment(images, spec, 7, "device"))


def test_hashed_noise_on_the_device_has_the_cpus_bits() -> None:
    """The noise a GPU draws from its positions (int64 xors, shifts and multiplies, a table
    lookup) is the CPU's to the bit, at a size whose CPU path is chunked and the device's not."""
    keys = torch.from_numpy(np.random.default_rng(1).integers(0, 2**32, (16, 2), dtype=np.int64))
    table = torch.from_numpy(noise_table(6.0))
    shape = (16, 3, 224, 160)
    on_device = hashed_noise(keys.to(DEVICE), table.to(DEVICE), shape)
    assert on_device.device.type == DEVICE
    assert torch.equal(on_device.cpu(), hashed_noise(keys, table, shape))
