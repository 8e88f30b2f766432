"""``make data-update``: build the next data version on the last one.

Sets ``ingest.base`` in params.yaml to the md5 ``dvc.lock`` records for ``data/ingested`` (the
version the last ``dvc repro`` made), keeping params.yaml's comments and layout; ``make`` then
runs ``dvc repro``. The base is a param, so it shows in ``dvc params diff`` and the run-cache
keys on it; with an unchanged source the new version is byte for byte the last one, so nothing
downstream reruns (docs/growing.md).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from ruamel.yaml import YAML

from mlpipeline.core import stage
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import PARAMS_FILE
from mlpipeline.core.paths import INGESTED

LOCK_FILE = Path("dvc.lock")
NULL = "tag:yaml.org,2002:null"  # written as `null`, as params.yaml spells it (ruamel writes nothing)
STAGE = "ingest"


def locked_version(lock: Path = LOCK_FILE) -> str:
    """The md5 ``lock`` records for the ingest stage's ``data/ingested``; one line if none."""
    try:
        stages = yaml.safe_load(lock.read_text(encoding="utf-8"))["stages"]
        outs = stages[STAGE]["outs"]
    except FileNotFoundError:
        raise PipelineError(f"{lock}: not found; run dvc repro once to make the first version")
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise PipelineError(f"{lock}: records no {STAGE} stage ({exc!r}); run dvc repro once")
    found = [out.get("md5") for out in outs if out.get("path") == INGESTED.as_posix()]
    if not found or not found[0]:
        raise PipelineError(f"{lock}: records no md5 for {INGESTED}; run dvc repro once")
    return str(found[0])


def set_base(md5: str, params: Path = PARAMS_FILE) -> str | None:
    """Write ``ingest.base: md5`` into ``params`` (comments kept); the value it replaces."""
    document = YAML()
    document.preserve_quotes = True
    document.width = 4096  # never fold a long line
    document.indent(mapping=2, sequence=4, offset=2)  # params.yaml's own layout
    document.representer.add_representer(type(None), lambda dumper, _: dumper.represent_scalar(NULL, "null"))
    tree = document.load(params.read_text(encoding="utf-8"))
    section = tree.get(STAGE)
    if section is None or "base" not in section:
        raise PipelineError(f"{params}: has no ingest.base to set (add `base: null` under ingest)")
    previous = section["base"]
    section["base"] = md5
    with open(params, "w", encoding="utf-8") as handle:
        document.dump(tree, handle)
    return previous


def main() -> None:
    def body() -> None:
        md5 = locked_version()
        previous = set_base(md5)
        change = "unchanged" if previous == md5 else f"was {previous}"
        print(f"data-update: ingest.base: {md5} ({change}); dvc repro builds the next version on it")

    stage.run("data-update", body)


if __name__ == "__main__":
    main()
