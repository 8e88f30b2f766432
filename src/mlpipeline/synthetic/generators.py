"""The generator registry and the batch loop that streams any generator's images.

A generator is one function: given a ``SynthesisTask`` (classes, image shape,
the real data's ``ValueMap``, the params section), it checks that it can draw
those classes and returns a renderer ``(labels, torch.Generator) -> uint8
N x C x H x W``. Register it with ``@register_generator("name")`` and select it
with ``synthesize.generator: name``; the batching, seeding, class balance,
worker processes and writing are shared.

The same bytes on every CPU are the renderer's to deliver: the built-in
``glyphs`` computes in integers from ``exact_draws(generator)``, and
``ValueMap.apply`` is exact, but float kernels (``grid_sample``, convolutions,
``torch.randn``) may round differently on another CPU, and a pixel on a
rounding boundary then changes the stage's hash.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from mlpipeline.core.device import limit_threads
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import ParamError
from mlpipeline.core.seeding import rng
from mlpipeline.core.workers import ordered_map
from mlpipeline.synthetic.values import ValueMap

Renderer = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
GeneratorFactory = Callable[["SynthesisTask"], Renderer]

# About this many output pixels per batch: large enough to amortise torch's
# per-call overhead, small enough that a 4x supersampled batch stays tens of MB.
BATCH_PIXELS = 2**18

_REGISTRY: dict[str, GeneratorFactory] = {}


class CannotDraw(PipelineError):
    """A generator cannot draw the dataset's classes (the glyphs generator and class ``cat0``): the
    stage then writes no synthetic images and says why in its summary line, and training runs on
    the real images alone. Raised by a factory, so before anything is rendered."""


@dataclass(frozen=True)
class SynthesisTask:
    classes: Sequence[str]
    image_shape: tuple[int, int, int]  # C, H, W of the real data
    values: ValueMap
    params: Any  # the whole synthesize section; a generator reads its own sub-section
    device: torch.device


def register_generator(name: str) -> Callable[[GeneratorFactory], GeneratorFactory]:
    """Decorator: make ``factory`` selectable as ``synthesize.generator: name``."""

    def add(factory: GeneratorFactory) -> GeneratorFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"generator '{name}' is already registered")
        _REGISTRY[name] = factory
        return factory

    return add


def get_generator(name: str, key: str = "synthesize.generator") -> GeneratorFactory:
    """The factory registered as ``name``; an unknown name is a ``ParamError`` naming ``key``."""
    if name not in _REGISTRY:
        raise ParamError(
            key, f"'{name}' is not a registered generator (registered: {', '.join(sorted(_REGISTRY))})"
        )
    return _REGISTRY[name]


def batch_size(image_shape: Sequence[int]) -> int:
    """Images per batch; fixed by the image shape, so the output bytes never depend on the machine."""
    return max(1, BATCH_PIXELS // (image_shape[1] * image_shape[2]))


def generate(
    factory: GeneratorFactory, task: SynthesisTask, counts: Sequence[int], seed: int, workers: int = 1
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (uint8 images, int64 labels) batches holding exactly ``counts[c]`` images of class c,
    rendered by ``workers`` processes, in the same order and with the same bytes for any count.

    ``factory`` and ``task`` are sent to each worker (so both must pickle: a module-level
    factory does), which builds its own renderer once.
    """
    global _renderer
    # Built here first, so a generator's refusal (a class it cannot draw) is one clean error rather
    # than a broken worker pool; other processes build their own.
    _renderer = (factory(task), task.device)
    starter = partial(_start_renderer, factory, task) if workers > 1 else None
    plan = enumerate(batch_labels(counts, seed, task.image_shape))
    return ordered_map(partial(_render_batch, seed=seed), plan, workers, initializer=starter)


def batch_labels(counts: Sequence[int], seed: int, image_shape: Sequence[int]) -> Iterator[np.ndarray]:
    """Each batch's labels, drawn without replacement from what remains: the classes come
    interleaved in a seeded random order. Cheap and sequential, so drawn in the stage's process."""
    remaining = np.asarray(counts, dtype=np.int64)
    label_rng = rng(seed, "synthesize", "labels")
    size = batch_size(image_shape)
    while remaining.sum() > 0:
        drawn = label_rng.multivariate_hypergeometric(remaining, int(min(size, remaining.sum())))
        remaining -= drawn
        yield label_rng.permutation(np.repeat(np.arange(len(drawn), dtype=np.int64), drawn))


_renderer: tuple[Renderer, torch.device] | None = None  # this process's renderer, built once


def _start_renderer(factory: GeneratorFactory, task: SynthesisTask) -> None:
    global _renderer
    limit_threads()
    _renderer = (factory(task), task.device)


def _render_batch(batch: tuple[int, np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one batch. Its randomness is named by the batch's index, not drawn from a generator
    that earlier batches advanced, so any process renders it to the same bytes."""
    index, labels = batch
    assert _renderer is not None, "_start_renderer runs first in every worker"
    render, device = _renderer
    generator = torch.Generator(device=device)
    generator.manual_seed(int(rng(seed, "synthesize", "render", index).integers(2**63)))
    images = render(torch.from_numpy(labels).to(device), generator)
    return images.cpu().numpy(), labels


def class_counts(total: int, balance: str, real_counts: Sequence[int]) -> list[int]:
    """Split ``total`` over the classes, uniformly or in the real train split's proportions.

    Largest remainders go to the lowest class indices on ties, so the split is exact and stable.
    """
    weights = np.ones(len(real_counts)) if balance == "uniform" else np.asarray(real_counts, dtype=np.float64)
    share = total * weights / weights.sum()
    counts = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return [int(c) for c in counts]
