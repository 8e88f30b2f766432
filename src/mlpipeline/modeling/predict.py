"""Predict: the class and its probability for image files or folders, with a trained model.

    mlpipeline-predict PATH... [--model models|image-classifier@v1.2.0] [--output predictions.csv]
    mlpipeline-predict PATH... --onnx exported/model.onnx   # onnxruntime alone: no torch needed

Folders are searched recursively for PNG/JPEG/BMP files. Every image goes
through ``decode_image`` with the preprocessing ``model.json`` recorded from
ingestion (channels, size, resampling, mode conversion, aspect ratio), so it is decoded
exactly as the training images were, and the network sees its centre window when training took a
smaller ``train.image_size``, as evaluation did. A file that cannot be read or decoded gets one
``error`` line on stderr naming it; the others are still predicted.
Output: CSV ``path,label,probability`` on stdout or ``--output FILE`` (``-``: stdout), written
atomically. Refused before any work: an ``--output`` that is or names a folder (``out/``), lies
under a file, or is one of the images to predict; stdout closed (``>&-``) without ``--output``.
With stderr closed (``2>&-``) its lines go nowhere, never into the CSV on stdout.
``--onnx FILE`` names the model itself and runs on the CPU: ``--model`` beside it, or
``--device cuda``/``mps``, is refused rather than ignored.

Exit codes, so a script can tell the failures apart:

- 0: every image predicted;
- 1: some images could not be read or decoded (the others are in the output);
- 2: bad arguments or another error, on one line;
- 3: the model cannot be used (``model.json`` or ``model.safetensors`` missing, damaged,
  or not matching each other; an ONNX file whose graph disagrees with its metadata), on one
  line naming the file; nothing predicted.

``--model`` takes a model directory or a registered version (``NAME@vX.Y.Z``,
``NAME@latest``, ``NAME#STAGE``), fetched once into ``.cache/models`` (``mlpipeline.versions.registry``).
From Python, ``predict_paths`` returns a DataFrame. A model of any git revision
can be fetched first with ``dvc.api``::

    from dvc.api import DVCFileSystem
    DVCFileSystem("https://github.com/org/repo", rev="v1.2").get("models", "models-v1.2", recursive=True)
    predict_paths(["photo.png"], "models-v1.2")

(or ``dvc get https://github.com/org/repo models --rev v1.2 -o models-v1.2``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mlpipeline.core import atomic, stage
from mlpipeline.core.errors import PipelineError
from mlpipeline.ingestion.images import IMAGE_SUFFIXES, Preprocessing, decode_image
from mlpipeline.ingestion.sources import natural_sorted
from mlpipeline.modeling.config import ModelConfig
from mlpipeline.versions import registry

if TYPE_CHECKING:  # torch is imported only to predict with it: --onnx runs on onnxruntime alone
    from mlpipeline.core.device import DeviceChoice

DEVICES = ("auto", "cpu", "cuda", "mps")  # DeviceChoice's values (a test holds them equal)

COLUMNS = ["path", "label", "probability"]
DEFAULT_MODEL = "models"
Files = list[tuple[str, str | None]]  # each file to predict, with None or the error that stops it
Scorer = Callable[[np.ndarray], np.ndarray]  # class probabilities of a batch of decoded images


def expand_paths(paths: Iterable[Path | str]) -> Files:
    """Each file to predict with ``None``, or a path with the error that stops it.

    Files named explicitly are taken whatever their suffix (decoding judges them);
    folders contribute their image files, hidden ones skipped, in natural order.
    """
    found: Files = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            images = [
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            ]
            if not images:
                found.append((str(raw), f"{raw}: folder has no images ({', '.join(IMAGE_SUFFIXES)})"))
            found += [(name, None) for name in natural_sorted([str(p) for p in images])]
        elif path.exists():
            found.append((str(raw), None))
        else:
            found.append((str(raw), f"{raw}: not found"))
    return found


def predict_paths(
    paths: Iterable[Path | str],
    model_dir: Path | str = DEFAULT_MODEL,
    device: DeviceChoice = "auto",
    batch_size: int = 256,
) -> pd.DataFrame:
    """One row per image: ``path``, ``label``, ``probability`` and ``error``.

    ``error`` is missing (NA) for a predicted image; for a file that could not be
    read or decoded it holds the one-line reason, and ``label``/``probability``
    are missing. Memory stays bounded by ``batch_size`` decoded images. Raises
    ``ModelError`` (a ``PipelineError``) if the model directory cannot be used.
    """
    return classify(expand_paths(paths), *torch_scorer(model_dir, device, batch_size), batch_size)


def predict_onnx(paths: Iterable[Path | str], onnx_file: Path | str, batch_size: int = 256) -> pd.DataFrame:
    """``predict_paths`` with an exported ONNX model, on ONNX Runtime alone (torch is never imported)."""
    return classify(expand_paths(paths), *onnx_scorer(onnx_file, batch_size), batch_size)


def torch_scorer(model_dir: Path | str, device: DeviceChoice, batch_size: int) -> tuple[ModelConfig, Scorer]:
    """The model in ``model_dir`` on ``device``: its config, and its probabilities of a batch."""
    from mlpipeline.core.device import pick_device
    from mlpipeline.modeling.files import load_model
    from mlpipeline.modeling.inference import predict_probabilities

    torch_device = pick_device(device, "device")
    model, config = load_model(model_dir, torch_device)
    return config, lambda images: predict_probabilities(model, images, torch_device, batch_size)


def onnx_scorer(onnx_file: Path | str, batch_size: int) -> tuple[ModelConfig, Scorer]:
    """``torch_scorer`` for an exported ONNX file, run by ONNX Runtime on the CPU."""
    from mlpipeline.modeling.onnx_model import OnnxModel, softmax

    model = OnnxModel(onnx_file)
    return model.config, lambda images: softmax(model.logits(images, batch_size))


def classify(files: Files, config: ModelConfig, probabilities_of: Scorer, batch_size: int) -> pd.DataFrame:
    """``predict_paths``' table for ``expand_paths``' ``files``, with ``probabilities_of`` a batch of
    decoded images."""
    preprocessing = config.input_preprocessing()
    labels: list[str | None] = [None] * len(files)
    probabilities = np.full(len(files), np.nan)
    errors = [error for _, error in files]
    pending = [i for i, error in enumerate(errors) if error is None]
    for start in range(0, len(pending), batch_size):
        decoded: dict[int, np.ndarray] = {}
        for i in pending[start : start + batch_size]:
            try:
                decoded[i] = _decode(files[i][0], preprocessing)
            except PipelineError as exc:
                errors[i] = str(exc)
        if not decoded:
            continue
        scores = probabilities_of(config.input_window(np.stack(list(decoded.values()))))
        for i, row in zip(decoded, scores, strict=True):
            labels[i] = config.classes[int(row.argmax())]
            probabilities[i] = float(row.max())
    return pd.DataFrame(
        {"path": [p for p, _ in files], "label": labels, "probability": probabilities, "error": errors}
    )


def _decode(path: str, preprocessing: Preprocessing) -> np.ndarray:
    """The file as ingestion stored the training images."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PipelineError(f"{path}: cannot be read ({exc.strerror})")
    return decode_image(data, path, preprocessing)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    output = None if args.output == "-" else args.output
    if output is None and sys.stdout is None:
        raise PipelineError("stdout is closed: name a file with --output")
    files = expand_paths(args.paths)
    if output is not None:  # checked before any work, not at the write
        check_output(output, files)
    if args.onnx is not None:
        config, scorer = onnx_scorer(args.onnx, args.batch_size)
    else:
        model_dir = registry.model_dir(args.model or DEFAULT_MODEL)
        config, scorer = torch_scorer(model_dir, args.device, args.batch_size)
    frame = classify(files, config, scorer, args.batch_size)
    failed = frame["error"].notna()
    for error in frame.loc[failed, "error"]:
        print(f"predict: error: {error}", file=sys.stderr)
    table = frame.loc[~failed, COLUMNS].to_csv(index=False, lineterminator="\n", float_format="%.6f")
    if output is not None:
        atomic.write_text(output, table)
        print(
            f"predict: wrote {output} ({(~failed).sum()} predicted, {failed.sum()} failed)",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(table)
    if failed.any():
        sys.exit(1)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, with the combinations it refuses refused."""
    parser = argparse.ArgumentParser(prog="mlpipeline-predict", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    parser.add_argument(
        "--model", help=f"model directory or version, e.g. image-classifier@v1.2.0 (default: {DEFAULT_MODEL})"
    )
    parser.add_argument("--output", help="write the CSV to this file instead of stdout (-: stdout)")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument(
        "--onnx", metavar="FILE", help="an exported model.onnx, run by onnxruntime alone (instead of --model)"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.onnx is not None:
        check_onnx_alone(args.onnx, args.model, args.device)
    return args


def check_onnx_alone(onnx_file: str, model: str | None, device: str) -> None:
    """Refuse what ``--onnx`` would ignore: it names the model itself, and ONNX Runtime runs it on the
    CPU. (A later ``--onnx --model NAME@vX.Y.Z`` may fetch a released ONNX file: refused until then.)"""
    if model is not None:
        raise PipelineError(
            f"--onnx {onnx_file} and --model {model} name two models: give one "
            "(--onnx runs the exported file alone)"
        )
    if device not in ("auto", "cpu"):
        raise PipelineError(
            f"--device {device}: --onnx runs on the CPU (onnxruntime's CPU provider); drop --device, "
            f"or drop --onnx to run the model with torch on {device}"
        )


def check_output(output: str, files: Files) -> None:
    """Refuse an ``--output`` the CSV cannot or must not replace: a folder (named with a trailing
    ``/`` too, which ``Path`` drops: a file ``newdir`` was written), a path under a file, or one of
    the images to predict (the CSV would overwrite it)."""
    path = Path(output)
    if path.is_dir() or os.path.basename(output) in ("", ".", ".."):
        raise PipelineError(
            f"--output {output}: {'is' if path.is_dir() else 'names'} a folder; name a file in it, "
            f"e.g. {path / 'predictions.csv'}"
        )
    parent = next(parent for parent in path.parents if parent.exists())  # "." or "/" at the latest
    if not parent.is_dir():
        raise PipelineError(f"--output {output}: {parent} is not a folder")
    if path.exists():
        target = path.stat()
        if any(error is None and _same_file(target, name) for name, error in files):
            raise PipelineError(f"--output {output}: is one of the images to predict; name another file")


def _same_file(target: os.stat_result, name: str) -> bool:
    """Whether ``name`` is the file ``target`` describes (by device and inode: links too)."""
    try:
        return os.path.samestat(target, os.stat(name))
    except OSError:  # gone or unreadable since it was listed: decoding says so
        return False


def cli() -> None:
    """The ``mlpipeline-predict`` command: ``main`` with the one-line errors and exit codes."""
    stage.run("predict", main)


if __name__ == "__main__":
    cli()
