#!/usr/bin/env bash
# One node's part of a multi-node training run, for every launcher in this folder. The launcher
# exports MASTER_ADDR, MASTER_PORT and NODE_RANK (node 0's address, a free port on it, this
# node's index) and EXPERIMENT (a name for the run); run from the root of a clone at the commit
# to train, whose params.yaml sets train.nodes (and train.processes per node), with its .venv
# made by `make setup` (on the submit host, in the image, or in SkyPilot's setup). Node 0 runs the
# stage the DVC way and owns every output and dvc.lock; the others compute and write nothing.
#
# NODES_SHARE_CLONE=1 (SLURM: every node works in the submit clone on the shared file system):
# node 0 alone pulls the inputs; the others read them once node 0 answers at MASTER_PORT.
# PUSH_EXPERIMENT_TO=origin (Kubernetes, SkyPilot: node 0's clone dies with its machine): node 0
# pushes the experiment, a git commit holding dvc.lock, and its outputs, so the model is never
# orphaned; `dvc exp pull origin $EXPERIMENT` brings it back. Unset: the experiment stays in the
# clone (SLURM: yours) and `dvc push` sends its outputs.
#
# Exit 250: stopped by a launcher's notice (SIGTERM, SIGUSR1) with the checkpoint saved; the same
# command resumes it.
set -euo pipefail
: "${MASTER_ADDR:?}" "${MASTER_PORT:?}" "${NODE_RANK:?}" "${EXPERIMENT:?}"
if [ ! -x .venv/bin/python ]; then
  echo "node.sh: no .venv in $PWD: run make setup in this clone first (docs/multinode.md)" >&2
  exit 2
fi
source .venv/bin/activate
export PYTHONPATH="$PWD/src"                  # this clone's code, whichever clone the venv was made in

# Run "$@", passing SIGTERM and SIGUSR1 on to it: where a launcher signals this script alone (a
# Kubernetes pod's first process), the training still gets its notice and saves.
run() {
  "$@" &
  local child=$! status
  trap 'kill -TERM $child 2>/dev/null || true' TERM
  trap 'kill -USR1 $child 2>/dev/null || true' USR1
  until wait "$child" && status=0 || status=$?; ! kill -0 "$child" 2>/dev/null; do :; done
  trap - TERM USR1
  return "$status"
}

if [ "$NODE_RANK" = 0 ]; then
  run dvc pull ingest augment                 # the training inputs, from the DVC remote
  # train across the nodes (tells the others when DVC finds the stage up to date)
  run python -m mlpipeline.cluster.node0 dvc repro --single-item train
  run dvc exp run -n "$EXPERIMENT"            # export and evaluate; the experiment commit holds dvc.lock
  if [ -n "${PUSH_EXPERIMENT_TO:-}" ]; then
    run dvc exp push --run-cache "$PUSH_EXPERIMENT_TO" "$EXPERIMENT"
  else
    run dvc push --run-cache
  fi
else
  if [ -z "${NODES_SHARE_CLONE:-}" ]; then
    run dvc pull ingest augment
  fi
  run python -m mlpipeline.stages.train
fi
