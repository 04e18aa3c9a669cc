"""`bench run --from-record`: re-run the run of a record, or of every record of a folder, as it ran
(``bench.rerun.rerun_args``: the same run id), and compare each new record's numbers with the record's
(``bench.rerun.rerun_comparison``). A `bench rescore` record is its run re-run, then rescored."""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer

from bench.cli.console import _echo_err
from bench.errors import BenchError, HeldError, few

# what bench run --from-record takes beside it: where and how the run goes, not what it is
_KEEPS_THE_RUN = {"from_record", "data_root", "results", "device", "resume", "threads", "workers", "progress", "nproc",
                  "weights", "pretrained_dir", "dry_run"}


def refuse_other_options(ctx: typer.Context, path: Path) -> None:
    """BenchError naming every option given beside ``--from-record PATH`` that would make it another run."""
    given = [_option_text(ctx, p) for p in ctx.command.params if p.name not in _KEEPS_THE_RUN
             and ctx.get_parameter_source(p.name).name in ("COMMANDLINE", "ENVIRONMENT")]
    if given:
        raise BenchError(f"--from-record {path}: re-runs the run as its record says it ran; drop {', '.join(given)}, "
                         "which would make it another run (a new command: bench run with the options you want)")


def _option_text(ctx: typer.Context, param) -> str:
    """An option as the command line gave it: ``--no-pretrained`` for a flag's second name."""
    flag_off = getattr(param, "is_flag", False) and param.secondary_opts and not ctx.params.get(param.name)
    return param.secondary_opts[0] if flag_off else param.opts[0]


@dataclass
class _Record:
    """A record to re-run, and what became of it."""

    path: Path
    rec: dict[str, Any]
    rerun: bool = True  # False: a rescored record's run, finished in --results: rescored from there as it is
    source: Optional["_Record"] = None  # a rescored record's: the run whose weights it scored
    spec: Any = None  # its run as planned here (bench.run.RunSpec); None until planned
    say_warnings: Callable = lambda models: None  # what planning it warned of (run_cmds._plan)
    differ: list[str] = field(default_factory=list)  # how this command runs it otherwise (rerun_differing)
    found: bool = False  # --results held its record before this command: compared, not re-run
    outcome: str = ""  # "match", "differ", "skipped" (nothing to compare with), "failed"

    @property
    def run_id(self) -> str:
        return self.rec["run_id"]


