"""Training in-process on tiny data: it learns, resumes bit for bit, ignores foreign
checkpoints, stops early, round-trips through save/load, and deals batches like
DistributedSampler."""

from __future__ import annotations

import gc
import hashlib
import json
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT
from tiny_model import tiny_images
from tiny_training import (
    RECIPE,
    killed_then_resumed,
    tiny_params,
    tiny_section,
    write_inputs,
    write_training_set,
)

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import ParamError, from_mapping
from mlpipeline.core.shard_rows import SplitReader
from mlpipeline.core.shards import META_FILE
from mlpipeline.modeling.files import load_model, save_model
from mlpipeline.modeling.inference import predict_probabilities
from mlpipeline.stages import train as train_stage
from mlpipeline.stages.train import train
from mlpipeline.training import device as device_module
from mlpipeline.training.checkpoint import Checkpoints, fingerprint, run_key
from mlpipeline.training.checkpoint_store import LocalStore
from mlpipeline.training.data import REAL_SPLIT, epoch_order, open_inputs
from mlpipeline.training.device import Runtime
from mlpipeline.training.loader import Placement, Rows, place
from mlpipeline.training.optim import epochs_to_run
from mlpipeline.training.params import TrainParams

CPU = torch.device("cpu")
RUNTIME = Runtime(CPU, amp_dtype=None, threads=1)


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.cpu().numpy().tobytes())
    return digest.hexdigest()


def report_files(report_dir: Path) -> dict[str, bytes]:
    """dvclive's deterministic files (everything but the epoch wall times)."""
    return {
        str(p.relative_to(report_dir)): p.read_bytes()
        for p in sorted(report_dir.rglob("*"))
        if p.is_file() and p.name != "epoch_seconds.tsv"
    }


