"""Preemption: a run stopped by SIGTERM or SIGUSR1 at any step saves a checkpoint there and ends
with exit 250; run again, it resumes within that epoch and ends bitwise equal to a run never
stopped, on CPU, with its data resident, streamed or augmented online, and under DDP. Checkpoints
are also taken every N steps, and a checkpoint that is not whole is never read."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from itertools import count
from pathlib import Path

import psutil
import pytest
import torch
from conftest import REPO_ROOT, run
from gloo import two_gloo_ranks
from test_train import report_files, weights_digest
from test_train_stage import STAGE, outputs
from tiny_training import RECIPE, tiny_params, write_inputs, write_online_inputs, write_workdir

from mlpipeline.core.errors import PipelineError
from mlpipeline.stages.train import Trained, train
from mlpipeline.training import stopping
from mlpipeline.training.checkpoint_store import LOCATION_ENV, LocalStore, open_store, seal, unseal
from mlpipeline.training.data import open_inputs
from mlpipeline.training.distributed import World
from mlpipeline.training.loader import PLACEMENT_ENV
from mlpipeline.training.savepoints import MINUTES_ENV, STEPS_ENV, SaveEvery, Savepoints, save_every
from mlpipeline.training.state_codec import decode
from mlpipeline.training.stopping import EXIT_REQUEUE, Stopped

EPOCHS = 3


def history(result: Trained) -> list[dict]:
    return [{**record.to_dict(), "seconds": 0} for record in result.trainer.progress.history]


def signal_at(monkeypatch: pytest.MonkeyPatch, step: int, signum: signal.Signals = signal.SIGTERM) -> None:
    """Send this process ``signum`` at the boundary after the ``step``-th optimizer step of the run
    (counted across phases), as a launcher's notice would arrive in the middle of an epoch."""
    steps, after_step = count(1), Savepoints.after_step

    def signalled(self: Savepoints, *args: object) -> None:
        if next(steps) == step:
            signal.raise_signal(signum)  # delivered to this thread, before the call returns
        after_step(self, *args)

    monkeypatch.setattr(Savepoints, "after_step", signalled)


