"""One place for seeds: every random draw in the pipeline comes from a named stream."""

from __future__ import annotations

import random
import zlib

import numpy as np


def rng(seed: int, *stream: str | int) -> np.random.Generator:
    """A numpy generator for ``seed`` and a named sub-stream.

    Naming the stream (``rng(seed, "split", "train")``) keeps draws independent:
    adding a new use of randomness never shifts the numbers an old one gets.
    """
    keys = [zlib.crc32(s.encode()) if isinstance(s, str) else int(s) for s in stream]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *keys])))


def seed_everything(seed: int) -> None:
    """Seed Python, numpy's legacy global state and torch (when installed)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return
    torch.manual_seed(seed)
