"""Environment settings in seconds (``MLPIPELINE_PROGRESS_INTERVAL``, ``MLPIPELINE_GPU_WAIT``,
``MLPIPELINE_RENDEZVOUS_TIMEOUT``) or counts (``MLPIPELINE_MAX_PARAMETERS``): how a run behaves or
what this machine can take, never an output byte, so never DVC params. One reader per kind, so
every such variable refuses the same mistakes (a word, a negative number, nan, a number past what
its user can wait) in the same one line."""

from __future__ import annotations

import math
import os

from mlpipeline.core.errors import PipelineError


def seconds(name: str, unset: str, above_zero: bool = False, at_most: float = math.inf) -> float | None:
    """``name`` as a number of seconds >= 0 (> 0 with ``above_zero``, at most ``at_most``), or None
    when it is unset or empty (``unset`` says what that means, for the error line)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    lowest_ok = value > 0 if above_zero else value >= 0  # both false for nan
    if not (lowest_ok and value <= at_most):
        bounds = ("> 0" if above_zero else ">= 0") + (f" and <= {at_most:g}" if at_most < math.inf else "")
        raise PipelineError(f"{name}={raw!r}: must be a number of seconds {bounds} (unset: {unset})")
    return value


def count(name: str, default: int) -> int:
    """``name`` as a whole number >= 1 (``2000000000``, ``2_000_000_000`` or ``2e9``), or ``default``
    when it is unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw.replace("_", "")) if raw.isascii() else 0.0  # not float('٣'): a digit it reads
    except ValueError:
        value = 0.0
    if not (value >= 1 and value.is_integer()):  # also refuses nan and inf
        raise PipelineError(f"{name}={raw!r}: must be a whole number >= 1 (unset: {default:,})")
    return int(value)
