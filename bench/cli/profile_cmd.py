"""`bench profile`: params, FLOPs, latency, FPS and peak memory of models."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from bench.cli.options import DEFAULT_RESULTS, ModelSets, Models, _compute_setup, _parse_sets, device_option
from bench.errors import BenchError


class ProfileFormat(str, enum.Enum):
    md = "md"
    latex = "latex"
    csv = "csv"
    json = "json"


def profile(
    models: Models = "all",
    img_size: Annotated[int, typer.Option(help="input side (square; a cube for 3-D variants: --set spatial_dims=3)")] = 224,
    num_classes: Annotated[int, typer.Option(help="output classes (9: Synapse, 1: ISIC)")] = 9,
    in_chans: Annotated[int, typer.Option(help="input channels")] = 3,
    batch_size: Annotated[Optional[str], typer.Option(help="also measure throughput at this batch (>= 2), or "
                                                           "'auto': the largest power of two that fits "
                                                           "(default: batch 1 only)")] = None,
    device: Annotated[str, device_option("where to time (counts are always taken on CPU)")] = "auto",
    precision: Annotated[str, typer.Option(help="fp32 (TF32 off), tf32, bf16 or fp16 (autocast); a comma "
                                                "list times each, counting once")] = "fp32",
    channels_last: Annotated[bool, typer.Option(help="time with channels_last memory format")] = False,
    compile: Annotated[bool, typer.Option(help="time the torch.compile'd model")] = False,
    warmup: Annotated[int, typer.Option(help="untimed forwards first")] = 20,
    iters: Annotated[int, typer.Option(help="timed forwards (median and p90 over them)")] = 100,
    timing: Annotated[bool, typer.Option(help="measure latency, FPS and memory (else counts only)")] = True,
    tiny: Annotated[bool, typer.Option(help="use each model's tiny test configuration")] = False,
    set_: ModelSets = None,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads (part of the fingerprint)")] = None,
    results: Annotated[Path, typer.Option(help="results directory (profile records go to profiles/)")] = DEFAULT_RESULTS,
    format: Annotated[ProfileFormat, typer.Option("--format", help="what to print")] = ProfileFormat.md,
) -> None:
    """Params, FLOPs (selective scan included), latency, FPS and peak memory of models.

    thop's paper convention beside our FLOPs; one record per model under RESULTS/profiles, joined
    by `bench report`.

    Example: bench profile --models all --img-size 224 --device cpu --iters 20
    """
    import json

    import pandas as pd

    from bench import cost, profiles
    from bench.env import resolve_device
    from bench.fileio import ensure_writable_dir
    from bench.registry import resolve_models
    from bench.records import canonical_json
    from bench.report import profile_labels, render_cost_latex, render_cost_md
    from bench.report.tables import as_counts

    _compute_setup(threads)
    batch = cost.check_batch_size(batch_size, "--batch-size")
    if timing:
        cost.check_timing(iters, warmup, compile)
    else:  # options of the timing only: recorded, they would claim what was not measured
        given = [o for o, v in (("--compile", compile), ("--channels-last", channels_last),
                                ("--batch-size", batch_size is not None), ("--precision", precision != "fp32")) if v]
        if given:
            raise BenchError(f"{', '.join(given)} with --no-timing: {'they choose' if len(given) > 1 else 'it chooses'}"
                             " how models are timed, and --no-timing times none")
    for option, value in (("--img-size", img_size), ("--num-classes", num_classes), ("--in-chans", in_chans)):
        if value < 1:
            raise BenchError(f"{option}: expected a whole number >= 1; got {value}")
    dev = resolve_device(device)
    precisions = [p.strip() for p in precision.split(",")]
    twice = sorted({p for p in precisions if precisions.count(p) > 1})
    if twice:  # each would be timed, and the second record would replace the first
        raise BenchError(f"--precision: {', '.join(twice)} given twice")
    for p in precisions:  # before any model is built
        cost.check_precision(p, dev)
    names, sets = resolve_models(models), _parse_sets(set_ or [])
    ensure_writable_dir(results / profiles.PROFILE_DIR)  # before anything is timed, after the names are known
    rows = []
    for name in names:
        counts = None  # the counts do not depend on the precision: taken once per model
        for p in precisions:
            row = cost.profile_model(name, img_size=img_size, num_classes=num_classes, in_chans=in_chans,
                                     device=dev, precision=p, batch_size=batch, warmup=warmup, iters=iters,
                                     channels_last=channels_last, compile=compile, timing=timing, overrides=sets,
                                     tiny=tiny, counts=counts)
            counts = row
            profiles.write_profile(row, results)
            rows.append(row)
            timed = f", {p} {row['latency_ms_median']:.1f} ms/forward" if "latency_ms_median" in row else ""
            label = profile_labels(pd.DataFrame([row]))[0]  # as the tables name it: "unet (tiny)"
            typer.echo(f"  profiled {label}: {row['macs'] / 1e9:.3g} GMACs{timed}", err=True)  # progress

    frame = pd.DataFrame(rows)
    if format == ProfileFormat.md:
        typer.echo(render_cost_md(frame))
    elif format == ProfileFormat.latex:  # as bench report's LaTeX has them (--columns paper,cost: a paper's few)
        from bench.report.tables import latex_header, warn_outside_latin1

        tex = latex_header() + "\n\n" + render_cost_latex(frame, label="profile")  # labels of its own
        warn_outside_latin1(tex)
        typer.echo(tex)
    elif format == ProfileFormat.csv:
        cols = [c for c in profiles.PROFILE_COLUMNS if c in frame.columns]
        table = frame[cols].copy()
        # the tables' labels ("unet (tiny)") and the configuration, as the JSON output has it
        table.insert(cols.index("model") + 1 if "model" in cols else 0, "label", profile_labels(frame))
        table["model_config"] = [canonical_json(c) for c in frame["model_config"]]  # as records.load has it
        as_counts(table, ("params", "trainable_params", "paper_params", "macs", "flops", "scan_macs", "paper_macs",
                          "fvcore_macs", "batch_size", "throughput_batch", "warmup_iters", "timed_iters"))
        typer.echo(table.to_csv(index=False, lineterminator="\n"), nl=False)
    else:  # with the tables' labels too, as the CSV has them
        labels = profile_labels(frame)
        typer.echo(json.dumps([{**r, "label": label} for r, label in zip(rows, labels)], indent=1, default=str))
