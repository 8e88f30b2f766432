"""Stop signals: the notice a spot instance, SLURM (``--signal``, preemption, ``scancel``) or
Kubernetes gives before it kills a run. SIGTERM or SIGUSR1 is only noted here; the training loop
saves a checkpoint at its next step boundary (all ranks at the same one: ``training.savepoints``)
and the run ends with ``EXIT_REQUEUE``, which launchers read as "run me again".

Why 250: outside 1..127, which Kubeflow's ``restartPolicy: ExitCode`` takes for permanent errors
(128..255 are retried); outside 129..192, the codes a shell gives a process killed by a signal,
so a run that saved its work is never taken for one that was killed without saving; not 255,
which ssh and many tools use for their own failures. SIGINT (Ctrl-C) still stops at once.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_REQUEUE = 250

_received: signal.Signals | None = None


class Stopped(Exception):
    """Training stopped at a step boundary on a stop signal, its checkpoint saved; the message is
    the one line to show."""

    exit_code = EXIT_REQUEUE


def requested() -> signal.Signals | None:
    """The stop signal received since ``watch`` began, if any."""
    return _received


def _note(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = _received or signal.Signals(signum)


@contextmanager
def watch() -> Iterator[None]:
    """Note stop signals (instead of dying of them) for the duration of the block."""
    global _received
    _received = None
    previous = {sig: signal.signal(sig, _note) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _received = None
