"""`bench` command line: a table of contents. Commands parse options; library functions do the work."""

from __future__ import annotations

import collections
import enum
import os
import re
import shlex
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from bench.errors import BenchError, one_line
from bench.report.formats import ReportFormat  # not bench.report: its boards import pandas

app = typer.Typer(
    help="ssm-unet-bench: train and evaluate medical segmentation UNets under fixed protocols.\n\n"
    "Example: bench run --models all --dataset synapse --synthetic --protocol smoke",
    no_args_is_help=True, pretty_exceptions_show_locals=False, add_completion=False,
)
data_app = typer.Typer(
    help="Synthesize, convert and verify datasets in their real on-disk formats.\n\n"
    "Example: bench data synth --like isic --out data/isic-synth",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")

DEFAULT_RESULTS = Path("results")
VERIFY_SHOWN = 30  # problems bench data verify lists before counting the rest
# The published recipe each dataset defaults to. nnunet has none: its format holds any dataset
# (ACDC, X-ray, ...), so a run on it names its protocol rather than getting a smoke test silently.
DEFAULT_PROTOCOL = {"synapse": "synapse", "isic17": "isic17", "isic18": "isic18", "polyp": "polyp",
                    "isic_all": "isic_all"}


# options several commands declare alike
Models = Annotated[str, typer.Option(help="'all' or a comma list of registered models")]
FinishedRuns = Annotated[Path, typer.Option(help="results directory with the finished runs")]
RunsProtocol = Annotated[Optional[Path], typer.Option(help="the runs' protocol .toml, for runs of a file that is "
                                                      "not built in")]
ScoringThreads = Annotated[Optional[int], typer.Option(help="torch CPU threads (the run's own count repeats its CPU "
                                                            "predictions bit for bit)")]


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class SynthKind(str, enum.Enum):  # the formats, and the --dataset names that read them
    synapse = "synapse"
    isic = "isic"
    isic17 = "isic17"
    isic18 = "isic18"
    polyp = "polyp"
    nnunet = "nnunet"
    isic_all = "isic_all"


def _echo_err(msg: str) -> None:
    typer.secho(msg, fg=typer.colors.RED, err=True)


def _compute_setup(threads: int | None) -> None:
    """For the commands that run models: BENCH_SCAN_BACKEND names a backend that runs here (or they
    would stop at the first scan with a traceback, after training for rescore; doctor reports it),
    and --threads, torch's CPU threads, where given."""
    from ssm_models.scan import forced_backend_problem

    problem = forced_backend_problem()
    if problem:
        raise BenchError(f"{problem} (or unset it: automatic)")
    if threads is None:
        return
    if threads < 1:
        raise BenchError(f"--threads must be a whole number >= 1 (torch's CPU threads); got {threads}")
    import torch

    torch.set_num_threads(threads)


def _parse_ints(text: str, option: str = "--seeds", example: str = "0,1,2") -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise BenchError(f"{option} must be a comma list of integers, e.g. {example}; got {text!r}") from None
    if not values:  # an empty grid would run nothing and say nothing
        raise BenchError(f"{option} must list at least one integer, e.g. {example}; got {text!r}")
    return values


def _parse_spacing(text: str | None) -> str | list[float] | None:
    """--target-spacing: a name ("native", "nnunet"; checked with the protocol) or z,y,x (2-D patches: y,x) in mm."""
    if text is None or not any(c.isdigit() for c in text):
        return text
    try:
        return [float(s) for s in text.split(",")]
    except ValueError:
        raise BenchError(f"--target-spacing must be 'native', 'nnunet' or spacings in mm, one per patch axis, "
                         f"e.g. 1,0.8,0.8; got {text!r}") from None


def _parse_sets(items: list[str]) -> dict[str, object]:
    import ast

    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BenchError(f"--set expects key=value (a model constructor argument); got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def default_protocol(dataset: str, protocol: str | None) -> str:
    """The protocol a run uses: ``--protocol`` if given, else the dataset's (BenchError if none)."""
    if protocol:
        return protocol
    from bench.data import get_reader
    from bench.protocol import list_protocols, load_protocol

    get_reader(dataset)  # a misspelt dataset gets "did you mean", not "no default protocol"
    if dataset not in DEFAULT_PROTOCOL:
        fit = [p for p in list_protocols() if dataset in (load_protocol(p).datasets or (dataset,))]
        raise BenchError(f"--dataset {dataset} has no default protocol (no single published recipe fits every "
                         f"dataset in its format); pass --protocol NAME or a .toml path "
                         f"(built-in for {dataset}: {', '.join(fit)})")
    return DEFAULT_PROTOCOL[dataset]


def _argv_of(ctx: typer.Context, drop: tuple[str, ...] = ()) -> list[str]:
    """The options of this invocation as a command line (defaults left out), to start it again
    elsewhere (``bench run --nproc N`` starts torchrun with it)."""
    args = [ctx.info_name or ""]
    for param in ctx.command.params:  # typer's options (typer vendors click: no isinstance check)
        value = ctx.params.get(param.name)
        if param.name in drop or param.param_type_name != "option" or value is None or value == param.default:
            continue
        if getattr(param, "is_flag", False):  # --resume / --no-resume
            args.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            for v in value if param.multiple else [value]:
                args += [param.opts[0], str(getattr(v, "value", v))]
    return args


@app.command()
def run(
    ctx: typer.Context,
    models: Models = "all",
    dataset: Annotated[str, typer.Option(help="synapse, isic17, isic18, polyp, isic_all or nnunet")] = "synapse",
    protocol: Annotated[Optional[str], typer.Option(help="protocol name or .toml path "
                                                    "(default: the dataset's; nnunet has none)")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="comma list of seeds (default: the protocol's seed)")] = None,
    folds: Annotated[Optional[str], typer.Option(help="cross-validation folds, 'all' or a comma list (nnunet data)")] = None,
    shard: Annotated[Optional[str], typer.Option(help="K/N: run only share K of N of the grid (Slurm arrays)")] = None,
    data_root: Annotated[Optional[Path], typer.Option(help="dataset directory in its real on-disk format")] = None,
    synthetic: Annotated[bool, typer.Option(help="use a built-in synthetic dataset in the same format")] = False,
    results: Annotated[Path, typer.Option(help="results directory (records, runs, synthetic data)")] = DEFAULT_RESULTS,
    device: Annotated[Device, typer.Option(help="where to train")] = Device.auto,
    resume: Annotated[bool, typer.Option(help="continue killed runs from their last checkpoint")] = False,
    policy: Annotated[Optional[str], typer.Option(help="metric policy (default: the protocol's)")] = None,
    pretrained_dir: Annotated[Optional[Path], typer.Option(
        help="folder with the authors' pretrained files (`bench models` names them)")] = None,
    pretrained: Annotated[Optional[bool], typer.Option(
        "--pretrained/--no-pretrained", help="override the protocol's pretrained init (off-protocol)")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="override: marks the record off-protocol")] = None,
    max_iterations: Annotated[Optional[int], typer.Option(help="override: marks the record off-protocol")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="override: marks the record off-protocol")] = None,
    img_size: Annotated[Optional[int], typer.Option(
        help="override (whole-image protocols; patch protocols: --patch-size): marks the record off-protocol")] = None,
    patch_size: Annotated[Optional[str], typer.Option(
        help="override for patch protocols: the patch D,H,W (2-D: H,W) (off-protocol)")] = None,
    target_spacing: Annotated[Optional[str], typer.Option(
        help="override for patch protocols: 'native', 'nnunet' or z,y,x (2-D: y,x) in mm (off-protocol)")] = None,
    lr: Annotated[Optional[float], typer.Option(help="override: marks the record off-protocol")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="model constructor override key=value")] = None,
    tiny: Annotated[bool, typer.Option(help="use each model's tiny test configuration")] = False,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads (fix it for bit-reproducible runs)")] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    nproc: Annotated[int, typer.Option(help="train each run with N processes (torchrun, DDP; gloo on CPU, "
                                            "one GPU each on CUDA); the protocol's batch is the global batch")] = 1,
    weights: Annotated[Optional[Path], typer.Option(
        help="evaluate this weights file instead of training (one model): the authors' checkpoint, loaded "
             "strictly, or your own; its row reads 'model (weights FILE@sha)'")] = None,
) -> None:
    """Train and evaluate models on a dataset under a protocol; one record per (model, seed).

    Example: bench run --models all --dataset synapse --synthetic --protocol smoke
    """
    from bench import distributed
    from bench.data import get_reader
    from bench.env import resolve_device
    from bench.protocol import load_protocol
    from bench.registry import get_entry, resolve_models
    from bench.run import parse_shard, plan_grid, refuse_2d_models, resolve_inits, run_grid, select_shard

    _compute_setup(threads)
    if distributed.rank_from_env() != 0:  # a process of a torchrun: the first says the warnings for all
        warnings.simplefilter("ignore")
    _warned.update(distributed.warned_by_launcher())  # and not those the launcher said
    distributed.stop_with_launcher()
    if shard:
        parse_shard(shard)  # before anything is written
    names = resolve_models(models)
    dataset = get_reader(dataset).name  # any case; records and run ids hold the registered name
    proto = load_protocol(default_protocol(dataset, protocol))
    # --(no-)pretrained changes the recipe only where a chosen model has a pretrained file (an override
    # equal to the protocol's value changes nothing anywhere: Protocol.with_overrides)
    moot = not any(get_entry(n).init for n in names)
    patch = _parse_ints(patch_size, "--patch-size", "64,128,128") if patch_size else None
    proto = proto.with_overrides(epochs=epochs, max_iterations=max_iterations, batch_size=batch_size,
                                 img_size=img_size, patch_size=patch, lr=lr, pretrained=None if moot else pretrained,
                                 target_spacing=_parse_spacing(target_spacing))
    if weights is not None:  # evaluated, not trained: one model, and nothing that only training would use
        training = [f"--{k.replace('_', '-')}" for k, v in (("seeds", seeds), ("folds", folds), ("nproc", nproc != 1),
                    ("epochs", epochs), ("max_iterations", max_iterations), ("batch_size", batch_size), ("lr", lr),
                    ("no_pretrained" if pretrained is False else "pretrained", pretrained is not None),
                    ("pretrained_dir", pretrained_dir), ("resume", resume))
                    if v]
        if len(names) != 1 or training:
            asks = ([f"give one model (got {', '.join(names)})"] if len(names) != 1 else []) + (
                [f"drop {', '.join(training)}, which only a training would use"] if training else [])
            raise BenchError(f"--weights {weights}: evaluates one model's weights, without training; "
                             f"{' and '.join(asks)}")
    if weights is None:  # evaluated weights start from no pretrained file
        resolve_inits(names, proto, pretrained_dir)  # every missing file named at once, before anything runs
    refuse_2d_models(names, proto)  # likewise every 2-D model under a 3-D protocol (the grid plans one by one)
    dev = resolve_device(device.value)
    launch = nproc != 1 and not distributed.launched_by_torchrun()  # this process starts torchrun's
    if launch:
        distributed.check_nproc(nproc, dev, proto.train.batch_size)  # before --synthetic writes data
    seed_list = list(dict.fromkeys(_parse_ints(seeds))) if seeds else [proto.seed]  # each seed once
    overrides = _parse_sets(set_ or [])
    specs, said = [], {}

    def say_warnings(models) -> None:  # once each: the command line's warning display drops repeats
        for w in (w for name in models for w in said.get(name, [])):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    for name in names:
        try:
            with warnings.catch_warnings(record=True) as said[name]:  # said for the models this shard runs
                warnings.simplefilter("always")
                specs += plan_grid(
                    models=[name], dataset=dataset, protocol=proto, seeds=seed_list, data_root=data_root,
                    synthetic=synthetic, results_dir=results, policy=policy, model_overrides=overrides,
                    pretrained_dir=pretrained_dir, tiny=tiny, weights=weights,
                    folds=folds if folds in (None, "all") else list(dict.fromkeys(_parse_ints(folds, "--folds"))))
        except BenchError:
            say_warnings([name])  # what led up to the error
            raise
    total = len(specs)
    specs = select_shard(specs, shard)
    if not distributed.launched_by_bench():  # the launcher said them
        say_warnings(dict.fromkeys(s.model for s in specs))
    if launch:  # the grid is valid: start the processes
        raise typer.Exit(code=distributed.launch(nproc, _argv_of(ctx, drop=("nproc",)), warned=_warned))
    dev = distributed.init(dev)
    main = distributed.world().main
    # rank 0's plan for every rank: run ids of earlier path-identified runs depend on what is on disk
    specs = distributed.gather_objects(specs if main else None)[0]
    say = typer.echo if main else (lambda *a, **k: None)
    say(f"bench run: {len(specs)} run(s){f' (shard {shard} of {total})' if shard else ''} · dataset {dataset} · protocol {proto.name} v{proto.version} "
        f"({proto.hash}{', off-protocol' if proto.off_protocol else ''}) · device {dev}"
        + (f" · {distributed.world().size} processes" if distributed.world().distributed else ""))
    for note in dict.fromkeys(n for spec in specs for n in spec.notes):  # which split, once each
        say(f"note: {note}")
    run_grid(specs, results_dir=results, device=dev, resume=resume, show_progress=progress, say=say,
             say_error=_echo_err)


