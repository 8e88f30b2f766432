"""A model directory that cannot be used is refused in one line naming the file, by predict (with
its own exit code) and evaluate alike: damaged weights, a bad model.json, and a model.json that
does not match the weights beside it, even where no tensor shape would tell."""

from __future__ import annotations

import io
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from conftest import repo_params, run
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_model import tiny_images, tiny_model, write_tiny_dataset, write_tiny_model

from mlpipeline.core.params import from_mapping
from mlpipeline.modeling.files import EXIT_MODEL_UNUSABLE, ModelError, load_model, save_model
from mlpipeline.stages.evaluate import EvaluateParams, evaluate

Damage = Callable[[Path], None]


def edit_config(**changes: object) -> Damage:
    def damage(models: Path) -> None:
        path = models / "model.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    return damage


def write_weights(tensors: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> Damage:
    """Rewrite model.safetensors with ``tensors(current)`` and no recorded config (as before it existed)."""

    def damage(models: Path) -> None:
        path = models / "model.safetensors"
        save_file(tensors(load_file(path)), path)

    return damage


def poison(name: str, value: float) -> Damage:
    """One value of tensor ``name`` set to ``value``, the recorded config kept: what a diverged
    run would have saved."""

    def damage(models: Path) -> None:
        path = models / "model.safetensors"
        with safe_open(path, framework="pt") as weights:
            metadata = weights.metadata()
        tensors = load_file(path)
        tensors[name].view(-1)[0] = value
        save_file(tensors, path, metadata=metadata)

    return damage


def replace_file(name: str, data: Callable[[bytes], bytes]) -> Damage:
    def damage(models: Path) -> None:
        path = models / name
        path.write_bytes(data(path.read_bytes()))

    return damage


def drop_from_config(key: str) -> Damage:
    def damage(models: Path) -> None:
        path = models / "model.json"
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != key}))

    return damage


def pickled_weights(models: Path) -> None:
    """What torch.save writes: a zip of pickles, under the safetensors name."""
    buffer = io.BytesIO()
    torch.save(load_file(models / "model.safetensors"), buffer)
    (models / "model.safetensors").write_bytes(buffer.getvalue())


def weights_of_a_wider_network(models: Path) -> None:
    """model.json and weights of a network with 16 channels, then the 8-channel model.json back."""
    original = (models / "model.json").read_text()
    model, config = tiny_model(steps=0)
    wider = type(config)(**{**config.__dict__, "widths": [16]})
    save_model(type(model)(wider), wider, models)
    (models / "model.json").write_text(original)