def test_training_learns_and_reports(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path)
    result = train(tiny_params(), inputs, tmp_path / "report", tmp_path / "checkpoints")

    history = result.trainer.progress.history
    assert [r.epoch for r in history] == [1, 2, 3, 4]
    assert result.best.val_acc >= 0.9  # chance is 1/3
    assert history[-1].train_loss < history[0].train_loss
    assert result.config.classes == inputs.classes and result.config.image_shape == [1, 8, 8]
    metrics = (tmp_path / "report" / "metrics.json").read_text()
    assert '"best_epoch"' in metrics and "epoch_seconds" not in metrics
    for name in ("train/loss", "train/acc", "val/loss", "val/acc", "lr", "epoch_seconds"):
        rows = (tmp_path / "report" / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
        assert rows[0] == f"step\t{name.split('/')[-1]}" and len(rows) == 1 + len(history)
    assert Path(result.checkpoints[-1].path).exists()  # the stage's main() removes it after writing the model


@pytest.mark.parametrize(
    ("synthetic_per_class", "crash_phase", "crash_epoch", "resumed_after", "recipe"),
    [
        (0, "train", 4, 3, False),
        (20, "pretrain", 2, 0, False),
        (20, "train", 2, 1, False),
        (0, "train", 2, 1, True),  # the weight average, accumulation, clipping, mixing, class weights
        (20, "pretrain", 2, 0, True),
    ],
)
def test_resumed_run_equals_uninterrupted_bitwise(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    synthetic_per_class: int,
    crash_phase: str,
    crash_epoch: int,
    resumed_after: int,
    recipe: bool,
) -> None:
    recipe_params = {**RECIPE, "batch_size": 8} if recipe else {}
    params = tiny_params(epochs=5, synthetic={"use": "pretrain", "pretrain_epochs": 2}, **recipe_params)
    inputs = write_inputs(tmp_path, synthetic_per_class=synthetic_per_class)
    whole = train(params, inputs, tmp_path / "whole", tmp_path / "ckpt-whole")

    resumed = killed_then_resumed(
        monkeypatch,
        params,
        inputs,
        tmp_path / "resumed",
        tmp_path / "ckpt",
        lambda trainer, epoch: (trainer.phase, epoch) == (crash_phase, crash_epoch),
    )

    assert resumed.trainer.resumed_after == resumed_after
    assert weights_digest(resumed.trainer.model) == weights_digest(whole.trainer.model)
    if recipe:
        assert weights_digest(resumed.trainer.average.module) == weights_digest(whole.trainer.average.module)
    strip = [{**r.to_dict(), "seconds": 0} for r in resumed.trainer.progress.history]
    assert strip == [{**r.to_dict(), "seconds": 0} for r in whole.trainer.progress.history]
    assert report_files(tmp_path / "resumed") == report_files(tmp_path / "whole")


def test_pretraining_on_synthetic_images_comes_first_and_the_curves_run_on(tmp_path: Path) -> None:
    params = tiny_params(epochs=3, synthetic={"use": "pretrain", "pretrain_epochs": 2})
    inputs = write_inputs(tmp_path, train_per_class=40, synthetic_per_class=20)
    result = train(params, inputs, tmp_path / "report", tmp_path / "ckpt")

    assert [(p.name, len(p.originals), p.params.epochs) for p in result.phases] == [
        ("pretrain", 60, 2),
        ("train", 120, 3),
    ]
    assert [r.epoch for r in result.trainer.progress.history] == [1, 2, 3]  # the last phase's
    assert result.best.val_acc >= 0.9
    val_loss = (tmp_path / "report" / "plots" / "metrics" / "val" / "loss.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in val_loss[1:]] == ["1", "2", "3", "4", "5"]
    summary = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert summary["best_epoch"] == 2 + result.best.epoch  # counted as the curves count
    assert len({c.key for c in result.checkpoints}) == 2  # one per phase


def test_a_phase_releases_its_training_data_before_the_next_is_placed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU the next phase's images must not join the previous phase's on the device (the
    peak would hold both, and the free-memory check would count the old ones)."""
    placed: list[weakref.ref] = []
    alive_when_placed: list[list[bool]] = []

    def tracking_place(reader: SplitReader, device: torch.device, placement: Placement, workers: int) -> Rows:
        gc.collect()
        alive_when_placed.append([ref() is not None for ref in placed])
        rows = place(reader, device, placement, workers)
        placed.append(weakref.ref(rows))
        return rows

    monkeypatch.setattr(train_stage, "place", tracking_place)
    params = tiny_params(epochs=1, synthetic={"use": "pretrain", "pretrain_epochs": 1})
    train(params, write_inputs(tmp_path, synthetic_per_class=20), None, tmp_path / "ckpt")
    assert alive_when_placed == [[], [True], [True, False]]  # val (kept), pretrain, then train


def test_mix_trains_once_on_real_and_synthetic_images(tmp_path: Path) -> None:
    params = tiny_params(epochs=2, synthetic={"use": "mix", "pretrain_epochs": 2})
    result = train(params, write_inputs(tmp_path, synthetic_per_class=20), None, tmp_path / "ckpt")
    assert [(p.name, len(p.originals)) for p in result.phases] == [("train", 180)]


def test_pretraining_without_real_images_is_refused(tmp_path: Path) -> None:
    write_inputs(tmp_path)
    write_training_set(tmp_path / "synthetic-only", None, tiny_images(10, seed=8))
    inputs = open_inputs(tmp_path / "synthetic-only", tmp_path / "data" / "ingested")
    with pytest.raises(
        PipelineError, match=r"synthetic-only: no real training images .*train\.synthetic\.use: mix"
    ):
        train(tiny_params(), inputs, None, tmp_path / "ckpt")
    mixed = train(
        tiny_params(synthetic={"use": "mix", "pretrain_epochs": 1}), inputs, None, tmp_path / "ckpt"
    )
    assert [(p.name, len(p.originals)) for p in mixed.phases] == [("train", 30)]


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "constant"])
def test_optimizers_and_schedules(tmp_path: Path, optimizer: str, schedule: str) -> None:
    params = tiny_params(optimizer=optimizer, schedule=schedule, epochs=3, lr=0.05)
    result = train(params, write_inputs(tmp_path), None, tmp_path / "ckpt")
    rates = [record.lr for record in result.trainer.progress.history]
    if schedule == "constant":
        assert rates == [0.05] * 3
    else:  # both anneal towards zero by the last step
        assert rates[-1] < 0.001 < max(rates) <= 0.05
    assert result.best.val_acc > 0.6  # chance is 1/3


def test_min_steps_adds_epochs_on_small_training_sets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inputs = write_inputs(tmp_path)  # 120 images: 7 steps of 16 per epoch
    with caplog.at_level("INFO", logger="train"):
        result = train(tiny_params(epochs=2, min_steps=30), inputs, tmp_path / "report", tmp_path / "ckpt")
    assert result.trainer.epochs == 5 and len(result.trainer.progress.history) == 5
    said = (
        "train: 5 epochs of 7 optimizer steps: train.epochs 2 raised by train.min_steps 30 "
        "(2 epochs would be 14 steps)"
    )
    assert caplog.messages[0] == said  # before the first epoch, where whoever watches sees why
    assert result.trainer.schedule.last_epoch == 5 * 7  # the schedule spans the longer run
    assert epochs_to_run(tiny_params(epochs=6, min_steps=30), steps_per_epoch=7) == 6


def test_checkpoint_of_other_params_or_data_is_ignored(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path)
    first = train(tiny_params(epochs=2), inputs, None, tmp_path / "ckpt")
    assert Path(first.checkpoints[-1].path).exists()

    other = train(tiny_params(epochs=2, lr=0.02), inputs, None, tmp_path / "ckpt")
    assert other.trainer.resumed_after == 0
    assert other.checkpoints[-1].key != first.checkpoints[-1].key

    again = train(tiny_params(epochs=2), inputs, None, tmp_path / "ckpt")
    assert again.trainer.resumed_after == 2  # same params and data: picked up


def test_checkpoint_of_another_precision_or_thread_count_is_not_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``precision: auto`` and ``num_threads: 0`` resolve per machine: a float32 checkpoint must not
    be resumed by a bf16 run (nor the other way round: not bitwise equal), nor by more threads."""
    inputs = write_inputs(tmp_path)
    params = tiny_params(epochs=2, precision="auto", num_threads=0)
    monkeypatch.setattr(device_module, "available_cores", lambda: 1)
    first = train(params, inputs, None, tmp_path / "ckpt")
    assert (first.runtime.amp_dtype, first.runtime.threads) == (None, 1)

    auto = device_module.mixed_precision
    monkeypatch.setattr(device_module, "mixed_precision", lambda device, precision: torch.bfloat16)
    bf16 = train(params, inputs, None, tmp_path / "ckpt")  # as where auto picks bf16
    assert bf16.runtime.amp_dtype == torch.bfloat16 and bf16.trainer.resumed_after == 0
    monkeypatch.setattr(device_module, "mixed_precision", auto)
    monkeypatch.setattr(device_module, "available_cores", lambda: 2)
    assert train(params, inputs, None, tmp_path / "ckpt").trainer.resumed_after == 0

    monkeypatch.setattr(device_module, "available_cores", lambda: 1)
    again = train(params, inputs, None, tmp_path / "ckpt")
    assert again.trainer.resumed_after == 2  # the first run's own checkpoint: picked up


def test_run_key_covers_params_and_dataset_json_without_reading_shards(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path)
    params = tiny_params()
    key = run_key(params, RUNTIME, inputs.datasets, "train")
    assert key != run_key(tiny_params(seed=1), RUNTIME, inputs.datasets, "train")
    assert key != run_key(params, RUNTIME, inputs.datasets, "pretrain")

    images, labels = inputs.train.load(REAL_SPLIT)
    labels[0] = (labels[0] + 1) % 3  # dataset.json's class counts change
    write_training_set(tmp_path / "relabelled", (images, labels))
    relabelled = open_inputs(tmp_path / "relabelled", tmp_path / "data" / "ingested")
    assert key != run_key(params, RUNTIME, relabelled.datasets, "train")

    for shard in (tmp_path / "data").rglob("*.safetensors"):
        shard.unlink()  # gigabytes at scale: the key must not read them again
    assert key == run_key(tiny_params(), RUNTIME, inputs.datasets, "train")


# How docs/training.md names each kind of part of the checkpoint key.
KEY_PARTS_IN_THE_DOCS = {
    "phase": "the phase's name",
    "train": "each `train.*` param",
    "device and precision": "the device type and precision",
    "threads": "the thread count",
    "torch": "the torch version",
    "dataset.json": "the inputs' `dataset.json` files",
    "pretrained weights": "the pretrained weights' bytes",
    "source": "every source file of the package",
}


def part_kind(name: str) -> str:
    if name.startswith("train."):
        return "train"
    if name.endswith("dataset.json"):
        return "dataset.json"
    return "source" if name.startswith("mlpipeline/") else name


def test_the_docs_state_every_part_of_the_checkpoint_key(tmp_path: Path) -> None:
    """docs/training.md once left out the package's source files and the torch version."""
    inputs = write_inputs(tmp_path)
    parts = fingerprint(tiny_params(), RUNTIME, inputs.datasets, "a weights hash")
    kinds = {part_kind(name) for name in parts} | {"phase"}  # run_key adds the phase
    assert kinds == set(KEY_PARTS_IN_THE_DOCS)
    text = " ".join((REPO_ROOT / "docs" / "training.md").read_text().split())  # lines wrap anywhere
    assert [
        KEY_PARTS_IN_THE_DOCS[kind] for kind in sorted(kinds) if KEY_PARTS_IN_THE_DOCS[kind] not in text
    ] == []


def test_run_key_covers_the_shards_bytes_through_their_fingerprints(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path)
    images, labels = inputs.train.load(REAL_SPLIT)
    images[0, 0, 0, 0] ^= 1  # one bit of one pixel
    write_training_set(tmp_path / "changed", (images, labels))
    changed = open_inputs(tmp_path / "changed", tmp_path / "data" / "ingested")
    if (changed.train.root / META_FILE).read_bytes() == (inputs.train.root / META_FILE).read_bytes():
        pytest.skip(
            "dataset.json records no shard fingerprints yet (DatasetWriter gets them on the scale branch)"
        )
    params = tiny_params()
    assert run_key(params, RUNTIME, inputs.datasets, "train") != run_key(
        params, RUNTIME, changed.datasets, "train"
    )


def test_unreadable_checkpoint_is_ignored(tmp_path: Path) -> None:
    checkpoints = Checkpoints("somekey", LocalStore(tmp_path))
    Path(checkpoints.path).parent.mkdir(parents=True)
    Path(checkpoints.path).write_bytes(b"truncated by a crash")
    assert checkpoints.load() is None


def test_early_stopping_keeps_the_best_epoch(tmp_path: Path) -> None:
    params = tiny_params(epochs=50, lr=0.05, early_stopping={"monitor": "val_acc", "patience": 2})
    result = train(params, write_inputs(tmp_path), None, tmp_path / "ckpt")

    history = result.trainer.progress.history
    assert len(history) < 50
    best = max(history, key=lambda r: r.val_acc)  # the first epoch reaching the top accuracy
    assert result.best == best and len(history) == best.epoch + 2


def test_monitor_last_keeps_the_final_epoch(tmp_path: Path) -> None:
    params = tiny_params(epochs=4, early_stopping={"monitor": "last", "patience": None})
    result = train(params, write_inputs(tmp_path), tmp_path / "report", tmp_path / "ckpt")
    assert result.best == result.trainer.progress.history[-1] and result.best.epoch == 4
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["best_epoch"] == 4


def test_model_round_trip_gives_the_same_predictions(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path)
    result = train(tiny_params(), inputs, None, tmp_path / "ckpt")
    save_model(result.trainer.model, result.config, tmp_path / "models")
    loaded, config = load_model(tmp_path / "models", CPU)

    images, _ = inputs.val.load("val")
    expected = predict_probabilities(result.trainer.model, images, CPU, batch_size=7)
    probabilities = predict_probabilities(loaded, images, CPU, batch_size=7)
    # Training ran channels-last, the loaded model runs in the default layout: the same weights
    # sum in another order, so probabilities agree to float32 rounding, labels exactly.
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), expected.argmax(axis=1))
    assert config == result.config


