"""Selective-scan speed on CPU: our ``cpu`` and ``torch`` backends against a reference written
the way mamba-ssm's ``selective_scan_ref`` is (per-step einsum loop; its backward is autograd
through that loop), side by side in one run, with the errors against that reference.

Shapes are VM-UNet's four encoder stages at 224² input, called the way its SS2D calls the scan:
batch 1, d_state 16, 4 scan directions, u and delta (1, 4·d_inner, H·W), grouped B/C
(1, 4, 16, H·W), A = -exp(A_logs) = -[1..16], D = 1, a VM-UNet-style delta_bias (inverse softplus
of dt in [1e-3, 0.1]), delta_softplus=True, float32. Single thread:

    OMP_NUM_THREADS=1 python benchmarks/scan_bench.py --out benchmarks/scan_bench.md   # ~3 min
    OMP_NUM_THREADS=1 python benchmarks/scan_bench.py --quick                          # ~20 s

The reference's forward+backward takes ~100 s at stage 2 and over 15 min at stage 1, so stage 1's
is skipped by default (``--skip-ref-backward-stages``). Exit status 1 if an error exceeds 1e-5
(forward, relative to max |y|) or 1e-4 (each gradient, relative to its max).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import statistics
import sys
import time

import torch

from bench.env import cpu_model
from ssm_models import scan

STAGES = [(1, 56, 192), (2, 28, 384), (3, 14, 768), (4, 7, 1536)]  # (stage, H = W, d_inner)
GOALS = {("forward", 1): 20.0, ("forward+backward", 2): 100.0}  # issue 3: minimum speed-ups
FWD_TOL, GRAD_TOL = 1e-5, 1e-4


def reference(**x):
    """The ``ref`` backend: a per-step einsum loop laid out as mamba-ssm's selective_scan_ref."""
    return scan.selective_scan(**x, delta_softplus=True, backend="ref")


def ours(backend):
    return lambda **x: scan.selective_scan(**x, delta_softplus=True, backend=backend)