def rerun_records(ctx: typer.Context, path: Path, *, results: Path, data_root: Path | None, weights: Path | None,
                  pretrained_dir: Path | None, device: str, resume: bool, threads: int | None, workers: int | None,
                  progress: bool, nproc: int, dry_run: bool) -> None:
    """``bench run --from-record PATH``: the run of each record PATH names (``records.record_files``) re-run
    into ``results`` as it ran, trained records first (by run id), then rescored ones (each after its run),
    and each new record compared with the one it reproduces, in one line; where ``results`` holds the run
    already, it is skipped and that record compared. A folder's record that fails is one line and the
    others go on, then a summary line and a BenchError naming those that failed; a single record's error
    is the command's."""
    from bench import distributed
    from bench.cli.run_cmds import _grid_text, _list_plan, _train, training_options
    from bench.env import resolve_device
    from bench.records import record_at, record_files, record_path
    from bench.rerun import rerun_differing, rerun_source
    from bench.run import note_failure

    files, folder = record_files(path)
    if nproc != 1 and folder:
        raise BenchError(f"--from-record {path}: a folder's records are re-run one after another in this process; "
                         f"--nproc {nproc} takes one record (--from-record RECORD --nproc {nproc})")
    if weights is not None and (training := training_options(nproc=nproc != 1, pretrained_dir=pretrained_dir,
                                                             resume=resume)):
        raise BenchError(f"--weights {weights}: evaluates the record's weights, without training; drop "
                         f"{', '.join(training)}, which only a training would use")
    results = Path(results).expanduser()
    dev = resolve_device(device)
    failed: list[str] = []

    @contextmanager
    def each(key: str, r: _Record | None = None) -> Iterator[None]:
        """A record's step: in a folder, its failure one line (and its outcome), and the others go on."""
        try:
            yield
        except HeldError:  # being run by another process, said so by bench run: nothing failed
            if not folder:
                raise
            if r is not None:
                r.outcome = "skipped"
        except Exception as exc:
            if not folder:
                raise
            note_failure(key, exc, failed, _echo_err)
            if r is not None:
                r.outcome = "failed"

    note = _note_once()
    todo: list[_Record] = []
    for file in files:
        with each(file.stem):
            todo.append(_Record(file, record_at(file)))
    trained = {r.path.resolve(): r for r in todo if not r.rec.get("rescored_from")}
    rescored = sorted((r for r in todo if r.rec.get("rescored_from")), key=lambda r: r.run_id)
    for r in rescored:
        with each(r.run_id, r):
            found = rerun_source(r.rec, r.path, results)
            if found.resolve() not in trained:  # finished in --results only: rescored from there, not re-run
                beside = found.parent.resolve() == r.path.parent.resolve()
                trained[found.resolve()] = _Record(found, record_at(found), rerun=beside)
            r.source = trained[found.resolve()]
    if nproc != 1 and rescored:
        raise BenchError(f"--from-record {path}: a rescored record's run is re-run, then rescored, in this process; "
                         f"--nproc {nproc} takes the record of a trained run")
    runs = sorted((r for r in trained.values() if r.rerun), key=lambda r: r.run_id)
    processes = int(os.environ["WORLD_SIZE"]) if distributed.launched_by_torchrun() else nproc
    plan = dict(results=results, data_root=data_root, weights=weights, pretrained_dir=pretrained_dir,
                workers=workers, dry_run=dry_run, nproc=nproc, dev=dev, note=note)
    for r in runs:
        with each(r.run_id, r), _threads(r.rec, threads, dev, note):
            r.spec, r.say_warnings = _plan_record(r, **plan)
            r.differ = rerun_differing(r.rec, dev, processes)
    planned = [r for r in runs if r.spec is not None]
    _warn_differences(planned)
    if dry_run:
        for r in planned:
            r.say_warnings([r.spec.model])
        more = {r.run_id: _rescored_state(r, results) for r in rescored if r.source is not None}
        specs = [r.spec for r in planned]
        one = len(specs) == 1 and not more and not folder  # a single run's header, as bench run --dry-run's
        grid = (_grid_text(specs, specs[0].dataset, specs[0].protocol) if one else
                f"records of {path}" if folder else f"{path} and the run it rescored")
        _list_plan(specs, results, None, grid, more)
        _end(failed, len(files), path, dry_run)
        return
    main = distributed.rank_from_env() == 0
    for r in planned:
        with each(r.run_id, r), _threads(r.rec, threads, dev, note):
            r.found = _say_held(r, results, folder, note)
            _train(ctx, [r.spec], r.say_warnings, results=results, dev=dev, nproc=nproc, resume=resume,
                   progress=progress, grid=_grid_text([r.spec], r.spec.dataset, r.spec.protocol))
            r.outcome = _compare(r, results, dev) if main else ""
    for r in rescored:
        if r.source is not None:
            # the rescore's own threads: its record's device is its run's, which trained
            scored = r.rec.get("rescored_with") or {}
            with each(r.run_id, r), _threads(scored if scored.get("device") else r.rec, threads, dev, note,
                                             "the rescore" if scored.get("device") else "the run"):
                r.found = record_path(results, r.run_id).is_file()
                _rescore(r, results, dev, data_root)
                r.outcome = _compare(r, results, dev)
    if folder:
        _summary(path, todo, len(files), failed, results)
    _end(failed, len(files), path)


def _note_once() -> Callable[..., None]:
    """``note(text, key=None)``: says "note: text" once per command (a folder's records share their data, so
    their notes), keyed by ``key`` where given, else by the text; and only in the process that speaks for all:
    under torchrun, rank 0, and not a process that bench run --nproc started (its launcher said them)."""
    from bench import distributed

    said: set[str] = set()
    speaks = distributed.rank_from_env() == 0 and not distributed.launched_by_bench()

    def note(text: str, key: str | None = None) -> None:
        if speaks and (key or text) not in said:
            said.add(key or text)
            typer.echo(f"note: {text}")

    return note


