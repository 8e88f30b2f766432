"""Environment settings in seconds (``MLPIPELINE_PROGRESS_INTERVAL``, ``MLPIPELINE_GPU_WAIT``,
``MLPIPELINE_RENDEZVOUS_TIMEOUT``): how a run behaves, never an output byte, so never DVC params.
One reader, so every such variable refuses the same mistakes (a word, a negative number, nan, a
number past what its user can wait) in the same one line."""

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
