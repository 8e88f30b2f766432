"""Per-epoch figures: dvclive files that DVC plots, and a display for whoever is watching.

dvclive writes ``reports/train`` with ``dvcyaml=False`` (dvc.yaml declares the
metrics and plots itself, so nothing rewrites it at run time) and no experiment
saving of its own (``dvc exp run`` does that). On CPU everything in
``metrics.json`` and the loss, accuracy and learning-rate histories is a pure
function of params and data, so repeated runs give the same bytes (GPU kernels
are not deterministic: there the last digits vary). Epoch wall time never
repeats: it is logged as a history file only (``plots/metrics/epoch_seconds.tsv``),
left out of ``metrics.json``, and dvc.yaml plots it without making it a stage
output, whose hash would change every run.

A run of several phases (pretraining, then training) logs them as one history: the
curves' x axis counts epochs across the phases. Each phase's batches are counted by
``core.progress``: on a terminal a bar per phase with the epoch lines scrolling above it; in a
CI log each epoch is one plain line, with progress lines between them on long epochs.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from dvclive import Live

from mlpipeline.core.progress import Progress, start
from mlpipeline.training.phases import TRAIN

log = logging.getLogger("train")

EPOCH_SECONDS = "epoch_seconds"


@dataclass(frozen=True)
class EpochRecord:
    """The figures of one finished epoch (losses without label smoothing, accuracies in [0, 1])."""

    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    val_macro_f1: float
    lr: float  # at the end of the epoch
    seconds: float

    def line(self, epochs: int) -> str:
        return (
            f"epoch {self.epoch}/{epochs}: train loss {self.train_loss:.4f} acc {self.train_acc:.4f}, "
            f"val loss {self.val_loss:.4f} acc {self.val_acc:.4f} macro-F1 {self.val_macro_f1:.4f}, "
            f"lr {self.lr:.2e}, {self.seconds:.2f} s"
        )

    def metrics(self) -> dict[str, float]:
        """The deterministic figures, under dvclive's names (``train/loss`` nests in metrics.json)."""
        return {
            "train/loss": self.train_loss,
            "train/acc": self.train_acc,
            "val/loss": self.val_loss,
            "val/acc": self.val_acc,
            "val/macro_f1": self.val_macro_f1,
            "lr": self.lr,
        }

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


class TrainingLog:
    """Rank 0's record of a run: dvclive history, summary metrics and the terminal display."""

    def __init__(self, out_dir: Path) -> None:
        self.live = Live(str(out_dir), dvcyaml=False, save_dvc_exp=False, report=None)
        self.bar = Progress()
        self.phase = ""
        self.epochs = 0
        self.batches_per_epoch = 0
        self.logged = 0  # epochs logged so far, all phases
        self.offset = 0  # epochs logged by the phases before this one

    def start_phase(self, phase: str, epochs: int, batches_per_epoch: int) -> None:
        self.bar.close()
        self.phase, self.epochs, self.batches_per_epoch = phase, epochs, batches_per_epoch
        self.offset = self.logged
        self.bar = start("train", phase, epochs * batches_per_epoch, unit="batch")

    def note(self, line: str) -> None:
        """A line about the run (why it is longer than asked, a checkpoint taken within an epoch),
        where it does not break the bar."""
        self.bar.write(line, log)

    def batch_done(self) -> None:
        self.bar.advance()

    def epoch_done(self, record: EpochRecord, replayed: bool = False) -> None:
        """Log ``record``; ``replayed`` records come from a checkpoint and are not shown again."""
        self.live.step = self.offset + record.epoch
        self.logged = self.live.step
        for name, value in record.metrics().items():
            self.live.log_metric(name, value)
        self.live.log_metric(EPOCH_SECONDS, record.seconds)
        del self.live.summary[EPOCH_SECONDS]  # history only: keeps metrics.json deterministic
        self.live.next_step()
        if replayed:
            self.bar.advance(self.batches_per_epoch)
        else:
            line = record.line(self.epochs)
            self.bar.write(line if self.phase == TRAIN else f"{self.phase} {line}", log)

    def finish(self, best: EpochRecord, epochs_run: int) -> None:
        """Summarize the run by the last phase's best epoch, whose weights are the model written
        (``best_epoch`` counts across phases, as the curves do)."""
        for name, value in best.metrics().items():
            self.live.log_metric(name, value, plot=False)
        self.live.summary["best_epoch"] = self.offset + best.epoch
        self.live.step = self.offset + epochs_run
        self.close()

    def close(self) -> None:
        self.bar.close()
        self.live.end()

    def discard(self) -> None:
        """Close and remove the whole report: a run that wrote no model must leave no metrics that
        read as its result."""
        self.close()
        shutil.rmtree(self.live.dir, ignore_errors=True)
