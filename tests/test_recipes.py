"""The cluster recipes in ``recipes/``: each parses as its engine reads it, starts the node
count it promises, and runs the commands the two-node test (``test_multinode.py``) proves.

No SLURM, Kubernetes or SkyPilot runs here: docs/multinode.md says what was and was not tried.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml
from conftest import REPO_ROOT
from test_multinode import NODE_0, STAGE

RECIPES = REPO_ROOT / "recipes"
NODE_SCRIPT = RECIPES / "node.sh"
OTHER_NODES = " ".join(STAGE[1:])  # "-m mlpipeline.stages.train", after whichever python
# SkyPilot's task keys (docs.skypilot.co, "YAML spec"): anything else is refused by `sky launch`.
SKYPILOT_KEYS = {
    "name",
    "workdir",
    "num_nodes",
    "resources",
    "envs",
    "secrets",
    "file_mounts",
    "setup",
    "run",
}


def shell_syntax_ok(path: Path) -> None:
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, f"{path.name}: {result.stderr}"


def test_the_node_script_runs_node_0_under_dvc_and_the_others_plainly() -> None:
    shell_syntax_ok(NODE_SCRIPT)
    text = NODE_SCRIPT.read_text()
    assert " ".join(NODE_0) in text
    assert f"python {OTHER_NODES}" in text
    assert "dvc pull ingest augment" in text  # the training inputs, on every node
    for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        assert f"${{{name}:?}}" in text  # refused at once when a launcher does not set it


def test_the_slurm_script_starts_one_task_per_node_with_the_node_rank() -> None:
    script = RECIPES / "slurm" / "train.sbatch"
    shell_syntax_ok(script)
    text = script.read_text()
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)$", text, re.MULTILINE))
    assert directives["nodes"] == "2" and directives["ntasks-per-node"] == "1"
    assert "srun" in text and "NODE_RANK=$SLURM_NODEID exec recipes/node.sh" in text
    assert "MASTER_ADDR=$(scontrol show hostnames" in text


def test_the_pytorchjob_has_the_fields_the_operator_requires() -> None:
    job = yaml.safe_load((RECIPES / "kubernetes" / "pytorchjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert job["metadata"]["name"]
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) <= {"Master", "Worker"} and replicas["Master"]["replicas"] == 1
    assert sum(spec["replicas"] for spec in replicas.values()) == 2  # two nodes
    for spec in replicas.values():
        assert spec["restartPolicy"] in ("Always", "OnFailure", "Never", "ExitCode")
        (container,) = spec["template"]["spec"]["containers"]
        assert container["name"] == "pytorch"  # the operator finds the training container by name
        assert container["image"]
        assert "recipes/node.sh" in container["command"][-1]
        assert "NODE_RANK=${PET_NODE_RANK:-$RANK}" in container["command"][-1]


def test_the_skypilot_task_uses_only_skypilots_keys_and_runs_the_tested_commands() -> None:
    task = yaml.safe_load((RECIPES / "skypilot" / "train.yaml").read_text())
    assert set(task) <= SKYPILOT_KEYS, set(task) - SKYPILOT_KEYS
    assert task["num_nodes"] == 2
    run = task["run"]
    assert f"python {OTHER_NODES}" in run
    assert "dvc pull ingest augment" in run
    assert "dvc exp run --pull" in run and "dvc exp push origin" in run
    assert "NODE_RANK=$SKYPILOT_NODE_RANK" in run
