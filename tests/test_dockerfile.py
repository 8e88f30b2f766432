"""The serving container's recipe (``docker/serve.Dockerfile``). Docker cannot run here, so what
can be checked without it is: the file parses into known instructions, it copies what exists and
serves the file the export stage writes, its entry point is the ``mlpipeline-serve`` console
script, and the packages it installs are exactly what the server imports (run here, in a
process that serves a request): nothing missing, and no torch."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from served import write_onnx

DOCKERFILE = REPO_ROOT / "docker" / "serve.Dockerfile"
KNOWN = {"FROM", "WORKDIR", "COPY", "RUN", "ARG", "ENV", "USER", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, continuation lines joined, comments left out."""
    joined, parsed = "", []
    for line in DOCKERFILE.read_text().splitlines():
        if not joined and (not line.strip() or line.lstrip().startswith("#")):
            continue
        joined += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            keyword, _, arguments = joined.strip().partition(" ")
            parsed.append((keyword, arguments))
            joined = ""
    return parsed


def test_the_dockerfile_parses_and_copies_what_exists() -> None:
    parsed = instructions()
    assert {keyword for keyword, _ in parsed} <= KNOWN and parsed[0][0] == "FROM"
    args = dict(a.split("=", 1) for keyword, a in parsed if keyword == "ARG")
    assert args["MODEL"] == "exported/model.onnx"  # what the export stage writes
    for keyword, arguments in parsed:
        if keyword == "COPY":
            *sources, _ = shlex.split(arguments.replace("${MODEL}", args["MODEL"]))
            for source in sources:
                assert source == args["MODEL"] or (REPO_ROOT / source).exists(), source


def test_the_entry_point_is_the_serve_command_on_the_copied_model() -> None:
    entry = json.loads(dict(instructions())["ENTRYPOINT"])
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry[0] == "mlpipeline-serve" and scripts[entry[0]] == "mlpipeline.serving.serve:cli"
    assert entry[entry.index("--onnx") + 1] == "/model/model.onnx"
    assert entry[entry.index("--host") + 1] == "0.0.0.0"


def installed() -> set[str]:
    """The packages the RUN pip line installs by name (beside the project, with --no-deps)."""
    (run,) = [
        arguments for keyword, arguments in instructions() if keyword == "RUN" and "pip install" in arguments
    ]
    first = shlex.split(run.split("&&")[0])
    return {word.lower() for word in first[first.index("install") + 1 :] if not word.startswith("-")} - {
        "constraints.txt"
    }


@pytest.mark.slow
def test_the_image_installs_what_the_server_imports_and_no_torch(tmp_path: Path) -> None:
    onnx_file = write_onnx(tmp_path / "model.onnx")
    code = f"""
import asyncio, importlib.metadata as md, json, sys
from aiohttp.test_utils import TestClient, TestServer
from mlpipeline.modeling.onnx_model import OnnxModel
from mlpipeline.serving import serve
from mlpipeline.serving.app import Limits, make_app

async def main():
    async with TestClient(TestServer(make_app(OnnxModel({str(onnx_file)!r}), "m", Limits(), 1))) as client:
        assert (await client.get("/health")).status == 200

asyncio.run(main())
found = md.packages_distributions()
used = {{d.lower() for name in list(sys.modules) for d in found.get(name.split(".")[0], [])}}
print(json.dumps(sorted(used)))
"""
    used = set(
        json.loads(
            subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        )
    )
    named = installed()
    needed = closure(named) | {"mlpipeline", "pip", "setuptools"}  # the project; the base image's own
    assert "torch" not in used and "dvc" not in used
    assert used <= needed, f"the server imports packages the image lacks: {sorted(used - needed)}"
    assert named <= used, f"the image installs what the server never imports: {sorted(named - used)}"


def closure(names: set[str]) -> set[str]:
    """``names`` and every package they require, as pip would install them here."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo = set(), [canonicalize_name(name) for name in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for spec in metadata.requires(name) or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return seen | {name.replace("-", "_") for name in seen}
