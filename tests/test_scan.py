"""Selective scan: every backend against an independent float64 scan, gradchecks, gradients
against autograd through the reference loop, backend selection, and the fallback when the
compiled kernel is unavailable."""

from __future__ import annotations

import itertools
import math
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import pytest
import torch
import torch.nn.functional as F

from ssm_models import scan
from tests.fixtures import require_mamba_kernels

BACKENDS = ["cpu", "torch", "ref"]
FAST = ["cpu", "torch"]
KINDS = ["const", "batch", "grouped"]  # B/C as (dim, N), (batch, N, L), (batch, G, N, L)
FLAGS = list(itertools.product([False, True], repeat=4))  # D, z, delta_bias, softplus


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny problems; more threads only add noise on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", autouse=True)
def kernel():
    """The cpu backend is the CPU default, so a kernel that does not build is a failure here,
    not a skip (the fallback is tested on its own, below)."""
    ext = scan._load_extension()
    assert ext is not None, f"C++ kernel did not build: {scan._ext_error_detail}"
    return ext


# ------------------------------------------------------------------------------ the oracle


def sequential_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The recurrence written from its definition, element by element, in float64 numpy."""
    u, delta, A = (t.detach().double().numpy() for t in (u, delta, A))
    B, C = B.detach().double().numpy(), C.detach().double().numpy()
    batch, dim, L = u.shape
    N = A.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias.detach().double().numpy()[:, None]
    if delta_softplus:
        delta = np.where(delta > 20, delta, np.log1p(np.exp(np.minimum(delta, 20))))

    def coef(M, b, d, n, t):
        if M.ndim == 2:
            return M[d, n]
        if M.ndim == 3:
            return M[b, n, t]
        return M[b, d // (dim // M.shape[1]), n, t]

    y = np.zeros((batch, dim, L))
    last = np.zeros((batch, dim, N))
    for b, d in itertools.product(range(batch), range(dim)):
        x = np.zeros(N)
        for t in range(L):
            for n in range(N):
                x[n] = math.exp(delta[b, d, t] * A[d, n]) * x[n] + delta[b, d, t] * coef(B, b, d, n, t) * u[b, d, t]
                y[b, d, t] += coef(C, b, d, n, t) * x[n]
        last[b, d] = x
    if D is not None:
        y = y + u * D.detach().double().numpy()[:, None]
    if z is not None:
        zz = z.detach().double().numpy()
        y = y * zz / (1 + np.exp(-zz))
    return torch.from_numpy(y), torch.from_numpy(last)


def make(batch=2, dim=4, L=7, N=3, B="grouped", C="grouped", G=2, dtype=torch.float64, seed=0, grad=False):
    """Inputs in a stable regime: A < 0, and delta > 0 so that the scan decays even without
    softplus (with a negative step size exp(delta·A) > 1 and the states blow up)."""
    g = torch.Generator().manual_seed(seed)
    shape = {"const": (dim, N), "batch": (batch, N, L), "grouped": (batch, G, N, L)}
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    x = dict(u=r(batch, dim, L), delta=torch.rand(batch, dim, L, generator=g, dtype=dtype) + 0.05,
             A=-torch.rand(dim, N, generator=g, dtype=dtype) - 0.1, B=r(*shape[B]), C=r(*shape[C]), D=r(dim),
             z=r(batch, dim, L), delta_bias=0.1 * torch.rand(dim, generator=g, dtype=dtype))
    return {k: v.requires_grad_(grad) for k, v in x.items()}


def extras(x, flags):
    use_D, use_z, use_bias, softplus = flags
    return dict(D=x["D"] if use_D else None, z=x["z"] if use_z else None,
                delta_bias=x["delta_bias"] if use_bias else None, delta_softplus=softplus)


def core(x):
    return x["u"], x["delta"], x["A"], x["B"], x["C"]


def op_args(x, with_D_z: bool = True) -> tuple:
    """``make``'s inputs as the kernel's ops take them: B/C in kernel layout, softplus on."""
    Bk, Ck = scan._kernel_layout(x["B"], x["C"], x["u"].dtype)
    D, z = (x["D"], x["z"]) if with_D_z else (None, None)
    return x["u"], x["delta"], x["A"], Bk, Ck, D, z, x["delta_bias"], True


# ------------------------------------------------------------------------------ forward


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "".join("Dzbs"[i] if v else "-" for i, v in enumerate(f)))
@pytest.mark.parametrize("bc", list(itertools.product(KINDS, KINDS)), ids="-".join)
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_matches_sequential_float64(backend, bc, flags):
    x = make(B=bc[0], C=bc[1])
    kw = extras(x, flags)
    want_y, want_last = sequential_scan(*core(x), **kw)
    y, last = scan.selective_scan(*core(x), **kw, return_last_state=True, backend=backend)
    assert scan.last_backend() == backend
    torch.testing.assert_close(y, want_y, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(last, want_last, rtol=1e-10, atol=1e-12)
    y_only = scan.selective_scan(*core(x), **kw, backend=backend)  # return_last_state=False: a tensor
    assert isinstance(y_only, torch.Tensor)
    torch.testing.assert_close(y_only, y, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_softplus_keeps_its_log1p_term_up_to_20_float64(backend):
    """Guards against a softplus threshold below torch's 20 (at 15, softplus(15.2) = 15.2: a step size
    off by exp(-15.2) ~ 2.5e-7, 1.6e-8 relative)."""
    x = make(B="grouped", C="grouped")
    x["delta_bias"] = torch.linspace(15.2, 19.7, 4, dtype=torch.float64)  # one per channel; + delta: 15.25..20.75
    kw = extras(x, (True, True, True, True))
    want_y, want_last = sequential_scan(*core(x), **kw)
    y, last = scan.selective_scan(*core(x), **kw, return_last_state=True, backend=backend)
    torch.testing.assert_close(y, want_y, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(last, want_last, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("L", [1, 2, 3, 4, 5, 8, 9, 10, 24, 25, 26, 97])
def test_the_exports_two_level_recurrence_is_the_step_by_step_loop(L):
    """What an export writes instead of L steps: chunks of ceil(sqrt(L)), the last one padded; every
    state as the loop's, for L around squares and a prime."""
    g = torch.Generator().manual_seed(L)
    x = torch.randn(L, 2, 3, generator=g, dtype=torch.float64)
    a = torch.rand(L, 2, 3, generator=g, dtype=torch.float64)
    h = [x[0]]
    for t in range(1, L):
        h.append(a[t] * h[-1] + x[t])
    torch.testing.assert_close(scan._two_level_recurrence(x, a), torch.stack(h), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("L, T, c", [(4, 2, 2), (25, 5, 5), (1000, 32, 32), (1024, 32, 32), (1025, 33, 32)])
def test_the_exports_recurrence_takes_about_three_sqrt_L_steps(L, T, c, monkeypatch):
    """T = ceil(sqrt(L)) steps in c = ceil(L / T) chunks: T - 1 steps to the chunks' ends, c - 1 across them,
    T through them again. A square L (every square image's) takes no padded chunk."""
    steps, addcmul = [], torch.addcmul
    monkeypatch.setattr(torch, "addcmul", lambda *a, **k: steps.append(1) or addcmul(*a, **k))
    scan._two_level_recurrence(torch.randn(L, 2, dtype=torch.float64), torch.rand(L, 2, dtype=torch.float64))
    assert len(steps) == (T - 1) + (c - 1) + T


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend", BACKENDS)
def test_state_size_16(backend, dtype):
    """d_state 16 takes the kernel's compile-time-N path; the others a run-time N."""
    x = make(batch=1, dim=8, L=33, N=16, G=4, dtype=dtype)
    kw = extras(x, (True, True, True, True))
    want_y, want_last = sequential_scan(*core(x), **kw)
    y, last = scan.selective_scan(*core(x), **kw, return_last_state=True, backend=backend)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), want_y, **tol)
    torch.testing.assert_close(last.double(), want_last, **tol)


