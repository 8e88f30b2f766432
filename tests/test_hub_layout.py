"""A transformers arch's model folder in the Hugging Face layout: transformers alone loads it
(``AutoModelForImageClassification`` and ``AutoImageProcessor.from_pretrained("models/")``, in a
process that never imports mlpipeline) and gives the pipeline's logits for the same image file;
model.json and everything that reads it keep working, old ``net.``-prefixed weights included;
the CNN keeps its two files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_models_hf import RESNET, config_for, hf_params
from tiny_model import tiny_images, write_tiny_model
from tiny_training import write_inputs

from mlpipeline.ingestion.images import decode_image
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

    logits_file = tmp_path / "logits.npy"
    alone = subprocess.run(
        [sys.executable, "-c", TRANSFORMERS_ALONE, str(models), str(logits_file), *map(str, images)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    model, config = load_model(models)
    pixels = np.stack([decode_image(p.read_bytes(), str(p), config.input_preprocessing()) for p in images])
    with torch.inference_mode():
        ours = model(torch.from_numpy(pixels)).numpy()
    np.testing.assert_allclose(np.load(logits_file), ours, rtol=0, atol=1e-5)
    assert alone.stdout.strip().split(",") == [config.classes[i] for i in ours.argmax(1)]


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
