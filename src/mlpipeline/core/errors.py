"""The one exception type a stage turns into a one-line message and a non-zero exit."""

from __future__ import annotations


class PipelineError(Exception):
    """A problem the user can fix: bad input data, a bad param, a missing file.

    The message is one line that names the file or the param at fault. Anything
    else that escapes a stage is a bug and keeps its traceback.
    """