W, C = "models/model.safetensors", "models/model.json"
NOT_SAFETENSORS = "not a safetensors file, or truncated or damaged"
CASES: dict[str, tuple[Damage, str]] = {
    "empty weights": (
        replace_file("model.safetensors", lambda _: b""),
        f"{W}: {NOT_SAFETENSORS} (Error while deserializing header: header too small)",
    ),
    "truncated weights": (
        replace_file("model.safetensors", lambda data: data[:-100]),
        f"{W}: {NOT_SAFETENSORS} (Error while deserializing header: incomplete metadata, file not",
    ),
    "a PNG as weights": (
        replace_file("model.safetensors", lambda _: _png()),
        f"{W}: {NOT_SAFETENSORS} (Error while deserializing header: header too large)",
    ),
    "torch.save pickle as weights": (
        pickled_weights,
        f"{W}: {NOT_SAFETENSORS} (",
    ),
    "widths a string": (
        edit_config(widths="abc"),
        f"{C}: not a valid model config: widths: Input should be a valid array (got 'abc')",
    ),
    "dropout a string": (
        edit_config(dropout="0.1"),
        f"{C}: not a valid model config: dropout: Input should be a valid number (got '0.1')",
    ),
    "a negative size": (
        edit_config(image_shape=[1, -8, 8]),
        f"{C}: not a valid model config: image_shape.1: Input should be greater than or equal to 1 (got -8)",
    ),
    "a missing field": (drop_from_config("std"), f"{C}: not a valid model config: std: Field required"),
    "an unknown field": (
        edit_config(width=[8]),
        f"{C}: not a valid model config: width: Unexpected keyword argument (got [8])",
    ),
    "mean for two channels": (
        edit_config(mean=[0.5, 0.5]),
        f"{C}: not a valid model config: mean and std need one value per channel (1), got [0.5, 0.5], [",
    ),
    "model.json not JSON": (
        replace_file("model.json", lambda data: data[:20]),
        f"{C}: not a valid model config: Invalid JSON: EOF while parsing",
    ),
    "model.json a list": (
        replace_file("model.json", lambda _: b"[1, 2]"),
        f"{C}: not a valid model config: Input should be an object",
    ),
    "image size the weights were not trained on": (
        edit_config(image_shape=[1, 16, 16]),
        f"{C} does not match {W}: image_shape is [1, 16, 16] in model.json, [1, 8, 8] in the config the "
        "weights were trained with (restore the model.json written with these weights, or retrain)",
    ),
    "classes reordered": (
        edit_config(classes=["left", "top", "center"]),
        f"{C} does not match {W}: classes is ['left', 'top', 'center'] in model.json, "
        "['top', 'left', 'center'] in the config the weights were trained with",
    ),
    "weights of a wider network": (
        weights_of_a_wider_network,
        f"{C} does not match {W}: widths is [8] in model.json, [16] in the config the weights were trained",
    ),
    "NaN in a BatchNorm statistic": (
        poison("features.1.running_var", float("nan")),
        f"{W}: features.1.running_var holds NaN or infinity (the run that wrote it diverged; retrain",
    ),
    "infinity in a weight": (
        poison("head.3.weight", float("-inf")),
        f"{W}: head.3.weight holds NaN or infinity (the run that wrote it diverged; retrain",
    ),
    "unrecorded weights with a tensor missing": (
        write_weights(lambda t: {k: v for k, v in t.items() if k != "head.3.bias"}),
        f"{W} does not match {C}: no tensor head.3.bias (1 missing)",
    ),
    "unrecorded weights with an extra tensor": (
        write_weights(lambda t: {**t, "head.9.weight": torch.zeros(2)}),
        f"{W} does not match {C}: tensor head.9.weight has no place in the network (1 extra)",
    ),
    "unrecorded weights of another shape": (
        write_weights(lambda t: {**t, "head.3.weight": torch.zeros(4, 8)}),
        f"{W} does not match {C}: head.3.weight is 4x8 float32 in the weights, 3x8 float32 in the network",
    ),
    "unrecorded weights in half precision": (
        write_weights(lambda t: {k: v.half() if v.is_floating_point() else v for k, v in t.items()}),
        f"{W} does not match {C}: features.0.weight is 8x1x3x3 float16 in the weights, 8x1x3x3 float32",
    ),
}


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """params.yaml, models/ and data/ingested/, as predict and the evaluate stage find them."""
    root = tmp_path_factory.mktemp("pristine")
    (root / "params.yaml").write_text(
        yaml.safe_dump({"evaluate": {**repo_params()["evaluate"], "device": "cpu"}})
    )
    write_tiny_dataset(root / "data" / "ingested")
    write_tiny_model(root / "models", steps=5)
    Image.fromarray(tiny_images(1, seed=1)[0][0, 0], mode="L").save(root / "image.png")
    return root


@pytest.fixture
def workdir(pristine: Path, tmp_path: Path) -> Path:
    """A copy of ``pristine`` for a test to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "work"))


@pytest.mark.parametrize("case", CASES)
def test_a_model_that_cannot_be_used_is_refused_by_name(workdir: Path, case: str) -> None:
    damage, message = CASES[case]
    damage(workdir / "models")
    with pytest.raises(ModelError) as raised:
        load_model(workdir / "models")
    assert str(raised.value).startswith(message.replace("models/", f"{workdir}/models/"))
    assert "\n" not in str(raised.value)


def test_weights_written_before_the_config_was_recorded_still_load(workdir: Path) -> None:
    model, config = load_model(workdir / "models")
    write_weights(lambda tensors: tensors)(workdir / "models")  # same tensors, no metadata
    legacy, legacy_config = load_model(workdir / "models")
    assert legacy_config == config
    assert all(torch.equal(legacy.state_dict()[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "case", ["image size the weights were not trained on", "NaN in a BatchNorm statistic"]
)
def test_predict_gives_one_line_and_its_own_exit_code(workdir: Path, case: str) -> None:
    damage, message = CASES[case]
    damage(workdir / "models")
    result = run([sys.executable, "-m", "mlpipeline.modeling.predict", "image.png"], workdir, check=False)
    assert result.returncode == EXIT_MODEL_UNUSABLE == 3
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"predict: error: {message}")
    assert result.stdout == ""


@pytest.mark.parametrize("case", CASES)
def test_evaluate_refuses_the_same_models_the_same_way(workdir: Path, case: str) -> None:
    damage, message = CASES[case]
    damage(workdir / "models")
    params = from_mapping(EvaluateParams, {**repo_params()["evaluate"], "device": "cpu"}, "evaluate")
    with pytest.raises(ModelError) as raised:
        evaluate(params, workdir / "models", workdir / "data" / "ingested")
    assert str(raised.value).startswith(message.replace("models/", f"{workdir}/models/"))


def test_the_evaluate_stage_refuses_a_damaged_model_in_one_line(workdir: Path) -> None:
    damage, message = CASES["truncated weights"]
    damage(workdir / "models")
    result = run([sys.executable, "-m", "mlpipeline.stages.evaluate"], workdir, check=False)
    assert result.returncode == EXIT_MODEL_UNUSABLE
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"evaluate: error: {message}")
    assert not (workdir / "reports").exists()
