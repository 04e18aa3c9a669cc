"""Exporting an SSM model at paper size: the time each exporter takes, the size of what it writes, and
the time the ONNX file takes to load and to run, with the scan written the way an export now writes
it (~3·√L steps, ``ssm_models.scan._two_level_recurrence``) and the way it did before (a step per
time index), side by side in one run, each program's output against the model's in eager mode
(the cpu kernel). ONNX runs in onnxruntime's CPU provider.

    OMP_NUM_THREADS=1 python benchmarks/export_bench.py --out benchmarks/export_bench.md   # ~9 min
    OMP_NUM_THREADS=1 python benchmarks/export_bench.py --quick                           # ~1 min

Each export runs once (minutes each before); load and run times are medians of ``--repeats``. The
slowest row, the default (dynamo) ONNX exporter with per-step scans, runs only with ``--dynamo-per-step``.
Exit status 1 if a program is further than 1e-4 from the eager output (relative to its max).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import onnx
import onnxruntime
import torch

from bench.env import cpu_model
from bench.registry import create_model
from scan_bench import timed  # this folder leads sys.path when a benchmark runs as a script
from ssm_models import scan

TOL = 1e-4


def per_step(x, a):
    """A step per time index, out of place: the ONNX exports' recurrence before (torch.export traced the torch
    backend's own in-place loop then, a step per time index too)."""
    h = [x[0]]
    for t in range(1, x.shape[0]):
        h.append(torch.addcmul(x[t], a[t], h[-1]))
    return torch.stack(h)


@contextlib.contextmanager
def recurrence(kind: str):
    """``two-level`` (the export's own) or ``per-step`` (swapped in for this block)."""
    kept = scan._two_level_recurrence
    if kind == "per-step":
        scan._two_level_recurrence = per_step
    try:
        yield
    finally:
        scan._two_level_recurrence = kept


def export(route: str, model, x, folder: Path) -> tuple[float, dict]:
    """Export ``model`` by ``route``; the time it took and what to measure of the result."""
    start = time.perf_counter()
    if route == "torch.export":
        with scan.use_backend("torch"):  # the cpu backend's program calls the kernel's op: no steps
            program = torch.export.export(model, (x,))
        took = time.perf_counter() - start
        return took, {"nodes": len(program.graph.nodes), "run": program.module()}
    path = folder / f"{route.replace(' ', '_').replace(',', '').replace('=', '')}.onnx"
    if route == "ONNX, TorchScript-based":
        torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17)
    else:
        torch.onnx.export(model, (x,), path, dynamo=True, optimize="optimize=False" not in route)
    took = time.perf_counter() - start
    files = [p for p in folder.iterdir() if p.name.startswith(path.name)]  # the graph and its external data
    return took, {"nodes": len(onnx.load(str(path), load_external_data=False).graph.node),
                  "mb": sum(p.stat().st_size for p in files) / 1e6, "path": path}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vmunet", choices=["vmunet", "vmunet_v2", "lightm_unet"])
    ap.add_argument("--size", type=int, default=256, help="input side (VM-UNet's published FLOPs: 256)")
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny configuration")
    ap.add_argument("--repeats", type=int, default=3, help="loads and runs of each program (median)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dynamo-per-step", action="store_true", help="also the default exporter, per step")
    ap.add_argument("--quick", action="store_true", help="tiny VM-UNet at 64², 1 repeat")
    ap.add_argument("--out", help="also write the Markdown report to this file")
    args = ap.parse_args()
    if args.quick:
        args.tiny, args.size, args.repeats = True, 64, 1
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # the exporters' deprecation and tracer chatter
    lines: list[str] = []

    def out(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    load = os.getloadavg()[0]
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=9, img_size=args.size, tiny=args.tiny).eval()
    x = torch.randn(1, 3, args.size, args.size)
    with torch.no_grad(), scan.use_backend("cpu"):
        want = model(x)
        eager, _ = timed(lambda: model(x), args.repeats)
    rows = [("torch.export", "per-step"), ("torch.export", "two-level"),
            ("ONNX, TorchScript-based", "per-step"), ("ONNX, TorchScript-based", "two-level"),
            ("ONNX, dynamo", "two-level"), ("ONNX, dynamo, optimize=False", "two-level")]
    if args.dynamo_per_step:
        rows.insert(4, ("ONNX, dynamo", "per-step"))
    config = f"{'tiny ' if args.tiny else ''}{args.model} at {args.size}²"

    out("# Export benchmark (CPU)")
    out()
    out(f"Run on {datetime.date.today().isoformat()}: {cpu_model()}, {args.threads} thread(s) "
        f"(`OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}`), torch {torch.__version__}, "
        f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}. "
        f"Command: `python benchmarks/export_bench.py {' '.join(sys.argv[1:])}`.")
    out()
    out(f"Model: {config}, batch 1, float32 ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params); "
        f"in eager mode with the cpu kernel a forward takes {eager:.2f} s. Scan: `per-step` writes one step "
        f"per time index, out of place (the ONNX exports before; torch.export traced the torch backend's in-place "
        f"loop then), `two-level` ~3·√L (now). torch.export runs with the torch backend (with the "
        f"cpu backend its program calls the kernel's op instead). Export: one run; load (onnxruntime session) "
        f"and run: medians of {args.repeats}. Error: max |program − eager| / max |eager|.")
    out()
    out("| exporter | scan | export s | program nodes | file MB | load s | run s | error |")
    out("|---|---|---|---|---|---|---|---|")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for i, (route, kind) in enumerate(rows):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            with recurrence(kind):
                took, made = export(route, model, x, folder)
            if "path" in made:
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = args.threads
                loaded, session = timed(lambda: onnxruntime.InferenceSession(
                    str(made["path"]), options, providers=["CPUExecutionProvider"]), args.repeats)
                feed = {session.get_inputs()[0].name: x.numpy()}
                got = torch.from_numpy(session.run(None, feed)[0])
                ran, _ = timed(lambda: session.run(None, feed), args.repeats)
                mb, load_s = f"{made['mb']:.1f}", f"{loaded:.2f}"
            else:
                got = made["run"](x)
                ran, _ = timed(lambda: made["run"](x), args.repeats)
                mb, load_s = "n/a", "n/a"
            err = ((got - want).abs().max() / want.abs().max()).item()
            worst = max(worst, err)
            out(f"| {route} | {kind} | {took:.1f} | {made['nodes']} | {mb} | {load_s} | {ran:.2f} | {err:.1e} |")
    out()
    if not args.dynamo_per_step:
        out("- The default (dynamo) ONNX exporter with per-step scans not run (`--dynamo-per-step` runs it).")
    out(f"- Errors within {TOL:g}: {'yes' if worst <= TOL else 'NO'}")
    out(f"- Load average (1 min) at start / end: {load:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores "
        "(a shared machine makes single runs noisy)")
    if args.out:
        tmp_out = Path(args.out).with_suffix(".tmp")
        tmp_out.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(tmp_out, args.out)
    return 0 if worst <= TOL else 1


if __name__ == "__main__":
    sys.exit(main())
