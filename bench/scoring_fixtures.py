"""A model and images for the predict and serve benchmarks: the demo's CNN layout at a chosen
image size, randomly initialized (its speed, not its accuracy, is measured), as model.json +
safetensors and as the export stage's ONNX file; and a folder of distinct PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mlpipeline.core import atomic
from mlpipeline.modeling.export import to_onnx
from mlpipeline.modeling.files import save_model
from mlpipeline.modeling.network import ModelConfig, build_model

CLASSES = [str(digit) for digit in range(10)]
WIDTHS = [32, 64, 128]  # params.yaml's train.model.widths


def write_models(root: Path, side: int, channels: int) -> tuple[Path, Path]:
    """``root/models`` and ``root/model.onnx`` of the CNN for ``channels x side x side`` images."""
    config = ModelConfig(
        CLASSES,
        [channels, side, side],
        widths=WIDTHS,
        dropout=0.0,
        mean=[0.5] * channels,
        std=[0.25] * channels,
    )
    torch.manual_seed(0)
    model = build_model(config).eval()
    save_model(model, config, root / "models")
    atomic.write_bytes(root / "model.onnx", to_onnx(model, config, atomic.to_json_text(config.to_dict())))
    return root / "models", root / "model.onnx"


def write_pngs(folder: Path, count: int, side: int, channels: int) -> list[Path]:
    """``count`` distinct noise PNGs of ``side x side`` pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    mode = "RGB" if channels == 3 else "L"
    paths = []
    for index in range(count):
        pixels = generator.integers(0, 256, size=(side, side, channels), dtype=np.uint8)
        paths.append(folder / f"{index}.png")
        Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(paths[-1])
    return paths
