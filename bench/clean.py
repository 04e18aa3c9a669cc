"""`bench clean`: the files of a results folder that nothing reads any more. A finished run (its record
written) keeps its record, its log and the weights it was scored from (what rescore, predict and figure
load); its resume point (``last.pt``: weights, optimizer state and RNGs, a few times the weights' size),
its per-epoch snapshots and the copies a resume restores the best weights from are read by a resume
alone, which a finished run never needs. Killed processes leave temp files and claimed but empty run
folders, which a later write into the same folder sweeps; this sweeps them all at once."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import claim, fileio, records
from bench.profiles import PROFILE_DIR
from bench.errors import BenchError
from bench.rescore import weights_path

# in a finished run's checkpoints/: what a resume alone reads (the scored weights are never among them)
RESUME_ONLY = (records.LAST, "epoch_*.pt", "best@*.pt")


@dataclass
class Cleanup:
    """What ``clean`` found: ``resume``, the resume-only files of finished runs by run id; ``temps``, temp
    files of writers that are gone; ``claimed``, run folders holding only a gone process's claim; ``held``,
    finished runs a live process holds now, ``evaluated`` files a ``bench run --weights`` record names
    (its file name and SHA-256) and ``unread`` records that do not read: all left alone; ``size``, the bytes
    of the files; ``kept``, what could not be deleted."""

    resume: dict[str, list[Path]] = field(default_factory=dict)
    temps: list[Path] = field(default_factory=list)
    claimed: list[Path] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    evaluated: list[Path] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)
    size: int = 0
    kept: list[Path] = field(default_factory=list)

    def files(self) -> list[Path]:
        return [p for files in self.resume.values() for p in files] + self.temps


def clean(results_dir: Path, dry_run: bool = False) -> Cleanup:
    """Delete what nothing reads in ``results_dir`` (the module's docstring says what), or with ``dry_run``
    only find it; returns what was found."""
    results_dir = Path(results_dir)
    found = Cleanup()
    parsed = _parsed_records(results_dir)  # each file read once
    evaluated = _evaluated_files(parsed.values())
    for name in sorted(name for name in parsed if not records.rescored_name(name)):  # the runs' own: records/ read once
        try:
            rec = parsed[name]
            if isinstance(rec, BenchError):
                raise rec
            path = records.records_dir(results_dir) / name
            rec = records.check_file_name(results_dir, path, records.checked_record(path, rec))  # as load reads it
            scored = weights_path(results_dir, rec)
        except BenchError as exc:  # a damaged or foreign file, or a newer bench's: its run is not known to be finished
            found.unread.append(f"{name} ({exc})")
            continue
        if claim.held_by(results_dir, rec["run_id"]):  # a process works on it now: nothing of it is spare
            found.held.append(rec["run_id"])
            continue
        spare = sorted({p for pattern in RESUME_ONLY for p in scored.parent.glob(pattern)})
        # a file another run evaluated (bench run --weights runs/<id>/checkpoints/epoch_0049.pt): its record
        # names it by name and SHA-256, and --from-record needs the very file again
        named = [p for p in spare if p.name in evaluated and fileio.file_sha256(p) in evaluated[p.name]]
        found.evaluated += named
        if spare := [p for p in spare if p not in named]:
            found.resume[rec["run_id"]] = spare
    runs = sorted(records.runs_dir(results_dir).glob("*"))
    for folder in [records.records_dir(results_dir), results_dir / PROFILE_DIR, *runs,
                   *(r / records.CHECKPOINT_DIR for r in runs)]:
        found.temps += fileio.orphans(folder, *fileio.OWN_FOLDER_TEMPS)
    found.size = size_of(found.files())
    found.claimed = [r for r in runs if claim.remove_abandoned(r, dry_run)]
    if not dry_run:
        found.kept = [p for p in found.files() if not fileio.remove_path(p) and p.exists()]
    if kept := set(found.kept):  # no part of what was deleted, nor of its size: the note names them
        found.size -= size_of(found.kept)
        found.resume = {run: left for run, files in found.resume.items()
                        if (left := [p for p in files if p not in kept])}
        found.temps = [p for p in found.temps if p not in kept]
    return found


def _parsed_records(results_dir: Path) -> dict[str, Any]:
    """The JSON of each file in the folder's records/ by file name, unchecked (``records.parse_record``), or the
    BenchError saying why it does not read."""
    parsed: dict[str, Any] = {}
    for path in records.records_dir(results_dir).glob("*.json"):
        try:
            parsed[path.name] = records.parse_record(path)
        except BenchError as exc:
            parsed[path.name] = exc
    return parsed


def _evaluated_files(parsed: Iterable[Any]) -> dict[str, set[str]]:
    """The weights files the records ``parsed`` (``_parsed_records``; one that does not check too) evaluated
    (``bench run --weights``): name -> SHA-256s."""
    named: dict[str, set[str]] = {}
    for rec in parsed:
        weights = rec.get("weights") if isinstance(rec, dict) else None  # a file that does not read: none
        try:
            named.setdefault(str(weights["file"]), set()).add(str(weights["sha256"]))
        except (TypeError, KeyError):  # no --weights run, or no record
            continue
    return named


def size_of(paths: list[Path]) -> int:
    """Bytes of the files ``paths`` name (a folder: the files under it); what is gone counts 0."""
    total = 0
    for path in paths:
        for f in [p for p in path.rglob("*") if not p.is_dir()] if path.is_dir() else [path]:
            try:
                total += f.lstat().st_size
            except OSError:
                pass
    return total
