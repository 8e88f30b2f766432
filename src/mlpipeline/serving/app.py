"""The server's routes: the upload page, a health check, and class scores for posted images.

- ``GET /``: a page to pick images and see their classes (``page.html``);
- ``GET /health``: ``{"status": "ok", "model": ..., "classes": [...], ...}``;
- ``POST /predict``: one image as the body (``Content-Type: image/png``, ``image/jpeg``,
  ``image/bmp`` or ``application/octet-stream``), or several as ``multipart/form-data`` file
  fields; ``?topk=K`` keeps the K best classes (default: all). The answer:
  ``{"predictions": [{"name", "label", "probability", "scores": [{"label", "probability"}, ...]}]}``,
  one per image in the order sent, scores best first.

Each image is decoded as ingest decoded the training images (the preprocessing the ONNX file's
``model.json`` recorded), in a thread, then scored in micro-batches (``batcher``). Every refusal
is JSON ``{"error": "..."}`` with a 4xx status: 400 an image that does not decode (named) or a
bad ``topk``, 413 a body over ``max_request_bytes`` or more than ``max_images`` images, 415 a
body that is no image or form. Nothing a client sends reaches a traceback.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from aiohttp import BodyPartReader, web

from mlpipeline.core.errors import PipelineError
from mlpipeline.ingestion.images import decode_image
from mlpipeline.modeling.onnx_model import OnnxModel
from mlpipeline.serving.batcher import MicroBatcher

IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp", "application/octet-stream")
FORM = "multipart/form-data"


@dataclass(frozen=True)
class Limits:
    """What one request may hold, and how requests are batched."""

    max_request_bytes: int = 10 << 20
    max_images: int = 64
    max_image_pixels: int = 40_000_000  # a small PNG can hold a huge image: refused from its header
    max_batch: int = 64
    max_wait: float = 0.002  # seconds a batch waits for company


MODEL = web.AppKey("model", OnnxModel)
BATCHER = web.AppKey("batcher", MicroBatcher)
DECODERS = web.AppKey("decoders", ThreadPoolExecutor)
LIMITS = web.AppKey("limits", Limits)
SOURCE = web.AppKey("source", str)


def make_app(model: OnnxModel, source: str, limits: Limits, decoders: int) -> web.Application:
    """The application serving ``model`` (``source``: how /health names it)."""
    app = web.Application(client_max_size=limits.max_request_bytes, middlewares=[json_errors])
    app[MODEL], app[LIMITS], app[SOURCE] = model, limits, source
    app[BATCHER] = MicroBatcher(model, limits.max_batch, limits.max_wait)
    app[DECODERS] = ThreadPoolExecutor(decoders, thread_name_prefix="decode")
    app.router.add_get("/", page)
    app.router.add_get("/health", health)
    app.router.add_post("/predict", predict)
    app.on_startup.append(_start)
    app.on_cleanup.append(_stop)
    return app


async def _start(app: web.Application) -> None:
    app[BATCHER].start()


async def _stop(app: web.Application) -> None:
    await app[BATCHER].stop()
    app[DECODERS].shutdown(wait=True)


class Refused(Exception):
    """A request the server answers with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every refusal as ``{"error": reason}``: ours, and aiohttp's own 404, 405 and 413."""
    try:
        return await handler(request)
    except Refused as refused:
        return web.json_response({"error": str(refused)}, status=refused.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = exc.reason
        if exc.status == 413:
            reason = f"the request is over {request.app[LIMITS].max_request_bytes} bytes"
        return web.json_response({"error": reason}, status=exc.status)


async def page(request: web.Request) -> web.Response:
    html = resources.files("mlpipeline.serving").joinpath("page.html").read_text(encoding="utf-8")
    return web.Response(text=html, content_type="text/html")


async def health(request: web.Request) -> web.Response:
    config, batcher = request.app[MODEL].config, request.app[BATCHER]
    return web.json_response(
        {
            "status": "ok",
            "model": request.app[SOURCE],
            "classes": config.classes,
            "image_shape": config.image_shape,
            "batches": batcher.batches,
            "images": batcher.images,
        }
    )


async def predict(request: web.Request) -> web.Response:
    topk = _topk(request)
    named = await _images(request)
    pixels = await _decoded(request.app, named)
    try:
        scores = await request.app[BATCHER].probabilities(pixels)
    except PipelineError as exc:  # the model itself failed: the server's fault, said in one line
        raise Refused(500, str(exc))
    classes = request.app[MODEL].config.classes
    return web.json_response(
        {
            "predictions": [
                _answer(name, row, classes, topk) for (name, _), row in zip(named, scores, strict=True)
            ]
        }
    )


def _topk(request: web.Request) -> int:
    classes = request.app[MODEL].config.num_classes
    raw = request.query.get("topk", str(classes))
    if not raw.isdigit() or not 1 <= int(raw) <= classes:
        raise Refused(400, f"topk={raw}: must be a whole number from 1 to {classes}")
    return int(raw)


async def _images(request: web.Request) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image the request carries."""
    kind, limits = request.content_type, request.app[LIMITS]
    if kind in IMAGE_TYPES:
        body = await request.read()
        if not body:
            raise Refused(400, "the request has no body: post an image")
        return [("image", body)]
    if kind != FORM:
        raise Refused(
            415,
            f"Content-Type {kind or '(none)'}: post an image ({', '.join(IMAGE_TYPES)}) or {FORM}",
        )
    images = []
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or part.filename is None:
            continue  # a plain form field: not an image
        if len(images) == limits.max_images:
            raise Refused(413, f"more than {limits.max_images} images in one request")
        images.append((part.filename, bytes(await part.read())))
    if not images:
        raise Refused(400, "the form holds no file: send images as file fields")
    return images


async def _decoded(app: web.Application, named: list[tuple[str, bytes]]) -> np.ndarray:
    """The images as the model takes them (decoded in threads, then their centre window when
    training took a smaller ``train.image_size``, as evaluation did); 400 naming the first that
    fails."""
    loop, preprocessing = asyncio.get_running_loop(), app[MODEL].config.input_preprocessing()
    limit = app[LIMITS].max_image_pixels

    def decode(name: str, data: bytes) -> np.ndarray:
        return decode_image(data, name, preprocessing, limit)

    jobs = [loop.run_in_executor(app[DECODERS], decode, name, data) for name, data in named]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    for result in results:
        if isinstance(result, PipelineError):
            raise Refused(400, str(result))
        if isinstance(result, BaseException):
            raise result
    return app[MODEL].config.input_window(np.stack(results))


def _answer(name: str, row: np.ndarray, classes: list[str], topk: int) -> dict[str, Any]:
    order = np.argsort(-row, kind="stable")[:topk]
    scores = [{"label": classes[i], "probability": float(row[i])} for i in order]
    return {
        "name": name,
        "label": scores[0]["label"],
        "probability": scores[0]["probability"],
        "scores": scores,
    }
