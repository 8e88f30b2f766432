"""Atomic writes: build aside, then rename, so a crashed stage leaves no half file behind.

A temporary is named ``.<name>.tmp-<host>-<pid>``: a process killed mid-write (SIGKILL, power
loss) cannot remove its own, so the next write of the same target removes every temporary
whose process is gone. Only temporaries of this host are judged (a folder shared with another
machine may hold a live run's), and a process that still runs keeps its temporary, so
concurrent runs never remove each other's work.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

HOST = re.sub(r"[^A-Za-z0-9.]+", "_", socket.gethostname()) or "localhost"
# The owner of a temporary: "<host>-<pid>", or "<pid>" alone as named before the host was added.
_OWNER = re.compile(r"(?:(?P<host>.+)-)?(?P<pid>\d+)")


def _aside(path: Path) -> Path:
    remove_stale(path)
    return path.with_name(f".{path.name}.tmp-{HOST}-{os.getpid()}")


def remove_stale(path: Path) -> None:
    """Remove the temporaries of ``path`` that processes of this host which no longer run left."""
    prefix = f".{path.name}.tmp-"
    for leftover in path.parent.glob(glob.escape(prefix) + "*"):
        owner = _OWNER.fullmatch(leftover.name[len(prefix) :])
        if owner is None or owner["host"] not in (None, HOST) or _running(int(owner["pid"])):
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    """Whether a process with this id exists (ours, or another user's: signal 0 only asks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary sibling and an atomic rename."""
    with stream(path) as handle:
        handle.write(data)


def write_text(path: Path | str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def to_json_text(obj: Any, where: str = "") -> str:
    """Canonical, strict JSON (sorted keys, fixed indent, trailing newline): same object, same bytes.

    NaN and infinity have no JSON form: Python would write a bare ``NaN`` that strict readers
    (and the spec) refuse, so a value holding one is refused by its key (``where`` names the
    file), before anything is written. Reaching here, it is a bug upstream, not bad input."""
    try:
        return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError:
        key = _nonfinite_key(obj)
        if key is None:
            raise
        raise ValueError(f"{where}{': ' if where else ''}{key} has no JSON form") from None


def _nonfinite_key(obj: Any, prefix: str = "") -> str | None:
    """The dotted key of the first NaN or infinity in ``obj`` and the value (``a.b.0 is nan``)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return f"{prefix or 'the value'} is {obj}"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list | tuple) else ()
    for key, value in items:
        if (found := _nonfinite_key(value, f"{prefix}.{key}" if prefix else str(key))) is not None:
            return found
    return None


def write_json(path: Path | str, obj: Any) -> None:
    write_text(path, to_json_text(obj, str(path)))


@contextmanager
def stream(path: Path | str) -> Iterator[BinaryIO]:
    """A file opened for writing aside, which replaces ``path`` only if the block succeeds: for
    output written piece by piece (predict's rows), whose whole never sits in memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _aside(path)
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def directory(path: Path | str) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _aside(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
