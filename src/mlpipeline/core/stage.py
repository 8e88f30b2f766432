"""What every stage's ``main()`` shares: logging, a one-line summary, and clean failure."""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.urls import redact_text
from mlpipeline.core.workers import check_worker_count

# Libraries that log routine facts at INFO ("Found credentials in environment variables"):
# a stage's stderr is its summary line or its one error line, so only their warnings show.
QUIET_LOGGERS = ("botocore", "aiobotocore", "s3fs", "fsspec")
# What the machine refuses, not a bug: a full disk (ingest's scratch needs the decoded data's
# size), a quota, a read-only or forbidden folder.
REFUSALS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
WORKER_DIED = (
    "a worker process died, most likely killed by the system for lack of memory "
    "(set MLPIPELINE_WORKERS lower to run fewer at once)"
)


class _RedactingFormatter(logging.Formatter):
    """Hides the password of every URL in a log line (``ingest.source`` may hold one)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def setup_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def stderr_even_if_closed() -> None:
    """A stderr on /dev/null for a process started with it closed (``2>&-``), where Python sets
    ``sys.stderr`` to None: ``print(..., file=None)`` would write an error line to stdout (above
    the CSV a user redirected there), and the next file opened would take descriptor 2, where
    C code (torch, gloo) writes its warnings. What a user closed stays unseen; the exit code
    still tells."""
    if sys.stderr is not None:
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.fstat(2)  # taken since start by a file opened at import: leave it to its owner
    except OSError:
        os.dup2(null, 2)
        os.close(null)
        null = 2
    sys.stderr = open(null, "w", errors="backslashreplace")  # noqa: SIM115 (the process's own, never closed)


def run(stage: str, body: Callable[[], None]) -> None:
    """Run a stage body, after checking ``MLPIPELINE_WORKERS``; a ``PipelineError``, a refusal of
    the machine's (a full disk) or a worker killed under it becomes one ``error:`` line and exit 2."""
    stderr_even_if_closed()
    setup_logging()
    try:
        check_worker_count()
        body()
    except PipelineError as exc:
        print_error(stage, exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print(f"{stage}: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:
        if exc.errno not in REFUSALS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{stage}: error: {redact_text(where + exc.strerror)}", file=sys.stderr)
        sys.exit(PipelineError.exit_code)
    except BrokenProcessPool:
        print(f"{stage}: error: {WORKER_DIED}", file=sys.stderr)
        sys.exit(PipelineError.exit_code)


def print_error(stage: str, exc: PipelineError) -> None:
    """The stage's one error line for ``exc``, out before the caller goes on (or exits)."""
    print(f"{stage}: error: {redact_text(str(exc))}", file=sys.stderr, flush=True)


@contextmanager
def summary(stage: str) -> Iterator[dict[str, str]]:
    """Collect ``read``/``wrote`` descriptions and log them with the elapsed time in one line."""
    report: dict[str, str] = {}
    started = time.perf_counter()
    yield report
    elapsed = time.perf_counter() - started
    parts = [f"{key} {value}" for key, value in report.items()]
    logging.getLogger(stage).info("%s in %.2f s", "; ".join(parts), elapsed)