@app.command()
def report(
    results: Annotated[Path, typer.Option(help="results directory")] = DEFAULT_RESULTS,
    format: Annotated[ReportFormat, typer.Option("--format", help="output format; cases: every run x case x class "
                                                 "row as CSV, for statistics elsewhere")] = ReportFormat.md,
    out: Annotated[Optional[Path], typer.Option(help="write to this file instead of stdout (Markdown: plots go "
                                                     "to <stem>_files/ beside it)")] = None,
    published: Annotated[bool, typer.Option(help="add the papers' numbers next to ours (results/published.csv)")] = False,
    published_file: Annotated[Optional[Path], typer.Option(help="another published-numbers CSV")] = None,
    reference: Annotated[Optional[str], typer.Option(help="paired tests of every model against this one")] = None,
    models: Annotated[str, typer.Option(help="'all' or a comma list: only these models' runs and profiles")] = "all",
    dataset: Annotated[Optional[str], typer.Option(help="a comma list: only runs on these datasets (synapse, "
                                                        "isic17, ..., or a board's data name such as nnunet:ACDC)")] = None,
    columns: Annotated[Optional[str], typer.Option(help="the tables' columns (md, latex), a comma list of: paper "
                                                        "(= metrics,classes: the papers' layout), family, seeds, "
                                                        "params, time, cost, metrics, ci, classes, class-hd95; "
                                                        "default all")] = None,
) -> None:
    """Leaderboards (mean ± std over seeds, per organ) from the run records.

    Example: bench report --results results --format latex --columns paper --dataset synapse --out table.tex
    """
    from bench.records import ensure_writable_dir
    from bench.report import parse_columns, write_report

    groups = parse_columns(columns)  # before anything is read

    if out is not None:  # before the plots are drawn beside it
        if out.is_dir():
            raise BenchError(f"--out {out}: is a folder; give a file name, e.g. {out / 'report.md'}")
        ensure_writable_dir(out.parent, "--out")
    names = None if models.strip() == "all" else [m.strip() for m in models.split(",") if m.strip()]
    sets = [d.strip() for d in dataset.split(",") if d.strip()] if dataset else None
    text = write_report(results, format.value, out, published=published_file or published, reference=reference,
                        models=names, datasets=sets, columns=groups)
    if out is None:
        typer.echo(text)
    else:
        typer.echo(f"wrote {out}")