@pytest.mark.parametrize("dtype, lo, hi", [(torch.float32, -87.0, 88.37), (torch.float64, -708.0, 709.0)])
def test_kernel_exp_over_its_whole_range(dtype, lo, hi):
    """The kernel writes its own exp (vectorisable, unlike libm's). With u = (2^10, 0),
    delta = (2^-10, 1) and B = C = 1 the first state is 1 and the last exactly exp(A), so A sweeps
    the argument: within 3 ulp of the float64 exp inside [lo, hi], 0 below (never a denormal),
    inf above, NaN kept."""
    grid = [torch.linspace(-1000, 1000, 20001), torch.linspace(lo - 1, hi + 1, 20001), torch.linspace(-1, 1, 20001)]
    args = torch.cat([*grid, torch.tensor([0.0, lo, hi, math.nan])]).to(dtype)
    A = F.pad(args, (0, -args.numel() % 16)).reshape(-1, 16)
    dim = A.shape[0]
    u = torch.zeros(1, dim, 2, dtype=dtype)
    u[..., 0] = 2.0**10
    delta = torch.ones_like(u)
    delta[..., 0] = 2.0**-10
    ones = torch.ones(dim, 16, dtype=dtype)
    _, last = scan.selective_scan(u, delta, A, ones, ones, return_last_state=True, backend="cpu")
    got, a = last.reshape(-1).double(), A.reshape(-1).double()
    lo, hi = (torch.tensor(v, dtype=dtype).item() for v in (lo, hi))  # the kernel's bounds are in dtype
    inside = (a >= lo) & (a <= hi)
    want = torch.exp(a[inside])
    eps = torch.finfo(dtype).eps
    assert ((got[inside] - want).abs() <= 3 * eps * want).all()
    assert (got[a < lo] == 0).all() and (got[a > hi] == math.inf).all()
    assert torch.isnan(got[torch.isnan(a)]).all()
    assert (got[(got != 0) & ~torch.isnan(got)] >= torch.finfo(dtype).tiny).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision_in_same_dtype_out(backend):
    x = {k: v.bfloat16() for k, v in make(dtype=torch.float32).items()}
    y, last = scan.selective_scan(*core(x), D=x["D"], delta_softplus=True, return_last_state=True, backend=backend)
    assert y.dtype == torch.bfloat16 and last.dtype == torch.float32  # state in the compute dtype, as mamba-ssm
    want, _ = sequential_scan(*core(x), D=x["D"], delta_softplus=True)
    torch.testing.assert_close(y.double(), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("backend", FAST)
def test_unequal_group_counts_and_strided_inputs(backend):
    """B with 2 groups and C with 4, both non-contiguous views (as SS2D's split produces)."""
    x = make(dim=8, B="grouped", C="grouped", G=2)
    C = torch.randn(2, 3, 7, 4, dtype=torch.float64).permute(0, 3, 1, 2)  # (batch, G=4, N, L), strided
    u = torch.randn(2, 7, 8, dtype=torch.float64).transpose(1, 2)
    want, _ = sequential_scan(u, x["delta"], x["A"], x["B"], C, delta_softplus=True)
    y = scan.selective_scan(u, x["delta"], x["A"], x["B"], C, delta_softplus=True, backend=backend)
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-12)


def test_bad_shapes_are_rejected_with_the_expected_shape():
    x = make(dim=4)
    with pytest.raises(ValueError, match=r"dim % G == 0"):
        scan.selective_scan(x["u"], x["delta"], x["A"], torch.randn(2, 3, 3, 7), x["C"])
    with pytest.raises(ValueError, match=r"D must be \(4,\)"):
        scan.selective_scan(*core(x), D=torch.ones(5))
    with pytest.raises(ValueError, match="u and delta"):
        scan.selective_scan(x["u"], x["delta"][..., :-1], x["A"], x["B"], x["C"])
    for A in (x["A"][:1], torch.cat([x["A"], x["A"]])):  # A's rows are dim's: one too few or too many
        with pytest.raises(ValueError, match=r"A must be \(dim, N\) = \(4, N\)"):
            scan.selective_scan(x["u"], x["delta"], A, x["B"], x["C"])


def test_complex_inputs_are_refused_by_name():
    """No backend computes in complex numbers: a complex u, B or C was scanned as its real part (the imaginary
    one dropped, with only torch's cast warning); now refused as a complex A was."""
    x = make(dim=4)
    for name in ("u", "A", "B", "C"):
        given = {**x, name: torch.complex(x[name], torch.ones_like(x[name]))}
        with pytest.raises(TypeError, match=f"^{name} must be a real floating-point tensor; got torch.complex128$"):
            scan.selective_scan(*core(given))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch, dim", [(0, 4), (2, 0)])
