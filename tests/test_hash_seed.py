"""Every random stream is named, never seeded per process: the stages' outputs are the same bytes
whatever Python's string-hash seed (a stream keyed by ``hash(name)`` would differ per process).

Fast on purpose: the DVC pipeline tests also compare bytes across runs, but only in slow tests.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import yaml
from conftest import REPO_ROOT, repo_params, run

STAGES = ["ingest", "synthesize", "augment", "train"]  # every stage that draws random numbers
PER_CLASS = 20  # demo digits per class: the first 20 of each reach every split (ingest.seed 42)

# Each stage's main, in one process (its imports paid once), as `python -m` would run it.
RUN_STAGES = """
import runpy, sys
stages = sys.argv[1:]
del sys.argv[1:]  # a stage takes no arguments
for name in stages:
    runpy.run_module(f"mlpipeline.stages.{name}", run_name="__main__", alter_sys=True)
"""


def tiny_workdir(root: Path) -> Path:
    """A few demo digits and params that run every stage in a second or two."""
    for folder in sorted((REPO_ROOT / "data" / "raw" / "digits").iterdir()):
        for image in sorted(folder.iterdir())[:PER_CLASS]:
            target = root / "raw" / folder.name / image.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, target)
    params = repo_params()
    params["ingest"]["source"] = "raw"
    params["synthesize"]["count"] = 100
    params["augment"]["copies"] = 1
    params["train"].update(epochs=2, min_steps=0, batch_size=32, device="cpu", num_threads=1)
    params["train"]["model"]["widths"] = [8]
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def output_digests(workdir: Path) -> dict[str, str]:
    """sha256 of every output file but the epoch wall times."""
    return {
        str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for top in ("data", "models", "reports")
        for p in sorted((workdir / top).rglob("*"))
        if p.is_file() and p.stem != "epoch_seconds"
    }


def test_outputs_do_not_depend_on_the_python_hash_seed(tmp_path: Path) -> None:
    digests = []
    for hash_seed in ("1", "2"):
        workdir = tiny_workdir(tmp_path / hash_seed)
        env = {"PYTHONHASHSEED": hash_seed, "MLPIPELINE_WORKERS": "1"}
        run([sys.executable, "-c", RUN_STAGES, *STAGES], workdir, env=env)
        digests.append(output_digests(workdir))
    assert "data/ingested/dataset.json" in digests[0] and "models/model.safetensors" in digests[0]
    assert digests[0] == digests[1]
