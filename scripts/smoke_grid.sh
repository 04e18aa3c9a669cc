#!/usr/bin/env bash
# The smoke grid behind the drift baseline: every registered model on synthetic Synapse and
# ISIC 2017 data under the `smoke` protocol, one thread, fixed seed.
set -euo pipefail
out=${1:?usage: smoke_grid.sh RESULTS_DIR}
bench=${BENCH:-.venv/bin/bench}
for ds in synapse isic17; do
    "$bench" run --models all --dataset "$ds" --synthetic --protocol smoke --results "$out" --threads 1 --no-progress
done
