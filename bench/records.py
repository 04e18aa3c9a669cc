"""Run records: one JSON file per finished run, and the one reader that turns them into tables.

Layout under a results directory (``--results``)::

    results_dir/
      records/
        <run_id>.json        one file per run, written atomically, never edited afterwards
        <run_id>.<policy>.json   `bench rescore`: the same weights under another policy
        .<run_id>.*.tmp      only while a write is in flight (ignored by ``load``)

There is no shared index file: each writer creates its own file with a unique ``run_id``, so any
number of processes (a sharded grid, several machines on one NFS share) can write into the same
directory without locks.

Non-finite numbers. JSON has no NaN, so NaN is written as ``null`` and read back as NaN in the
DataFrames that ``load`` returns. NaN means "not applicable / no value", and every
per-class row keeps an explicit ``n_nan`` count, so nothing is dropped silently. ±inf has no
meaning in a record (a missed structure gets its policy's penalty value, not inf), so writing one
is an error that names the key, rather than a silent conversion that would merge "failed" into
"not applicable".

Example::

    rec = {..., "run_id": spec.key, ...}     # bench.run.RunSpec.key: synapse-synapse-vmunet-s0-<8 hex>
    path = write_record(rec, Path("results"))
    runs = load(Path("results"))               # one row per run
    cases = load(Path("results"), level="case")  # one row per (run, case, class)
"""

from __future__ import annotations

import glob
import json
import math
import numbers
import os
import re
import shlex
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.errors import BenchError, did_you_mean, few
from bench.fileio import SAFE_NAME, absent, atomic_write_text
from bench.names import matched_names, name_list, nothing_named
from bench.metrics import METRICS
from bench.metrics import POLICIES as METRIC_POLICIES
from bench.model_facts import FAMILIES
from bench.runlog import RUN_LOG

__all__ = [
    "SCHEMA_VERSION",
    "RUN_COLUMNS",
    "CASE_COLUMNS",
    "STANDARD_METRICS",
    "short_commit",
    "short_fingerprint",
    "code_version",
    "validate_record",
    "write_record",
    "records_dir",
    "synthetic_dir",
    "record_path",
    "rescore_id",
    "rescored_name",
    "record_files",
    "load",
    "load_both",
    "load_with_records",
    "select_runs",
    "StaleRescoresLeftOut",
]

SCHEMA_VERSION = 1
POLICIES = tuple(METRIC_POLICIES)

# Identification columns of a run, in the order ``load`` returns them.
RUN_ID_COLUMNS = [
    "run_id", "model", "model_config", "family", "dataset", "dataset_name", "synthetic", "split",
    "protocol", "protocol_version", "protocol_hash", "off_protocol", "protocol_overrides",
    "policy", "seed", "init", "data_id", "tiny", "weights",
]  # fmt: skip
RUN_COLUMNS = RUN_ID_COLUMNS + [
    "set_keys", "n_train", "data_root", "rescored_from", "status", "git_commit", "code_digest", "train_commits", "scored_commit", "scored_digest", "model_code", "device", "train_devices", "host", "slurm_job", "scan_backend", "hd95_unit",
    "started_at", "finished_at", "wall_time_s", "train_time_s", "train_loss", "world_size", "params", "trainable_params", "input_shape", "macs",
    "paper_macs", "flops", "fps", "peak_mem_mb", "peak_mem_kind", "nsd_tolerances", "classes", "n_missed", "n_present",
    "rescored_from_policy",
]  # fmt: skip
# Aggregates every policy may produce; ``load`` puts them first, extra metric keys follow.
STANDARD_METRICS = [*METRICS, "n_cases"]
CASE_COLUMNS = [
    "case", "class", "name", "dice", "iou", "hd95", "nsd", "acc", "spe", "sen",
    "tp", "fp", "fn", "tn", "n_pred", "n_ref", "empty",
]  # fmt: skip

_NUM = (numbers.Real,)  # int, float and numpy scalars; bool is excluded where it matters

# key -> (accepted types, description for the error message). ``None`` in a tuple allows null.
_REQUIRED: dict[str, tuple[tuple, str]] = {
    "schema": ((int,), "int"),
    "run_id": ((str,), "str"),
    "status": ((str,), "str"),
    "model": ((str,), "str"),
    "family": ((str,), "str"),
    "model_config": ((Mapping,), "object"),
    "dataset": ((str,), "str"),
    "data_root": ((str,), "str"),
    "synthetic": ((bool,), "bool"),
    "split": ((str,), "str"),
    "protocol": ((Mapping,), "object"),
    "policy": ((str,), "str"),
    "seed": ((int,), "int"),
    "git_commit": ((str, type(None)), "str or null"),
    "packages": ((Mapping,), "object"),
    "device": ((Mapping,), "object"),
    "scan_backend": ((str, type(None)), "str or null"),
    "started_at": ((str,), "ISO time str"),
    "finished_at": ((str,), "ISO time str"),
    "wall_time_s": (_NUM, "number"),
    "train": ((Mapping,), "object"),
    "metrics": ((Mapping,), "object"),
    "per_class": ((list,), "list"),
    "per_case": ((list,), "list"),
    "cost": ((Mapping,), "object"),
}
_REQUIRED_NESTED: dict[str, dict[str, tuple[tuple, str]]] = {
    "protocol": {
        "name": ((str,), "str"),
        "version": ((int,), "int"),
        "hash": ((str,), "str"),
        "off_protocol": ((bool,), "bool"),
        "overrides": ((Mapping,), "object"),
    },
    "metrics": {"dice": (_NUM + (type(None),), "number or null"), "n_cases": ((int,), "int")},
    "cost": {"params": ((int,), "int")},
}
# keys older records lack, checked where present
_OPTIONAL: dict[str, tuple[tuple, str]] = {
    # the checkpoint file the numbers were computed from, {file, sha256} (``scored_other_weights``)
    "scored_weights": ((Mapping,), "object"),
}
_OPTIONAL_NESTED: dict[str, dict[str, tuple[tuple, str]]] = {
    "scored_weights": {"file": ((str,), "str"), "sha256": ((str,), "str")},
}
_REQUIRED_PER_CLASS = {
    "class": ((int,), "int"),
    "name": ((str,), "str"),
    "dice": (_NUM + (type(None),), "number or null"),
    "n": ((int,), "int"),
    "n_nan": ((int,), "int"),
}
_REQUIRED_PER_CASE = {
    "case": ((str,), "str"),
    "class": ((int,), "int"),
    "name": ((str,), "str"),
    "dice": (_NUM + (type(None),), "number or null"),
}


# ---------------------------------------------------------------------------------------------
# ids and validation


def code_version(commit: str | None, digest: str | None) -> str | None:
    """The code a run ran, as records' ``train.commits`` and boards name it: the git commit of a
    clean checkout; else the sources' digest (``env.source_digest``), after the commit an edited
    tree started from ("<commit>-dirty sources <digest>"), or alone outside git ("sources <digest>").
    Records written before the digest was kept give their git commit (or None)."""
    if not digest or (commit and not commit.endswith("-dirty")):
        return commit
    return f"{commit} sources {digest}" if commit else f"sources {digest}"


