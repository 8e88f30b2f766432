"""A shard whose bytes changed after its stage wrote it (a flipped bit, its mtime kept, so
``dvc status`` sees nothing) is refused in one line by the stages that read it whole."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from conftest import repo_params, run
from test_shards import changed_shard_message, flip_last_byte_keeping_mtime
from tiny_model import CLASSES, SHAPE, write_tiny_dataset, write_tiny_model
from tiny_training import write_workdir

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import from_mapping
from mlpipeline.core.shard_writer import DatasetWriter
from mlpipeline.stages.augment import AugmentParams, augment_dataset
from mlpipeline.stages.evaluate import EvaluateParams, evaluate


def test_train_refuses_a_changed_training_shard_in_one_line(tmp_path: Path) -> None:
    workdir = write_workdir(tmp_path)
    shard = Path("data/augmented/real-00000.safetensors")
    flip_last_byte_keeping_mtime(workdir / shard)
    result = run([sys.executable, "-m", "mlpipeline.stages.train"], workdir, check=False)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"train: error: {changed_shard_message(shard)}")
    assert not (workdir / "models").exists()


def test_evaluate_refuses_a_changed_test_shard(tmp_path: Path) -> None:
    ingested = write_tiny_dataset(tmp_path / "ingested")
    shard = ingested / "test-00000.safetensors"
    flip_last_byte_keeping_mtime(shard)
    params = from_mapping(EvaluateParams, {**repo_params()["evaluate"], "device": "cpu"}, "evaluate")
    with pytest.raises(PipelineError, match="^" + re.escape(changed_shard_message(shard))):
        evaluate(params, write_tiny_model(tmp_path / "models"), ingested)


def test_augment_refuses_a_changed_training_shard(tmp_path: Path) -> None:
    ingested = write_tiny_dataset(tmp_path / "ingested")
    with DatasetWriter(tmp_path / "synthetic", CLASSES, SHAPE) as writer:
        writer.add_split("train")
    shard = ingested / "train-00000.safetensors"
    flip_last_byte_keeping_mtime(shard)
    params = from_mapping(AugmentParams, repo_params()["augment"], "augment")
    with pytest.raises(PipelineError, match="^" + re.escape(changed_shard_message(shard))):
        augment_dataset(params, ingested, tmp_path / "synthetic", tmp_path / "out", tmp_path / "s.png", 1)
    assert not (tmp_path / "out").exists()