def test_an_empty_scan_has_empty_gradients(backend, batch, dim):
    """A batch or a dim of 0: empty outputs and gradients of the inputs' shapes (the cpu kernel's backward
    divided its work by batch·groups: the process died of SIGFPE). The cpu backend runs its kernel here too."""
    x = make(batch=batch, dim=dim, B="grouped", C="grouped", G=1, grad=True)
    y, last = scan.selective_scan(*core(x), D=x["D"], z=x["z"], delta_bias=x["delta_bias"], delta_softplus=True,
                                  return_last_state=True, backend=backend)
    assert y.shape == (batch, dim, 7) and last.shape == (batch, dim, 3)
    assert scan.last_backend() == backend
    (y.sum() + last.sum()).backward()
    for name in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"):
        assert x[name].grad is not None and x[name].grad.shape == x[name].shape, name
        assert not x[name].grad.any(), name  # nothing flowed: every gradient is zero (A's, D's: no terms)


@pytest.mark.parametrize("batch, dim", [(0, 4), (2, 0)])
def test_the_kernels_ops_take_an_empty_scan(batch, dim):
    """An exported program calls the ops directly, past selective_scan: an empty batch or dim gives empty
    results, not a process killed by a division by zero (chunks of batch·groups work)."""
    args = op_args(make(batch=batch, dim=dim, B="grouped", C="grouped", G=1, dtype=torch.float32))
    y, last = torch.ops.ssm_unet_bench.selective_scan_cpu_fwd(*args)
    assert y.shape == (batch, dim, 7) and last.shape == (batch, dim, 3)
    grads = torch.ops.ssm_unet_bench.selective_scan_cpu_bwd(*args, torch.ones_like(y), torch.ones_like(last))
    assert [tuple(g.shape) for g in grads] == [tuple(t.shape) for t in args[:8]]


@pytest.mark.parametrize("present", [False, True], ids=["no-D-no-z", "D-and-z"])
def test_the_kernels_ops_pass_opcheck(present):
    """The ops' schemas, fake impls and eager impls agree (what compile and export trace with): the shape of
    last_state, and the empty tensor given for an absent input's gradient, in the fake impl as in the kernel."""
    x = make(batch=2, dim=4, L=5, N=3, B="grouped", C="grouped", G=1, dtype=torch.float32)
    args = op_args(x, with_D_z=present)
    checks = ("test_schema", "test_faketensor", "test_aot_dispatch_static")
    torch.library.opcheck(torch.ops.ssm_unet_bench.selective_scan_cpu_fwd, args, test_utils=checks)
    torch.library.opcheck(torch.ops.ssm_unet_bench.selective_scan_cpu_bwd,
                          args + (torch.randn_like(x["u"]), torch.randn(2, 4, 3)), test_utils=checks)


def test_zero_groups_are_refused_by_name():
    """B/C of shape (batch, 0, N, L): refused with the shapes expected, not ZeroDivisionError (dim % G);
    the kernel's ops check it too."""
    x = make(dim=4, B="grouped", C="grouped", G=1)
    for name in ("B", "C"):
        given = {**x, name: x[name][:, :0]}
        with pytest.raises(ValueError, match=rf"^{name} must be \(dim, N\), \(batch, N, L\) or \(batch, G, N, L\) "
                                             r"with dim % G == 0 .* got \(2, 0, 3, 7\)$"):
            scan.selective_scan(*core(given))
    with pytest.raises(RuntimeError, match="B/C must have at least one group"):
        torch.ops.ssm_unet_bench.selective_scan_cpu_fwd(*op_args({**x, "B": x["B"][:, :0], "C": x["C"][:, :0]}))