@app.command()
def rescore(
    policy: Annotated[str, typer.Option(help="the policy to score under: legacy-synapse, legacy-isic, strict "
                                             "or strict-monai")],
    results: FinishedRuns = DEFAULT_RESULTS,
    models: Models = "all",
    protocol: RunsProtocol = None,
    device: Annotated[Device, typer.Option(help="where to evaluate")] = Device.auto,
    threads: ScoringThreads = None,
) -> None:
    """Score finished runs under another metric policy from their saved weights.

    Nothing is trained again; one record <run_id>.<policy> per run, beside the original.

    Example: bench rescore --policy strict --results results
    """
    from bench.env import resolve_device
    from bench.registry import resolve_models
    from bench.protocol import load_protocol
    from bench.records import ensure_writable_dir, record_path, scores_text
    from bench.rescore import other_device_warning, plan_rescore, rescore_id, rescore_record

    _compute_setup(threads)
    dev = resolve_device(device.value)
    if protocol is not None:  # a broken file: one error before anything is scored
        load_protocol(protocol)
    todo = plan_rescore(results, policy, None if models == "all" else resolve_models(models))
    if todo:  # before anything is scored: a read-only or full folder failed after the first evaluation
        ensure_writable_dir(results / "records")
    if note := other_device_warning(todo, dev, "rescored"):
        warnings.warn(note, stacklevel=1)
    if not todo:
        typer.echo(f"bench rescore: nothing to score: every finished run has a record under {policy} already")
        return
    typer.echo(f"bench rescore: {len(todo)} run(s) to score under {policy} · device {dev}")

    def score(rec: dict) -> None:
        new_id = rescore_id(rec["run_id"], policy)
        try:  # another rescore of the folder may write a run's record first, before or while this one scores
            new = None if record_path(results, new_id).is_file() else rescore_record(rec, policy, results, dev, protocol)
        except BenchError:
            if not record_path(results, new_id).is_file():
                raise
            new = None
        if new is None:
            typer.echo(f"  {new_id}: scored meanwhile by another process, skipped")
        else:
            typer.echo(f"  {new['run_id']}: {scores_text(new, unit=True)}")

    _each_run(todo, score, "rescored")


