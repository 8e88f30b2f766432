"""Training in-process on tiny data: it learns, resumes bit for bit, ignores foreign
checkpoints, stops early, round-trips through save/load, and deals batches like
DistributedSampler."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_training import tiny_params, tiny_section, write_inputs

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import ParamError, from_mapping
from mlpipeline.core.shards import DatasetWriter
from mlpipeline.inference import predict_probabilities
from mlpipeline.model import load_model, save_model
from mlpipeline.stages.train import train
from mlpipeline.training.checkpoint import Checkpoints, run_key
from mlpipeline.training.data import epoch_order, open_inputs
from mlpipeline.training.loop import Trainer
from mlpipeline.training.params import TrainParams
from mlpipeline.training.reporting import EpochRecord

CPU = torch.device("cpu")


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
    assert result.checkpoints.path.exists()  # the stage's main() removes it after writing the model


def test_resumed_run_equals_uninterrupted_bitwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = tiny_params(epochs=5)
    inputs = write_inputs(tmp_path)
    whole = train(params, inputs, tmp_path / "whole", tmp_path / "ckpt-whole")

    run_epoch = Trainer.run_epoch

    def crash_in_epoch_4(self: Trainer, epoch: int, on_batch=None) -> EpochRecord:
        if epoch == 4:
            raise KeyboardInterrupt  # as if Ctrl-C or a kill arrived during the fourth epoch
        return run_epoch(self, epoch, on_batch)

    monkeypatch.setattr(Trainer, "run_epoch", crash_in_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        train(params, inputs, tmp_path / "resumed", tmp_path / "ckpt")
    monkeypatch.setattr(Trainer, "run_epoch", run_epoch)
    resumed = train(params, inputs, tmp_path / "resumed", tmp_path / "ckpt")

    assert resumed.trainer.resumed_after == 3
    assert weights_digest(resumed.trainer.model) == weights_digest(whole.trainer.model)
    strip = [{**r.to_dict(), "seconds": 0} for r in resumed.trainer.progress.history]
    assert strip == [{**r.to_dict(), "seconds": 0} for r in whole.trainer.progress.history]
    assert report_files(tmp_path / "resumed") == report_files(tmp_path / "whole")


def test_checkpoint_of_other_params_or_data_is_ignored(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path)
    first = train(tiny_params(epochs=2), inputs, None, tmp_path / "ckpt")
    assert first.checkpoints.path.exists()

    other = train(tiny_params(epochs=2, lr=0.02), inputs, None, tmp_path / "ckpt")
    assert other.trainer.resumed_after == 0
    assert other.checkpoints.directory != first.checkpoints.directory

    again = train(tiny_params(epochs=2), inputs, None, tmp_path / "ckpt")
    assert again.trainer.resumed_after == 2  # same params and data: picked up


def test_run_key_covers_params_and_data_bytes(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path)
    params = tiny_params()
    key = run_key(params, [inputs.train, inputs.val])
    assert key == run_key(tiny_params(), [inputs.train, inputs.val])
    assert key != run_key(tiny_params(seed=1), [inputs.train, inputs.val])

    images, labels = inputs.train.load("train")
    images[0, 0, 0, 0] ^= 1  # one bit of one pixel
    with DatasetWriter(tmp_path / "changed", inputs.classes, inputs.image_shape) as writer:
        writer.write("train", images, labels)
    changed = open_inputs(tmp_path / "changed", tmp_path / "data" / "ingested")
    assert key != run_key(params, [changed.train, changed.val])


def test_unreadable_checkpoint_is_ignored(tmp_path: Path) -> None:
    checkpoints = Checkpoints("somekey", tmp_path)
    checkpoints.path.parent.mkdir(parents=True)
    checkpoints.path.write_bytes(b"truncated by a crash")
    assert checkpoints.load() is None


def test_early_stopping_keeps_the_best_epoch(tmp_path: Path) -> None:
    params = tiny_params(epochs=50, lr=0.05, early_stopping={"monitor": "val_acc", "patience": 2})
    result = train(params, write_inputs(tmp_path), None, tmp_path / "ckpt")

    history = result.trainer.progress.history
    assert len(history) < 50
    best = max(history, key=lambda r: r.val_acc)  # the first epoch reaching the top accuracy
    assert result.best == best and len(history) == best.epoch + 2


def test_model_round_trip_gives_the_same_predictions(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path)
    result = train(tiny_params(), inputs, None, tmp_path / "ckpt")
    save_model(result.trainer.model, result.config, tmp_path / "models")
    loaded, config = load_model(tmp_path / "models", CPU)

    images, _ = inputs.val.load("val")
    expected = predict_probabilities(result.trainer.model, images, CPU, batch_size=7)
    np.testing.assert_array_equal(predict_probabilities(loaded, images, CPU, batch_size=7), expected)
    assert config == result.config


def test_mismatched_inputs_are_refused_by_file(tmp_path: Path) -> None:
    write_inputs(tmp_path)
    images, labels = open_inputs(tmp_path / "data/augmented", tmp_path / "data/ingested").train.load("train")
    with DatasetWriter(tmp_path / "other", ["a", "b", "c"], (1, 8, 8)) as writer:
        writer.write("train", images, labels)
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
        ({"model": {"widths": [], "dropout": 0.1}}, r"train\.model\.widths must have 1\.\.8 items"),
        ({"early_stopping": {"monitor": "loss", "patience": 3}}, r"train\.early_stopping\.monitor must be"),
        ({"batch_size": 15, "processes": 2}, r"train batch_size \(15\) .* divisible by processes \(2\)"),
        ({"processes": 2, "device": "mps", "batch_size": 16}, r"train processes > 1 needs cuda or cpu"),
        ({"lr": "fast"}, r"train\.lr must be a number"),
    ],
)
def test_bad_params_name_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(ParamError, match=message):
        from_mapping(TrainParams, tiny_section(**overrides), "train")


def test_epoch_order_deals_like_distributed_sampler() -> None:
    whole = epoch_order(10, seed=3, epoch=1)
    assert sorted(whole) == list(range(10))
    shares = [epoch_order(10, seed=3, epoch=1, rank=r, world_size=3) for r in range(3)]
    assert [len(s) for s in shares] == [4, 4, 4]  # padded from 10 to 12 with the head of the order
    dealt = np.concatenate([s[:, None] for s in shares], axis=1).ravel()
    np.testing.assert_array_equal(dealt, np.concatenate([whole, whole[:2]]))
    np.testing.assert_array_equal(epoch_order(10, 3, 1), whole)  # a pure function: resumable
    assert not np.array_equal(epoch_order(10, 3, 2), whole)
