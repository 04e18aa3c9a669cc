#!/usr/bin/env bash
# CI's drift grid behind results/baseline/smoke.csv: every registered model, in its tiny
# configuration, on synthetic Synapse and ISIC 2017 data under the `drift` protocol, and LightM-UNet
# on synthetic nnU-Net CT volumes under `drift_3d` (3-D patches) and `drift_2d` (nnU-Net's 2d
# configuration) (float64 and the settings below, so the numbers do not depend on which CPU runs
# it), one thread, fixed seed.
set -euo pipefail
# float64 alone does not make the numbers CPU-independent: MKL picks its GEMM kernels by CPU and
# ATen's vector kernels sum 4 or 8 doubles at a time (AVX2 / AVX-512), and over 120 training
# steps the last bits grow into different models. So MKL runs in its conditional numerical
# reproducibility mode (one code path on every x86 CPU) and ATen at AVX2 everywhere; the scan
# kernel sums in a fixed order by itself. LightM-UNet's tiny runs stay CPU-dependent even so (an
# Intel Xeon and an AMD EPYC part by 8 DSC points on synthetic Synapse): its baseline rows carry
# wider tolerances, edited by hand.
export MKL_CBWR=${MKL_CBWR:-COMPATIBLE}
if grep -qw avx2 /proc/cpuinfo 2>/dev/null; then  # torch does not check: a CPU without it would crash
    export ATEN_CPU_CAPABILITY=${ATEN_CPU_CAPABILITY:-avx2}
fi
out=${1:?usage: smoke_grid.sh RESULTS_DIR [MODELS]}
models=${2:-all}  # a comma list runs those models' part of the grid only
bench=${BENCH:-.venv/bin/bench}
grid() { "$bench" run --tiny --results "$out" --threads 1 --no-progress "$@"; }
rest() {  # Synapse, then the nnU-Net runs (they share their synthetic data, so they stay in one lane)
    grid --models "$models" --dataset synapse --synthetic --protocol drift || return
    if [[ $models == all || ,$models, == *,lightm_unet,* ]]; then
        for proto in drift_3d drift_2d; do
            grid --models lightm_unet --dataset nnunet --synthetic --protocol "$proto" || return
        done
    fi
}
# two lanes, each process one thread, so both cores work and the numbers are those of one lane (two
# processes share a results folder as two shards do): ISIC 2017 beside the rest. A signal to this
# script alone (a CI timeout's SIGTERM) stops both lanes' runs, then the lanes: bash runs a trap only
# once a foreground command ends, so the lanes run in the background and the script waits for them.
# They stay in the script's process group, so whatever stops the group (Ctrl-C, a kill of the job's
# group) reaches them too.
lanes=()
stop() {
    trap - TERM INT HUP
    if ((${#lanes[@]})); then
        pkill -TERM -P "$(IFS=,; echo "${lanes[*]}")" 2>/dev/null || true  # the runs
        kill -TERM "${lanes[@]}" 2>/dev/null || true
    fi
    wait
    exit "$1"
}
trap 'stop 143' TERM
trap 'stop 130' INT
trap 'stop 129' HUP
grid --models "$models" --dataset isic17 --synthetic --protocol drift &
lanes+=($!)
rest &
lanes+=($!)
status=0
wait "${lanes[1]}" || status=$?
wait "${lanes[0]}" || status=$?
exit "$status"
