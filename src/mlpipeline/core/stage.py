"""What every stage's ``main()`` shares: logging, a one-line summary, and clean failure."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import PARAMS_FILE, section_keys
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


def keep_standard_streams_open() -> None:
    """Put /dev/null behind a closed stdout or stderr (``2>&-``), so nothing meant for them lands
    elsewhere. Python leaves ``sys.stderr`` None then, and ``print(file=None)`` writes to stdout:
    predict's error lines landed in the CSV it wrote there. And the next file opened would take the
    free descriptor, where C libraries write their warnings. ``sys.stdout`` stays None, so a command
    whose output goes there can refuse to run."""
    for descriptor in (1, 2):
        try:
            os.fstat(descriptor)
        except OSError:
            null = os.open(os.devnull, os.O_WRONLY)  # the lowest free descriptor: this one, or 0
            if null != descriptor:
                os.dup2(null, descriptor)
                os.close(null)
    if sys.stderr is None:
        # Not descriptor 2: a module imported before now may hold it (onnxruntime opens /dev/null
        # read-only), and writing there failed the flush at exit (status 120).
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (the process's stderr, never closed)


def run(
    stage: str, body: Callable[[], None], params: type | None = None, argv: Sequence[str] | None = None
) -> None:
    """Run a stage body, after checking ``MLPIPELINE_WORKERS``; a ``PipelineError``, a refusal of
    the machine's (a full disk) or a worker killed under it becomes one ``error:`` line and exit 2.

    A pipeline stage names its ``params`` class: it then takes no arguments but ``--help``
    (``argv``, default the command line's), which prints what it does and the params it reads
    and runs nothing."""
    keep_standard_streams_open()
    if params is not None:
        parse_no_arguments(stage, body, params, sys.argv[1:] if argv is None else argv)
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


def parse_no_arguments(stage: str, body: Callable[[], None], params: type, argv: Sequence[str]) -> None:
    """``--help``: the stage module's docstring and every key of its params section, then exit 0;
    any other argument: argparse's usage and one error line, exit 2. The params live in
    params.yaml, so a stage has no options of its own: ``dvc exp run -S`` sets them."""
    keys = "\n".join(f"  {line}" for line in section_keys(params, stage))
    parser = argparse.ArgumentParser(
        prog=f"python -m mlpipeline.stages.{stage}",
        description=sys.modules[body.__module__].__doc__,
        epilog=f"Params: the {stage} section of {PARAMS_FILE} (each key is commented there; "
        f"set one for a run with `dvc exp run -S {stage}.KEY=VALUE`):\n{keys}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)


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