# ------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("bc", list(itertools.product(KINDS, KINDS)), ids="-".join)
@pytest.mark.parametrize("backend", FAST)
def test_gradcheck_every_input(backend, bc):
    x = make(batch=2, dim=4, L=5, N=2, B=bc[0], C=bc[1], grad=True)
    names = list(x)

    def fn(*args):
        k = dict(zip(names, args))
        return scan.selective_scan(*core(k), D=k["D"], z=k["z"], delta_bias=k["delta_bias"], delta_softplus=True,
                                   return_last_state=True, backend=backend)

    assert torch.autograd.gradcheck(fn, tuple(x.values()), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backend", FAST)
def test_gradcheck_without_softplus_and_state_size_16(backend):
    x = make(batch=1, dim=4, L=4, N=16, G=2, grad=True)

    def fn(u, delta, A, B, C, D, delta_bias):
        return scan.selective_scan(u, delta, A, B, C, D, delta_bias=delta_bias, return_last_state=True,
                                   backend=backend)

    args = tuple(x[k] for k in ("u", "delta", "A", "B", "C", "D", "delta_bias"))
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backend", FAST)
def test_float32_gradients_equal_autograd_through_ref(backend):
    x = make(batch=2, dim=8, L=40, N=16, G=4, dtype=torch.float32, grad=True)
    x["delta"] = torch.randn(2, 8, 40).requires_grad_(True)  # softplus on: any sign
    weight = torch.linspace(-1, 1, 2 * 8 * 40).view(2, 8, 40)
    grads = {}
    for be in (backend, "ref"):
        for v in x.values():
            v.grad = None
        y, last = scan.selective_scan(*core(x), D=x["D"], z=x["z"], delta_bias=x["delta_bias"], delta_softplus=True,
                                      return_last_state=True, backend=be)
        ((y * weight).sum() + last.square().sum()).backward()
        grads[be] = {k: v.grad.clone() for k, v in x.items()}
    for k in x:
        torch.testing.assert_close(grads[backend][k], grads["ref"][k], rtol=1e-4, atol=1e-4, msg=k)


@pytest.mark.parametrize("backend", FAST)
def test_only_requested_gradients_and_repeatable_backward(backend):
    """Inputs without requires_grad get none; backward twice (retain_graph) gives the same."""
    x = make()
    x["u"].requires_grad_(True)
    x["B"].requires_grad_(True)
    y = scan.selective_scan(*core(x), D=x["D"], delta_softplus=True, backend=backend)
    y.sum().backward(retain_graph=True)
    first = x["u"].grad.clone(), x["B"].grad.clone()
    assert x["delta"].grad is None and x["A"].grad is None and x["D"].grad is None
    y.sum().backward()
    torch.testing.assert_close(x["u"].grad, 2 * first[0])
    torch.testing.assert_close(x["B"].grad, 2 * first[1])


def test_a_gradient_of_the_last_state_read_through_a_transpose():
    """The loss reads last_state through a transpose: its gradient reaches the kernel non-contiguous, which
    the kernel reads as if it were contiguous unless made so; the cpu gradients equal the reference's."""
    grads = {}
    for backend in ("cpu", "ref"):
        x = make(G=1, grad=True)
        y, last = scan.selective_scan(*core(x), D=x["D"], z=x["z"], return_last_state=True, backend=backend)
        w = torch.arange(last.numel(), dtype=last.dtype).reshape(last.shape[1], last.shape[0], last.shape[2])
        ((last.transpose(0, 1) * w).sum() + (y * y).sum()).backward()
        grads[backend] = [x[k].grad for k in ("u", "delta", "A", "B", "C")]
    for name, got, want in zip(("u", "delta", "A", "B", "C"), grads["cpu"], grads["ref"]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


def test_cpu_backward_independent_of_work_split(kernel):
    """The kernel splits each group's channels into chunks when threads are many; the partial
    dB/dC sums must add up to the same gradients."""
    args = op_args(make(batch=1, dim=8, L=9, N=3, G=2))
    y, _ = kernel.fwd(*args)
    gy = torch.randn_like(y)
    one = kernel.bwd(*args, gy, None, 1)
    split = kernel.bwd(*args, gy, None, 3)  # 3 chunks of the 4 channels per group
    for a, b in zip(one, split):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------ selection


def test_backend_argument_and_environment(monkeypatch):
    x = make()
    monkeypatch.delenv(scan.ENV_VAR, raising=False)
    scan.selective_scan(*core(x))
    assert scan.last_backend() == "cpu" == scan.default_backend("cpu")
    monkeypatch.setenv(scan.ENV_VAR, "ref")
    assert scan.default_backend("cpu") == "ref"
    scan.selective_scan(*core(x))
    assert scan.last_backend() == "ref"
    assert "forced by BENCH_SCAN_BACKEND" in scan.backend_report()
    scan.selective_scan(*core(x), backend="torch")  # an explicit argument beats the variable
    assert scan.last_backend() == "torch"


def test_unknown_backend_is_an_error_naming_the_choices(monkeypatch):
    x = make()
    with pytest.raises(ValueError, match="^'fast' is not a selective-scan backend; choose one of cuda, cpu, torch, ref$"):
        scan.selective_scan(*core(x), backend="fast")
    monkeypatch.setenv(scan.ENV_VAR, "torh")
    said = "BENCH_SCAN_BACKEND='torh' is not a selective-scan backend (did you mean 'torch'?); choose one of"
    with pytest.raises(ValueError, match=re.escape(said)):
        scan.selective_scan(*core(x))
    assert scan.backend_report().startswith(said)  # doctor's line, in the same words


def test_available_backends_and_report():
    assert scan.available_backends("cpu") == ["cpu", "torch", "ref"]
    report = scan.backend_report()
    assert report.startswith("CPU: cpu (compiled C++ kernel") and "CUDA:" in report


def test_cuda_backend_refuses_cpu_tensors():
    x = make()
    with pytest.raises(RuntimeError, match="cuda backend needs CUDA tensors"):
        scan.selective_scan(*core(x), backend="cuda")


def test_the_kernel_cache_folder(monkeypatch, tmp_path):
    """An odd-environment journey: BENCH_EXTENSIONS_DIR set empty built the kernel in the working
    directory; under a read-only home the fallback in the shared temp folder took a folder of that
    name whoever had made it (another user could hand this process their binary), and the data
    digests, without a fallback, were computed again by every command."""
    import tempfile

    from bench import fileio

    monkeypatch.setenv("BENCH_EXTENSIONS_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert scan._build_dir().parent == tmp_path / "cache" / "ssm-unet-bench" / "torch_extensions"
    (tmp_path / "home").write_text("", encoding="utf-8")  # a cache folder that cannot be made
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    own = tmp_path / "tmp" / f"ssm-unet-bench-{os.getuid()}"
    assert scan._build_dir().parent == own / "torch_extensions" and own.stat().st_mode & 0o777 == 0o700
    assert fileio._digest_file("/data/x.nii.gz", 1, 2).parent == own / "digests"
    own.chmod(0o777)  # as an older bench made it under a loose umask: anyone may have put a kernel there
    with pytest.raises(OSError, match=rf"{own} can be written by group and others \(mode 777\); "
                                      r".*torch_extensions cannot be made, so this would be the cache: set XDG_CACHE_HOME"):
        scan._build_dir()
    own.chmod(0o700)
    shutil.move(own, tmp_path / "elsewhere")
    own.symlink_to(tmp_path / "elsewhere")  # chmod and the owner's check followed it to its target
    with pytest.raises(OSError, match=rf"{own} is a symbolic link; "):
        scan._build_dir()
    own.unlink()
    uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: uid + 1)  # the folder of that name is now another user's
    (tmp_path / "tmp" / f"ssm-unet-bench-{uid + 1}").mkdir()
    with pytest.raises(OSError, match=r"belongs to another user; .* set XDG_CACHE_HOME \(the scan kernel: "
                                      r"BENCH_EXTENSIONS_DIR\) to a folder of your own"):
        scan._build_dir()
    assert fileio._digest_file("/data/x.nii.gz", 1, 2) is None  # hashed every time, as before


def test_a_kernel_folder_others_can_write_in_is_not_loaded_from(monkeypatch, tmp_path):
    # BENCH_EXTENSIONS_DIR was trusted as it was: a kernel planted there would be loaded into this process
    folder = tmp_path / "ext"
    folder.mkdir(mode=0o775)
    folder.chmod(0o775)
    monkeypatch.setenv("BENCH_EXTENSIONS_DIR", str(folder))
    monkeypatch.setattr(scan, "_ext", None)
    monkeypatch.setattr(scan, "_ext_error", None)
    said = rf"{folder} can be written by group \(mode 775\); BENCH_EXTENSIONS_DIR must name a folder of your own"
    with pytest.warns(UserWarning, match=rf"C\+\+ kernel is unavailable \(OSError: {said}.*torch backend"):
        assert scan._load_extension() is None
    assert not list(folder.iterdir())  # nothing built there, nothing loaded from it
    uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: uid + 1)
    folder.chmod(0o700)
    with pytest.raises(OSError, match=rf"{folder} belongs to another user; BENCH_EXTENSIONS_DIR must name"):
        scan._build_dir()


def test_a_native_build_killed_for_another_reason_is_tried_again_later(monkeypatch, tmp_path):
    """The refused-flags marker keeps later processes single-threaded for good: only the compiler's word
    on a flag writes it, not a build killed for memory or a full disk's. BENCH_SCAN_BACKEND in any case."""
    monkeypatch.setenv("BENCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(scan, "_ext", None)
    monkeypatch.setattr(scan, "_ext_error", None)

    def build(cflags):
        if cflags is scan._CFLAGS:
            raise RuntimeError("Error building extension 'x'\ncc1plus: fatal error: Killed signal terminated program")
        return object(), "built in 1 s"

    monkeypatch.setattr(scan, "_build", build)
    assert scan._load_extension() is not None
    assert not list(tmp_path.glob(f"*/{scan._REFUSED}")) and "delete it to try again" not in scan._ext_origin
    assert scan._ext_origin.endswith("(build failed: cc1plus: fatal error: Killed signal terminated program): "
                                     "single-threaded")
    monkeypatch.setenv(scan.ENV_VAR, " TORCH ")
    assert scan.default_backend("cpu") == "torch" and scan.forced_backend_problem() is None


def test_fallback_when_the_kernel_cannot_be_built(monkeypatch):
    """Simulate a machine without a compiler: the real loader path runs and fails."""
    from torch.utils import cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension 'x'\nc++: fatal error: no such compiler (simulated)")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    monkeypatch.setattr(scan, "_ext", None)
    monkeypatch.setattr(scan, "_ext_error", None)
    monkeypatch.delenv(scan.ENV_VAR, raising=False)
    with pytest.warns(UserWarning, match=r"C\+\+ kernel is unavailable \(build failed: c\+\+: fatal error: no such "
                                         r"compiler \(simulated\)\); CPU scans run the torch backend"):
        assert scan.default_backend("cpu") == "torch"  # said once: the next asks find the reason kept
    assert scan.available_backends("cpu") == ["torch", "ref"]
    report = scan.backend_report()
    assert report.startswith("CPU: torch (C++ kernel unavailable:") and "no such compiler (simulated)" in report
    x = make(grad=True)
    kw = extras(x, (True, True, True, True))
    y = scan.selective_scan(*core(x), **kw)
    assert scan.last_backend() == "torch"
    torch.testing.assert_close(y, sequential_scan(*core(x), **kw)[0], rtol=1e-10, atol=1e-12)
    y.sum().backward()
    assert all(v.grad is not None for v in x.values())
    with pytest.raises(RuntimeError, match=r"no such compiler.*backend='torch' runs anywhere"):
        scan.selective_scan(*core(x), backend="cpu")  # refused by selective_scan, before the op is called


def test_import_is_cheap():
    """No mamba-ssm import and no kernel build when the module is imported."""
    code = ("import sys; import ssm_models.scan as s; "
            "assert 'mamba_ssm' not in sys.modules; assert s._ext is None and s._ext_error is None")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


@pytest.mark.cuda
def test_cuda_backend_matches_cpu():
    require_mamba_kernels()
    x = make(batch=2, dim=8, L=64, N=16, G=4, dtype=torch.float32, grad=True)
    kw = extras(x, (True, True, True, True))
    cpu = scan.selective_scan(*core(x), **kw, backend="cpu")
    cpu.sum().backward()
    want = {k: v.grad.clone() for k, v in x.items()}
    xc = {k: v.detach().cuda().requires_grad_(True) for k, v in x.items()}
    cuda = scan.selective_scan(*core(xc), **extras(xc, (True, True, True, True)))
    assert scan.last_backend() == "cuda"
    cuda.sum().backward()
    torch.testing.assert_close(cuda.cpu(), cpu.detach(), rtol=1e-4, atol=1e-4)
    for k in x:
        torch.testing.assert_close(xc[k].grad.cpu(), want[k], rtol=1e-3, atol=1e-3, msg=k)


@pytest.mark.cuda
def test_cuda_backend_takes_every_layout_the_op_accepts():
    """mamba-ssm reads one group count for B and C and float32 A/D/delta_bias; float64, which it
    has no kernels for, runs the torch backend automatically and is refused by name."""
    require_mamba_kernels()
    for B, C, G in (("batch", "grouped", 4), ("grouped", "grouped", 2), ("const", "batch", 1), ("const", "grouped", 4)):
        x = make(batch=2, dim=8, L=32, N=16, B=B, C=C, G=G, dtype=torch.float32)
        if B == "grouped" and C == "grouped":  # unequal counts: 2 and 4
            x["C"] = torch.randn(2, 4, 16, 32, dtype=torch.float32)
        kw = extras(x, (True, True, True, True))
        want = scan.selective_scan(*core(x), **kw, backend="cpu")
        xc = {k: v.cuda() for k, v in x.items()}
        got = scan.selective_scan(*core(xc), **extras(xc, (True, True, True, True)), backend="cuda")
        torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4, msg=f"B {B}, C {C}")
    x64 = {k: v.cuda() for k, v in make(dtype=torch.float64).items()}
    scan.selective_scan(*core(x64))
    assert scan.last_backend() == "torch"
    with pytest.raises(RuntimeError, match="fp32/fp16/bf16"):
        scan.selective_scan(*core(x64), backend="cuda")


def fake_mamba_kernel(u, delta, A, B, C, D, z, delta_bias, softplus, return_last_state):
    """mamba-ssm's selective_scan_fn with its kernel's input checks (csrc/selective_scan/selective_scan.cpp:
    u's dtype for delta, z and a time-varying B/C, float32 for A, D, delta_bias and a time-invariant B/C,
    C's groups those of B), computing with the ref backend; y in u's dtype, as the kernel returns it."""
    B, C = [M.unsqueeze(1) if M.dim() == 3 else M for M in (B, C)]  # its Python wrapper does this first
    assert A.dtype == torch.float32 and delta.dtype == u.dtype
    for M in (B, C):
        assert M.dtype == (u.dtype if M.dim() == 4 else torch.float32)
    groups = B.shape[1] if B.dim() == 4 else 1
    assert C.dim() == 2 or tuple(C.shape) == (u.shape[0], groups, A.shape[1], u.shape[2])
    assert z is None or z.dtype == u.dtype
    assert all(t is None or t.dtype == torch.float32 for t in (D, delta_bias))
    y, last = scan.selective_scan(u, delta, A, B, C, D, z, delta_bias, softplus, return_last_state=True,
                                  backend="ref")
    return (y, last) if return_last_state else y


@pytest.mark.parametrize("dtypes", [("float32",) * 3, ("bfloat16",) * 3, ("bfloat16", "float32", "bfloat16"),
                                    ("float16", "float16", "bfloat16"), ("float32", "float16", "float32")],
                         ids="-".join)
@pytest.mark.parametrize("bc", list(itertools.product(KINDS, KINDS)), ids="-".join)
def test_cuda_backend_gives_mamba_ssm_what_its_kernel_checks(bc, dtypes):
    """What the cuda backend hands mamba-ssm passes its kernel's checks for every layout and dtype mix
    the op accepts (a time-invariant B beside a grouped C included), and computes the op: what the
    torch backend computes from the same inputs, y in u's dtype (on CPU, with the kernel faked)."""
    u_t, delta_t, rest_t = (getattr(torch, d) for d in dtypes)  # (u, z), delta, (A, B, C, D, delta_bias)
    base = make(batch=2, dim=8, L=6, N=4, B=bc[0], C=bc[1], G=4, dtype=torch.float32)

    def inputs():
        return {k: v.to(u_t if k in ("u", "z") else delta_t if k == "delta" else rest_t).requires_grad_(True)
                for k, v in base.items()}

    results = []
    for run in ("cuda", "torch"):
        x = inputs()
        kw = extras(x, (True, True, True, True))
        if run == "cuda":
            y, last = scan._mamba_call(fake_mamba_kernel, *core(x), kw["D"], kw["z"], kw["delta_bias"], True, True)
        else:
            y, last = scan.selective_scan(*core(x), **kw, return_last_state=True, backend="torch")
        y.float().sum().backward()
        results.append((y, last, {k: v.grad for k, v in x.items()}))
    (y, last, grads), (want_y, want_last, want_grads) = results
    assert y.dtype == want_y.dtype == u_t
    torch.testing.assert_close(y, want_y)  # the dtype's own tolerance
    torch.testing.assert_close(last, want_last, rtol=1e-5, atol=1e-5)
    for k, g in grads.items():
        assert g.dtype == want_grads[k].dtype
        # half precision: a few units in the last place of the largest entry (a spread group's copies
        # are summed in bf16 when everything is bf16, as the kernel's inputs must be)
        scale = want_grads[k].float().abs().max().item()
        tol = dict(rtol=1e-4, atol=1e-4) if g.dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2 * scale)
        torch.testing.assert_close(g.float(), want_grads[k].float(), **tol, msg=k)


