"""Export: the trained model as ONNX, for serving machines without torch, checked against PyTorch.

Reads ``models/`` and ``data/ingested`` (the test split, real data only). Writes
``exported/model.onnx`` (uint8 images N x C x H x W in, the model's input shape: the centre
window of the stored images when training took a smaller one; logits out, any N; ``model.json`` in its
metadata, so ``mlpipeline-predict --onnx exported/model.onnx`` needs nothing else) and
``reports/export/parity.json``. Before writing anything it runs the test split through both
runtimes: the logits must agree within ``export.atol`` and every predicted class must be the
same, or the stage fails in one line. ``models/`` is train's output, so the ONNX file lives apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mlpipeline.core import atomic, stage
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import load_section
from mlpipeline.core.paths import EXPORT_REPORTS, EXPORTED, INGESTED, MODELS
from mlpipeline.core.progress import Progress, progress
from mlpipeline.core.shards import META_FILE, Dataset
from mlpipeline.modeling.export import Parity, check, describe, parity, to_onnx
from mlpipeline.modeling.files import CONFIG_FILE, load_model
from mlpipeline.modeling.onnx_model import OnnxModel
from mlpipeline.modeling.params import ExportParams

ONNX_FILE = "model.onnx"
TEST = "test"


@dataclass(frozen=True)
class Exported:
    model_bytes: bytes
    parity: Parity


def export(params: ExportParams, model_dir: Path, data_dir: Path) -> Exported:
    """The checked ONNX file of the model in ``model_dir``; no output I/O, so tests call it."""
    model, config = load_model(model_dir)
    data = Dataset(data_dir)
    if list(config.stored_shape) != list(data.image_shape):
        raise PipelineError(
            f"{model_dir / CONFIG_FILE} and {data.root / META_FILE} disagree on the image shape: "
            f"{config.stored_shape} vs {list(data.image_shape)}"
        )
    model_bytes = to_onnx(model, config, atomic.to_json_text(config.to_dict()))
    target = EXPORTED / ONNX_FILE
    with progress("export", "checking against PyTorch", data.count(TEST)) as shown:
        batches = (config.input_window(images) for images in image_batches(data, params.batch_size, shown))
        result = parity(model, OnnxModel(target, model_bytes), batches)
    check(result, params.atol, str(target))
    return Exported(model_bytes, result)


def image_batches(data: Dataset, batch_size: int, shown: Progress) -> Iterator[np.ndarray]:
    """The test split's images, ``batch_size`` at a time within each shard, counted in ``shown``."""
    for images, _ in data.iter_shards(TEST):
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            yield batch
            shown.advance(len(batch))


def main() -> None:
    with stage.summary("export") as report:
        params = load_section(ExportParams, "export")
        result = export(params, MODELS, INGESTED)
        with atomic.directory(EXPORTED) as out:
            atomic.write_bytes(out / ONNX_FILE, result.model_bytes)
        atomic.write_json(EXPORT_REPORTS / "parity.json", {**asdict(result.parity), "atol": params.atol})
        report["read"] = f"{MODELS}, {result.parity.images} test images from {INGESTED}"
        report["wrote"] = (
            f"{EXPORTED / ONNX_FILE} ({describe(result.model_bytes)}; logits within "
            f"{result.parity.max_abs_diff:.2g} of PyTorch's, every class the same) and {EXPORT_REPORTS}"
        )


if __name__ == "__main__":
    stage.run("export", main, ExportParams)
