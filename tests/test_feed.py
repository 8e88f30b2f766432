"""The device never waits for the host: no blocking host-to-device copy in a training step.

A blocking copy (``non_blocking=False``) waits for everything queued on the device before it, so
one per step leaves the GPU idle while the host reads, draws and copies the next batch. There
is no GPU here: the ``meta`` device stands in (it keeps shapes, not bytes, and refuses ``.item()``
and ``.tolist()``, so a device-to-host sync inside a step fails too), and a counting shim around
``Tensor.to`` and ``Tensor.copy_`` records every copy out of host memory into it, and on which
stream (every copy on the side stream, the compute stream waiting for it). A stand-in CUDA
(``stand_in_cuda``) checks that pinned staging buffers and online draw memory are reused only
once the copy out of them is done; and the ranks on a node divide its reader and draw threads.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, repo_params, run
from stand_in_cuda import StandInCuda
from tiny_training import RECIPE, tiny_params, write_inputs, write_online_inputs

from mlpipeline.augmentation import online as online_module
from mlpipeline.core import device as core_device
from mlpipeline.core.workers import WORKERS_ENV
from mlpipeline.modeling.network import ModelConfig, build_model
from mlpipeline.stages.train import train
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
    """Host-to-device copies, blocking or not, as the step that made them; and, in order, every
    copy with the stream it ran on, every stream's wait on another, every ``record_stream``."""

    def __init__(self) -> None:
        self.blocking: list[int] = []
        self.non_blocking: list[int] = []
        self.step = 0
        self.stream = "default"  # the stand-in device's current stream (``side_stream``)
        self.events: list[tuple[str, ...]] = []

    def record(self, source: torch.Tensor, target: torch.device | None, non_blocking: bool) -> None:
        if source.device.type == "cpu" and target is not None and target.type != "cpu":
            (self.non_blocking if non_blocking else self.blocking).append(self.step)
            self.events.append(("copy", self.stream))


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


class Stream:
    """A stand-in CUDA stream: it logs its waits on another."""

    def __init__(self, name: str, counter: CopyCounter) -> None:
        self.name = name
        self.counter = counter

    def wait_stream(self, other: Stream) -> None:
        self.counter.events.append(("wait", self.name, other.name))


@pytest.fixture
def side_stream(monkeypatch: pytest.MonkeyPatch, copies: CopyCounter) -> CopyCounter:
    """The stand-in device has CUDA's streams: a compute stream and ``to_device``'s side stream
    (and host memory counts as pinned)."""
    compute, side = Stream("compute", copies), Stream("side", copies)

    @contextmanager
    def current(stream: Stream) -> Iterator[None]:
        before, copies.stream = copies.stream, stream.name
        try:
            yield
        finally:
            copies.stream = before

    def record_stream(tensor: torch.Tensor, stream: Stream) -> None:
        copies.events.append(("record_stream", stream.name))

    monkeypatch.setattr(core_device, "copy_stream", lambda device: side if device.type == "meta" else None)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: compute)
    monkeypatch.setattr(torch.cuda, "stream", current)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda tensor: tensor)
    monkeypatch.setattr(torch.Tensor, "record_stream", record_stream, raising=False)
    copies.stream = "compute"
    return copies


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


@pytest.mark.parametrize("online", [False, True], ids=["offline", "online"])
@pytest.mark.parametrize("placement", [Resident, Streamed], ids=["resident", "streamed"])
def test_every_copy_runs_on_the_side_stream_and_compute_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, side_stream: CopyCounter, placement: type, online: bool
) -> None:
    """Each host-to-device copy runs on the side stream (so it overlaps the step before, on the
    compute stream); after each group of copies (a batch's images, or its draws) the compute
    stream waits for the side stream once and marks every copy's memory as used there."""
    inputs = write_online_inputs(tmp_path) if online else write_inputs(tmp_path, train_per_class=12)
    trainer = meta_trainer(inputs, placement, monkeypatch)
    order = epoch_order(len(trainer.train), seed=0, phase="main", epoch=1)[: STEPS * trainer.batch_size]
    side_stream.events.clear()
    trainer.train_epoch(order, epoch=1)

    events, groups = side_stream.events, []
    while events:
        copies = next(at for at, event in enumerate(events) if event[0] != "copy")
        groups.append(copies)
        assert copies and events[:copies] == [("copy", "side")] * copies
        assert events[copies] == ("wait", "compute", "side")
        assert events[copies + 1 : 2 * copies + 1] == [("record_stream", "compute")] * copies
        events = events[2 * copies + 1 :]
    batches_copied = STEPS * (online + (placement is Streamed))  # images if streamed, draws if online
    assert len(groups) == batches_copied + 1  # and the epoch's indices or labels, once