def test_float64_on_cuda_never_picks_mamba_ssm(monkeypatch):
    """mamba-ssm has no float64 kernels: the automatic choice and the fused Mamba block avoid it
    (the drift grid's float64 protocol on a GPU machine)."""
    import types

    fake = types.SimpleNamespace(selective_scan_fn=object(), mamba_inner_fn=object(), causal_conv1d_fn=object())
    monkeypatch.setattr(scan, "_mamba", fake)
    monkeypatch.delenv(scan.ENV_VAR, raising=False)
    assert scan.default_backend("cuda", torch.float32) == scan.default_backend("cuda") == "cuda"
    assert scan.default_backend("cuda", torch.float64) == "torch"
    assert scan.fused_mamba_inner("cuda", torch.float64) is None
    assert scan.fused_mamba_inner("cuda", torch.bfloat16) is fake.mamba_inner_fn


def test_mamba_ssm_without_its_compiled_kernel_is_not_chosen(monkeypatch):
    """Since state-spaces/mamba#977 a default build installs mamba-ssm whose interface imports but
    whose selective_scan_cuda was never built: the cuda backend must not be picked then."""
    import types

    interface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    interface.selective_scan_fn = object()
    ops = types.ModuleType("mamba_ssm.ops")
    ops.selective_scan_interface = interface
    pkg = types.ModuleType("mamba_ssm")
    pkg.ops = ops
    for name, mod in (("mamba_ssm", pkg), ("mamba_ssm.ops", ops), ("mamba_ssm.ops.selective_scan_interface", interface)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setitem(sys.modules, "selective_scan_cuda", None)  # `import selective_scan_cuda` fails
    monkeypatch.setattr(scan, "_mamba", None)
    monkeypatch.setattr(scan, "_mamba_error", None)
    monkeypatch.delenv(scan.ENV_VAR, raising=False)
    assert scan._mamba_ops() is None and "selective_scan_cuda" in scan._mamba_error
    assert scan.default_backend("cuda", torch.float32) == "torch"
    # what setup, the device scripts and the CUDA tests ask: the missing kernel by name
    assert scan.mamba_kernels_problem().startswith("mamba-ssm's kernels do not import: ")
    assert "selective_scan_cuda" in scan.mamba_kernels_problem()
    monkeypatch.setitem(sys.modules, "selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    monkeypatch.setattr(scan, "_mamba", None)
    assert scan._mamba_ops() is interface and scan.default_backend("cuda", torch.float32) == "cuda"
    # the scan kernel alone: mamba-ssm's Mamba takes its fused path only with causal-conv1d's
    interface.causal_conv1d_fn = None
    assert scan.mamba_kernels_problem().startswith("causal-conv1d's kernels do not import")
    interface.causal_conv1d_fn = object()
    assert scan.mamba_kernels_problem() is None


_OTHER_BUILD = """
import sys, torch
from ssm_models import scan
from tests.test_scan import vectorisation_cases
scan._CFLAGS = scan._CFLAGS + sys.argv[2:]
assert scan._load_extension() is not None, scan._ext_error
torch.save(vectorisation_cases(), sys.argv[1])
"""


_REFUSING_CXX = """#!/bin/sh
# what Apple clang answers to two flags GCC takes; each call logged
echo "$@" >> "$0.calls"
for a in "$@"; do
  case "$a" in -fopenmp|-march=native) echo "clang: error: unsupported option '$a'" >&2; exit 1;; esac
done
exec c++ "$@"
"""

_PORTABLE_BUILD = """
import torch
from ssm_models import scan
from tests.test_scan import core, extras, make
assert scan._load_extension() is not None, scan._ext_error_detail
print(scan._ext_origin)
x = make(batch=2, dim=8, L=40, N=16, G=2, dtype=torch.float64)
kw = extras(x, (True, True, True, True))
torch.testing.assert_close(scan.selective_scan(*core(x), **kw, backend="cpu"),
                           scan.selective_scan(*core(x), **kw, backend="ref"))
"""


def test_a_compiler_that_refuses_openmp_still_builds_the_kernel(tmp_path):
    """A portability review: Apple clang refuses -fopenmp (older ones -march=native too), and every scan
    fell back to the torch backend, about 15x slower, unsaid. The kernel is built without them and
    says so; later processes go to that build at once."""
    cxx = tmp_path / "clang++"
    cxx.write_text(_REFUSING_CXX, encoding="utf-8")
    cxx.chmod(0o755)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CXX": str(cxx), "BENCH_EXTENSIONS_DIR": str(tmp_path / "ext"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    calls = tmp_path / "clang++.calls"
    said, refused = [], []
    for _ in range(2):
        said.append(subprocess.run([sys.executable, "-c", _PORTABLE_BUILD], env=env, capture_output=True, text=True,
                                   timeout=600, encoding="utf-8"))
        refused.append(sum("-fopenmp" in line for line in calls.read_text(encoding="utf-8").splitlines()))
    assert all(p.returncode == 0 for p in said), said[-1].stderr
    marker = next((tmp_path / "ext").glob(f"*/{scan._REFUSED}"))
    without = (", without -march=native -fopenmp (build failed: clang: error: unsupported option '-march=native'; "
               f"{marker} skips them in later processes: delete it to try again): single-threaded")
    assert said[0].stdout.startswith("built in ") and said[0].stdout.strip().endswith(without), said[0].stdout
    assert said[1].stdout.strip() == "loaded from cache" + without
    assert refused[0] >= 1 and refused[1] == refused[0]  # the second process asked the compiler nothing refused
    assert "unavailable" not in said[0].stderr + said[1].stderr


def vectorisation_cases() -> list[torch.Tensor]:
    """The cpu kernel's outputs and every gradient for a few layouts and both dtypes (N = 16, the
    compiled-in state size, and N = 11, a run-time size with a partial last lane block)."""
    outs = []
    for dtype, N, B, C in ((torch.float32, 16, "grouped", "grouped"), (torch.float64, 16, "batch", "const"),
                           (torch.float32, 11, "const", "grouped"), (torch.float64, 11, "grouped", "batch")):
        x = make(batch=2, dim=8, L=40, N=N, B=B, C=C, G=2, dtype=dtype, seed=N, grad=True)
        y = scan.selective_scan(*core(x), **extras(x, (True, True, True, True)), backend="cpu")
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=dtype))
        outs += [y.detach(), *(v.grad for v in x.values())]
    return outs


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 vector-width flag")
def test_kernel_results_do_not_depend_on_the_vector_width(tmp_path):
    """The kernel's sums over the state run in one fixed order, so a build with 128-bit vectors
    gives the same bits as the default 256-bit one, as an AVX-512 machine's would: the same run
    trains to the same weights on different CPUs (the drift baseline relies on it). With
    `omp simd reduction` the gradients of u, delta, z and delta_bias differed in the last bits."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BENCH_EXTENSIONS_DIR": str(tmp_path / "ext"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "narrow.pt"
    subprocess.run([sys.executable, "-c", _OTHER_BUILD, str(out), "-mprefer-vector-width=128"], check=True, env=env,
                   timeout=600)
    narrow, default = torch.load(out), vectorisation_cases()
    assert len(narrow) == len(default) == 4 * 9  # y and 8 gradients per case
    assert all(torch.equal(a, b) for a, b in zip(narrow, default))


def test_a_killed_builds_lock_is_removed_and_a_live_one_waited_for(tmp_path, monkeypatch):
    """A build killed mid-way leaves its lock; a process that found it waited in torch's endless
    wait (a CI run hung), then 10 min in silence. Now: a lock whose builder (the owner file written
    just before it) was a process of this host that is gone goes at once; a live builder's is waited
    for; one no owner file speaks for (a builder on another node sharing the home folder) goes once stale."""
    import subprocess
    import sys
    import threading
    import time

    from bench.fileio import writer_tag

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    lock, owner = tmp_path / "lock", tmp_path / scan._LOCK_OWNER
    try:
        owner.write_text(writer_tag(gone.pid), encoding="utf-8")
        lock.touch()  # the killed build's
        t0 = time.monotonic()
        scan._wait_for_build_lock(lock)
        assert not lock.exists() and time.monotonic() - t0 < 2

        owner.write_text(writer_tag(live.pid), encoding="utf-8")
        lock.touch()
        threading.Timer(1.5, lock.unlink).start()  # the live build ends after the first look
        t0 = time.monotonic()
        scan._wait_for_build_lock(lock)
        assert 1.4 < time.monotonic() - t0 < 10
    finally:
        live.kill()

    owner.unlink()  # no owner: another node's build, or an older bench's
    monkeypatch.setattr(scan, "_STALE_LOCK_S", 1.5)
    lock.touch()
    t0 = time.monotonic()
    scan._wait_for_build_lock(lock)
    assert not lock.exists() and 1.4 < time.monotonic() - t0 < 10
    scan._wait_for_build_lock(lock)  # no lock: no wait


def test_kernel_loads_where_stdout_is_none():
    """The first SSM forward may run under ``redirect_stdout(None)`` (thop's counting in `bench
    profile` did): torch's build flushes sys.stdout, and the kernel was lost for the whole process,
    every later timing measuring the fallback. Fresh processes, with the build cache of this one."""
    guard = ("import contextlib, sys\n"
             "from ssm_models import scan\n"
             "with contextlib.redirect_stdout(None):\n"
             "    sys.stderr = None\n"
             "    ext = scan._load_extension()\n"
             "sys.stderr = sys.__stderr__\n"
             "assert ext is not None, scan._ext_error_detail\n")
    counted_first = ("import sys, torch\n"  # bench profile's order: thop's count is the first forward
                     "from ssm_models import scan\n"
                     "from bench.cost import paper_count\n"
                     "from bench.registry import create_model, get_entry\n"
                     "m = create_model('vmunet', num_classes=2, in_chans=1, img_size=32,\n"
                     "                 **get_entry('vmunet').tiny)\n"
                     "paper_count(m, torch.zeros(1, 1, 32, 32))\n"
                     "assert scan._ext is not None, scan._ext_error_detail\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for code in (guard, counted_first):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                              encoding="utf-8")
        assert proc.returncode == 0, proc.stderr


def test_the_kernel_builds_with_the_ninja_beside_python(tmp_path, monkeypatch):
    """ninja's log keys each command by a hash that another ninja version computes otherwise: an
    activated venv (its ninja first on PATH) and `.venv/bin/bench` (the system's first) rebuilt the
    kernel each time one followed the other, 15-20 s per process. The build puts the ninja installed
    beside this Python first, whatever PATH says, and leaves PATH as it was."""
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(venv / "python"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    with scan._venv_ninja_first():
        assert os.environ["PATH"] == "/usr/bin:/bin"  # no ninja beside python: PATH's
    (venv / "ninja").touch()
    with scan._venv_ninja_first():
        assert os.environ["PATH"].split(os.pathsep)[0] == str(venv)
    assert os.environ["PATH"] == "/usr/bin:/bin"


# ------------------------------------------------------------------------------ compile and export


def _calls(gm, op: str) -> int:
    """How many of ``gm``'s calls, its subgraphs' included, go to ``op`` (an op's name, its overload left out)."""
    return sum(n.op == "call_function" and str(n.target).startswith(op) for m in gm.modules() for n in m.graph.nodes)


@pytest.mark.parametrize("block", ["ss2d", "mamba"])
def test_compile_traces_the_cpu_kernel_in_one_graph(block):
    """fullgraph: no graph break at the scan (the pybind call and the FLOP counter's check broke it);
    the kernel's ops in the graph (aot_eager: the fake impls and the Function's backward, without
    inductor's C++ builds), forward and gradients equal to eager."""
    from torch._dynamo.testing import CompileCounterWithBackend

    from ssm_models.mamba import Mamba
    from ssm_models.vss import SS2D

    torch.manual_seed(0)
    model, x = ((SS2D(8, d_state=4), torch.randn(2, 5, 6, 8)) if block == "ss2d"
                else (Mamba(8, d_state=4), torch.randn(2, 7, 8)))
    runs = {}
    counter = CompileCounterWithBackend("aot_eager")
    for name, fn in (("eager", model), ("compiled", torch.compile(model, fullgraph=True, backend=counter))):
        model.zero_grad()
        xi = x.clone().requires_grad_()
        with scan.use_backend("cpu"):
            y = fn(xi)
        y.square().sum().backward()
        runs[name] = [y, xi.grad, *[p.grad for p in model.parameters()]]
    assert counter.frame_count == 1
    assert _calls(counter.graphs[0], "ssm_unet_bench.selective_scan_cpu_fwd") == 1
    assert _calls(counter.graphs[0], "ssm_unet_bench.selective_scan_cpu_bwd") == 1
    for a, b in zip(runs["eager"], runs["compiled"]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_compile_before_any_eager_scan():
    """A fresh process compiles before any eager scan: the kernel's first load happens inside the trace, which
    dynamo cannot follow (a build, files, a lock) unless _kernel_loads is taken as a constant."""
    code = """if True:
        import torch
        from ssm_models import scan
        from ssm_models.mamba import Mamba

        torch.manual_seed(0)
        model, x = Mamba(8, d_state=4), torch.randn(2, 7, 8)
        with scan.use_backend("cpu"):
            y = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
            assert scan.last_backend() == "cpu", scan.last_backend()
            torch.testing.assert_close(y, model(x), rtol=1e-5, atol=1e-6)
        print("compiled and matched")
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    env.pop(scan.ENV_VAR, None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          encoding="utf-8")
    assert done.returncode == 0 and "compiled and matched" in done.stdout, done.stderr[-3000:]


def test_export_of_a_vmunet_with_the_cpu_kernel():
    """torch.export traced into the kernel's data pointers and failed; the op's fake impl gives its shapes.
    The cost marker, for FLOP counters only, stays out of the program."""
    from bench.registry import create_model

    torch.manual_seed(0)
    model, x = create_model("vmunet", num_classes=3, img_size=64, tiny=True).eval(), torch.randn(1, 3, 64, 64)
    with scan.use_backend("cpu"):
        program = torch.export.export(model, (x,))
        want = model(x)
    graph = program.graph_module
    assert _calls(graph, "ssm_unet_bench.selective_scan_cpu_fwd") == 2 * 4  # tiny: one block a stage, encoder and decoder
    assert _calls(graph, "ssm_unet_bench.selective_scan_cost") == 0
    torch.testing.assert_close(program.module()(x), want, rtol=0, atol=0)


def test_the_kernels_ops_without_a_kernel_say_so(monkeypatch):
    """An exported program calls the ops directly, past selective_scan's check: where the kernel does not
    build, they say what to do, not AttributeError on None."""
    args = op_args(make(batch=1, dim=2, L=3, N=2, B="grouped", C="grouped", G=1, dtype=torch.float32), with_D_z=False)
    monkeypatch.setattr(scan, "_load_extension", lambda: None)
    monkeypatch.setattr(scan, "_ext_error", "no C++ compiler")
    said = ("the cpu selective-scan kernel is unavailable here (no C++ compiler): a model exported with it runs where "
            "it builds; export with BENCH_SCAN_BACKEND=torch to run anywhere")
    with pytest.raises(RuntimeError, match=f"^{re.escape(said)}$"):
        torch.ops.ssm_unet_bench.selective_scan_cpu_fwd(*args)
    with pytest.raises(RuntimeError, match=f"^{re.escape(said)}$"):
        torch.ops.ssm_unet_bench.selective_scan_cpu_bwd(*args, None, None)


def test_a_second_copy_of_the_module_uses_the_registered_ops():
    """scan.py loaded by path under another name (a script importing a file): defining the ops again raised
    "registered multiple times"; the copy finds them and scans with them."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("scan_copy", scan.__file__)
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    assert copy._LIB is None and copy._cpu_fwd is scan._cpu_fwd
    x = make()
    torch.testing.assert_close(copy.selective_scan(*core(x), backend="cpu"), scan.selective_scan(*core(x), backend="ref"),
                               rtol=1e-10, atol=1e-12)
    # the cost marker too: defined again, it left bench.cost's formula on the replaced op (scans counted 0)
    from bench.cost import count_flops

    class OneScan(torch.nn.Module):
        def forward(self, u):
            return copy.selective_scan(u, *core(x)[1:], backend="cpu")

    assert copy.SCAN_COST_OP is scan.SCAN_COST_OP
    hand = scan.selective_scan_flops(x["u"].shape, x["A"].shape, False, False)
    assert count_flops(OneScan(), x["u"]).scan_flops == hand > 0
