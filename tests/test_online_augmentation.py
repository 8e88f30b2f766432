"""Online augmentation: augment writes a record instead of the copies, training makes them batch
by batch with the same kernel, fresh each epoch, and a resumed run stays bitwise equal."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import repo_params
from PIL import Image
from test_train import weights_digest
from tiny_model import tiny_images, write_tiny_dataset
from tiny_training import killed_then_resumed, tiny_params, write_online_inputs

from mlpipeline.augmentation import online as online_module
from mlpipeline.augmentation.online import OnlineAugmentation, read_online
from mlpipeline.augmentation.transforms import Transforms, augment
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import from_mapping
from mlpipeline.core.shards import Dataset
from mlpipeline.modeling.network import ModelConfig, build_model
from mlpipeline.stages.train import train
from mlpipeline.training.data import Inputs, epoch_order, open_inputs
from mlpipeline.training.device import Runtime
from mlpipeline.training.distributed import World
from mlpipeline.training.loader import Feed, Resident
from mlpipeline.training.loop import Trainer

CPU = torch.device("cpu")
RUNTIME = Runtime(CPU, amp_dtype=None, threads=1)


def tiny_config(inputs: Inputs) -> ModelConfig:
    shape = list(inputs.image_shape)
    return ModelConfig(inputs.classes, shape, widths=[8, 16], dropout=0.0, mean=[0.5], std=[0.25])


def test_online_mode_writes_the_record_and_the_synthetic_originals_not_the_copies(tmp_path: Path) -> None:
    inputs = write_online_inputs(tmp_path, synthetic_per_class=5, copies=3, keep_originals=False)
    augmented = Dataset(tmp_path / "data" / "augmented")

    assert augmented.count("real") == 0  # the real originals stay in data/ingested
    np.testing.assert_array_equal(augmented.load("synthetic")[0], tiny_images(5, seed=8)[0])
    record = read_online(augmented)
    assert record is not None and (record.copies, record.keep_originals, record.views) == (3, False, 3)
    assert inputs.online == record and len(inputs.real) == 120 and len(inputs.synthetic) == 15
    assert {layout.path.parent.name for layout in inputs.real.layouts} == {"ingested"}
    sources = augmented.info.attributes["sources"]
    assert sources["real"] == {"images": 120, "originals": 0, "augmented": 360}
    preview = Image.open(io.BytesIO((tmp_path / "samples.png").read_bytes()))
    assert preview.format == "PNG"
    assert read_online(Dataset(tmp_path / "data" / "ingested")) is None  # offline datasets have none


def test_copies_are_made_per_batch_with_the_augment_kernel_fresh_each_epoch(tmp_path: Path) -> None:
    inputs = write_online_inputs(tmp_path)
    online = inputs.online
    assert online is not None and online.views == 3
    originals, _ = inputs.val.load("train")
    feed = Feed(Resident(inputs.real, CPU), len(inputs.real), online)
    order = np.array([5, 120 + 5, 240 + 5, 7, 240 + 7])  # original 5 as itself and both copies

    def batch(*stream: str | int) -> torch.Tensor:
        (images, labels), *_ = feed.batches(order, 8, drop_last=False, stream=stream)
        np.testing.assert_array_equal(labels.numpy(), inputs.real.labels[order % 120])
        return images

    images = batch("train", 1, 0)
    np.testing.assert_array_equal(images[0].numpy(), originals[5])  # copy 0 is the original
    copies = augment(
        torch.from_numpy(originals[[5, 5, 7]]), online.transforms, online.seed, "online", "train", 1, 0, 0
    )
    np.testing.assert_array_equal(images[[1, 2, 4]].numpy(), copies.numpy())
    assert not torch.equal(images[1], images[2])  # two copies of one image differ
    assert torch.equal(batch("train", 1, 0), images)  # named draws: the same again
    assert not torch.equal(batch("train", 2, 0)[1:], images[1:])  # the next epoch: fresh copies


def test_copy_numbers_count_from_one_without_originals() -> None:
    record = OnlineAugmentation(transforms=None, seed=0, copies=2, keep_originals=False)  # type: ignore[arg-type]
    np.testing.assert_array_equal(record.copy_numbers(np.array([0, 9, 10, 19]), originals=10), [1, 1, 2, 2])


def test_draws_bound_for_cuda_are_pinned_where_they_are_drawn(monkeypatch: pytest.MonkeyPatch) -> None:
    """``draw_copies`` runs on training's draw threads: it must stage every tensor of a batch's
    draws there (pinned), or each step's copy pins them on the training thread, a host copy the
    device waits for (the same bytes: only this sees it). A stand-in CUDA device."""
    pinned: list[torch.Tensor] = []

    def pin_memory(tensor: torch.Tensor) -> torch.Tensor:
        staged = tensor.clone()
        pinned.append(staged)
        return staged

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    transforms = {**repo_params()["augment"]["transforms"], "drop_values": 0.1}
    online = OnlineAugmentation(from_mapping(Transforms, transforms, "transforms"), 0, 2, True)
    made = online.draw_copies(np.array([0, 1, 2, 1]), (1, 8, 8), torch.device("cuda"), "online", 1)

    assert made is not None
    draws = made.draws
    tensors = [made.rows, *(draws.taps or ()), *(draws.noise or ()), draws.erase]
    assert all(tensor is not None for tensor in tensors)  # every kind of draw is here
    assert all(any(tensor is staged for staged in pinned) for tensor in tensors)


@pytest.mark.parametrize(("crash_phase", "crash_epoch"), [("pretrain", 2), ("train", 2)])
def test_online_resumed_run_equals_uninterrupted_bitwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_phase: str, crash_epoch: int
) -> None:
    params = tiny_params(epochs=3, synthetic={"use": "pretrain", "pretrain_epochs": 2})
    inputs = write_online_inputs(tmp_path, synthetic_per_class=10)
    whole = train(params, inputs, None, tmp_path / "ckpt-whole")

    resumed = killed_then_resumed(
        monkeypatch,
        params,
        inputs,
        None,
        tmp_path / "ckpt",
        lambda trainer, epoch: (trainer.phase, epoch) == (crash_phase, crash_epoch),
    )

    assert resumed.trainer.resumed_after == (crash_epoch - 1 if crash_phase == "train" else 0)
    assert weights_digest(resumed.trainer.model) == weights_digest(whole.trainer.model)
    assert [len(p.originals) for p in whole.phases] == [30, 120]
    assert whole.trainer.steps_per_epoch == 3 * 120 // 16  # an epoch sees every view
    assert whole.best.val_acc >= 0.9


def test_a_record_made_from_other_real_images_is_refused(tmp_path: Path) -> None:
    write_online_inputs(tmp_path)
    write_tiny_dataset(tmp_path / "other", {"train": 41, "val": 10, "test": 4})
    with pytest.raises(
        PipelineError, match=r"augmented/dataset.json: made from 120 real train .* has 123 \(rerun augment\)"
    ):
        open_inputs(tmp_path / "data" / "augmented", tmp_path / "other")


class RankWithoutGroup(World):
    """One rank of a multi-process world, run alone: its collectives stay local, so a test can
    run rank 1's epoch in this process."""

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def sync_buffers(self, model: torch.nn.Module) -> None:
        pass

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        return model


