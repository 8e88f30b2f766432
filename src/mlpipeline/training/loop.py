"""The epoch loop: optimizer steps over seeded batches, a validation pass, early stopping on
val, and a checkpoint after every epoch (and within epochs: ``training.savepoints``) from which a
rerun continues bit for bit (on CPU).

A step (``_forward_backward`` for each of its ``accumulate`` batches, then ``_optimizer_step``)
may mix its batch (``training.mixing``), accumulates gradients without DDP's all-reduce until
its last batch, clips them, steps the optimizer and the schedule and updates the weight average
(``training.ema``); nothing in it waits for the device. Validation scores the average when there
is one, and the average is what is kept.

Resuming needs no saved random-generator state: each epoch's batch order, its
torch/numpy/Python seeds and its draws (online augmentation, windows, mixing) are derived from
(seed, phase, epoch, rank), so epoch k+1 of a
resumed run draws exactly what it would have drawn uninterrupted, on any number
of ranks. The checkpoint holds what does carry over: weights, optimizer,
schedule and grad-scaler states, the weight average, the history of epochs and the
early-stopping state (best epoch, its weights, epochs without improvement).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlpipeline.core.seeding import restore_random_state, rng, seed_everything
from mlpipeline.training.checkpoint import Checkpoints
from mlpipeline.training.data import epoch_order, rank_steps
from mlpipeline.training.device import Runtime
from mlpipeline.training.distributed import World
from mlpipeline.training.divergence import check_loss, check_val_loss, check_weights, mark_first_bad
from mlpipeline.training.ema import WeightAverage
from mlpipeline.training.loader import Feed
from mlpipeline.training.losses import class_weights, smoothed_loss
from mlpipeline.training.mixing import Mix, draw_mix
from mlpipeline.training.optim import epochs_to_run, make_optimizer, make_schedule
from mlpipeline.training.params import TrainParams
from mlpipeline.training.reporting import EpochRecord, TrainingLog
from mlpipeline.training.savepoints import EpochSums, SaveEvery, Savepoints, Within, within_epoch

log = logging.getLogger("train")

SCHEDULE_BEFORE_OPTIMIZER = r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`"
EVAL_BATCH_FACTOR = 4  # no activations are kept for a backward pass, so bigger batches fit


def epoch_seed(seed: int, phase: str, epoch: int, rank: int) -> int:
    return int(rng(seed, "epoch-seed", phase, epoch, rank).integers(2**62))


@dataclass
class Progress:
    """What an epoch leaves behind besides weights and optimizer state."""

    history: list[EpochRecord] = field(default_factory=list)
    best: EpochRecord | None = None
    best_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    bad_epochs: int = 0  # epochs since the best one

    @property
    def epoch(self) -> int:
        return len(self.history)


class Trainer:
    """One process's share of one phase of a training run (the whole phase with one process).

    ``phase`` names the random streams, so a pretraining phase and the run after it draw
    independently. ``class_counts`` (training images per class) weigh the loss when
    ``class_weights`` asks for it.
    """

    def __init__(
        self,
        model: nn.Module,
        params: TrainParams,
        runtime: Runtime,
        world: World,
        train: Feed,
        val: Feed,
        phase: str,
        class_counts: np.ndarray | None = None,
    ) -> None:
        self.model = model
        self.phase = phase
        self.wrapped = world.wrap(model, runtime.device)  # DDP's own methods (no_sync) are on it
        self.module = torch.compile(self.wrapped) if params.compile else self.wrapped
        self.params = params
        self.runtime = runtime
        self.world = world
        self.train = train
        self.val = val
        self.batch_size = params.batch_size // world.size  # per rank
        batches = rank_steps(len(train), params.batch_size, world.size)  # full batches this rank sees
        self.steps_per_epoch = rank_steps(len(train), params.batch_size, world.size, params.accumulate)
        self.batches_per_epoch = min(batches, self.steps_per_epoch * params.accumulate)
        self.batches_per_step = min(params.accumulate, self.batches_per_epoch)  # an epoch may have fewer
        self.epochs = epochs_to_run(params, self.steps_per_epoch)
        self.optimizer = make_optimizer(model, params, runtime.device)
        self.schedule = make_schedule(
            self.optimizer, params, self.epochs * self.steps_per_epoch, self.steps_per_epoch
        )
        self.scaler = runtime.grad_scaler()
        self.average = WeightAverage(model, params.ema_decay) if params.ema_decay else None
        weights = class_weights(params.class_weights, class_counts) if class_counts is not None else None
        self.weights = (
            None if weights is None else torch.tensor(weights, dtype=torch.float32, device=runtime.device)
        )
        self.progress = Progress()
        self.resumed = False  # from a checkpoint
        self.resumed_after = 0  # epochs restored from it
        self.resumed_step = 0  # and steps of the next epoch
        self.within: Within | None = None  # where in the next epoch a checkpoint left off
        self.savepoints: Savepoints | None = None

    @property
    def evaluated(self) -> nn.Module:
        """The weights validation scores and the run keeps: the average when there is one."""
        return self.average.module if self.average is not None else self.model

    def train_epoch(
        self,
        order: np.ndarray,
        epoch: int,
        on_batch: Callable[[], None] | None = None,
        within: Within | None = None,
    ) -> tuple[float, float]:
        """One pass of optimizer steps over this rank's ``order`` (the rest of it, from where
        ``within`` left off); mean loss and accuracy over all ranks."""
        device = self.runtime.device
        self.module.train()
        loss_sum, correct, first_bad, seen = within.sums_on(device) if within else self._zero_sums()
        done = within.step if within else 0  # batches of this epoch a checkpoint already holds
        stream = (self.phase, epoch, self.world.rank)  # names the epoch's draws
        order = order[: self.batches_per_epoch * self.batch_size]
        batches = self.train.batches(order, self.batch_size, drop_last=True, stream=stream, skip=done)
        with self.runtime.training_math():
            for index, (images, labels) in enumerate(batches, start=done):
                mix = draw_mix(
                    self.params.mixing, self.params.seed, len(labels), images.shape[2:], *stream, index
                )
                logits, nll_sum = self._forward_backward(images, labels, mix, index)
                loss_sum += nll_sum
                first_bad = mark_first_bad(first_bad, nll_sum, index + 1)
                correct += (
                    (logits.argmax(dim=1) == labels).sum() if mix is None else mix.correct(logits, labels)
                )
                seen += len(labels)
                if on_batch is not None:
                    on_batch()
                if self._ends_step(index):
                    self._optimizer_step()
                    if self.savepoints is not None:  # only between optimizer steps: no gradient half-summed
                        sums = (loss_sum, correct, first_bad, seen)
                        self.savepoints.after_step(self.state_dict, epoch, index + 1, sums)
        mean_loss, accuracy = self._mean_over_ranks(loss_sum, correct, seen)
        check_loss(mean_loss, first_bad, self.phase, epoch, self.batches_per_epoch)
        return mean_loss, accuracy

    def _forward_backward(
        self, images: torch.Tensor, labels: torch.Tensor, mix: Mix | None, index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``index`` of the epoch: its gradients added to those of its step's earlier batches
        (DDP all-reduces them at the step's last batch only); its logits and summed plain loss."""
        if index % self.params.accumulate == 0:
            self.optimizer.zero_grad(set_to_none=True)
        if mix is not None:
            images = mix.images(images)
        synced = self._ends_step(index) or self.world.size == 1
        with nullcontext() if synced else self.wrapped.no_sync():
            with self.runtime.autocast():
                logits = self.module(self.runtime.channels_last(images))
            if mix is None:
                loss, nll_sum = smoothed_loss(logits, labels, self.params.label_smoothing, self.weights)
            else:
                loss, nll_sum = mix.loss(logits, labels, self.params.label_smoothing, self.weights)
            if self.batches_per_step > 1:  # the step's gradient: the mean of its batches'
                loss = loss / self.batches_per_step
            if self.scaler is None:
                loss.backward()
            else:
                self.scaler.scale(loss).backward()
        return logits, nll_sum

    def _ends_step(self, index: int) -> bool:
        return (index + 1) % self.params.accumulate == 0 or index + 1 == self.batches_per_epoch

    def _optimizer_step(self) -> None:
        """Clip, step the optimizer (through the grad scaler on fp16) and the schedule, and
        move the weight average."""
        if self.params.clip_grad_norm is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.params.clip_grad_norm)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self._step_schedule()
        if self.average is not None:
            self.average.update()

    @property
    def _keeps_best_apart(self) -> bool:
        """Whether a checkpoint holds the best weights apart from the model's: not when they are
        the model's (monitor last, no weight average: a quarter of the bytes spared)."""
        return self.params.early_stopping.monitor != "last" or self.average is not None

    def _zero_sums(self) -> EpochSums:
        """Summed loss, correct count, first bad step (no sync per step: see divergence), seen."""
        device = self.runtime.device
        zero = torch.zeros((), device=device)
        return zero, zero.clone(), torch.zeros((), dtype=torch.long, device=device), 0

    def _step_schedule(self) -> None:
        """Step the learning-rate schedule, without torch's warning about a skipped first step.

        The grad scaler skips an optimizer step whose fp16 gradients overflowed (by design: often
        the very first, while it finds its scale); the schedule still steps, and torch takes that
        for a misordered loop. It checks the schedule's first step only, so only that one is
        filtered: ``catch_warnings`` resets every module's once-only warning registry."""
        if self.scaler is None or self.schedule.last_epoch > 0:
            self.schedule.step()
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", SCHEDULE_BEFORE_OPTIMIZER, UserWarning)
            self.schedule.step()

    @torch.inference_mode()
    def evaluate(self, split: Feed) -> tuple[float, float, float]:
        """Mean cross-entropy, accuracy and macro-F1 of the evaluated weights on ``split``, shared
        out across ranks.

        In float32 whatever the training precision: evaluate and predict run the model in
        float32, so the val curves and early stopping must see the same logits. The per-class
        counts of the F1 are summed on the device (no sync per batch) and read with the rest."""
        device = self.runtime.device
        model = self.evaluated
        model.eval()
        order = np.arange(len(split))[self.world.rank :: self.world.size]
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        counts: torch.Tensor | None = None  # per class: hits, predicted, actual
        batch_size = self.batch_size * EVAL_BATCH_FACTOR
        for images, labels in split.batches(order, batch_size, drop_last=False):
            logits = model(images)
            loss_sum += F.cross_entropy(logits, labels, reduction="sum")
            chosen = logits.argmax(dim=1)
            correct += (chosen == labels).sum()
            if counts is None:
                counts = torch.zeros((3, logits.shape[1]), dtype=torch.int64, device=device)
            counts[0].index_add_(0, labels, (chosen == labels).long())
            counts[1].index_add_(0, chosen, torch.ones_like(chosen))
            counts[2].index_add_(0, labels, torch.ones_like(labels))
        assert counts is not None, "the val split is never empty (training.data checks it)"
        loss, right, count, *per_class = self._sum_over_ranks(loss_sum, correct, len(order), counts.flatten())
        hits, predicted, actual = np.array(per_class).reshape(3, -1)
        both = predicted + actual
        f1 = np.divide(2 * hits, both, out=np.zeros(len(both)), where=both > 0)
        return loss / count, right / count, float(f1.mean())

    def _mean_over_ranks(
        self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int
    ) -> tuple[float, float]:
        loss, right, count = self._sum_over_ranks(loss_sum, correct, seen)
        return loss / count, right / count

    def _sum_over_ranks(
        self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, *more: torch.Tensor
    ) -> list[float]:
        """Loss sum, right answers, images and the values of ``more`` summed over the ranks,
        read back to the host in one sync."""
        device = loss_sum.device
        parts = [
            loss_sum.float().view(1),
            correct.float().view(1),
            torch.tensor([float(seen)], device=device),
        ]
        return self.world.all_reduce(torch.cat([*parts, *(part.float() for part in more)])).tolist()

    def run_epoch(self, epoch: int, on_batch: Callable[[], None] | None = None) -> EpochRecord:
        started = time.perf_counter()
        within, self.within = self.within, None
        if within is None:
            seed_everything(epoch_seed(self.params.seed, self.phase, epoch, self.world.rank))  # dropout draws
        else:
            restore_random_state(within.random)  # as the checkpoint's step left them
        order = epoch_order(
            len(self.train), self.params.seed, self.phase, epoch, self.world.rank, self.world.size
        )
        train_loss, train_acc = self.train_epoch(order, epoch, on_batch, within)
        self.world.sync_buffers(self.model)
        if self.average is not None:  # averaged from each rank's own BatchNorm statistics
            self.world.sync_buffers(self.average.module)
        check_weights(self.model, self.phase, epoch)
        val_loss, val_acc, val_macro_f1 = self.evaluate(self.val)
        check_val_loss(val_loss, self.phase, epoch)
        return EpochRecord(
            epoch=epoch,
            train_loss=train_loss,
            train_acc=train_acc,
            val_loss=val_loss,
            val_acc=val_acc,
            val_macro_f1=val_macro_f1,
            lr=self.schedule.get_last_lr()[0],
            seconds=time.perf_counter() - started,
        )

    def fit(
        self,
        checkpoints: Checkpoints | None = None,
        report: TrainingLog | None = None,
        every: SaveEvery | None = None,
    ) -> EpochRecord:
        """Train until ``self.epochs`` or early stopping, resuming from ``checkpoints`` if they hold this
        run (saved after every epoch, and within epochs as ``every`` says); leaves the best epoch's
        weights in the model and returns that epoch's record."""
        saved = checkpoints.load() if checkpoints is not None else None
        if saved is not None:
            self.load_state_dict(saved)
            self.resumed, self.resumed_after = True, self.progress.epoch
            self.resumed_step = self.within.step if self.within else 0
            within = f" and step {self.within.step} of epoch {self.within.epoch}" if self.within else ""
            log.info("resuming after epoch %d%s from %s", self.progress.epoch, within, checkpoints.path)
        if report is not None:
            for record in self.progress.history:
                report.epoch_done(record, replayed=True)
        if checkpoints is not None:
            say = report.note if report is not None else log.info
            every = every or SaveEvery(None, None)
            self.savepoints = Savepoints(
                checkpoints, self.world, every, self.phase, self.batches_per_epoch, say
            )
        on_batch = report.batch_done if report is not None else None
        while self.progress.epoch < self.epochs and not self._patience_exhausted():
            record = self.run_epoch(self.progress.epoch + 1, on_batch)
            self._record(record)
            if self.savepoints is not None:
                self.savepoints.after_epoch(self.state_dict, record.epoch)
            if report is not None:
                report.epoch_done(record)
        best = self.progress.best
        assert best is not None
        if self._patience_exhausted():
            log.info(
                "stopped early: no better %s since epoch %d", self.params.early_stopping.monitor, best.epoch
            )
        self.model.load_state_dict(self.progress.best_weights)
        return best

    def release(self) -> None:
        """Drop the DDP wrapper. Call it while the process group still exists: the wrapper's
        reducer holds the group, and freeing it after the group is destroyed can block forever."""
        self.module = self.wrapped = self.model

    def _improves(self, record: EpochRecord) -> bool:
        """Whether ``record`` beats the best epoch so far (with ``monitor: last`` every epoch does)."""
        best, monitor = self.progress.best, self.params.early_stopping.monitor
        if best is None or monitor == "last":
            return True
        if monitor == "val_loss":
            return record.val_loss < best.val_loss
        if monitor == "val_macro_f1":
            return record.val_macro_f1 > best.val_macro_f1
        return record.val_acc > best.val_acc

    def _record(self, record: EpochRecord) -> None:
        progress = self.progress
        progress.history.append(record)
        if self._improves(record):
            progress.best = record
            progress.best_weights = {k: v.detach().clone() for k, v in self.evaluated.state_dict().items()}
            progress.bad_epochs = 0
        else:
            progress.bad_epochs += 1

    def _patience_exhausted(self) -> bool:
        patience = self.params.early_stopping.patience
        return patience is not None and self.progress.bad_epochs >= patience

    def state_dict(self) -> dict[str, Any]:
        progress = self.progress
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "average": self.average.state_dict() if self.average is not None else {},
            "history": [record.to_dict() for record in progress.history],
            "best_epoch": progress.best.epoch if progress.best is not None else 0,
            # with monitor last the best epoch is the last one done: after it, its weights are the
            # model's (unless averaged); within the next, never used again. Not held twice then
            "best_weights": progress.best_weights if self._keeps_best_apart else {},
            "bad_epochs": progress.bad_epochs,
            "within_epoch": None,  # filled in by a checkpoint taken within an epoch
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.runtime.device
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        if self.average is not None:
            self.average.load_state_dict(state["average"])
        history = [EpochRecord(**record) for record in state["history"]]
        self.progress = Progress(
            history=history,
            best=history[state["best_epoch"] - 1] if state["best_epoch"] else None,  # none within epoch 1
            best_weights={k: v.to(device) for k, v in (state["best_weights"] or state["model"]).items()},
            bad_epochs=state["bad_epochs"],
        )
        self.within = within_epoch(state, self.world.rank)
