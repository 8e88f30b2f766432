"""Predict at scale: the table streams out (a batch at a time, the listing never held whole), the
same bytes for any worker count, top-k classes, manifests, Parquet, S3 prefixes, and progress."""

from __future__ import annotations

import io
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run
from conftest_s3 import S3Remote
from test_ingest_s3 import credentials
from test_predict import save_png
from tiny_model import CLASSES, tiny_images, tiny_model, write_tiny_model

from mlpipeline.devtools import s3server
from mlpipeline.modeling import scoring
from mlpipeline.modeling.predict_inputs import Item, list_inputs
from mlpipeline.modeling.scoring import ModelSpec, predictions

PREDICT = [sys.executable, "-m", "mlpipeline.modeling.predict"]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """24 tiny images (8 of each class) in two folders, and a trained model beside them."""
    write_tiny_model(tmp_path / "models")
    images, _ = tiny_images(8, seed=4)
    for index, image in enumerate(images):
        save_png(tmp_path / "photos" / f"part{index % 2}" / f"{index}.png", image)
    return tmp_path


def predict(cwd: Path, *args: str, env: dict[str, str] | None = None, check: bool = True):
    return run([*PREDICT, *args], cwd, check=check, env=env)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_listing_and_the_table_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    """Predictions come batch by batch from an endless stream of images: nothing waits for the
    listing's end, and the images taken ahead of the output are bounded by the batches in flight."""
    monkeypatch.setenv("MLPIPELINE_WORKERS", workers)
    write_tiny_model(tmp_path)
    save_png(tmp_path / "a.png", tiny_images(1, seed=0)[0][0])
    taken = itertools.count()
    endless = (Item(str(tmp_path / "a.png"), str(tmp_path / "a.png")) for _ in taken)
    _, config = tiny_model()
    spec = ModelSpec(str(tmp_path), False, "cpu", batch_size=4)
    scorer = lambda images: np.full((len(images), 3), 1 / 3)  # noqa: E731 (the model is not the point)
    batches = predictions(endless, spec, config, scorer, topk=1)
    first = [next(batches) for _ in range(3)]
    assert [len(batch) for batch in first] == [4, 4, 4]
    pulled = next(taken)  # the first image not taken yet
    ahead, in_flight = scoring.MIN_BATCHES_PER_WORKER * int(workers), 2 * int(workers)
    assert pulled <= 4 * (ahead + in_flight + 3), pulled


def test_the_same_bytes_for_any_number_of_workers(photos: Path) -> None:
    args = ["photos", "--model", "models", "--device", "cpu", "--batch-size", "1", "--topk", "3"]
    one = predict(photos, *args, env={"MLPIPELINE_WORKERS": "1"}).stdout
    two = predict(photos, *args, env={"MLPIPELINE_WORKERS": "2"}).stdout  # 24 batches: two spawned workers
    assert one == two and len(one.splitlines()) == 25


def test_topk_gives_the_next_classes_best_first(photos: Path) -> None:
    table = pd.read_csv(io.StringIO(predict(photos, "photos", "--model", "models", "--topk", "3").stdout))
    assert list(table.columns) == [
        "path",
        "label",
        "probability",
        "label_2",
        "probability_2",
        "label_3",
        "probability_3",
    ]
    assert (table["probability"] >= table["probability_2"]).all()
    assert (table["probability_2"] >= table["probability_3"]).all()
    np.testing.assert_allclose(table[["probability", "probability_2", "probability_3"]].sum(axis=1), 1, 1e-5)
    assert all(sorted(row) == sorted(CLASSES) for row in table[["label", "label_2", "label_3"]].values)
    wrong = predict(photos, "photos", "--model", "models", "--topk", "4", check=False)
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert wrong.stderr.splitlines() == ["predict: error: --topk 4: must be 1 to the model's 3 classes"]


def test_a_manifest_names_the_images_in_its_row_order(photos: Path) -> None:
    (photos / "photos" / "list.csv").write_text("label,path\nx,part1/3.png\nx,part0/0.png\nx,gone.png\ny,\n")
    done = predict(photos, "photos/list.csv", "--model", "models", check=False)
    assert done.returncode == 1
    table = pd.read_csv(io.StringIO(done.stdout))
    assert table["path"].tolist() == ["photos/part1/3.png", "photos/part0/0.png"]
    assert done.stderr.splitlines() == [
        "predict: error: photos/gone.png: not found",
        "predict: error: photos/list.csv: line 5: no path",
    ]
    (photos / "bad.csv").write_text("file\nx.png\n")
    bad = predict(photos, "bad.csv", "--model", "models", check=False)
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "predict: error: bad.csv: a manifest needs a 'path' column (header: ['file'])"
    ]


def test_parquet_holds_what_the_csv_holds(photos: Path) -> None:
    csv = pd.read_csv(io.StringIO(predict(photos, "photos", "--model", "models", "--topk", "2").stdout))
    predict(photos, "photos", "--model", "models", "--topk", "2", "--output", "out/p.parquet")
    parquet = pd.read_parquet(photos / "out" / "p.parquet")
    assert list(parquet.columns) == list(csv.columns)
    pd.testing.assert_frame_equal(parquet, csv, check_exact=False, atol=5e-7)


def test_progress_is_shown_on_stderr(photos: Path) -> None:
    env = {"MLPIPELINE_PROGRESS_INTERVAL": "0"}
    done = predict(photos, "photos", "--model", "models", "--output", "p.csv", "--batch-size", "8", env=env)
    lines = done.stderr.splitlines()
    assert lines[-1] == "predict: wrote p.csv (24 predicted, 0 failed)"
    assert lines[0].startswith("predict: predicting: 8 images in 00:00"), lines


@pytest.mark.s3
def test_an_s3_prefix_is_predicted_like_the_local_folder(
    photos: Path, s3_remote: S3Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = s3server.client(s3_remote.server.endpoint)
    for path in sorted((photos / "photos").rglob("*.png")):
        key = f"{s3_remote.prefix}/photos/{path.relative_to(photos / 'photos').as_posix()}"
        client.put_object(Bucket=s3_remote.bucket, Key=key, Body=path.read_bytes())
    url = f"{s3_remote.url}/photos"
    env = credentials(s3_remote.server.endpoint)
    remote = pd.read_csv(io.StringIO(predict(photos, url, "--model", "models", env=env).stdout))
    local = pd.read_csv(io.StringIO(predict(photos, "photos", "--model", "models").stdout))
    assert remote["path"].tolist() == [p.replace("photos", url, 1) for p in local["path"]]
    assert remote["label"].tolist() == local["label"].tolist()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    listed = [item.path for item in list_inputs([f"{url}/part0/0.png", f"{url}/nothing"])]
    assert listed == [f"{url}/part0/0.png", f"{url}/nothing"]
