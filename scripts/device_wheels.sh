#!/usr/bin/env bash
# Wheels for a lent GPU machine (the `device` tool), built here into .whl/ (git-ignored), for
# scripts/device_check.sh. That machine's image has Python 3.12 with a CUDA torch, timm, typer,
# pandas, scipy, h5py, triton and nvcc, and no network; it lacks fvcore (+ iopath, yacs,
# termcolor), thop, mamba-ssm and causal-conv1d. The two kernel packages are compiled here, for
# the device's torch and its GPU alone (the authors' setup.py with its list of GPU architectures
# cut to one and without -lineinfo, debug symbols stripped), so the device's minutes go to the
# checks, not to nvcc. About 25 min on 2 cores; the wheels come to about 25 MB (the device tool
# carries 64 MiB with the working tree; checked at the end).
#
#   bash scripts/device_wheels.sh            # then, through the device tool:
#   run(command="bash scripts/device_check.sh", carry=[".whl"], timeout_s=540)
#
# Settings (environment): PY312 (a Python of the device's minor version), DEVICE_TORCH (its torch;
# PyPI's build of 2.11.0 is the cu130 build the device has), DEVICE_CUDA (that build's CUDA major
# version, checked: kernels built for another one would not load there), DEVICE_TRANSFORMERS and
# DEVICE_HF_HUB (its versions, for the import check), CUDA_ARCH (90: H100/H200), MAMBA_VERSION,
# CONV_VERSION, BUILD_DIR (a scratch folder), MAX_JOBS (parallel nvcc jobs).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY312:-}" ]; then  # the first Python 3.12 that runs (a pyenv shim may not)
    for py in python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3; do
        if "$py" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then PY312=$py; break; fi
    done
fi
PY312=${PY312:-}
DEVICE_TORCH=${DEVICE_TORCH:-2.11.0}
DEVICE_CUDA=${DEVICE_CUDA:-13}  # the CUDA major version of the device's torch (2.11.0+cu130)
CUDA_ARCH=${CUDA_ARCH:-90}
# the releases setup.sh's CUDA route pins (one list: constraints-cuda.txt)
MAMBA_VERSION=${MAMBA_VERSION:-$(sed -n 's/^mamba-ssm==//p' constraints-cuda.txt)}
CONV_VERSION=${CONV_VERSION:-$(sed -n 's/^causal-conv1d==//p' constraints-cuda.txt)}
DEVICE_TRANSFORMERS=${DEVICE_TRANSFORMERS:-5.17.0}
DEVICE_HF_HUB=${DEVICE_HF_HUB:-1.33.0}
BUILD_DIR=${BUILD_DIR:-/tmp/ssm-unet-bench-device-build}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
[ -n "$PY312" ] || { echo "device_wheels: no Python 3.12 found; set PY312" >&2; exit 2; }
# the CUDA toolkit's own folder: torch derives CUDA_HOME from where nvcc is, and a symlinked
# /usr/local/bin/nvcc would send it to /usr/local/include for cuda_runtime_api.h
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
[ -x "$CUDA_HOME/bin/nvcc" ] || { echo "device_wheels: no nvcc under CUDA_HOME=$CUDA_HOME" >&2; exit 2; }
export PATH="$CUDA_HOME/bin:$PATH"

rm -rf .whl && mkdir -p .whl "$BUILD_DIR"
# pure-Python packages; fvcore and iopath ship only sources, so wheels are built from them
python3 -m pip wheel -q --no-deps -w .whl "fvcore==0.1.5.post20221221" "iopath==0.1.10" \
    "thop==0.1.1.post2209072238" yacs termcolor

# a build environment with the device's torch (CUDA build; importing it needs no GPU)
venv="$BUILD_DIR/venv"
[ -x "$venv/bin/python" ] || "$PY312" -m venv "$venv"
"$venv/bin/pip" install -q "torch==$DEVICE_TORCH" setuptools wheel ninja packaging einops