@app.command()
def predict(
    out: Annotated[Path, typer.Option(help="folder for the predictions: one subfolder per run")],
    results: FinishedRuns = DEFAULT_RESULTS,
    models: Models = "all",
    run: Annotated[Optional[list[str]], typer.Option(help="only this run id (repeatable)")] = None,
    protocol: RunsProtocol = None,
    device: Annotated[Device, typer.Option(help="where to predict")] = Device.auto,
    native_size: Annotated[bool, typer.Option(help="ISIC/polyp: masks at each image's own size (the scored "
                                                   "ones are at model resolution); other data is native already")] = False,
    threads: ScoringThreads = None,
) -> None:
    """Write finished runs' predicted label maps for their test cases, from their saved weights.

    Exactly what the run's metrics were computed on, in the data's format (nnU-Net: <case><ending>
    with the label file's geometry; Synapse: NIfTI; ISIC/polyp: 0/255 PNG masks at model resolution,
    or with --native-size at each image's size).

    Example: bench predict --results results --out predictions --models vmunet
    """
    from bench.env import resolve_device
    from bench.predict import plan_predict, predict_run
    from bench.protocol import load_protocol
    from bench.records import ensure_writable_dir
    from bench.registry import resolve_models
    from bench.rescore import other_device_warning

    _compute_setup(threads)
    dev = resolve_device(device.value)
    if protocol is not None:  # a broken file: one error before anything is written
        load_protocol(protocol)
    todo = plan_predict(results, None if models == "all" else resolve_models(models), run)
    ensure_writable_dir(out, "--out")
    if note := other_device_warning(todo, dev, "predicted"):
        warnings.warn(note, stacklevel=1)
    typer.echo(f"bench predict: {len(todo)} run(s) · device {dev}")

    def write(rec: dict) -> None:
        folder, written = predict_run(rec, results, out, dev, protocol, native_size=native_size)
        done = f"{written} file(s) written" if written else "complete already, nothing written"
        typer.echo(f"  {rec['run_id']}: {done} -> {folder}")

    _each_run(todo, write, "predicted")


def _each_run(todo: list[dict], do: Callable[[dict], None], verb: str) -> None:
    """``do(record)`` for each finished run: one that cannot be done (weights deleted, damaged or no
    longer fitting a plugin's edited code) is one line and the rest are still done; then one error
    names those left out. A single run's error is its own line."""
    from bench.run import note_failure

    failed: list[str] = []
    for rec in todo:
        try:
            do(rec)
        except BenchError as exc:
            if len(todo) == 1:
                raise
            note_failure(rec["run_id"], exc, failed, _echo_err)
    if failed:
        others = ", the others were" if len(failed) < len(todo) else ""
        raise BenchError(f"{len(failed)} of {len(todo)} run(s) could not be {verb} ({', '.join(failed)}){others}; "
                         "after fixing the cause, the same command does the rest")


