"""Every path a stage reads or writes, named once and read everywhere.

dvc.yaml spells the same paths (it cannot import them): tests/test_stage_deps.py checks that the
names each stage module imports from here are exactly its deps and outs in dvc.yaml.
"""

from pathlib import Path

INGESTED = Path("data/ingested")
INGEST_REPORTS = Path("reports/ingest")  # metrics.json (DVC metrics); bad_files.csv when a run fails
SYNTHETIC = Path("data/synthetic")
AUGMENTED = Path("data/augmented")
MODELS = Path("models")
SYNTHESIZE_REPORTS = Path("reports/synthesize")
AUGMENT_PREVIEW = Path("reports/augment/samples.png")
TRAIN_REPORTS = Path("reports/train")
EVALUATE_REPORTS = Path("reports/evaluate")
WEIGHTS = Path("data/weights")  # pretrained checkpoints, one folder each (DVC-tracked)
EXPORTED = Path("exported")  # the ONNX model and its parity report (models/ is train's alone)
EXPORT_REPORTS = Path("reports/export")
