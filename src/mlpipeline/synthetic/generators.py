"""The generator registry and the batch loop that streams any generator's images.

A generator is one function: given a ``SynthesisTask`` (classes, image shape,
the real data's ``ValueMap``, the params section), it checks that it can draw
those classes and returns a renderer ``(labels, torch.Generator) -> uint8
N x C x H x W``. Register it with ``@register_generator("name")`` and select it
with ``synthesize.generator: name``; the batching, seeding, class balance and
writing are shared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mlpipeline.core.params import ParamError
from mlpipeline.core.seeding import rng
from mlpipeline.synthetic.values import ValueMap

Renderer = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
GeneratorFactory = Callable[["SynthesisTask"], Renderer]

# About this many output pixels per batch: large enough to amortise torch's
# per-call overhead, small enough that a 4x supersampled batch stays tens of MB.
BATCH_PIXELS = 2**18

_REGISTRY: dict[str, GeneratorFactory] = {}


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
    render: Renderer,
    counts: Sequence[int],
    seed: int,
    image_shape: Sequence[int],
    device: torch.device,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (uint8 images, int64 labels) batches holding exactly ``counts[c]`` images of class c.

    Each batch draws its labels without replacement from what remains, so the
    classes are interleaved in a seeded random order and memory stays one batch.
    """
    remaining = np.asarray(counts, dtype=np.int64)
    label_rng = rng(seed, "synthesize", "labels")
    torch_gen = torch.Generator(device=device)
    torch_gen.manual_seed(int(rng(seed, "synthesize", "render").integers(2**63)))
    size = batch_size(image_shape)
    while remaining.sum() > 0:
        n = int(min(size, remaining.sum()))
        drawn = label_rng.multivariate_hypergeometric(remaining, n)
        remaining -= drawn
        labels = label_rng.permutation(np.repeat(np.arange(len(drawn), dtype=np.int64), drawn))
        images = render(torch.from_numpy(labels).to(device), torch_gen)
        yield images.cpu().numpy(), labels


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
