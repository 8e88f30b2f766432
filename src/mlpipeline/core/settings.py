"""Environment settings in seconds (``MLPIPELINE_PROGRESS_INTERVAL``, ``MLPIPELINE_GPU_WAIT``):
how a run behaves, never an output byte, so never DVC params. One reader, so every such variable
refuses the same mistakes (a word, a negative number, nan) in the same one line."""

from __future__ import annotations

import os

from mlpipeline.core.errors import PipelineError


def seconds(name: str, unset: str) -> float | None:
    """``name`` as a number of seconds >= 0, or None when it is unset or empty (``unset`` says
    what that means, for the error line)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise PipelineError(f"{name}={raw!r}: must be a number of seconds >= 0 (unset: {unset})")
    return value
