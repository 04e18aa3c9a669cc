"""Selective-scan speed on CPU: our backends vs the ``ref`` backend, written like mamba-ssm's
``selective_scan_ref`` (per-step einsum; backward = autograd through that loop), side by side.

Shapes are VM-UNet's four encoder stages at 224² input: batch 1, d_state 16, 4 scan directions,
u (1, 4·d_inner, H·W), grouped B/C (1, 4, 16, H·W), softplus with a delta bias, D term.
Medians over --repeats runs (the slow reference fwd+bwd runs once). Single thread:

    OMP_NUM_THREADS=1 python benchmarks/scan_bench.py > benchmarks/scan_bench.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from ssm_models import scan

STAGES = [(1, 56, 192), (2, 28, 384), (3, 14, 768), (4, 7, 1536)]  # (stage, H=W, d_inner)


def mamba_style_ref(u, delta, A, B, C, D, delta_bias):
    """The reference: our ``ref`` backend, a per-step einsum loop laid out as mamba-ssm's
    selective_scan_ref (backward = autograd through the loop)."""
    return scan.selective_scan(u, delta, A, B, C, D, delta_bias=delta_bias, delta_softplus=True, backend="ref")


def inputs(side: int, d_inner: int, grad: bool):
    g = torch.Generator().manual_seed(0)
    L, dim, N = side * side, 4 * d_inner, 16
    t = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).requires_grad_(grad)  # noqa: E731
    A = (-torch.arange(1, N + 1, dtype=torch.float32).repeat(dim, 1)).requires_grad_(grad)
    return dict(u=t(1, dim, L), delta=t(1, dim, L, scale=0.5), A=A, B=t(1, 4, N, L), C=t(1, 4, N, L),
                D=torch.ones(dim).requires_grad_(grad), delta_bias=t(dim, scale=0.1))


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def fwd_bwd(fn, x):
    def run():
        for v in x.values():
            v.grad = None
        y = fn(**x)
        y.sum().backward()
        return y.detach(), [v.grad.clone() for v in x.values() if v.grad is not None]
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ref-backward-stages", default="2,3,4",
                    help="stages where the reference fwd+bwd is timed (stage 1 takes > 15 min)")
    ap.add_argument("--backends", default="cpu,torch")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ref_bwd = {int(s) for s in args.ref_backward_stages.split(",") if s}
    backends = args.backends.split(",")
    ours = lambda be: lambda **k: scan.selective_scan(**k, delta_softplus=True, backend=be)  # noqa: E731
    print(f"CPU: {__import__('bench.env', fromlist=['cpu_model']).cpu_model()}, 1 thread, torch {torch.__version__}")
    print(f"kernel: {scan.backend_report()}\n")
    print("| stage | u shape | pass | reference s | " + " | ".join(f"{b} s (speed-up)" for b in backends)
          + " | max rel. err |")
    print("|---|---|---|---|" + "---|" * len(backends) + "---|")
    ok = True
    for stage, side, d_inner in STAGES:
        x = inputs(side, d_inner, grad=False)
        shape = tuple(x["u"].shape)
        with torch.no_grad():
            t_ref, y_ref = timed(lambda: mamba_style_ref(**x), max(1, args.repeats // 2))
            cells, err = [], 0.0
            for be in backends:
                t, y = timed(lambda: ours(be)(**x), args.repeats)
                cells.append(f"{t:.4f} ({t_ref / t:.0f}x)")
                err = max(err, ((y - y_ref).abs().max() / y_ref.abs().max()).item())
        ok &= err <= 1e-5
        print(f"| {stage} | {shape} | forward | {t_ref:.3f} | " + " | ".join(cells) + f" | {err:.1e} |")

        x = inputs(side, d_inner, grad=True)
        cells, err = [], 0.0
        results = {}
        for be in backends:
            t, results[be] = timed(fwd_bwd(ours(be), x), args.repeats)
            cells.append(f"{t:.4f}")
        if stage in ref_bwd:
            t_ref, (y_ref, g_ref) = timed(fwd_bwd(mamba_style_ref, x), 1)
            for be in backends:
                _, g = results[be]
                err = max([err] + [((a - b).abs().max() / b.abs().max()).item() for a, b in zip(g, g_ref)])
            cells = [f"{c} ({t_ref / float(c):.0f}x)" for c in cells]
            ref_cell = f"{t_ref:.1f}"
            ok &= err <= 1e-4
        else:
            ref_cell, err = "not run", float("nan")
        print(f"| {stage} | {shape} | forward+backward | {ref_cell} | " + " | ".join(cells) + f" | {err:.1e} |")
        sys.stdout.flush()
    print(f"\nall errors within 1e-5 (forward) / 1e-4 (gradients): {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
