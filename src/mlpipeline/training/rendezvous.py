"""Where the nodes of a multi-node run meet (``MASTER_ADDR``, ``MASTER_PORT``, ``NODE_RANK``, as
cluster launchers export them), and the checks each node makes before torchrun's static
rendezvous, so that every way a meeting fails ends in one line naming its cause and the time
really waited, within ``MLPIPELINE_RENDEZVOUS_TIMEOUT``.

Why check first: torch's TCPStore, which the static rendezvous is, retries a name that does not
resolve past its timeout, printing C++ stack frames per try; waits forever for a listener that
accepts a connection and never answers; prints frames per try at one that answers other bytes
(a web server); and reports a port in use on node 0 like any other failure. So node 0 checks that
it can listen on the port, every node that the address resolves (retrying, as a cluster's DNS
may lag the nodes' start) and the others that node 0's port answers as a TCPStore, each within
what is left of the timeout; torchrun then gets only the time left.
"""

from __future__ import annotations

import errno
import math
import multiprocessing
import os
import re
import socket
import time
from dataclasses import dataclass, field
from datetime import timedelta

from mlpipeline.core import settings
from mlpipeline.core.errors import PipelineError

TIMEOUT_ENV = "MLPIPELINE_RENDEZVOUS_TIMEOUT"
DEFAULT_TIMEOUT = 600.0  # seconds: cluster schedulers may start nodes minutes apart
LONGEST_TIMEOUT = 7 * 24 * 3600.0  # a week: more is a slip (1e23 overflowed torch's timers)
HANDSHAKE_SECONDS = 10.0  # node 0's rendezvous answers a connected node at once: more is another program
RETRY_SECONDS = 0.5
HIGHEST_PORT = 65535
DIGITS = re.compile(r"[0-9]+")  # ASCII only: int() also takes '²' and other scripts' digits
HINT = "start every node with the same MASTER_ADDR and MASTER_PORT (docs/multinode.md)"


