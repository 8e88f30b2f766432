"""A SLURM cluster on this machine, to try the SLURM recipe on and for its test: Debian's
``slurmctld`` and two ``slurmd`` (nodes ``n1`` and ``n2``, both this host) on 127.0.0.1, on free
ports, with every file under one folder and no munge (``auth/none``: nothing leaves loopback).
It needs root (slurmd starts jobs as their users) and ``slurmctld``/``slurmd`` installed
(``make slurm`` installs Debian's ``slurm-wlm`` where apt and root are at hand).

Usage, from the repository root::

    python -m mlpipeline.devtools.slurm_local up [--dir .cache/slurm-local]
    export SLURM_CONF=.cache/slurm-local/slurm.conf   # what `up` prints
    recipes/slurm/submit.sh
    python -m mlpipeline.devtools.slurm_local down [--dir .cache/slurm-local]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

NODES = ("n1", "n2")
HOST = "127.0.0.1"
START_SECONDS = 30.0
CONF = "slurm.conf"
DAEMONS = ("slurmctld", "slurmd", "scontrol", "sinfo", "sbatch")


class ClusterError(RuntimeError):
    """The cluster could not be started or stopped; the message says why in one line."""


@dataclass(frozen=True)
class LocalSlurm:
    root: Path

    @property
    def conf(self) -> Path:
        return self.root / CONF

    @property
    def env(self) -> dict[str, str]:
        """The environment SLURM's commands need to find this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}


def missing() -> str | None:
    """Why no local cluster can start here, or None."""
    absent = [name for name in DAEMONS if shutil.which(name) is None]
    if absent:
        return f"{', '.join(absent)} not installed (make slurm installs Debian's slurm-wlm as root)"
    if os.geteuid() != 0:
        return "slurmd must run as root"
    return None


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def config(root: Path, cpus: int) -> str:
    """slurm.conf for the two nodes of this host, everything kept under ``root``."""
    controller, node_default, *node_ports = _free_ports(2 + len(NODES))
    nodes = "\n".join(
        f"NodeName={name} NodeHostname={socket.gethostname()} NodeAddr={HOST} Port={port} CPUs={cpus} "
        "RealMemory=1000 State=UNKNOWN"
        for name, port in zip(NODES, node_ports, strict=True)
    )
    return f"""ClusterName=mlpipeline-local
SlurmctldHost=localhost({HOST})
SlurmctldPort={controller}
SlurmdPort={node_default}
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
KillWait=20
MinJobAge=600
{nodes}
PartitionName=cpu Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""


def up(root: Path) -> LocalSlurm:
    """Start the controller and both nodes; return once both nodes are idle."""
    reason = missing()
    if reason:
        raise ClusterError(f"no local SLURM: {reason}")
    down(root)
    root = root.resolve()
    for folder in ("state", *(f"spool/{name}" for name in NODES)):
        (root / folder).mkdir(parents=True, exist_ok=True)
    cluster = LocalSlurm(root)
    cluster.conf.write_text(config(root, os.cpu_count() or 1))
    _start(cluster, ["slurmctld", "-f", str(cluster.conf), "-i"])
    for name in NODES:
        _start(cluster, ["slurmd", "-f", str(cluster.conf), "-N", name])
    deadline = time.monotonic() + START_SECONDS
    while node_states(cluster) != ["idle"] * len(NODES):
        if time.monotonic() > deadline:
            states = ", ".join(node_states(cluster)) or "none"
            raise ClusterError(f"nodes not idle after {START_SECONDS:g} s ({states}): see {root}/*.log")
        time.sleep(0.2)
    return cluster


def _start(cluster: LocalSlurm, command: list[str]) -> None:
    result = subprocess.run(command, env=cluster.env, capture_output=True, text=True)
    if result.returncode:
        raise ClusterError(f"{command[0]} did not start (exit {result.returncode}): see {cluster.root}/*.log")


def node_states(cluster: LocalSlurm) -> list[str]:
    """The nodes' states (``idle``, ``alloc``, ...), sorted."""
    shown = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=cluster.env, capture_output=True, text=True)
    return sorted(shown.stdout.split()) if shown.returncode == 0 else []


def down(root: Path) -> bool:
    """Stop the cluster under ``root`` if one runs (its daemons, by their pid files); whether one did."""
    cluster = LocalSlurm(root.resolve())
    pids = []
    for pid_file in sorted(cluster.root.glob("*.pid")):
        try:
            pids.append(int(pid_file.read_text().strip()))
        except (OSError, ValueError):
            continue
        pid_file.unlink()
    for pid in pids:
        _end(pid)
    return bool(pids)


def _end(pid: int, seconds: float = 10.0) -> None:
    """Terminate the daemon ``pid`` and wait for it to go (killed if it outstays ``seconds``)."""
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, 9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A two-node SLURM on this host, for the SLURM recipe.")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=Path(".cache/slurm-local"), help="its files")
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            cluster = up(args.dir)
            print(f"local SLURM up (nodes {', '.join(NODES)}): export SLURM_CONF={cluster.conf}")
        else:
            print("local SLURM stopped" if down(args.dir) else f"no local SLURM ran under {args.dir}")
    except ClusterError as exc:
        print(f"slurm_local: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