def _plan_record(r: _Record, *, results: Path, data_root: Path | None, weights: Path | None,
                 pretrained_dir: Path | None, workers: int | None, dry_run: bool, nproc: int, dev,
                 note: Callable[..., None]) -> tuple[Any, Callable]:
    """The run of record ``r`` planned again (``rerun_args``), checked to be the record's (``check_rerun``),
    and the warnings its planning gave; a note where its synthetic data was made again under ``results``."""
    from bench import distributed
    from bench.cli.run_cmds import _plan
    from bench.data import synthetic_folder, synthetic_identity
    from bench.records import synthetic_dir
    from bench.rerun import check_rerun, rerun_args

    grid = rerun_args(r.rec, data_root, weights, pretrained_dir)
    if nproc != 1 and not distributed.launched_by_torchrun():  # this process starts the others
        distributed.check_nproc(nproc, dev, grid["protocol"].train.batch_size)  # before --synthetic writes data
    there = grid["synthetic"] and synthetic_identity(synthetic_folder(grid["dataset"], synthetic_dir(results)))
    (spec,), say_warnings = _plan(grid.pop("models"), {**grid, "pretrained_dir": pretrained_dir, "weights": weights,
                                                       "workers": workers}, results, dry_run, note)
    check_rerun(spec, r.rec)
    if grid["synthetic"] and not dry_run:  # bench run --synthetic's data, gone with the results folder it was in
        how = "found the same synthetic data, made again earlier," if there else "made the same synthetic data again"
        note(f"{r.rec['data_root']} is not there; {how} under {spec.data_root} (data id {spec.data_id})",
             r.rec["data_root"])
    return spec, say_warnings


