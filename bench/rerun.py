"""Re-running a run from its record (`bench run --from-record`): the run planned again from the record
(``rerun_args``, ``check_rerun``, ``rerun_source`` for a `bench rescore` record), what differs here from where
it ran (``rerun_differing``, ``rescore_differing``, ``differences_text``) and how the re-run's numbers compare
with the record's (``rerun_comparison``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import env, fileio, records
from bench.data.synth import grid_data, remake_text
from bench.errors import BenchError, few

if TYPE_CHECKING:
    import torch

    from bench.run import RunSpec


def rerun_args(rec: dict[str, Any], data_root: Path | None, weights: Path | None,
               pretrained_dir: Path | None) -> dict[str, Any]:
    """``plan_grid``'s arguments that plan the run of record ``rec`` again (``bench run --from-record``):
    its model and configuration, data, split, seed, policy and protocol, rebuilt from the recipe the
    record keeps under its own name and hash (a protocol file not shipped needs no file). ``data_root``:
    where the data is now (None: the recorded folder; synthetic data gone with it is made again).
    BenchError where the record cannot say the run, or a file it needs is not given; for a `bench rescore`
    record, saying how its run is re-run (``rerun_source``'s record) and then rescored, as the CLI does."""
    from bench.rescore import record_protocol

    run_id = rec["run_id"]
    if rec.get("rescored_from"):  # its run is planned from the run's own record (this one's policy is the rescore's)
        source = rec["rescored_from"]
        raise BenchError(f"run {run_id}: bench rescore scored run {source}'s weights under {rec['policy']}: re-run "
                         f"run {source} from its own record ({source}.json, which rerun_source finds beside this one "
                         f"or in the results folder), then score it under {rec['policy']} with "
                         "bench.rescore.rescore_record, as `bench run --from-record` of this record does")
    if not isinstance(rec.get("set_keys"), list):
        raise BenchError(f"run {run_id}: its record predates set_keys, so which --set options it had is not known; "
                         "rebuild its command from the record's launch.argv")
    if rec.get("weights") and weights is None:
        raise BenchError(f"run {run_id} evaluated the weights file {rec['weights']['file']} (sha256 "
                         f"{rec['weights']['sha256'][:16]}), which its record names but does not hold; pass "
                         "--weights PATH to that file")
    if weights is not None and not rec.get("weights"):
        raise BenchError(f"--weights: run {run_id} trained its weights; --from-record trains them again as it did")
    if rec.get("init") and pretrained_dir is None and not rec.get("weights"):
        raise BenchError(f"run {run_id} started from its authors' pretrained file {rec['init']['file']} (sha256 "
                         f"{rec['init']['sha256'][:16]}); pass --pretrained-dir DIR holding it")
    synthetic = False
    if data_root is None:
        data_root = Path(rec["data_root"])
        if not data_root.is_dir():
            if not grid_data(rec):
                remake = remake_text(rec, "DIR")
                raise BenchError(f"{data_root}: the data run {run_id} read is not there; pass --data-root DIR "
                                 "holding it" + (f" ({remake})" if remake else ""))
            # bench run --synthetic's: made again under --results, the same generator makes the same data
            data_root, synthetic = None, True
    elif not Path(data_root).expanduser().exists():  # the reader's "makes a small fake one" is no advice here
        remake = ("drop --data-root: the bench run --synthetic data it read is made again under --results"
                  if grid_data(rec) else remake_text(rec, "DIR"))
        raise fileio.absent(Path(data_root).expanduser(), f"--data-root {data_root}: not found; pass the folder holding the "
                     f"data run {run_id} read" + (f" ({remake})" if remake else ""))
    try:
        protocol = record_protocol(rec)
    except BenchError:  # an older record without its recipe, whose protocol file changed or is not here
        raise BenchError(f"run {run_id}: its record keeps no recipe (an older bench) and its protocol "
                         f"{rec['protocol'].get('name')!r} is not here as it ran; rebuild a bench run command (without "
                         "--from-record) from the record's launch.argv, with --protocol the file it ran with") from None
    fold = records.split_fold(rec["split"])
    return dict(models=[rec["model"]], dataset=rec["dataset"], protocol=protocol,
                seeds=None if rec.get("weights") else [rec["seed"]],  # --weights: the protocol's, its only
                folds=None if fold is None else [fold], data_root=data_root, synthetic=synthetic,
                policy=rec["policy"], tiny=bool(rec.get("tiny")),
                model_overrides={k: rec["model_config"][k] for k in rec["set_keys"]})


def check_rerun(spec: RunSpec, rec: dict[str, Any]) -> None:
    """BenchError where ``spec``, planned from record ``rec`` (``rerun_args``), is another run than the
    record's: other data, another weights or pretrained file, or a run id hashed otherwise by the bench
    that wrote it."""
    if spec.key == rec["run_id"]:
        return
    run = f"run {rec['run_id']}"
    if rec.get("data_id") and spec.data_id != rec["data_id"]:
        remake = remake_text(rec, "DIR")
        raise BenchError(f"{spec.data_root}: not the data {run} read (data id {spec.data_id}, the record's "
                         f"{rec['data_id']}); pass --data-root DIR holding that data" + (f" ({remake})" if remake else ""))
    for kind, given, what in (("weights", spec.weights and spec.weights[1], "--weights"),
                              ("init", spec.init and spec.init[2], "--pretrained-dir")):
        if rec.get(kind) and str(given)[:16] != rec[kind]["sha256"][:16]:
            raise BenchError(f"{what}: not the file {rec[kind]['file']} {run} used (sha256 {str(given)[:16]}, the "
                             f"record's {rec[kind]['sha256'][:16]})")
    raise BenchError(f"{run}: planned again as run {spec.key}, another id (the bench that wrote the record hashed its "
                     "runs otherwise); rebuild its command from the record's launch.argv")


def rerun_differing(rec: dict[str, Any], device: torch.device, processes: int, whose: str = "the run's",
                    hints: bool = True) -> list[str]:
    """What differs here from where run record ``rec`` ran, among what makes runs bit-identical (the
    device's kind, CPU, torch and its threads, processes, bench's code): each "threads 2, the run's 1
    (--threads 1)" (``whose``; the option that would match it only with ``hints``), its first word what
    differs; [] where nothing does."""
    was, now = rec.get("device") or {}, env.fingerprint(device)
    world = (rec.get("train") or {}).get("world_size") or 1
    code_was = records.code_version(rec.get("git_commit"), rec.get("code_digest"))
    code_now = records.code_version(env.git_commit(), env.source_digest())
    same_code = rec["code_digest"] == env.source_digest() if rec.get("code_digest") else code_was == code_now
    differ = [f"{what} {now[key]}, {whose} {was[key]}" + (f" ({option} {was[key]})" if option and hints else "")
              for key, what, option in (("device", "device", "--device"), ("cpu", "CPU", ""),
                                        ("torch", "torch", ""), ("threads", "threads", "--threads"))
              if was.get(key) is not None and was[key] != now[key]]
    differ += [f"processes {processes}, {whose} {world}" + (f" (--nproc {world})" if hints else "")
               ] if processes != world else []
    differ += [] if same_code else [f"code {records.short_commit(code_now or 'unknown')}, {whose} "
                                    f"{records.short_commit(code_was or 'unknown')}"]
    return differ


def rescore_differing(rec: dict[str, Any], device: torch.device) -> list[str]:
    """``rerun_differing`` of the numbers of `bench rescore` record ``rec``: what differs here from where they
    were scored (its ``rescored_with``: device, CPU, torch, threads, code; its ``device`` is its run's), each
    "threads 2, the rescore's 1", without an option to match it (--from-record's --threads and --device are its
    run's too, which it re-runs first); [] where nothing does, or the record does not say."""
    scored = rec.get("rescored_with") or {}
    if not scored:
        return []
    return rerun_differing({key: scored.get(key) for key in ("device", "git_commit", "code_digest")}, device, 1,
                           "the rescore's", hints=False)


def differences_text(run_ids: list[str], differ: list[str], of: int = 1) -> str:
    """The warning that runs ``run_ids`` (of ``of`` re-run by the command) ran otherwise than this command
    (``rerun_differing``'s ``differ``, alike for each): said once for all of them."""
    if len(run_ids) == 1:
        return (f"run {run_ids[0]} ran otherwise than this command: {'; '.join(differ)}; its numbers may differ "
                "from the record's")
    runs = f"all {of} runs" if len(run_ids) == of else f"{len(run_ids)} runs ({few(run_ids, 3)})"
    return (f"{runs} ran otherwise than this command: {'; '.join(differ)}; their numbers may differ from their "
            "records'")


def rerun_comparison(was: dict[str, Any], now: dict[str, Any]) -> str | None:
    """How the numbers of record ``now``, of a re-run, differ from those of ``was``, the record it
    reproduces: its ``metrics``, ``per_class`` and ``per_case`` rows compared exactly (NaN, written null,
    equals NaN; timings, paths and how it ran are no part of it), as "dice 0.07205 -> 0.06853, hd95 22.39 ->
    21.5; 8 of 8 per-class rows and 20 of 24 case rows differ"; None where they are the same bit for bit."""
    a, b = _plain(was["metrics"]), _plain(now["metrics"])
    keys = list(dict.fromkeys([*a, *b]))
    said = [f"{k} {' -> '.join(_apart(a.get(k, '(none)'), b.get(k, '(none)')))}"
            for k in keys if k not in a or k not in b or a[k] != b[k]]
    rows = []
    for name, key in (("per-class rows", "per_class"), ("case rows", "per_case")):
        old, new = _plain(was[key]), _plain(now[key])
        n = sum(x != y for x, y in zip(old, new)) + abs(len(old) - len(new))  # a row either lacks: one differing
        if n:  # counted of the longer, so never more than their total
            rows.append(f"{n} of {max(len(old), len(new))} {name}"
                        + (f" (the record has {len(old)}, the re-run {len(new)})" if len(new) != len(old) else ""))
    if not (said or rows):
        return None
    return "; ".join(filter(None, [few(said, 3), " and ".join(rows) + " differ" if rows else ""]))


def _plain(value: Any) -> Any:
    """``value`` with NaN as None, as a record's JSON holds it: NaN equal to NaN where compared."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return None if isinstance(value, float) and value != value else value


def _apart(a: Any, b: Any) -> tuple[str, str]:
    """Two different numbers, written with as few digits (from 4) as tell them apart; NaN as NaN."""
    a, b = ("NaN" if v is None else v for v in (a, b))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)):
        return str(a), str(b)
    for digits in range(4, 18):
        if (x := f"{a:.{digits}g}") != (y := f"{b:.{digits}g}"):
            return x, y
    return repr(a), repr(b)


def rerun_source(rec: dict[str, Any], path: Path, results_dir: Path) -> Path:
    """For a `bench rescore` record ``rec`` (at ``path``): the record of the run it rescored, to re-run before
    rescoring it (``bench run --from-record``): beside it (the same records folder), else finished in
    ``results_dir``; BenchError naming where it was looked for."""
    source = rec["rescored_from"]
    beside = Path(path).absolute().parent / f"{source}.json"
    there = records.record_path(Path(results_dir).absolute(), source)
    for found in (beside, there):
        if found.is_file():
            return found
    raise BenchError(f"{path}: run {rec['run_id']} is run {source}'s weights scored under {rec['policy']} (bench "
                     f"rescore); {beside} is not there, nor {there}: put that run's record beside it, to re-run the "
                     "run and rescore it")
