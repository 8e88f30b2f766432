"""The export stage: models/ as one ONNX file with a dynamic batch axis, checked on the test split
against PyTorch before it is written, byte-identical run after run; and `mlpipeline-predict --onnx`,
which classifies with onnxruntime alone."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import REPO_ROOT
from test_models_hf import RESNET, config_for
from test_predict import PREDICT, save_png
from tiny_model import SHAPE, tiny_images, write_tiny_dataset, write_tiny_model
from torch import nn

import mlpipeline.stages.export as export_stage
from mlpipeline.core.errors import PipelineError
from mlpipeline.modeling.config import CONFIG_METADATA_KEY
from mlpipeline.modeling.export import Parity, check, parity
from mlpipeline.modeling.files import ModelError, load_model, save_model
from mlpipeline.modeling.network import build_model
from mlpipeline.modeling.onnx_model import OnnxModel, softmax
from mlpipeline.modeling.params import ExportParams
from mlpipeline.modeling.predict import DEVICES, predict_onnx, predict_paths

PARAMS = ExportParams(atol=1e-4, batch_size=5)


def workdir(root: Path, arch: str = "convnet") -> Path:
    """models/ and data/ingested as the stages upstream of export leave them."""
    write_tiny_dataset(root / "data" / "ingested")
    if arch == "convnet":
        write_tiny_model(root / "models")
    else:
        torch.manual_seed(0)
        config = config_for(arch, RESNET)
        save_model(build_model(config), config, root / "models")
    return root


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, export_stage.Exported]:
    """The tiny CNN's work directory and its export, made once (an export takes seconds)."""
    root = workdir(tmp_path_factory.mktemp("export"))
    return root, export_stage.export(PARAMS, root / "models", root / "data" / "ingested")


def test_export_matches_pytorch_and_repeats_its_bytes(exported, tmp_path: Path) -> None:
    root, first = exported
    assert first.parity.images == 24 and first.parity.different_classes == 0
    assert first.parity.max_abs_diff <= PARAMS.atol
    assert (
        export_stage.export(PARAMS, root / "models", root / "data" / "ingested").model_bytes
        == first.model_bytes
    )


def test_the_file_records_nothing_of_the_machine_it_was_made_on(exported) -> None:
    # DVC caches exported/ across machines: torch's exporter writes each node's stack trace (the
    # checkout's absolute path) and the torch build's local tag; two clones differed in bytes.
    _, first = exported
    proto = onnx.load_from_string(first.model_bytes)
    assert str(REPO_ROOT / "src").encode() not in first.model_bytes
    assert "+" not in proto.producer_version
    assert [prop.key for prop in proto.metadata_props] == [CONFIG_METADATA_KEY]
    assert not any(node.metadata_props or node.doc_string for node in proto.graph.node)


def test_an_hf_arch_exports_and_matches(tmp_path: Path) -> None:
    root = workdir(tmp_path, "resnet")
    result = export_stage.export(PARAMS, root / "models", root / "data" / "ingested")
    assert result.parity.different_classes == 0 and result.parity.max_abs_diff <= PARAMS.atol


def test_the_batch_axis_is_dynamic(exported) -> None:
    root, result = exported
    onnx_model = OnnxModel("model.onnx", result.model_bytes)
    model, config = load_model(root / "models")
    images = tiny_images(3, seed=5)[0]
    for count in (1, 7):
        with torch.inference_mode():
            ours = model(torch.from_numpy(images[:count])).numpy()
        np.testing.assert_allclose(onnx_model.logits(images[:count]), ours, atol=1e-4)
    assert onnx_model.config == config


@pytest.mark.parametrize(
    "found",
    [Parity(24, 0.5, 0), Parity(24, 1e-6, 2)],
    ids=["logits past atol, same classes", "logits within atol, classes differ"],
)
def test_a_disagreeing_export_fails_in_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, found: Parity
) -> None:
    root = workdir(tmp_path)
    (root / "params.yaml").write_text("export:\n  atol: 0.0001\n  batch_size: 8\n")
    monkeypatch.chdir(root)
    monkeypatch.setattr(export_stage, "parity", lambda *args: found)
    expected = f"up to {found.max_abs_diff:.3g} .*, {found.different_classes} of 24 images get another class"
    with pytest.raises(PipelineError, match=rf"model\.onnx: ONNX Runtime disagrees .*{expected}"):
        export_stage.main()
    assert not (root / "exported").exists() and not (root / "reports").exists()


