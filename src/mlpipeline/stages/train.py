"""Train: augmented training images + real val images -> ``models/`` and training curves.

Reads ``data/augmented`` (splits real and synthetic; when augment ran online, its
record and the synthetic originals, the real ones being ``data/ingested``'s train
split) and ``data/ingested`` (split val), batch by batch when they are large (see
``training.loader``); the input shape, channels and classes come from their
``dataset.json``, the input normalization from the images of the last phase (see
``training.phases``: pretraining on the synthetic images, then the real ones). Writes ``models/``
(safetensors weights and a JSON config, of the epoch ``early_stopping.monitor``
keeps) and dvclive's ``reports/train``.
``train.processes > 1`` or ``train.nodes > 1`` re-launches this module under torchrun (DDP; see
``training.distributed``); every rank first proves it holds the same params, code and inputs.
Interrupted runs resume from their checkpoints (one key per phase, after each epoch and within
epochs: ``training.savepoints``; in ``.cache/checkpoints``, a shared folder or an S3 prefix:
``training.checkpoint_store``), removed on success. SIGTERM or SIGUSR1 saves one and ends the
run with exit 250, "run me again" (``training.stopping``). ``train.model.weights`` names a folder
of ``data/weights`` or a release to fine-tune from (``image-classifier@v1.2.0``, fetched through
DVC: ``modeling.finetune``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlpipeline.core import atomic, stage
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import load_section
from mlpipeline.core.paths import AUGMENTED, INGESTED, MODELS, TRAIN_REPORTS, WEIGHTS
from mlpipeline.core.seeding import seed_everything
from mlpipeline.core.shard_rows import SplitReader
from mlpipeline.core.shards import META_FILE
from mlpipeline.modeling.files import save_model
from mlpipeline.modeling.finetune import Release, from_release, release_config, weights_source
from mlpipeline.modeling.network import ModelConfig, fitted_network, initial_model, new_config
from mlpipeline.training import stopping
from mlpipeline.training.checkpoint import Checkpoints, fingerprint, run_key
from mlpipeline.training.checkpoint_store import checkpoint_location, open_store
from mlpipeline.training.data import VAL_SPLIT, Inputs, open_inputs
from mlpipeline.training.device import Runtime, auto_threads, configure
from mlpipeline.training.distributed import (
    World,
    in_worker,
    launch,
    meet,
    peer_lost,
    process_group,
    world_from_env,
)
from mlpipeline.training.divergence import Diverged
from mlpipeline.training.gpu_lock import hold_gpus
from mlpipeline.training.loader import Feed, chosen_placement, place, rank_workers
from mlpipeline.training.loop import Trainer
from mlpipeline.training.params import TrainParams
from mlpipeline.training.phases import Phase, check_frozen_epochs, plan
from mlpipeline.training.rendezvous import NothingToTrain
from mlpipeline.training.reporting import EpochRecord, TrainingLog
from mlpipeline.training.savepoints import SaveEvery, save_every
from mlpipeline.training.windows import Window, training_window


@dataclass
class Trained:
    trainer: Trainer  # the last phase's
    config: ModelConfig
    best: EpochRecord
    runtime: Runtime
    phases: list[Phase]
    checkpoints: list[Checkpoints]  # one per phase


def train(
    params: TrainParams,
    inputs: Inputs,
    report_dir: Path | None,
    checkpoint_root: Path | str = "",
    world: World | None = None,
    every: SaveEvery | None = None,
) -> Trained:
    """Train on ``inputs`` (in this process's share when it is one of several ranks).

    Pure of output I/O except the dvclive ``report_dir`` (None: no report) and the checkpoints
    (in ``checkpoint_root``: a folder or an s3:// URL, empty for the default; saved within epochs
    as ``every`` says), so tests call it directly.
    """
    world = world or World()
    store = open_store(checkpoint_root)
    runtime = configure(
        params.device, params.precision, params.num_threads, world.local_rank, world.local_size, params.tf32
    )
    weights = weights_source(params.model.weights, WEIGHTS)
    pretrained = weights_sha256(weights)
    with process_group(world, runtime.device):
        world.agree(fingerprint(params, runtime, inputs.datasets, pretrained))
        phases = plan(params, inputs.real, inputs.synthetic, inputs.train.root)
        check_frozen_epochs(phases, inputs.views, world.size)
        train_window, val_window = windows(params, inputs) or (None, None)
        # the data's stats from the sums ingest recorded, unless the weights bring their own
        config = network_config(
            params, inputs, weights, lambda: phases[-1].originals.channel_sums().mean_std()
        )
        seed_everything(params.seed)  # the same initial weights on every rank
        start = (
            from_release(config, weights) if isinstance(weights, Release) else initial_model(config, weights)
        )
        model = runtime.place(start)
        val_rows = SplitReader.open(inputs.val, VAL_SPLIT)
        largest = max(phase.originals.nbytes for phase in phases)
        placement = chosen_placement(val_rows.nbytes + largest, runtime.device)  # one budget for both
        workers = rank_workers(world.local_size)  # reader threads, and as many draw threads
        val = Feed(
            place(val_rows, runtime.device, placement, workers),
            len(val_rows),
            window=val_window,
            workers=workers,
        )
        report = TrainingLog(report_dir) if world.is_main and report_dir is not None else None
        all_checkpoints = []
        trainer: Trainer | None = None
        for phase in phases:  # each starts from the weights the one before left in the model
            trainer = None  # the last phase's training data leaves the device before this one's comes
            trainer = Trainer(
                model,
                phase.params,
                runtime,
                world,
                train=Feed(
                    place(phase.originals, runtime.device, placement, workers),
                    len(phase.originals),
                    inputs.online,
                    train_window,
                    workers,
                ),
                val=val,
                phase=phase.name,
                class_counts=np.bincount(phase.originals.labels, minlength=len(inputs.classes)),
            )
            key = run_key(params, runtime, inputs.datasets, phase.name, pretrained)
            checkpoints = Checkpoints(key, store, world)
            all_checkpoints.append(checkpoints)
            if report is not None:
                report.start_phase(phase.name, trainer.epochs, trainer.batches_per_epoch)
                if trainer.epochs > phase.params.epochs:
                    report.note(raised_epochs(phase, trainer))
            try:
                best = trainer.fit(checkpoints, report, every)
            except Diverged as diverged:  # these params cannot give a model: nothing of the run is kept
                for kept in all_checkpoints if world.is_main else []:
                    kept.clear()
                if report is not None:
                    report.discard()
                if world.size > 1:  # every rank diverged at the same step: rank 0 says so, once
                    world.stop_together(diverged, says=world.is_main)
                raise
            finally:
                trainer.release()
        assert trainer is not None
        if report is not None:
            report.finish(best, trainer.progress.epoch)
    return Trained(trainer, config, best, runtime, phases, all_checkpoints)


def raised_epochs(phase: Phase, trainer: Trainer) -> str:
    """Why the phase runs more than ``epochs``: ``min_steps`` raised it (the demo's 5 epochs run
    as 41: its 1,257 real images make 49 optimizer steps an epoch, short of 2,000)."""
    params, steps = phase.params, trainer.steps_per_epoch
    return (
        f"{phase.name}: {trainer.epochs} epochs of {steps} optimizer steps: train.epochs {params.epochs} "
        f"raised by train.min_steps {params.min_steps} ({params.epochs} epochs would be "
        f"{params.epochs * steps} steps)"
    )


def network_config(
    params: TrainParams,
    inputs: Inputs,
    weights: Path | Release | None,
    stats: Callable[[], tuple[list[float], list[float]]],
) -> ModelConfig:
    """The config of the network to train: a release's, fitted to the data, or a new one (from a
    weights folder or none); its input the ``train.image_size`` window either way."""
    spec, shape = params.model, input_shape(params, inputs)
    preprocessing = inputs.val.info.attributes.get("preprocessing")
    if isinstance(weights, Release):  # fine-tuning a release: its network, fitted to the data
        return release_config(weights, spec.arch, inputs.classes, shape, preprocessing)
    return new_config(
        spec.arch, inputs.classes, shape, stats, preprocessing, spec.widths, spec.dropout, spec.hf, weights
    )


def windows(params: TrainParams, inputs: Inputs) -> tuple[Window, Window] | None:
    """The training and validation windows of ``train.image_size`` (None: the whole image)."""
    source = str(inputs.val.root / META_FILE)
    return training_window(params.image_size, inputs.image_shape[1:], params.seed, source)


def input_shape(params: TrainParams, inputs: Inputs) -> list[int]:
    """C, H, W of the network's input: the stored images, or their ``train.image_size`` window."""
    window = windows(params, inputs)
    return [inputs.image_shape[0], *(window[1].size if window else inputs.image_shape[1:])]


