"""The device never waits for the host: no blocking host-to-device copy in a training step.

A blocking copy (``non_blocking=False``) waits for everything queued on the device before it, so
one per step leaves the GPU idle while the host reads, draws and copies the next batch. There
is no GPU here: the ``meta`` device stands in (it keeps shapes, not bytes, and refuses ``.item()``
and ``.tolist()``, so a device-to-host sync inside a step fails too), and a counting shim around
``Tensor.to`` and ``Tensor.copy_`` records every copy out of host memory into it.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, repo_params, run
from tiny_training import RECIPE, tiny_params, write_inputs, write_online_inputs

from mlpipeline.modeling.network import ModelConfig, build_model
from mlpipeline.training import loader
from mlpipeline.training.data import Inputs, epoch_order
from mlpipeline.training.device import Runtime
from mlpipeline.training.distributed import World
from mlpipeline.training.loader import Feed, Resident, Streamed
from mlpipeline.training.loop import Trainer
from mlpipeline.training.optim import make_optimizer
from mlpipeline.training.windows import Window

META = torch.device("meta", 0)
SRC_ON_PATH = {
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")]))
}
STEPS = 4


class CopyCounter:
    """Host-to-device copies, blocking or not, as the step that made them."""

    def __init__(self) -> None:
        self.blocking: list[int] = []
        self.non_blocking: list[int] = []
        self.step = 0

    def record(self, source: torch.Tensor, target: torch.device | None, non_blocking: bool) -> None:
        if source.device.type == "cpu" and target is not None and target.type != "cpu":
            (self.non_blocking if non_blocking else self.blocking).append(self.step)


def _target(args: tuple, kwargs: dict) -> torch.device | None:
    for value in (*args, kwargs.get("device")):
        if isinstance(value, torch.device):
            return value
        if isinstance(value, str):
            return torch.device(value)
        if isinstance(value, torch.Tensor):
            return value.device
    return None


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> Iterator[CopyCounter]:
    counter = CopyCounter()
    to, copy_ = torch.Tensor.to, torch.Tensor.copy_

    def counted_to(self: torch.Tensor, *args, **kwargs):
        non_blocking = kwargs.get("non_blocking", any(a is True for a in args[1:2]))
        counter.record(self, _target(args, kwargs), bool(non_blocking))
        return to(self, *args, **kwargs)

    def counted_copy(self: torch.Tensor, source: torch.Tensor, non_blocking: bool = False):
        counter.record(source, self.device, non_blocking)
        return copy_(self, source, non_blocking)

    monkeypatch.setattr(torch.Tensor, "to", counted_to)
    monkeypatch.setattr(torch.Tensor, "copy_", counted_copy)
    yield counter


# The photo recipe (tiny_training.RECIPE, a random window of each image) and, online, every
# photo transform.
PHOTO_TRANSFORMS = {
    "padding": "zeros",
    "crop": {"probability": 1.0, "scale": [0.3, 1.0], "ratio": [0.75, 1.3333]},
    "policy": {"kind": "randaugment", "ops": 2, "magnitude": 9},
    "colour": {"probability": 1.0, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1},
    "flip": {"horizontal": 0.5, "vertical": 0.0},
}


def meta_trainer(
    inputs: Inputs, placement: type, monkeypatch: pytest.MonkeyPatch, recipe: bool = False
) -> Trainer:
    reader = inputs.real
    rows = Resident(reader, META) if placement is Resident else Streamed(reader, META, workers=2)
    params = tiny_params(batch_size=8, **(RECIPE if recipe else {}))
    channels = inputs.image_shape[0]
    config = ModelConfig(
        classes=inputs.classes,
        image_shape=list(inputs.image_shape),
        widths=list(params.model.widths),
        dropout=params.model.dropout,
        mean=[0.5] * channels,
        std=[0.25] * channels,
    )
    runtime = Runtime(device=META, amp_dtype=None, threads=1)
    model = build_model(config).to(META)
    window = Window((6, 7), inputs.image_shape[1:], seed=0, random=True) if recipe else None
    train = Feed(rows, len(reader), inputs.online, window)
    counts = np.bincount(reader.labels, minlength=len(inputs.classes))
    trainer = Trainer(
        model, params, runtime, World(), train=train, val=train, phase="main", class_counts=counts
    )
    # The epoch's means leave the device once, after its last step: not what this test counts.
    monkeypatch.setattr(trainer, "_mean_over_ranks", lambda *_: (0.0, 0.0))
    return trainer


@pytest.mark.parametrize("recipe", [False, True], ids=["plain", "photo-recipe"])
@pytest.mark.parametrize("online", [False, True], ids=["offline", "online"])
@pytest.mark.parametrize("placement", [Resident, Streamed], ids=["resident", "streamed"])
def test_no_blocking_host_to_device_copy_in_a_training_step(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    copies: CopyCounter,
    placement: type,
    online: bool,
    recipe: bool,
) -> None:
    transforms = (
        {"transforms": {**repo_params()["augment"]["transforms"], **PHOTO_TRANSFORMS}} if recipe else {}
    )
    inputs = (
        write_online_inputs(tmp_path, **transforms)
        if online
        else write_inputs(tmp_path, train_per_class=24 if recipe else 12)  # recipe: STEPS of 2 batches
    )
    assert (inputs.online is not None) == online
    trainer = meta_trainer(inputs, placement, monkeypatch, recipe)
    batches = STEPS * trainer.params.accumulate
    order = epoch_order(len(trainer.train), seed=0, phase="main", epoch=1)[: batches * trainer.batch_size]
    copies.blocking.clear()  # placing the model and a resident split: before the epoch, once a run
    copies.non_blocking.clear()

    def next_step() -> None:
        copies.step += 1

    trainer.batches_per_epoch = batches  # the counted ones, as if the epoch ended there
    trainer.train_epoch(order, epoch=1, on_batch=next_step)

    assert copies.step == batches
    assert copies.blocking == [], f"blocking host-to-device copies in batches {copies.blocking}"
    if recipe:
        assert trainer.average is not None and trainer.average.updates == STEPS
    if online or placement is Streamed or recipe:
        assert copies.non_blocking, "the counter saw no copy at all: it no longer sees the loader's"


def test_a_staging_buffer_is_refilled_only_after_its_copy_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CUDA a reader refills a pinned buffer only once the event after the copy out of it has
    passed: an event never recorded passes at once, and the copy in flight reads the next batch's
    rows (the GPU test would see it, and skips here). A stand-in CUDA device, copies and events."""
    copies = 0  # batches copied to the device so far
    made: list[Event] = []
    waited: list[Event] = []

    class Event:
        """``torch.cuda.Event``: how many copies were issued when it was recorded."""

        def __init__(self, blocking: bool = False) -> None:
            self.recorded_after: int | None = None
            made.append(self)

        def record(self) -> None:
            self.recorded_after = copies

        def synchronize(self) -> None:
            waited.append(self)

    def copy(host: torch.Tensor, device: torch.device) -> torch.Tensor:
        nonlocal copies
        copies += host.dim() == 4  # a batch of images, not the epoch's labels
        return host.clone()

    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *shape, pin_memory=False, **kwargs: empty(*shape, **kwargs))
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(loader, "to_device", copy)
    reader = write_inputs(tmp_path, train_per_class=40).real
    rows = np.arange(len(reader))
    batches = list(Streamed(reader, torch.device("cuda"), workers=2).batches(rows, 8, drop_last=True))

    resident = Resident(reader, torch.device("cpu")).batches(rows, 8, drop_last=True)
    assert all(torch.equal(got[0], want[0]) for got, want in zip(batches, resident, strict=True))
    assert [event.recorded_after for event in made] == list(range(1, len(batches) + 1))  # each after its copy
    # batch k's buffer is refilled for batch k + STAGING_BUFFERS, whose reads wait on k's copy
    refilled = made[: len(batches) - loader.STAGING_BUFFERS]
    assert {id(event) for event in waited} == {id(event) for event in refilled}


