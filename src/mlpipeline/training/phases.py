"""What a training run trains on, phase by phase.

Synthetic images that do not look quite like the real ones hurt when shuffled in with
them: on the digits demo 10,000 typeset glyphs outnumber 1,257 real images 8 to 1 and
the network fits the fonts (a classifier trained on the glyphs alone gets ~60% of real
digits right). Used as pretraining instead, they teach the shapes first and the real
images have the last word: ``use: pretrain`` runs ``pretrain_epochs`` epochs on the
synthetic images alone, then the configured run on the real images starting from those
weights (a fresh optimizer and schedule). ``use: mix`` trains once on both, shuffled.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.shard_rows import SplitReader
from mlpipeline.training.data import rank_steps
from mlpipeline.training.optim import epochs_to_run
from mlpipeline.training.params import TrainParams

PRETRAIN = "pretrain"
TRAIN = "train"


@dataclass(frozen=True)
class Phase:
    name: str  # names the phase's checkpoints, random streams and log lines
    params: TrainParams  # the settings it runs with
    originals: SplitReader  # the images it trains on (augmented copies too, when made offline)


def check_sources(params: TrainParams, real_count: int, source: Path) -> None:
    """Refuse a plan that cannot run: pretraining needs real images to fine-tune on."""
    if params.synthetic.use == "pretrain" and real_count == 0:
        raise PipelineError(
            f"{source}: no real training images to train on after pretraining "
            "(augment.include_real is false?); set train.synthetic.use: mix to train on synthetic only"
        )


def plan(params: TrainParams, real: SplitReader, synthetic: SplitReader, source: Path) -> list[Phase]:
    """The phases to run in order, each with its images; the last one's model is the result."""
    check_sources(params, len(real), source)
    if params.synthetic.use == "mix":
        return [Phase(TRAIN, params, SplitReader.concat([real, synthetic]))]
    phases = []
    if len(synthetic) > 0:
        pretrain = replace(
            params,
            epochs=params.synthetic.pretrain_epochs,
            min_steps=0,
            early_stopping=replace(params.early_stopping, patience=None),
        )
        phases.append(Phase(PRETRAIN, pretrain, synthetic))
    phases.append(Phase(TRAIN, params, real))
    return phases


def check_frozen_epochs(phases: list[Phase], views: int, world_size: int) -> None:
    """Refuse ``freeze_epochs`` that cover a whole phase (``min_steps`` counted: it can add
    epochs): its backbone would never learn, only the head. Refused rather than warned: that is
    not what the setting says, and a warning scrolls by unread in a queued experiment's log.
    ``views``: each training row's copies an epoch (online augmentation); ``world_size``: ranks."""
    for phase in phases:
        params, frozen = phase.params, phase.params.model.freeze_epochs
        per_epoch = rank_steps(len(phase.originals) * views, params.batch_size, world_size, params.accumulate)
        epochs = epochs_to_run(params, per_epoch)
        if frozen and frozen >= epochs:
            knob = "train.synthetic.pretrain_epochs" if phase.name == PRETRAIN else "train.epochs"
            added = f" (train.min_steps {params.min_steps} at {per_epoch} steps an epoch)"
            raise PipelineError(
                f"params.yaml: train.model.freeze_epochs is {frozen}, but the {phase.name} phase runs "
                f"{epochs} epoch{'s' if epochs > 1 else ''}{added if epochs > params.epochs else ''}: "
                f"the backbone would never learn (set freeze_epochs below {epochs}, or raise {knob})"
            )
