"""One GPU per training run: N stand-in devices, N + 1 runs, each in its own process, as
`dvc queue start -j N+1` would start them. The extra run waits for a device to free up, or,
with MLPIPELINE_GPU_WAIT=0, fails at once in one line; a killed run frees its device."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT

from mlpipeline.core.errors import PipelineError
from mlpipeline.training import gpu_lock

DEVICES = ["0", "1"]  # stand-ins: the lock knows devices by name only

HOLDER = """
import sys
from mlpipeline.core import stage
from mlpipeline.training.gpu_lock import claim, max_wait

def body():
    taken = claim({devices!r}, {wanted}, __import__("pathlib").Path({directory!r}), max_wait())
    print(",".join(taken), flush=True)
    sys.stdin.read()  # hold until the test closes stdin (or kills this run)

stage.run("train", body)
"""


def hold(directory: Path, wanted: int = 1, wait: str = "", devices: list[str] = DEVICES) -> subprocess.Popen:
    """A run that takes ``wanted`` devices and holds them until its stdin closes."""
    code = HOLDER.format(devices=devices, wanted=wanted, directory=str(directory))
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(REPO_ROOT / "src"), gpu_lock.WAIT_ENV: wait},
    )


def taken(run: subprocess.Popen) -> str:
    return run.stdout.readline().strip()


def test_n_devices_serve_n_runs_and_the_next_waits_or_fails_in_one_line(tmp_path: Path) -> None:
    first, second = hold(tmp_path), hold(tmp_path)
    assert sorted([taken(first), taken(second)]) == DEVICES  # one device each

    refused = hold(tmp_path, wait="0")
    _, error = refused.communicate(timeout=60)
    assert refused.returncode == 2
    assert error.splitlines() == [
        f"train: error: no free GPU: 1 wanted, all 2 held by other training runs (lock files in {tmp_path}); "
        f"waited 0 s ({gpu_lock.WAIT_ENV})"
    ]

    waiting = hold(tmp_path)  # no bound: waits, as a queued experiment should
    first.stdin.close()  # the first run ends normally
    first.wait(timeout=60)
    freed = taken(waiting)
    assert freed in DEVICES

    second.kill()  # a crash: the kernel drops its lock
    second.wait(timeout=60)
    after_crash = hold(tmp_path, wait="30")
    assert {taken(after_crash), freed} == set(DEVICES)
    for run in (waiting, after_crash):
        run.stdin.close()
        run.wait(timeout=60)


def test_a_set_of_devices_is_taken_whole_or_not_at_all(tmp_path: Path) -> None:
    devices = ["0", "1", "2"]
    one = hold(tmp_path, devices=devices)
    assert taken(one) == "0"
    pair = hold(tmp_path, wanted=2, devices=devices)
    assert taken(pair) == "1,2"
    refused = hold(tmp_path, wanted=2, wait="0", devices=devices)
    assert refused.wait(timeout=60) == 2  # one free device is not a pair: none taken
    assert hold(tmp_path, wait="0", devices=devices).wait(timeout=60) == 2  # all 3 held
    for run in (one, pair):
        run.stdin.close()
        run.wait(timeout=60)


@pytest.mark.parametrize(("count", "visible"), [(0, None), (1, "0"), (2, "0")])
def test_cpu_takes_no_lock_and_a_first_run_keeps_device_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int, visible: str | None
) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setenv(gpu_lock.LOCK_DIR_ENV, str(tmp_path / "locks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(gpu_lock, "_held", [])
    gpu_lock.hold_gpus(1)

    assert gpu_lock.os.environ.get("CUDA_VISIBLE_DEVICES") == visible
    assert (tmp_path / "locks").exists() == (count > 0)  # CPU: nothing written anywhere
    for descriptor in gpu_lock._held:
        gpu_lock.os.close(descriptor)


@pytest.mark.parametrize("value", ["x", "-1", "nan"])
def test_a_bad_wait_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(gpu_lock.WAIT_ENV, value)
    with pytest.raises(PipelineError, match=f"^MLPIPELINE_GPU_WAIT='{value}': must be a number of seconds"):
        gpu_lock.max_wait()


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """This process's lock descriptors for the test, closed after it (released)."""
    descriptors: list[int] = []
    monkeypatch.setattr(gpu_lock, "_held", descriptors)
    yield descriptors
    for descriptor in descriptors:
        os.close(descriptor)


