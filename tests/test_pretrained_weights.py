"""A pretrained weights folder is data: nothing in it runs (``auto_map`` code, pickles), nothing
outside it or unhashed by DVC is read (an index's shard ``../x``, a symlinked folder, a
``.dvcignore``d file), and damaged tensors (truncated, NaN, integers) stop train in one line
before any step. Each case is a checkpoint the test saves itself: nothing is downloaded."""

from __future__ import annotations

import json
import os
import pickle
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT, run
from safetensors.torch import load_file, save_file
from test_models_hf import RESNET, config_for, hf_params, save_checkpoint
from tiny_training import tiny_section, write_inputs

from mlpipeline.core.errors import PipelineError
from mlpipeline.modeling.files import load_model, save_model
from mlpipeline.modeling.network import ModelConfig, build_model, initial_model
from mlpipeline.stages.train import train

BACKBONE_TENSOR = "resnet.embedder.embedder.convolution.weight"
EVIL_CODE = """\
from pathlib import Path

Path({marker!r}).touch()  # what running this file does: the test looks for the marker

from transformers import ResNetConfig, ResNetForImageClassification


class EvilConfig(ResNetConfig):
    model_type = "evil"


class EvilModel(ResNetForImageClassification):
    pass
"""
AUTO_MAP = {
    "AutoConfig": "configuration_evil.EvilConfig",
    "AutoModelForImageClassification": "configuration_evil.EvilModel",
}


def edit_json(path: Path, **changes: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def with_code(folder: Path, marker: Path) -> Path:
    """``folder``'s config.json names code beside it that touches ``marker`` when it runs, for a
    model type transformers lacks (for one it has, transformers would not ask to run it)."""
    (folder / "configuration_evil.py").write_text(EVIL_CODE.format(marker=str(marker)))
    edit_json(folder / "config.json", auto_map=AUTO_MAP, model_type="evil")
    return folder


def stage_workdir(root: Path, weights: str = "tiny") -> Path:
    """A directory the train stage runs in, with ``train.model.weights: <weights>``."""
    write_inputs(root)
    section = tiny_section(epochs=1, model={"arch": "convnet", "weights": weights})
    (root / "params.yaml").write_text(yaml.safe_dump({"train": section}))
    return root


def stage_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "MLPIPELINE_PROGRESS": "0"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def on_terminal_answering_yes(command: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``command`` with stdin, stdout and stderr on a terminal, answering 'y' to any question
    ending '[y/N] ' as a user might; its exit status and everything it wrote."""
    import pty

    main, secondary = pty.openpty()
    process = subprocess.Popen(
        command, cwd=cwd, env=stage_env(), stdin=secondary, stdout=secondary, stderr=secondary
    )
    os.close(secondary)
    seen, answered, deadline = b"", False, time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 1.0)
        if not ready:
            if process.poll() is not None:
                break
            continue
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: every process holding the terminal has closed it
            break
        if not chunk:
            break
        seen += chunk
        if not answered and seen.rstrip().endswith(b"[y/N]"):
            os.write(main, b"y\n")
            answered = True
    os.close(main)
    text = seen.decode(errors="replace").replace("\r\n", "\n")
    return process.wait(timeout=60), re.sub(r"\x1b\[[0-9;]*m", "", text)  # colorama's reset at exit (dvc)


@pytest.mark.parametrize("way", ["terminal", "pipe"])
def test_code_in_a_weights_folder_never_runs(tmp_path: Path, way: str) -> None:
    """config.json's auto_map names a configuration_*.py beside it: one line, on a terminal (where
    transformers would ask whether to run it, and a user may say yes) and without one."""
    workdir = stage_workdir(tmp_path / "work")
    marker = tmp_path / "MARKER"
    with_code(save_checkpoint(workdir / "data" / "weights" / "tiny"), marker)
    command = [sys.executable, "-m", "mlpipeline.stages.train"]
    if way == "terminal":
        status, output = on_terminal_answering_yes(command, workdir)
    else:
        done = run(command, workdir, check=False, env=stage_env())
        status, output = done.returncode, done.stdout + done.stderr
    assert not marker.exists(), output
    assert status == 2, output
    assert output.strip().splitlines() == [
        "train: error: data/weights/tiny/config.json: names code to run (auto_map: AutoConfig, "
        "AutoModelForImageClassification); code in a weights folder never runs: use a checkpoint of "
        "a model type transformers has built in"
    ], output


def test_model_json_naming_code_never_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model.json (pulled from a remote, or a registry version) whose network names code: refused
    even when a user at a terminal would answer transformers' question with yes."""
    marker = tmp_path / "MARKER"
    code = with_code(save_checkpoint(tmp_path / "code"), marker)
    config = config_for("resnet", RESNET)
    network = {**config.network, "auto_map": AUTO_MAP, "_name_or_path": str(code)}
    save_model(build_model(config), ModelConfig(**{**config.__dict__, "network": network}), tmp_path / "m")
    monkeypatch.setattr("builtins.input", lambda prompt="": "y")
    with pytest.raises(PipelineError, match=r"model.json: network: names code to run \(auto_map: AutoConfig"):
        load_model(tmp_path / "m")
    assert not marker.exists()


def load(folder: Path) -> torch.nn.Module:
    """The network train starts from with the weights of ``folder`` (the arch its own)."""
    return initial_model(config_for("convnet", {}, weights=folder), folder)


def train_refusal(root: Path, weights: str) -> str:
    """The one line train (run in ``root``) stops with, started from ``data/weights/<weights>``."""
    with pytest.raises(PipelineError) as refused:
        train(hf_params(epochs=1, model={"weights": weights}), write_inputs(root), None, root / "c")
    return str(refused.value)


def resave(folder: Path, change) -> dict[str, torch.Tensor]:
    """``folder``'s model.safetensors rewritten with ``change`` applied to its tensors."""
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors")
    return tensors


def shard(folder: Path, shards: dict[str, Path]) -> None:
    """``folder``'s tensors split over the files ``shards`` names (name in the index -> path), in
    turn, with an index in place of model.safetensors."""
    tensors = load_file(folder / "model.safetensors")
    names = sorted(tensors)
    weight_map = {}
    for index, (name, path) in enumerate(shards.items()):
        part = names[index :: len(shards)]
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({key: tensors[key] for key in part}, path)
        weight_map.update(dict.fromkeys(part, name))
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )


