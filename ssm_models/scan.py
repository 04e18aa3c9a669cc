"""The selective scan (Mamba's S6 recurrence): one op, interchangeable backends.

``selective_scan`` has the semantics of mamba-ssm v1's ``selective_scan_fn``
(state-spaces/mamba, mamba_ssm/ops/selective_scan_interface.py), grouped B/C included::

    u, delta, z: (batch, dim, L)      A: (dim, N), real      D, delta_bias: (dim,)
    B, C: (dim, N) time-invariant | (batch, N, L) | (batch, G, N, L), dim % G == 0
          (channel d reads group d // (dim // G); B and C are independent)
    dt  = softplus(delta + delta_bias)                  (softplus only if delta_softplus)
    x_t = exp(dt_t · A) ⊙ x_{t-1} + dt_t · u_t · B_t    (x_{-1} = 0; x: (batch, dim, N))
    y_t = <C_t, x_t> + D · u_t,   then y *= silu(z)

The output has ``u``'s dtype; the scan runs in float32 (float64 inputs stay float64).
``return_last_state=True`` returns ``(y, last_state)``, last_state (batch, dim, N) in the
compute dtype, as mamba-ssm does.

Backends (``backend=``, else env ``BENCH_SCAN_BACKEND``, else automatic):

- ``cuda``: mamba-ssm's fused kernels; automatic for fp32/fp16/bf16 CUDA tensors when mamba-ssm
  imports (it has no float64 kernels: float64 on CUDA runs ``torch``).
  Note: mamba-ssm ignores the gradient that flows into ``last_state``; the others do not.
- ``cpu``: a C++ kernel (``csrc/selective_scan_cpu.cpp``) with bias, softplus, D and the z gate
  fused, and a reverse-scan backward; the CPU default. Built on first use, cached on disk.
- ``torch``: the same recurrence in PyTorch ops with a reverse-scan backward (any device);
  automatic when the kernel cannot be built, and for CUDA tensors without mamba-ssm or in float64.
- ``ref``: a per-step loop of einsums laid out like mamba-ssm's ``selective_scan_ref``; the test
  oracle (exact in float64) and the benchmark baseline. Autograd through it is O(L²).

Importing this module is cheap: mamba-ssm is imported, and the kernel compiled, on first need.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import math
import os
import platform
import re
import sys
import sysconfig
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["selective_scan", "selective_scan_flops", "SCAN_COST_OP", "available_backends", "default_backend",
           "last_backend", "scan_repr", "backend_report", "fused_mamba_inner", "use_backend", "backend_problem",
           "mamba_kernels_problem", "BACKENDS", "upcast"]

BACKENDS = ("cuda", "cpu", "torch", "ref")
ENV_VAR = "BENCH_SCAN_BACKEND"

_last: str | None = None
_override: str | None = None  # use_backend's, ahead of the env var
_lock = threading.Lock()
_ext = None  # the loaded kernel module
_ext_error: str | None = None  # why it is unavailable (short); full text in _ext_error_detail
_ext_error_detail: str | None = None
_ext_origin = ""  # "built in 8.1 s" / "rebuilt in 8.1 s" / "loaded from cache"
_mamba = None  # mamba-ssm's selective_scan_interface module, False once its import failed
_mamba_error = ""


# ------------------------------------------------------------------------------- the C++ kernel

_SOURCE = Path(__file__).parent / "csrc" / "selective_scan_cpu.cpp"
_EXT_NAME = "ssm_unet_bench_selective_scan_cpu"
# -ffp-contract=fast: ISO C++ mode would forbid fused multiply-adds. -fno-trapping-math lets
# GCC turn exp's range selects into vector blends; without it GCC 12 leaves every loop that
# calls exp scalar (the stage-1 forward was 6x slower on an AMD EPYC), and it changes no value.
# -march=native is why the build directory is keyed by the CPU (below). No -ffast-math: the
# kernel writes its own exp.
_CFLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fno-trapping-math", "-fopenmp"]
# Apple clang has no -fopenmp (older ones no -march=native on arm64 either): where the compiler
# refuses them, the same kernel without them, single-threaded and for the architecture's baseline
# (on x86 that has no FMA, so its last bits differ from a native build's); ~15x the torch backend still
_PORTABLE_CFLAGS = ["-O3", "-ffp-contract=fast", "-fno-trapping-math"]
_REFUSED = "refused.txt"  # in the native build's folder: the compiler's refusal, so later processes skip it
_STALE_LOCK_S = 600  # a build takes well under a minute; an older lock was left by a killed build


def _cpu_signature() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        return next((line for line in info.splitlines() if line.startswith("flags")), info[:2000])
    except OSError:  # no /proc (macOS): the CPU's model, as -march=native builds for it
        from bench.env import cpu_model

        return cpu_model()


def _build_dir(cflags: list[str] | None = None) -> Path:
    """One directory per (kernel source and its path, flags, torch, Python, compiler, CPU): a cached
    binary is only ever loaded into the setup that built it, and two checkouts or venvs sharing the
    cache never rebuild over each other (ninja's files name the source's path: one directory for two
    checkouts rebuilt it whenever the other had built)."""
    key = hashlib.sha256()
    for part in (_SOURCE.read_bytes(), str(_SOURCE.resolve()), " ".join(cflags or _CFLAGS), torch.__version__, torch.__file__, sys.version,
                 sysconfig.get_paths()["include"], os.environ.get("CXX", "c++"), platform.machine(),
                 _cpu_signature()):
        key.update(part if isinstance(part, bytes) else part.encode())
    from bench.fileio import cache_dir

    # BENCH_EXTENSIONS_DIR set empty: unset, not the working directory
    path = cache_dir("torch_extensions", os.environ.get("BENCH_EXTENSIONS_DIR") or None) / \
        f"selective_scan_cpu-{key.hexdigest()[:16]}"
    path.mkdir(exist_ok=True)
    return path


def _short_reason(exc: BaseException) -> str:
    """The first compiler error line of a failed build, else the exception's first line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.search(r"(^|\s|:)(fatal )?error:", ln, re.IGNORECASE)
              and not ln.startswith("Error building extension")]
    if errors:
        return f"build failed: {errors[0][:240]}"
    return f"{type(exc).__name__}: {(lines or [''])[0][:240]}"