def test_each_rank_draws_its_own_copies_of_the_rows_it_is_dealt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contract (augmentation.online): a copy's draw is named by (phase, epoch, rank, step), so
    two ranks never draw alike; what is shared with one process is which views an epoch shows
    (every original as each copy number once, dealt out among the ranks), not the pixels."""
    inputs = write_online_inputs(tmp_path, copies=2, keep_originals=False)
    online = inputs.online
    assert online is not None
    drawn: dict[int, list[tuple[tuple, torch.Tensor, torch.Tensor]]] = {0: [], 1: []}
    rank = 0

    @dataclass(frozen=True)
    class RecordedCopies(online_module.BatchCopies):
        """A batch's copies that remember the stream they were drawn from and record what they do."""

        stream: tuple[str | int, ...] = ()

        def apply(self, images: torch.Tensor) -> torch.Tensor:
            originals = images[self.rows].clone()
            out = super().apply(images)
            drawn[rank].append((self.stream, originals, out[self.rows].clone()))
            return out

    draw_copies = online_module.OnlineAugmentation.draw_copies

    def recording(self, copies, image_shape, device, *stream: str | int):
        made = draw_copies(self, copies, image_shape, device, *stream)
        return None if made is None else RecordedCopies(made.rows, made.draws, stream)

    monkeypatch.setattr(online_module.OnlineAugmentation, "draw_copies", recording)
    params = tiny_params()
    for rank in (0, 1):
        torch.manual_seed(0)
        world = RankWithoutGroup(rank=rank, size=2)
        trainer = Trainer(
            build_model(tiny_config(inputs)),
            params,
            RUNTIME,
            world,
            train=Feed(Resident(inputs.real, CPU), len(inputs.real), online),
            val=Feed(Resident(inputs.real, CPU), len(inputs.real)),
            phase="train",
        )
        trainer.train_epoch(epoch_order(len(trainer.train), params.seed, "train", 1, rank, 2), epoch=1)

    streams = {r: [stream for stream, _, _ in calls] for r, calls in drawn.items()}
    assert streams[0] and len(streams[0]) == len(streams[1])
    assert not set(streams[0]) & set(streams[1])  # no draw of rank 1 repeats one of rank 0
    for r, calls in drawn.items():
        for stream, originals, copies in calls:
            assert stream[:4] == ("online", "train", 1, r)
            expected = augment(originals, online.transforms, online.seed, *stream)
            assert torch.equal(copies, expected)

    def views(rank: int, size: int) -> list[tuple[int, int]]:
        order = epoch_order(len(inputs.real) * online.views, params.seed, "train", 1, rank, size)
        return list(zip(order % len(inputs.real), online.copy_numbers(order, len(inputs.real)), strict=True))

    assert sorted(views(0, 2) + views(1, 2)) == sorted(views(0, 1))
