"""Training across nodes, on 127.0.0.1: two clones of the repository stand in for two machines
(one gloo process each, one thread), node 0 under `dvc repro`, node 1 with the plain command, as
docs/multinode.md tells a user to run them. Also: the channel stats read once, on rank 0."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import REPO_ROOT, copy_repo, run
from gloo import free_port, two_gloo_ranks
from safetensors.torch import load_file, save_file
from test_models_hf import hf_params, save_checkpoint
from tiny_training import RECIPE, tiny_params, tiny_section, write_inputs

from mlpipeline.stages.train import train
from mlpipeline.training.checkpoint import LATEST
from mlpipeline.training.distributed import World
from mlpipeline.training.rendezvous import TIMEOUT_ENV

STAGE = [sys.executable, "-m", "mlpipeline.stages.train"]  # what every node but node 0 runs
# node 0: the stage the DVC way, through the runner that tells the others when no training met them
NODE_0 = ["python", "-m", "mlpipeline.cluster.node0", "dvc", "repro", "--single-item", "train"]
TRAIN_PER_CLASS = 300  # epochs long enough (about a second) to kill a run between two of them
EPOCHS = 4


def files(root: Path) -> set[tuple[str, int]]:
    """Every file under ``root`` but git's and Python's byte-code caches, with its size."""
    return {
        (str(path.relative_to(root)), path.stat().st_size)
        for path in root.rglob("*")
        if path.is_file() and ".git" not in path.parts and "__pycache__" not in path.parts
    }


def models(root: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((root / "models").iterdir())}


def write_node(root: Path, nodes: int = 2, processes: int = 1, **overrides: object) -> Path:
    """Training inputs and the tiny train params of the runs compared here in ``root`` (a clone,
    whose params.yaml keeps its other sections, or an empty directory)."""
    write_inputs(root, train_per_class=TRAIN_PER_CLASS)
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text()) if path.exists() else {}
    params["train"] = tiny_section(epochs=EPOCHS, nodes=nodes, processes=processes, **overrides)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def one_node_two_processes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The model of the same training as one node running two processes."""
    root = write_node(tmp_path_factory.mktemp("one-node"), nodes=1, processes=2)
    run(STAGE, root, env={"PYTHONPATH": str(REPO_ROOT / "src")})
    return models(root)


@pytest.fixture
def clones(tmp_path: Path) -> tuple[Path, Path]:
    """Node 0's and node 1's clones of the repository, at the same commit."""
    node0 = copy_repo(tmp_path / "node0")
    run(["git", "clone", "-q", str(node0), str(tmp_path / "node1")], tmp_path)
    return node0, tmp_path / "node1"


