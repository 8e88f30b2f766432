#!/usr/bin/env bash
# Submit recipes/slurm/train.sbatch with the resources params.yaml's train section needs: nodes,
# GPUs per node (none when train.device is cpu: a CPU partition) and CPUs per task (see
# src/mlpipeline/cluster/slurm.py). Run from the root of your clone, after `make setup`; extra
# arguments go to sbatch after those (-p PARTITION, --time=..., or an override: the last wins).
set -euo pipefail
if [ ! -x .venv/bin/python ]; then
  echo "submit.sh: no .venv in $PWD: run make setup first (the nodes use this clone's)" >&2
  exit 2
fi
mapfile -t resources < <(PYTHONPATH=src .venv/bin/python -m mlpipeline.cluster.slurm)
[ "${#resources[@]}" -gt 0 ] || exit 2  # the params were refused, in one line above
exec sbatch "${resources[@]}" "$@" recipes/slurm/train.sbatch
