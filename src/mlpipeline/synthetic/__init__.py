"""Synthetic training images that look like the real ones, from pluggable generators.

Importing the package registers the built-in ``glyphs`` generator.

May import: core.
"""

from mlpipeline.synthetic import glyphs as _glyphs  # noqa: F401  (registers "glyphs")
from mlpipeline.synthetic.draws import exact_draws
from mlpipeline.synthetic.generators import (
    SynthesisTask,
    class_counts,
    generate,
    get_generator,
    register_generator,
)
from mlpipeline.synthetic.values import ValueMap, ValueStats

__all__ = [
    "SynthesisTask",
    "ValueMap",
    "ValueStats",
    "class_counts",
    "exact_draws",
    "generate",
    "get_generator",
    "register_generator",
]
