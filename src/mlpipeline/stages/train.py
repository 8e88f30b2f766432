"""Train: augmented training images + real val images -> ``models/`` and training curves.

Reads ``data/augmented`` (split train) and ``data/ingested`` (split val); the
input shape, channels and classes come from their ``dataset.json``, the input
normalization from the training images. Writes ``models/`` (safetensors weights
and a JSON config, the best val epoch's) and dvclive's ``reports/train``.
``train.processes > 1`` re-launches this module under torchrun (DDP).
Interrupted runs resume from ``.cache/checkpoints/<key>/``, removed on success.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlpipeline.core import atomic, stage
from mlpipeline.core.params import load_section
from mlpipeline.core.seeding import seed_everything
from mlpipeline.model import ModelConfig, build_model, channel_stats, save_model
from mlpipeline.training.checkpoint import CHECKPOINT_ROOT, Checkpoints, run_key
from mlpipeline.training.data import TRAIN_SPLIT, VAL_SPLIT, Inputs, open_inputs, place
from mlpipeline.training.device import Runtime, auto_threads, configure
from mlpipeline.training.distributed import World, in_worker, launch, process_group, world_from_env
from mlpipeline.training.loop import Trainer
from mlpipeline.training.params import TrainParams
from mlpipeline.training.reporting import EpochRecord, TrainingLog

TRAIN_DATA = Path("data/augmented")
VAL_DATA = Path("data/ingested")
MODEL_DIR = Path("models")
REPORT_DIR = Path("reports/train")


@dataclass
class Trained:
    trainer: Trainer
    config: ModelConfig
    best: EpochRecord
    runtime: Runtime
    checkpoints: Checkpoints


def train(
    params: TrainParams,
    inputs: Inputs,
    report_dir: Path | None,
    checkpoint_root: Path = CHECKPOINT_ROOT,
    world: World | None = None,
) -> Trained:
    """Train on ``inputs`` (in this process's share when it is one of several ranks).

    Pure of output I/O except the dvclive ``report_dir`` (None: no report) and the
    checkpoints, so tests call it directly.
    """
    world = world or World()
    runtime = configure(params.device, params.num_threads, world.local_rank, world.local_size)
    with process_group(world, runtime.device):
        images, labels = inputs.train.load(TRAIN_SPLIT)
        mean, std = channel_stats(images)
        config = ModelConfig(
            classes=inputs.classes,
            image_shape=list(inputs.image_shape),
            widths=list(params.model.widths),
            dropout=params.model.dropout,
            mean=mean,
            std=std,
        )
        seed_everything(params.seed)  # the same initial weights on every rank
        model = build_model(config).to(runtime.device)
        trainer = Trainer(
            model,
            params,
            runtime,
            world,
            train=place(images, labels, runtime.device),
            val=place(*inputs.val.load(VAL_SPLIT), runtime.device),
        )
        checkpoints = Checkpoints(run_key(params, [inputs.train, inputs.val]), checkpoint_root)
        report = None
        if world.is_main and report_dir is not None:
            report = TrainingLog(report_dir, params.epochs, trainer.steps_per_epoch)
        best = trainer.fit(checkpoints, report)
        trainer.release()
        if report is not None:
            report.finish(best, trainer.progress.epoch)
    return Trained(trainer, config, best, runtime, checkpoints)


def main() -> None:
    params = load_section(TrainParams, "train")
    inputs = open_inputs(TRAIN_DATA, VAL_DATA)  # refuse bad inputs before any launch
    if params.processes > 1 and not in_worker():
        launch(__spec__.name, params.processes, params.num_threads or auto_threads(params.processes))
        return
    world = world_from_env()
    with stage.summary("train") as report:
        result = train(params, inputs, REPORT_DIR, world=world)
        if not world.is_main:
            return
        with atomic.directory(MODEL_DIR) as out:
            save_model(result.trainer.model, result.config, out)
        result.checkpoints.clear()
        trainer, best = result.trainer, result.best
        processes = f" x {world.size} processes" if world.size > 1 else ""
        resumed = f", resumed after epoch {trainer.resumed_after}" if trainer.resumed_after else ""
        report["read"] = (
            f"{len(trainer.train)} train images from {TRAIN_DATA}, {len(trainer.val)} val from {VAL_DATA}"
        )
        report["trained"] = (
            f"{trainer.progress.epoch} epochs on {result.runtime.describe()}{processes}{resumed}, "
            f"best epoch {best.epoch} (val acc {best.val_acc:.4f}, val loss {best.val_loss:.4f})"
        )
        report["wrote"] = f"{MODEL_DIR} and {REPORT_DIR}, removed checkpoints {result.checkpoints.directory}"


if __name__ == "__main__":
    stage.run("train", main)