build() {  # build NAME VERSION FORCE_VAR: the sdist's own setup.py, one GPU architecture
    local name=$1 version=$2 force=$3 src
    "$venv/bin/pip" download -q --no-deps --no-binary :all: --no-build-isolation -d "$BUILD_DIR" "$name==$version"
    rm -rf "$BUILD_DIR/src-$name" && mkdir -p "$BUILD_DIR/src-$name"
    tar xzf "$BUILD_DIR/${name//-/_}-$version.tar.gz" -C "$BUILD_DIR/src-$name"
    src=$(ls -d "$BUILD_DIR/src-$name"/*/)
    # setup.py builds its own list of -gencode flags; replace it by the one GPU (the line it
    # precedes is in both packages' setup.py; fail loudly if a new version moved it), and drop
    # -lineinfo (source lines for profilers: size, no code)
    "$venv/bin/python" - "$src/setup.py" "$CUDA_ARCH" <<'PY'
import sys
path, arch = sys.argv[1], sys.argv[2]
text = open(path, encoding="utf-8").read()  # Python source: UTF-8 whatever the locale
anchor = "    # HACK: The compiler flag -D_GLIBCXX_USE_CXX11_ABI"
assert text.count(anchor) == 1, f"{path}: the -gencode list is not where expected; update device_wheels.sh"
text = text.replace(anchor, f'    cc_flag = ["-gencode", "arch=compute_{arch},code=sm_{arch}"]  # device_wheels.sh\n' + anchor)
text = text.replace('"-lineinfo",', "")
open(path, "w", encoding="utf-8").write(text)
PY
    rm -rf "$BUILD_DIR/wheel-$name" && mkdir -p "$BUILD_DIR/wheel-$name"
    env "$force=TRUE" "$venv/bin/pip" wheel -q --no-deps --no-build-isolation -w "$BUILD_DIR/wheel-$name" "$src"
    # the host code is compiled with -g (Python's CFLAGS): strip the debug sections, repack
    (cd "$BUILD_DIR/wheel-$name" && "$venv/bin/wheel" unpack -d unpacked ./*.whl >/dev/null \
        && find unpacked -name "*.so" -exec strip --strip-debug {} + \
        && "$venv/bin/wheel" pack -d "$OLDPWD/.whl" unpacked/*/ >/dev/null)
}
build causal-conv1d "$CONV_VERSION" CAUSAL_CONV1D_FORCE_BUILD
# MAMBA_KEEP_CUDA_BUILD: since state-spaces/mamba#977 the Mamba-1 scan kernel VM-UNet needs is opt-in
MAMBA_KEEP_CUDA_BUILD=TRUE build mamba-ssm "$MAMBA_VERSION" MAMBA_FORCE_BUILD

# the compiled kernels load next to that torch, and mamba-ssm's module chain imports with the
# device's transformers and huggingface_hub as ssm_models.scan imports it (no GPU needed)
"$venv/bin/pip" install -q --no-deps --force-reinstall .whl/causal_conv1d-*.whl .whl/mamba_ssm-*.whl
"$venv/bin/pip" install -q "transformers==$DEVICE_TRANSFORMERS" "huggingface_hub==$DEVICE_HF_HUB"
PYTHONPATH=$PWD "$venv/bin/python" -c "
import torch
# kernels built against another CUDA major version than the device's would not load there
major = (torch.version.cuda or '').split('.')[0]
assert major == '$DEVICE_CUDA', f'torch {torch.__version__} is built for CUDA {torch.version.cuda}, not $DEVICE_CUDA'
from ssm_models import scan
problem = scan.mamba_kernels_problem()
assert problem is None, problem
print('device_wheels: mamba-ssm and causal-conv1d load with torch', torch.__version__)"
# what they were built for (device_check.sh compares it with the machine's), the newest C library
# they need, and Python's headers for our CPU scan kernel where the image has none
"$venv/bin/python" -c "import sys, torch; print(f'torch={torch.__version__} python={sys.version_info[0]}.{sys.version_info[1]}')" \
    > .whl/BUILD_INFO
echo "device_wheels: built for $(cat .whl/BUILD_INFO); needs glibc >=" \
    "$(find "$venv" -path "*site-packages/*" \( -path "*mamba_ssm*" -o -path "*causal_conv1d*" \) -name "*.so" \
        -exec objdump -T {} + 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)"
rm -rf .whl/python-include && cp -r "$("$PY312" -c "import sysconfig; print(sysconfig.get_paths()['include'])")" \
    .whl/python-include
ls -l .whl
# the device tool carries the working tree and .whl together, 64 MiB at most
total=$(( $(du -sb .whl | cut -f1) + $(git ls-files -z | xargs -0 du -cb | tail -n 1 | cut -f1) ))
echo "device_wheels: working tree + .whl = $((total / 1048576)) MiB of the 64 MiB the device tool carries"
[ "$total" -lt $((64 * 1048576)) ] || { echo "device_wheels: too large to carry" >&2; exit 1; }
