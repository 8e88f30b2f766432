"""A transformers arch's model folder in the Hugging Face layout: transformers alone loads it
(``AutoModelForImageClassification`` and ``AutoImageProcessor.from_pretrained("models/")``, in a
process that never imports mlpipeline) and gives the pipeline's logits for the same image file;
model.json and everything that reads it keep working, old ``net.``-prefixed weights included;
the CNN keeps its two files."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_models_hf import RESNET, config_for, hf_params
from tiny_model import tiny_images, write_tiny_model
from tiny_training import write_inputs

from mlpipeline.core.seeding import rng
from mlpipeline.ingestion.images import Preprocessing, decode_image
from mlpipeline.modeling.files import load_model, save_model
from mlpipeline.stages.train import train

# Runs in a fresh interpreter: transformers, Pillow and numpy only.
TRANSFORMERS_ALONE = """
import sys
import numpy as np, torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

folder, out, *images = sys.argv[1:]
model = AutoModelForImageClassification.from_pretrained(folder).eval()
processor = AutoImageProcessor.from_pretrained(folder)
pixels = processor(images=[Image.open(p) for p in images], return_tensors="pt")["pixel_values"]
with torch.inference_mode():
    logits = model(pixel_values=pixels).logits
np.save(out, logits.numpy())
print(",".join(model.config.id2label[int(i)] for i in logits.argmax(1)))
assert not any(name.split(".")[0] == "mlpipeline" for name in sys.modules), "mlpipeline was imported"
"""


def write_pngs(folder: Path, count: int) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True)
    paths = []
    for index, image in enumerate(tiny_images(count, seed=11)[0]):
        paths.append(folder / f"{index}.png")
        Image.fromarray(image[0], "L").save(paths[-1])
    return paths


def test_a_trained_resnet_loads_with_transformers_alone_and_gives_the_same_logits(tmp_path: Path) -> None:
    result = train(hf_params("resnet", epochs=2), write_inputs(tmp_path), None, tmp_path / "ckpt")
    models = tmp_path / "models"
    save_model(result.trainer.model, result.config, models)
    images = write_pngs(tmp_path / "images", 2)  # six images, two of each class

    alone = transformers_alone(models, images, tmp_path)
    model, config = load_model(models)
    pixels = np.stack([decode_image(p.read_bytes(), str(p), config.input_preprocessing()) for p in images])
    with torch.inference_mode():
        ours = model(torch.from_numpy(pixels)).numpy()
    np.testing.assert_allclose(alone, ours, rtol=0, atol=1e-5)


def transformers_alone(models: Path, images: list[Path], work: Path) -> np.ndarray:
    """The logits transformers alone gives for ``images`` with the folder's model and processor
    (its labels checked against them)."""
    logits_file = work / "logits.npy"
    alone = subprocess.run(
        [sys.executable, "-c", TRANSFORMERS_ALONE, str(models), str(logits_file), *map(str, images)],
        capture_output=True,
        text=True,
        check=True,
        cwd=work,
    )
    logits = np.load(logits_file)
    labels = json.loads((models / "config.json").read_text())["id2label"]
    assert alone.stdout.strip().split(",") == [labels[str(i)] for i in logits.argmax(1)]
    return logits


def test_the_folder_holds_the_hugging_face_files_beside_model_json(tmp_path: Path) -> None:
    config = config_for("resnet", RESNET)
    from mlpipeline.modeling.network import build_model

    save_model(build_model(config), config, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "model.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    hub_config = json.loads((tmp_path / "config.json").read_text())
    assert hub_config["id2label"] == {"0": "top", "1": "left", "2": "center"}
    assert hub_config["label2id"] == {"top": 0, "left": 1, "center": 2}
    assert hub_config["architectures"] == ["ResNetForImageClassification"]
    processor = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert (processor["image_mean"], processor["image_std"]) == ([0.5], [0.25])  # model.json's stats
    assert processor["size"] == {"height": 8, "width": 8} and processor["rescale_factor"] == 1 / 255
    assert processor["resample"] == 3 and processor["mlpipeline_preprocessing"]["resample"] == "bicubic"
    with safe_open(tmp_path / "model.safetensors", framework="pt") as weights:
        assert not any(name.startswith("net.") for name in set(weights.keys()))
        assert weights.metadata()["format"] == "pt"


def test_weights_saved_before_the_layout_still_load(tmp_path: Path) -> None:
    """A release made before this layout has every tensor under the wrapper's ``net.``."""
    config = config_for("resnet", RESNET)
    from mlpipeline.modeling.network import build_model

    save_model(build_model(config), config, tmp_path)
    path = tmp_path / "model.safetensors"
    with safe_open(path, framework="pt") as weights:
        metadata = weights.metadata()
    old = {f"net.{name}": tensor for name, tensor in load_file(path).items()}
    save_file(old, path, metadata=metadata)
    model, _ = load_model(tmp_path)
    assert torch.equal(model.state_dict()["net.classifier.1.bias"], old["net.classifier.1.bias"])


def test_the_cnn_keeps_its_two_files(tmp_path: Path) -> None:
    write_tiny_model(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]
    with safe_open(tmp_path / "model.safetensors", framework="pt") as weights:
        assert set(weights.metadata()) == {"mlpipeline.model_config"}
        assert "head.3.weight" in set(weights.keys())


@pytest.mark.parametrize(
    ("resize", "png_size", "processor_type"),
    [("squash", (8, 8), "CLIPImageProcessor"), ("shorter-side", (8, 12), "CLIPImageProcessor")],
)
def test_a_windowed_model_s_processor_crops_the_centre_as_evaluation_did(
    tmp_path: Path, resize: str, png_size: tuple[int, int], processor_type: str
) -> None:
    """Trained on 6 x 6 windows of images stored 8 x 8: evaluation scores their centre window, so
    the processor resizes as ingest did, then crops that centre (it gave the 8 x 8 image before)."""
    from PIL import Image

    from mlpipeline.modeling.network import build_model

    stored = Preprocessing(1, (8, 8), "bicubic", False, 255, False, resize=resize)
    windowed = config_for("resnet", RESNET, shape=[1, 6, 6])
    config = dataclasses.replace(windowed, preprocessing=stored.to_json())
    save_model(build_model(config), config, tmp_path / "models")
    processor = json.loads((tmp_path / "models" / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == processor_type
    assert processor["do_center_crop"] and processor["crop_size"] == {"height": 6, "width": 6}
    (tmp_path / "images").mkdir()
    images = []
    for index, image in enumerate(rng(5, "hub-window").integers(0, 256, (4, *png_size), dtype=np.uint8)):
        images.append(tmp_path / "images" / f"{index}.png")
        Image.fromarray(image, "L").save(images[-1])
    alone = transformers_alone(tmp_path / "models", images, tmp_path)
    model, config = load_model(tmp_path / "models")
    pixels = np.stack([decode_image(p.read_bytes(), str(p), config.input_preprocessing()) for p in images])
    with torch.inference_mode():
        ours = model(torch.from_numpy(config.input_window(pixels))).numpy()
    np.testing.assert_allclose(alone, ours, rtol=0, atol=1e-5)
