"""What every stage's ``main()`` shares: logging, a one-line summary, and clean failure."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.urls import redact_text

# Libraries that log routine facts at INFO ("Found credentials in environment variables"):
# a stage's stderr is its summary line or its one error line, so only their warnings show.
QUIET_LOGGERS = ("botocore", "aiobotocore", "s3fs", "fsspec")


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


def run(stage: str, body: Callable[[], None]) -> None:
    """Run a stage body; a ``PipelineError`` becomes one ``error:`` line and its exit code (2)."""
    setup_logging()
    try:
        body()
    except PipelineError as exc:
        print(f"{stage}: error: {redact_text(str(exc))}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print(f"{stage}: interrupted", file=sys.stderr)
        sys.exit(130)


@contextmanager
def summary(stage: str) -> Iterator[dict[str, str]]:
    """Collect ``read``/``wrote`` descriptions and log them with the elapsed time in one line."""
    report: dict[str, str] = {}
    started = time.perf_counter()
    yield report
    elapsed = time.perf_counter() - started
    parts = [f"{key} {value}" for key, value in report.items()]
    logging.getLogger(stage).info("%s in %.2f s", "; ".join(parts), elapsed)
