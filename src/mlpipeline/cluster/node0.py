"""Node 0's command in a multi-node run, as the recipes run it:
``python -m mlpipeline.cluster.node0 dvc repro --single-item train``.

It runs the command and, around it:

- passes SIGTERM and SIGUSR1 (a launcher's notice) on to the command's processes, where training
  saves a checkpoint and stops; DVC itself is shielded from them, since it would die at once
  and leave the training it runs orphaned in the middle of its save;
- when the nodes did not meet (DVC found the train stage up to date or in its run-cache and
  never ran it, or node 0 failed before training), tells the other nodes, which wait for node
  0 at its rendezvous port: they end at once, with 0 when there was nothing to train and with
  node 0's exit code otherwise, instead of waiting out ``MLPIPELINE_RENDEZVOUS_TIMEOUT``
  (``training.rendezvous``);
- after a run that did not finish, restores the train stage's outputs DVC removed before it
  ran (``dvc checkout train``), so ``models/`` is the committed model again, not missing;
- ends with the command's exit code, or 250 (``EXIT_REQUEUE``: run me again, the checkpoint
  is saved) when a stop signal stopped it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType

from mlpipeline.core import stage
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import load_section
from mlpipeline.training.params import TrainParams
from mlpipeline.training.rendezvous import CACHED, MEETING_FILE_ENV, rendezvous_from_env, tell_the_others
from mlpipeline.training.stopping import EXIT_REQUEUE, STOP_SIGNALS

RESTORE = ["dvc", "checkout", "--quiet", "train"]
NAME = "node0"


def run_passing_stop_signals(command: list[str], env: dict[str, str]) -> tuple[int, bool]:
    """``command``'s exit code, and whether a stop signal reached this process while it ran. The
    command runs in a process group of its own with the stop signals ignored (DVC keeps that;
    the train stage installs its own handlers), and each stop signal is sent to that group. Once
    it has ended, this process ignores them: a launcher ending the job (SLURM stops every node
    once one ends with non-zero) must not cut short telling the others and restoring models/."""
    received: list[int] = []

    def shielded() -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

    try:
        child = subprocess.Popen(command, env=env, preexec_fn=shielded, process_group=0)
    except OSError as exc:
        raise PipelineError(f"{command[0]}: cannot run it ({exc.strerror})") from None

    def pass_on(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        os.killpg(child.pid, signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, pass_on)
    code = child.wait()
    for sig in STOP_SIGNALS:  # the run is over: what follows (telling the others, restoring) is quick
        signal.signal(sig, signal.SIG_IGN)
    return code, bool(received)


def run_node0(command: list[str]) -> int:
    """Run ``command`` as node 0's part (see the module); its exit code, or ``EXIT_REQUEUE``."""
    nodes = load_section(TrainParams, "train").nodes
    if nodes > 1:
        rendezvous_from_env(nodes)  # a bad node variable: refused before the command runs
    with tempfile.TemporaryDirectory(prefix="mlpipeline-node0-") as scratch:
        met = Path(scratch) / "met"
        code, stopped = run_passing_stop_signals(command, {**os.environ, MEETING_FILE_ENV: str(met)})
        code = EXIT_REQUEUE if stopped and code != 0 else code
        if nodes > 1 and not met.exists():  # the others wait for node 0 since they started
            tell_the_others(rendezvous_from_env(nodes), CACHED if code == 0 else f"exit {code}")
    if code != 0:
        subprocess.run(RESTORE, check=False)
    return code


def main(argv: list[str] | None = None) -> None:
    command = sys.argv[1:] if argv is None else argv
    if not command:
        raise PipelineError(
            "usage: python -m mlpipeline.cluster.node0 COMMAND [ARGS...] (node 0's DVC command)"
        )
    sys.exit(run_node0(command))


if __name__ == "__main__":
    stage.run(NAME, main)