@app.command()
def check(
    baseline: Annotated[Path, typer.Option(help="committed baseline CSV, e.g. results/baseline/smoke.csv")],
    results: Annotated[Path, typer.Option(help="results directory with the current records")] = DEFAULT_RESULTS,
    update: Annotated[bool, typer.Option(help="(re)write the baseline from the current results instead")] = False,
    prune: Annotated[bool, typer.Option(help="with --update: drop baseline rows the current results have no value "
                                             "for (refused otherwise)")] = False,
    changes_only: Annotated[bool, typer.Option(help="list only the rows that are not ok (a long grid's CI log)")] = False,
) -> None:
    """Compare current results with a baseline; exit 1 when any metric drifts past its tolerance.

    Example: bench check --baseline results/baseline/smoke.csv --results /tmp/smoke
    """
    from bench import drift, records

    if prune and not update:
        raise BenchError("--prune goes with --update (it drops baseline rows while rewriting the file)")
    df = records.load(results)
    if records.finished(df).empty:  # most likely not the folder meant: not drift
        raise BenchError(f"No finished runs found in {results}: pass the --results folder of the grid's runs")
    if update:
        rows, dropped = drift.write_baseline(df, baseline, prune=prune)
        typer.echo(f"wrote baseline {baseline} from {len(df)} run(s): {rows} rows"
                   + (f" ({dropped} dropped by --prune)" if dropped else ""))
        return
    result = drift.compare(baseline, df)
    typer.echo(result.render(only_changes=changes_only))
    if result.failed:
        n = result.counts()
        what = [f"{n['drift']} value(s) drifted past their tolerance" if n["drift"] else "",
                f"{n['missing']} baseline row(s) have no value now" if n["missing"] else ""]
        update = f"bench check --update --baseline {shlex.quote(str(baseline))} --results {shlex.quote(str(results))}"
        _echo_err(f"{' and '.join(w for w in what if w)}: see the rows marked above. If the change is meant, "
                  f"`{update}` rewrites the values (hand-edited tolerances kept); else widen a row's tolerance "
                  "(absolute, in its metric's unit) by hand")
        if result.moved():
            _echo_err(f"{result.moved()} of them are back under a tagged label ('name@hash', '(data …)', '(init …)'): "
                      "other runs in the results folder (another protocol version, other data or pretrained files) "
                      "change how boards label the grid's runs; check the drift grid in a folder of its own")
        if result.relabelled():
            _echo_err(f"{result.relabelled()} of them may be back under a new label: boards now call --tiny runs "
                      "'model (tiny)'; if so, bench check --update renames the baseline's rows, keeping hand-edited "
                      "tolerances")
        raise typer.Exit(code=1)


class ProfileFormat(str, enum.Enum):
    md = "md"
    csv = "csv"
    json = "json"