def test_a_staging_buffer_is_refilled_only_after_its_copy_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CUDA a reader refills a pinned buffer only once the event after the copy out of it has
    passed: an event never recorded passes at once, and the copy in flight reads the next batch's
    rows (the GPU test would see it, and skips here). A stand-in CUDA device, copies and events."""
    cuda = StandInCuda(monkeypatch)
    monkeypatch.setattr(loader, "to_device", cuda.copy)
    reader = write_inputs(tmp_path, train_per_class=40).real
    rows = np.arange(len(reader))
    batches = list(Streamed(reader, torch.device("cuda"), workers=2).batches(rows, 8, drop_last=True))

    resident = Resident(reader, torch.device("cpu")).batches(rows, 8, drop_last=True)
    assert all(torch.equal(got[0], want[0]) for got, want in zip(batches, resident, strict=True))
    assert [event.recorded_after for event in cuda.made] == list(
        range(1, len(batches) + 1)
    )  # each after its copy
    # batch k's buffer is refilled for batch k + STAGING_BUFFERS, whose reads wait on k's copy
    refilled = cuda.made[: len(batches) - loader.STAGING_BUFFERS]
    assert {id(event) for event in cuda.waited} == {id(event) for event in refilled}


def test_online_draws_refill_a_slot_only_after_the_copy_out_of_it_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CUDA the draws of the batches in flight are made in ``draw_threads + 1`` sets of pinned
    memory, allocated once an epoch and taken in turn; a draw thread refills a set only once the
    event after the copy out of it has passed. A stand-in CUDA device, copies and events."""
    cuda = StandInCuda(monkeypatch)
    drawn_copies: list = []  # the events after each batch's draws left

    def copy_draws(hosts: list[torch.Tensor], device: torch.device, copied: object = None) -> list:
        if copied is None:  # the CPU reference below
            return hosts
        copied.record()  # type: ignore[attr-defined]
        drawn_copies.append(copied)
        return [host.clone() for host in hosts]

    monkeypatch.setattr(loader, "to_device", cuda.copy)
    monkeypatch.setattr(online_module, "to_device_all", copy_draws)
    inputs = write_online_inputs(tmp_path, copies=2, keep_originals=False)  # copies in every batch
    reader, record = inputs.real, inputs.online
    feed = Feed(Streamed(reader, torch.device("cuda"), workers=2), len(reader), record, workers=2)
    order = epoch_order(len(feed), seed=0, phase="main", epoch=1)
    batches = list(feed.batches(order, 8, drop_last=True, stream=("main", 1, 0)))

    resident = Feed(Resident(reader, torch.device("cpu")), len(reader), record)
    expected = resident.batches(order, 8, drop_last=True, stream=("main", 1, 0))
    assert all(torch.equal(got[0], want[0]) for got, want in zip(batches, expected, strict=True))
    slots = feed.draw_threads + 1
    assert len(drawn_copies) == len(batches) > 2 * slots
    assert all(event.recorded_after is not None for event in cuda.made)
    assert len(cuda.pinned) == loader.STAGING_BUFFERS + slots * 7  # rows, 3 taps, noise keys and table, erase
    # batch k's draw memory is refilled for batch k + slots, whose draw waits on k's copy
    refilled = {id(event) for event in drawn_copies[: len(batches) - slots]}
    assert refilled == {id(event) for event in cuda.waited} & {id(event) for event in drawn_copies}


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
    tiny = ["--warmup", "2", "--steps", "2", "--batch", "16", "--widths", "4"]
    out = run([*bench, *tiny], tmp_path, env=SRC_ON_PATH).stdout
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["resident"], ["streamed"])]
    assert [row[:2] for row in rows] == [
        ["resident", "no"],
        ["resident", "yes"],
        ["streamed", "no"],
        ["streamed", "yes"],
    ]
    assert all(float(row[-1]) > 0 for row in rows)


def test_the_ranks_on_a_node_divide_its_reader_and_draw_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four ranks on a node of ``MLPIPELINE_WORKERS=12``: each starts 3 shard readers and 3 draw
    threads, not 12 (four ranks at 12 each would oversubscribe the node four times)."""
    started: list[tuple[str, int]] = []

    class Pool(loader.ThreadPoolExecutor):
        def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
            started.append((thread_name_prefix, max_workers))
            super().__init__(max_workers, thread_name_prefix=thread_name_prefix)

    monkeypatch.setattr(loader, "ThreadPoolExecutor", Pool)
    monkeypatch.setenv(WORKERS_ENV, "12")
    monkeypatch.setenv(loader.PLACEMENT_ENV, "streamed")
    inputs = write_online_inputs(tmp_path)
    world = World(local_size=4)  # one process standing for one of the node's four ranks
    train(tiny_params(epochs=1, num_threads=0), inputs, None, tmp_path / "ckpt", world)

    assert started and set(started) == {("shard-reader", 3), ("online-draws", 3)}
    assert loader.rank_workers(1) == 12 and loader.rank_workers(24) == 1
