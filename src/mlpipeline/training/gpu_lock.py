"""One GPU, or one set of ``train.processes`` GPUs, per training run on a machine with several.

Without it every run outside torchrun takes ``cuda:0``: ``dvc queue start -j N`` on a box of N
GPUs stacks all N experiments on the first, each sizing its resident data from half of the
memory free at its start, racing the others. A run now takes a lock file per device with
``flock`` before CUDA starts and makes only those devices visible to itself and its workers
(``CUDA_VISIBLE_DEVICES``), so ``cuda:0`` of a run is the device it holds.

Why lock files rather than ``CUDA_VISIBLE_DEVICES`` per queue worker: DVC's queue starts N
identical workers and takes no per-worker environment, and runs started by hand, from other
clones of the repo or from other users of the box compete for the same devices. The kernel
releases a ``flock`` when its process ends, crash and SIGKILL included, so a dead run never
leaves a device taken. The locks live in the machine's temporary directory
(``MLPIPELINE_GPU_LOCK_DIR`` to move them), not in the repository: a queued experiment runs in
a temporary copy of the repo (``.dvc/tmp/exps/...``), and the GPUs belong to the machine.

The rule: a run takes the free devices of lowest index, all it needs at once or none (no two
runs can each hold half of what both need). When too few are free it waits, polling, and says
so once; ``MLPIPELINE_GPU_WAIT`` bounds the wait in seconds (default: no bound, so a queue of
more experiments than GPUs drains one per freed device; 0: fail at once, in one line).

Every user of the box shares the devices, so the lock folder is made like ``/tmp`` (1777: anyone
adds a lock file, nobody removes another's) and a lock file is opened read-only (``flock`` needs
no more) and made 0644 whatever the umask: a second user takes a free GPU whose lock file the
first left. Lock files are never followed through a symbolic link, and a device's name is
percent-encoded into its file name (MIG names hold ``/``).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from mlpipeline.core import settings
from mlpipeline.core.errors import PipelineError

LOCK_DIR_ENV = "MLPIPELINE_GPU_LOCK_DIR"
WAIT_ENV = "MLPIPELINE_GPU_WAIT"
POLL_SECONDS = 1.0
SHARED_FOLDER = 0o1777  # as /tmp: every user adds lock files, none removes another's
LOCK_FILE = 0o644  # read is all flock needs

log = logging.getLogger("train")

_held: list[int] = []  # this process's lock descriptors, open until it exits


def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "mlpipeline-gpu-locks")


def max_wait() -> float | None:
    return settings.seconds(WAIT_ENV, unset="wait as long as it takes")


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (indexes,
    UUIDs or MIG names); counted through NVML, which, unlike CUDA, still lets that variable change.
    torch is imported here, not above, so a run waiting for a device has not paid for it yet."""
    import torch

    count = torch.cuda.device_count()
    raw = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    listed = [name.strip() for name in raw.split(",") if name.strip()]
    if twice := sorted({name for name in listed if listed.count(name) > 1}):
        # a run would wait forever on the lock it holds itself
        raise PipelineError(
            f"CUDA_VISIBLE_DEVICES={raw!r}: names device {twice[0]} twice (list each GPU once)"
        )
    return listed[:count] if listed else [str(index) for index in range(count)]


def hold_gpus(processes: int) -> list[str]:
    """Take ``processes`` of this machine's GPUs for this run and make only them visible; none on
    a machine without CUDA. Held until the process exits."""
    devices = visible_gpus()
    if not devices:
        return []
    if processes > len(devices):
        raise PipelineError(f"train.processes: {processes} processes need as many GPUs, {len(devices)} here")
    taken = claim(devices, processes, lock_dir(), max_wait())
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(taken)
    return taken


def claim(devices: Sequence[str], wanted: int, directory: Path, wait: float | None) -> list[str]:
    """``wanted`` of ``devices`` whose lock files in ``directory`` no other process holds, taken
    together, waiting up to ``wait`` seconds (None: no bound) for them to free up."""
    _make_shared_folder(directory)
    deadline = None if wait is None else time.monotonic() + wait
    said = False
    while True:
        taken = _try_take(devices, wanted, directory)
        if taken is not None:
            return taken
        if deadline is not None and time.monotonic() >= deadline:
            raise PipelineError(
                f"no free GPU: {wanted} wanted, all {len(devices)} held by other training runs (lock files "
                f"in {directory}); waited {wait:g} s ({WAIT_ENV})"
            )
        if not said:
            log.info("waiting for %d free GPU(s): all %d held by other training runs", wanted, len(devices))
            said = True
        time.sleep(POLL_SECONDS)


def _try_take(devices: Sequence[str], wanted: int, directory: Path) -> list[str] | None:
    taken: list[tuple[str, int]] = []
    for device in devices:
        descriptor = _open_lock(directory / f"gpu-{quote(device, safe='')}.lock", directory)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            continue
        taken.append((device, descriptor))
        if len(taken) == wanted:
            _held.extend(descriptor for _, descriptor in taken)
            return [device for device, _ in taken]
    for _, descriptor in taken:  # all or none
        os.close(descriptor)
    return None


def _make_shared_folder(directory: Path) -> None:
    """``directory``, made 1777 (sticky, as ``/tmp``) if this creates it."""
    try:
        directory.mkdir(parents=True)
        directory.chmod(SHARED_FOLDER)
    except FileExistsError:
        if not directory.is_dir():
            raise PipelineError(
                f"{directory}: a file, not a folder for the GPU lock files ({LOCK_DIR_ENV})"
            ) from None
    except NotADirectoryError:
        raise PipelineError(
            f"{directory}: under a file, not a folder for the GPU lock files ({LOCK_DIR_ENV})"
        ) from None


def _open_lock(path: Path, directory: Path) -> int:
    """A read-only descriptor of the lock file ``path``, created 0644 if it is missing."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            descriptor = os.open(path, flags | os.O_CREAT | os.O_EXCL, LOCK_FILE)
            os.fchmod(descriptor, LOCK_FILE)  # whatever this user's umask
        except FileExistsError:
            descriptor = os.open(path, flags)
    except PermissionError:
        raise PipelineError(
            f"{path}: permission denied: every user of these GPUs must be able to add lock files to "
            f"{directory} (chmod 1777 it, or set {LOCK_DIR_ENV} to another folder)"
        ) from None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise PipelineError(f"{path}: a symbolic link, not a GPU lock file (remove it)") from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise PipelineError(f"{path}: not a GPU lock file but a folder or other special file (remove it)")
    return descriptor