@contextlib.contextmanager
def _real_std_streams():
    """sys.stdout/stderr as writable streams for the block (``contextlib.redirect_stdout(None)``
    and windowed apps leave None, on which the build's flush fails and the kernel is lost)."""
    if sys.stdout is not None and sys.stderr is not None:
        yield
        return
    with open(os.devnull, "w", encoding="utf-8") as sink:
        out, err = sys.stdout is None, sys.stderr is None
        sys.stdout, sys.stderr = sys.stdout or sink, sys.stderr or sink
        try:
            yield
        finally:  # only what was None, and only if nobody redirected it meanwhile
            if out and sys.stdout is sink:
                sys.stdout = None
            if err and sys.stderr is sink:
                sys.stderr = None


def _load_extension():
    """The compiled kernel, built on first call (then cached on disk); None if it cannot be had.
    The reason is kept for ``backend_report``. torch's FileBaton serialises concurrent builds."""
    global _ext, _ext_error, _ext_error_detail, _ext_origin
    if _ext is not None or _ext_error is not None:
        return _ext
    with _lock:
        if _ext is not None or _ext_error is not None:
            return _ext
        marker, refused, first = None, None, None
        try:
            marker = _build_dir() / _REFUSED
            refused = marker.read_text(encoding="utf-8")
        except OSError:
            pass
        for cflags in ([_PORTABLE_CFLAGS] if refused else [_CFLAGS, _PORTABLE_CFLAGS]):
            try:
                _ext, _ext_origin = _build(cflags)
            except Exception as exc:  # no compiler, no ninja, a build or load error
                first = first or exc
                continue
            if cflags is _PORTABLE_CFLAGS:
                left = [f for f in _CFLAGS if f not in _PORTABLE_CFLAGS]
                if not refused:
                    refused = _short_reason(first)
                    # the compiler's word on a flag, not a build killed for memory or a full disk's
                    if any(f.split("=")[0] in refused for f in left):
                        from bench.fileio import portable_write_text

                        with contextlib.suppress(OSError):  # a marker: a torn one is read as none
                            portable_write_text(marker, refused)
                kept = (f"; {marker} skips them in later processes: delete it to try again"
                        if marker is not None and marker.exists() else "")
                _ext_origin += f", without {' '.join(left)} ({refused}{kept}): single-threaded"
            break
        else:
            _ext_error, _ext_error_detail = _short_reason(first), str(first)
            # said once a process: the run goes on, computing the same function, its scans far slower
            warnings.warn(f"the selective-scan C++ kernel is unavailable ({_ext_error}); CPU scans run the torch "
                          "backend, the same function about 15x slower (benchmarks/scan_bench.md); bench doctor "
                          "says why", stacklevel=2)
        return _ext


@torch.compiler.assume_constant_result
def _kernel_loads() -> bool:
    """Whether the kernel loads (building it on first ask). torch.compile runs this once while tracing
    and keeps the answer, rather than tracing the build."""
    return _load_extension() is not None


def _build(cflags: list[str]) -> tuple[Any, str]:
    """The kernel built with ``cflags`` (or loaded from its cache), and how it was had."""
    from torch.utils import cpp_extension

    build = _build_dir(cflags)
    # a name of its own: after a refused build, torch would name the same module _v1 in this process, and
    # a later process, building it first, another
    name = _EXT_NAME if cflags is _CFLAGS else f"{_EXT_NAME}_portable"
    _wait_for_build_lock(build / "lock")
    _say_owner(build)
    before = {so: so.stat().st_mtime_ns for so in build.glob(f"{name}*.so")}
    if not before and sys.stderr is not None:  # 15-50 s of silence otherwise, before a run's first step
        print(f"building the CPU selective-scan kernel (first use on this machine) in {build} ...", file=sys.stderr,
              flush=True)
    t0 = time.perf_counter()
    with _real_std_streams(), _venv_ninja_first():  # torch's build flushes the streams
        ext = cpp_extension.load(name=name, sources=[str(_SOURCE)], extra_cflags=cflags,
                                 extra_ldflags=["-fopenmp"] if "-fopenmp" in cflags else [],
                                 build_directory=str(build), verbose=False)
    after = {so: so.stat().st_mtime_ns for so in build.glob(f"{name}*.so")}
    took = f"{time.perf_counter() - t0:.1f} s"
    return ext, ("loaded from cache" if before and after == before else f"rebuilt in {took}" if before
                 else f"built in {took}")