def count_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that ends up holding one item per optimizer step the next run takes."""
    taken, after_step = [], Savepoints.after_step

    def counted(self: Savepoints, *args: object) -> None:
        taken.append(1)
        after_step(self, *args)

    monkeypatch.setattr(Savepoints, "after_step", counted)
    return taken


def stopped_then_resumed(
    monkeypatch: pytest.MonkeyPatch, params, inputs, tmp_path: Path, step: int, signum: signal.Signals
) -> tuple[Stopped, Trained]:
    with monkeypatch.context() as patch, stopping.watch(), pytest.raises(Stopped) as stopped:
        signal_at(patch, step, signum)
        train(params, inputs, tmp_path / "resumed", tmp_path / "ckpt")
    return stopped.value, train(params, inputs, tmp_path / "resumed", tmp_path / "ckpt")


@pytest.mark.parametrize("placement", ["resident", "streamed", "online"])
def test_a_run_stopped_by_sigterm_at_a_random_step_resumes_bitwise_equal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, placement: str
) -> None:
    if placement == "online":
        inputs = write_online_inputs(tmp_path, synthetic_per_class=10)
    else:
        inputs = write_inputs(tmp_path, synthetic_per_class=10)  # two phases: pretrain, then train
        monkeypatch.setenv(PLACEMENT_ENV, placement)
    params = tiny_params(epochs=EPOCHS)
    with monkeypatch.context() as patch:
        steps = count_steps(patch)
        whole = train(params, inputs, tmp_path / "whole", tmp_path / "ckpt-whole")
    step = random.randint(1, len(steps))

    stopped, resumed = stopped_then_resumed(monkeypatch, params, inputs, tmp_path, step, signal.SIGTERM)
    assert stopped.exit_code == EXIT_REQUEUE
    assert str(stopped).startswith("stopped by SIGTERM in epoch "), str(stopped)
    assert resumed.trainer.resumed or len(whole.phases) > 1, f"stopped at step {step}"
    assert weights_digest(resumed.trainer.model) == weights_digest(whole.trainer.model), f"step {step}"
    assert history(resumed) == history(whole), f"stopped at step {step}"
    assert report_files(tmp_path / "resumed") == report_files(tmp_path / "whole")


def test_sigusr1_stops_like_sigterm_and_the_message_says_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = write_inputs(tmp_path)
    params = tiny_params(epochs=2)  # 7 steps an epoch
    stopped, resumed = stopped_then_resumed(monkeypatch, params, inputs, tmp_path, 10, signal.SIGUSR1)
    checkpoint = resumed.checkpoints[-1]
    assert str(stopped) == (
        f"stopped by SIGUSR1 in epoch 2 of the train phase after step 3 of 7: checkpoint saved to "
        f"{checkpoint.path}; run again to resume (exit {EXIT_REQUEUE})"
    )
    assert (resumed.trainer.resumed_after, resumed.trainer.resumed_step) == (1, 3)
    whole = train(params, inputs, None, tmp_path / "ckpt-whole")
    assert weights_digest(resumed.trainer.model) == weights_digest(whole.trainer.model)


def test_with_monitor_last_a_checkpoint_holds_the_weights_once_and_resumes_bitwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``early_stopping.monitor: last`` the best epoch is the last one done, whose weights are
    the model's: a checkpoint holds them once (not as "best weights" too), and a run resumes to
    the same bytes from within an epoch and from the end of the last one."""
    inputs = write_inputs(tmp_path)
    params = tiny_params(epochs=2, early_stopping={"monitor": "last", "patience": None})  # 7 steps an epoch
    whole = train(params, inputs, None, tmp_path / "ckpt-whole")
    with monkeypatch.context() as patch, stopping.watch(), pytest.raises(Stopped):
        signal_at(patch, 10)  # in epoch 2, after epoch 1 became the best
        train(params, inputs, None, tmp_path / "ckpt")
    (saved,) = (tmp_path / "ckpt").glob(f"*/{Path(whole.checkpoints[-1].path).name}")
    state = decode(unseal(saved.read_bytes(), str(saved)))
    assert (state["best_epoch"], state["best_weights"], state["within_epoch"]["step"]) == (1, {}, 3)

    resumed = train(params, inputs, None, tmp_path / "ckpt")
    finished = train(params, inputs, None, tmp_path / "ckpt-whole")  # its checkpoint: after the last epoch
    assert (resumed.trainer.resumed_step, finished.trainer.resumed_after) == (3, 2)
    for again in (resumed, finished):
        assert weights_digest(again.trainer.model) == weights_digest(whole.trainer.model)


@pytest.mark.parametrize("monitor", ["val_loss", "last"])
def test_the_photo_recipe_stopped_within_an_epoch_resumes_bitwise_equal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, monitor: str
) -> None:
    """With the weight average, accumulation, clipping, class weights and mixing on, a stop saves
    between optimizer steps only (never with half a step's gradients summed), the averaged weights
    are the ones kept apart with ``monitor: last`` too, and the resumed run ends on the same bytes."""
    inputs = write_online_inputs(tmp_path)
    early_stopping = {"monitor": monitor, "patience": None}
    params = tiny_params(epochs=2, early_stopping=early_stopping, **RECIPE)  # 2 batches a step
    with monkeypatch.context() as patch:
        steps = count_steps(patch)
        whole = train(params, inputs, tmp_path / "whole", tmp_path / "ckpt-whole")
    assert len(steps) == 2 * whole.trainer.steps_per_epoch  # one boundary a step, not a batch
    step = whole.trainer.steps_per_epoch + 1  # in epoch 2, after epoch 1 became the best
    with monkeypatch.context() as patch, stopping.watch(), pytest.raises(Stopped):
        signal_at(patch, step)
        train(params, inputs, tmp_path / "resumed", tmp_path / "ckpt")
    (saved,) = (tmp_path / "ckpt").glob(f"*/{Path(whole.checkpoints[-1].path).name}")
    state = decode(unseal(saved.read_bytes(), str(saved)))
    assert state["within_epoch"]["step"] == 2  # batches: the first optimizer step's two
    assert state["best_weights"]  # the average's, which the model's weights are not

    resumed = train(params, inputs, tmp_path / "resumed", tmp_path / "ckpt")
    assert resumed.trainer.resumed_step == 2
    assert weights_digest(resumed.trainer.model) == weights_digest(whole.trainer.model)
    assert history(resumed) == history(whole)