def test_a_sharded_checkpoint_loads_every_shard(tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path / "tiny")
    whole = load_file(folder / "model.safetensors")
    shard(folder, {"a.safetensors": folder / "a.safetensors", "b.safetensors": folder / "b.safetensors"})
    model = load(folder)
    assert torch.equal(model.state_dict()[f"net.{BACKBONE_TENSOR}"], whole[BACKBONE_TENSOR])


def test_an_index_naming_a_shard_outside_the_folder_is_refused(tmp_path: Path) -> None:
    """Read, it would change the model while DVC, hashing the folder alone, sees nothing change."""
    folder = save_checkpoint(tmp_path / "weights" / "tiny")
    outside = tmp_path / "outside" / "shard.safetensors"
    shard(folder, {"a.safetensors": folder / "a.safetensors", "../../outside/shard.safetensors": outside})
    with pytest.raises(PipelineError) as refused:
        load(folder)
    assert str(refused.value) == (
        f"{folder}/model.safetensors.index.json: weight_map names '../../outside/shard.safetensors', "
        f"outside {folder}; train reads only the files of the weights folder"
    )


def test_the_weights_file_config_json_names_is_read_if_it_is_inside(tmp_path: Path) -> None:
    """transformers honours config.json's transformers_weights; so does train, inside the folder."""
    folder = save_checkpoint(tmp_path / "weights" / "tiny")
    whole = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").rename(folder / "chosen.safetensors")
    edit_json(folder / "config.json", transformers_weights="chosen.safetensors")
    assert torch.equal(load(folder).state_dict()[f"net.{BACKBONE_TENSOR}"], whole[BACKBONE_TENSOR])
    (folder / "chosen.safetensors").rename(tmp_path / "outside.safetensors")
    edit_json(folder / "config.json", transformers_weights="../../outside.safetensors")
    with pytest.raises(PipelineError) as refused:
        load(folder)
    assert str(refused.value) == (
        f"{folder}/config.json: transformers_weights names '../../outside.safetensors', outside {folder}; "
        "train reads only the files of the weights folder"
    )