@contextlib.contextmanager
def _venv_ninja_first():
    """The ninja installed beside this Python (pip's, in the venv) first on PATH while building:
    ninja's log keeps each command's hash, which another ninja version computes otherwise, so an
    activated venv (its ninja) and a plain `.venv/bin/bench` (the system's) rebuilt the kernel each
    time one followed the other. Without one there, PATH's ninja."""
    here = Path(sys.executable).parent
    if not (here / "ninja").exists():
        yield
        return
    old = os.environ.get("PATH")
    os.environ["PATH"] = f"{here}{os.pathsep}{old or ''}"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = old


_LOCK_OWNER = "lock.owner"  # beside torch's lock, which cannot say who holds it: the builder's writer tag


def _say_owner(build: Path) -> None:
    """Name this process as the builder, before torch's baton is taken (a waiter that finds the lock
    reads who holds it)."""
    from bench.fileio import portable_write_text, writer_tag

    try:
        portable_write_text(build / _LOCK_OWNER, writer_tag())
    except OSError:  # a read-only cache is no reason to fail the build: waiters then go by the lock's age
        pass


def _lock_left(lock: Path, locked: float) -> bool:
    """Whether ``lock`` was left by a killed build: the owner file, written just before it, names a
    process of this host (and pid namespace) that is gone. A builder on another node sharing the home
    folder, one no such file names (an older owner file: another's build), or this very process: not
    known, so the lock's age decides. ``locked``: the lock's mtime."""
    from bench.fileio import dead_writer, writer_tag

    owner_file = lock.parent / _LOCK_OWNER
    try:
        owner, written = owner_file.read_text(encoding="utf-8").strip(), owner_file.stat().st_mtime
    except OSError:
        return False
    return -1 <= locked - written < 60 and owner != writer_tag() and dead_writer(owner)


def _wait_for_build_lock(lock: Path) -> None:
    """Wait while another process builds into this directory. A lock whose builder is known gone
    (``_lock_left``) is removed at once (a killed run's next command slept 10 min in silence); any
    other once older than ``_STALE_LOCK_S``. torch's own wait has no end. A wait of more than a few
    seconds is said."""
    start, next_look, said = time.monotonic(), 0.0, False
    while True:
        try:
            seen = lock.stat()
        except FileNotFoundError:
            return
        if time.monotonic() >= next_look:  # about once a second
            next_look = time.monotonic() + 1.0
            if time.time() - seen.st_mtime > _STALE_LOCK_S or _lock_left(lock, seen.st_mtime):
                try:  # only the lock looked at: another waiter may have removed it and begun its build
                    if lock.stat().st_ino == seen.st_ino:
                        lock.unlink()
                except FileNotFoundError:
                    pass
                return
            if not said and time.monotonic() - start > 5:
                said = True
                warnings.warn(f"waiting for another process's build of the selective-scan kernel ({lock}); a "
                              f"lock left by a killed build is removed (at once where its process was of this host, "
                              f"else after {_STALE_LOCK_S // 60:.0f} min)", stacklevel=2)
        time.sleep(0.1)  # as torch polls its baton


def _mamba_ops():
    """mamba-ssm's ``selective_scan_interface`` module when its compiled kernel loads too, or None.
    Tried once per process: the import costs ~13 s on a CPU machine, and a failing import would
    otherwise be retried on every call."""
    global _mamba, _mamba_error
    if _mamba is None:
        try:
            from mamba_ssm.ops import selective_scan_interface

            # the interface imports without its kernel in builds made without MAMBA_KEEP_CUDA_BUILD
            # (state-spaces/mamba#977); selective_scan_fn would then fail at the first forward
            importlib.import_module("selective_scan_cuda")
            _mamba = selective_scan_interface
        except Exception as exc:  # not installed, or its CUDA extension does not load
            _mamba, _mamba_error = False, _short_reason(exc)
    return _mamba or None


def _mamba_selective_scan_fn():
    """mamba-ssm's ``selective_scan_fn``, or None."""
    ops = _mamba_ops()
    return ops.selective_scan_fn if ops else None


def mamba_kernels_problem() -> str | None:
    """Why mamba-ssm's scan kernel or causal-conv1d's (its fused Mamba path) does not load here;
    None when both do. Needs no GPU: setup, the device scripts and the CUDA tests all ask this."""
    if _mamba_ops() is None:
        return f"mamba-ssm's kernels do not import: {_mamba_error}"
    if getattr(_mamba, "causal_conv1d_fn", None) is None:
        return "causal-conv1d's kernels do not import (mamba-ssm's fused Mamba path needs them)"
    return None


def _in_onnx_export() -> bool:
    """An ONNX export is tracing (either exporter). Its flag is the process's: a scan in another thread
    during an export scans with the torch backend too (and says so in last_backend)."""
    return torch.onnx.is_in_onnx_export()


def fused_mamba_inner(device: torch.device | str, dtype: torch.dtype | None = None):
    """mamba-ssm's fused ``mamba_inner_fn`` (conv1d + projections + scan in one autograd
    Function) when mamba-ssm's ``Mamba`` would take it — causal-conv1d's kernels import — and a
    scan on ``device`` would use the ``cuda`` backend, else None (so ``BENCH_SCAN_BACKEND``
    turns the fused path off too). A caller that gets the function runs it, so the ``cuda``
    backend is recorded as used."""
    global _last
    if torch.device(device).type != "cuda" or default_backend(device, dtype) != "cuda" or mamba_kernels_problem():
        return None  # (causal-conv1d's kernels too: mamba-ssm's own fast-path condition)
    if _in_onnx_export():  # ONNX has no fused kernel: the block's own path writes the scan's steps
        return None
    _last = "cuda"
    return _mamba.mamba_inner_fn


