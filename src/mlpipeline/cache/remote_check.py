"""Before a long run: is the DVC remote reachable and writable? One line and an exit code.

It goes through DVC's own remote set-up (``repo.cloud.get_remote``), so it sees exactly what
``dvc push`` would: the merged config (committed, ``config.local``, global), ``endpointurl``,
and credentials from the environment, an AWS profile or ``config.local``. It writes, reads back
and deletes one small probe object under the remote's prefix. A local folder that does not exist
yet is probed in its nearest existing parent (``dvc push`` creates it); a write refused by a server
that turns out to answer with a web page says so, rather than quoting the HTTP status alone.
Usage: ``python -m mlpipeline.cache.remote_check [REMOTE]`` (``make check-remote``).
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from mlpipeline.core.urls import redact, redact_text

PROBE_PREFIX = ".mlpipeline-remote-check-"


class RemoteCheckFailed(Exception):
    """The remote cannot be used; the message is the one line to show."""


def _reason(exc: BaseException) -> str:
    """The first line of ``exc``'s message, with the password of any URL it quotes hidden."""
    lines = str(exc).strip().splitlines()
    return redact_text(lines[0]) if lines else type(exc).__name__


def _connection_failed(exc: BaseException) -> bool:
    """``exc`` came of not reaching the server at all (refused, unknown host, timed out): some
    filesystems (HTTP) answer an existence check with False then, rather than raising."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (ConnectionError, socket.gaierror, TimeoutError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def check_remote(repo_root: Path | str = ".", remote: str | None = None) -> str:
    """Probe ``remote`` (default: the repo's default remote); return a one-line verdict or raise."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        repo = Repo(str(repo_root))
    except DvcException as exc:
        raise RemoteCheckFailed(f"remote check: {_reason(exc)}") from exc
    with repo:
        try:
            target = repo.cloud.get_remote(remote, "push")
        except (DvcException, ImportError) as exc:  # ImportError: the scheme's DVC plugin is missing
            raise RemoteCheckFailed(f"remote check: {_reason(exc)}") from exc
        settings = repo.config["remote"][target.name]
        endpoint = settings.get("endpointurl")
        where = redact(settings["url"]) + (f" at {redact(endpoint)}" if endpoint else "")
        label = f"remote '{target.name}' ({where})"
        fs = target.fs
        try:
            exists = fs.exists(target.path)
        except Exception as exc:  # whatever the transport raises, the remote is out of reach
            found = _web_page_at(endpoint or settings["url"])
            raise RemoteCheckFailed(f"{label}: {found or f'not reachable: {_reason(exc)}'}") from exc
        if not exists and fs.protocol == "local":
            return _check_folder_to_be(label, Path(target.path))
        try:
            _probe(fs, target.path, label)
        except RemoteCheckFailed:
            raise
        except Exception as exc:
            found = _web_page_at(endpoint or settings["url"])
            verdict = "not reachable" if _connection_failed(exc) else "reachable but not writable"
            raise RemoteCheckFailed(f"{label}: {found or f'{verdict}: {_reason(exc)}'}") from exc
    return f"{label}: reachable and writable"


def _probe(fs, folder: str, label: str) -> None:
    """Write, read back and delete one small object in ``folder``."""
    probe = fs.join(folder, f"{PROBE_PREFIX}{uuid.uuid4().hex}")
    payload = probe.encode()
    fs.pipe_file(probe, payload)
    if fs.cat_file(probe) != payload:
        raise RemoteCheckFailed(f"{label}: reachable, but the probe object read back differs")
    fs.rm_file(probe)


def _check_folder_to_be(label: str, folder: Path) -> str:
    """A local remote that does not exist yet: ``dvc push`` creates it where its parent is writable."""
    parent = next(path for path in folder.parents if path.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise RemoteCheckFailed(f"{label}: does not exist, and cannot be created: {parent} is not writable")
    return f"{label}: does not exist yet; `dvc push` creates it ({parent} is writable)"


def _web_page_at(url: str) -> str | None:
    """What answers at an HTTP(S) ``url`` when it is a web page rather than storage, else None."""
    if not url.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(urllib.request.Request(url), timeout=5) as answer:
            status, kind = answer.status, answer.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        status, kind = exc.code, exc.headers.get_content_type()
    except (OSError, ValueError):
        return None
    if kind != "text/html":
        return None
    return (
        f"{redact(url)} answers with a web page (HTTP {status}, text/html), not as storage: "
        "check the remote's url and endpointurl"
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        print(check_remote(".", args[0] if args else None))
    except RemoteCheckFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