def short_commit(version: str) -> str:
    """A code version as messages show it: a commit's first 12 hex digits, "-dirty" where the
    tree had edits, and then the sources' digest where ``code_version`` named one."""
    commit, sources, digest = version.partition("sources ")
    commit = commit.strip()
    short = commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")
    if not sources:
        return short
    return f"{short} (sources {digest})" if commit else f"sources {digest}"


def make_run_id(dataset: str, protocol: str, model: str, seed: int, fold: int | None, digest: str) -> str:
    """A run's id, ``<dataset>-<protocol>-<model>-s<seed>[-f<fold>]-<digest>`` (``bench.run.RunSpec.key``
    hashes what defines the run into ``digest``, 8 hex digits); ``parse_run_id`` reads it back."""
    return f"{dataset}-{protocol}-{model}-s{seed}{'' if fold is None else f'-f{fold}'}-{digest}"


# what follows "<dataset>-<protocol>-" in make_run_id's ids (the names may hold "-": they are given)
_RUN_REST = re.compile(r"(?P<model>.+)-s(?P<seed>\d+)(?:-f(?P<fold>\d+))?-[0-9a-f]{8}")


def parse_run_id(run_id: str, dataset: str, protocol: str) -> dict[str, Any] | None:
    """The model, seed and fold (None: the test split) of ``run_id``, a ``make_run_id`` id of a run of
    ``dataset`` under ``protocol``; None where it is not one (another board's, or a `bench rescore`
    record's ``<run id>.<policy>``)."""
    prefix = f"{dataset}-{protocol}-"
    rest = _RUN_REST.fullmatch(run_id[len(prefix):]) if run_id.startswith(prefix) else None
    if rest is None:
        return None
    return {"model": rest["model"], "seed": int(rest["seed"]), "fold": None if rest["fold"] is None else int(rest["fold"])}


def run_stem(run_id: str) -> str | None:
    """``run_id`` less its digest, ``<dataset>-<protocol>-<model>-s<seed>[-f<fold>]``: what the runs of one
    model, seed and fold under other settings (another protocol version, overrides, --set) share; None
    where it is no ``make_run_id`` id (a `bench rescore` record's ``<run id>.<policy>``, another folder)."""
    rest = _RUN_REST.fullmatch(run_id)
    return None if rest is None else run_id[:rest.end("fold") if rest["fold"] is not None else rest.end("seed")]


def split_name(fold: int | None) -> str:
    """A record's ``split``: "test" (the dataset's test split) or "fold<k>" (cross-validation)."""
    return "test" if fold is None else f"fold{fold}"


def split_fold(split: str) -> int | None:
    """The cross-validation fold a record's ``split`` names; None for the dataset's test split."""
    return int(split[4:]) if split.startswith("fold") else None


_SPLIT = re.compile(r"test|fold\d+")  # split_name's values


def is_split(split: Any) -> bool:
    """Whether ``split`` is a record's ``split`` as ``split_name`` writes it: "test" or "fold<k>"."""
    return isinstance(split, str) and _SPLIT.fullmatch(split) is not None


def folds_text(folds: list[int]) -> str:
    """Cross-validation folds as boards and bench run name them: "0-4" (three or more in a row) or "0, 2"."""
    folds = sorted(set(folds))
    if len(folds) > 2 and folds == list(range(folds[0], folds[-1] + 1)):
        return f"{folds[0]}-{folds[-1]}"
    return ", ".join(map(str, folds))


def _is_type(value: Any, types: tuple) -> bool:
    # bool is an int subclass in Python; a flag where a count belongs is a bug, not a number.
    if isinstance(value, bool) and bool not in types:
        return False
    if int in types and not isinstance(value, int) and isinstance(value, numbers.Integral):
        return True  # numpy integers
    return isinstance(value, types)


def _check(obj: Mapping, spec: dict[str, tuple[tuple, str]], where: str) -> list[str]:
    problems = []
    for key, (types, desc) in spec.items():
        if key not in obj:
            problems.append(f"{where}{key}: missing ({desc})")
        elif not _is_type(obj[key], types):
            problems.append(f"{where}{key}: expected {desc}, got {type(obj[key]).__name__} {obj[key]!r:.40}")
    return problems


def validate_record(rec: Any) -> None:
    """Raise ``BenchError`` listing every missing or ill-typed required key of a run record.

    Checks the required keys and types of schema 1 (``_REQUIRED`` and the tables below it; ``_OPTIONAL``'s
    where present), the value sets of ``schema``, ``family``, ``policy`` and ``split``, a file-name-safe
    ``run_id``, and the required keys of every ``per_class`` / ``per_case`` row (first 5 problems of each list
    shown).
    Extra keys are allowed: a record may carry more than the schema promises.
    """
    if not isinstance(rec, Mapping):
        raise BenchError(f"run record must be a JSON object, got {type(rec).__name__}")
    if "schema" not in rec and "run_id" not in rec:  # another tool's JSON: one line, not a list of every key
        raise BenchError("not a run record of ssm-unet-bench (no 'schema', no 'run_id'); move it out of the "
                         "records folder, or give bench its own --results folder")
    problems = _check(rec, _REQUIRED, "") + _check(rec, {k: v for k, v in _OPTIONAL.items() if k in rec}, "")
    for key, spec in {**_REQUIRED_NESTED, **_OPTIONAL_NESTED}.items():
        if isinstance(rec.get(key), Mapping):
            problems += _check(rec[key], spec, f"{key}.")
    if rec.get("schema", SCHEMA_VERSION) != SCHEMA_VERSION:
        problems.append(f"schema: this bench reads schema {SCHEMA_VERSION}, got {rec['schema']!r}")
    if isinstance(rec.get("family"), str) and rec["family"] not in FAMILIES:
        problems.append(f"family: expected one of {', '.join(FAMILIES)}, got {rec['family']!r}")
    if isinstance(rec.get("policy"), str) and rec["policy"] not in POLICIES:
        problems.append(f"policy: expected one of {', '.join(POLICIES)}, got {rec['policy']!r}")
    if isinstance(rec.get("split"), str) and not is_split(rec["split"]):  # boards and rescore read its fold
        problems.append(f"split: expected 'test' (the dataset's test split) or 'fold<k>' (cross-validation fold k, "
                        f"as bench run --folds writes it), got {rec['split']!r}")
    if isinstance(rec.get("run_id"), str) and not SAFE_NAME.fullmatch(rec["run_id"]):
        problems.append(f"run_id: must be a safe file name (letters, digits, . _ + -), got {rec['run_id']!r}")
    for key, spec in (("per_class", _REQUIRED_PER_CLASS), ("per_case", _REQUIRED_PER_CASE)):
        rows = rec.get(key)
        if not isinstance(rows, list):
            continue
        row_problems = []
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                row_problems.append(f"{key}[{i}]: expected object, got {type(row).__name__}")
            else:
                row_problems += _check(row, spec, f"{key}[{i}].")
        if row_problems:
            problems.append(few(row_problems, sep="; "))
    if problems:
        rid = rec.get("run_id", "<no run_id>")
        raise BenchError(f"invalid run record {rid!r}: " + "; ".join(problems))  # one line, as every error


# ---------------------------------------------------------------------------------------------
# writing