# ------------------------------------------------------------------------------- selection


def backend_problem(name: str, variable: str | None = None) -> str | None:
    """Why ``name`` is not a backend (None when it is), in the one wording every check uses;
    ``variable`` names the environment variable it came from."""
    if name in BACKENDS:
        return None
    from bench.errors import did_you_mean

    given = f"{variable}={name!r}" if variable else repr(name)
    return f"{given} is not a selective-scan backend{did_you_mean(name, BACKENDS)}; choose one of {', '.join(BACKENDS)}"


def _check_backend(name: str, variable: str | None = None) -> str:
    problem = backend_problem(name, variable)
    if problem:
        raise ValueError(problem)
    return name


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device`` (this may build the kernel, or import mamba-ssm)."""
    out = []
    if torch.device(device).type == "cuda" and torch.cuda.is_available() and _mamba_selective_scan_fn():
        out.append("cuda")
    if torch.device(device).type == "cpu" and _kernel_loads():
        out.append("cpu")
    return out + ["torch", "ref"]


def _forced() -> str:
    """BENCH_SCAN_BACKEND as a backend's name ("TORCH " is torch); "" where unset."""
    return os.environ.get(ENV_VAR, "").strip().lower()


def default_backend(device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> str:
    """What ``backend=None`` runs for tensors on ``device`` (the env var first); float64 on CUDA
    runs ``torch``, since mamba-ssm's kernels take only fp32/fp16/bf16."""
    if _override:
        return _override
    forced = _forced()
    if forced:
        return _check_backend(forced, ENV_VAR)
    if torch.device(device).type == "cuda":
        return "cuda" if _mamba_selective_scan_fn() and dtype != torch.float64 else "torch"
    return "cpu" if _kernel_loads() else "torch"


@contextlib.contextmanager
def use_backend(name: str):
    """Inside the block, automatic choices (``backend=None``) run ``name``, the env var overruled.
    FLOP counting (bench.cost) runs the backend whose calls its counters see as one op, so a count
    does not depend on the env var (``ref``'s per-step einsums would be counted on top of the scan)."""
    global _override
    before, _override = _override, _check_backend(name)
    try:
        yield
    finally:
        _override = before


def last_backend() -> str | None:
    """The backend of the most recent ``selective_scan`` call in this process (None before any);
    run records store it."""
    return _last


def scan_repr(module) -> str:
    """A scanning module's (SS2D's, Mamba's) ``extra_repr``: its sizes and the backend this process's last scan
    ran on (any module's: the one its next scan runs on, unless the device, dtype or a forced backend differs).
    Printing a model chooses none, which could build the kernel."""
    return (f"d_model={module.d_model}, d_state={module.d_state}, d_inner={module.d_inner}, "
            f"last_scan={_last or 'none yet'}")


def forced_backend_problem() -> str | None:
    """Why ``BENCH_SCAN_BACKEND`` cannot work here, or None: no backend's name, or ``cuda`` on a
    machine without a CUDA device or mamba-ssm's kernels (every scan would fail, after setup)."""
    forced = _forced()
    if not forced:
        return None
    problem = backend_problem(forced, ENV_VAR)
    if problem or forced != "cuda":
        return problem
    if not torch.cuda.is_available():
        why = "this machine has no CUDA device"
    elif not _mamba_selective_scan_fn():
        why = f"mamba-ssm's kernels do not import ({_mamba_error})"
    else:
        return None
    return f"{ENV_VAR}='cuda' runs mamba-ssm's CUDA kernels, and {why}; choose cpu, torch or ref"


def backend_report() -> str:
    """One line: which backend runs for CPU and for CUDA tensors, and why."""
    forced = _forced()
    problem = forced_backend_problem()
    if problem:
        return problem
    ext = _load_extension()
    kernel = (f"compiled C++ kernel {_ext_origin}: {ext.__file__}" if ext is not None
              else f"C++ kernel unavailable: {_ext_error}")
    cpu = forced or ("cpu" if ext is not None else "torch")
    cpu_line = f"CPU: {cpu} ({kernel})" if not forced else f"CPU: {cpu} (forced by {ENV_VAR}; {kernel})"
    if not torch.cuda.is_available():
        installed = importlib.util.find_spec("mamba_ssm") is not None
        mamba = "mamba-ssm installed, not imported" if installed else "mamba-ssm not installed"
        cuda_line = f"CUDA: no device ({mamba})"
    elif _mamba_selective_scan_fn():
        cuda_line = f"CUDA: {forced or 'cuda'} (mamba-ssm kernels import)"
    else:
        cuda_line = f"CUDA: {forced or 'torch'} (mamba-ssm kernels do not import: {_mamba_error})"
    return f"{cpu_line}; {cuda_line}"


# ------------------------------------------------------------------------------- shapes


def _check_shapes(u, delta, A, B, C, D, z, delta_bias):
    for name, v, optional in (("u", u, False), ("delta", delta, False), ("A", A, False), ("B", B, False),
                              ("C", C, False), ("D", D, True), ("z", z, True), ("delta_bias", delta_bias, True)):
        if v is None:
            if optional:
                continue
            raise TypeError(f"{name} must be a tensor; got None")
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{name} must be a torch tensor; got {type(v).__name__}")
        if not v.is_floating_point():  # complex too: every backend computed in real numbers, dropping the imaginary
            raise TypeError(f"{name} must be a real floating-point tensor; got {v.dtype}")
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must be (batch, dim, L) of one shape; "
                         f"got {tuple(u.shape)}, {tuple(delta.shape)}")
    batch, dim, L = u.shape
    if L == 0:
        raise ValueError(f"u must hold a sequence (batch, dim, L) with L >= 1; got {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim, N) = ({dim}, N); got {tuple(A.shape)}")
    N = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        ok = ((M.dim() == 2 and tuple(M.shape) == (dim, N)) or (M.dim() == 3 and tuple(M.shape) == (batch, N, L))
              or (M.dim() == 4 and M.shape[0] == batch and M.shape[2:] == (N, L) and M.shape[1] > 0
                  and dim % M.shape[1] == 0))
        if not ok:
            raise ValueError(f"{name} must be (dim, N), (batch, N, L) or (batch, G, N, L) with dim % G == 0 "
                             f"(dim={dim}, N={N}, L={L}); got {tuple(M.shape)}")
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and tuple(v.shape) != (dim,):
            raise ValueError(f"{name} must be ({dim},); got {tuple(v.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}; got {tuple(z.shape)}")


