"""Predict: the top classes and their probabilities for images, at any scale, with a trained model.

    mlpipeline-predict PATH... [--model models|image-classifier@v1.2.0] [--output predictions.csv]
    mlpipeline-predict s3://bucket/photos/ --output scores.parquet --topk 3
    mlpipeline-predict PATH... --onnx [exported/model.onnx]      # onnxruntime alone: no torch
    mlpipeline-predict PATH... --onnx --model image-classifier@v1.2.0   # the release's ONNX file

PATH is an image file, a folder (searched recursively for PNG/JPEG/BMP files, each folder in
natural order, hidden names skipped), a ``.csv`` manifest with a ``path`` column, or any of these
on S3 (``mlpipeline.modeling.predict_inputs``). Every image goes through ``decode_image`` with the
preprocessing ``model.json`` recorded from ingestion (channels, size, resampling, mode
conversion, aspect ratio), so it is decoded exactly as the training images were, and the network
sees its centre window when training took a smaller ``train.image_size``, as evaluation did
(``ModelConfig.input_window``). The images stream through
worker processes on every core (``MLPIPELINE_WORKERS``) in batches (``mlpipeline.modeling.scoring``)
and the table is written as they come (``mlpipeline.modeling.predict_output``): memory stays flat
however many images there are, and the output is the same bytes for any worker count. Progress
shows on stderr (``mlpipeline.core.progress``). A file that cannot be read or decoded gets one
``error`` line on stderr naming it, when it is met; the others are still predicted.

Output: CSV ``path,label,probability`` (then ``label_2,probability_2``... with ``--topk K``) on
stdout, or ``--output FILE`` (``-``: stdout; ``.parquet``: Parquet), written aside and renamed at
the end. Refused before any work: an ``--output`` that is or names a folder (``out/``) or lies
under a file; stdout closed (``>&-``) without ``--output``; ``--topk`` past the model's classes.
An ``--output`` that is one of the images stops the run when that image is met, nothing written.
With stderr closed (``2>&-``) its lines go nowhere, never into the CSV on stdout.

``--onnx FILE`` runs an exported ONNX file on the CPU; ``--onnx`` alone runs ``exported/model.onnx``,
or with ``--model NAME@vX.Y.Z`` (``@latest``, ``#STAGE``) the ONNX file released with that version
(``mlpipeline.versions.registry``). ``--onnx FILE`` beside ``--model``, ``--model DIR`` beside
``--onnx``, and ``--device cuda``/``mps`` with it are refused rather than ignored.

Exit codes, so a script can tell the failures apart:

- 0: every image predicted;
- 1: some images could not be read or decoded (the others are in the output);
- 2: bad arguments or another error, on one line;
- 3: the model cannot be used (``model.json`` or ``model.safetensors`` missing, damaged,
  or not matching each other; an ONNX file whose graph disagrees with its metadata), on one
  line naming the file; nothing predicted.

``--model`` takes a model directory or a registered version, fetched once into ``.cache/models``.
From Python, ``predict_paths`` and ``predict_onnx`` return a DataFrame.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from mlpipeline.core import stage
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.progress import progress
from mlpipeline.modeling.config import ModelConfig
from mlpipeline.modeling.predict_inputs import Item, list_inputs
from mlpipeline.modeling.predict_output import columns, open_rows
from mlpipeline.modeling.scoring import ModelSpec, Prediction, Scorer, predictions
from mlpipeline.versions import registry

if TYPE_CHECKING:  # torch is imported only to predict with it: --onnx runs on onnxruntime alone
    from mlpipeline.core.device import DeviceChoice

DEVICES = ("auto", "cpu", "cuda", "mps")  # DeviceChoice's values (a test holds them equal)
DEFAULT_MODEL = "models"
DEFAULT_ONNX = "exported/model.onnx"
FROM_MODEL = ""  # --onnx without a file: the exported file, or the one released with --model
log = logging.getLogger("predict")


def predict_paths(
    paths: Iterable[Path | str],
    model_dir: Path | str = DEFAULT_MODEL,
    device: DeviceChoice = "auto",
    batch_size: int = 256,
    topk: int = 1,
) -> pd.DataFrame:
    """One row per image: ``path``, ``label``, ``probability`` (and the next ``topk - 1``
    classes), and ``error``: missing (NA) for a predicted image, the one-line reason for a file
    that could not be listed, read or decoded (its labels and probabilities missing then).
    Raises ``ModelError`` (a ``PipelineError``) if the model directory cannot be used."""
    return _frame(paths, ModelSpec(str(model_dir), False, device, batch_size).resolved(), topk)


def predict_onnx(
    paths: Iterable[Path | str], onnx_file: Path | str, batch_size: int = 256, topk: int = 1
) -> pd.DataFrame:
    """``predict_paths`` with an exported ONNX model, on ONNX Runtime alone (torch is never imported)."""
    return _frame(paths, ModelSpec(str(onnx_file), True, "cpu", batch_size), topk)


def _frame(paths: Iterable[Path | str], spec: ModelSpec, topk: int) -> pd.DataFrame:
    config, scorer = _loaded(spec, topk)
    rows: dict[str, list] = {name: [] for name in [*columns(topk), "error"]}
    for batch in predictions(list_inputs(map(str, paths)), spec, config, scorer, topk):
        for prediction in batch:
            labels, probabilities = _named(prediction, config, topk)
            cells = [
                prediction.path,
                *(cell for pair in zip(labels, probabilities, strict=True) for cell in pair),
            ]
            for name, cell in zip(rows, [*cells, prediction.error], strict=True):
                rows[name].append(cell)
    return pd.DataFrame(rows)


def _named(prediction: Prediction, config: ModelConfig, topk: int) -> tuple[list, list]:
    if prediction.error is not None:
        return [None] * topk, [float("nan")] * topk
    return [config.classes[i] for i in prediction.classes], list(prediction.probabilities)


def _loaded(spec: ModelSpec, topk: int) -> tuple[ModelConfig, Scorer]:
    """The model (checked usable: exit 3 otherwise), with ``topk`` checked against its classes;
    before any image is read."""
    config, scorer = spec.load()
    if not 1 <= topk <= config.num_classes:
        raise PipelineError(f"--topk {topk}: must be 1 to the model's {config.num_classes} classes")
    return config, scorer


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    output = None if args.output == "-" else args.output
    if output is None and sys.stdout is None:
        raise PipelineError("stdout is closed: name a file with --output")
    if output is not None:  # checked before any work, not at the write
        check_output(output)
    spec = model_spec(args)
    config, scorer = _loaded(spec, args.topk)
    items = _not_the_output(list_inputs(args.paths), output)
    predicted = failed = 0
    with (
        progress("predict", "predicting", unit="image") as shown,
        open_rows(output, sys.stdout, args.topk) as table,
    ):
        for batch in predictions(items, spec, config, scorer, args.topk):
            rows = []
            for prediction in batch:
                if prediction.error is not None:
                    failed += 1
                    shown.write(f"error: {prediction.error}", log)
                else:
                    rows.append((prediction.path, *_named(prediction, config, args.topk)))
            predicted += len(rows)
            table.write(rows)
            shown.advance(len(batch))
    if output is not None:
        print(f"predict: wrote {output} ({predicted} predicted, {failed} failed)", file=sys.stderr)
    if failed:
        sys.exit(1)


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The model the arguments name, fetched first when it is a registered version."""
    if args.onnx is None:
        model_dir = registry.model_dir(args.model or DEFAULT_MODEL)
        return ModelSpec(str(model_dir), False, args.device, args.batch_size).resolved()
    if args.onnx != FROM_MODEL:
        onnx_file = args.onnx
    elif args.model is not None:
        onnx_file = str(registry.onnx_file(args.model))
    else:
        onnx_file = DEFAULT_ONNX
    return ModelSpec(onnx_file, True, "cpu", args.batch_size)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, with the combinations it refuses refused."""
    parser = argparse.ArgumentParser(prog="mlpipeline-predict", description=__doc__.split("\n")[0])
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="image files, folders, .csv manifests, s3:// prefixes"
    )
    parser.add_argument(
        "--model", help=f"model directory or version, e.g. image-classifier@v1.2.0 (default: {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--output", help="write the table to this file (.parquet: Parquet, else CSV) instead of stdout (-)"
    )
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument(
        "--onnx",
        nargs="?",
        const=FROM_MODEL,
        metavar="FILE",
        help=f"run an exported ONNX file on onnxruntime alone (no FILE: {DEFAULT_ONNX}, or the "
        "file released with --model NAME@vX.Y.Z)",
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--topk", type=int, default=1, help="classes per image, best first (default: 1)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.onnx is not None:
        check_onnx_alone(args.onnx, args.model, args.device)
    return args


def check_onnx_alone(onnx_file: str, model: str | None, device: str) -> None:
    """Refuse what ``--onnx`` would ignore: a file names the model itself, ``--model`` beside a bare
    ``--onnx`` must be a released version (a model directory has no ONNX file), and ONNX Runtime
    runs it on the CPU."""
    if model is not None and onnx_file != FROM_MODEL:
        raise PipelineError(
            f"--onnx {onnx_file} and --model {model} name two models: give one "
            "(--onnx FILE runs that file; --onnx --model NAME@vX.Y.Z runs a version's ONNX file)"
        )
    if model is not None and not registry.is_version(model):
        raise PipelineError(
            f"--onnx --model {model}: a model directory holds no ONNX file; name the file "
            f"(--onnx {DEFAULT_ONNX}) or a released version (--model image-classifier@v1.2.0)"
        )
    if device not in ("auto", "cpu"):
        raise PipelineError(
            f"--device {device}: --onnx runs on the CPU (onnxruntime's CPU provider); drop --device, "
            f"or drop --onnx to run the model with torch on {device}"
        )


def check_output(output: str) -> None:
    """Refuse an ``--output`` the table cannot replace: a folder (named with a trailing ``/`` too,
    which ``Path`` drops: a file ``newdir`` was written) or a path under a file."""
    path = Path(output)
    if path.is_dir() or os.path.basename(output) in ("", ".", ".."):
        raise PipelineError(
            f"--output {output}: {'is' if path.is_dir() else 'names'} a folder; name a file in it, "
            f"e.g. {path / 'predictions.csv'}"
        )
    parent = next(parent for parent in path.parents if parent.exists())  # "." or "/" at the latest
    if not parent.is_dir():
        raise PipelineError(f"--output {output}: {parent} is not a folder")


def _not_the_output(items: Iterator[Item], output: str | None) -> Iterator[Item]:
    """``items``, stopping at one that is the existing ``output`` file (by device and inode: links
    too): the table would overwrite that image."""
    target = os.stat(output) if output is not None and os.path.isfile(output) else None
    for item in items:
        if target is not None and item.error is None and _same_file(target, item.location):
            raise PipelineError(f"--output {output}: is one of the images to predict; name another file")
        yield item


def _same_file(target: os.stat_result, location: str) -> bool:
    try:
        return "://" not in location and os.path.samestat(target, os.stat(location))
    except OSError:  # gone or unreadable since it was listed: decoding says so
        return False


def cli() -> None:
    """The ``mlpipeline-predict`` command: ``main`` with the one-line errors and exit codes."""
    stage.run("predict", main)


if __name__ == "__main__":
    cli()