def _to_json_value(value: Any, path: str) -> Any:
    """Plain JSON types: numpy scalars/arrays unwrapped, tuples as lists, NaN as null."""
    if isinstance(value, Mapping):
        return {str(k): _to_json_value(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json_value(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalar or array
        return _to_json_value(value.tolist(), path)
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isnan(value):
            return None
        if math.isinf(value):
            raise BenchError(f"run record: {path.lstrip('.')} is {value}; records store finite numbers "
                             "or NaN (n/a), a failure must use the policy's penalty value")
        return value
    if isinstance(value, Path):
        return str(value)
    raise BenchError(f"run record: {path.lstrip('.')} has type {type(value).__name__}, not JSON-serialisable")


def records_dir(results_dir: Path) -> Path:
    """Where the run records of ``results_dir`` are: one JSON file per finished run."""
    return Path(results_dir) / "records"


def runs_dir(results_dir: Path) -> Path:
    """Where the runs of ``results_dir`` keep their weights, checkpoints and logs: one folder per run."""
    return Path(results_dir) / "runs"


def synthetic_dir(results_dir: Path) -> Path:
    """Where `bench run --synthetic` keeps the synthetic data of ``results_dir`` (one folder per dataset)."""
    return Path(results_dir) / "synthetic"


TB_DIR = "tb"  # in a run's folder: its TensorBoard scalars
# in a run's folder: its checkpoints (bench.train writes them), the one a resume reads and the weights training
# ended with; here, as reports look for begun runs without importing bench.train (torch)
CHECKPOINT_DIR = "checkpoints"
LAST, FINAL = "last.pt", "final.pt"


def run_dir(results_dir: Path, run_id: str) -> Path:
    """The folder of ``run_id`` (a rescored record shares the folder of the run it rescored)."""
    return runs_dir(results_dir) / run_id


def record_path(results_dir: Path, run_id: str) -> Path:
    """Where the record of ``run_id`` lives (exists once that run finished)."""
    return records_dir(results_dir) / f"{run_id}.json"


def rescore_id(run_id: str, policy: str) -> str:
    """The id of `bench rescore`'s record of ``run_id`` under ``policy`` (``<run_id>.<policy>``)."""
    return f"{run_id}.{policy}"


def rescored_name(name: str) -> bool:
    """Whether a records/ file name is one a rescore wrote (``rescore_id``'s ``<run_id>.<policy>.json``)."""
    return any(Path(name).stem.endswith(f".{policy}") for policy in POLICIES)


def write_record(record: Mapping[str, Any], results_dir: Path, replace: bool = False) -> Path:
    """Validate ``record`` and write it to ``results_dir/records/<run_id>.json`` atomically.

    Returns the path written. Raises ``BenchError`` if the record is invalid, holds ±inf, or a
    record with the same ``run_id`` already exists (ids name the run: a clash means the same run
    finished twice, and overwriting it would lose the first); ``replace``: a `bench rescore` record of an
    earlier training of its run is written over (``stale_rescores``).
    """
    validate_record(record)
    text = json_text(record)
    path = record_path(results_dir, record["run_id"])
    try:  # exclusive: two processes finishing the same run (a shard started twice) cannot both write
        return atomic_write_text(path, text, exclusive=not replace)
    except FileExistsError:
        raise BenchError(f"{path}: a record with run_id {record['run_id']!r} already exists") from None


# ---------------------------------------------------------------------------------------------
# reading


def _iter_records(results_dir: Path) -> Iterator[tuple[Path, dict]]:
    results_dir = Path(results_dir)
    if results_dir.exists() and not results_dir.is_dir():
        raise BenchError(f"{results_dir}: is a file, not a folder; --results takes the results folder")
    if not results_dir.is_dir():
        raise absent(results_dir, f"results directory not found: {results_dir} (pass --results DIR)")
    if not records_dir(results_dir).is_dir() and records_dir(results_dir.parent) == results_dir \
            and any(results_dir.glob("*.json")):  # the records/ folder itself: read as empty, unsaid
        raise BenchError(f"{results_dir}: is the records folder of a results folder; give the results folder, "
                         f"{results_dir.parent}")
    for path in sorted(records_dir(results_dir).glob("*.json")):  # one file per run: its name (_read_named)
        yield path, _read_named(results_dir, path)


def _read_named(results_dir: Path, path: Path) -> dict[str, Any]:
    """The record file ``path`` of ``results_dir``'s records/, read and checked (``_read``), under its run's name
    (``record_path``): bench run finds a finished run by that name alone, so a record under another (a backup, a
    copy) counted on the boards while bench run trained its run again, and then two records of one run stopped
    every command."""
    return check_file_name(results_dir, path, _read(path))


def check_file_name(results_dir: Path, path: Path, rec: dict[str, Any]) -> dict[str, Any]:
    """``rec``, read from ``path``, where that is its run's record file; else BenchError saying what to do."""
    if why := _misnamed(results_dir, path, rec):
        raise BenchError(why)
    return rec


def _misnamed(results_dir: Path, path: Path, rec: dict[str, Any]) -> str | None:
    own = record_path(results_dir, rec["run_id"])
    if path.name == own.name:
        return None
    fix = (f"{own.name} is there too, and a run has one record: move {path.name} out of {path.parent}"
           if own.is_file() else f"rename it to {own.name}, or move it out of {path.parent} if it is a backup")
    return (f"{path}: holds the record of run {rec['run_id']!r}, whose file must be named {own.name} (bench run "
            f"finds a finished run by that name); {fix}")


def renamed_record(results_dir: Path, run_id: str) -> str | None:
    """Where run ``run_id`` has no record file but a file of records/ named after it holds its record (a backup,
    ``<id>-backup.json``, ``<id> copy.json``), what every reader says of that file (``check_file_name``): bench
    run, which finds a finished run by its file's name, would train it again. None otherwise; a file that does
    not read is passed over (readers name it)."""
    if record_path(results_dir, run_id).is_file():
        return None
    for path in sorted(records_dir(results_dir).glob(f"{glob.escape(run_id)}?*.json")):
        try:
            rec = _read(path)
        except BenchError:
            continue
        if rec["run_id"] == run_id:
            return _misnamed(results_dir, path, rec)
    return None


def dataset_records(results_dir: Path, dataset: str) -> list[dict[str, Any]]:
    """The records of ``dataset``'s runs in ``results_dir`` that read and check as ``load`` reads them, for
    planning a run (bench run); one that does not is passed over (``load`` names it: a damaged record of one
    run does not stop planning the grid)."""
    found = []
    for path in sorted(records_dir(results_dir).glob(f"{dataset}-*.json")):
        with suppress(BenchError):
            found.append(_read_named(results_dir, path))
    return found


def read_record(results_dir: Path, run_id: str) -> dict[str, Any]:
    """One run's record, read and checked as ``load`` reads them (for the commands that work on a
    run ``load`` selected: rescore, predict, plots)."""
    return _read(record_path(results_dir, run_id))


def record_files(path: Path) -> tuple[list[Path], bool]:
    """The record files ``bench run --from-record PATH`` names, and whether PATH is a folder of records: a
    record file, or a run's folder (``runs/<run_id>``, whose record is ``records/<run_id>.json`` beside
    ``runs/``), names its record; a records folder, or a results folder holding one, every ``.json`` in it
    (sorted). BenchError where PATH is none of these."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path], False
    if not path.is_dir():
        raise absent(path, f"{path}: not found; expected a run record (records/<run_id>.json), a run folder, or a "
                           "records or results folder")
    where = Path(os.path.abspath(path))  # "<id>" or "../<id>" from inside runs/ too: its parents are looked at
    if (own := record_path(where.parent.parent, where.name)).is_file():
        return [own], False
    results = records_dir(path).is_dir()
    found = sorted((records_dir(path) if results else path).glob("*.json"))
    began = (path / RUN_LOG).is_file() or (path / CHECKPOINT_DIR).is_dir()  # a run's folder, not any in a runs/
    if not found and began and where.parent == runs_dir(where.parent.parent):  # its record gone
        raise BenchError(f"{path}: a run folder whose record {own} is missing (deleted, or the run did not finish: "
                         f"its {path / RUN_LOG} says why); --from-record re-runs a run from its record: restore that "
                         "file, or pass a copy of it")
    if not found:
        raise BenchError(f"{path}: holds no run record; expected a record (records/<run_id>.json), a run folder "
                         "(runs/<run_id>, beside records/), or a records or results folder holding records")
    return found, True


def record_at(path: Path) -> dict[str, Any]:
    """The run record ``path`` names: its JSON file, or a run's folder (``record_files``), read and
    checked as ``load`` reads them."""
    files, folder = record_files(path)
    if folder:
        raise BenchError(f"{path}: a folder of records; expected a record (records/<run_id>.json) or a run folder "
                         "(runs/<run_id>, beside records/)")
    return _read(files[0])


def _read(path: Path) -> dict[str, Any]:
    return checked_record(path, parse_record(path))


def parse_record(path: Path) -> Any:
    """The JSON of the record file ``path``, unchecked (``checked_record`` checks it); BenchError naming the file
    where it does not read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchError(f"{path}: not a readable run record ({exc}); fix or move the file") from exc


def checked_record(path: Path, rec: Any) -> dict[str, Any]:
    """``rec``, the JSON of the record file ``path`` (``parse_record``), once ``validate_record`` passes it;
    BenchError naming the file where it does not."""
    try:
        validate_record(rec)
    except BenchError as exc:
        raise BenchError(f"{path}: {exc}") from exc
    return rec


def json_text(obj: Any) -> str:
    """A JSON file's text as bench writes them (a record, ``bench score --format json``): plain values (NaN as
    null, ±inf refused), indented, non-ASCII as it is."""
    return json.dumps(_to_json_value(obj, ""), indent=1, allow_nan=False, ensure_ascii=False) + "\n"


def canonical_json(obj: Any) -> str:
    """The one spelling of a configuration (``model_config``, ``protocol_overrides``) in tables: ``load``'s
    columns, ``bench profile``'s CSV and ``bench.profiles.load_profiles``, so that pandas joins on it."""
    return json.dumps(_to_json_value(obj, ""), sort_keys=True, separators=(",", ":"))


def config_dict(config: Any) -> dict[str, Any]:
    """A configuration as records and tables keep it (a dict, or its ``canonical_json`` text) as a dict; {} where
    there is none (``""``, None: a profile written before configurations were kept)."""
    if isinstance(config, str):
        config = json.loads(config) if config else {}
    return config if isinstance(config, dict) else {}


def short_fingerprint(fp: Mapping[str, Any]) -> str:
    """The one spelling of a machine in tables (``env.fingerprint`` as records and profiles keep it): on CUDA
    the GPU, driver, CUDA, cuDNN and torch; on a CPU the model, threads, ATen's vector ISA and torch. What
    older records lack is left out. Runs' ``device``/``train_devices`` and profiles' ``fingerprint`` spell
    it so, and cost tables group timings by it."""
    if str(fp.get("device", "")).startswith("cuda"):
        head = str(fp.get("gpu") or "unknown GPU")
        parts = (("driver", "driver"), ("CUDA", "cuda"), ("cuDNN", "cudnn"), ("torch", "torch"))
    else:
        head = str(fp.get("cpu") or "unknown CPU") + (f" x{fp['threads']} threads" if fp.get("threads") else "") \
            + (f" ({fp['cpu_capability']})" if fp.get("cpu_capability") else "")
        parts = (("torch", "torch"),)
    return " / ".join([head, *(f"{what} {fp[key]}" for what, key in parts if fp.get(key) is not None)])


def _train_devices(rec: Mapping[str, Any]) -> str | None:
    # only a run resumed elsewhere: else ``device`` says it, in the words every record has (older ones too)
    devices = rec["train"].get("devices")
    return "; ".join(map(str, devices)) if isinstance(devices, list) and len(devices) > 1 and not rec.get("weights") \
        else None


def _run_ids(rec: Mapping[str, Any]) -> dict[str, Any]:
    proto = rec["protocol"]
    return {
        "run_id": rec["run_id"],
        "model": rec["model"],
        "model_config": canonical_json(rec["model_config"]),
        "family": rec["family"],
        "dataset": rec["dataset"],
        "dataset_name": rec.get("dataset_name") or rec["dataset"],  # absent in older records
        "synthetic": rec["synthetic"],
        "split": rec["split"],
        "protocol": proto["name"],
        "protocol_version": proto["version"],
        "protocol_hash": proto["hash"],
        "off_protocol": proto["off_protocol"],
        "protocol_overrides": canonical_json(proto["overrides"]),
        "policy": rec["policy"],
        "seed": rec["seed"],
        # the pretrained file and the data: boards keep runs apart by them (bench.report.label_runs)
        "init": file_tag(init["file"], init["sha256"]) if (init := rec.get("init")) else None,
        "data_id": rec.get("data_id"),  # what the data was (bench.run.RunSpec.data_id); absent in older records
        "tiny": rec.get("tiny"),  # built with --tiny (the label's "(tiny)"); absent in older records
        # the keys --set changed (labels name them), a comma list; None in older records
        "set_keys": ",".join(rec["set_keys"]) if isinstance(rec.get("set_keys"), list) else None,
        # weights evaluated as given (bench run --weights), not trained by the run: boards say so on its row
        "weights": file_tag(w["file"], w["sha256"]) if (w := rec.get("weights")) else None,
    }


def file_tag(file: str, sha256: str) -> str:
    """A weights file as row labels name it: its name and its sha256's first 8 hex digits."""
    return f"{file}@{sha256[:8]}"


def _slurm_job(launch: Any) -> str | None:
    """The Slurm job a run ran in as Slurm names it (an array's task: "<array job>_<task>"), or None."""
    slurm = (launch or {}).get("slurm") or {}
    if slurm.get("array_job_id") and slurm.get("array_task_id"):
        return f"{slurm['array_job_id']}_{slurm['array_task_id']}"
    return slurm.get("job_id")


def _tolerances_text(tolerances: Any) -> str | None:
    """A per-class NSD tolerance table ({name: tolerance}) as ``"liver 5, spleen 3"``; None where the
    run had none (one tolerance for all classes is the ``nsd_tolerance`` metric column)."""
    if not isinstance(tolerances, Mapping):
        return None
    return ", ".join(f"{name} {tol:g}" for name, tol in tolerances.items())


def _run_row(rec: Mapping[str, Any]) -> dict[str, Any]:
    cost, train = rec["cost"], rec["train"]
    row = _run_ids(rec)  # init: absent in older records; null: trained from scratch
    commits = train.get("commits") if isinstance(train.get("commits"), list) else None
    row.update(
        n_train=rec.get("n_train"),  # training items (slices, images, cases); absent in older records
        data_root=rec.get("data_root"),  # where the data was read from (data_id says what it was)
        rescored_from=rec.get("rescored_from"),  # `bench rescore`: the run whose weights were scored
        status=rec["status"],
        git_commit=rec["git_commit"],
        code_digest=rec.get("code_digest"),  # bench's sources (env.source_digest); absent in older records
        # every code version it trained under (code_version; a resume under other code adds one), a comma
        # list; None in records older than train.commits (git_commit, code_digest name their code)
        train_commits=",".join(v or "unknown" for v in commits) if commits else None,
        # bench rescore: the code that computed the record's numbers (git_commit, code_digest: its training's)
        scored_commit=(rec.get("rescored_with") or {}).get("git_commit"),
        scored_digest=(rec.get("rescored_with") or {}).get("code_digest"),
        model_code=rec.get("model_code"),  # a plugin's sources (registry.model_code); null for built-ins
        device=short_fingerprint(rec["device"]),
        # where a run resumed on other devices trained (short_fingerprint each), "; "-joined; None for one
        # device (``device`` names it), given weights and records older than train.devices
        train_devices=_train_devices(rec),
        host=(rec.get("launch") or {}).get("host"),  # where it ran (older records: None)
        slurm_job=_slurm_job(rec.get("launch")),
        scan_backend=rec["scan_backend"],
        hd95_unit=rec.get("hd95_unit"),  # absent in records written before it was recorded
        nsd_tolerances=_tolerances_text(rec["metrics"].get("nsd_tolerances")),
        started_at=rec["started_at"],
        finished_at=rec["finished_at"],
        wall_time_s=rec["wall_time_s"],
        train_time_s=None if rec.get("weights") else train.get("time_s"),  # evaluated weights: trained elsewhere
        train_loss=train.get("final_loss"),  # the last epoch's mean loss: drift sees training paths
        # processes that trained it (--nproc; older records: 1, as every run was then); evaluated weights: none
        world_size=None if rec.get("weights") else train.get("world_size", 1),
    )
    # input_shape ("1x1x224x224"): what the counts were taken at, as `bench profile` names it
    for key in ("params", "trainable_params", "input_shape", "macs", "paper_macs", "flops", "fps", "peak_mem_mb"):
        row[key] = cost.get(key)
    row["peak_mem_kind"] = cost.get("peak_mem_kind")  # what peak_mem_mb measured: "cuda_train", a whole training
    # the run's class names in class-id order (JSON): its board orders per-class columns by it, since
    # the frame's columns follow every record in the folder (another dataset may number them otherwise)
    row["classes"] = json.dumps([pc["name"] for pc in sorted(rec["per_class"], key=lambda pc: pc["class"])])
    row.update(miss_counts(case.get("empty") for case in rec["per_case"]))
    for key, value in rec["metrics"].items():
        # Only scalars become columns; a metric named like an id column would shadow it.
        if isinstance(value, (numbers.Real, type(None))) and not isinstance(value, bool):
            row[key if key not in RUN_COLUMNS else f"metrics/{key}"] = value
    for pc in rec["per_class"]:
        row[f"dice/{pc['name']}"] = pc.get("dice")
        row[f"hd95/{pc['name']}"] = pc.get("hd95")
    return row


def miss_counts(empty: Iterable[Any]) -> dict[str, int]:
    """From per-case rows' ``empty`` values: ``n_present``, the case x class entries whose structure
    is in the reference, and ``n_missed``, those of them predicted nowhere (a policy may score a miss
    HD95 0, the best value: boards say how many)."""
    empty = list(empty)
    return {"n_present": sum(e in ("none", "ref_only") for e in empty), "n_missed": empty.count("ref_only")}


def _same(stored: Any, recomputed: Any) -> bool:
    """Equal but for float noise (a JSON round trip, another summation order); NaN (null) equals NaN. A word (a
    case row's ``empty`` label) equals only itself."""
    if isinstance(stored, str) or isinstance(recomputed, str):
        return stored == recomputed
    a, b = (math.nan if v is None else float(v) for v in (stored, recomputed))
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def restated(rec: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The numbers of ``rec`` its own case rows do not give: {key: (stored, recomputed)}.

    First each case row's numbers its pixel counts give (``bench.metrics.count_scores`` under the record's
    policy, as the run scored them: dice, iou, acc, spe, sen, n_pred, n_ref, and the ``empty`` label the boards'
    miss counts take), keyed ``case_key``: ``"case img0003 class 2 (liver): dice"``; a row without numeric tp,
    fp, fn, tn (an older record) is taken as stored, and hd95 and nsd, which counts do not give, always are.
    Then, from the rows so corrected, the aggregates (``bench.metrics.aggregate``): ``key`` a ``metrics`` key
    or ``dice/<class>`` / ``hd95/<class>`` (``per_class``). Only keys the record stores are compared; {} where
    its rows lack what the policy needs (nothing to check against). A record edited by hand (``metrics.dice``,
    or one case's dice) shows here, and so would one written by a bench that scored or aggregated otherwise:
    the numbers are recomputed under this code."""
    return _restated(rec, _recount(rec))


def _restated(rec: Mapping[str, Any], recount: tuple[list[dict[str, Any]], dict] | None) -> dict[str, tuple[Any, Any]]:
    """``restated(rec)`` from ``recount``, ``_recount(rec)``: ``load`` recounts a record once for its run and
    case rows."""
    from bench import metrics

    if not rec["per_case"] or recount is None:
        return {}
    rows, out = recount[0], dict(recount[1])
    try:
        cases = pd.DataFrame(rows)
        agg = metrics.aggregate(cases, rec["policy"])
        per_class = {pc["class"]: pc for pc in metrics.aggregate_per_class(cases, rec["policy"])}
    except BenchError:
        return {}
    out.update({k: (v, agg[k]) for k, v in rec["metrics"].items()
                if k in agg and (v is None or isinstance(v, numbers.Real)) and not _same(v, agg[k])})
    for pc in rec["per_class"]:
        again = per_class.get(pc["class"], {})
        for m in ("dice", "hd95"):
            if m in pc and m in again and not _same(pc[m], again[m]):
                out[f"{m}/{pc['name']}"] = (pc[m], again[m])
    return out


def recounted(rec: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, tuple[Any, Any]]]:
    """``rec``'s case rows (null as NaN, as the run had it) with the numbers their pixel counts give
    (``bench.metrics.count_scores`` under the record's policy) where they keep numeric tp, fp, fn, tn, and
    what differed from the stored ones: {``case_key``: (stored, recomputed)}. BenchError where the policy
    is none this code knows."""
    from bench import metrics

    rows, out = [], {}
    for stored in rec["per_case"]:
        row = {k: math.nan if v is None else v for k, v in stored.items()}
        counts = [row.get(k) for k in metrics.COUNTS]
        if all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in counts):
            again = metrics.count_scores(*counts, policy=rec["policy"])
            for m in [m for m in again if m in row and not _same(row[m], again[m])]:
                out[case_key(row, m)] = (stored[m], again[m])
                row[m] = again[m]
        rows.append(row)
    return rows, out


def _recount(rec: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, tuple[Any, Any]]] | None:
    """``recounted(rec)``; None where the record's policy is none this code knows."""
    try:
        return recounted(rec)
    except BenchError:
        return None


def case_key(row: Mapping[str, Any], metric: str) -> str:
    """``restated``'s key of a case row's number: "case img0003 class 2 (liver): dice"; an id that says it is a
    case already is not told so twice: "case0000 class 1 (aorta): dice", not "case case0000 ..."."""
    case = str(row.get("case"))
    said = case if case.casefold().startswith("case") else f"case {case}"
    return f"{said} class {row.get('class')} ({row.get('name')}): {metric}"


def _restate(row: dict[str, Any], diffs: Mapping[str, tuple[Any, Any]], rec: Mapping[str, Any], path: Path,
             found: list[str]) -> None:
    """``row`` with the numbers ``diffs`` (``restated(rec)``) names replaced by the recomputed ones, and its
    ``restated`` text ("case img0003 class 2 (liver): dice 0.91 stored, 0.4 from its tp/fp/fn; dice 0.8 stored,
    0.3312 from the case rows (stored by code 0123456789ab)"; a few of each, and how many more); ``found``
    gains the file's line."""
    if not diffs:
        return
    # restated's keys of the aggregates (a metrics key, dice/<class>, hd95/<class>); the others are case rows'
    cases = {k for k in diffs if k not in rec["metrics"] and not k.startswith(("dice/", "hd95/"))}
    for key, (_, value) in diffs.items():
        if key not in cases:  # a case row's number is no column of the run's: its aggregates carry it
            row[key if "/" in key or key not in RUN_COLUMNS else f"metrics/{key}"] = value
    # spe and acc count the true negatives too
    said = [few([f"{k} {_num(diffs[k][0])} stored, {_num(diffs[k][1])} from its tp/fp/fn"
                 f"{'/tn' if k.endswith(('acc', 'spe')) else ''}" for k in diffs if k in cases], 2, sep="; "),
            few([f"{k} {_num(s)} stored, {_num(r)} from the case rows" for k, (s, r) in diffs.items()
                 if k not in cases], 3, sep="; ")]
    row["restated"] = "; ".join(t for t in said if t)
    # the miss counts _run_row took from the stored empty labels: as the recounted ones give them
    if flips := [diffs[k] for k in cases if k.endswith(": empty")]:
        was, now = miss_counts(s for s, _ in flips), miss_counts(r for _, r in flips)
        row.update({k: row[k] + now[k] - was[k] for k in now if k in row})
    # the code that computed the stored numbers: another version's aggregation differs without any hand edit
    scored = rec.get("rescored_with") or rec  # bench rescore computed a rescored record's numbers
    if version := code_version(scored.get("git_commit"), scored.get("code_digest")):
        row["restated"] += f" (stored by code {short_commit(version)})"
    found.append(f"{path}: {row['restated']}")


def _num(value: Any) -> str:
    return "null" if value is None else value if isinstance(value, str) else f"{float(value):.6g}"


def _class_order(records: list[dict]) -> list[str]:
    pairs = {(pc["class"], pc["name"]) for rec in records for pc in rec["per_class"]}
    names: list[str] = []
    for _, name in sorted(pairs):
        if name not in names:
            names.append(name)
    return names


def load(results_dir: Path, level: str = "run", recheck: bool = False, current: bool = False) -> pd.DataFrame:
    """Read every record under ``results_dir/records/`` into one DataFrame.

    ``level="run"``: one row per run. Columns ``RUN_COLUMNS`` (``rescored_from_policy``: a rescored
    record's run's policy, where that record is in the folder; ``device`` is the machine's
    ``short_fingerprint``, as profiles' ``fingerprint`` spells it; ``model_config``/``protocol_overrides``
    are canonical JSON strings, ``"{}"`` when unset; ``nsd_tolerances`` a per-class NSD tolerance table as
    text; ``host`` and ``slurm_job`` where it ran, None in records older than ``launch``; ``train_commits``
    the code versions it trained under (``code_version``), a comma list, None in records older than them),
    then the scalar aggregate metrics (``STANDARD_METRICS`` first, others sorted), then
    ``dice/<class name>`` and ``hd95/<class name>`` per class, in class-id order.

    ``level="case"``: tidy long table, one row per (run, case, class): ``RUN_ID_COLUMNS`` repeated,
    then ``CASE_COLUMNS`` (and any extra per-case keys), then the run's ``hd95_unit``.

    ``recheck`` (``bench report``, ``bench check``): each run's stored aggregates and per-class numbers are recomputed
    from its case rows, each row's numbers (its ``empty`` label too, and so the run's miss counts) first from its
    own pixel counts where it keeps them (``restated``); where they differ (a record edited by hand, or written
    by a bench that scored or aggregated otherwise) the row holds the recomputed ones and its ``restated`` column
    says what was stored (naming the case rows) and which code stored it, and one warning names the files.
    Boards then agree with their CIs and tests, which the case rows give: with ``level="case"``, ``recheck``
    gives each row's numbers as its counts give them (``recounted``; the run level's warning says which).

    ``current`` (what builds boards: bench report, check, figure): `bench rescore` records of weights their run
    no longer has (``stale_rescores``: trained again since) are left out, and one warning names them and the fix,
    of its own category ``StaleRescoresLeftOut`` (a caller that scores them again ignores it by that).

    JSON ``null`` reads back as NaN. An unreadable or invalid file raises ``BenchError`` naming
    it: silently dropping a result would change a leaderboard without anyone noticing. A results
    directory without records gives an empty frame with the columns above.
    """
    if level not in ("run", "case"):
        raise BenchError(f"load(level={level!r}): expected 'run' or 'case'")
    return _load(results_dir, (level,), recheck, current)[level]


def load_both(results_dir: Path, recheck: bool = False, current: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``load``'s run rows and case rows (``level="run"``, then ``"case"``) from one read of each record, and with
    ``recheck`` one recount of its case rows (bench report takes both); each warning said once."""
    frames = _load(results_dir, ("run", "case"), recheck, current)
    return frames["run"], frames["case"]


def load_with_records(results_dir: Path, recheck: bool = False,
                      current: bool = False) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """``load``'s run rows and the records they come from as read (``read_record``'s), by run id, from one read of
    each record (bench report --format methods writes from the full records)."""
    frames = _load(results_dir, ("run", "record"), recheck, current)
    return frames["run"], frames["record"]


def _load(results_dir: Path, levels: tuple[str, ...], recheck: bool, current: bool) -> dict[str, Any]:
    """``load``'s frame of each of ``levels`` ("run", "case"; "record": the records as read, by run id); its
    warnings name the caller of load, load_both or load_with_records."""
    read = list(_iter_records(results_dir))
    if current and (stale := stale_rescores([rec for _, rec in read])):
        boards = "its board" if len(stale) == 1 else "their boards"
        warnings.warn(f"{stale_text(results_dir, stale)}; left out of {boards} until then", StaleRescoresLeftOut,
                      stacklevel=3)
        gone = {rec["run_id"] for rec in stale}
        read = [(path, rec) for path, rec in read if rec["run_id"] not in gone]
    recounts = [_recount(rec) for _, rec in read] if recheck else None
    frames = {}
    if "run" in levels:
        frames["run"], found = _run_frame(read, recounts)
        if found:
            warnings.warn(f"{len(found)} record(s) hold numbers other than this code recomputes from their own case "
                          f"rows (edited by hand, or stored by a version of bench that aggregated otherwise): "
                          f"{few(found, 3, sep='; ')}; reports and checks use the recomputed numbers", stacklevel=3)
    if "case" in levels:
        frames["case"] = _case_frame([rec for _, rec in read], recounts)
    if "record" in levels:
        frames["record"] = {rec["run_id"]: rec for _, rec in read}
    return frames


def _case_frame(records: list[dict], recounts: list | None) -> pd.DataFrame:
    """``load(level="case")``'s frame of ``records``; with ``recounts`` (``_recount`` of each), the rows as their
    counts give them."""
    per_case = [rec["per_case"] if recount is None else recount[0]
                for rec, recount in zip(records, recounts or [None] * len(records))]
    # each row names its HD95 unit (mm, voxels, pixels: the run's policy and data decide)
    rows = [{**_run_ids(rec), **case, "hd95_unit": rec.get("hd95_unit")} for rec, cases in zip(records, per_case)
            for case in cases]
    frame = pd.DataFrame(rows)
    extra = [c for c in frame.columns if c not in RUN_ID_COLUMNS + CASE_COLUMNS]
    frame = frame.reindex(columns=RUN_ID_COLUMNS + CASE_COLUMNS + extra)
    numeric = [c for c in CASE_COLUMNS if c not in ("case", "name", "empty")]
    return _numeric(frame, numeric)


def _run_frame(read: list[tuple[Path, dict]], recounts: list | None) -> tuple[pd.DataFrame, list[str]]:
    """``load``'s run frame of ``read`` ((path, record) pairs), and with ``recounts`` (``_recount`` of each) the
    restated files' lines (``_restate``)."""
    records = [rec for _, rec in read]
    rows, found = [_run_row(rec) for rec in records], []
    policies = {rec["run_id"]: rec["policy"] for rec in records}
    for row in rows:  # `bench rescore`: the policy its run was first scored under (None: that record is gone)
        row["rescored_from_policy"] = policies.get(row["rescored_from"]) if row["rescored_from"] else None
    if recounts is not None:
        for row, (path, rec), recount in zip(rows, read, recounts):
            _restate(row, _restated(rec, recount), rec, path, found)
    restated_text = [row.pop("restated", None) for row in rows]
    frame = pd.DataFrame(rows)
    metric_keys = {c for c in frame.columns if c not in RUN_COLUMNS and "/" not in c}
    metric_keys |= {c for c in frame.columns if c.startswith("metrics/")}
    if not records:
        metric_keys = set(STANDARD_METRICS)
    metrics = [m for m in STANDARD_METRICS if m in metric_keys]
    metrics += sorted(metric_keys - set(STANDARD_METRICS))
    per_class = [f"{m}/{name}" for name in _class_order(records) for m in ("dice", "hd95")]
    columns = RUN_COLUMNS + metrics + per_class
    frame = frame.reindex(columns=columns)
    if recounts is not None:  # the stored numbers replaced, per run (None: none)
        frame["restated"] = pd.Series(restated_text, index=frame.index, dtype=object)
    numeric = ["wall_time_s", "train_time_s", "train_loss", "world_size", "params", "trainable_params", "macs", "paper_macs",
               "flops", "fps", "peak_mem_mb"] + metrics + per_class  # fmt: skip
    return _numeric(frame, numeric), found


def _numeric(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    # JSON null arrives as None; to_numeric turns it into NaN, and a column that is null in
    # every record becomes float instead of staying object-typed.
    for col in columns:
        if col in frame.columns:
            frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame


def scores_text(rec: Mapping[str, Any]) -> str:
    """"DSC 81.23 % · HD95 18.40 mm" from a run record (no HD95 where the policy computes none); bench run
    and bench rescore print it alike, so the unit is said wherever a run's scores are."""
    m = rec["metrics"]
    hd = m.get("hd95")
    has_hd = hd is not None and hd == hd  # legacy-isic computes no HD95 (NaN)
    hd_unit = f" {rec['hd95_unit']}" if rec.get("hd95_unit") else ""
    return f"DSC {100 * m['dice']:.2f} %" + (f" · HD95 {hd:.2f}{hd_unit}" if has_hd else "")


def finished(df_runs: pd.DataFrame) -> pd.DataFrame:
    """``load``'s rows of finished runs: what boards, drift checks and rescoring take (a run that did
    not finish feeds no board, CI, test, rank, plot or case row)."""
    if df_runs.empty:
        return df_runs
    if "status" not in df_runs:
        case_rows = "case" in df_runs  # load(level="case")'s rows, given where run rows go
        raise BenchError("expected the run rows of records.load(results_dir); got a frame without a 'status' column"
                         + (" (case rows: they go as df_cases)" if case_rows else ""))
    return df_runs[df_runs["status"] == "finished"]


def no_runs(results_dir: Path | str, *filters: str | Iterable[str] | None) -> str:
    """What every command says of a results folder without a finished run (most likely not the folder
    meant, or its runs failed): the runs begun there, if any; where ``filters`` (the --models, --dataset,
    --policy asked for, ``name_list``'s forms) name some, of those."""
    if any(name_list(f) is not None for f in filters):  # "all" filters nothing
        return f"{results_dir}: no finished runs of these --models/--dataset/--policy"
    # a run that began wrote its log or checkpoints; a folder of a claim alone (a killed rescore's) did not
    begun = sorted(p.name for p in runs_dir(Path(results_dir)).glob("*")
                   if (p / RUN_LOG).is_file() or (p / CHECKPOINT_DIR).is_dir())
    if begun:
        return (f"{results_dir}: no finished runs; {len(begun)} run(s) began here ({few(begun, 3)}) and none wrote "
                f"its record (a run failed or is still training: its {RUN_LOG} in {runs_dir(Path(results_dir))}/<run "
                "id>/ says why; the same command continues)")
    return f"{results_dir}: no finished runs; pass the --results folder that `bench run` wrote"


def unrecorded_runs(results_dir: Path | str, boards: Iterable[tuple[str, str]],
                    models: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The runs of ``boards`` ((dataset, protocol name) pairs; of ``models`` only, where given) that began
    in ``results_dir`` (a folder under runs/ with a log or a checkpoint) and have no record of their own
    (a ``bench rescore`` copy, on another policy's board, is said in ``why``), and that no live process
    trains or scores now (its claim, bench.claim): each as {run_id, dataset, protocol, model, seed, split,
    why, settings}, ``settings`` its row label and protocol changes where its log says them (``runlog.settings``;
    else None), ``why`` as reports say it ("finished, record missing: deleted?", "failed: <reason>",
    "interrupted"; "...; its rescore under strict remains"). A finished run's record deleted, or a
    diverged seed, would otherwise leave a board with fewer seeds and nothing said."""
    from bench.claim import held_by
    from bench.runlog import last_outcome, settings

    results_dir, boards, wanted = Path(results_dir), sorted(set(boards)), None if models is None else set(models)
    found = []
    for folder in sorted(p for p in runs_dir(results_dir).glob("*") if p.is_dir()):
        run_id = folder.name
        for dataset, protocol in boards:
            parts = parse_run_id(run_id, dataset, protocol)
            if parts is None or (wanted is not None and parts["model"] not in wanted):
                continue
            ckpt = folder / CHECKPOINT_DIR
            began = (folder / RUN_LOG).is_file() or (ckpt / LAST).is_file() or (ckpt / FINAL).is_file()
            if not began or record_path(results_dir, run_id).is_file() or held_by(results_dir, run_id):
                break
            state, said = last_outcome(folder) or (None, "")
            why = {"finished": "finished, record missing: deleted?", "failed": f"failed: {said}",
                   "interrupted": "interrupted"}.get(state)
            if why is None:  # its log says nothing of an end: killed outright, or older than run logs
                why = "finished, record missing" if (ckpt / FINAL).is_file() else "interrupted"
            # a rescored copy is on its own policy's board only: the run is gone from its first one
            kept = [p for p in POLICIES if record_path(results_dir, rescore_id(run_id, p)).is_file()]
            why += f"; its rescore under {', '.join(kept)} remains" if kept else ""
            found.append({"run_id": run_id, "dataset": dataset, "protocol": protocol, "model": parts["model"],
                          "seed": parts["seed"], "split": split_name(parts["fold"]), "why": why,
                          "settings": settings(folder)})
            break
    return found


def scored_other_weights(rescored: Mapping[str, Any], source: Mapping[str, Any]) -> bool:
    """Whether ``rescored``, a `bench rescore` record of ``source``'s run, scored other weights than ``source``
    names: the run was trained again since its rescore (its record deleted, `bench run` training it afresh).
    By the sha256 of the checkpoints scored (``scored_weights``) where both keep it; else by the training's
    ``train.epoch_losses`` and ``train.final_loss`` (those both have), equal exactly where one training made
    the weights; False where neither tells (records older than both)."""
    shas = [(r.get("scored_weights") or {}).get("sha256") for r in (rescored, source)]
    if all(shas):
        return shas[0] != shas[1]
    trains = [r.get("train") or {} for r in (rescored, source)]
    keys = [k for k in ("epoch_losses", "final_loss") if all(t.get(k) is not None for t in trains)]
    return any(trains[0][k] != trains[1][k] for k in keys)


class StaleRescoresLeftOut(UserWarning):
    """``load(current=True)``'s warning that it left stale rescores out (``stale_rescores``): a category, so
    that a caller which scores them again (``bench.rescore.plan_rescore``) can ignore it."""


def stale_rescores(recs: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The `bench rescore` records among ``recs`` whose run's record, among them too, names other weights
    (``scored_other_weights``): the numbers of an earlier training, which boards leave out."""
    by_id = {rec["run_id"]: rec for rec in recs}
    return [rec for rec in recs if (source := by_id.get(rec.get("rescored_from") or "")) is not None
            and scored_other_weights(rec, source)]


def stale_text(results_dir: Path | str, stale: list[Mapping[str, Any]]) -> str:
    """``stale_rescores``' records in words: their files, their runs, and the command that scores the new
    weights (each policy's)."""
    files = few([str(record_path(Path(results_dir), rec["run_id"])) for rec in stale], 3)
    runs = sorted({rec["rescored_from"] for rec in stale})
    policies = sorted({rec["policy"] for rec in stale})
    fix = " and ".join(f"`bench rescore --policy {p} --results {shlex.quote(str(results_dir))}`" for p in policies)
    return (f"{files} scored the weights of an earlier training of run{'s' if len(runs) > 1 else ''} {few(runs, 3)}, "
            f"trained again since: {fix} score{'' if len(policies) > 1 else 's'} the new weights")


def source_missing(results_dir: Path | str, rescored: Mapping[str, Any]) -> str:
    """What commands that need a run's own record say of a `bench rescore` record (``run_id``, ``rescored_from``,
    ``policy``: a record or a ``load`` row) whose run's record is gone, as ``unrecorded_runs`` says that run."""
    run_id, policy = rescored["rescored_from"], rescored["policy"]
    return (f"run {run_id}: its record {record_path(Path(results_dir), run_id)} is missing (deleted?); its rescore under "
            f"{policy} remains ({record_path(Path(results_dir), rescored['run_id']).name}), but the run's model and data "
            "are read from its own record: restore that file, or train the run again (bench run), then `bench rescore "
            f"--policy {policy} --results {shlex.quote(str(results_dir))}`")


def finished_runs(df_runs: pd.DataFrame, results_dir: Path | str, models: str | Iterable[str] | None = None,
                  datasets: str | Iterable[str] | None = None, rescored: bool = False) -> pd.DataFrame:
    """The finished runs in ``df_runs`` (``load(results_dir)``) of ``models`` on ``datasets``
    (``select_runs``), without the records ``bench rescore`` added unless ``rescored``. BenchError
    where the folder holds no finished run: most likely not the folder meant."""
    done = finished(df_runs)
    if done.empty:
        raise BenchError(no_runs(results_dir))
    return select_runs(done if rescored else done[done["rescored_from"].isna()], models, datasets, results_dir)


def select_runs(df_runs: pd.DataFrame, models: str | Iterable[str] | None = None,
                datasets: str | Iterable[str] | None = None, results_dir: Path | str = "",
                profiled: Iterable[str] = (), policies: str | Iterable[str] | None = None) -> pd.DataFrame:
    """The runs of ``models`` on ``datasets`` (a reader's name such as ``synapse``, or a board's data
    name such as ``nnunet:ACDC``) scored under ``policies`` (a list or a comma list each,
    ``bench.names.name_list``); None: all. BenchError for a name no run has, with the names there,
    unless ``profiled`` has it (a model with a cost table only)."""
    given = {"--models": models, "--dataset": datasets, "--policy": policies}
    models, datasets, policies = name_list(models), name_list(datasets), name_list(policies)
    for option, names, columns in (("--models", models, ["model"]), ("--dataset", datasets, ["dataset", "dataset_name"]),
                                   ("--policy", policies, ["policy"])):
        if names is None:
            continue
        if not names:  # `--models ,` showed every model
            raise nothing_named(option, given[option], {"--models": "unet,vmunet", "--dataset": "synapse,isic17",
                                                        "--policy": "strict"}[option])
        have = sorted({str(v) for c in columns if c in df_runs for v in df_runs[c].dropna()})
        names = matched_names(names, [*have, *(profiled if option == "--models" else [])])
        for name in names:
            if name not in have and not (option == "--models" and name in set(profiled)):
                hint = did_you_mean(name, have)
                if option == "--models" and hint:  # a registered model without runs is no misspelling
                    from bench.model_facts import built_in_facts

                    if built_in_facts(name):  # a built-in: known without loading the models (torch), as reports run
                        hint = ""
                    else:
                        from bench.registry import list_models

                        hint = "" if name in list_models() else hint
                raise BenchError(f"{option} {name}: no runs of it in {results_dir} (there: {', '.join(have) or 'none'})"
                                 f"{hint}")
        df_runs = df_runs[np.logical_or.reduce([df_runs[c].isin(names) for c in columns if c in df_runs])]
    return df_runs