def start(command: list[str], clone: Path, node: int, port: int, log: Path, **env: str) -> subprocess.Popen:
    """One node's command in its own process group, as a cluster launcher would start it."""
    environment = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str((clone if (clone / "src").exists() else REPO_ROOT) / "src"),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "NODE_RANK": str(node),
        **env,
    }
    with open(log, "w") as out:
        return subprocess.Popen(
            command, cwd=clone, env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def run_nodes(node0: Path, node1: Path, logs: Path, **env: str) -> tuple[subprocess.Popen, subprocess.Popen]:
    port = free_port()
    return (
        start(NODE_0, node0, 0, port, logs / "node0.log", **env),
        start(STAGE, node1, 1, port, logs / "node1.log", **env),
    )


def wait(nodes: tuple[subprocess.Popen, ...], logs: Path) -> list[int]:
    codes = [node.wait(timeout=300) for node in nodes]
    if codes != [0, 0]:
        print((logs / "node0.log").read_text(), (logs / "node1.log").read_text())
    return codes


def kill_tree(node: subprocess.Popen) -> None:
    """SIGKILL a node's command and every process under it, as a preempted machine loses them:
    torchrun starts its workers in sessions of their own, out of reach of a group kill."""
    tree = [psutil.Process(node.pid), *psutil.Process(node.pid).children(recursive=True)]
    for process in tree:
        process.kill()
    psutil.wait_procs(tree, timeout=30)
    node.wait()


@pytest.mark.slow
def test_two_nodes_train_what_one_node_of_two_processes_trains_and_only_node_0_writes(
    clones: tuple[Path, Path], tmp_path: Path, one_node_two_processes: dict[str, bytes]
) -> None:
    node0, node1 = (write_node(clone) for clone in clones)
    before = files(node1)
    assert wait(run_nodes(node0, node1, tmp_path), tmp_path) == [0, 0]

    assert models(node0) == one_node_two_processes
    assert files(node1) == before  # no models/, reports, checkpoints: nothing at all
    assert "nodes: 2" in (node0 / "dvc.lock").read_text()  # the world's size is in the lock
    assert "x 2 processes on 2 nodes" in (tmp_path / "node0.log").read_text()


@pytest.mark.slow
def test_two_nodes_killed_after_an_epoch_resume_to_the_same_bytes(
    clones: tuple[Path, Path], tmp_path: Path, one_node_two_processes: dict[str, bytes]
) -> None:
    node0, node1 = (write_node(clone) for clone in clones)
    nodes = run_nodes(node0, node1, tmp_path)
    checkpoints = node0 / ".cache" / "checkpoints"
    while not any(checkpoints.glob(f"*/{LATEST}")):  # node 0 saved an epoch
        assert all(node.poll() is None for node in nodes), "finished before a checkpoint was seen"
        time.sleep(0.02)
    for node in nodes:
        kill_tree(node)
    assert not (node0 / "models").exists()

    assert wait(run_nodes(node0, node1, tmp_path), tmp_path) == [0, 0]
    assert "resumed after epoch" in (tmp_path / "node0.log").read_text()
    assert models(node0) == one_node_two_processes
    assert not (node1 / ".cache").exists() and not (node1 / "models").exists()


@pytest.mark.slow
def test_a_cached_train_stage_ends_every_node_at_once_with_0(
    clones: tuple[Path, Path], tmp_path: Path
) -> None:
    """Real-SLURM finding 1: a resubmitted, unchanged commit. Node 0's DVC skips the stage; the
    other nodes hear so at node 0's port instead of waiting out the rendezvous timeout."""
    node0, node1 = (write_node(clone) for clone in clones)
    assert wait(run_nodes(node0, node1, tmp_path), tmp_path) == [0, 0]
    started = time.monotonic()
    again = run_nodes(node0, node1, tmp_path, **{TIMEOUT_ENV: "300"})

    assert wait(again, tmp_path) == [0, 0]
    assert time.monotonic() - started < 120  # far within the 300 s the others would otherwise wait
    assert "Stage 'train' didn't change, skipping" in (tmp_path / "node0.log").read_text()
    assert (tmp_path / "node1.log").read_text().splitlines() == [
        "train: node 1 of 2: node 0 ran no training (its train stage is up to date): nothing to train here"
    ]


@pytest.mark.slow
def test_node_0_failing_before_the_meeting_ends_the_others_with_its_exit_code(
    clones: tuple[Path, Path], tmp_path: Path
) -> None:
    node0, node1 = write_node(clones[0]), write_node(clones[1])
    shutil.rmtree(node0 / "data" / "augmented")  # node 0's DVC refuses the stage: a missing input
    codes = [node.wait(timeout=300) for node in run_nodes(node0, node1, tmp_path, **{TIMEOUT_ENV: "300"})]

    assert codes[0] == codes[1] != 0
    (line,) = (tmp_path / "node1.log").read_text().splitlines()
    said = f"node 0 ended before the nodes met (exit {codes[0]}): node 0's log says why; waited "
    assert line.startswith(f"train: error: node 1 of 2: {said}")


@pytest.mark.slow
def test_a_node_with_other_params_is_refused_on_both_nodes_in_one_line(
    clones: tuple[Path, Path], tmp_path: Path
) -> None:
    node0, node1 = write_node(clones[0]), write_node(clones[1], lr=0.02)
    codes = [node.wait(timeout=300) for node in run_nodes(node0, node1, tmp_path)]

    assert codes[0] != 0 and codes[1] == 2
    refusal = (
        "train: error: node 1 differs from node 0 in train.lr (0.01 on node 0, 0.02 on node 1): every node "
        "must run the same commit, params and inputs (git checkout, dvc pull)"
    )
    assert (tmp_path / "node1.log").read_text().splitlines() == [refusal]
    node0_lines = (tmp_path / "node0.log").read_text().splitlines()
    assert node0_lines.count(refusal) == 1 and not (node0 / "models").exists()


def other_weights(folder: Path) -> Path:
    """``folder``'s checkpoint with one tensor changed: the same name and shapes, other bytes."""
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1
    save_file(tensors, weights, metadata={"format": "pt"})
    return folder


def test_the_agreement_holds_the_pretrained_weights_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What every rank compares before any work covers the weights folder's bytes, not its name."""
    compared: list[dict[str, str]] = []

    @dataclass(frozen=True)
    class Comparing(World):
        def agree(self, parts: dict[str, str]) -> None:
            compared.append(parts)
            raise KeyboardInterrupt  # what is compared is all this test needs

    folder = save_checkpoint(tmp_path / "data" / "weights" / "tiny")
    monkeypatch.chdir(tmp_path)
    params, inputs = hf_params(model={"weights": "tiny"}), write_inputs(tmp_path)
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            train(params, inputs, None, tmp_path / "ckpt", Comparing())
        other_weights(folder)
    held = [parts["pretrained weights"] for parts in compared]
    assert held[0] and held[1] and held[0] != held[1]


@pytest.mark.slow
def test_nodes_holding_other_weights_under_one_name_are_refused_in_one_line(
    clones: tuple[Path, Path], tmp_path: Path
) -> None:
    node0, node1 = (write_node(clone, model={"weights": "tiny"}) for clone in clones)
    save_checkpoint(node0 / "data" / "weights" / "tiny")
    other_weights(save_checkpoint(node1 / "data" / "weights" / "tiny"))
    codes = [node.wait(timeout=300) for node in run_nodes(node0, node1, tmp_path)]

    assert codes[0] != 0 and codes[1] == 2
    refusal = (
        "train: error: node 1 differs from node 0 in pretrained weights: every node must run the same "
        "commit, params and inputs (git checkout, dvc pull)"
    )
    assert (tmp_path / "node1.log").read_text().splitlines() == [refusal]
    assert (tmp_path / "node0.log").read_text().splitlines().count(refusal) == 1


@pytest.mark.slow
def test_a_node_that_never_arrives_ends_the_run_in_one_line(tmp_path: Path) -> None:
    write_node(tmp_path)
    node0 = start(STAGE, tmp_path, 0, free_port(), tmp_path / "node0.log", **{TIMEOUT_ENV: "2"})

    assert node0.wait(timeout=120) == 2
    (line,) = (tmp_path / "node0.log").read_text().splitlines()
    assert line.startswith("train: error: node 0 of 2: the nodes did not all meet at 127.0.0.1:")
    waited = re.fullmatch(rf".*; waited (\d+\.\d) s \({TIMEOUT_ENV}=2\)", line)
    assert waited and 2 <= float(waited[1]) < 5, line


def _rank_reads_stats(rank: int, port: int, roots: list[Path], calls: Path) -> None:
    """One of two gloo ranks running ``train`` on streamed data, counting its whole-shard reads."""
    import mlpipeline.stages.train as stage
    from mlpipeline.core.shard_rows import SplitReader

    root = roots[rank]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    os.environ["MLPIPELINE_TRAIN_DATA"] = "streamed"  # so nothing but the statistics could read a shard whole
    shards = SplitReader.shards

    def counted(reader: SplitReader):
        with open(calls / f"rank{rank}", "a") as out:
            out.write("shard read whole\n")
        return shards(reader)

    SplitReader.shards = counted
    world = World(rank=rank, size=2, local_rank=rank, local_size=2)
    result = stage.train(tiny_params(processes=2, epochs=1), write_inputs(root), None, root / "ckpt", world)
    (calls / f"config{rank}").write_text(repr((result.config.mean, result.config.std)))


@pytest.mark.slow
def test_every_rank_takes_the_channel_stats_from_the_recorded_sums(tmp_path: Path) -> None:
    """No rank reads the training split for them (rank 0 once did, and the others waited inside
    NCCL's timeout), and all ranks get the same figures from the same dataset.json files."""
    calls = tmp_path / "calls"
    calls.mkdir()
    roots = [tmp_path / f"r{rank}" for rank in range(2)]
    assert two_gloo_ranks(_rank_reads_stats, roots, calls) == [0, 0]
    assert not (calls / "rank0").exists() and not (calls / "rank1").exists()
    assert (calls / "config0").read_text() == (calls / "config1").read_text()


@pytest.mark.slow
def test_two_processes_with_the_photo_recipe_resume_to_the_same_bytes(tmp_path: Path) -> None:
    """The weight average, accumulation (DDP's no_sync on a step's first batch), clipping,
    mixing and class weights on two gloo processes: killed after an epoch, the run resumes to the
    model an uninterrupted one writes, bit for bit."""
    recipe = {**RECIPE, "batch_size": 32}
    whole = write_node(tmp_path / "whole", nodes=1, processes=2, **recipe)
    run(STAGE, whole, env={"PYTHONPATH": str(REPO_ROOT / "src")})
    killed = write_node(tmp_path / "killed", nodes=1, processes=2, **recipe)
    node = start(STAGE, killed, 0, free_port(), tmp_path / "killed.log")
    checkpoints = killed / ".cache" / "checkpoints"
    while not any(checkpoints.glob(f"*/{LATEST}")):
        assert node.poll() is None, "finished before a checkpoint was seen"
        time.sleep(0.02)
    kill_tree(node)
    resumed = run(STAGE, killed, env={"PYTHONPATH": str(REPO_ROOT / "src")})
    assert "resuming after epoch" in resumed.stderr
    assert models(killed) == models(whole)