def test_a_symlinked_weights_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DVC does not walk into a symlinked folder: retargeting it would go unnoticed."""
    save_checkpoint(tmp_path / "elsewhere")
    (tmp_path / "data" / "weights").mkdir(parents=True)
    (tmp_path / "data" / "weights" / "linked").symlink_to(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)
    assert train_refusal(tmp_path, "linked") == (
        "data/weights: 'linked/config.json' is in the symlinked folder 'linked', whose files DVC does "
        "not hash; train reads only what DVC hashes"
    )


def test_a_shard_in_a_symlinked_subfolder_is_refused(tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path / "tiny")
    shard(
        folder,
        {"a.safetensors": folder / "a.safetensors", "sub/b.safetensors": tmp_path / "out" / "b.safetensors"},
    )
    (folder / "sub").symlink_to(tmp_path / "out")
    with pytest.raises(
        PipelineError, match=r"'tiny/sub/b.safetensors' is in the symlinked folder 'tiny/sub'"
    ):
        load(folder)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DVC repository the stage runs at the root of."""
    (tmp_path / ".dvc").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_dvcignored_weights_file_is_refused(repo: Path) -> None:
    save_checkpoint(repo / "data" / "weights" / "tiny")
    (repo / ".dvcignore").write_text("*.safetensors\n")
    assert train_refusal(repo, "tiny") == (
        "data/weights: 'tiny/model.safetensors' is excluded by .dvcignore, so DVC does not hash it; "
        "train reads only what DVC hashes"
    )


def test_a_dvcignored_preprocessor_config_is_refused(repo: Path) -> None:
    folder = save_checkpoint(repo / "data" / "weights" / "tiny")
    (repo / ".dvcignore").write_text("preprocessor_config.json\n")
    with pytest.raises(PipelineError, match=r"'tiny/preprocessor_config.json' is excluded by .dvcignore"):
        config_for("convnet", {}, weights=folder.relative_to(repo))


def test_integer_checkpoint_tensors_are_refused_not_cast(tmp_path: Path) -> None:
    """An int32 convolution would load as its values cast to floats (val loss 374)."""
    folder = save_checkpoint(tmp_path / "tiny")
    resave(folder, lambda t: t.update({BACKBONE_TENSOR: (t[BACKBONE_TENSOR] * 100).to(torch.int32)}))
    with pytest.raises(PipelineError) as refused:
        load(folder)
    assert str(refused.value) == (
        f"{folder}: tensor {BACKBONE_TENSOR} is int32 in the checkpoint, float32 in the network "
        "(1 such; pretrained weights are floating-point)"
    )


def test_a_checkpoint_saved_from_the_bare_backbone_loads(tmp_path: Path) -> None:
    """Names without the model's prefix (saved from ResNetModel) load; its int64 BatchNorm counts
    land on the network's int64 counts, which is no cast."""
    folder = save_checkpoint(tmp_path / "tiny")
    tensors = resave(folder, lambda t: t.update({k.removeprefix("resnet."): t.pop(k) for k in list(t)}))
    model = load(folder)
    assert torch.equal(
        model.state_dict()[f"net.{BACKBONE_TENSOR}"], tensors[BACKBONE_TENSOR.removeprefix("resnet.")]
    )


def test_a_checkpoint_missing_a_backbone_tensor_is_refused(tmp_path: Path) -> None:
    """Loaded, that layer would train from random initialization without a word."""
    folder = save_checkpoint(tmp_path / "tiny")
    resave(folder, lambda t: t.pop(BACKBONE_TENSOR))
    with pytest.raises(PipelineError) as refused:
        load(folder)
    assert str(refused.value) == f"{folder}: the checkpoint has no tensor {BACKBONE_TENSOR} (1 missing)"