def test_adamw_is_fused_on_cuda_only_and_the_same_update() -> None:
    """The fused kernel on CUDA (no ``.item()`` in fp16's scaled step); elsewhere the default
    one, so CPU models keep their bytes. Fused runs on the CPU too, which shows it is the same
    update to rounding."""
    params = tiny_params(optimizer="adamw", weight_decay=0.01)
    models = [torch.nn.Linear(5, 3) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    default = make_optimizer(models[0], params)
    assert not default.defaults["fused"] and make_optimizer(models[0], params, META).defaults["fused"] is None
    fused = make_optimizer(models[1], params, torch.device("cuda"))
    assert fused.defaults["fused"] is True
    inputs = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    for model, optimizer in zip(models, (default, fused), strict=True):
        for _ in range(3):
            optimizer.zero_grad()
            model(inputs).square().sum().backward()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_the_gpu_bench_runs_at_a_tiny_size(tmp_path: Path) -> None:
    """``bench/gpu.py`` on the CPU with a tiny model: every row printed (the figures are the
    bench's business, never a test's)."""
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    bench = [sys.executable, str(REPO_ROOT / "bench" / "gpu.py"), "--device", "cpu", "--size", "8"]
    out = run([*bench, "--images", "64", "--batch", "16", "--widths", "4"], tmp_path, env=SRC_ON_PATH).stdout
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["resident"], ["streamed"])]
    assert [row[:2] for row in rows] == [
        ["resident", "no"],
        ["resident", "yes"],
        ["streamed", "no"],
        ["streamed", "yes"],
    ]
    assert all(float(row[-1]) > 0 for row in rows)