def test_mismatched_inputs_are_refused_by_file(tmp_path: Path) -> None:
    images, labels = write_inputs(tmp_path).train.load(REAL_SPLIT)
    write_training_set(tmp_path / "other", (images, labels), classes=["a", "b", "c"], shape=(1, 8, 8))
    with pytest.raises(
        PipelineError, match=r"other/dataset.json and .*ingested/dataset.json disagree on the classes"
    ):
        open_inputs(tmp_path / "other", tmp_path / "data" / "ingested")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"optimizer": "adam"}, r"train\.optimizer must be one of 'adamw', 'sgd', got 'adam'"),
        ({"schedule": "step"}, r"train\.schedule must be one of"),
        ({"epochs": 0}, r"train\.epochs must be >= 1, got 0"),
        ({"label_smoothing": 1.0}, r"train\.label_smoothing must be >= 0 and < 1"),
        (
            {"model": {"widths": [], "dropout": 0.1}},
            r"train\.model\.widths must have 1 to 8 item\(s\), got 0",
        ),
        ({"early_stopping": {"monitor": "loss", "patience": 3}}, r"train\.early_stopping\.monitor must be"),
        (
            {"early_stopping": {"monitor": "last", "patience": 3}},
            r"train\.early_stopping patience needs monitor",
        ),
        ({"batch_size": 15, "processes": 2}, r"train batch_size \(15\) .* divisible by processes \(2\)"),
        ({"processes": 2, "device": "mps", "batch_size": 16}, r"train processes > 1 needs cuda or cpu"),
        ({"lr": "fast"}, r"train\.lr must be a number"),
    ],
)
def test_bad_params_name_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(ParamError, match=message):
        from_mapping(TrainParams, tiny_section(**overrides), "train")


