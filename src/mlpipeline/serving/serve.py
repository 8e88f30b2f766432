"""``mlpipeline-serve``: the model over HTTP, on ONNX Runtime alone (no torch).

    mlpipeline-serve                                   # exported/model.onnx on 127.0.0.1:8000
    mlpipeline-serve --model image-classifier@v1.2.0   # the ONNX file released with that version
    mlpipeline-serve --onnx model.onnx --host 0.0.0.0 --port 8080

Routes, answers and limits: ``mlpipeline.serving.app``; how concurrent requests share a batch:
``mlpipeline.serving.batcher``. Settings change no output of the pipeline, so they are options
here, never DVC params. A model that cannot be used is one line and exit 3 before the server
listens; a port already taken, one line and exit 2.
"""

from __future__ import annotations

import argparse
import errno
import logging
import socket
from collections.abc import Sequence

from mlpipeline.core import stage
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.workers import available_cores
from mlpipeline.serving.app import Limits, make_app
from mlpipeline.versions import registry

DEFAULT_ONNX = "exported/model.onnx"
log = logging.getLogger("serve")


def main(argv: Sequence[str] | None = None) -> None:
    from aiohttp import web

    from mlpipeline.modeling.onnx_model import OnnxModel

    args = parse_args(argv)
    onnx_file = registry.onnx_file(args.model) if args.model else args.onnx
    model = OnnxModel(onnx_file, threads=args.threads)
    limits = Limits(
        max_request_bytes=args.max_request_mb << 20,
        max_images=args.max_images,
        max_batch=args.max_batch,
        max_wait=args.max_wait_ms / 1000,
    )
    listening = _bound(args.host, args.port)
    app = make_app(model, args.model or str(onnx_file), limits, decoders=args.threads)
    host, port = listening.getsockname()[:2]
    log.info(
        "%s (%d classes) on http://%s:%d/ (health: /health, scores: POST /predict)",
        args.model or onnx_file,
        model.config.num_classes,
        host,
        port,
    )
    web.run_app(app, sock=listening, print=None, handle_signals=True, access_log=None)


def _bound(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (0: a free port), or one line saying why it cannot."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        listening = socket.socket(family, kind, proto)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(address)
        listening.listen(128)
    except socket.gaierror as exc:
        raise PipelineError(f"--host {host}: not an address of this machine ({exc.strerror})")
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PipelineError(
                f"--port {port}: already in use on {host} (pick another, or 0 for a free one)"
            )
        raise PipelineError(f"--host {host} --port {port}: cannot listen ({exc.strerror})")
    return listening


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mlpipeline-serve", description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--onnx", default=DEFAULT_ONNX, metavar="FILE", help=f"default: {DEFAULT_ONNX}")
    which.add_argument("--model", metavar="VERSION", help="a released version, e.g. image-classifier@v1.2.0")
    parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="default: 8000 (0: a free port)")
    parser.add_argument(
        "--threads", type=int, default=available_cores(), help="ONNX Runtime and decoding threads"
    )
    parser.add_argument("--max-batch", type=int, default=Limits.max_batch, help="images per model call")
    parser.add_argument(
        "--max-wait-ms", type=float, default=Limits.max_wait * 1000, help="a batch's wait for more"
    )
    parser.add_argument("--max-request-mb", type=int, default=Limits.max_request_bytes >> 20)
    parser.add_argument("--max-images", type=int, default=Limits.max_images, help="images per request")
    args = parser.parse_args(argv)
    for name in ("threads", "max_batch", "max_request_mb", "max_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= args.max_wait_ms <= 1000 or not 0 <= args.port <= 65535:
        parser.error("--max-wait-ms must be 0 to 1000 and --port 0 to 65535")
    if args.model is not None and not registry.is_version(args.model):
        parser.error(
            f"--model {args.model}: not a version (NAME@vX.Y.Z, NAME@latest, NAME#STAGE); a file: --onnx"
        )
    return args


def cli() -> None:
    """The ``mlpipeline-serve`` command: ``main`` with the one-line errors and exit codes."""
    stage.run("serve", main)


if __name__ == "__main__":
    cli()
