"""``mlpipeline-serve``: class scores for posted images (one, or several in a form) equal to
predict's, a health check, clear 4xx answers for everything a client can get wrong, requests
batched together under load, and no torch anywhere in the server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from served import png, write_onnx
from tiny_model import CLASSES, tiny_images

from mlpipeline.devtools.serve_process import serving
from mlpipeline.modeling.onnx_model import OnnxModel
from mlpipeline.modeling.predict import predict_onnx
from mlpipeline.serving.app import Limits, make_app

IMAGES = tiny_images(2, seed=6)[0]  # top, top, left, left, center, center


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_onnx(tmp_path_factory.mktemp("serve") / "model.onnx")


def ask(onnx_file: Path, calls, limits: Limits = Limits()):  # noqa: B008 (frozen defaults)
    """Run ``calls(client)`` against the app served on a free loopback port; its result."""

    async def session():
        app = make_app(OnnxModel(onnx_file), "tiny", limits, decoders=2)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            return await calls(client)

    return asyncio.run(session())


async def answer(response) -> tuple[int, dict]:
    return response.status, await response.json()


def form(named: dict[str, bytes]) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for name, content in named.items():
        data.add_field("file", content, filename=name, content_type="image/png")
    return data


def test_one_image_and_a_batch_get_predicts_scores(onnx_file: Path, tmp_path: Path) -> None:
    for index, image in enumerate(IMAGES):
        (tmp_path / f"{index}.png").write_bytes(png(image))
    expected = predict_onnx(sorted(tmp_path.glob("*.png")), onnx_file, topk=3)

    async def calls(client):
        one = await answer(
            await client.post("/predict", data=png(IMAGES[0]), headers={"Content-Type": "image/png"})
        )
        named = {f"{i}.png": png(image) for i, image in enumerate(IMAGES)}
        batch = await answer(await client.post("/predict?topk=2", data=form(named)))
        return one, batch

    (status, one), (batch_status, batch) = ask(onnx_file, calls)
    assert status == 200 and batch_status == 200
    (single,) = one["predictions"]
    assert single["name"] == "image" and single["label"] == expected["label"][0]
    assert [s["label"] for s in single["scores"]] == list(expected.loc[0, ["label", "label_2", "label_3"]])
    assert single["probability"] == pytest.approx(expected["probability"][0], abs=1e-6)
    assert sum(s["probability"] for s in single["scores"]) == pytest.approx(1)
    predictions = batch["predictions"]
    assert [p["name"] for p in predictions] == [f"{i}.png" for i in range(len(IMAGES))]
    assert [p["label"] for p in predictions] == list(expected["label"])
    assert all(len(p["scores"]) == 2 for p in predictions)
    np.testing.assert_allclose([p["probability"] for p in predictions], expected["probability"], atol=1e-6)


def test_health_names_the_model(onnx_file: Path) -> None:
    async def calls(client):
        return await answer(await client.get("/health"))

    status, health = ask(onnx_file, calls)
    assert status == 200
    assert health == {
        "status": "ok",
        "model": "tiny",
        "classes": CLASSES,
        "image_shape": [1, 8, 8],
        "batches": 0,
        "images": 0,
    }


BAD = {
    "a corrupt image": (
        dict(data=b"\x89PNG\r\n\x1a\n cut", headers={"Content-Type": "image/png"}),
        400,
        "image: not a decodable image (expected PNG, JPEG or BMP)",
    ),
    "a named corrupt file in a batch": (
        dict(data=form({"good.png": png(IMAGES[0]), "bad.png": b"GIF89a"})),
        400,
        "bad.png: not a decodable image",
    ),
    "no body": (dict(data=b"", headers={"Content-Type": "image/png"}), 400, "the request has no body"),
    "text": (
        dict(data=b"hello", headers={"Content-Type": "text/plain"}),
        415,
        "Content-Type text/plain: post",
    ),
    "a form without files": (dict(data={"note": "x"}), 415, "Content-Type application/x-www-form-urlencoded"),
    "a bad topk": (
        dict(params={"topk": "0"}, data=png(IMAGES[0]), headers={"Content-Type": "image/png"}),
        400,
        "topk=0: must be a whole number from 1 to 3",
    ),
    "too large a body": (
        dict(data=b"\0" * (2 << 20), headers={"Content-Type": "image/png"}),
        413,
        "the request is over 1048576 bytes",
    ),
    "too many images": (
        dict(data=form({f"{i}.png": png(IMAGES[0]) for i in range(3)})),
        413,
        "more than 2 images in one request",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_get_a_clear_4xx(onnx_file: Path, case: str) -> None:
    options, status, message = BAD[case]

    async def calls(client):
        return await answer(await client.post("/predict", **options))

    got, body = ask(onnx_file, calls, Limits(max_request_bytes=1 << 20, max_images=2))
    assert got == status and body["error"].startswith(message), body


def test_unknown_paths_and_methods_answer_in_json(onnx_file: Path) -> None:
    async def calls(client):
        return await answer(await client.get("/nope")), await answer(await client.get("/predict"))

    (missing, body), (method, body2) = ask(onnx_file, calls)
    assert (missing, body) == (404, {"error": "Not Found"})
    assert (method, body2) == (405, {"error": "Method Not Allowed"})


def test_concurrent_requests_share_batches(onnx_file: Path) -> None:
    async def calls(client):
        async def one(image):
            return await answer(
                await client.post("/predict", data=png(image), headers={"Content-Type": "image/png"})
            )

        answers = await asyncio.gather(*(one(IMAGES[i % len(IMAGES)]) for i in range(24)))
        return answers, (await answer(await client.get("/health")))[1]

    answers, health = ask(onnx_file, calls, Limits(max_wait=0.05))
    assert all(status == 200 for status, _ in answers)
    labels = [body["predictions"][0]["label"] for _, body in answers]
    assert labels == [labels[i % len(IMAGES)] for i in range(24)]  # each request got its own rows
    assert health["images"] == 24 and health["batches"] < 24, health


def test_the_server_imports_no_torch(onnx_file: Path) -> None:
    code = f"""
