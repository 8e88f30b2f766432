"""How the nodes meet: the node variables read strictly, and every way a meeting fails is one
line naming its cause and the time really waited, within ``MLPIPELINE_RENDEZVOUS_TIMEOUT``, with
nothing of torch's C++ on stderr. Listeners on 127.0.0.1 free ports stand in for what a node may
find at ``MASTER_PORT``; `tests/test_multinode.py` runs real nodes."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from conftest import REPO_ROOT
from gloo import free_port
from torch.distributed import TCPStore

from mlpipeline.core.errors import PipelineError
from mlpipeline.training.rendezvous import TIMEOUT_ENV, Rendezvous, check_before_meeting, rendezvous_from_env

GOOD = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "NODE_RANK": "0"}
# The stage's launch, as `python -m mlpipeline.stages.train` reaches it with train.nodes: 2.
LAUNCH = (
    "from mlpipeline.core import stage\n"
    "from mlpipeline.training.distributed import launch\n"
    "stage.run('train', lambda: launch('mlpipeline.stages.train', 2, 1, 1))\n"
)
WIDE_29500 = "\uff12\uff19\uff15\uff10\uff10"  # fullwidth digits
WAITED = re.compile(rf"; waited (\d+\.\d) s \({TIMEOUT_ENV}=(\S+)\)$")


@pytest.fixture
def node_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (*GOOD, TIMEOUT_ENV):
        monkeypatch.delenv(f"PET_{name}", raising=False)
        monkeypatch.delenv(name, raising=False)
    for name, value in GOOD.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MASTER_PORT", "99999", "MASTER_PORT='99999': must be a port number 1..65535"),
        ("MASTER_PORT", "0", "MASTER_PORT='0': must be a port number 1..65535"),
        ("MASTER_PORT", WIDE_29500, f"MASTER_PORT='{WIDE_29500}': must be a port number"),  # int() takes it
        ("NODE_RANK", "²", "NODE_RANK='²': must be one of 0..1 (train.nodes is 2)"),
        ("NODE_RANK", "2", "NODE_RANK='2': must be one of 0..1"),  # as many as the nodes: one too many
        ("NODE_RANK", "-1", "NODE_RANK='-1': must be one of 0..1"),
        (
            TIMEOUT_ENV,
            "1e23",
            f"{TIMEOUT_ENV}='1e23': must be a number of seconds > 0 and <= 604800 (unset: 600)",
        ),
        (TIMEOUT_ENV, "inf", f"{TIMEOUT_ENV}='inf': must be a number of seconds > 0"),
        (TIMEOUT_ENV, "0", f"{TIMEOUT_ENV}='0': must be a number of seconds > 0"),
        (TIMEOUT_ENV, "nan", f"{TIMEOUT_ENV}='nan': must be a number of seconds > 0"),
        (TIMEOUT_ENV, "soon", f"{TIMEOUT_ENV}='soon': must be a number of seconds > 0"),
    ],
)
def test_a_bad_node_variable_is_one_line_naming_it(
    node_env: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    node_env.setenv(name, value)
    with pytest.raises(PipelineError, match=f"^{re.escape(message)}"):
        rendezvous_from_env(2)


@pytest.mark.parametrize(("value", "seconds"), [("", 600), (" 5", 5), ("1e2", 100), ("2.5", 2.5)])
def test_the_timeout_reads_like_every_seconds_setting(
    node_env: pytest.MonkeyPatch, value: str, seconds: float
) -> None:
    node_env.setenv(TIMEOUT_ENV, value)
    node_env.setenv("NODE_RANK", "1")  # the last node of two
    assert rendezvous_from_env(2).timeout == seconds


@contextmanager
def listener(answer: bytes | None) -> Iterator[int]:
    """A program on a free 127.0.0.1 port that takes connections and never answers (``answer``
    None) or answers ``answer`` to whatever it is sent; yields the port."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            with client:
                client.settimeout(1)
                try:
                    client.recv(100)
                    client.sendall(answer or b"")
                except OSError:
                    pass

    server_thread = threading.Thread(target=serve, daemon=True)
    if answer is not None:
        server_thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        if answer is not None:
            server_thread.join()
        server.close()


def launch_error(node: int, port: int, timeout: str, address: str = "127.0.0.1") -> str:
    """The one line the stage's launch ends with (exit 2) on this node."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT / "src"),
        "MASTER_ADDR": address,
        "MASTER_PORT": str(port),
        "NODE_RANK": str(node),
        TIMEOUT_ENV: timeout,
    }
    result = subprocess.run(
        [sys.executable, "-c", LAUNCH], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    return line


def waited(line: str) -> float:
    found = WAITED.search(line)
    assert found, line
    return float(found[1])


@pytest.mark.parametrize(
    "answer", [None, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"], ids=["silent", "web"]
)
def test_node_1_at_a_port_that_is_no_rendezvous_ends_in_one_line_within_its_timeout(
    answer: bytes | None,
) -> None:
    """A silent listener once held node 1 forever; a web server made torch print C++ frames per try."""
    with listener(answer) as port:
        line = launch_error(1, port, timeout="2")

    assert line.startswith(
        f"train: error: node 1 of 2: 127.0.0.1:{port} takes connections but does not answer as node 0's "
        "rendezvous (another program listens there?): start every node with the same MASTER_ADDR and "
    )
    assert 2 <= waited(line) < 4


def test_a_port_in_use_on_node_0_is_named_at_once() -> None:
    with listener(None) as port:
        line = launch_error(0, port, timeout="60")

    assert line.startswith(
        f"train: error: node 0 of 2: MASTER_PORT={port}: the port is in use on this machine (node 0 listens "
        "there for the other nodes): choose a free port, the same on every node; waited "
    )
    assert waited(line) < 60


@pytest.mark.parametrize("node", [0, 1])
def test_an_address_that_does_not_resolve_is_named_with_the_time_waited(node: int) -> None:
    """Retried until the timeout (a cluster's DNS may lag the nodes), then named: not 'did not meet'."""
    meeting = Rendezvous("nosuch.invalid", free_port(), node, 2, timeout=1.0)
    with pytest.raises(PipelineError) as refused:
        check_before_meeting(meeting)

    message = str(refused.value)
    assert message.startswith(f"node {node} of 2: MASTER_ADDR='nosuch.invalid' does not resolve (")
    assert 1 <= waited(message) < 3


def test_node_1_with_nothing_at_the_port_says_so_after_its_timeout() -> None:
    meeting = Rendezvous("127.0.0.1", free_port(), 1, 2, timeout=1.0)
    with pytest.raises(
        PipelineError, match=r"^node 1 of 2: nothing answers at 127\.0\.0\.1:\d+ \(Connection refused\): "
    ):
        check_before_meeting(meeting)


def test_node_1_started_first_waits_for_node_0s_rendezvous(capfd: pytest.CaptureFixture[str]) -> None:
    """Node 0 comes up a second after node 1: node 1's checks wait for it, quietly, and pass."""
    port = free_port()
    stores: list[TCPStore] = []

    def node_0_starts() -> None:
        time.sleep(1)
        stores.append(TCPStore("127.0.0.1", port, 2, True, timedelta(seconds=30), wait_for_workers=False))

    starting = threading.Thread(target=node_0_starts)
    starting.start()
    check_before_meeting(Rendezvous("127.0.0.1", port, 1, 2, timeout=30.0))
    starting.join()

    assert stores and capfd.readouterr().err == ""
