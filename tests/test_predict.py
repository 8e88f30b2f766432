"""Predict: files and folders, a corrupt file among them, ingestion's preprocessing, and the
model's safetensors round trip."""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run
from imagedata import ingest_params, run_ingest
from PIL import Image
from tiny_model import CLASSES, tiny_images, tiny_model, write_tiny_model

from mlpipeline.core.shards import Dataset
from mlpipeline.modeling.files import ModelError, load_model, save_model
from mlpipeline.modeling.inference import predict_probabilities
from mlpipeline.modeling.predict import predict_paths

CPU = torch.device("cpu")


def save_png(path: Path, image: np.ndarray, scale: int = 1) -> None:
    """Write a 1 x H x W uint8 image as a grayscale PNG, enlarged ``scale`` times."""
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(image[0], mode="L")
    picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST).save(path)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A trained tiny model, two loose images, a folder of images, a corrupt file."""
    images, _ = tiny_images(2, seed=5)  # top, top, left, left, center, center
    paths = {
        "model": write_tiny_model(tmp_path / "models"),
        "top": tmp_path / "top.png",
        "center": tmp_path / "center.png",
        "folder": tmp_path / "folder",
        "corrupt": tmp_path / "corrupt.png",
    }
    save_png(paths["top"], images[0])
    save_png(paths["center"], images[4])
    save_png(paths["folder"] / "10.png", images[2])
    save_png(paths["folder"] / "2.png", images[3], scale=3)  # resized like ingestion would
    save_png(paths["folder"] / "sub" / "1.png", images[5])
    (paths["folder"] / ".hidden.png").write_bytes(b"skipped")
    paths["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return paths


def test_cli_predicts_the_rest_and_names_the_bad_file(files: dict[str, Path]) -> None:
    args = [str(files[k]) for k in ("top", "corrupt", "folder", "center")]
    result = run(
        [sys.executable, "-m", "mlpipeline.modeling.predict", *args, "--model", str(files["model"])],
        files["top"].parent,
        check=False,
    )

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"predict: error: {files['corrupt']}: not a decodable image (expected PNG, JPEG or BMP)"
    ]
    table = pd.read_csv(io.StringIO(result.stdout))
    assert list(table.columns) == ["path", "label", "probability"]
    folder = files["folder"]
    assert table["path"].tolist() == [
        str(files["top"]),
        str(folder / "2.png"),
        str(folder / "10.png"),
        str(folder / "sub" / "1.png"),
        str(files["center"]),
    ]
    assert table["label"].tolist() == ["top", "left", "left", "center", "center"]
    assert ((table["probability"] > 1 / 3) & (table["probability"] <= 1)).all()


def test_cli_writes_output_file_and_exits_zero_when_all_succeed(
    files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out" / "predictions.csv"
    result = run(
        [
            sys.executable,
            "-m",
            "mlpipeline.modeling.predict",
            str(files["folder"]),
            "--model",
            str(files["model"]),
            "--output",
            str(out),
            "--device",
            "cpu",
        ],
        tmp_path,
    )
    assert result.stdout == ""
    assert pd.read_csv(out)["label"].tolist() == ["left", "left", "center"]


def predict_cli(files: dict[str, Path], cwd: Path, *extra: str):
    command = [sys.executable, "-m", "mlpipeline.modeling.predict", str(files["folder"])]
    return run([*command, "--model", str(files["model"]), "--device", "cpu", *extra], cwd, check=False)


def test_cli_output_dash_is_stdout(files: dict[str, Path], tmp_path: Path) -> None:
    result = predict_cli(files, tmp_path, "--output", "-")
    assert result.returncode == 0 and not (tmp_path / "-").exists()
    assert pd.read_csv(io.StringIO(result.stdout))["label"].tolist() == ["left", "left", "center"]


@pytest.mark.parametrize("folder", ["out", "."])
def test_cli_output_an_existing_folder_is_one_line(
    files: dict[str, Path], tmp_path: Path, folder: str
) -> None:
    (tmp_path / "out").mkdir()
    before = sorted(tmp_path.rglob("*"))
    result = predict_cli(files, tmp_path, "--output", folder)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"predict: error: --output {folder}: is a folder; name a file in it, e.g. "
        f"{Path(folder) / 'predictions.csv'}"
    ]
    assert sorted(tmp_path.rglob("*")) == before


def test_cli_without_a_model_is_one_line_exit_3(tmp_path: Path) -> None:
    result = run(
        [sys.executable, "-m", "mlpipeline.modeling.predict", "x.png", "--model", "nowhere"],
        tmp_path,
        check=False,
    )
    assert result.returncode == 3  # the model cannot be used (see test_model_files)
    assert result.stderr.strip() == "predict: error: nowhere/model.json: not found (has the train stage run?)"


def test_the_console_script_is_predict(tmp_path: Path) -> None:
    # pip installs `mlpipeline-predict` beside the venv's python (pyproject's [project.scripts]).
    script = Path(sys.executable).with_name("mlpipeline-predict")
    result = run([str(script), "x.png", "--model", "nowhere"], tmp_path, check=False)
    assert result.returncode == 3
    assert result.stderr.startswith("predict: error: nowhere/model.json: not found")


def test_predict_paths_reports_errors_in_the_frame(files: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    frame = predict_paths([files["top"], tmp_path / "missing.png", empty], files["model"], device="cpu")
    assert frame["label"][0] == "top" and 1 / 3 < frame["probability"][0] <= 1
    assert frame["error"].isna().tolist() == [True, False, False]
    assert frame["error"][1:].tolist() == [
        f"{tmp_path / 'missing.png'}: not found",
        f"{empty}: folder has no images (.png, .jpg, .jpeg, .bmp)",
    ]
    assert frame[["label", "probability"]][1:].isna().all(axis=None)


@pytest.mark.parametrize("resample", ["bicubic", "nearest"])
def test_predict_matches_the_ingested_pixels(tmp_path: Path, resample: str) -> None:
    """Raw files predicted directly score exactly as their ingested (resized) arrays do, whatever
    ``ingest.resample`` was: the model carries the preprocessing ingest recorded."""
    images, labels = tiny_images(40, seed=3)  # enough of each class for every split
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        save_png(tmp_path / "raw" / CLASSES[label] / f"{i}.png", image[:, :7], scale=3)  # 21x24 -> 8x8
    params = ingest_params(tmp_path / "raw", classes=CLASSES, resample=resample)
    ingested = run_ingest(params, tmp_path / "ingested")
    model, config = tiny_model()
    preprocessing = Dataset(tmp_path / "ingested").info.attributes["preprocessing"]
    save_model(model, dataclasses.replace(config, preprocessing=preprocessing), tmp_path / "models")

    paths = [str(tmp_path / "raw" / name) for name in ingested.manifest["source"]]
    frame = predict_paths(paths, tmp_path / "models", device="cpu", batch_size=64)
    expected = predict_probabilities(model, ingested.images(), CPU, batch_size=64)
    assert frame["error"].isna().all()
    assert frame["label"].tolist() == [CLASSES[i] for i in expected.argmax(axis=1)]
    np.testing.assert_array_equal(frame["probability"], expected.max(axis=1))


def test_a_preprocessing_that_does_not_fit_the_model_is_refused(tmp_path: Path) -> None:
    model, config = tiny_model()
    save_model(model, config, tmp_path / "m")
    config_path = tmp_path / "m" / "model.json"
    written = json.loads(config_path.read_text())
    written["preprocessing"] = {
        "channels": 3,
        "image_size": [8, 8],
        "resample": "box",
        "convert": True,
        "background": 0,
        "jpeg_draft": False,
    }
    config_path.write_text(json.dumps(written))
    with pytest.raises(
        ModelError, match=r"model.json: .*preprocessing gives 3x8x8 images, image_shape is \[1, 8, 8\]"
    ):
        predict_paths([tmp_path / "m"], tmp_path / "m", device="cpu")


def test_model_round_trip_gives_the_same_predictions(tmp_path: Path) -> None:
    model, config = tiny_model()
    save_model(model, config, tmp_path / "models")
    loaded, loaded_config = load_model(tmp_path / "models", CPU)
    images, _ = tiny_images(5, seed=9)
    assert loaded_config == config
    np.testing.assert_array_equal(
        predict_probabilities(loaded, images, CPU, 8), predict_probabilities(model, images, CPU, 8)
    )


PREDICT = [sys.executable, "-m", "mlpipeline.modeling.predict"]


def with_closed(descriptor: int, command: list[str]) -> list[str]:
    """``command`` run by a shell with ``descriptor`` closed (``2>&-``)."""
    return ["sh", "-c", f'"$@" {descriptor}>&-', "sh", *command]


def test_a_closed_stderr_keeps_error_lines_out_of_the_csv_on_stdout(files: dict[str, Path]) -> None:
    # `mlpipeline-predict ... > pred.csv 2>&-`: Python leaves sys.stderr None then, and print(file=None)
    # writes to stdout: the error line landed above the header, and pandas read it as the header.
    command = [*PREDICT, str(files["folder"]), str(files["corrupt"]), "--model", str(files["model"])]
    result = run(with_closed(2, command), files["top"].parent, check=False)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == "path,label,probability"
    assert pd.read_csv(io.StringIO(result.stdout))["label"].tolist() == ["left", "left", "center"]


def test_a_closed_stderr_keeps_the_model_error_out_of_stdout(tmp_path: Path) -> None:
    result = run(with_closed(2, [*PREDICT, "x.png", "--model", "nowhere"]), tmp_path, check=False)
    assert (result.returncode, result.stdout) == (3, "")


def test_a_closed_stdout_without_output_is_one_line(files: dict[str, Path], tmp_path: Path) -> None:
    # It wrote to sys.stdout, None: an AttributeError traceback.
    command = [*PREDICT, str(files["folder"]), "--model", str(files["model"])]
    result = run(with_closed(1, command), tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["predict: error: stdout is closed: name a file with --output"]


@pytest.mark.parametrize("named", ["explicitly", "in its folder"])
def test_an_output_that_is_an_input_image_is_refused(
    files: dict[str, Path], tmp_path: Path, named: str
) -> None:
    # It overwrote the image with the CSV.
    target = files["folder"] / "10.png"
    before = target.read_bytes()
    inputs = [str(target)] if named == "explicitly" else [str(files["folder"])]
    command = [*PREDICT, *inputs, "--model", str(files["model"]), "--output", str(target)]
    result = run(command, tmp_path, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"predict: error: --output {target}: is one of the images to predict; name another file"
    ]
    assert target.read_bytes() == before


def test_an_output_that_reaches_an_input_through_a_link_is_refused(
    files: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "linked").symlink_to(files["folder"])
    target = tmp_path / "linked" / "sub" / "1.png"
    before = target.read_bytes()
    result = predict_cli(files, tmp_path, "--output", str(target))
    assert result.returncode == 2 and "is one of the images to predict" in result.stderr
    assert target.read_bytes() == before


@pytest.mark.parametrize("output", ["newdir/", "newdir/.", "newdir/sub/"])
def test_an_output_naming_a_missing_folder_is_one_line(
    files: dict[str, Path], tmp_path: Path, output: str
) -> None:
    # Path("newdir/") is Path("newdir"): the trailing slash was dropped and a file named newdir written.
    result = predict_cli(files, tmp_path, "--output", output)
    assert result.returncode == 2 and result.stdout == ""
    folder = output.rstrip("/").removesuffix("/.")
    assert result.stderr.splitlines() == [
        f"predict: error: --output {output}: names a folder; name a file in it, e.g. "
        f"{Path(folder) / 'predictions.csv'}"
    ]
    assert not (tmp_path / "newdir").exists()


def test_an_output_under_a_file_is_one_line(files: dict[str, Path], tmp_path: Path) -> None:
    # A FileExistsError traceback, after predicting every image.
    output = f"{files['top']}/predictions.csv"
    result = predict_cli(files, tmp_path, "--output", output)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"predict: error: --output {output}: {files['top']} is not a folder"
    ]


def test_folders_under_a_hidden_parent_are_searched(files: dict[str, Path], tmp_path: Path) -> None:
    # `mlpipeline-predict ~/.cache/photos`: only the folders below the one named are hidden ones.
    photos = tmp_path / ".cache" / "photos"
    photos.parent.mkdir()
    files["folder"].rename(photos)
    frame = predict_paths([photos], files["model"], device="cpu")
    assert frame["error"].isna().all()
    assert frame["path"].tolist() == [
        str(photos / "2.png"),
        str(photos / "10.png"),
        str(photos / "sub" / "1.png"),
    ]
