"""The SLURM resources a training job needs, from the train params, as ``sbatch`` options:
``recipes/slurm/submit.sh`` passes them to ``sbatch recipes/slurm/train.sbatch``, so a change of
``train.nodes`` or ``train.processes`` changes the allocation with it.

- ``--nodes``: ``train.nodes``;
- ``--gpus-per-node``: ``train.processes`` (one process per GPU), unless ``train.device`` is
  ``cpu``: a CPU partition's job then asks for no GPU at all (``-p`` names the partition);
- ``--cpus-per-task`` (one task per node): ``train.processes`` x ``train.num_threads``, so each
  process has its threads' cores (under cgroup confinement two processes on one core run at half
  speed); ``num_threads: 0`` shares whatever cores the node has, so the node is asked for whole
  (``--exclusive``).

Options given to ``submit.sh`` come after these, and sbatch takes the last of a repeated option.
Usage: ``python -m mlpipeline.cluster.slurm`` prints one option per line.
"""

from __future__ import annotations

from mlpipeline.core import stage
from mlpipeline.core.params import load_section
from mlpipeline.training.params import TrainParams

NAME = "slurm"


def sbatch_options(params: TrainParams) -> list[str]:
    options = [f"--nodes={params.nodes}"]
    if params.device != "cpu":
        options.append(f"--gpus-per-node={params.processes}")
    if params.num_threads:
        options.append(f"--cpus-per-task={params.processes * params.num_threads}")
    else:
        options.append("--exclusive")
    return options


def main() -> None:
    print("\n".join(sbatch_options(load_section(TrainParams, "train"))))


if __name__ == "__main__":
    stage.run(NAME, main)