def _equal_groups(B, C):
    """B, C with (batch, N, L) as (batch, 1, N, L); when both vary with different group counts,
    both spread to lcm(G_B, G_C) groups (autograd sums the copies back). (dim, N) stays."""
    grouped = [M.unsqueeze(1) if M.dim() == 3 else M for M in (B, C)]
    gs = [M.shape[1] for M in grouped if M.dim() == 4]
    G = math.lcm(*gs) if gs else 1
    return [M.repeat_interleave(G // M.shape[1], dim=1) if M.dim() == 4 and M.shape[1] != G else M
            for M in grouped]


def _kernel_layout(B, C, work):
    """B, C for the fast cores: (batch, G, L, N) time-major, or (dim, N) when time-invariant."""
    # cast before spreading groups: autograd then sums the copies' gradients in ``work``
    return [(M.transpose(-1, -2) if M.dim() == 4 else M).contiguous() for M in _equal_groups(B.to(work), C.to(work))]


def _mamba_call(fn, u, delta, A, B, C, D, z, delta_bias, softplus, return_last_state):
    """mamba-ssm's ``selective_scan_fn`` on any input the op accepts. Its kernel checks that u, delta,
    z and a time-varying B/C share one dtype (y has it), that A, D, delta_bias and a time-invariant
    B/C are float32, and takes the group count from B alone: the time-varying tensors are promoted
    to a common dtype (y is returned in u's, as by the other backends), the rest cast to float32,
    and a time-invariant B beside a grouped C becomes a time-varying B with a group per channel."""
    per_channel_B = B.dim() == 2 and C.dim() == 4 and C.shape[1] > 1
    varying = [t for t in (u, delta, z, B, C) if t is not None and t.dim() >= 3]
    work = functools.reduce(torch.promote_types, [t.dtype for t in varying] + [torch.float32] * per_channel_B)
    if work not in (torch.float32, torch.float16, torch.bfloat16):
        raise RuntimeError(f"mamba-ssm's kernels take fp32/fp16/bf16 tensors, not {work}; backend='torch' "
                           "runs float64 on CUDA")
    to = lambda t: None if t is None else t.to(work if t.dim() >= 3 else torch.float32)  # noqa: E731
    B, C = _equal_groups(to(B), to(C))  # cast first: autograd sums a spread group's copies in ``work``
    if per_channel_B:
        batch, dim, L = u.shape
        B = B[None, :, :, None].expand(batch, dim, B.shape[1], L)  # (batch, G = dim, N, L), float32
        C = C.repeat_interleave(dim // C.shape[1], dim=1)
    out = fn(to(u), to(delta), A.float(), B, C, to(D), to(z), to(delta_bias), softplus, return_last_state)
    return (out[0].to(u.dtype), out[1]) if return_last_state else out.to(u.dtype)


# ------------------------------------------------------------------------------- cpu backend


# The kernel as custom ops (a Function calling the pybind module directly broke torch.compile's graph at
# every scan, and torch.export failed tracing into it): compile and export see one opaque op each, whose
# fake impl gives its shapes. Registering builds nothing: the kernel loads on the first call.
# CONSERVATIVE aliasing marks them as having side effects for TorchScript, whose trace (fvcore's count)
# then keeps a scan whose output the model discards (VM-UNet-V2's last stage), as it kept the Function.
def _kernel():
    """The loaded kernel, for the ops: an exported program calls them directly, past selective_scan's check."""
    ext = _load_extension()
    if ext is None:
        raise RuntimeError(f"the cpu selective-scan kernel is unavailable here ({_ext_error}): a model exported "
                           "with it runs where it builds; export with BENCH_SCAN_BACKEND=torch to run anywhere")
    return ext


def _cpu_fwd_impl(u, delta, A, B, C, D, z, delta_bias, softplus):
    """The compiled kernel; bias, softplus, D and the z gate are fused into it. Returns y, last_state."""
    y, last = _kernel().fwd(u, delta, A, B, C, D, z, delta_bias, softplus)
    return y, last


def _cpu_bwd_impl(u, delta, A, B, C, D, z, delta_bias, softplus, gy, glast):
    """Gradients of u, delta, A, B, C, D, z, delta_bias (an empty tensor for an absent input). ``gy``/``glast``
    None: no gradient reached y/last_state. Split for the threads the backward runs with, read here, when it runs."""
    gy = torch.zeros_like(u) if gy is None else gy.contiguous()
    glast = None if glast is None else glast.contiguous()
    grads = _kernel().bwd(u, delta, A, B, C, D, z, delta_bias, softplus, gy, glast, torch.get_num_threads())
    return [u.new_empty(0) if g is None else g for g in grads]


def _define_cpu_ops() -> torch.library.Library:
    lib = torch.library.Library("ssm_unet_bench", "FRAGMENT")
    lib.define("selective_scan_cpu_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
               "Tensor? delta_bias, bool softplus) -> (Tensor, Tensor)", alias_analysis="CONSERVATIVE")
    lib.define("selective_scan_cpu_bwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
               "Tensor? delta_bias, bool softplus, Tensor? gy, Tensor? glast) -> Tensor[]",
               alias_analysis="CONSERVATIVE")
    lib.impl("selective_scan_cpu_fwd", _cpu_fwd_impl, "CPU")
    lib.impl("selective_scan_cpu_bwd", _cpu_bwd_impl, "CPU")
    torch.library.register_fake("ssm_unet_bench::selective_scan_cpu_fwd", lib=lib)(
        lambda u, delta, A, B, C, D, z, delta_bias, softplus:
        (torch.empty_like(u), u.new_empty(u.shape[0], u.shape[1], A.shape[1])))
    torch.library.register_fake("ssm_unet_bench::selective_scan_cpu_bwd", lib=lib)(
        lambda u, delta, A, B, C, D, z, delta_bias, softplus, gy, glast:
        [u.new_empty(0) if t is None else torch.empty_like(t) for t in (u, delta, A, B, C, D, z, delta_bias)])
    return lib


# kept alive (registrations last as long as their Library); a second copy of this file (loaded by path under
# another name) finds the ops registered, which a second define refuses, and uses them
_LIB = None if hasattr(torch.ops.ssm_unet_bench, "selective_scan_cpu_fwd") else _define_cpu_ops()
_cpu_fwd, _cpu_bwd = torch.ops.ssm_unet_bench.selective_scan_cpu_fwd, torch.ops.ssm_unet_bench.selective_scan_cpu_bwd


class _CpuScan(torch.autograd.Function):
    """The ops' autograd, once differentiable: a Function, which torch.compile traces through, rather than
    the ops' register_autograd, which costs ~40 us more per training call."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus):
        y, last = _cpu_fwd(u, delta, A, B, C, D, z, delta_bias, softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.softplus = softplus
        ctx.set_materialize_grads(False)
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, glast):
        grads = _cpu_bwd(*ctx.saved_tensors, ctx.softplus, gy, glast)
        return (*[g if need else None for g, need in zip(grads, ctx.needs_input_grad)], None)


# ------------------------------------------------------------------------------- torch backend
# Layout (L, batch, dim, N), contiguous: each step of the loop is one in-place addcmul_ over a
# contiguous slab (memory read in order: the fastest layout on CPU), and the backward is the same loop
# reversed. States and decays are kept (2 · L·batch·dim·N floats); forward+backward peaks at
# ~1.2 GB at VM-UNet's stage 1. A fallback: the compiled kernel keeps no (L, dim, N) tensor.


def _per_step(M, G):
    """B or C in kernel layout -> broadcastable against the states (L, batch, G, Dg, N)."""
    if M.dim() == 2:  # (dim, N)
        return M.view(1, 1, G, M.shape[0] // G, M.shape[1])
    return M.permute(2, 0, 1, 3).unsqueeze(3)  # (L, batch, G, 1, N)


def _sum_to(grad, M):
    """grad (L, batch, G, Dg, N) back to M's kernel layout, summing the broadcast dimensions."""
    if M.dim() == 2:
        return grad.sum((0, 1)).reshape(M.shape)
    return grad.sum(3).permute(1, 2, 0, 3)


def _two_level_recurrence(x, a):
    """h_t = a_t·h_{t-1} + x_t along dim 0 (h_{-1} = 0), out of place, for an export, which writes each
    Python step into its program: ~3·√L steps instead of L. The sequence is cut into c chunks of
    T ≈ √L. A first loop runs the T steps of every chunk at once from a zero state, keeping only each
    chunk's end state; a second carries the states across the chunks (the state entering chunk k);
    a third runs the chunks' steps again from those states, keeping every state. The loop's own sums,
    the chunk boundaries aside (float32: ~1e-7 apart). Where decays above 1 (A > 0, or delta < 0 without
    softplus: states that blow up) overflow a chunk's product, NaN can come where the loop still had numbers."""
    L, rest = x.shape[0], x.shape[1:]
    T = math.isqrt(L - 1) + 1  # ceil(√L)
    c = (L + T - 1) // T  # not -(-L // T): TorchScript's ONNX export truncates a traced size's division
    if c * T > L:  # pad the end with steps that change nothing before them: decay 1, input 0
        x = torch.cat([x, x.new_zeros((c * T - L, *rest))])
        a = torch.cat([a, a.new_ones((c * T - L, *rest))])
    x, a = x.reshape(c, T, *rest).transpose(0, 1), a.reshape(c, T, *rest).transpose(0, 1)  # step t of every chunk: x[t]
    end, decay = x[0], a[0]  # each chunk's end state from zero, and its whole decay
    for t in range(1, T):
        end = torch.addcmul(x[t], a[t], end)
        decay = decay * a[t]  # not a.prod(0): onnxruntime's ReduceProd across chunks ran far slower
    entering = [torch.zeros_like(end[0])]
    for k in range(1, c):
        entering.append(torch.addcmul(end[k - 1], decay[k - 1], entering[-1]))
    h = [torch.addcmul(x[0], a[0], torch.stack(entering))]
    for t in range(1, T):
        h.append(torch.addcmul(x[t], a[t], h[-1]))
    return torch.stack(h, 1).reshape(c * T, *rest)[:L]


def _torch_scan(u, delta, A, B, C, out_of_place: bool = False):
    """The torch backend's forward: y (batch, dim, L), the last state, and the states and decays its
    backward reads. ``out_of_place`` for an export: in ~3·√L steps (an export writes every step into its
    program), none in place (the TorchScript-based ONNX exporter dropped the in-place steps of a slice:
    its file did not scan, no error, wrong numbers)."""
    batch, dim, L = u.shape
    N = A.shape[1]
    G = B.shape[1] if B.dim() == 4 else C.shape[1] if C.dim() == 4 else 1
    shape5 = (L, batch, G, dim // G, N)
    dl = delta.permute(2, 0, 1).reshape(L, batch, G, dim // G, 1)
    ul = u.permute(2, 0, 1).reshape(L, batch, G, dim // G, 1)
    dA = torch.exp(dl * A.view(1, 1, G, dim // G, N))  # (L, batch, G, Dg, N)
    xs = (dl * ul) * _per_step(B, G).expand(shape5)  # dt·u·B, turned into the states
    if out_of_place:
        xs = _two_level_recurrence(xs, dA)
    else:
        xs = xs.contiguous()
        for t in range(1, L):
            xs[t].addcmul_(dA[t], xs[t - 1])
    y = (xs * _per_step(C, G)).sum(-1)  # (L, batch, G, Dg)
    return y.reshape(L, batch, dim).permute(1, 2, 0).contiguous(), xs[-1].reshape(batch, dim, N).clone(), xs, dA


class _TorchScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        y, last, xs, dA = _torch_scan(u, delta, A, B, C)
        ctx.save_for_backward(u, delta, A, B, C, xs, dA)
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, glast):
        u, delta, A, B, C, xs, dA = ctx.saved_tensors
        L, batch, G, Dg, N = xs.shape
        dim = G * Dg
        gyl = (torch.zeros_like(u) if gy is None else gy).permute(2, 0, 1).reshape(L, batch, G, Dg, 1)
        gx = gyl * _per_step(C, G)  # C_t g_t, turned into dLoss/dx_t by the reverse scan
        gx = gx.expand(xs.shape).contiguous()
        if glast is not None:
            gx[-1] += glast.reshape(batch, G, Dg, N)
        for t in range(L - 2, -1, -1):
            gx[t].addcmul_(dA[t + 1], gx[t + 1])
        dl = delta.permute(2, 0, 1).reshape(L, batch, G, Dg, 1)
        ul = u.permute(2, 0, 1).reshape(L, batch, G, Dg, 1)
        dC = _sum_to(xs * gyl, C)
        # w_t = gx_t · x_{t-1} · exp(dt_t A): the gradient of the argument dt_t·A (x_{-1} = 0)
        w = dA * gx  # not in place: saved tensors must survive a retain_graph second backward
        w[1:].mul_(xs[:-1])
        w[0].zero_()
        gB = (gx * _per_step(B, G)).sum(-1, keepdim=True)  # <gx_t, B_t>
        ddelta = (w * A.view(1, 1, G, Dg, N)).sum(-1, keepdim=True) + gB * ul
        du = gB * dl
        dA_ = (w * dl).sum((0, 1)).reshape(dim, N)
        dB = _sum_to(gx.mul_(dl * ul), B)
        back = lambda t: t.reshape(L, batch, dim).permute(1, 2, 0)  # noqa: E731
        return back(du), back(ddelta), dA_, dB, dC


# ------------------------------------------------------------------------------- ref backend


def _ref_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """Sequential loop laid out like mamba-ssm's selective_scan_ref: the discretised terms are
    built once as (batch, dim, L, N) einsums, then one step per time index, reading a strided
    time slice. Benchmarks compare against exactly this, so keep its layout."""
    work = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A = u.to(work), delta.to(work), A.to(work)
    if delta_bias is not None:
        delta = delta + delta_bias.to(work)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    dim = u.shape[1]
    B, C = B.to(work), C.to(work)
    if B.dim() == 4:
        B = B.repeat_interleave(dim // B.shape[1], dim=1)  # (batch, dim, N, L)
    if C.dim() == 4:
        C = C.repeat_interleave(dim // C.shape[1], dim=1)
    decay = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    spec = {2: "bdl,dn,bdl->bdln", 3: "bdl,bnl,bdl->bdln", 4: "bdl,bdnl,bdl->bdln"}[B.dim()]
    drive = torch.einsum(spec, delta, B, u)
    x = u.new_zeros(u.shape[0], dim, A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        x = decay[:, :, t] * x + drive[:, :, t]
        if C.dim() == 2:
            ys.append(torch.einsum("bdn,dn->bd", x, C))
        elif C.dim() == 3:
            ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, t]))
        else:
            ys.append(torch.einsum("bdn,bdn->bd", x, C[:, :, :, t]))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u * D.to(work)[:, None]
    if z is not None:
        y = y * F.silu(z.to(work))
    return y, x


# ------------------------------------------------------------------------------- the op


# ------------------------------------------------------------------------------- cost marker
# No backend's scan is visible to torch's dispatcher as a scan (an op of ours without a formula, mamba-ssm's
# CUDA call, or many small ops), so FLOP counters (torch.utils.flop_counter, bench.cost) would count it as zero
# — the error thop-based papers make. While a dispatch mode is active (a counter runs), each call
# also emits this no-op custom op carrying the scan's shapes, for which bench.cost registers the
# formula. Outside counting it is never called: no cost in training.
def _define_cost_marker() -> None:
    @torch.library.custom_op("ssm_unet_bench::selective_scan_cost", mutates_args=())
    def _cost_marker(u: torch.Tensor, A: torch.Tensor, with_D: bool, with_z: bool) -> torch.Tensor:
        return u.new_empty(0)

    @_cost_marker.register_fake
    def _(u, A, with_D, with_z):
        return u.new_empty(0)


# as the kernel's ops: a second copy of this file uses the op registered (defined again, it replaced the op
# bench.cost's formula is registered for, and scans then counted zero)
if not hasattr(torch.ops.ssm_unet_bench, "selective_scan_cost"):
    _define_cost_marker()
SCAN_COST_OP = torch.ops.ssm_unet_bench.selective_scan_cost


def upcast(t: torch.Tensor) -> torch.Tensor:
    """The authors' ``.float()`` before a scan: half precision (fp16/bf16, e.g. under autocast) to
    float32; float32 as is, and float64 kept, so a float64 model scans in float64 (``.float()``
    rounded its scan to float32, and float32 kernels differ between CPUs in their last bits)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def selective_scan_flops(u_shape, A_shape, with_D: bool, with_z: bool) -> int:
    """Floating-point operations of one scan (FLOPs, not MACs): the Mamba authors' estimate of
    9·B·L·D·N for the recurrence and the readout (state-spaces/mamba#110; VMamba's
    ``flops_selective_scan_fn``), plus B·D·L for the D skip and B·D·L for the z gate's product."""
    batch, dim, L = u_shape
    N = A_shape[1]
    return 9 * batch * L * dim * N + (batch * dim * L if with_D else 0) + (batch * dim * L if with_z else 0)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend: str | None = None):
    """Selective scan with mamba-ssm's ``selective_scan_fn`` semantics (module docstring).

    ``backend``: "cuda", "cpu", "torch", "ref", or None for automatic (env ``BENCH_SCAN_BACKEND``
    overrides the automatic choice, never an explicit argument).
    """
    global _last
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)  # first: the automatic choice reads u's device and dtype
    name = _check_backend(backend) if backend else default_backend(u.device, u.dtype)
    exporting_onnx = _in_onnx_export()
    if name in ("cpu", "cuda") and exporting_onnx:  # ONNX has neither kernel: the file holds the scan's steps
        name = "torch"
    # a FLOP counter is listening (see _define_cost_marker); a compile's or export's trace has modes of its own
    if not torch.compiler.is_compiling() and torch._C._len_torch_dispatch_stack() > 0:
        SCAN_COST_OP(u.detach(), A.detach(), D is not None, z is not None)
    if name == "cuda":
        fn = _mamba_selective_scan_fn()
        if fn is None or not u.is_cuda:
            raise RuntimeError(f"the cuda backend needs CUDA tensors and an importable mamba-ssm "
                               f"(tensors on {u.device}; mamba-ssm: {_mamba_error or 'imports'})")
        _last = name
        return _mamba_call(fn, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if name == "cpu" and (u.device.type != "cpu" or not _kernel_loads()):
        raise RuntimeError(f"the cpu backend needs CPU tensors (got {u.device}) and its compiled kernel "
                           f"({_ext_error or 'loaded'}); backend='torch' runs anywhere")
    _last = name

    dtype_in = u.dtype
    work = torch.float64 if dtype_in == torch.float64 else torch.float32
    if name == "ref":
        y, last = _ref_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    elif name == "cpu":
        Bk, Ck = _kernel_layout(B, C, work)
        cast = lambda t: None if t is None else t.to(work).contiguous()  # noqa: E731
        # TorchScript's tracer (torch.jit.trace; fvcore's count) cannot record an autograd Function: it records
        # the op itself (the traced program scans, without a gradient through the scan; an ONNX export never
        # gets here: it scans with the torch backend)
        scan_op = _cpu_fwd if torch.jit.is_tracing() else _CpuScan.apply
        y, last = scan_op(cast(u), cast(delta), cast(A), Bk, Ck, cast(D), cast(z), cast(delta_bias),
                          bool(delta_softplus))
    else:  # torch: the core is (u, delta, A, B, C); the rest is ordinary autograd around it
        u_, delta_ = u.to(work), delta.to(work)
        if delta_bias is not None:
            delta_ = delta_ + delta_bias.to(work)[:, None]
        if delta_softplus:
            delta_ = F.softplus(delta_)
        Bk, Ck = _kernel_layout(B, C, work)
        args = (u_.contiguous(), delta_.contiguous(), A.to(work).contiguous(), Bk, Ck)
        # an export writes every Python step into its program: ~3·√L here, against the Function's L (in place,
        # which the TorchScript-based ONNX exporter drops)
        if exporting_onnx or torch.compiler.is_exporting():
            y, last = _torch_scan(*args, out_of_place=True)[:2]
        else:
            y, last = _TorchScan.apply(*args)
        if D is not None:
            y = y + u_ * D.to(work)[:, None]
        if z is not None:
            y = y * F.silu(z.to(work))
    y = y.to(dtype_in)
    return (y, last) if return_last_state else y
