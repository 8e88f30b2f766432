"""The photo recipe's training options: the weight average (EMA), gradient accumulation and
clipping, mixup and CutMix with soft targets, class weights, macro-F1 model selection and TF32.
With all of them on, a resumed run equals an uninterrupted one bit for bit on CPU (test_train)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from test_train import weights_digest
from tiny_training import tiny_params, write_inputs

from mlpipeline.stages.train import train
from mlpipeline.training.data import epoch_order
from mlpipeline.training.device import Runtime
from mlpipeline.training.distributed import World
from mlpipeline.training.ema import WeightAverage
from mlpipeline.training.loader import Feed, Resident
from mlpipeline.training.loop import Trainer
from mlpipeline.training.losses import class_weights, smoothed_loss
from mlpipeline.training.mixing import SHARE_ONE, Mix, draw_mix


def test_the_weight_average_is_validated_and_kept(tmp_path) -> None:
    params = tiny_params(epochs=3, ema_decay=0.8, early_stopping={"monitor": "last", "patience": None})
    result = train(params, write_inputs(tmp_path), None, tmp_path / "ckpt")
    trainer = result.trainer
    assert trainer.average is not None and trainer.average.updates == 3 * trainer.steps_per_epoch
    assert weights_digest(trainer.model) == weights_digest(trainer.average.module)  # kept: the average
    loss, accuracy, _ = trainer.evaluate(trainer.val)
    assert (loss, accuracy) == (result.best.val_loss, result.best.val_acc)


def test_the_average_warms_up_then_moves_by_one_minus_decay() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.99)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].num_batches_tracked.fill_(7)
    average.update()  # t = 1: decay min(0.99, 2 / 11)
    torch.testing.assert_close(average.module[0].weight, start + (1 - 2 / 11))
    assert int(average.module[1].num_batches_tracked) == 7  # integers are copied
    for _ in range(1000):
        average.update()
    torch.testing.assert_close(average.module[0].weight, start + 1.0)


class PixelsLinear(torch.nn.Module):
    """A linear map of the pixels scaled to [0, 1]: no BatchNorm, no dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images.flatten(1).float() / 255)


def linear_trainer(tmp_path, **overrides) -> Trainer:
    """A BatchNorm-free model (a linear map of the pixels), so batches of 8 accumulated twice
    are, in exact arithmetic, one batch of 16."""
    inputs = write_inputs(tmp_path)
    params = tiny_params(
        optimizer="sgd", schedule="constant", label_smoothing=0.0, weight_decay=0.0, **overrides
    )
    torch.manual_seed(0)
    model = PixelsLinear()
    runtime = Runtime(torch.device("cpu"), None, 1)
    feed = Feed(Resident(inputs.real, runtime.device), len(inputs.real))
    return Trainer(model, params, runtime, World(), feed, feed, phase="train")


def test_accumulated_batches_step_as_one_batch_of_their_total(tmp_path) -> None:
    accumulated = linear_trainer(tmp_path / "a", batch_size=8, accumulate=2)
    whole = linear_trainer(tmp_path / "b", batch_size=16, accumulate=1)
    assert (accumulated.steps_per_epoch, accumulated.batches_per_epoch) == (
        whole.steps_per_epoch,
        2 * whole.steps_per_epoch,
    )
    assert accumulated.epochs == whole.epochs  # the schedule counts optimizer steps
    order = epoch_order(len(whole.train), 0, "train", 1)
    accumulated.train_epoch(order, 1)
    whole.train_epoch(order, 1)
    for mine, theirs in zip(accumulated.model.parameters(), whole.model.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_gradients_are_clipped_to_the_norm(tmp_path) -> None:
    trainer = linear_trainer(tmp_path, clip_grad_norm=0.01, lr=1.0)
    norms = []

    def record(*_) -> None:
        grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters()])
        norms.append(float(torch.linalg.vector_norm(grads)))

    trainer.optimizer.register_step_pre_hook(record)
    trainer.train_epoch(epoch_order(len(trainer.train), 0, "train", 1), 1)
    assert len(norms) == trainer.steps_per_epoch and max(norms) <= 0.01 * (1 + 1e-4)


def soft_targets(labels: torch.Tensor, classes: int, smoothing: float) -> torch.Tensor:
    one_hot = F.one_hot(labels, classes).double()
    return one_hot * (1 - smoothing) + smoothing / classes


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_a_mixed_loss_is_the_cross_entropy_against_mixed_smoothed_targets(smoothing: float) -> None:
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float()
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    mix = Mix(lam=0.7, box=None)
    loss, nll = mix.loss(logits, labels, smoothing, None)
    targets = 0.7 * soft_targets(labels, 4, smoothing) + 0.3 * soft_targets(labels.flip(0), 4, smoothing)
    assert torch.allclose(targets.sum(dim=1), torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets.float()), rtol=1e-5, atol=1e-6)
    plain = 0.7 * F.cross_entropy(logits, labels, reduction="sum") + 0.3 * F.cross_entropy(
        logits, labels.flip(0), reduction="sum"
    )
    torch.testing.assert_close(nll, plain)


