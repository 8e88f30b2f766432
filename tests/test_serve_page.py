"""The server's upload page in a real headless Chromium: a user picks image files, submits, and
reads each one's class in the table; a file that is no image shows the server's error line.

Chromium is driven through its DevTools protocol (a websocket, spoken here with aiohttp): the file
input gets real files (``DOM.setFileInputFiles``), the form is submitted as a click would, and the
page's own script posts them to the server and fills the table. Chromium as for the plots page
test (``make browser``); no network but loopback.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from served import png, write_onnx
from test_plots_page import CHROMIUM, CHROMIUM_FLAGS
from tiny_model import tiny_images

from mlpipeline.devtools.serve_process import serving
from mlpipeline.modeling.predict import predict_onnx

# The plots page test's flags, loopback excepted from its every-host-unknown rule (it maps IP
# literals too), and no virtual time: here the page waits for a real server.
BROWSER_FLAGS = [
    f"{flag}, EXCLUDE 127.0.0.1" if flag.startswith("--host-resolver-rules") else flag
    for flag in CHROMIUM_FLAGS
    if not flag.startswith("--virtual-time-budget")
]


ERROR_LINE = "document.getElementById('error').textContent"
CELLS = "row => [...row.cells].map(cell => cell.textContent)"


class DevTools:
    """One page's DevTools session: commands in, results out."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket, self.ids = socket, itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        await self.socket.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = json.loads((await self.socket.receive(timeout=30)).data)
            if message.get("id") == ident:
                assert "error" not in message, message
                return message["result"]

    async def value(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        return result["result"].get("value")

    async def until(self, expression: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while not (found := await self.value(expression)):
            assert time.monotonic() < deadline, f"never true: {expression}"
            await asyncio.sleep(0.1)
        return found


async def upload(page_url: str, files: list[Path], profile: Path) -> tuple[list[list[str]], str]:
    """The table rows and the error line after uploading ``files`` on the page at ``page_url``."""
    browser = subprocess.Popen(
        [CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", page_url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert browser.poll() is None and time.monotonic() < deadline, "chromium did not start"
            await asyncio.sleep(0.1)
        port = port_file.read_text().split()[0]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as listed:
                (target,) = [t for t in await listed.json() if t["type"] == "page"]
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as socket:
                tools = DevTools(socket)
                await tools.until("document.getElementById('model').textContent.includes('classes')")
                root = (await tools.send("DOM.getDocument"))["root"]["nodeId"]
                node = (await tools.send("DOM.querySelector", nodeId=root, selector="#files"))["nodeId"]
                await tools.send("DOM.setFileInputFiles", nodeId=node, files=[str(f) for f in files])
                await tools.value("document.querySelector('button[type=submit]').click()")
                await tools.until(f"document.querySelectorAll('tr.prediction').length || {ERROR_LINE}")
                rows = await tools.value(f"[...document.querySelectorAll('tr.prediction')].map({CELLS})")
                return rows, await tools.value(ERROR_LINE)
    finally:
        browser.terminate()
        browser.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="no chromium: see `make browser`")
def test_the_upload_page_classifies_picked_files_in_a_real_browser(tmp_path: Path) -> None:
    assert CHROMIUM, "no Chromium: `make browser` installs Debian's chromium"
    onnx_file = write_onnx(tmp_path / "model.onnx")
    files = []
    for index, image in enumerate(tiny_images(1, seed=2)[0]):  # top, left, center
        files.append(tmp_path / "photos" / f"photo{index}.png")
        files[-1].parent.mkdir(exist_ok=True)
        files[-1].write_bytes(png(image))
    (tmp_path / "notes.png").write_bytes(b"not an image at all")
    expected = predict_onnx(files, onnx_file)

    with serving(onnx_file, "--threads", "1") as url:
        rows, error = asyncio.run(upload(f"{url}/", files, tmp_path / "profile"))
        assert error == ""
        assert [row[0] for row in rows] == [f.name for f in files]
        assert [row[1] for row in rows] == list(expected["label"])
        assert [float(row[2]) for row in rows] == pytest.approx(list(expected["probability"]), abs=1e-3)
        rows, error = asyncio.run(upload(f"{url}/", [tmp_path / "notes.png"], tmp_path / "profile2"))
        assert rows == [] and error == "notes.png: not a decodable image (expected PNG, JPEG or BMP)"
