"""Write a params preset into params.yaml: a YAML file of some of params.yaml's keys (the photo
recipes in ``presets/``), each value set in place, so params.yaml keeps its comments, its order
and every key the preset does not name.

    make preset PRESET=photos-small     # presets/photos-small.yaml (PRESET may also be a path)

Mappings merge key by key; any other value (a list included) replaces the one in params.yaml. A
preset key params.yaml lacks, or a value a stage would refuse, is one line naming it, and
params.yaml is left as it was: it is validated section by section before it is written
(atomically).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_type_hints

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from mlpipeline.core import atomic, stage
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import PARAMS_FILE, from_mapping, read_document
from mlpipeline.devtools.params_schema import ParamsFile

PRESETS = Path("presets")
PRESET_ENV = "MLPIPELINE_PRESET"  # make preset's PRESET, as typed


def preset_path(name: str) -> Path:
    """A preset's file: ``presets/<name>.yaml``, or ``name`` itself when it is a path."""
    if not name:
        raise PipelineError(f"{PRESET_ENV} is empty: name a preset, e.g. make preset PRESET=photos-small")
    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESETS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml"))) or "none"
        raise PipelineError(f"{path}: no such preset (presets here: {known})")
    return path


def apply_preset(params_text: str, preset: Mapping[str, Any], source: Path) -> str:
    """``params_text`` (params.yaml) with the values of ``preset`` (read from ``source``) set."""
    yaml = YAML()  # round trip: comments, order and flow lists kept
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)  # params.yaml's own layout
    yaml.representer.add_representer(type(None), _null)
    document = yaml.load(params_text)
    if not isinstance(preset, Mapping):
        raise PipelineError(f"{source}: not a mapping of params.yaml's sections")
    _merge(document, preset, source, "")
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue()


def _null(representer: Any, _: None) -> Any:
    """``null`` written as params.yaml writes it (ruamel would leave the value empty)."""
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")


def _merge(node: CommentedMap, values: Mapping[str, Any], source: Path, prefix: str) -> None:
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in node:
            raise PipelineError(f"{source}: {dotted} is not a key of {PARAMS_FILE}")
        if isinstance(value, Mapping) and isinstance(node[key], Mapping):
            _merge(node[key], value, source, f"{dotted}.")
        elif isinstance(value, list):
            flow = CommentedSeq(value)
            flow.fa.set_flow_style()
            node[key] = flow
        else:
            node[key] = value


def check(params_text: str) -> None:
    """Every section as its stage validates it: a bad value is one line naming the key."""
    document = read_document(params_text, PARAMS_FILE)
    for section, kind in get_type_hints(ParamsFile).items():
        from_mapping(kind, document[section], section)


def main() -> None:
    path = preset_path(os.environ.get(PRESET_ENV, ""))
    preset = read_document(path.read_text(encoding="utf-8"), path)
    updated = apply_preset(PARAMS_FILE.read_text(encoding="utf-8"), preset, path)
    check(updated)
    atomic.write_text(PARAMS_FILE, updated)
    print(f"preset: wrote {path}'s values into {PARAMS_FILE} (git diff {PARAMS_FILE} shows them)")


if __name__ == "__main__":
    stage.run("preset", main)
