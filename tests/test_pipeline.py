"""The pipeline under DVC in a throwaway copy of the repository: outputs, caching, determinism.

Generic over stages: whatever ``dvc.yaml`` declares is run and checked through ``dvc.lock``.
Stages that need tiny settings to run quickly in tests put them in ``tests/tiny_params.yaml``
(same layout as params.yaml), which the whole-pipeline test merges into the copy's params.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import run, set_params
from dvcflow import (
    assert_up_to_date,
    commit_all,
    dvc,
    locked_outputs,
    output_digests,
    stages_ran,
    use_tiny_params,
)
from imagedata import make_folder, noise, write_png

from mlpipeline.core.shards import Dataset
from mlpipeline.ingestion.splitting import SPLITS
from mlpipeline.ingestion.version import folder_reader, version_table

DEMO_IMAGES = 1797


def assert_forced_runs_identical(repo: Path, *targets: str, stages: list[str] | None = None) -> None:
    dvc(repo, "repro", "--force", *targets)
    first = output_digests(repo, stages)
    dvc(repo, "repro", "--force", *targets)
    assert output_digests(repo, stages) == first
    assert first


@pytest.mark.slow
def test_ingest_under_dvc(pipeline_repo: Path) -> None:
    dvc(pipeline_repo, "repro", "ingest")
    out = pipeline_repo / "data" / "ingested"
    dataset = Dataset(out)
    manifest = version_table(folder_reader(out), str(out))
    assert len(manifest) == DEMO_IMAGES and dataset.classes == [str(d) for d in range(10)]
    counts = manifest["split"].value_counts().to_dict()
    assert sum(dataset.count(s) for s in SPLITS) + counts.get("duplicate", 0) + counts.get("held_out", 0) == (
        DEMO_IMAGES
    )
    for split in SPLITS:
        assert dataset.count(split) == counts[split]
        per_class = manifest[manifest["split"] == split].groupby("label").size()
        assert dataset.info.splits[split].class_counts == per_class.reindex(range(10), fill_value=0).tolist()
    assert (pipeline_repo / "data" / ".gitignore").read_text().splitlines().count("/ingested") == 1
    assert "data/ingested" not in run(["git", "status", "--porcelain"], pipeline_repo).stdout

    assert_up_to_date(pipeline_repo, "ingest")
    set_params(pipeline_repo, {"ingest.seed": 43})
    assert "ingest" in json.loads(dvc(pipeline_repo, "status", "--json", "ingest").stdout)
    set_params(pipeline_repo, {"ingest.seed": 42})
    assert_forced_runs_identical(pipeline_repo, "--single-item", "ingest", stages=["ingest"])


@pytest.mark.slow
def test_whole_pipeline_under_dvc(pipeline_repo: Path) -> None:
    use_tiny_params(pipeline_repo)
    dvc(pipeline_repo, "repro")
    stages = yaml.safe_load((pipeline_repo / "dvc.yaml").read_text())["stages"]
    lock = yaml.safe_load((pipeline_repo / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(stages)
    for output in locked_outputs(pipeline_repo):
        assert output.exists(), output
    assert_up_to_date(pipeline_repo)
    assert_forced_runs_identical(pipeline_repo)


@pytest.mark.slow
def test_every_image_a_manifest_lists_is_a_dependency(pipeline_repo: Path) -> None:
    """Overwriting one listed image makes ingest stale and reruns it: the folder is the dep."""
    raw = make_folder(pipeline_repo / "data" / "raw" / "mini", {"a": 6, "b": 6, "c": 6})
    rows = [f"{p.relative_to(raw).as_posix()},{p.parent.name}" for p in sorted(raw.rglob("*.png"))]
    (raw / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    shutil.move(raw / "c", raw / "images-c")  # listed by the manifest only, under another folder name
    (raw / "labels.csv").write_text((raw / "labels.csv").read_text().replace("c/", "images-c/"))
    set_params(pipeline_repo, {"ingest.source": "data/raw/mini", "ingest.manifest": "labels.csv"})
    dvc(pipeline_repo, "repro", "ingest")
    commit_all(pipeline_repo, "ingest the mini manifest")
    assert_up_to_date(pipeline_repo, "ingest")

    write_png(raw / "images-c" / "004.png", noise(999))  # not among c's first three (each split's)
    assert "ingest" in json.loads(dvc(pipeline_repo, "status", "--json", "ingest").stdout)
    assert stages_ran(dvc(pipeline_repo, "repro", "ingest").stdout) == ["ingest"]
    out = pipeline_repo / "data" / "ingested"
    manifest = version_table(folder_reader(out), str(out)).set_index("source")
    assert (
        manifest.loc["images-c/004.png", "pixel_sha256"] == hashlib.sha256(noise(999).tobytes()).hexdigest()
    )
