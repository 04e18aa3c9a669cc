#!/usr/bin/env bash
# What only a GPU can show, as one prepared run on a lent GPU machine (the `device` tool):
# the CUDA path of the SSM models against the CPU path (issue 3) and `bench profile` on CUDA
# (issue 5). Build the wheels here first (scripts/device_wheels.sh), then call the device tool once:
#
#   run(command="bash scripts/device_check.sh all", carry=[".whl"], timeout_s=540)   # ~8 min
#
# A session has 15 device minutes, the machine's start included, and a warm machine goes back after
# 30 s idle: one call does it all, and the script ends by DEADLINE_S (500 s) so that what it wrote
# comes back before the call's limit ("checks" or "profile" alone run one half). Everything lands in
# $OUT (at most 8 files come back): check.log (all output, with each step's exit status and
# seconds), doctor.txt, cuda_check.md, profile.md (bench report's cost tables of the records) and
# profiles.tar.gz (the profile records, for results/). A failing step does not stop the others.
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
out=${OUT:-/tmp/device-check}
mkdir -p "$out"
exec > >(tee -a "$out/check.log") 2>&1
tee_pid=$!
# tee must have written the last lines before the script returns (the tool ends what is left running)
trap 'rc=$?; exec >&- 2>&-; wait "$tee_pid" 2>/dev/null; exit $rc' EXIT
py=${PYTHON:-python3}
deadline=${DEADLINE_S:-500}  # seconds after the start by which the script has packed its files
threads=$(nproc)

step() {  # step NAME COMMAND...: run, report exit status and seconds, never abort the script
    local name=$1 t0=$SECONDS rc
    shift
    echo "== $name: $*"
    "$@"
    rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0)) s"
    return 0
}

if compgen -G ".whl/*.whl" >/dev/null; then
    step wheels "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    echo "== no .whl/: fvcore, thop and mamba-ssm are missing unless the image has them"
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true
ldd --version 2>&1 | head -n 1
# the wheels were compiled for one torch, CUDA and Python: another image's would fail to load them
if [ -f .whl/BUILD_INFO ]; then
    built=$(cat .whl/BUILD_INFO)
    here=$("$py" -c "import sys, torch; print(f'torch={torch.__version__} python={sys.version_info[0]}.{sys.version_info[1]}')")
    case " $built " in
        *" $here "*) echo "== wheels built for this machine's $here" ;;
        *) echo "== WARNING: wheels built for '$built', this machine has '$here': rebuild with device_wheels.sh" ;;
    esac
fi
# our CPU scan kernel (the oracle) compiles against Python.h: where the image lacks Python's headers,
# take the ones device_wheels.sh packed (same Python minor version)
inc=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
if [ ! -f "$inc/Python.h" ] && [ -f .whl/python-include/Python.h ]; then
    echo "== no $inc/Python.h here: using .whl/python-include"
    export CPATH=$PWD/.whl/python-include${CPATH:+:$CPATH}
fi

# mamba-ssm's scan kernel and causal-conv1d load next to this torch: else the CUDA tests fail and
# everything would run our torch backend, a check of nothing
kernels_load() {
    "$py" -c "from ssm_models import scan; p = scan.mamba_kernels_problem(); print('==', p or 'kernels load')
raise SystemExit(bool(p))"
}

if [ "$what" = checks ] || [ "$what" = all ]; then
    # doctor first (it says why mamba-ssm does not load, if it does not); it also builds our CPU
    # scan kernel, the oracle, outside any timing
    step doctor bash -c "'$py' -m bench doctor > '$out/doctor.txt' 2>&1; rc=\$?; cat '$out/doctor.txt'; exit \$rc"
    if ! kernels_load; then
        echo "== checks: mamba-ssm or causal-conv1d does not load on this machine (doctor.txt says why); checks skipped"
        exit 1
    fi
    # the tests marked cuda only: CI runs the rest, on a CPU
    step cuda-tests "$py" -m pytest -q -p no:cacheprovider -rs -m cuda tests
    step cuda-check "$py" benchmarks/cuda_check.py --threads "$threads" --repeats 20 --out "$out/cuda_check.md"
fi

if [ "$what" = profile ] || [ "$what" = all ]; then
    rm -rf /tmp/device-results
    # without mamba-ssm's kernels the SSM models would be timed on the torch fallback, a loop of
    # small launches per scan step: minutes of device time for numbers nobody should publish
    if ! kernels_load; then
        echo "== profile: mamba-ssm or causal-conv1d does not load on this machine; profile skipped"
        exit 1
    fi
    # every model at fp32 and bf16 autocast (PROFILE_PRECISIONS), each with throughput at the largest
    # batch that fits; each invocation counts a model's FLOPs once, not once a precision (CPU work:
    # 9-24 s a model on the 2-core dev machine). The SSM models first, so a run the deadline cuts
    # loses a baseline, not them; all stop 20 s before it, so the records are still packed.
    for group in vmunet,vmunet_v2,lightm_unet unet,transunet,swin_unet; do
        left=$((deadline - 20 - SECONDS))
        if [ "$left" -lt 20 ]; then echo "== profile: no time left for $group"; break; fi
        step "profile $group" timeout "$left" "$py" -m bench profile --models "$group" --device cuda \
            --precision "${PROFILE_PRECISIONS:-fp32,bf16}" --batch-size auto --results /tmp/device-results --format csv
    done
    # one set of tables of every model profiled, from the records (those of a cut run too)
    "$py" -m bench report --results /tmp/device-results | grep -v ': no finished runs; the cost tables' > "$out/profile.md"
    tar czf "$out/profiles.tar.gz" -C /tmp/device-results profiles 2>/dev/null
fi
ls -l "$out"