@app.command()
def profile(
    models: Models = "all",
    img_size: Annotated[int, typer.Option(help="input side (square; a cube for 3-D variants: --set spatial_dims=3)")] = 224,
    num_classes: Annotated[int, typer.Option(help="output classes (9: Synapse, 1: ISIC)")] = 9,
    in_chans: Annotated[int, typer.Option(help="input channels")] = 3,
    batch_size: Annotated[Optional[str], typer.Option(help="also measure throughput at this batch (>= 2), or "
                                                           "'auto': the largest power of two that fits "
                                                           "(default: batch 1 only)")] = None,
    device: Annotated[Device, typer.Option(help="where to time (counts are always taken on CPU)")] = Device.auto,
    precision: Annotated[str, typer.Option(help="fp32 (TF32 off), tf32, bf16 or fp16 (autocast); a comma "
                                                "list times each, counting once")] = "fp32",
    channels_last: Annotated[bool, typer.Option(help="time with channels_last memory format")] = False,
    compile: Annotated[bool, typer.Option(help="time the torch.compile'd model")] = False,
    warmup: Annotated[int, typer.Option(help="untimed forwards first")] = 20,
    iters: Annotated[int, typer.Option(help="timed forwards (median and p90 over them)")] = 100,
    timing: Annotated[bool, typer.Option(help="measure latency, FPS and memory (else counts only)")] = True,
    tiny: Annotated[bool, typer.Option(help="use each model's tiny test configuration")] = False,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="model constructor override key=value")] = None,
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

    from bench import cost
    from bench.env import resolve_device
    from bench.records import ensure_writable_dir
    from bench.registry import resolve_models
    from bench.report import profile_labels, render_cost_md

    _compute_setup(threads)
    if batch_size is not None and batch_size != "auto" and not (batch_size.isdecimal() and int(batch_size) >= 2):
        raise BenchError(f"--batch-size: expected a whole number >= 2 or 'auto' (batch 1 is always timed); "
                         f"got {batch_size!r}")
    batch = 0 if batch_size is None else batch_size if batch_size == "auto" else int(batch_size)
    if iters < 1 or warmup < 0:
        raise BenchError("--iters must be >= 1 and --warmup >= 0")
    if not timing:  # options of the timing only: recorded, they would claim what was not measured
        given = [o for o, v in (("--compile", compile), ("--channels-last", channels_last),
                                ("--batch-size", batch_size is not None), ("--precision", precision != "fp32")) if v]
        if given:
            raise BenchError(f"{', '.join(given)} with --no-timing: {'they choose' if len(given) > 1 else 'it chooses'}"
                             " how models are timed, and --no-timing times none")
    if compile and timing and warmup < 1:  # the first call compiles: timed, it would be the p90
        raise BenchError("--warmup 0 with --compile: the first forward compiles the model; give --warmup >= 1")
    for option, value in (("--img-size", img_size), ("--num-classes", num_classes), ("--in-chans", in_chans)):
        if value < 1:
            raise BenchError(f"{option}: expected a whole number >= 1; got {value}")
    dev = resolve_device(device.value)
    precisions = [p.strip() for p in precision.split(",")]
    twice = sorted({p for p in precisions if precisions.count(p) > 1})
    if twice:  # each would be timed, and the second record would replace the first
        raise BenchError(f"--precision: {', '.join(twice)} given twice")
    for p in precisions:  # before any model is built
        cost.check_precision(p, dev)
    ensure_writable_dir(results / cost.PROFILE_DIR)  # before anything is timed
    rows, sets = [], _parse_sets(set_ or [])
    for name in resolve_models(models):
        counts = None  # the counts do not depend on the precision: taken once per model
        for p in precisions:
            row = cost.profile_model(name, img_size=img_size, num_classes=num_classes, in_chans=in_chans,
                                     device=dev, precision=p, batch_size=batch, warmup=warmup, iters=iters,
                                     channels_last=channels_last, compile=compile, timing=timing, overrides=sets,
                                     tiny=tiny, counts=counts)
            counts = row
            cost.write_profile(row, results)
            rows.append(row)
            timed = f", {p} {row['latency_ms_median']:.1f} ms/forward" if "latency_ms_median" in row else ""
            label = profile_labels(pd.DataFrame([row]))[0]  # as the tables name it: "unet (tiny)"
            typer.echo(f"  profiled {label}: {row['macs'] / 1e9:.3g} GMACs{timed}", err=True)  # progress

    frame = pd.DataFrame(rows)
    if format == ProfileFormat.md:
        typer.echo(render_cost_md(frame))
    elif format == ProfileFormat.csv:
        cols = [c for c in cost.PROFILE_COLUMNS if c in frame.columns]
        table = frame[cols].copy()
        # the tables' labels ("unet (tiny)") and the configuration, as the JSON output has it
        table.insert(cols.index("model") + 1 if "model" in cols else 0, "label", profile_labels(frame))
        table["model_config"] = [json.dumps(c, sort_keys=True) for c in frame["model_config"]]
        for col in ("params", "trainable_params", "paper_params", "macs", "flops", "scan_macs", "paper_macs",
                    "fvcore_macs", "batch_size", "throughput_batch"):  # counts: no "49545216.0"
            if col in table:
                table[col] = pd.to_numeric(table[col]).round().astype("Int64")
        typer.echo(table.to_csv(index=False, lineterminator="\n"), nl=False)
    else:  # with the tables' labels too, as the CSV has them
        labels = profile_labels(frame)
        typer.echo(json.dumps([{**r, "label": label} for r, label in zip(rows, labels)], indent=1, default=str))


@app.command()
def models() -> None:
    """List registered models with family, paper configuration and source.

    Example: bench models
    """
    from bench.registry import get_entry, is_builtin, list_models

    typer.echo(f"{'model':12s} {'family':12s} description")
    for name in list_models():
        e = get_entry(name)
        cfg = ", ".join(f"{k}={v}" for k, v in e.paper_config.items())
        init = (f"{e.init[1]} (load_weights source {e.init[0]!r})" if e.init
                else "none (the authors train from scratch)" if is_builtin(name) else "none")
        typer.echo(f"{name:12s} {e.family:12s} {e.description}\n{'':25s}paper config: {cfg}\n{'':25s}source: {e.source}"
                   f"\n{'':25s}pretrained init: {init}")


@app.command()
def doctor() -> None:
    """Code version, Python/torch/CUDA versions, the selective-scan backend and why, mamba-ssm, model plugins.

    Example: bench doctor
    """
    import platform

    import torch

    from bench import env
    from bench.records import code_version, short_commit

    typer.echo(f"python       {platform.python_version()} ({sys.executable})")
    # what run records will name the code by (records.code_version): the commit, else the sources' digest
    commit = env.git_commit()
    typer.echo(f"code         {short_commit(code_version(commit, env.source_digest()))}"
               f"{'' if commit else ' (outside a git checkout)'}")
    for name, version in env.package_versions().items():
        typer.echo(f"{name:28s} {version or '-'}")
    cuda = torch.cuda.is_available()
    typer.echo(f"torch CUDA   {'available: ' + torch.cuda.get_device_name(0) if cuda else 'not available'}"
               f" (built with CUDA {torch.version.cuda})")
    typer.echo(f"threads      {torch.get_num_threads()} of {os.cpu_count()} cores")
    typer.echo(f"device       {env.short_fingerprint(env.fingerprint('cuda' if cuda else 'cpu'))}")
    try:
        from ssm_models.scan import backend_report  # provided by the SSM models

        typer.echo(f"scan backend {backend_report()}")
    except ImportError:
        typer.echo("scan backend n/a: no SSM model is installed yet (ssm_models.scan missing)")
    typer.echo(f"mamba-ssm    {_mamba_status()}")
    from bench import registry

    registry.list_models()  # loads the plugins
    plugins = [f"{k}: {', '.join(v) or 'no models'}" for k, v in registry.PLUGIN_MODELS.items()]
    plugins += [f"{k}: failed to load ({v})" for k, v in registry.PLUGIN_ERRORS.items()]
    typer.echo(f"plugins      {'; '.join(plugins) or f'none (entry point group {registry.ENTRY_POINT_GROUP})'}")