import asyncio, sys
from aiohttp.test_utils import TestClient, TestServer
from mlpipeline.modeling.onnx_model import OnnxModel
from mlpipeline.serving.app import Limits, make_app
from mlpipeline.serving import serve

async def main():
    app = make_app(OnnxModel({str(onnx_file)!r}), "m", Limits(), 1)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        kind = {{"Content-Type": "image/png"}}
        response = await client.post("/predict", data={png(IMAGES[0])!r}, headers=kind)
        assert response.status == 200, await response.text()
        assert (await client.get("/")).status == 200

asyncio.run(main())
assert "torch" not in sys.modules, "torch was imported"
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_command_serves_and_refuses_what_it_cannot_serve(onnx_file: Path, tmp_path: Path) -> None:
    import urllib.request

    with serving(onnx_file, "--threads", "1") as url:
        page = urllib.request.urlopen(f"{url}/").read().decode()
        assert '<form id="upload">' in page
        request = urllib.request.Request(
            f"{url}/predict", data=png(IMAGES[4]), headers={"Content-Type": "image/png"}
        )
        assert json.load(urllib.request.urlopen(request))["predictions"][0]["label"] == "center"
        port = url.rsplit(":", 1)[1]
        taken = subprocess.run(
            [sys.executable, "-m", "mlpipeline.serving.serve", "--onnx", str(onnx_file), "--port", port],
            capture_output=True,
            text=True,
        )
        assert taken.returncode == 2
        assert taken.stderr.splitlines() == [
            f"serve: error: --port {port}: already in use on 127.0.0.1 (pick another, or 0 for a free one)"
        ]
    missing = subprocess.run(
        [sys.executable, "-m", "mlpipeline.serving.serve", "--onnx", str(tmp_path / "none.onnx")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 3
    assert missing.stderr.splitlines() == [
        f"serve: error: {tmp_path / 'none.onnx'}: not found (has the export stage run?)"
    ]
