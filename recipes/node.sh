#!/usr/bin/env bash
# One node's part of a multi-node training run, for every launcher in this folder. The launcher
# exports MASTER_ADDR, MASTER_PORT and NODE_RANK (node 0's address, a free port on it, this
# node's index); run from the root of a clone at the commit to train, whose params.yaml sets
# train.nodes (and train.processes per node). Node 0 runs the stage the DVC way and owns every
# output and dvc.lock; the others compute and write nothing into their clone.
set -euo pipefail
: "${MASTER_ADDR:?}" "${MASTER_PORT:?}" "${NODE_RANK:?}"
make setup
source .venv/bin/activate
dvc pull ingest augment                   # the training inputs, from the DVC remote
if [ "$NODE_RANK" = 0 ]; then
  dvc repro --single-item train           # train across the nodes; dvc.lock records it here
  dvc repro                               # evaluate and export, on node 0 alone
  dvc push
else
  PYTHONPATH=src python -m mlpipeline.stages.train
fi
