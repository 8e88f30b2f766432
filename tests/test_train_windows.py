"""``train.image_size``: the network's input is a window of the stored images, at a random
position per image in training and the centre in validation, evaluate, export and predict, so a
model trained on windows is scored and served exactly as it was validated."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer
from conftest import repo_params
from PIL import Image
from tiny_model import CLASSES
from tiny_training import tiny_params, write_training_set

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import from_mapping
from mlpipeline.core.seeding import rng
from mlpipeline.core.shard_writer import DatasetWriter
from mlpipeline.core.shards import Dataset
from mlpipeline.ingestion.images import Preprocessing
from mlpipeline.modeling.files import load_model, save_model
from mlpipeline.modeling.finetune import Release
from mlpipeline.modeling.inference import predict_probabilities
from mlpipeline.modeling.onnx_model import OnnxModel
from mlpipeline.modeling.params import ExportParams
from mlpipeline.modeling.predict import predict_onnx, predict_paths
from mlpipeline.serving.app import Limits, make_app
from mlpipeline.stages import export as export_stage
from mlpipeline.stages import train as train_stage
from mlpipeline.stages.evaluate import EvaluateParams, evaluate
from mlpipeline.stages.train import train
from mlpipeline.training.data import open_inputs
from mlpipeline.training.loader import Feed, Resident
from mlpipeline.training.windows import Window

STORED = (3, 12, 10)
PREPROCESSING = Preprocessing(3, STORED[1:], "bicubic", True, 255, False, resize="shorter-side")


def photos(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """12 x 10 RGB images: a bright blob off centre whose colour is the class, over noise."""
    labels = np.repeat(np.arange(3), per_class)
    draws = rng(seed, "window-photos")
    images = draws.integers(0, 70, (len(labels), *STORED)).astype(np.uint8)
    for index, label in enumerate(labels):
        top, left = draws.integers(2, 6), draws.integers(2, 4)
        images[index, label, top : top + 5, left : left + 5] = 250
    return images, labels.astype(np.int64)


def write_inputs(root: Path):
    ingested = root / "data" / "ingested"
    with DatasetWriter(ingested, CLASSES, STORED, {"preprocessing": PREPROCESSING.to_json()}) as writer:
        for index, (split, count) in enumerate({"train": 30, "val": 8, "test": 8}.items()):
            writer.write(split, *photos(count, seed=index))
    write_training_set(root / "data" / "augmented", photos(30, seed=0), shape=STORED)
    return open_inputs(root / "data" / "augmented", ingested)


def test_training_batches_are_random_windows_and_validation_the_centre(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path)
    reader = inputs.real
    rows = Resident(reader, torch.device("cpu"))
    window = Window((8, 6), STORED[1:], seed=3, random=True)
    order = np.arange(len(reader))
    batches = list(Feed(rows, len(reader), window=window).batches(order, 16, True, ("train", 1, 0)))
    originals = rows.images
    positions = set()
    for step, (images, _) in enumerate(batches):
        assert images.shape == (16, 3, 8, 6)
        corners = window.offsets(16, torch.device("cpu"), "train", 1, 0, step)
        for row, ((top, left), image) in enumerate(zip(corners.tolist(), images, strict=True)):
            assert torch.equal(image, originals[step * 16 + row, :, top : top + 8, left : left + 6])
            positions.add((top, left))
    assert len(positions) > 8  # random positions, anywhere the window fits
    again = list(Feed(rows, len(reader), window=window).batches(order, 16, True, ("train", 1, 0)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    centre = dataclasses.replace(window, random=False)
    (images, _), *_ = Feed(rows, len(reader), window=centre).batches(order, 16, False)
    assert torch.equal(images, originals[:16, :, 2:10, 2:8])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained on 8 x 6 windows of the 12 x 10 stored images, in a stage's work dir."""
    root = tmp_path_factory.mktemp("windows")
    inputs = write_inputs(root)
    result = train(tiny_params(image_size=[8, 6], epochs=6), inputs, None, root / "checkpoints")
    save_model(result.trainer.model, result.config, root / "models")
    return root


def test_model_json_records_the_window_and_the_stored_preprocessing(trained: Path) -> None:
    config = load_model(trained / "models")[1]
    assert config.image_shape == [3, 8, 6] and config.stored_shape == [3, 12, 10]
    assert config.input_preprocessing() == PREPROCESSING


def test_evaluate_export_and_predict_score_the_centre_window(trained: Path, tmp_path: Path) -> None:
    section = {**repo_params()["evaluate"], "device": "cpu"}
    section["baseline"] = {**section["baseline"], "method": "none"}
    scored = evaluate(
        from_mapping(EvaluateParams, section, "evaluate"), trained / "models", trained / "data" / "ingested"
    )
    assert scored.metrics["test"]["accuracy"] > 0.8
    model = load_model(trained / "models")[0]
    images = Dataset(trained / "data" / "ingested").load("test")[0]
    expected = predict_probabilities(model, images[:, :, 2:10, 2:8], torch.device("cpu"), 64)
    for index, image in enumerate(images):
        Image.fromarray(image.transpose(1, 2, 0)).save(tmp_path / f"{index:02d}.png")
    predicted = predict_paths([tmp_path], trained / "models", "cpu")
    np.testing.assert_allclose(predicted["probability"], expected.max(axis=1), atol=1e-6)
    exported = export_stage.export(
        ExportParams(atol=1e-4, batch_size=8), trained / "models", trained / "data" / "ingested"
    )
    assert exported.parity.images == 24 and exported.parity.different_classes == 0
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(exported.model_bytes)
    by_onnx = predict_onnx([tmp_path], onnx_file)
    np.testing.assert_allclose(by_onnx["probability"], expected.max(axis=1), atol=1e-5)
    served = served_probabilities(onnx_file, (tmp_path / "00.png").read_bytes())
    assert served == pytest.approx(float(expected[0].max()), abs=1e-5)


def served_probabilities(onnx_file: Path, image: bytes) -> float:
    """The best class's probability mlpipeline-serve answers for one posted image."""

    async def session() -> float:
        app = make_app(OnnxModel(onnx_file), "windowed", Limits(), decoders=1)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            response = await client.post("/predict", data=image, headers={"Content-Type": "image/png"})
            assert response.status == 200, await response.text()
            return (await response.json())["predictions"][0]["probability"]

    return asyncio.run(session())


def test_an_image_size_larger_than_the_stored_images_is_refused_in_one_line(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path)
    with pytest.raises(
        PipelineError, match=r"train\.image_size \[14, 10\] is larger than the stored images' \[12, 10\]"
    ):
        train(tiny_params(image_size=[14, 10]), inputs, None, tmp_path / "checkpoints")


def test_a_release_fine_tunes_on_the_same_window(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train.model.weights: NAME@vX.Y.Z`` with ``train.image_size``: the plan's check and the run
    fit the release to the window, not to the stored images."""
    release = Release("image-classifier@v1.0.0", "c0ffee", trained / "models")
    monkeypatch.setattr(train_stage, "weights_source", lambda *_: release)
    params = tiny_params(image_size=[8, 6], epochs=1)
    inputs = write_inputs(tmp_path)
    train_stage.check_plan(params, inputs)
    result = train(params, inputs, None, tmp_path / "checkpoints")
    assert result.config.image_shape == [3, 8, 6] and result.config.pretrained["commit"] == "c0ffee"
    assert result.config.stored_shape == list(STORED)