def _mamba_status() -> str:
    """Whether mamba-ssm and its compiled kernels load, without importing mamba_ssm itself
    (12 s of imports on CPU, and it fails there without its CUDA extension)."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("mamba_ssm") is None:
        return "not installed (CPU machines use the built-in scan; `make setup` adds it where CUDA exists)"
    parts = []
    for ext in ("selective_scan_cuda", "causal_conv1d_cuda"):
        try:
            importlib.import_module(ext)
            parts.append(f"{ext} loads")
        except Exception as exc:  # ImportError, OSError from a CUDA/ABI mismatch, …
            parts.append(f"{ext} does not load ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})")
    return "installed; " + "; ".join(parts)


@data_app.command("synth")
def data_synth(
    like: Annotated[SynthKind, typer.Option(help="which real on-disk format to write")],
    out: Annotated[Path, typer.Option(help="output directory (created)")],
    seed: Annotated[Optional[int], typer.Option(help="generator seed; same seed, same data (default: that of "
                                                      "`bench run --synthetic` for this dataset)")] = None,
) -> None:
    """Write a small, deterministic, learnable dataset in a real on-disk format.

    Example: bench data synth --like synapse --out data/synapse-synth
    """
    from bench.data import SYNTH_SEEDS, get_reader
    from bench.data.synth import KINDS, synthesize

    if seed is not None and seed < 0:  # numpy's generators take seeds >= 0
        raise BenchError(f"--seed must be a whole number >= 0; got {seed}")
    kind = like.value if like.value in KINDS else get_reader(like.value).kind
    path = synthesize(kind, out, seed=SYNTH_SEEDS.get(like.value, 0) if seed is None else seed)
    typer.echo(f"wrote synthetic {like.value} dataset to {path}")


class ConvertSource(str, enum.Enum):
    btcv = "btcv"
    msd = "msd"


@data_app.command("convert")
def data_convert(
    source: Annotated[ConvertSource, typer.Option(help="what --raw holds: btcv = BTCV's RawData/Training "
                                                      "(img/imgXXXX.nii.gz, label/labelXXXX.nii.gz); msd = a Medical "
                                                      "Segmentation Decathlon task folder (e.g. Task03_Liver)")],
    raw: Annotated[Path, typer.Option(help="the downloaded data's folder")],
    out: Annotated[Path, typer.Option(help="output directory (created)")],
) -> None:
    """Convert data as distributed into the layout a reader expects.

    btcv -> TransUNet's Synapse layout (HU window [-125, 275] scaled to [0, 1], TransUNet's 18/12
    split, spacing.csv); organ ids in the tables' column order, 1 aorta ... 8 stomach (the circulating
    files' order is undocumented; bench data verify infers a copy's from its organs' sizes);
    msd -> nnU-Net v2's raw layout (as nnUNetv2_convert_MSD_dataset: modalities split into _0000, ...).

    Example: bench data convert --source msd --raw Task03_Liver --out data/Dataset003_Liver
    """
    from bench.data.convert import btcv_to_synapse, msd_to_nnunet

    if source is ConvertSource.btcv:
        path, dataset = btcv_to_synapse(raw, out), "synapse"
    else:
        path, dataset = msd_to_nnunet(raw, out), "nnunet"
    typer.echo(f"wrote the {'Synapse' if dataset == 'synapse' else 'nnU-Net v2 raw'} layout to {path}; check it "
               f"with: bench data verify --dataset {dataset} --data-root {shlex.quote(str(path))}")


@data_app.command("verify")
def data_verify(
    dataset: Annotated[str, typer.Option(help="synapse, isic17, isic18, polyp, isic_all or nnunet")],
    data_root: Annotated[Path, typer.Option(help="dataset directory")],
    all_: Annotated[bool, typer.Option("--all", help=f"list every problem (else the first {VERIFY_SHOWN}, "
                                                     "then a count of each kind)")] = False,
) -> None:
    """Check a dataset: files present and readable, shapes, dtypes, label range, list files.

    Notes on whether the split is the papers' (Synapse, ISIC, polyp, merged ISIC) and on Synapse's
    label order; for nnU-Net volumes, their voxel spacings and the 3d_fullres target spacing.

    Example: bench data verify --dataset synapse --data-root data/Synapse
    """
    from bench.data import get_reader
    from bench.data.verify import dataset_notes, verify_dataset

    dataset = get_reader(dataset).name  # any case, as bench run takes it
    problems = sorted(verify_dataset(dataset, data_root), key=lambda p: p.level != "error")  # errors first
    for p in problems if all_ else problems[:VERIFY_SHOWN]:
        _echo_err(f"{p.level}: {p.path}: {p.message}")
    if not all_ and len(problems) > VERIFY_SHOWN:  # 2,000 masks saved as 0/1 read as 2,000 lines
        kinds = collections.Counter(f"{p.level}: {re.sub(r'[0-9]+', 'N', p.message)[:80]}"
                                    for p in problems[VERIFY_SHOWN:])
        _echo_err(f"... and {len(problems) - VERIFY_SHOWN} more (--all lists them): "
                  + "; ".join(f"{n} × {kind}" for kind, n in kinds.most_common(5))
                  + ("; …" if len(kinds) > 5 else ""))
    errors = [p for p in problems if p.level == "error"]
    if errors:
        _echo_err(f"{len(errors)} error(s) in {data_root}")
        raise typer.Exit(code=1)
    for note in dataset_notes(dataset, data_root):  # the data loads; how it compares with papers
        typer.echo(f"note: {note}")
    typer.echo(f"{data_root}: OK ({dataset}" + (f", {len(problems)} warning(s))" if problems else ")"))


_warned: set[str] = set()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` on the command line: one line per warning, without the source line,
    and each text once (planning a grid and running it build the same model and meet the same warning)."""
    text = str(message)
    if text not in _warned:
        _warned.add(text)
        kind = "" if category is UserWarning else f" ({category.__name__})"
        typer.secho(f"warning{kind}: {text}", fg=typer.colors.YELLOW, err=True)