def test_epoch_order_deals_like_distributed_sampler() -> None:
    whole = epoch_order(10, seed=3, phase="train", epoch=1)
    assert sorted(whole) == list(range(10))
    shares = [epoch_order(10, seed=3, phase="train", epoch=1, rank=r, world_size=3) for r in range(3)]
    assert [len(s) for s in shares] == [4, 4, 4]  # padded from 10 to 12 with the head of the order
    dealt = np.concatenate([s[:, None] for s in shares], axis=1).ravel()
    np.testing.assert_array_equal(dealt, np.concatenate([whole, whole[:2]]))
    np.testing.assert_array_equal(epoch_order(10, 3, "train", 1), whole)  # a pure function: resumable
    assert not np.array_equal(epoch_order(10, 3, "train", 2), whole)
    assert not np.array_equal(epoch_order(10, 3, "pretrain", 1), whole)


@pytest.mark.parametrize(
    ("precision", "dtype", "scaled"), [("bf16", torch.bfloat16, False), ("fp16", torch.float16, True)]
)
def test_mixed_precision_trains_end_to_end(
    tmp_path: Path, precision: str, dtype: torch.dtype, scaled: bool
) -> None:
    """The GPU's two autocast paths, run on the CPU (whose autocast takes both dtypes): bf16 alone,
    fp16 with a grad scaler whose state the checkpoint carries."""
    params = tiny_params(precision=precision, epochs=3)
    result = train(params, write_inputs(tmp_path), None, tmp_path / "ckpt")

    assert (
        result.runtime.amp_dtype == dtype
        and result.runtime.describe() == f"cpu, {precision} autocast, 1 thread"
    )
    assert (result.trainer.scaler is not None) == scaled
    assert result.best.val_acc >= 0.9  # chance is 1/3
    saved = result.checkpoints[-1].load()
    assert saved is not None and bool(saved["scaler"]) == scaled


def test_validation_runs_in_float32_under_mixed_precision(tmp_path: Path) -> None:
    """Val figures (curves, early stopping) must be those evaluate and predict will see: fp32."""
    last = {"monitor": "last", "patience": None}
    inputs = write_inputs(tmp_path)
    result = train(tiny_params(precision="bf16", early_stopping=last), inputs, None, tmp_path / "ckpt")

    images, labels = (torch.from_numpy(array) for array in inputs.val.load("val"))
    with torch.inference_mode():
        logits = result.trainer.model.eval()(images)
    assert result.best.val_loss == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5, abs=0)
    assert result.best.val_acc == (logits.argmax(dim=1) == labels).float().mean().item()
