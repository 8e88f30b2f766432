"""Random draws that are the same on every CPU, for renderers whose output must be exact.

A renderer gets a torch generator (the plug-in API), but torch's normal draws
and its float kernels may round differently on another CPU. numpy's integers
and ``random()`` (an integer times a power of two) are exact everywhere, so an
exact renderer draws one integer from the torch generator, which is exact too,
and takes its randomness from a numpy generator seeded with it.
"""

from __future__ import annotations

import numpy as np
import torch


def exact_draws(generator: torch.Generator) -> np.random.Generator:
    """A numpy generator seeded by one integer drawn from ``generator``: each call a new stream."""
    seed = torch.randint(0, 2**62, (), generator=generator, device=generator.device)
    return np.random.default_rng(int(seed))
