"""One GPU per training run: N stand-in devices, N + 1 runs, each in its own process, as
`dvc queue start -j N+1` would start them. The extra run waits for a device to free up, or,
with MLPIPELINE_GPU_WAIT=0, fails at once in one line; a killed run frees its device."""

from __future__ import annotations

import subprocess
import sys
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