@dataclass(frozen=True)
class Rendezvous:
    """Where the nodes meet: node 0's address and port, this node's index, the wait allowed
    (counted from when this was read)."""

    address: str
    port: int
    node: int
    nodes: int
    timeout: float
    started: float = field(default_factory=time.monotonic, compare=False)

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    def waited(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        return self.timeout - self.waited()

    def failed(self, cause: str) -> PipelineError:
        """The one line for a meeting that did not happen, with the time it took to tell."""
        return PipelineError(
            f"node {self.node} of {self.nodes}: {cause}; waited {self.waited():.1f} s "
            f"({TIMEOUT_ENV}={self.timeout:g})"
        )

    def not_all_met(self) -> PipelineError:
        return self.failed(f"the nodes did not all meet at {self.endpoint}: {HINT}")


def rendezvous_from_env(nodes: int) -> Rendezvous:
    """Where this node is in a world of ``nodes``, as cluster launchers export it: ``MASTER_ADDR``,
    ``MASTER_PORT``, ``NODE_RANK`` (or torchrun's ``PET_`` names of the same). Never guessed: a
    node that took the wrong rank or address would wait for a world that never forms."""
    values = {}
    for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        values[name] = os.environ.get(name, os.environ.get(f"PET_{name}", "")).strip()
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise PipelineError(
            f"train.nodes is {nodes}: set {', '.join(missing)} in the environment (node 0's address, "
            f"a free port on it, this node's index 0..{nodes - 1}), as cluster launchers do; "
            "see docs/multinode.md"
        )
    port, node = values["MASTER_PORT"], values["NODE_RANK"]
    if not DIGITS.fullmatch(port) or not 1 <= int(port) <= HIGHEST_PORT:
        raise PipelineError(
            f"MASTER_PORT={port!r}: must be a port number 1..{HIGHEST_PORT}, the same on every node "
            "(0 would let node 0 pick one the others cannot know)"
        )
    if not DIGITS.fullmatch(node) or int(node) >= nodes:
        raise PipelineError(f"NODE_RANK={node!r}: must be one of 0..{nodes - 1} (train.nodes is {nodes})")
    return Rendezvous(values["MASTER_ADDR"], int(port), int(node), nodes, rendezvous_timeout())


def rendezvous_timeout() -> float:
    """Seconds a node waits for the others (``MLPIPELINE_RENDEZVOUS_TIMEOUT``): an environment
    setting, not a param, since it cannot change an output byte."""
    value = settings.seconds(TIMEOUT_ENV, f"{DEFAULT_TIMEOUT:g}", above_zero=True, at_most=LONGEST_TIMEOUT)
    return DEFAULT_TIMEOUT if value is None else value


def torchrun_timeout(meeting: Rendezvous) -> int:
    """What is left of the wait, in the whole seconds torchrun's static rendezvous takes."""
    return max(1, math.ceil(meeting.remaining()))


def check_before_meeting(meeting: Rendezvous) -> None:
    """Node 0: its port is free and its address resolves. Every other node: the address resolves
    and node 0's port answers as a rendezvous, waiting for node 0 to start meanwhile."""
    if meeting.node == 0:
        _check_port_free(meeting)
        _resolve(meeting)
    else:
        _resolve(meeting)
        _reach(meeting)
        _check_handshake(meeting)


def refused_port(meeting: Rendezvous) -> PipelineError:
    return meeting.failed(
        f"MASTER_PORT={meeting.port}: the port is in use on this machine (node 0 listens there for the "
        "other nodes): choose a free port, the same on every node"
    )


def _check_port_free(meeting: Rendezvous) -> None:
    """Listen on the port as node 0's rendezvous will (every interface), then let it go."""
    dual = socket.has_dualstack_ipv6()
    try:
        socket.create_server(
            ("", meeting.port), family=socket.AF_INET6 if dual else socket.AF_INET, dualstack_ipv6=dual
        ).close()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise refused_port(meeting) from None
        raise meeting.failed(f"MASTER_PORT={meeting.port}: cannot listen on it ({exc.strerror})") from None


def _resolve(meeting: Rendezvous) -> None:
    while True:
        try:
            socket.getaddrinfo(meeting.address, meeting.port, type=socket.SOCK_STREAM)
            return
        except socket.gaierror as exc:
            if meeting.remaining() <= 0:
                cause = f"MASTER_ADDR={meeting.address!r} does not resolve ({exc.strerror})"
                raise meeting.failed(cause) from None
            time.sleep(RETRY_SECONDS)


def _reach(meeting: Rendezvous) -> None:
    """Wait, quietly, until node 0's port takes a connection (node 0 may start later)."""
    while True:
        try:
            socket.create_connection((meeting.address, meeting.port), timeout=1).close()
            return
        except OSError as exc:
            if meeting.remaining() <= 0:
                reason = exc.strerror or "no answer"
                cause = f"nothing answers at {meeting.endpoint} ({reason}): is node 0 started? {HINT}"
                raise meeting.failed(cause) from None
            time.sleep(RETRY_SECONDS)


def _check_handshake(meeting: Rendezvous) -> None:
    """Connect to node 0's port as a TCPStore client, in a forked process given at most
    ``HANDSHAKE_SECONDS`` (and the time left), then ended: torch's client would wait forever at a
    listener that never answers, and prints stack frames at one that answers other bytes. The
    probe counts for nothing in node 0's tally of arrivals (it names no world size)."""
    bound = max(min(meeting.remaining(), HANDSHAKE_SECONDS), 1.0)  # a second at least, at the deadline
    prober = multiprocessing.get_context("fork").Process(
        target=_probe, args=(meeting.address, meeting.port, bound), name="rendezvous-probe", daemon=True
    )
    prober.start()
    prober.join(bound)
    if prober.exitcode is None:
        prober.kill()
        prober.join()
    if prober.exitcode != 0:
        raise meeting.failed(
            f"{meeting.endpoint} takes connections but does not answer as node 0's rendezvous (another "
            f"program listens there?): {HINT}"
        )


def _probe(address: str, port: int, seconds: float) -> None:
    """The forked prober: exits 0 once ``address:port`` answers as a TCPStore, 1 if it will not;
    what torch's C++ writes to stderr meanwhile goes to /dev/null. It leaves by ``os._exit``, so
    nothing the parent had buffered for stdout is written twice."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    from torch.distributed import TCPStore

    try:
        TCPStore(address, port, timeout=timedelta(seconds=seconds), wait_for_workers=False)
    except Exception:  # what it found is said by the parent, in one line
        os._exit(1)
    os._exit(0)
