#!/usr/bin/env bash
# Create .venv and install ssm-unet-bench with everything it needs.
#  - CPU machine: the pinned CPU torch + torchvision route (constraints-cpu.txt); mamba-ssm is skipped,
#    the project's own selective-scan backends run instead.
#  - machine whose python3 already has a working CUDA torch: the venv sees that torch
#    (--system-site-packages), keeps it, and adds the `cuda` extra (mamba-ssm, causal-conv1d).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

# before anything is downloaded: pip would refuse the project only after fetching torch (GBs on the CUDA route)
if ! "$PYTHON" -c "import sys; raise SystemExit(sys.version_info < (3, 11))" 2>/dev/null; then
    # -V: Python 2 says its version on stderr; a shim may say more lines
    said=$(command -v "$PYTHON" >/dev/null 2>&1 && "$PYTHON" -V 2>&1 | head -n 1 || echo "not found")
    echo "setup: needs Python >= 3.11; $PYTHON is ${said:-of no version it says}. Set PYTHON, e.g. make setup PYTHON=python3.11" >&2
    exit 1
fi

cuda_torch=$("$PYTHON" - <<'PY' 2>/dev/null || true
import torch
print(torch.__version__ if torch.cuda.is_available() else "")
PY
)

if [ -n "$cuda_torch" ]; then
    # kept as it is, so checked here: pip would only say the pin conflicts with pyproject's torch>=2.6
    if ! "$PYTHON" -c "import re, torch; raise SystemExit(tuple(map(int, re.match(r'(\d+)\.(\d+)', torch.__version__).groups())) < (2, 6))"; then
        echo "setup: $PYTHON has CUDA torch $cuda_torch, older than 2.6, whose weights-only checkpoint loading a crafted" >&2
        echo "  file can get past to run code (CVE-2025-32434); bench needs torch>=2.6. Upgrade that torch for your CUDA" >&2
        echo "  (https://pytorch.org/get-started/locally/), or set PYTHON to a python without torch (the CPU route)." >&2
        exit 1
    fi
    echo "setup: CUDA torch $cuda_torch found; keeping it and adding the cuda extra"
    "$PYTHON" -m venv --system-site-packages "$VENV"
    pin="$VENV/torch-pin.txt"
    "$PYTHON" -c "import torch, torchvision; print(f'torch=={torch.__version__}\ntorchvision=={torchvision.__version__}')" > "$pin" 2>/dev/null \
        || "$PYTHON" -c "import torch; print(f'torch=={torch.__version__}')" > "$pin"
    # --no-build-isolation: mamba-ssm/causal-conv1d must build against the installed CUDA torch,
    # so their build tools must already be there (setup.py imports packaging; ninja runs nvcc).
    # MAMBA_KEEP_CUDA_BUILD: since state-spaces/mamba PR #977 the Mamba-1 selective_scan_cuda
    # kernel (used by VM-UNet/V2) is only built on request. Prebuilt wheels are tried first;
    # constraints-cuda.txt pins the kernel releases this project checks.
    "$VENV/bin/pip" install -q -c "$pin" packaging wheel setuptools ninja
    MAMBA_KEEP_CUDA_BUILD=TRUE \
        "$VENV/bin/pip" install --no-build-isolation -c "$pin" -c constraints-cuda.txt -e ".[dev,cuda]"
    # a prebuilt wheel made for another CUDA or torch installs, then fails to load: say so now, not
    # as a silently slower scan backend later (bench doctor gives the reason)
    if ! problem=$("$VENV/bin/python" -c "from ssm_models import scan; p = scan.mamba_kernels_problem(); print(p or '')
raise SystemExit(bool(p))" 2>&1); then
        echo "setup: WARNING: with torch $cuda_torch, $problem;"
        echo "  the SSM models would run the slower torch scan backend. To compile them for this machine:"
        echo "  MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE MAMBA_KEEP_CUDA_BUILD=TRUE $VENV/bin/pip install \\"
        echo "    --no-build-isolation --no-deps --force-reinstall -c constraints-cuda.txt mamba-ssm causal-conv1d"
    fi
else
    echo "setup: no CUDA torch; installing the pinned CPU route"
    "$PYTHON" -m venv "$VENV"
    # torch first, alone; everything after is pinned so nothing replaces it. pip takes a CPU wheel it
    # can see (a local wheel folder, as on the project's machines); elsewhere PyPI's Linux torch is the
    # CUDA build (several GB), so PyTorch's CPU index is added (beside the configured ones, whose
    # settings stay; pip prefers its "+cpu" builds of the pinned versions, and falls back to PyPI's
    # where that index cannot be reached), with torchvision's CPU build from there too.
    chosen=$("$VENV/bin/pip" install --dry-run --no-deps --ignore-installed --report - -q "torch==2.13.0" 2>/dev/null \
        | "$VENV/bin/python" -c "import json, sys; print(json.load(sys.stdin)['install'][0]['metadata']['version'])" \
        2>/dev/null || true)
    if [[ "$chosen" == *+cpu ]] || [ "$(uname -s)" != Linux ]; then
        "$VENV/bin/pip" install -q "torch==2.13.0"
    else
        echo "setup: adding PyTorch's CPU index for torch 2.13.0 (the configured indexes offer ${chosen:-nothing})"
        "$VENV/bin/pip" install -q "torch==2.13.0" "torchvision==0.28.0" \
            --extra-index-url https://download.pytorch.org/whl/cpu
        # the CPU index unreachable (or without this Python's wheel): pip took PyPI's CUDA build, which runs on a
        # CPU too, only larger; said here, not left to a line that names the version alone
        if [ -n "$("$VENV/bin/python" -c "import torch; print(torch.version.cuda or '')")" ]; then
            echo "setup: WARNING: no CPU torch 2.13.0 wheel for $("$VENV/bin/python" -V) was reachable; pip installed"
            echo "  PyPI's CUDA build (several GB; it runs on a CPU as well). For the CPU build, put its wheel in a"
            echo "  folder pip finds (PIP_FIND_LINKS) or use a Python that PyTorch's CPU index serves, and run make setup again."
        fi
    fi
    "$VENV/bin/pip" install -q -c constraints-cpu.txt -e ".[dev]"
fi
"$VENV/bin/python" -c "import bench, torch; print('setup: ok, torch', torch.__version__, '(CUDA ' + torch.version.cuda + ' build)' if torch.version.cuda else '(CPU build)')"
