"""The CUDA path against the CPU path, side by side in one run: the selective scan at VM-UNet's
four stage shapes (forward, and forward+backward with every gradient) and each SSM model on the
same weights and input (the logits of one forward, and the output of every SSM block in it).

The candidate runs on ``--device`` with the scan backend chosen there (automatic: mamba-ssm's
kernels on CUDA when they import, else our ``torch`` backend; ``--backend`` forces one); the
oracle is the CPU default (the compiled kernel) in float32. Errors are max |candidate − oracle|
/ max |oracle|; TF32 is off. Times are medians.

On a GPU machine (about 3 min; 16 CPU threads for the oracle)::

    python benchmarks/cuda_check.py --threads 16 --out benchmarks/cuda_check.md

Anywhere, as a dry run of the same code (our ``torch`` backend against the kernel on CPU)::

    python benchmarks/cuda_check.py --device cpu --backend torch --tiny --stages 4

Exit status 1 if an error exceeds ``--tol`` (1e-4: issue 3's bound for the CUDA path).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scan_bench beside this file
from scan_bench import STAGES, inputs, rel_err, timed  # noqa: E402

from bench import env, records  # noqa: E402
from bench.cost import precision_context  # noqa: E402
from bench.registry import create_model, get_entry  # noqa: E402
from ssm_models import scan  # noqa: E402
from ssm_models.mamba import Mamba  # noqa: E402
from ssm_models.vss import SS2D  # noqa: E402

# (label, registry name, create_model arguments, input shape): the released configurations
MODELS = {
    "vmunet": ("VM-UNet, Synapse", "vmunet", dict(num_classes=9, img_size=224), (1, 3, 224, 224)),
    "vmunet_v2": ("VM-UNet-V2, ISIC", "vmunet_v2", dict(num_classes=1, img_size=256), (1, 3, 256, 256)),
    "lightm_unet": ("LightM-UNet 2-D", "lightm_unet", dict(num_classes=2, img_size=256), (1, 3, 256, 256)),
    "lightm_unet_3d": ("LightM-UNet 3-D", "lightm_unet", dict(num_classes=3, in_chans=1, spatial_dims=3),
                       (1, 1, 64, 64, 64)),
}
TINY_SHAPE = {2: (32, 32), 3: (16, 16, 16)}  # --tiny: each model's tiny configuration at these sizes


@contextlib.contextmanager
def scan_backend(name: str | None):
    """Run the models' scans on ``name`` (None: the automatic choice) through the env override."""
    saved = os.environ.get(scan.ENV_VAR)
    if name:
        os.environ[scan.ENV_VAR] = name
    else:
        os.environ.pop(scan.ENV_VAR, None)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(scan.ENV_VAR, None)
        else:
            os.environ[scan.ENV_VAR] = saved


def check_ran(backend: str) -> None:
    if scan.last_backend() != backend:
        raise RuntimeError(f"the candidate ran the {scan.last_backend()} scan backend, not {backend}")




def scan_case(side: int, d_inner: int, device: torch.device, grad: bool) -> dict[str, torch.Tensor]:
    x = inputs(side, d_inner, grad=False)
    return {k: v.to(device).requires_grad_(grad) for k, v in x.items()}


def scan_forward(x, backend):
    def run():
        with torch.no_grad():
            return scan.selective_scan(**x, delta_softplus=True, backend=backend)
    return run


def scan_forward_backward(x, backend):
    def run():
        for v in x.values():
            v.grad = None
        scan.selective_scan(**x, delta_softplus=True, backend=backend).sum().backward()
        return {k: v.grad.detach().clone() for k, v in x.items()}
    return run


def model_forward(model, x, device):
    def run():
        with torch.inference_mode(), precision_context("fp32", device):
            return model(x)
    return run