def test_checkpoints_every_n_steps_let_a_killed_run_resume_within_the_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = write_inputs(tmp_path)
    params = tiny_params(epochs=2)
    monkeypatch.setenv(STEPS_ENV, "3")
    saved = []
    with monkeypatch.context() as patch:
        save = Savepoints._save

        def killed_after_the_second(self: Savepoints, state, when: str, say: bool) -> None:
            save(self, state, when, say)
            saved.append(when)
            if len(saved) == 2:
                raise KeyboardInterrupt  # a kill -9: nothing runs after the save

        patch.setattr(Savepoints, "_save", killed_after_the_second)
        with pytest.raises(KeyboardInterrupt):
            train(params, inputs, None, tmp_path / "ckpt", every=save_every())
    assert saved == [
        "in epoch 1 of the train phase after step 3 of 7",
        "in epoch 1 of the train phase after step 6 of 7",
    ]

    resumed = train(params, inputs, None, tmp_path / "ckpt", every=save_every())
    assert (resumed.trainer.resumed_after, resumed.trainer.resumed_step) == (0, 6)
    whole = train(params, inputs, None, tmp_path / "ckpt-whole")
    assert weights_digest(resumed.trainer.model) == weights_digest(whole.trainer.model)


def test_a_stop_signal_before_the_first_step_stops_at_the_first(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path)
    with stopping.watch(), pytest.raises(Stopped, match="after step 1 of 7"):
        signal.raise_signal(signal.SIGTERM)
        train(tiny_params(epochs=2), inputs, None, tmp_path / "ckpt")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            MINUTES_ENV,
            "soon",
            f"{MINUTES_ENV}='soon': must be a number of minutes >= 0 and <= 10080 (unset: 10",
        ),
        (MINUTES_ENV, "-1", f"{MINUTES_ENV}='-1': must be a number of minutes >= 0"),
        (STEPS_ENV, "0", f"{STEPS_ENV}='0': must be a whole number >= 1"),
        (STEPS_ENV, "1.5", f"{STEPS_ENV}='1.5': must be a whole number >= 1"),
    ],
)
def test_a_bad_checkpoint_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(PipelineError, match=f"^{re.escape(message)}"):
        save_every()


def test_the_timer_and_the_step_count_read_as_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MINUTES_ENV, raising=False)
    monkeypatch.delenv(STEPS_ENV, raising=False)
    assert save_every() == SaveEvery(600.0, None)  # every 10 minutes by default
    monkeypatch.setenv(MINUTES_ENV, "0")
    monkeypatch.setenv(STEPS_ENV, "500")
    assert save_every() == SaveEvery(None, 500)


