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


def random_state() -> dict:
    """The state of every generator ``seed_everything`` seeds (torch's on each CUDA device too), as
    tensors and plain values: what a checkpoint taken within an epoch must carry so that the rest
    of the epoch draws what it would have drawn uninterrupted."""
    import torch

    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def restore_random_state(state: dict) -> None:
    """Put back the generators as ``random_state`` found them."""
    import torch

    random.setstate(state["python"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