class Lookup(nn.Module):
    """A network whose logits a test chooses: row ``k`` of ``table`` for an image whose one pixel is k."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = torch.tensor(table)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.table[images.flatten().long()]


class OnnxLookup:
    """``OnnxModel``'s ``logits`` by the same lookup, on its own table."""

    def __init__(self, table: list[list[float]]) -> None:
        self.table = np.array(table, dtype=np.float32)

    def logits(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        return self.table[images.flatten()]


def one_pixel_batches(*batches: list[int]) -> list[np.ndarray]:
    return [np.array(batch, dtype=np.uint8).reshape(-1, 1, 1, 1) for batch in batches]


def test_a_class_that_flips_within_atol_is_caught() -> None:
    # Two near-tied logits swap places by 1e-6, far within atol: the predicted class still differs.
    ours, theirs = [[0.5, 0.500001], [2.0, 0.0]], [[0.500001, 0.5], [2.0, 0.0]]
    result = parity(Lookup(ours), OnnxLookup(theirs), one_pixel_batches([0, 1]))
    assert result.images == 2 and result.different_classes == 1 and result.max_abs_diff < 1e-5
    with pytest.raises(
        PipelineError, match=r"model\.onnx: .*up to 1\.\d+e-06 .*, 1 of 2 images get another class"
    ):
        check(result, atol=1e-4, where="model.onnx")


def test_parity_counts_a_disagreement_in_any_batch() -> None:
    # Image 1 disagrees (by 0.75, and in class); it is in the first of three batches.
    ours, theirs = [[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.25, 0.75]]
    result = parity(Lookup(ours), OnnxLookup(theirs), one_pixel_batches([0, 1], [0, 0], [0]))
    assert result == Parity(images=5, max_abs_diff=0.75, different_classes=1)


def test_softmax_of_huge_logits_is_finite() -> None:
    # exp(710) overflows float64: without the shift by the row's max every probability was NaN.
    logits = np.array([[1000.0, 0.0, -1000.0], [800.0, 800.0, 3e38]], dtype=np.float32)
    np.testing.assert_array_equal(softmax(logits), [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    # and exp(-1000) underflows to 0: every probability was 0 / 0.
    np.testing.assert_array_equal(softmax(np.array([[-1000.0, -1000.0, -3000.0]])), [[0.5, 0.5, 0.0]])


@pytest.mark.slow
def test_the_stage_writes_the_model_and_its_parity(tmp_path: Path) -> None:
    root = workdir(tmp_path)
    (root / "params.yaml").write_text("export:\n  atol: 0.0001\n  batch_size: 8\n")
    src = Path(export_stage.__file__).parents[2]
    env = {"PYTHONPATH": str(src), "PATH": str(Path(sys.executable).parent)}
    done = subprocess.run(
        [sys.executable, "-m", "mlpipeline.stages.export"], cwd=root, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "wrote exported/model.onnx (opset" in done.stderr and "batchx1x8x8 uint8" in done.stderr
    parity = json.loads((root / "reports" / "export" / "parity.json").read_text())
    assert parity["different_classes"] == 0 and parity["images"] == 24


def test_predict_onnx_runs_without_torch_and_agrees_with_pytorch(exported, tmp_path: Path) -> None:
    models, result = exported[0] / "models", exported[1]
    root = tmp_path
    (root / "model.onnx").write_bytes(result.model_bytes)
    images = tiny_images(2, seed=9)[0]
    for index, image in enumerate(images):
        save_png(root / "photos" / f"{index}.png", image)
    code = (
        "import sys\n"
        "from mlpipeline.modeling.predict import main\n"
        f"main([{str(root / 'photos')!r}, '--onnx', {str(root / 'model.onnx')!r}, '--output', "
        f"{str(root / 'out.csv')!r}])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    src = Path(export_stage.__file__).parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(src)})
    onnx_rows = predict_onnx([root / "photos"], root / "model.onnx")
    torch_rows = predict_paths([root / "photos"], models, "cpu")
    assert list(onnx_rows["label"]) == list(torch_rows["label"])
    np.testing.assert_allclose(onnx_rows["probability"], torch_rows["probability"], atol=1e-5)
    assert (root / "out.csv").read_text().count("\n") == 1 + len(images)


def test_a_bad_onnx_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelError, match=r"model\.onnx: not an ONNX model, or damaged"):
        OnnxModel(tmp_path / "model.onnx")
    with pytest.raises(ModelError, match=r"missing\.onnx: not found"):
        OnnxModel(tmp_path / "missing.onnx")


def test_predict_names_the_device_choices() -> None:
    from typing import get_args

    from mlpipeline.core.device import DeviceChoice

    assert get_args(DeviceChoice) == DEVICES
    assert SHAPE == (1, 8, 8)


def edited(model_bytes: bytes, config: dict | None = None, input_name: str | None = None) -> bytes:
    """The exported file with ``config``'s keys changed in its metadata, or its input renamed."""
    proto = onnx.load_from_string(model_bytes)
    recorded = json.loads(proto.metadata_props[0].value)
    proto.metadata_props[0].value = json.dumps({**recorded, **(config or {})})
    if input_name is not None:
        old = proto.graph.input[0].name
        proto.graph.input[0].name = input_name
        for node in proto.graph.node:
            node.input[:] = [input_name if name == old else name for name in node.input]
    return proto.SerializeToString()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"config": {"image_shape": [1, 16, 16]}},
            "its model config says 1x16x16 images, its graph takes 1x8x8",
        ),
        (
            {"config": {"classes": list("abcde")}},
            "its model config names 5 classes, its graph gives 3 logits",
        ),
        ({"input_name": "pixels"}, "its graph takes pixels and gives logits, not images and logits"),
    ],
    ids=["image shape", "classes", "input name"],
)
def test_metadata_that_disagrees_with_the_graph_is_one_line(
    exported, tmp_path: Path, change: dict, message: str
) -> None:
    # Each gave a traceback (or, with fewer classes than logits, labels from the wrong list).
    path = tmp_path / "model.onnx"
    path.write_bytes(edited(exported[1].model_bytes, **change))
    with pytest.raises(ModelError) as refused:
        OnnxModel(path)
    assert str(refused.value) == f"{path}: {message} (not as the export stage writes it)"