@contextmanager
def _threads(rec: dict[str, Any], given: int | None, dev, note: Callable[..., None],
             whose: str = "the run") -> Iterator[None]:
    """torch's CPU threads while the run of ``rec`` is re-run: ``--threads`` where given (set by the
    command already), else, where this device and the run's were CPUs, the run's count, which its last bits
    depend on (said in a note); set back after. A `bench rescore` record's rescore takes its own count
    (``rec["rescored_with"]``, ``whose`` "the rescore")."""
    import torch

    ran = rec.get("device") or {}
    threads = ran.get("threads")
    if given is not None or dev.type != "cpu" or ran.get("device") != "cpu" or not isinstance(threads, int) \
            or threads < 1:
        yield
        return
    note(f"--threads {threads}, as {whose} had", f"threads {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _warn_differences(planned: list[_Record]) -> None:
    """One warning for each set of runs that this command runs otherwise alike (the code, the device: for
    a whole folder, once), naming what differs (``rerun_differing``)."""
    from bench.rerun import differences_text

    runs_of: dict[str, list[str]] = {}
    for r in planned:
        for differ in r.differ:
            runs_of.setdefault(differ, []).append(r.run_id)
    alike: dict[tuple[str, ...], list[str]] = {}
    for differ, ids in runs_of.items():
        alike.setdefault(tuple(ids), []).append(differ)
    for ids, differ in alike.items():
        warnings.warn(differences_text(list(ids), differ, len(planned)), stacklevel=1)


def _say_held(r: _Record, results: Path, folder: bool, note: Callable[..., None]) -> bool:
    """Whether ``results`` holds the record of ``r``'s run already (bench run skips the run); a note where
    it is the very record given (compared with nothing): for a folder's records, once."""
    from bench.records import record_path

    held = record_path(results, r.run_id)
    if not held.is_file():
        return False
    if held.resolve() == r.path.resolve():
        if folder:
            note(f"{results} is the folder of these records, so bench run skips their runs; --results ANOTHER_FOLDER "
                 "re-runs them there, to compare with their records", "held")
        else:
            note(f"{results} holds run {r.run_id} already, so bench run skips it; --results ANOTHER_FOLDER re-runs it "
                 "there, to compare with the record")
    return True


def _rescored_state(r: _Record, results: Path) -> tuple[str, str]:
    """A rescored record's state for ``--dry-run``: done where ``results`` holds it, else what makes it."""
    from bench.records import record_path

    if record_path(results, r.run_id).is_file():
        return "done", ""
    return "missing", f"run {r.source.run_id} rescored under {r.rec['policy']}, once it is done"


def _rescore(r: _Record, results: Path, dev, data_root: Path | None) -> None:
    """Rescored record ``r``'s run, finished in ``results`` (re-run there, or found), scored under its policy
    as bench rescore scores it (``rescore_claimed``); nothing where ``results`` holds that record already."""
    from bench.cli.run_cmds import rescore_claimed
    from bench.records import read_record, record_path
    from bench.rescore import DataRoots, earlier_rescores

    source, policy = r.source.run_id, r.rec["policy"]
    run = read_record(results, source) if record_path(results, source).is_file() else None
    # held already, unless of an earlier training of the run (trained again since): rescore_claimed scores it again
    if record_path(results, r.run_id).is_file() and not (run and earlier_rescores(results, run, [policy])):
        typer.echo(f"  {r.run_id}: scored earlier, skipped")
        return
    if r.source.outcome == "failed" or run is None:
        raise BenchError(f"run {source}, whose weights it scored under {policy}, was not re-run (see above), so "
                         "there is nothing to rescore")
    typer.echo(f"bench rescore: run {source} under {policy} · device {dev}")
    roots = DataRoots([data_root] if data_root else [])
    rescore_claimed(run, policy, results, dev, None, roots)


def _compare(r: _Record, results: Path, dev) -> str:
    """Record ``r``'s run as ``results`` holds it now compared with ``r``, in one line (``rerun_comparison``):
    "match" or "differ"; "skipped" where there is nothing to compare (no such record there: another process
    holds the run; or the very record given)."""
    from bench.records import read_record, record_path
    from bench.rerun import rerun_comparison

    here = record_path(results, r.run_id)
    if not here.is_file() or here.resolve() == r.path.resolve():
        return "skipped"
    now = read_record(results, r.run_id)
    differ = rerun_comparison(r.rec, now)
    if differ is None:
        typer.echo(f"  {r.run_id}: matches record {r.path} bit for bit (metrics, per-class, "
                   f"{len(now['per_case'])} case rows)")
        return "match"
    why = _rescored_why(r, now, dev) if r.source is not None else []
    if r.source is None and r.differ:
        why.append(f"it ran otherwise ({', '.join(d.split()[0] for d in r.differ)}: the warning above)")
    if not why and dev.type == "cuda":
        why.append("on CUDA a run need not repeat bit for bit")
    typer.echo(f"  {r.run_id}: differs from record {r.path}: {differ}" + "".join(f"; {w}" for w in why))
    return "differ"


def _rescored_why(r: _Record, now: dict[str, Any], dev) -> list[str]:
    """Why rescored record ``r``'s numbers may differ from ``now``'s, its rescore's here: the rescore scored
    other weights (its run's re-run trained others), its run ran otherwise (the warning above), or it was
    scored otherwise than the record's numbers were (``rescore_differing``: the record's ``rescored_with``)."""
    from bench.rerun import rescore_differing

    why = []
    was, new = ((rec.get("scored_weights") or {}).get("sha256") for rec in (r.rec, now))
    if was and new and was != new:
        why.append(f"it scored other weights than the record's ({now['scored_weights']['file']} sha256 {new[:8]}, the "
                   f"record's {was[:8]}: run {r.source.run_id} trained others)")
    if r.source.differ:
        why.append(f"its run ran otherwise ({', '.join(d.split()[0] for d in r.source.differ)}: the warning above)")
    if scored := rescore_differing(r.rec, dev):
        why.append(f"it was rescored otherwise: {', '.join(scored)}")
    return why


def _summary(path: Path, todo: list[_Record], n: int, failed: list[str], results: Path) -> None:
    """A folder's closing line: how many of its records were re-run (or only compared, their runs found
    finished in ``results``), matched, differed, were skipped or failed."""
    of = {kind: [r.run_id for r in todo if r.outcome == kind] for kind in ("match", "differ", "skipped")}
    compared = [r for r in todo if r.outcome in ("match", "differ")]
    found = sum(r.found for r in compared)
    ran = len(compared) - found
    counts = [f"{len(of['match'])} match bit for bit", f"{len(of['differ'])} differ"
              + (f" ({few(of['differ'], 3)})" if of["differ"] else "")]
    counts += [f"{len(of['skipped'])} skipped (nothing to compare: being run by other processes, or the record "
               "itself)"] if of["skipped"] else []
    counts += [f"{len(failed)} failed ({few(failed, 3)})"] if failed else []
    what = (f"{n} record(s) of {path}" + (f", {ran} re-run and" if ran else ",")
            + f" {found} found finished in {results} already (compared, not re-run)" if found else
            f"{n} record(s) of {path} re-run")
    typer.echo(f"bench run --from-record: {what}: {', '.join(counts)}")


def _end(failed: list[str], n: int, path: Path, dry_run: bool = False) -> None:
    """A folder's BenchError naming the records that failed (--dry-run: that could not be planned)."""
    if not failed:
        return
    others = ", the others were" if len(failed) < n else ""
    if dry_run:
        raise BenchError(f"{len(failed)} of {n} record(s) of {path} could not be planned ({few(failed)}){others}; the "
                         "lines above say why (--dry-run: nothing was re-run)")
    raise BenchError(f"{len(failed)} of {n} record(s) of {path} could not be re-run ({few(failed)}){others}; the "
                     "lines above say why; after fixing the cause, the same command re-runs them (finished runs "
                     "are skipped, and compared)")
