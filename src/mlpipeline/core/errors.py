"""The one exception type a stage turns into a one-line message and a non-zero exit."""

from __future__ import annotations

EXIT_USER_ERROR = 2


class PipelineError(Exception):
    """A problem the user can fix: bad input data, a bad param, a missing file.

    The message is one line that names the file or the param at fault. Anything
    else that escapes a stage is a bug and keeps its traceback. ``exit_code`` is
    the process's exit status; a subclass may set its own, so a caller such as a
    script around ``predict`` can tell one kind of failure from the others.
    """

    exit_code = EXIT_USER_ERROR


def first_line(exc: BaseException) -> str:
    """The first non-blank line of ``exc``'s message (its type's name when it has none): what a
    library's multi-line error contributes to the one line a ``PipelineError`` prints."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