def failing_graph(config_text: str) -> bytes:
    """An ONNX file that agrees with its metadata and loads, but runs a batch of 2 only."""
    helper, tensor = onnx.helper, onnx.TensorProto
    nodes = [
        helper.make_node("Cast", ["images"], ["pixels"], to=tensor.FLOAT),
        helper.make_node("Reshape", ["pixels", "two"], ["flat"]),
        helper.make_node("MatMul", ["flat", "weights"], ["logits"]),
    ]
    initializers = [
        onnx.numpy_helper.from_array(np.array([2, 64], dtype=np.int64), "two"),
        onnx.numpy_helper.from_array(np.ones((64, 3), dtype=np.float32), "weights"),
    ]
    graph = helper.make_graph(
        nodes,
        "fixed-batch",
        [helper.make_tensor_value_info("images", tensor.UINT8, ["batch", *SHAPE])],
        [helper.make_tensor_value_info("logits", tensor.FLOAT, ["batch", 3])],
        initializers,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    proto.metadata_props.add(key=CONFIG_METADATA_KEY, value=config_text)
    return proto.SerializeToString()


def test_a_graph_that_fails_to_run_is_one_line(exported, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    config_text = onnx.load_from_string(exported[1].model_bytes).metadata_props[0].value
    path.write_bytes(failing_graph(config_text))
    model, images = OnnxModel(path), tiny_images(1, seed=0)[0]
    assert model.logits(images[:2]).shape == (2, 3)
    with pytest.raises(ModelError) as refused:
        model.logits(images[:1])
    assert re.fullmatch(
        rf"{re.escape(str(path))}: ONNX Runtime cannot run it on a batch of 1 1x8x8 images \(.*Reshape.*\)",
        str(refused.value),
    )


def test_onnx_naming_a_folder_says_so(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as refused:
        OnnxModel(tmp_path)
    assert (
        str(refused.value)
        == f"{tmp_path}: is a folder; name the ONNX file in it, e.g. {tmp_path / 'model.onnx'}"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "models"], "--onnx model.onnx and --model models name two models: give one"),
        (["--device", "cuda"], "--device cuda: --onnx runs on the CPU"),
    ],
)
def test_onnx_refuses_what_it_would_ignore(tmp_path: Path, extra: list[str], message: str) -> None:
    # --onnx ran the file and ignored --model and --device without a word.
    command = [*PREDICT, "x.png", "--onnx", "model.onnx", *extra]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"predict: error: {message}") and done.stderr.count("\n") == 1
