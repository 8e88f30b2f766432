"""Synthetic training images that look like the real ones, from pluggable generators
(``generators``: the registry and batch loop). The built-in ``glyphs`` generator, registered on
import, draws font glyphs (``fonts``) from an atlas (``atlas``) in exact random poses
(``placement``, ``draws``) with pixel values matched to the real data's (``values``); a preview
(``preview``), the transfer score (``realism``) and the stage's params (``params``).

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
