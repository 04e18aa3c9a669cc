"""Selective scan: every backend against an independent float64 sequential scan, gradchecks,
backend selection and the fallback when the compiled kernel is unavailable."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from ssm_models import scan

CORE_BACKENDS = ["cpu", "torch", "ref"]


def sequential_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Written from the definition, element by element, in float64."""
    u, delta, A = u.double(), delta.double(), A.double()
    batch, dim, L = u.shape
    N = A.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)

    def coef(M, b, d, n, t):
        if M.dim() == 2:
            return M[d, n]
        if M.dim() == 3:
            return M[b, n, t]
        return M[b, d // (dim // M.shape[1]), n, t]

    y = torch.zeros(batch, dim, L, dtype=torch.float64)
    last = torch.zeros(batch, dim, N, dtype=torch.float64)
    for b, d in itertools.product(range(batch), range(dim)):
        x = [0.0] * N
        for t in range(L):
            acc = 0.0
            for n in range(N):
                x[n] = math.exp(delta[b, d, t] * A[d, n]) * x[n] + delta[b, d, t] * float(coef(B, b, d, n, t)) * u[b, d, t]
                acc += float(coef(C, b, d, n, t)) * x[n]
            y[b, d, t] = acc
        last[b, d] = torch.tensor(x, dtype=torch.float64)
    if D is not None:
        y = y + u * D.double()[:, None]
    if z is not None:
        y = y * F.silu(z.double())
    return y, last


def make(batch=2, dim=4, L=7, N=3, bc="grouped", dtype=torch.float64, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype).requires_grad_(grad)  # noqa: E731
    shapes = {"const": (dim, N), "batch": (batch, N, L), "grouped": (batch, 2, N, L)}[bc]
    A = (-torch.rand(dim, N, generator=g, dtype=dtype) - 0.1).requires_grad_(grad)
    return dict(u=r(batch, dim, L), delta=r(batch, dim, L), A=A, B=r(*shapes), C=r(*shapes),
                D=r(dim), z=r(batch, dim, L), delta_bias=r(dim))


@pytest.mark.parametrize("backend", CORE_BACKENDS)
@pytest.mark.parametrize("bc", ["const", "batch", "grouped"])
@pytest.mark.parametrize("extras", [(False, False, False, False), (True, True, True, True), (True, False, True, False)])
def test_forward_matches_sequential_float64(backend, bc, extras):
    use_D, use_z, use_bias, softplus = extras
    x = make(bc=bc)
    kw = dict(D=x["D"] if use_D else None, z=x["z"] if use_z else None,
              delta_bias=x["delta_bias"] if use_bias else None, delta_softplus=softplus)
    want_y, want_last = sequential_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], **kw)
    y, last = scan.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], **kw,
                                  return_last_state=True, backend=backend)
    torch.testing.assert_close(y, want_y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, want_last, rtol=1e-10, atol=1e-10)
    assert scan.last_backend() == backend


@pytest.mark.parametrize("backend", CORE_BACKENDS)
def test_float32_in_float32_out(backend):
    x = {k: v.float() for k, v in make(dtype=torch.float64).items()}
    y = scan.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], delta_softplus=True, backend=backend)
    want, _ = sequential_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], delta_softplus=True)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("bc", ["const", "batch", "grouped"])
def test_gradcheck(backend, bc):
    x = make(batch=1, dim=4, L=5, N=2, bc=bc, grad=True)
    names = list(x)

    def fn(*args):
        k = dict(zip(names, args))
        y, last = scan.selective_scan(k["u"], k["delta"], k["A"], k["B"], k["C"], D=k["D"], z=k["z"],
                                      delta_bias=k["delta_bias"], delta_softplus=True, return_last_state=True,
                                      backend=backend)
        return y, last

    assert torch.autograd.gradcheck(fn, tuple(x.values()), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_float32_gradients_match_ref(backend):
    x = make(batch=2, dim=8, L=40, N=4, dtype=torch.float32, grad=True)
    grads = {}
    for be in (backend, "ref"):
        for v in x.values():
            v.grad = None
        y = scan.selective_scan(**x, delta_softplus=True, backend=be)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads[be] = [v.grad.clone() for v in x.values()]
    for a, b in zip(grads[backend], grads["ref"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_backend_selection(monkeypatch):
    x = make()
    monkeypatch.setenv("BENCH_SCAN_BACKEND", "ref")
    scan.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"])
    assert scan.last_backend() == "ref"
    monkeypatch.setenv("BENCH_SCAN_BACKEND", "nope")
    with pytest.raises(ValueError, match="unknown selective-scan backend 'nope'"):
        scan.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"])
    monkeypatch.delenv("BENCH_SCAN_BACKEND")
    with pytest.raises(ValueError, match="cpu, torch, ref"):
        scan.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], backend="fast")
    assert scan.default_backend("cpu") == "cpu"  # the compiled kernel builds on this machine
    assert "torch" in scan.available_backends() and "ref" in scan.available_backends()


def test_fallback_when_kernel_unavailable(monkeypatch):
    monkeypatch.setattr(scan, "_ext", None)
    monkeypatch.setattr(scan, "_ext_error", "RuntimeError: no compiler (simulated)")
    assert scan.default_backend("cpu") == "torch"
    assert "no compiler (simulated)" in scan.backend_report()
    x = make()
    y = scan.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], delta_softplus=True)
    assert scan.last_backend() == "torch"
    want, _ = sequential_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], delta_softplus=True)
    torch.testing.assert_close(y, want)
    with pytest.raises(RuntimeError, match="no compiler"):
        scan.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], backend="cpu")


def test_bad_group_shape_is_rejected():
    x = make(dim=4)
    with pytest.raises(ValueError, match="dim % G"):
        scan.selective_scan(x["u"], x["delta"], x["A"], torch.randn(2, 3, 3, 7), x["C"])


@pytest.mark.skipif(not (torch.cuda.is_available() and scan._mamba_selective_scan_fn()),
                    reason="needs a CUDA device and mamba-ssm (GPU machines only)")
def test_cuda_backend_matches_cpu():
    x = make(batch=2, dim=8, L=64, N=16, dtype=torch.float32)
    cpu = scan.selective_scan(**x, delta_softplus=True, backend="cpu")
    cuda = scan.selective_scan(**{k: v.cuda() for k, v in x.items()}, delta_softplus=True, backend="cuda")
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-4, atol=1e-4)