def inputs(side: int, d_inner: int, grad: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    L, dim, N = side * side, 4 * d_inner, 16
    dt = torch.exp(torch.rand(dim, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    x = dict(u=torch.randn(1, dim, L, generator=g), delta=0.5 * torch.randn(1, dim, L, generator=g),
             A=-torch.arange(1, N + 1, dtype=torch.float32).repeat(dim, 1),
             B=torch.randn(1, 4, N, L, generator=g), C=torch.randn(1, 4, N, L, generator=g),
             D=torch.ones(dim), delta_bias=dt + torch.log(-torch.expm1(-dt)))
    return {k: v.requires_grad_(grad) for k, v in x.items()}


def timed(fn, repeats: int, warmup: int = 0, device: torch.device | None = None):
    """(median seconds over ``repeats`` after ``warmup`` untimed runs, last result); on a CUDA ``device``
    synchronised before and after each run, so a run's time is its kernels' (cuda_check.py times so too)."""
    def sync() -> None:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def forward_only(fn, x):
    def run():
        with torch.no_grad():
            return fn(**x)
    return run


def forward_backward(fn, x):
    def run():
        for v in x.values():
            v.grad = None
        y = fn(**x)
        y.sum().backward()
        return {k: v.grad.clone() for k, v in x.items()}
    return run


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def fmt_s(t: float) -> str:
    return f"{t:.4f}" if t < 1 else f"{t:.2f}" if t < 100 else f"{t:.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="runs of our backends per cell (median)")
    ap.add_argument("--ref-repeats", type=int, default=3, help="runs of the reference forward (median)")
    ap.add_argument("--skip-ref-backward-stages", default="1",
                    help="comma list of stages where the reference forward+backward is not run ('' runs all; "
                         "stage 1 takes over 15 min)")
    ap.add_argument("--stages", default="1,2,3,4")
    ap.add_argument("--backends", default="cpu,torch")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true",
                    help="2 repeats, reference forward+backward only at stages 3-4 (a smoke run; not the "
                         "issue's numbers)")
    ap.add_argument("--out", help="also write the Markdown report to this file")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.ref_repeats, args.skip_ref_backward_stages = 2, 1, "1,2"
    torch.set_num_threads(args.threads)
    backends = [b for b in args.backends.split(",") if b]
    stages = {int(s) for s in args.stages.split(",") if s}
    skip_bwd = {int(s) for s in args.skip_ref_backward_stages.split(",") if s}
    scan._load_extension()  # build outside the timings

    lines: list[str] = []

    def out(line: str = "") -> None:
        lines.append(line)
        print(line, flush=True)

    load0 = os.getloadavg()[0]
    cmd = " ".join(["python", "benchmarks/scan_bench.py", *sys.argv[1:]])
    out("# Selective-scan benchmark (CPU)")
    out()
    out(f"Run on {datetime.date.today().isoformat()}: {cpu_model()}, {args.threads} thread(s) "
        f"(`OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}`), torch {torch.__version__}. "
        f"Command: `{cmd}`.")
    out()
    out(f"Backends: {scan.backend_report()}")
    out()
    out("Inputs: VM-UNet's SS2D call at 224² (batch 1, d_state 16, 4 directions, grouped B/C (1, 4, 16, L), "
        "delta_softplus, D, delta_bias), float32. Reference: the `ref` backend, a per-step einsum loop laid out "
        "as mamba-ssm's `selective_scan_ref`; its backward is autograd through the loop. "
        f"Times are medians of {args.repeats} runs (reference forward: {args.ref_repeats}; reference "
        "forward+backward: 1 run). Errors: max |ours − ref| / max |ref|, over y (forward) or over each gradient "
        "(u, delta, A, B, C, D, delta_bias), the worse of the backends.")
    out()
    head = "| stage | u shape | pass | reference s | " + " | ".join(f"{b} s | {b} speed-up" for b in backends)
    out(head + " | max rel. error |")
    out("|" + "---|" * (4 + 2 * len(backends) + 1))

    ok, speedups = True, {}
    for stage, side, d_inner in STAGES:
        if stage not in stages:
            continue
        x = inputs(side, d_inner, grad=False)
        shape = tuple(x["u"].shape)
        t_ref, y_ref = timed(forward_only(reference, x), args.ref_repeats)
        cells, err = [], 0.0
        for be in backends:
            t, y = timed(forward_only(ours(be), x), args.repeats)
            cells.append(f"{fmt_s(t)} | {t_ref / t:.0f}×")
            speedups[("forward", stage, be)] = t_ref / t
            err = max(err, rel_err(y, y_ref))
        ok &= err <= FWD_TOL
        out(f"| {stage} | {shape} | forward | {fmt_s(t_ref)} | " + " | ".join(cells) + f" | {err:.1e} |")

        x = inputs(side, d_inner, grad=True)
        results = {be: timed(forward_backward(ours(be), x), args.repeats) for be in backends}
        if stage in skip_bwd:
            ref_cell, err_cell = "not run", "n/a"
            cells = [f"{fmt_s(results[be][0])} | n/a" for be in backends]
        else:
            t_ref, g_ref = timed(forward_backward(reference, x), 1)
            err = max(rel_err(results[be][1][k], g_ref[k]) for be in backends for k in g_ref)
            ok &= err <= GRAD_TOL
            ref_cell, err_cell = fmt_s(t_ref), f"{err:.1e}"
            cells = []
            for be in backends:
                speedups[("forward+backward", stage, be)] = t_ref / results[be][0]
                cells.append(f"{fmt_s(results[be][0])} | {t_ref / results[be][0]:.0f}×")
        out(f"| {stage} | {shape} | forward+backward | {ref_cell} | " + " | ".join(cells) + f" | {err_cell} |")

    out()
    if stages & skip_bwd:
        out(f"- Reference forward+backward not run at stage(s) {', '.join(map(str, sorted(stages & skip_bwd)))} "
            "(stage 1 takes over 15 min on one core); `--skip-ref-backward-stages ''` runs it.")
    for (kind, stage), goal in GOALS.items():  # the goals are the default cpu backend's
        got = {be: speedups.get((kind, stage, be)) for be in backends}
        main_s = got.get("cpu")
        status = "not measured" if main_s is None else f"{main_s:.0f}× — {'met' if main_s >= goal else 'NOT met'}"
        others = ", ".join(f"{be} {v:.0f}×" for be, v in got.items() if be != "cpu" and v is not None)
        out(f"- Goal: {kind} at stage {stage} ≥ {goal:.0f}× faster, `cpu` backend: {status}"
            + (f" (for comparison: {others})" if others else ""))
    out(f"- Errors within {FWD_TOL:g} (forward) and {GRAD_TOL:g} (gradients): {'yes' if ok else 'NO'}")
    out(f"- Load average (1 min) at start / end: {load0:.2f} / {os.getloadavg()[0]:.2f} "
        f"on {os.cpu_count()} cores (a shared machine makes single runs noisy)")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