def block_outputs(model, x, device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits, the output of every SS2D / Mamba block in call order) of one forward. The blocks
    are compared too because the logits alone hide the scan: at initialisation the blocks'
    small output projections feed a residual stream, and a scan error barely reaches the logits."""
    outs: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda mod, args, out: outs.append(out.float().cpu()))
             for m in model.modules() if isinstance(m, (SS2D, Mamba))]
    try:
        logits = model_forward(model, x, device)()
    finally:
        for h in hooks:
            h.remove()
    return logits.float().cpu(), outs


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="where the candidate runs (default cuda)")
    ap.add_argument("--backend", default=None, choices=scan.BACKENDS,
                    help="force the candidate's scan backend (default: the automatic choice on --device)")
    ap.add_argument("--stages", default="1,2,3,4", help="VM-UNet stages for the scan ('' for none)")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)} ('' for none)")
    ap.add_argument("--tiny", action="store_true", help="tiny model configurations at 32² (3-D: 16³), a dry run")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per cell on the candidate (median)")
    ap.add_argument("--cpu-repeats", type=int, default=3, help="timed runs per cell on the CPU oracle (median)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads of the oracle")
    ap.add_argument("--tol", type=float, default=1e-4, help="bound for outputs (scan and models)")
    # a gradient sums over the whole sequence, in another order on the GPU (and mamba-ssm compiles
    # with fast math): its own tests allow 5-10x their output tolerance for dA, ddelta
    ap.add_argument("--grad-tol", type=float, default=1e-3, help="bound for the scan's gradients")
    ap.add_argument("--out", help="also write the Markdown report to this file")
    args = ap.parse_args(argv)
    stages = {int(s) for s in args.stages.split(",") if s}
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        ap.error(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    device, cpu = torch.device(args.device), torch.device("cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here (try --device cpu --backend torch for a dry run)")
    torch.set_num_threads(args.threads)
    oracle = "cpu" if "cpu" in scan.available_backends("cpu") else "torch"
    with scan_backend(args.backend):
        cand = scan.default_backend(device)
    if device.type == "cpu" and cand == oracle:
        ap.error(f"the candidate would run the oracle's own backend ({oracle}) on CPU; pass --backend")
    if device.type == "cuda" and cand != "cuda" and not args.backend:
        # without mamba-ssm's kernels the check would compare our torch backend and call it the CUDA path
        ap.error(f"mamba-ssm's kernels do not run here ({scan.backend_report()}); "
                 "pass --backend torch to check our torch backend on CUDA instead")

    lines: list[str] = []

    def out(line: str = "") -> None:
        lines.append(line)
        print(line, flush=True)

    fp = env.fingerprint(device)
    out(f"# {'CUDA' if device.type == 'cuda' else device.type.upper()} path against the CPU path")
    out()
    out(f"Run on {datetime.date.today().isoformat()}: candidate {records.short_fingerprint(fp)}, scan backend "
        f"`{cand}`; oracle {env.cpu_model()} with {args.threads} thread(s), scan backend `{oracle}`. "
        f"Command: `{' '.join(['python', 'benchmarks/cuda_check.py', *(argv if argv is not None else sys.argv[1:])])}`.")
    out()
    out(f"Backends: {scan.backend_report()}")
    out()
    out(f"Errors: max |candidate − oracle| / max |oracle| (float32, TF32 off); bound {args.tol:g} for outputs, "
        f"{args.grad_tol:g} for gradients. Times: medians "
        f"of {args.repeats} runs on the candidate and {args.cpu_repeats} on the oracle, after one warm-up each.")
    ok = True

    if stages:
        out()
        out("## Selective scan at VM-UNet's stage shapes (224², batch 1, d_state 16, 4 directions)")
        out()
        out("| stage | u shape | pass | oracle ms | candidate ms | speed-up | max rel. error | worst tensor |")
        out("|---|---|---|---|---|---|---|---|")
        for stage, side, d_inner in STAGES:
            if stage not in stages:
                continue
            for kind, make in (("forward", scan_forward), ("forward+backward", scan_forward_backward)):
                grad = kind != "forward"
                xc, xd = scan_case(side, d_inner, cpu, grad), scan_case(side, d_inner, device, grad)
                t_cpu, want = timed(make(xc, oracle), args.cpu_repeats, warmup=1)
                with scan_backend(args.backend):
                    t_dev, got = timed(make(xd, None), args.repeats, warmup=1, device=device)
                    check_ran(cand)
                pairs = {"y": (got, want)} if not grad else {k: (got[k], want[k]) for k in want}
                errs = {k: rel_err(g.float().cpu(), w.float()) for k, (g, w) in pairs.items()}
                worst = max(errs, key=errs.get)
                ok &= errs[worst] <= (args.grad_tol if grad else args.tol)
                out(f"| {stage} | {tuple(xc['u'].shape)} | {kind} | {fmt_ms(t_cpu)} | {fmt_ms(t_dev)} | "
                    f"{t_cpu / t_dev:.1f}× | {errs[worst]:.1e} | {worst} |")

    if models:
        out()
        out("## Models: one forward, same weights and input (eval mode)")
        out()
        out("| model | input | params | oracle ms | candidate ms | speed-up | max rel. error, logits | "
            "max rel. error, SSM blocks |")
        out("|---|---|---|---|---|---|---|---|")
        for key in models:
            label, name, kwargs, shape = MODELS[key]
            kwargs = dict(kwargs)
            if args.tiny:
                shape = shape[:2] + TINY_SHAPE[len(shape) - 2]
                kwargs.update(get_entry(name).tiny, img_size=shape[-1])
            torch.manual_seed(0)
            model = create_model(name, **kwargs).eval()
            x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
            model_dev, x_dev = copy.deepcopy(model).to(device), x.to(device)
            with scan_backend(oracle):
                t_cpu, _ = timed(model_forward(model, x, cpu), args.cpu_repeats, warmup=1)
                want, want_blocks = block_outputs(model, x, cpu)
            with scan_backend(args.backend):
                t_dev, _ = timed(model_forward(model_dev, x_dev, device), args.repeats, warmup=1, device=device)
                got, got_blocks = block_outputs(model_dev, x_dev, device)
                check_ran(cand)
            err = rel_err(got, want)
            block_err = max(rel_err(g, w) for g, w in zip(got_blocks, want_blocks, strict=True))
            ok &= max(err, block_err) <= args.tol
            params = sum(p.numel() for p in model.parameters())
            out(f"| {label}{' (tiny)' if args.tiny else ''} | {'×'.join(map(str, shape))} | {params / 1e6:.2f} M | "
                f"{fmt_ms(t_cpu)} | {fmt_ms(t_dev)} | {t_cpu / t_dev:.1f}× | {err:.1e} | "
                f"{block_err:.1e} ({len(want_blocks)}) |")
            del model_dev, x_dev
            if device.type == "cuda":
                torch.cuda.empty_cache()

    out()
    out(f"- All errors within their bounds ({args.tol:g} outputs, {args.grad_tol:g} gradients): "
        f"{'yes' if ok else 'NO'}")
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
