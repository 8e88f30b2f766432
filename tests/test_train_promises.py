"""Training's promises, each tried the way it would break: the checkpoint key sees the val data,
a run resumed after a non-improving epoch ends as the uninterrupted one, a checkpoint that would
run code is never unpickled, and an interrupted stage leaves the previous ``models/`` intact."""

from __future__ import annotations

import ast
import io
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, run
from test_train import report_files, weights_digest
from tiny_model import write_tiny_model
from tiny_training import killed_then_resumed, tiny_params, write_inputs, write_workdir

from mlpipeline.core.shard_writer import DatasetWriter
from mlpipeline.core.shards import Dataset
from mlpipeline.stages.train import train
from mlpipeline.training.checkpoint_store import seal
from mlpipeline.training.data import Inputs, open_inputs

SOURCE = REPO_ROOT / "src" / "mlpipeline"


def history(result) -> list[dict]:
    return [{**record.to_dict(), "seconds": 0} for record in result.trainer.progress.history]


def flip_one_val_pixel(root: Path) -> None:
    """Rewrite the dataset at ``root`` through ``DatasetWriter`` (as a stage would), one val pixel changed."""
    data = Dataset(root)
    splits = {split: tuple(a.copy() for a in data.load(split)) for split in data.info.splits}
    splits["val"][0][0, 0, 0, 0] ^= 1
    with DatasetWriter(root, data.classes, data.image_shape, data.info.attributes) as writer:
        for split, (images, labels) in splits.items():
            writer.write(split, images, labels)


def reopen(root: Path) -> Inputs:
    return open_inputs(root / "data" / "augmented", root / "data" / "ingested")


def test_the_checkpoint_key_covers_the_val_data(tmp_path: Path) -> None:
    params = tiny_params(epochs=2)
    first = train(params, write_inputs(tmp_path), None, tmp_path / "ckpt")
    assert train(params, reopen(tmp_path), None, tmp_path / "ckpt").trainer.resumed_after == 2  # same data

    flip_one_val_pixel(tmp_path / "data" / "ingested")
    changed = train(params, reopen(tmp_path), None, tmp_path / "ckpt")
    assert changed.trainer.resumed_after == 0
    assert changed.checkpoints[-1].key != first.checkpoints[-1].key


def test_a_run_resumed_after_a_non_improving_epoch_ends_as_the_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Early stopping's state (epochs without improvement, the best epoch and its weights) must
    survive the kill, or the resumed run trains on past the epoch the whole one stopped at."""
    params = tiny_params(epochs=30, lr=0.05, early_stopping={"monitor": "val_acc", "patience": 2})
    inputs = write_inputs(tmp_path)
    whole = train(params, inputs, tmp_path / "whole", tmp_path / "ckpt-whole")
    stopped = len(whole.trainer.progress.history)
    assert stopped == whole.best.epoch + 2 < params.epochs  # stopped early: two epochs without a better one

    # Killed as epoch `stopped` begins: the checkpoint of epoch stopped - 1 (no improvement) is on disk.
    resumed = killed_then_resumed(
        monkeypatch,
        params,
        inputs,
        tmp_path / "resumed",
        tmp_path / "ckpt",
        lambda _, epoch: epoch == stopped,
    )

    assert resumed.trainer.resumed_after == stopped - 1
    assert history(resumed) == history(whole)
    assert resumed.best.epoch == whole.best.epoch
    assert weights_digest(resumed.trainer.model) == weights_digest(whole.trainer.model)
    assert report_files(tmp_path / "resumed") == report_files(tmp_path / "whole")  # curves and metrics


class RunsCode:
    """Unpickling this runs ``exec``: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path: Path) -> None:
    params = tiny_params(epochs=2)
    inputs = write_inputs(tmp_path)
    first = train(params, inputs, None, tmp_path / "ckpt")
    marker = tmp_path / "code-ran"
    buffer = io.BytesIO()
    torch.save({**first.trainer.state_dict(), "model": RunsCode(marker)}, buffer)
    # sealed as a real checkpoint is (its checksum holds): only the format can refuse it
    Path(first.checkpoints[-1].path).write_bytes(b"".join(seal(buffer.getvalue())))

    again = train(params, inputs, None, tmp_path / "ckpt")
    assert not marker.exists()
    assert again.trainer.resumed_after == 0  # refused, so trained afresh, to the same weights
    assert weights_digest(again.trainer.model) == weights_digest(first.trainer.model)

    torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)  # the payload is live: unpickled, it runs
    assert marker.read_text() == "ran"


def _calls(tree: ast.AST, module: str, function: str) -> list[ast.Call]:
    """Calls of ``module.function(...)`` (the way src/ spells them)."""
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == function
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == module
    ]


def _keyword(call: ast.Call, name: str) -> object:
    values = [k.value for k in call.keywords if k.arg == name]
    return values[0].value if values and isinstance(values[0], ast.Constant) else None


def _imports(node: ast.AST) -> list[str]:
    """Dotted names an import statement binds: ``import a.b`` -> a.b; ``from a import b`` -> a, a.b."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module:
        return [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return []


PICKLERS = {"pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def test_nothing_in_src_can_unpickle() -> None:
    """No torch.load at all (checkpoints are safetensors and JSON, as they may come back from a
    bucket), no pickle module, no np.load of pickles."""
    problems, torch_loads = [], 0
    for path in sorted(SOURCE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(REPO_ROOT)
        for call in _calls(tree, "torch", "load"):
            torch_loads += 1
            if _keyword(call, "weights_only") is not True:
                problems.append(f"{where}:{call.lineno}: torch.load without weights_only=True")
        for call in _calls(tree, "np", "load"):
            if _keyword(call, "allow_pickle") is not None:
                problems.append(f"{where}:{call.lineno}: np.load with allow_pickle")
        for node in ast.walk(tree):
            for name in _imports(node):
                if name.split(".")[0] in PICKLERS or name == "torch.load":
                    problems.append(f"{where}:{node.lineno}: imports {name}")
    assert problems == []
    assert torch_loads == 0


INTERRUPT_WRITING_MODEL_JSON = """
import os, runpy, signal, sys
from mlpipeline.core import atomic

# Ctrl-C as in a terminal: a test runner started in the background (``cmd &``) has SIGINT
# ignored, and its children inherit that, so Python would install no handler of its own.
signal.signal(signal.SIGINT, signal.default_int_handler)

write_bytes = atomic.write_bytes
dying_by = getattr(signal, sys.argv.pop(1))  # the stage itself takes no arguments

def write_bytes_then_die_at_model_json(path, data):
    if os.path.basename(path) == "model.json":
        os.kill(os.getpid(), dying_by)
    write_bytes(path, data)

atomic.write_bytes = write_bytes_then_die_at_model_json
runpy.run_module("mlpipeline.stages.train", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize(("signal", "exit_code"), [("SIGINT", 130), ("SIGKILL", -9)])
def test_a_train_stage_interrupted_while_writing_model_json_leaves_the_previous_models(
    tmp_path: Path, signal: str, exit_code: int
) -> None:
    workdir = write_workdir(tmp_path, epochs=1)
    write_tiny_model(workdir / "models")
    previous = report_files(workdir / "models")

    result = run([sys.executable, "-c", INTERRUPT_WRITING_MODEL_JSON, signal], workdir, check=False)
    assert result.returncode == exit_code, result.stderr
    assert report_files(workdir / "models") == previous  # no new weights beside the old model.json
    leftovers = [p.name for p in workdir.iterdir() if p.name.startswith(".models")]
    if signal == "SIGINT":  # cleaned up on the way out; a SIGKILL leaves it to the next run
        assert leftovers == []