def test_a_set_not_all_free_leaves_every_device_free(tmp_path: Path, held: list[int]) -> None:
    """A run needing 2 GPUs that finds 1 free must not keep it: it could not take it again itself
    once the other frees, and a 1-GPU run would be refused meanwhile."""
    other = hold(tmp_path, devices=["1"])
    assert taken(other) == "1"
    with pytest.raises(PipelineError, match=r"^no free GPU: 2 wanted"):
        gpu_lock.claim(DEVICES, 2, tmp_path, wait=0)

    one = hold(tmp_path, wait="0", devices=["0"])
    assert taken(one) == "0"  # device 0 was left free
    one.stdin.close()
    other.stdin.close()
    assert (one.wait(timeout=60), other.wait(timeout=60)) == (0, 0)
    assert gpu_lock.claim(DEVICES, 2, tmp_path, wait=0) == DEVICES  # the retry takes both


def test_a_device_named_twice_is_refused_not_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: list[int]
) -> None:
    """`CUDA_VISIBLE_DEVICES=0,0` with 2 processes waited forever on the lock it held itself."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv(gpu_lock.LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,0")
    monkeypatch.setenv(gpu_lock.WAIT_ENV, "1")  # a bound on the wait, for this test's sake
    with pytest.raises(PipelineError, match=r"^CUDA_VISIBLE_DEVICES='0,0': names device 0 twice"):
        gpu_lock.hold_gpus(2)


def test_a_mig_device_name_with_slashes_gets_one_lock_file(tmp_path: Path, held: list[int]) -> None:
    mig = "MIG-GPU-5f4c27a3-8b1e-4d5a-9c2e-1f0e3d4b5a69/1/0"
    assert gpu_lock.claim([mig], 1, tmp_path, wait=0) == [mig]
    assert [path.name for path in tmp_path.iterdir()] == [
        "gpu-MIG-GPU-5f4c27a3-8b1e-4d5a-9c2e-1f0e3d4b5a69%2F1%2F0.lock"
    ]


def file_in_the_way(root: Path) -> Path:
    (root / "file").write_text("")
    return root / "file"


@pytest.mark.parametrize(
    ("place", "message"),
    [
        (lambda root: file_in_the_way(root), "a file, not a folder for the GPU lock files"),
        (lambda root: file_in_the_way(root) / "locks", "under a file, not a folder for the GPU lock files"),
    ],
    ids=["a file", "under a file"],
)
def test_a_lock_folder_that_cannot_be_one_is_one_line(
    tmp_path: Path, held: list[int], place, message
) -> None:
    directory = place(tmp_path)
    with pytest.raises(
        PipelineError, match=f"^{re.escape(f'{directory}: {message} (MLPIPELINE_GPU_LOCK_DIR)')}$"
    ):
        gpu_lock.claim(DEVICES, 1, directory, wait=0)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: path.mkdir(), "not a GPU lock file but a folder or other special file (remove it)"),
        (
            lambda path: path.symlink_to(path.parent / "elsewhere"),
            "a symbolic link, not a GPU lock file (remove it)",
        ),
    ],
    ids=["folder", "symlink"],
)
def test_a_lock_file_that_is_not_one_is_one_line(tmp_path: Path, held: list[int], make, message) -> None:
    lock = tmp_path / "gpu-0.lock"
    make(lock)
    with pytest.raises(PipelineError, match=f"^{re.escape(f'{lock}: {message}')}$"):
        gpu_lock.claim(DEVICES, 1, tmp_path, wait=0)
    assert not (tmp_path / "elsewhere").exists()  # never created through the link


def test_the_lock_folder_and_files_are_open_to_every_user_whatever_the_umask(
    tmp_path: Path, held: list[int]
) -> None:
    previous = os.umask(0o077)
    try:
        gpu_lock.claim(DEVICES, 1, tmp_path / "locks", wait=0)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "locks").stat().st_mode) == 0o1777  # as /tmp
    assert stat.S_IMODE((tmp_path / "locks" / "gpu-0.lock").stat().st_mode) == 0o644


@pytest.mark.skipif(os.geteuid() != 0, reason="becoming a second user needs root")
def test_a_second_user_takes_a_free_device_the_first_one_left_a_lock_file_for() -> None:
    """docs/multinode.md: the users of a box share its GPUs. The first user's run has ended; the
    second (nobody, in a forked process) takes both devices, one lock file the first left."""
    with tempfile.TemporaryDirectory() as shared:  # not tmp_path: its parents are closed to others
        os.chmod(shared, 0o755)
        directory = Path(shared) / "locks"
        first = gpu_lock.claim(["0"], 1, directory, wait=0)
        assert first == ["0"]
        os.close(gpu_lock._held.pop())  # the first run ends

        pid = os.fork()
        if pid == 0:  # the second user
            code = 3
            try:
                os.setgid(65534)
                os.setuid(65534)
                code = 0 if gpu_lock.claim(DEVICES, 2, directory, wait=0) == DEVICES else 4
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
