#!/usr/bin/env bash
# CI's drift grid behind results/baseline/smoke.csv: every registered model, in its tiny
# configuration, on synthetic Synapse and ISIC 2017 data under the `drift` protocol (float64, so
# the numbers do not depend on which CPU runs it), one thread, fixed seed.
set -euo pipefail
out=${1:?usage: smoke_grid.sh RESULTS_DIR}
bench=${BENCH:-.venv/bin/bench}
for ds in synapse isic17; do
    "$bench" run --models all --tiny --dataset "$ds" --synthetic --protocol drift --results "$out" --threads 1 --no-progress
done