def weights_sha256(weights: Path | Release | None) -> str:
    """The pretrained weights' hash for the nodes' agreement and the checkpoint key (empty: none):
    nodes holding other bytes under one ``data/weights`` name would otherwise meet, then fail
    inside DDP."""
    if isinstance(weights, Release):
        return weights.record()["sha256"]
    if weights is None or not weights.is_dir():
        return ""  # no folder: new_config refuses it in one line, the same on every node
    from mlpipeline.modeling.hf import folder_sha256  # imports transformers: only with weights

    return folder_sha256(weights)


def check_plan(params: TrainParams, inputs: Inputs) -> None:
    """Refuse, before any launch or training work, a run that cannot give a model: no real images
    after pretraining, a backbone that would never learn, a network that cannot be built or run
    on the data's images (built and run once on two images: see ``modeling.hf_build``), a release
    to start from that does not fit the data (it is fetched here, once)."""
    phases = plan(params, inputs.real, inputs.synthetic, inputs.train.root)  # checks the sources
    check_frozen_epochs(phases, inputs.views, params.world_size)
    spec, weights = params.model, weights_source(params.model.weights, WEIGHTS)
    preprocessing, shape = inputs.val.info.attributes.get("preprocessing"), input_shape(params, inputs)
    if isinstance(weights, Release):
        release_config(weights, spec.arch, inputs.classes, shape, preprocessing)
    else:
        fitted_network(spec.arch, inputs.classes, shape, spec.hf, weights)