class Touch:
    """Unpickled, it touches a file: what a loaded pickle can do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_folder_of_pickle_weights_only_is_one_line_and_the_pickle_never_loads(tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path / "tiny")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "MARKER"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Touch(marker)))
    with pytest.raises(PipelineError) as refused:
        load(folder)
    assert str(refused.value) == (
        f"{folder}: pickle weights only (pytorch_model.bin), and a pickle is never loaded (unpickling "
        "can run code): convert them to model.safetensors where you trust them (docs/models.md), then "
        "dvc add the folder again"
    )
    assert not marker.exists()


def test_a_folder_without_weights_is_one_line(tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path / "tiny")
    (folder / "model.safetensors").unlink()
    with pytest.raises(PipelineError) as refused:
        load(folder)
    assert str(refused.value) == f"{folder}: no model.safetensors or model.safetensors.index.json"


def test_a_truncated_safetensors_file_is_named(tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path / "tiny")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        PipelineError, match=rf"^{folder}/model.safetensors: not a safetensors file, or truncat"
    ):
        load(folder)


def test_nan_pretrained_weights_stop_before_training_with_their_own_advice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not 'training diverged ... lower train.lr': the weights were damaged before any step."""
    folder = save_checkpoint(tmp_path / "data" / "weights" / "tiny")
    resave(folder, lambda t: t[BACKBONE_TENSOR].view(-1).__setitem__(0, float("nan")))
    monkeypatch.chdir(tmp_path)
    assert train_refusal(tmp_path, "tiny") == (
        f"data/weights/tiny/model.safetensors: tensor {BACKBONE_TENSOR} holds NaN or infinity: these "
        "pretrained weights are damaged (fetch them again, or dvc pull them)"
    )


@pytest.mark.parametrize(
    ("file", "text", "error"),
    [
        ("config.json", "{not json", r"config.json: not JSON \(Expecting property name"),
        ("config.json", "[1, 2]", r"config.json: not a JSON object"),
        ("config.json", '{"depths": [1]}', r"config.json: no model_type: not a transformers config"),
        ("preprocessor_config.json", "{not json", r"preprocessor_config.json: not JSON"),
        ("preprocessor_config.json", '{"image_mean": ["x"], "image_std": [1]}', r"one finite number per"),
        ("preprocessor_config.json", '{"image_mean": 0.5, "image_std": [1]}', r"one finite number per"),
        ("model.safetensors.index.json", '{"weight_map": 3}', r"index.json: weight_map is not"),
    ],
)
def test_a_malformed_json_file_of_the_folder_is_one_line(
    tmp_path: Path, file: str, text: str, error: str
) -> None:
    folder = save_checkpoint(tmp_path / "tiny")
    if file.endswith("index.json"):
        (folder / "model.safetensors").unlink()
    (folder / file).write_text(text)
    with pytest.raises(PipelineError, match=error):
        load(folder)


def test_loading_weights_writes_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    folder = save_checkpoint(tmp_path / "tiny")
    capfd.readouterr()
    load(folder)
    assert capfd.readouterr() == ("", "")


@pytest.mark.slow
def test_the_stage_trains_from_weights_without_transformers_bars(tmp_path: Path) -> None:
    """transformers' own 'Loading weights' bar (carriage returns in a piped log) never shows: the
    stage's stderr is its lines alone, with progress off as with it on."""
    workdir = stage_workdir(tmp_path)
    save_checkpoint(workdir / "data" / "weights" / "tiny")
    for progress in ("0", "1"):
        done = run(
            [sys.executable, "-m", "mlpipeline.stages.train"],
            workdir,
            env={**stage_env(), "MLPIPELINE_PROGRESS": progress},
        )
        assert "Loading weights" not in done.stderr and "\r" not in done.stderr, done.stderr
        assert json.loads((workdir / "models" / "model.json").read_text())["arch"] == "resnet"