def test_a_half_written_checkpoint_is_never_read(tmp_path: Path) -> None:
    """A write killed midway leaves its temporary beside the last whole checkpoint, which is the one
    read; a checkpoint cut short or damaged where it lies (a copy that stopped) is refused by its
    checksum, and the run starts afresh rather than from it."""
    inputs = write_inputs(tmp_path)
    params = tiny_params(epochs=2)
    first = train(params, inputs, None, tmp_path / "ckpt")
    latest = Path(first.checkpoints[-1].path)
    whole = latest.read_bytes()
    latest.with_name(f".{latest.name}.tmp-{os.uname().nodename}-999999").write_bytes(whole[: len(whole) // 2])
    assert train(params, inputs, None, tmp_path / "ckpt").trainer.resumed_after == 2  # the whole one

    for damaged in (whole[: len(whole) // 2], whole[:-1] + bytes([whole[-1] ^ 1])):
        latest.write_bytes(damaged)
        again = train(params, inputs, None, tmp_path / "ckpt")
        assert not again.trainer.resumed
        assert weights_digest(again.trainer.model) == weights_digest(first.trainer.model)


def test_the_store_reads_back_what_it_wrote_and_refuses_a_bad_location(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.write("key/latest.ckpt", seal(b"state"))
    assert (
        unseal(store.read("key/latest.ckpt"), "key") == b"state" and store.read("other/latest.ckpt") is None
    )
    store.remove("key")
    assert not (tmp_path / "key").exists()
    for bad in ("gs://bucket/checkpoints", "s3://", "https://example.com/x"):
        with pytest.raises(PipelineError, match=f"^{LOCATION_ENV}=.*: must be a folder"):
            open_store(bad)


def test_a_queued_experiments_checkpoints_live_in_the_repository_that_queued_it(tmp_path: Path) -> None:
    """DVC runs a queued experiment in <repo>/.dvc/tmp/exps/<queue>/<copy>, removed when it ends."""
    copy = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "celery" / "tmpab12cd"
    copy.mkdir(parents=True)
    assert open_store("", copy).root == tmp_path / "repo" / ".cache" / "checkpoints"
    assert open_store("shared/ckpt", copy).root == tmp_path / "repo" / "shared" / "ckpt"
    assert open_store("", tmp_path / "repo").root == tmp_path / "repo" / ".cache" / "checkpoints"
    assert open_store(tmp_path / "abs", copy).root == tmp_path / "abs"


def _rank_trains(rank: int, port: int, root: Path, name: str, stop_step: int) -> None:
    """One of two gloo ranks training on ``root``'s inputs into ``root/ckpt-<name>``; rank 1 is
    sent SIGTERM at ``stop_step`` (0: never). Exits 250 when stopped; else writes its weights'
    digest, where it resumed and how many steps it took."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    world = World(rank=rank, size=2, local_rank=rank, local_size=2)
    inputs = open_inputs(root / "data" / "augmented", root / "data" / "ingested")
    with pytest.MonkeyPatch.context() as patch, stopping.watch():
        steps = count_steps(patch)
        if stop_step and rank == 1:
            signal_at(patch, stop_step)
        try:
            result = train(
                tiny_params(processes=2, epochs=EPOCHS), inputs, None, root / f"ckpt-{name}", world
            )
        except Stopped:
            sys.exit(EXIT_REQUEUE)
    trainer = result.trainer
    digest = weights_digest(trainer.model)
    (root / f"{name}-{rank}.run").write_text(
        f"{digest} {trainer.resumed_after} {trainer.resumed_step} {len(steps)}"
    )


def ran(root: Path, name: str) -> list[list[str]]:
    """Each rank's digest, epochs and steps resumed after, and steps taken."""
    return [(root / f"{name}-{rank}.run").read_text().split() for rank in range(2)]


@pytest.mark.slow
def test_ddp_ranks_stopped_by_sigterm_on_one_rank_resume_bitwise_equal(tmp_path: Path) -> None:
    write_inputs(tmp_path, synthetic_per_class=10)
    assert two_gloo_ranks(_rank_trains, tmp_path, "whole", 0) == [0, 0]
    whole = ran(tmp_path, "whole")
    assert whole[0][0] == whole[1][0]

    step = random.randint(1, int(whole[1][3]))
    assert two_gloo_ranks(_rank_trains, tmp_path, "stopped", step) == [EXIT_REQUEUE, EXIT_REQUEUE], step
    assert two_gloo_ranks(_rank_trains, tmp_path, "stopped", 0) == [0, 0], step
    resumed = ran(tmp_path, "stopped")
    assert [digest for digest, *_ in resumed] == [whole[0][0]] * 2, f"stopped at step {step}"
    assert resumed[0][1:3] == resumed[1][1:3], f"ranks resumed apart: {resumed}"


def test_the_state_holds_no_pickle_and_keeps_what_json_would_lose() -> None:
    from mlpipeline.training.state_codec import StateFormatError, decode, encode

    state = {"state": {0: {"step": torch.tensor(3.0)}}, "betas": (0.9, 0.999), "best": float("inf")}
    shared = torch.arange(4)
    back = decode(encode({**state, "a": shared, "b": shared}))
    assert back["state"][0]["step"].item() == 3.0 and back["betas"] == (0.9, 0.999)
    assert back["best"] == float("inf") and torch.equal(back["a"], back["b"])
    with pytest.raises(StateFormatError):
        decode(b"\x80\x04K\x01.")  # a pickle


def start_stage(workdir: Path, log: Path, **env: str) -> subprocess.Popen:
    """The train stage as a user starts it, in its own session (torchrun's workers have theirs)."""
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), **env}
    with open(log, "w") as out:
        return subprocess.Popen(
            STAGE, cwd=workdir, env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_for_line(process: subprocess.Popen, log: Path, text: str) -> None:
    deadline = time.monotonic() + 300
    while text not in log.read_text():
        assert process.poll() is None, f"ended before {text!r}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} after 5 minutes"
        time.sleep(0.05)


def workers(process: subprocess.Popen) -> list[psutil.Process]:
    """The training processes torchrun started under ``process``, by rank."""
    found = [p for p in psutil.Process(process.pid).children(recursive=True) if "LOCAL_RANK" in p.environ()]
    return sorted(found, key=lambda p: int(p.environ()["RANK"]))


@pytest.mark.slow
def test_the_stage_under_torchrun_stopped_by_sigterm_resumes_to_the_same_bytes(tmp_path: Path) -> None:
    whole = write_workdir(tmp_path / "whole", processes=2, epochs=6)
    run(STAGE, whole)
    stopped = write_workdir(tmp_path / "stopped", processes=2, epochs=6)
    first = start_stage(stopped, tmp_path / "first.log")
    wait_for_line(first, tmp_path / "first.log", "train: epoch 1/")
    time.sleep(random.uniform(0, 0.3))  # a random step of the epochs that follow
    first.send_signal(signal.SIGTERM)  # to the launcher, as kubelet sends it to a pod's first process

    assert first.wait(timeout=300) == EXIT_REQUEUE, (tmp_path / "first.log").read_text()
    last = (tmp_path / "first.log").read_text().splitlines()[-1]
    assert re.fullmatch(
        r"train: stopped by SIGTERM (in|after) epoch \d .*; run again to resume \(exit 250\)", last
    )
    assert "Traceback" not in (tmp_path / "first.log").read_text() and not (stopped / "models").exists()
    resumed = run(STAGE, stopped)
    assert "resuming after epoch" in resumed.stderr and ", resumed after epoch" in resumed.stderr
    assert outputs(stopped) == outputs(whole)


@pytest.mark.slow
def test_a_training_process_killed_is_one_line_naming_it_and_no_traceback(tmp_path: Path) -> None:
    workdir = write_workdir(tmp_path, processes=2, epochs=30)
    stage_run = start_stage(workdir, tmp_path / "log")
    wait_for_line(stage_run, tmp_path / "log", "train: epoch 1/")
    workers(stage_run)[1].kill()

    assert stage_run.wait(timeout=300) == 2
    text = (tmp_path / "log").read_text()
    assert "Traceback" not in text and "[rank" not in text, text
    assert (
        text.splitlines()[-1]
        == "train: error: the training process of rank 1 was killed by SIGKILL (out of memory?)"
    )
