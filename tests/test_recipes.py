"""The cluster recipes in ``recipes/``: each parses as its engine reads it, starts the node
count it promises, and runs the commands the two-node test (``test_multinode.py``) proves; the
SLURM batch script's own logic runs here with stand-ins for srun (``test_slurm.py`` runs it under
a real SLURM). No Kubernetes or SkyPilot runs here: docs/multinode.md says what was tried.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT
from test_multinode import NODE_0, STAGE
from tiny_training import tiny_params

from mlpipeline.cluster.slurm import sbatch_options
from mlpipeline.training.stopping import EXIT_REQUEUE

RECIPES = REPO_ROOT / "recipes"
NODE_SCRIPT = RECIPES / "node.sh"
SBATCH = RECIPES / "slurm" / "train.sbatch"
SUBMIT = RECIPES / "slurm" / "submit.sh"
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
    assert f"run {' '.join(NODE_0)}" in text  # through the runner that tells the others, stops passed on
    assert f"run python {OTHER_NODES}" in text
    assert "run dvc pull ingest augment" in text  # the training inputs (a shared clone: node 0 alone)
    assert 'run dvc exp run -n "$EXPERIMENT"' in text  # dvc.lock committed as an experiment
    assert 'dvc exp push --run-cache "$PUSH_EXPERIMENT_TO" "$EXPERIMENT"' in text
    for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "EXPERIMENT"):
        assert f"${{{name}:?}}" in text  # refused at once when a launcher does not set it
    assert not re.search(r"^\s*(run )?make setup", text, re.MULTILINE)  # the clone's (or image's) venv


def directives(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?$", path.read_text(), re.MULTILINE))


def test_the_slurm_script_requeues_logs_outside_git_and_takes_its_resources_from_the_submit_script() -> None:
    shell_syntax_ok(SBATCH)
    shell_syntax_ok(SUBMIT)
    found = directives(SBATCH)
    assert found["ntasks-per-node"] == "1" and "requeue" in found and found["signal"] == "B:USR1@300"
    assert found["output"].startswith("recipes/slurm/logs/") and found["open-mode"] == "append"
    assert (REPO_ROOT / "recipes" / "slurm" / "logs" / ".gitignore").read_text().splitlines()[1:] == [
        "*",
        "!.gitignore",
    ]
    assert not {"nodes", "gpus-per-node", "cpus-per-task"} & set(found)  # submit.sh derives them
    text = SBATCH.read_text()
    assert "NODE_RANK=$SLURM_NODEID recipes/node.sh" in text and "srun --kill-on-bad-exit=1" in text
    assert "python -m mlpipeline.cluster.slurm" in SUBMIT.read_text()


def test_each_slurm_job_meets_at_a_port_of_its_own() -> None:
    (line,) = [line for line in SBATCH.read_text().splitlines() if line.startswith("MASTER_PORT=")]
    ports = [
        int(
            subprocess.run(
                ["bash", "-c", f"{line}\necho $MASTER_PORT"],
                env={"SLURM_JOB_ID": str(job)},
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        for job in (1, 2, 14999, 15000, 123456)
    ]
    assert len(set(ports[:4])) == 4 and all(
        1024 < port < 32768 for port in ports
    )  # below the ephemeral range


@pytest.mark.parametrize(
    ("train", "options"),
    [
        (
            {"nodes": 2, "processes": 4, "num_threads": 2},
            ["--nodes=2", "--gpus-per-node=4", "--cpus-per-task=8"],
        ),
        (
            {"nodes": 2, "processes": 2, "device": "cpu"},
            ["--nodes=2", "--cpus-per-task=2"],
        ),  # a CPU partition
        ({"nodes": 2, "processes": 1, "num_threads": 0}, ["--nodes=2", "--gpus-per-node=1", "--exclusive"]),
    ],
)
def test_slurm_resources_follow_the_train_params(train: dict, options: list[str]) -> None:
    assert sbatch_options(tiny_params(**{"device": "auto", **train})) == options


FAKE_SRUN = """#!/usr/bin/env bash
# srun as the batch script uses it: the command once per node (SLURM_NODEID 0 and 1), at once
shift  # --kill-on-bad-exit=1
for node in 0 1; do SLURM_NODEID=$node "$@" & done
wait
"""
FAKE_NODE = """#!/usr/bin/env bash
# node $NODE_RANK ends after the given seconds with the given code
read -r seconds code < "recipes/node$NODE_RANK"
sleep "$seconds"
exit "$code"
"""


@pytest.mark.parametrize(
    ("ends", "code", "line"),
    [
        (
            [(0.6, 250), (0.1, 2)],
            2,
            "train.sbatch: job 7 failed: node 1 first, exit 2 (its line above says why)",
        ),
        (
            [(0.1, 137), (0.6, 250)],
            137,
            "train.sbatch: job 7 failed: node 0 first, exit 137 (its line above says why)",
        ),
        (
            [(0.1, 250), (0.3, 250)],
            250,
            "train.sbatch: job 7 stopped (scancel or preemption) with its "
            "checkpoint saved; submit it again to resume",
        ),
        ([(0.1, 0), (0.1, 0)], 0, None),
    ],
)
def test_the_jobs_exit_code_is_the_first_failing_nodes(
    tmp_path: Path, ends: list[tuple[float, int]], code: int, line: str | None
) -> None:
    """Real-SLURM finding 4: the job ended with node 0's 143 though node 1 had failed first. Here
    srun, scontrol and the node script are stand-ins; the batch script's own logic runs."""
    bin_dir, clone = tmp_path / "bin", tmp_path / "clone"
    (clone / "recipes").mkdir(parents=True)
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", "#!/bin/sh\necho n1\n"), ("scancel", "#!/bin/sh\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (clone / "recipes" / "node.sh").write_text(FAKE_NODE)
    (clone / "recipes" / "node.sh").chmod(0o755)
    for node, (seconds, exit_code) in enumerate(ends):
        (clone / "recipes" / f"node{node}").write_text(f"{seconds} {exit_code}\n")
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_SUBMIT_DIR": str(clone),
        "SLURM_JOB_ID": "7",
        "SLURM_JOB_NODELIST": "n[1-2]",
    }
    result = subprocess.run(["bash", str(SBATCH)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == code, result.stderr
    assert result.stderr.splitlines()[-1:] == ([line] if line else [])
    assert not (clone / ".cache" / "slurm" / "7").exists()  # the nodes' exit records removed


def test_the_pytorchjob_restarts_stopped_pods_and_hands_back_dvc_lock() -> None:
    job = yaml.safe_load((RECIPES / "kubernetes" / "pytorchjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert job["metadata"]["name"]
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) <= {"Master", "Worker"} and replicas["Master"]["replicas"] == 1
    assert sum(spec["replicas"] for spec in replicas.values()) == 2  # two nodes
    for role, spec in replicas.items():
        assert spec["restartPolicy"] == "ExitCode"  # 128..255 retried: EXIT_REQUEUE among them
        pod = spec["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= 60  # time to finish a step and save
        (container,) = pod["containers"]
        assert container["name"] == "pytorch"  # the operator finds the training container by name
        assert container["image"]
        assert container["command"][-1] == "NODE_RANK=${PET_NODE_RANK:-$RANK} exec recipes/node.sh"
        env = {item["name"]: item["value"] for item in container["env"]}
        assert env["EXPERIMENT"]
        if role == "Master":  # node 0: its checkpoints and dvc.lock must outlive the pod
            assert (
                env["MLPIPELINE_CHECKPOINT_DIR"].startswith("s3://") and env["PUSH_EXPERIMENT_TO"] == "origin"
            )
    assert 128 <= EXIT_REQUEUE <= 255


def test_the_skypilot_task_is_a_managed_spot_job_that_runs_the_node_script() -> None:
    task = yaml.safe_load((RECIPES / "skypilot" / "train.yaml").read_text())
    assert set(task) <= SKYPILOT_KEYS, set(task) - SKYPILOT_KEYS
    assert task["num_nodes"] == 2
    assert (
        task["resources"]["use_spot"] is True and task["resources"]["job_recovery"]["max_restarts_on_errors"]
    )
    envs = task["envs"]
    assert envs["MLPIPELINE_CHECKPOINT_DIR"].startswith("s3://") and envs["PUSH_EXPERIMENT_TO"] == "origin"
    assert envs["EXPERIMENT"] and envs["MASTER_PORT"]
    assert "NODE_RANK=$SKYPILOT_NODE_RANK" in task["run"] and task["run"].rstrip().endswith(
        "exec recipes/node.sh"
    )
    assert task["setup"].strip() == "make setup"
    assert "sky jobs launch" in (RECIPES / "skypilot" / "train.yaml").read_text()