def main() -> None:
    """Console entry point: user errors print one line and exit 2, warnings one line each (tracebacks
    and Python's own warning format with BENCH_DEBUG=1)."""
    handles = threading.current_thread() is threading.main_thread()
    # SIGTERM (what Slurm and torchrun send first) as Ctrl-C: cleanup runs (temp files, the run's
    # claim) and the command says so, where the process died with neither
    previous = signal.signal(signal.SIGTERM, _interrupt) if handles else None
    try:
        _main()
    finally:
        # called in-process (tests, a notebook): the caller's handler back, or processes it forks later
        # inherit ours (a multiprocessing pool's terminate() then hangs); kept once a SIGTERM came
        if handles and signal.getsignal(signal.SIGTERM) is _interrupt:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _main() -> None:
    try:  # typer >= 0.20 carries its own copy of click
        from typer._click.exceptions import UsageError
    except ImportError:
        from click.exceptions import UsageError

    if not os.environ.get("BENCH_DEBUG"):
        warnings.showwarning = _show_warning
    from bench import distributed

    try:
        code = app(standalone_mode=False, prog_name="bench")  # click's usage errors reach us: one line each
    except BenchError as exc:
        if os.environ.get("BENCH_DEBUG"):
            raise
        line = f"error: {one_line(exc)}"
        if not distributed.note_error(line):  # kept for `bench run --nproc`'s launcher, else said here
            _echo_err(line)
        sys.exit(2)
    except UsageError as exc:  # a value outside an option's choices, a missing or unknown option
        if os.environ.get("BENCH_DEBUG"):
            raise
        line = f"error: {_usage_line(exc)}"
        if not distributed.note_error(line):
            _echo_err(line)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except Exception as exc:
        # a collective failing because another process died: that one's line (or the launcher's) tells
        if not distributed.lost_peer(exc) or os.environ.get("BENCH_DEBUG"):
            raise
        line = f"error: another process of this run is gone ({' '.join(str(exc).split())[:200]})"
        if not distributed.note_error(line):
            _echo_err(line)
        distributed.orphaned()
        sys.exit(distributed.LOST_PEER_EXIT)
    if code == 130 and distributed.launched_by_bench():
        if distributed.orphaned() and distributed.rank_from_env() == 0:  # the launcher was killed: none says it
            _echo_err("interrupted: the launcher is gone; the same command with --resume continues from the last "
                      "checkpoint")
        sys.exit(code)  # the launcher says it, once
    if code == 130:  # Ctrl-C or SIGTERM (typer returns 130 for them)
        _echo_err("interrupted; the same command continues (bench run: with --resume, from each run's last "
                  "checkpoint, written every checkpoint_every epochs of its protocol)")
    sys.exit(code if isinstance(code, int) else 0)


def _interrupt(signum, frame) -> None:
    # once: the cleanup must not be cut short by another (a dying launcher signals once per thread)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


_SYNONYMS = {"gpu": "cuda"}  # what users type for a choice whose spelling is not close


def _usage_line(exc) -> str:
    """Click's message on one line, with a "did you mean" among an option's choices; the command's
    --help named."""
    import difflib

    text = " ".join(exc.format_message().split()).replace("Value error, ", "")
    given = re.search(r"'([^']*)' is not one of (.*)", text)  # the choices, as the message lists them
    if given:
        choices = re.findall(r"'([^']*)'", given.group(2))
        close = [c for c in choices if c == _SYNONYMS.get(given.group(1))] or \
            difflib.get_close_matches(given.group(1), choices, n=1, cutoff=0.5)
        text += f" Did you mean {close[0]!r}?" if close else ""
    where = f"{exc.ctx.command_path} --help" if getattr(exc, "ctx", None) else "bench --help"
    return f"{text} ({where})"
