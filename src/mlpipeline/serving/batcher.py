"""Micro-batching: the images of requests that arrive together run through the model as one batch.

One ONNX Runtime call on 32 images costs far less than 32 calls on one (the graph's overhead is
paid once, and its kernels vectorize over the batch), so under load a server that runs each
request alone spends its time in overhead. Requests put their decoded images on a queue; one
task takes what is queued, waits up to ``max_wait`` seconds for more while the batch is under
``max_batch`` images, runs the batch in a thread (ONNX Runtime releases the GIL, so requests keep
arriving and decoding meanwhile) and hands each request its own rows. While a batch runs, the
next one gathers: the busier the server, the larger the batches. Alone, a request waits at most
``max_wait``.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from mlpipeline.modeling.onnx_model import OnnxModel, softmax


@dataclass
class _Request:
    images: np.ndarray
    answer: asyncio.Future[np.ndarray]


class MicroBatcher:
    """Class probabilities of image batches, computed in micro-batches across concurrent callers."""

    def __init__(self, model: OnnxModel, max_batch: int, max_wait: float) -> None:
        self.model, self.max_batch, self.max_wait = model, max_batch, max_wait
        self.queue: asyncio.Queue[_Request] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="onnxruntime")  # one batch at a time
        self.batches = self.images = 0  # counted for /health: the mean batch shows the batching works
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.executor.shutdown(wait=True)

    async def probabilities(self, images: np.ndarray) -> np.ndarray:
        """float64 class probabilities of uint8 ``images`` N x C x H x W, batched with others'."""
        answer = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(_Request(images, answer))
        return await answer

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            gathered = await self._gather(loop)
            batch = np.concatenate([request.images for request in gathered])
            try:
                logits = await loop.run_in_executor(self.executor, self.model.logits, batch, len(batch))
            except Exception as exc:  # ModelError of a graph that cannot run: each caller gets it
                for request in gathered:
                    if not request.answer.done():
                        request.answer.set_exception(exc)
                continue
            self.batches, self.images = self.batches + 1, self.images + len(batch)
            rows = softmax(logits)
            start = 0
            for request in gathered:
                if not request.answer.done():  # a caller that went away is skipped
                    request.answer.set_result(rows[start : start + len(request.images)])
                start += len(request.images)

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> list[_Request]:
        """The next requests to run: the first to come, then what comes within ``max_wait`` while
        the batch has room."""
        gathered = [await self.queue.get()]
        count, deadline = len(gathered[0].images), loop.time() + self.max_wait
        while count < self.max_batch:
            try:
                request = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    request = await asyncio.wait_for(self.queue.get(), left)
                except TimeoutError:
                    break
            gathered.append(request)
            count += len(request.images)
        return gathered
