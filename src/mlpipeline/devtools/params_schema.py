"""Write ``params.schema.json``, the JSON Schema of params.yaml, from the classes the stages validate with.

Editors check params.yaml against it while you type (the ``yaml-language-server`` line atop
params.yaml points VS Code's and JetBrains' YAML support at it), and the pre-commit hook checks it
with check-jsonschema before a commit, so a bad value is caught before any stage runs. Run
``make schema`` after changing a params class; a test fails while the committed file is stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema

from mlpipeline.augmentation.params import AugmentParams
from mlpipeline.core.params import params_dataclass
from mlpipeline.evaluation.params import EvaluateParams
from mlpipeline.ingestion.params import IngestParams
from mlpipeline.modeling.params import ExportParams
from mlpipeline.synthetic.params import SynthesizeParams
from mlpipeline.training.params import TrainParams

SCHEMA_FILE = Path("params.schema.json")


@params_dataclass
class ParamsFile:
    """params.yaml: one section per stage; each stage reads and validates only its own."""

    ingest: IngestParams
    synthesize: SynthesizeParams
    augment: AugmentParams
    evaluate: EvaluateParams
    train: TrainParams
    export: ExportParams


class WithoutFieldTitles(GenerateJsonSchema):
    """Leaves out the "title" pydantic makes of every field name ("batch_size": "Batch Size")."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def schema() -> dict[str, Any]:
    generated = TypeAdapter(ParamsFile).json_schema(schema_generator=WithoutFieldTitles)
    return {"$schema": WithoutFieldTitles.schema_dialect, **generated}


def schema_text() -> str:
    return json.dumps(schema(), indent=2) + "\n"


def main() -> None:
    SCHEMA_FILE.write_text(schema_text(), encoding="utf-8")
    print(f"wrote {SCHEMA_FILE}")


if __name__ == "__main__":
    main()
