"""`bench run`, which trains and evaluates a grid of runs, and the commands that reuse finished runs'
weights: `bench rescore`, `bench predict`."""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Callable, Iterable, Optional

import typer

from bench.cli.console import _echo_err, _warned
from bench.cli.options import (DEFAULT_RESULTS, DataName, DataRoot, FinishedRuns, ModelSets, Models, MovedData,
                               ProtocolName, RunDatasets, RunsProtocol, ScoringThreads, Synthetic,
                               _compute_setup, _parse_sets, _parse_spacing, device_option, policy_option)
from bench.errors import BenchError, HeldError, few
from bench.names import int_list, name_list

# The published recipe each dataset defaults to. nnunet has none: its format holds any dataset
# (ACDC, X-ray, ...), so a run on it names its protocol rather than getting a smoke test silently.
DEFAULT_PROTOCOL = {"synapse": "synapse", "isic17": "isic17", "isic18": "isic18", "polyp": "polyp",
                    "isic_all": "isic_all"}


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
    elsewhere (``bench run --nproc N`` starts its processes with it)."""
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


def run(
    ctx: typer.Context,
    models: Models = "all",
    dataset: DataName = "synapse",
    protocol: ProtocolName = None,
    seeds: Annotated[Optional[str], typer.Option(help="comma list of seeds (default: the protocol's seed)")] = None,
    folds: Annotated[Optional[str], typer.Option(help="cross-validation folds, 'all' or a comma list (nnunet data)")] = None,
    shard: Annotated[Optional[str], typer.Option(help="K/N: run only share K of N of the grid (Slurm arrays)")] = None,
    data_root: DataRoot = None,
    synthetic: Synthetic = False,
    results: Annotated[Path, typer.Option(help="results directory (records, runs, synthetic data)")] = DEFAULT_RESULTS,
    device: Annotated[str, device_option("where to train")] = "auto",
    resume: Annotated[bool, typer.Option(help="continue killed runs from their last checkpoint")] = False,
    policy: Annotated[Optional[str], policy_option("metric policy (default: the protocol's)")] = None,
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
    set_: ModelSets = None,
    tiny: Annotated[bool, typer.Option(help="use each model's tiny test configuration")] = False,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads (fix it for bit-reproducible runs)")] = None,
    workers: Annotated[Optional[int], typer.Option(
        help="data-loader processes (default: the protocol's num_workers); batches are the same whatever the "
             "count, so a run keeps its id and numbers")] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    nproc: Annotated[int, typer.Option(help="train each run with N processes (DDP; gloo on CPU, "
                                            "one GPU each on CUDA); the protocol's batch is the global batch")] = 1,
    weights: Annotated[Optional[Path], typer.Option(
        help="evaluate this weights file instead of training (one model): the authors' checkpoint, loaded "
             "strictly, or your own; its row reads 'model (weights FILE@sha)'")] = None,
    dry_run: Annotated[bool, typer.Option(
        help="list the grid's runs, each done, finished (no record), partial, running or missing (with --shard K/N: "
             "every shard's runs, each with its shard), then exit; nothing is trained or written")] = False,
    from_record: Annotated[Optional[Path], typer.Option(
        help="re-run the run of this record (records/<run_id>.json or its runs/<run_id> folder) as it ran: same "
             "model, data, split, seed, policy and protocol (rebuilt from the record), so the same run id, and "
             "compare its numbers with the record's; a records or results folder: every record in it")] = None,
) -> None:
    """Train and evaluate models on a dataset under a protocol; one record per (model, seed[, fold]).

    Example: bench run --models all --dataset synapse --synthetic --protocol smoke
    """
    from bench import distributed
    from bench.data import get_reader
    from bench.env import resolve_device
    from bench.protocol import load_protocol
    from bench.registry import get_entry, resolve_models
    from bench.run import check_workers, parse_shard, refuse_2d_models, resolve_inits, seed_list, select_shard

    _compute_setup(threads)
    if distributed.rank_from_env() != 0:  # a process of a torchrun: the first says the warnings for all
        warnings.simplefilter("ignore")
    _warned.update(distributed.warned_by_launcher())  # and not those the launcher said
    distributed.stop_with_launcher()
    if shard:
        parse_shard(shard)  # before anything is written
    check_workers(workers)  # before what needs files is checked
    if from_record:
        from bench.cli.rerun_cmd import refuse_other_options, rerun_records

        refuse_other_options(ctx, from_record)
        rerun_records(ctx, from_record, results=results, data_root=data_root, weights=weights,
                      pretrained_dir=pretrained_dir, device=device, resume=resume, threads=threads, workers=workers,
                      progress=progress, nproc=nproc, dry_run=dry_run)
        return
    names = resolve_models(models)
    dataset = get_reader(dataset).name  # any case; records and run ids hold the registered name
    proto = load_protocol(default_protocol(dataset, protocol))
    # --(no-)pretrained changes the recipe only where a chosen model has a pretrained file (an override
    # equal to the protocol's value changes nothing anywhere: Protocol.with_overrides)
    moot = not any(get_entry(n).init for n in names)
    patch = int_list(patch_size, "--patch-size", "64,128,128") if patch_size else None
    proto = proto.with_overrides(epochs=epochs, max_iterations=max_iterations, batch_size=batch_size,
                                 img_size=img_size, patch_size=patch, lr=lr, pretrained=None if moot else pretrained,
                                 target_spacing=_parse_spacing(target_spacing))
    if weights is not None:  # evaluated, not trained: one model, and nothing that only training would use
        flag = "no_pretrained" if pretrained is False else "pretrained"
        training = training_options(seeds=seeds, folds=folds, nproc=nproc != 1, epochs=epochs,
                                    max_iterations=max_iterations, batch_size=batch_size, lr=lr,
                                    **{flag: pretrained is not None}, pretrained_dir=pretrained_dir, resume=resume)
        if len(names) != 1 or training:
            # --models left out is every model (its default, all): the option to give, by its name
            got = f"all {len(names)} models" if name_list(models) is None else ", ".join(names)
            asks = ([f"give one model: --models NAME (got {got})"] if len(names) != 1 else []) + (
                [f"drop {', '.join(training)}, which only a training would use"] if training else [])
            raise BenchError(f"--weights {weights}: evaluates one model's weights, without training; "
                             f"{' and '.join(asks)}")
    if weights is None:  # evaluated weights start from no pretrained file
        resolve_inits(names, proto, pretrained_dir)  # every missing file named at once, before anything runs
    # likewise every 2-D model under a 3-D protocol (the grid plans one by one)
    refuse_2d_models(names, proto, evaluated=weights is not None)
    dev = resolve_device(device)
    if nproc != 1 and not distributed.launched_by_torchrun():  # this process starts the others
        distributed.check_nproc(nproc, dev, proto.train.batch_size)  # before --synthetic writes data
    overrides = _parse_sets(set_ or [])
    grid = dict(dataset=dataset, protocol=proto, data_root=data_root, synthetic=synthetic, policy=policy,
                seeds=seed_list(seeds, "--seeds", "0,1,2") if seeds else None,  # None: the protocol's
                model_overrides=overrides, pretrained_dir=pretrained_dir, tiny=tiny, weights=weights, workers=workers,
                folds=folds if folds in (None, "all") else int_list(folds, "--folds"))
    specs, say_warnings = _plan(names, grid, results, dry_run)
    total = len(specs)
    if dry_run:
        say_warnings(dict.fromkeys(s.model for s in specs))
        _list_plan(specs, results, shard, _grid_text(specs, dataset, proto))
        return
    _train(ctx, select_shard(specs, shard), say_warnings, results=results, dev=dev, nproc=nproc, resume=resume,
           progress=progress, grid=_grid_text(specs, dataset, proto),
           shard_text=f" (shard {shard} of {total})" if shard else "")


def training_options(**given) -> list[str]:
    """The options among ``given`` (name: value) that were given, as the command line spells them: those only
    a training would use, which --weights (an evaluation) refuses."""
    return [f"--{k.replace('_', '-')}" for k, v in given.items() if v]


def _plan(names: list[str], grid: dict, results: Path, dry_run: bool,
          note: Callable[[str], None] = lambda text: typer.echo(f"note: {text}"),
          ) -> tuple[list, Callable[[Iterable[str]], None]]:
    """The runs of ``names`` planned (``bench.run.plan_grid``, its other arguments ``grid``), one model at a
    time, and a function that says the warnings planning gave for some of the models (a shard says its own);
    the models that cannot read the data are named in one error, as plan_grid names them. ``note``: says a
    note (--from-record: once for a folder's records)."""
    from bench.registry import BuildError, ChannelsError
    from bench.run import channels_error, dry_run_data, plan_grid

    specs, said, refused = [], {}, []

    def say_warnings(models: Iterable[str]) -> None:  # once each: the command line's warning display drops repeats
        for w in (w for name in models for w in said.get(name, [])):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    # with --data-root too, plan_grid refuses the two as a run does (a copy in its place hid that)
    planned_from_copy = dry_run and grid["synthetic"] and grid["data_root"] is None
    with dry_run_data(grid["dataset"], results) if planned_from_copy else nullcontext() as copy:
        if copy is not None:  # the results folder has no synthetic data yet: none of its runs began
            note(f"the synthetic data is not written yet under {results}; planned from a temporary copy")
            grid = {**grid, "data_root": copy, "synthetic": False}
        for name in names:
            try:
                with warnings.catch_warnings(record=True) as said[name]:  # said for the models this shard runs
                    warnings.simplefilter("always")
                    specs += plan_grid(models=[name], results_dir=results, dry_run=dry_run, **grid)
            except BenchError as exc:
                say_warnings([name])  # what led up to the error
                if isinstance(exc, ChannelsError):  # every model that cannot read the data, named at once
                    refused.append(exc)
                    continue
                if grid["model_overrides"] and len(names) > 1 and isinstance(exc, BuildError):
                    raise BenchError(f"{exc}. --set goes to every model of the command ({', '.join(names)}): run "
                                     "each model with its own keys in a command of its own") from exc
                raise
        if refused:
            raise channels_error(refused, names)
    return specs, say_warnings


def _train(ctx: typer.Context, specs: list, say_warnings: Callable[[Iterable[str]], None], *, results: Path, dev,
           nproc: int, resume: bool, progress: bool, grid: str, shard_text: str = "") -> None:
    """Train and record planned runs (``bench.run.run_grid``), their warnings said first; with ``--nproc N``
    (not yet started by torchrun) this command started again as N processes instead."""
    from bench import distributed
    from bench.run import grid_notes, run_grid

    if not distributed.launched_by_bench():  # the launcher said them
        say_warnings(dict.fromkeys(s.model for s in specs))
    if nproc != 1 and not distributed.launched_by_torchrun():  # the grid is valid: start the processes
        raise typer.Exit(code=distributed.launch(nproc, _argv_of(ctx, drop=("nproc",)), warned=_warned))
    dev = distributed.init(dev)
    main = distributed.world().main
    # rank 0's plan for every rank: run ids of earlier path-identified runs depend on what is on disk
    specs = distributed.gather_objects(specs if main else None)[0]
    say = typer.echo if main else (lambda *a, **k: None)
    say(f"bench run: {len(specs)} run(s){shard_text} · {grid} · device {dev}"
        + (f" · {distributed.world().size} processes" if distributed.world().distributed else ""))
    for note in grid_notes(specs):  # which split, once for all folds
        say(f"note: {note}")
    run_grid(specs, results_dir=results, device=dev, resume=resume, show_progress=progress, say=say,
             say_error=_echo_err)


def _grid_text(specs: list, dataset: str, proto) -> str:
    """What a grid runs, as its header says it (bench run's and --dry-run's alike)."""
    policies = ", ".join(dict.fromkeys(s.policy for s in specs)) or "-"
    return (f"dataset {dataset} · protocol {proto.name} v{proto.version} ({proto.hash}"
            f"{', off-protocol' if proto.off_protocol else ''}) · policy {policies}")


def _list_plan(specs: list, results: Path, shard: str | None, grid: str,
               more: dict[str, tuple[str, str]] | None = None) -> None:
    """``bench run --dry-run``: each run of the grid, its state (bench.run.run_state) and, with --shard
    K/N, its shard; then the count of each state and the shards with runs not done (an array's indices
    to submit again). ``more``: the states of records that are no planned run (--from-record's rescored
    ones), by run id."""
    from bench.run import parse_shard, run_state, shard_numbers

    n = parse_shard(shard)[1] if shard else None
    number = shard_numbers(specs, n) if n else {}
    states = {s.key: run_state(s, Path(results).expanduser()) for s in specs} | (more or {})
    typer.echo(f"bench run --dry-run: {len(states)} run(s) · {grid} · results {results}" + (f" · {n} shards" if n else "")
               + "; nothing trained or written")
    for key in sorted(states, key=lambda key: (number.get(key, 0), key)):
        state, why = states[key]
        where = f"shard {number[key]}/{n}  " if n else ""
        # why as a column, not in parentheses: a claim's holder and a rescored twin hold their own
        typer.echo(f"  {where}{state:<8} {key}" + (f"  {why}" if why else ""))
    counts = [f"{kind} {k}" for kind in ("done", "finished", "partial", "running", "missing")
              if (k := sum(st == kind for st, _ in states.values()))]
    left = sorted({number[key] for key, (st, _) in states.items() if st != "done"}) if n else []
    typer.echo(", ".join(counts) + (f"; shards with runs not done: {','.join(map(str, left))}" if left else ""))


def rescore(
    policy: Annotated[str, policy_option("the policy to score under")],
    results: FinishedRuns = DEFAULT_RESULTS,
    models: Models = "all",
    protocol: RunsProtocol = None,
    device: Annotated[str, device_option("where to evaluate")] = "auto",
    threads: ScoringThreads = None,
    data_root: MovedData = None,
    dataset: RunDatasets = None,
) -> None:
    """Score finished runs under another metric policy from their saved weights.

    Nothing is trained again; one record <run_id>.<policy> per run, beside the original.

    Example: bench rescore --policy strict --results results
    """
    from bench.env import resolve_device
    from bench.registry import model_filter
    from bench.protocol import load_protocol
    from bench.records import record_path, records_dir
    from bench.fileio import ensure_writable_dir
    from bench.rescore import DataRoots, check_weights_kept, other_device_warning, plan_rescore, unscored_records

    _compute_setup(threads)
    roots = DataRoots(data_root or ())
    dev = resolve_device(device)
    if protocol is not None:  # a broken file: one error before anything is scored
        load_protocol(protocol, earlier=True)
    todo = plan_rescore(results, policy, model_filter(models), dataset)
    if todo:  # before anything is scored: a read-only or full folder failed after the first evaluation
        ensure_writable_dir(records_dir(results))
    if note := other_device_warning(todo, dev, "rescored"):
        warnings.warn(note, stacklevel=1)
    if not todo:
        typer.echo(f"bench rescore: nothing to score: every finished run has a record under {policy} already; to "
                   "check a record's numbers against its training, re-run it: bench run --from-record "
                   f"{records_dir(results)}/<run_id>.json --results ANOTHER_FOLDER")
        return
    check_weights_kept(todo, results, "rescored")
    typer.echo(f"bench rescore: {len(todo)} run(s) to score under {policy} · device {dev}")

    held: dict[str, str] = {}  # record to write -> its run's id
    plan = {"files": unscored_records(results), "todo": {r["run_id"] for r in todo}}

    def still_to_score(run_id: str) -> bool:
        """Whether no run trained under the policy holds this training now: planned again only where
        records other than rescored ones appeared since (bench run --policy, beside this command)."""
        if (files := unscored_records(results)) != plan["files"]:
            plan["files"] = files
            try:
                plan["todo"] = {r["run_id"] for r in plan_rescore(results, policy, model_filter(models), dataset)}
            except BenchError:  # only runs the policy cannot score are left: this one is not among them
                plan["todo"] = set()
        return run_id in plan["todo"]

    def score(rec: dict) -> None:
        rescore_claimed(rec, policy, results, dev, protocol, roots, still_to_score, held)

    _each_run(todo, score, "rescored", "scoring")
    if left := [k for k, run_id in held.items() if not record_path(results, k).is_file() and still_to_score(run_id)]:
        raise HeldError(f"{len(left)} of {len(todo)} run(s) were being scored or trained under {policy} by other "
                        f"processes and were skipped: {few(left)}; the same command later finds them done")


def rescore_claimed(rec: dict, policy: str, results: Path, dev, protocol: Path | None, roots,
                    still_to_score: Callable[[str], bool] = lambda run_id: True,
                    held: dict[str, str] | None = None) -> dict | None:
    """Score the run of ``rec`` under ``policy`` (``bench.rescore.rescore_record``) under a claim on the record
    to write (bench.claim), as bench run --policy takes one on the same training's: another rescore of the
    folder, or that run, does it meanwhile, not both. ``still_to_score(run_id)``: whether it is still to do
    once claimed; ``held``: where another process holds the claim, the record to write -> the run's id goes
    there. Its outcome in one line; the new record, or None where it was skipped."""
    from bench.claim import claim_run
    from bench.records import record_path, rescore_id, scores_text
    from bench.rescore import earlier_rescores, rescore_record

    new_id = rescore_id(rec["run_id"], policy)
    claim = claim_run(results, new_id)
    if isinstance(claim, str):
        typer.echo(f"  {new_id}: being scored or trained under {policy} by {claim}, skipped")
        if held is not None:
            held[new_id] = rec["run_id"]
        return None
    with claim:
        again = bool(earlier_rescores(results, rec, [policy]))  # of an earlier training: written over
        if record_path(results, new_id).is_file() and not again:
            typer.echo(f"  {new_id}: scored meanwhile by another process, skipped")
        elif not still_to_score(rec["run_id"]):
            typer.echo(f"  {new_id}: trained under {policy} meanwhile (bench run --policy {policy}), skipped")
        else:
            try:  # an older bench, which takes no claim, may write it first
                new = rescore_record(rec, policy, results, dev, protocol, roots, replace=again)
            except BenchError:
                if again or not record_path(results, new_id).is_file():  # written over: it failed, no race
                    raise
                typer.echo(f"  {new_id}: scored meanwhile by another process, skipped")
                return None
            typer.echo(f"  {new['run_id']}: {scores_text(new)}"
                       + ("; scored again: its run was trained again since its rescore" if again else ""))
            return new
    return None


def predict(
    out: Annotated[Path, typer.Option(help="folder for the predictions: one subfolder per run")],
    results: FinishedRuns = DEFAULT_RESULTS,
    models: Models = "all",
    run: Annotated[Optional[list[str]], typer.Option(help="only this run id (repeatable)")] = None,
    protocol: RunsProtocol = None,
    device: Annotated[str, device_option("where to predict")] = "auto",
    native_size: Annotated[bool, typer.Option(help="ISIC/polyp: masks at each image's own size (the scored "
                                                   "ones are at model resolution); other data is native already")] = False,
    threads: ScoringThreads = None,
    data_root: MovedData = None,
    dataset: RunDatasets = None,
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
    from bench.fileio import ensure_writable_dir
    from bench.registry import model_filter
    from bench.rescore import DataRoots, check_weights_kept, other_device_warning

    _compute_setup(threads)
    roots = DataRoots(data_root or ())
    dev = resolve_device(device)
    if protocol is not None:  # a broken file: one error before anything is written
        load_protocol(protocol, earlier=True)
    todo = plan_predict(results, model_filter(models), run, dataset)
    check_weights_kept(todo, results, "predicted")
    ensure_writable_dir(out, "--out")
    if note := other_device_warning(todo, dev, "predicted"):
        warnings.warn(note, stacklevel=1)
    typer.echo(f"bench predict: {len(todo)} run(s) · device {dev}")

    def write(rec: dict) -> None:
        folder, written = predict_run(rec, results, out, dev, protocol, native_size=native_size, data_roots=roots)
        done = f"{written} file(s) written" if written else "complete already, nothing written"
        typer.echo(f"  {rec['run_id']}: {done} -> {folder}")

    _each_run(todo, write, "predicted", "predicting")


def _each_run(todo: list[dict], do: Callable[[dict], None], verb: str, doing: str) -> None:
    """``do(record)`` for each finished run, its start said ("[2/6] <run id>: scoring": a real
    volume's evaluation takes minutes, unsaid): one that cannot be done (weights deleted, damaged or no
    longer fitting a plugin's edited code) is one line and the rest are still done; then one error
    names those left out. A single run's error is its own line."""
    from bench.run import note_failure

    failed: list[str] = []
    for i, rec in enumerate(todo, 1):
        typer.echo(f"[{i}/{len(todo)}] {rec['run_id']}: {doing}")  # beside its result line, as bench run's
        try:
            do(rec)
        except BenchError as exc:
            if len(todo) == 1:
                raise
            note_failure(rec["run_id"], exc, failed, _echo_err)
    if failed:
        others = ", the others were" if len(failed) < len(todo) else ""
        raise BenchError(f"{len(failed)} of {len(todo)} run(s) could not be {verb} ({few(failed)}){others}; "
                         "after fixing the cause, the same command does the rest")