def test_mixup_blends_the_batch_with_itself_reversed_in_integers() -> None:
    images = torch.randint(
        0, 256, (4, 3, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    mix = Mix(lam=0.25, box=None)
    mixed = mix.images(images).to(torch.int64)
    exact = (
        images.to(torch.int64) * 1024 + images.flip(0).to(torch.int64) * 3072 + SHARE_ONE // 2
    ) // SHARE_ONE
    assert torch.equal(mixed, exact)


def test_cutmix_pastes_the_partners_box_and_the_share_is_the_area_left() -> None:
    size = (20, 16)
    mixing = tiny_params(
        mixing={"mixup_alpha": 0.0, "cutmix_alpha": 1.0, "probability": 1.0, "switch_probability": 0.5}
    ).mixing
    images = torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 1, *size).contiguous()
    for step in range(20):
        mix = draw_mix(mixing, 0, 4, size, "train", 1, 0, step)
        assert mix is not None and mix.box is not None
        top, bottom, left, right = mix.box
        mixed = mix.images(images)
        from_partner = (mixed != images).all(dim=1)
        assert int(from_partner[0].sum()) == (bottom - top) * (right - left)
        assert mix.lam == pytest.approx(1 - (bottom - top) * (right - left) / (size[0] * size[1]))


def test_mix_draws_are_named_by_the_batch_and_skip_by_probability() -> None:
    mixing = tiny_params(
        mixing={"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "probability": 0.5, "switch_probability": 0.5}
    ).mixing
    mixes = [draw_mix(mixing, 0, 8, (8, 8), "train", 1, 0, step) for step in range(200)]
    assert mixes == [draw_mix(mixing, 0, 8, (8, 8), "train", 1, 0, step) for step in range(200)]
    used = [mix for mix in mixes if mix is not None]
    assert 70 < len(used) < 130 and 20 < sum(mix.box is not None for mix in used) < len(used) - 20
    assert all(round(mix.lam * SHARE_ONE) == mix.lam * SHARE_ONE for mix in used if mix.box is None)
    assert draw_mix(mixing, 0, 1, (8, 8), "train", 1, 0, 0) is None  # one image cannot be paired


def test_balanced_class_weights_make_every_class_weigh_alike() -> None:
    weights = class_weights("balanced", np.array([30, 10, 0, 20]))
    np.testing.assert_allclose(weights, [60 / 120, 60 / 40, 0.0, 60 / 80])
    assert class_weights("none", np.array([3, 1])) is None
    logits = torch.randn(8, 4, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 0, 0, 1, 3, 3, 1, 0])
    tensor = torch.tensor(weights, dtype=torch.float32)
    torch.testing.assert_close(
        smoothed_loss(logits, labels, 0.0, tensor)[0], F.cross_entropy(logits, labels, weight=tensor)
    )


def test_validation_reports_macro_f1_and_can_select_the_model_by_it(tmp_path) -> None:
    params = tiny_params(epochs=4, early_stopping={"monitor": "val_macro_f1", "patience": 2})
    result = train(params, write_inputs(tmp_path), None, tmp_path / "ckpt")
    history = result.trainer.progress.history
    assert result.best.val_macro_f1 == max(record.val_macro_f1 for record in history[: result.best.epoch])
    trainer = result.trainer
    images, labels = trainer.val.rows.images, trainer.val.rows.labels
    with torch.inference_mode():
        chosen = trainer.model(images).argmax(dim=1)
    expected = f1_score(labels.numpy(), chosen.numpy(), average="macro", labels=range(3), zero_division=0)
    assert trainer.evaluate(trainer.val)[2] == pytest.approx(expected, abs=1e-6)


def test_tf32_is_for_the_training_steps_on_cuda_only() -> None:
    backends = (torch.backends.cuda.matmul, torch.backends.cudnn)
    for tf32 in (True, False):
        with Runtime(torch.device("cuda"), None, 1, tf32=tf32).training_math():
            assert all(backend.allow_tf32 == tf32 for backend in backends)
        assert not any(backend.allow_tf32 for backend in backends)  # validation: exact float32
    before = [backend.allow_tf32 for backend in backends]
    with Runtime(torch.device("cpu"), None, 1, tf32=True).training_math():
        assert [backend.allow_tf32 for backend in backends] == before


@pytest.mark.slow
def test_a_compiled_run_learns_and_keeps_the_plain_module(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``compile: true`` compiles the training step only (inductor: a C compiler, about a minute
    here); validation and the saved weights are the plain module's, with its own names."""
    compiled = []
    compile_module = torch.compile

    def counted(module, *args, **kwargs):
        compiled.append(module)
        return compile_module(module, *args, **kwargs)

    monkeypatch.setattr(torch, "compile", counted)
    result = train(tiny_params(epochs=2, compile=True), write_inputs(tmp_path), None, tmp_path / "ckpt")
    assert compiled == [result.trainer.model]
    assert result.best.val_acc > 0.8
    assert not any(name.startswith("_orig_mod") for name in result.trainer.model.state_dict())