def main() -> None:
    with stopping.watch():  # from the start: a stop signal before the first step ends the run there
        params = load_section(TrainParams, "train")
        every, location = save_every(), checkpoint_location()  # refused, if bad, before any work
        launching = params.world_size > 1 and not in_worker()
        try:
            meeting = meet(params.nodes) if launching else None  # other nodes wait here for node 0
        except NothingToTrain as nothing:
            print(f"train: {nothing}", file=sys.stderr)
            return
        inputs = open_inputs(AUGMENTED, INGESTED)  # refuse bad inputs before any launch
        check_plan(params, inputs)  # train.image_size against the stored images; a release fetched, once
        if params.device in ("auto", "cuda") and not in_worker():  # before CUDA starts: see gpu_lock
            hold_gpus(params.processes)
        if launching:
            threads = params.num_threads or auto_threads(params.processes)
            launch(__spec__.name, params.processes, threads, meeting)
            return
        world = world_from_env()
        try:
            train_and_save(params, inputs, location, world, every)
        except stopping.Stopped as stopped:
            if world.is_main:
                print(f"train: {stopped}", file=sys.stderr, flush=True)
            raise SystemExit(stopped.exit_code) from None
        except Exception as exc:
            if (cause := peer_lost(exc)) is None:
                raise
            lost = (
                f"rank {world.rank} lost the other training processes ({cause}): the first failure says why"
            )
            stage.print_error("train", PipelineError(lost))
            raise SystemExit(stopping.EXIT_REQUEUE) from None  # the run resumes from its last checkpoint


def train_and_save(
    params: TrainParams, inputs: Inputs, location: str, world: World, every: SaveEvery
) -> None:
    """The run of this rank; rank 0 writes the model and says what it did."""
    with stage.summary("train") as report:
        result = train(params, inputs, TRAIN_REPORTS, location, world, every)
        if not world.is_main:
            return
        with atomic.directory(MODELS) as out:
            save_model(result.trainer.model, result.config, out)
        for checkpoints in result.checkpoints:
            checkpoints.clear()
        trainer, best = result.trainer, result.best
        processes = f" x {world.size} processes" if world.size > 1 else ""
        processes += f" on {params.nodes} nodes" if params.nodes > 1 else ""
        resumed = f", resumed after epoch {trainer.resumed_after}" if trainer.resumed else ""
        resumed += f" and step {trainer.resumed_step} of the next" if trainer.resumed_step else ""
        online = inputs.online
        report["read"] = (
            f"{len(inputs.real)} real train images from {INGESTED}, {len(inputs.synthetic)} synthetic "
            f"and the online augmentation record from {AUGMENTED}, {len(trainer.val)} val from {INGESTED}"
            if online
            else f"{len(inputs.real)} real and {len(inputs.synthetic)} synthetic train images from "
            f"{AUGMENTED}, {len(trainer.val)} val from {INGESTED}"
        )
        views = f" x {online.views} views (augmented online)" if online else ""
        phases = ", then ".join(
            f"{phase.name} on {len(phase.originals)} images{views}" for phase in result.phases
        )
        report["ran"] = (
            f"{phases}, on {result.runtime.describe()}{processes}{resumed}; kept epoch {best.epoch} of "
            f"{trainer.progress.epoch} of the {result.phases[-1].name} phase "
            f"(val acc {best.val_acc:.4f}, val loss {best.val_loss:.4f})"
        )
        removed = ", ".join(
            f"{checkpoints.store.where}/{checkpoints.key}" for checkpoints in result.checkpoints
        )
        report["wrote"] = f"{MODELS} and {TRAIN_REPORTS}, removed checkpoints {removed}"


if __name__ == "__main__":
    stage.run("train", main, TrainParams)
