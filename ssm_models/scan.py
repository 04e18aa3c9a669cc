"""The selective scan (Mamba's S6 recurrence), one op with interchangeable backends.

``selective_scan`` has mamba-ssm v1 ``selective_scan_fn`` semantics (state-spaces/mamba,
mamba_ssm/ops/selective_scan_interface.py), grouped B/C included::

    u, delta: (batch, dim, L)       A: (dim, N)       D, delta_bias: (dim,)       z: (batch, dim, L)
    B, C: (dim, N) time-invariant | (batch, N, L) | (batch, G, N, L) grouped, dim % G == 0
    delta = softplus(delta + delta_bias)                       (softplus only if delta_softplus)
    x_t   = exp(delta_t · A) ⊙ x_{t-1} + delta_t · B_t · u_t    (x_{-1} = 0, shape (batch, dim, N))
    y_t   = Σ_n C_t · x_t  + D · u_t,   then y *= silu(z)

Backends (``backend=`` or env ``BENCH_SCAN_BACKEND``; default: automatic):

- ``cuda``: mamba-ssm's fused kernels; chosen automatically for CUDA tensors when mamba-ssm imports.
- ``cpu``: a compiled C++ kernel (``csrc/selective_scan_cpu.cpp``, built on first use with
  torch.utils.cpp_extension and cached) with a reverse-scan backward; the CPU default.
- ``torch``: the same forward/backward in PyTorch ops (any device); used when the kernel cannot
  be built, and on CUDA tensors without mamba-ssm.
- ``ref``: a plain per-step loop written like mamba-ssm's ``selective_scan_ref`` (autograd through
  it is O(L²)); the oracle of the tests, exact in float64.

Bias, softplus, the D term and the z gate are ordinary autograd ops around one core function of
(u, delta, A, B, C), so every backend shares them. The core computes in float32 (float64 stays
float64); the output has ``u``'s dtype.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import torch
import torch.nn.functional as F

BACKENDS = ("cuda", "cpu", "torch", "ref")
_state = threading.local()
_ext = None
_ext_error: str | None = None
_ext_lock = threading.Lock()


# ------------------------------------------------------------------------------------ backends


def _load_extension():
    """Build (first time) and load the C++ kernel; remember why if that is impossible."""
    global _ext, _ext_error
    with _ext_lock:
        if _ext is not None or _ext_error is not None:
            return _ext
        try:
            from torch.utils import cpp_extension

            # a venv's ninja is on PATH only when the venv is activated
            os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
            build = Path(os.environ.get("BENCH_EXTENSIONS_DIR", Path.home() / ".cache" / "ssm-unet-bench" / "ext"))
            build.mkdir(parents=True, exist_ok=True)
            _ext = cpp_extension.load(
                name="ssm_unet_bench_selective_scan_cpu",
                sources=[str(Path(__file__).parent / "csrc" / "selective_scan_cpu.cpp")],
                # -ffast-math only at compile time (vectorised exp via libmvec); not linked, so it
                # cannot switch the whole process to flush-to-zero.
                extra_cflags=["-O3", "-ffast-math", "-fopenmp", "-march=native"],
                extra_ldflags=["-fopenmp"],
                build_directory=str(build),
                verbose=False,
            )
        except Exception as exc:  # no compiler, no ninja, build error, …
            _ext_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        return _ext


def _mamba_selective_scan_fn():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # not installed, or its CUDA extension does not load
        return None
    return selective_scan_fn


def available_backends() -> list[str]:
    out = []
    if torch.cuda.is_available() and _mamba_selective_scan_fn() is not None:
        out.append("cuda")
    if _load_extension() is not None:
        out.append("cpu")
    return out + ["torch", "ref"]


def default_backend(device: torch.device | str = "cpu") -> str:
    forced = os.environ.get("BENCH_SCAN_BACKEND")
    if forced:
        return _check_backend(forced)
    if torch.device(device).type == "cuda":
        return "cuda" if _mamba_selective_scan_fn() is not None else "torch"
    return "cpu" if _load_extension() is not None else "torch"


def _check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def last_backend() -> str | None:
    """The backend of the most recent ``selective_scan`` call in this thread (None before any)."""
    return getattr(_state, "last", None)


def backend_report() -> str:
    """One line: which backend would run on CPU and on CUDA, and why."""
    cpu = default_backend("cpu")
    why = (f"compiled C++ kernel ({_ext.__file__})" if cpu == "cpu" and _ext is not None
           else f"C++ kernel unavailable: {_ext_error}" if cpu == "torch" else "forced by BENCH_SCAN_BACKEND")
    if _mamba_selective_scan_fn() is not None:
        cuda = "cuda (mamba-ssm kernels import)" + ("" if torch.cuda.is_available() else ", but no CUDA device")
    else:
        cuda = "torch (mamba-ssm kernels do not import)"
    return f"CPU tensors: {cpu} ({why}); CUDA tensors: {cuda}"


# --------------------------------------------------------------------------------- canonical form


def _grouped(M: torch.Tensor, batch: int, dim: int, L: int, name: str) -> torch.Tensor:
    """B or C as (batch, G, L, N), contiguous: the layout both fast cores read."""
    if M.dim() == 2:  # time-invariant (dim, N): one group per channel, repeated over time
        return M.reshape(1, dim, 1, M.shape[1]).expand(batch, dim, L, M.shape[1]).contiguous()
    if M.dim() == 3:
        M = M.unsqueeze(1)
    if M.dim() != 4 or M.shape[0] != batch or M.shape[-1] != L or dim % M.shape[1]:
        raise ValueError(f"{name} must be (dim, N), (batch, N, L) or (batch, G, N, L) with dim % G == 0; got {tuple(M.shape)}")
    return M.transpose(-1, -2).contiguous()


# ------------------------------------------------------------------------------------- cores
# core(u, delta, A, Bg, Cg) -> (y, last_state); u, delta (batch, dim, L); Bg, Cg (batch, G, L, N)


class _CpuCore(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, Bg, Cg):
        ext = _load_extension()
        y, last = ext.fwd(u, delta, A, Bg, Cg)
        ctx.save_for_backward(u, delta, A, Bg, Cg)
        return y, last

    @staticmethod
    def backward(ctx, gy, glast):
        u, delta, A, Bg, Cg = ctx.saved_tensors
        gy = torch.zeros_like(u) if gy is None else gy.contiguous()
        du, ddelta, dA, dB, dC = _load_extension().bwd(u, delta, A, Bg, Cg, gy, glast, torch.get_num_threads())
        return du, ddelta, dA, dB, dC


def _expand_groups(M: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, G, L, N) -> (L, batch, dim, N): each channel sees its group's row."""
    batch, G, L, N = M.shape
    return M.permute(2, 0, 1, 3).unsqueeze(3).expand(L, batch, G, dim // G, N).reshape(L, batch, dim, N)


def _reduce_groups(M: torch.Tensor, G: int) -> torch.Tensor:
    """(L, batch, dim, N) -> (batch, G, L, N): sum over the channels of each group."""
    L, batch, dim, N = M.shape
    return M.reshape(L, batch, G, dim // G, N).sum(3).permute(1, 2, 0, 3)


class _TorchCore(torch.autograd.Function):
    """PyTorch-op version of the same core: in-place step loop over a contiguous (L, batch, dim, N)
    layout forward, reverse scan backward. Stores all states (L·batch·dim·N floats)."""

    @staticmethod
    def forward(ctx, u, delta, A, Bg, Cg):
        G = Bg.shape[1]
        dim = u.shape[1]
        dA = torch.exp(delta.permute(2, 0, 1).unsqueeze(-1) * A)  # (L, batch, dim, N)
        xs = (delta * u).permute(2, 0, 1).unsqueeze(-1) * _expand_groups(Bg, dim)  # δ·B·u, becomes the states
        for t in range(1, xs.shape[0]):
            xs[t].addcmul_(dA[t], xs[t - 1])
        y = (xs * _expand_groups(Cg, dim)).sum(-1).permute(1, 2, 0).contiguous()
        ctx.save_for_backward(u, delta, A, Bg, Cg, xs, dA)
        ctx.G = G
        return y, xs[-1].clone()

    @staticmethod
    def backward(ctx, gy, glast):
        u, delta, A, Bg, Cg, xs, dA = ctx.saved_tensors
        dim = u.shape[1]
        gy_l = (torch.zeros_like(u) if gy is None else gy).permute(2, 0, 1).unsqueeze(-1)  # (L, batch, dim, 1)
        gx = gy_l * _expand_groups(Cg, dim)  # becomes dL/dx_t after the reverse scan
        if glast is not None:
            gx[-1] += glast
        for t in range(gx.shape[0] - 2, -1, -1):
            gx[t].addcmul_(dA[t + 1], gx[t + 1])
        x_prev = torch.cat([torch.zeros_like(xs[:1]), xs[:-1]])
        darg = gx * x_prev * dA  # d/d(delta_t A)
        Bx = _expand_groups(Bg, dim)
        delta_l, u_l = delta.permute(2, 0, 1).unsqueeze(-1), u.permute(2, 0, 1).unsqueeze(-1)
        gxB = (gx * Bx).sum(-1, keepdim=True)
        ddelta = (darg * A).sum(-1, keepdim=True) + gxB * u_l
        du = gxB * delta_l
        dA_param = (darg * delta_l).sum((0, 1))
        dB = _reduce_groups(gx * (delta_l * u_l), ctx.G)
        dC = _reduce_groups(xs * gy_l, ctx.G)
        back = lambda t: t.squeeze(-1).permute(1, 2, 0)  # noqa: E731
        return back(du), back(ddelta), dA_param, dB, dC


def _ref_core(u, delta, A, Bg, Cg):
    """Per-step loop with einsums, laid out as mamba-ssm's selective_scan_ref: B/C repeated per
    channel as (batch, dim, N, L) and read one strided time slice per step. It is the speed
    baseline of benchmarks/scan_bench.py, so keep its layout."""
    dim = u.shape[1]
    G = Bg.shape[1]
    B = Bg.transpose(-1, -2).repeat_interleave(dim // G, dim=1)  # (batch, dim, N, L)
    C = Cg.transpose(-1, -2).repeat_interleave(dim // G, dim=1)
    dA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    dBu = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    x = u.new_zeros(u.shape[0], dim, A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        x = dA[:, :, t] * x + dBu[:, :, t]
        ys.append(torch.einsum("bdn,bdn->bd", x, C[:, :, :, t]))
    return torch.stack(ys, dim=2), x


# ------------------------------------------------------------------------------------ the op


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend: str | None = None):
    """Selective scan with mamba-ssm semantics; see the module docstring for shapes."""
    name = _check_backend(backend) if backend else default_backend(u.device)
    _state.last = name
    if name == "cuda":
        fn = _mamba_selective_scan_fn()
        if fn is None or not u.is_cuda:
            raise RuntimeError("the cuda backend needs CUDA tensors and an importable mamba-ssm")
        return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if name == "cpu" and (u.is_cuda or _load_extension() is None):
        raise RuntimeError(f"the cpu backend needs CPU tensors and its compiled kernel ({_ext_error or 'ok'})")

    dtype_in = u.dtype
    work = torch.float64 if dtype_in == torch.float64 else torch.float32
    batch, dim, L = u.shape
    u_, delta_, A_ = u.to(work), delta.to(work), A.to(work)
    if delta_bias is not None:
        delta_ = delta_ + delta_bias.to(work)[:, None]
    if delta_softplus:
        delta_ = F.softplus(delta_)
    Bg, Cg = _grouped(B.to(work), batch, dim, L, "B"), _grouped(C.to(work), batch, dim, L, "C")
    core = {"cpu": _CpuCore.apply, "torch": _TorchCore.apply, "ref": _ref_core}[name]
    y, last = core(u_.contiguous(), delta_.contiguous(), A_.contiguous(), Bg, Cg)
    if D is not None:
        y = y + u_ * D.to(work)[:, None]
    if z is not None:
        y = y * F.silu(z.to(work))
    y = y.to(dtype_in)
    return (y, last) if return_last_state else y
