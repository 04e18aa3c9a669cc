"""`bench clean`: a finished run's resume-only files and killed processes' leftovers go; what any command
reads stays."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench import fileio
from bench.claim import CLAIM
from bench.clean import clean
from bench.data import synthetic_root
from bench.protocol import load_protocol
from bench.records import load, record_path, run_dir, write_record
from bench.registry import get_entry
from bench.rescore import rescore_record
from bench.run import plan_grid, run_one
from tests.fixtures import make_record, run_bench_here


def _dead_pid() -> int:
    """The pid of a process that has ended (its writer tag names a writer that is gone)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _claim_of(pid: int) -> str:
    return json.dumps({"writer": fileio.writer_tag(pid), "pid": pid, "proc_start": None, "started": "2026-12-06"})


def test_clean_deletes_what_nothing_reads_and_every_command_still_reads_the_run(tmp_path, monkeypatch, capsys):
    root = synthetic_root("synapse", tmp_path / "synth")
    results = tmp_path / "results"
    proto = load_protocol("smoke").with_overrides(img_size=32, max_iterations=3, max_cases=2)
    (spec,) = plan_grid(models=["unet"], dataset="synapse", protocol=proto, seeds=[0], data_root=root, synthetic=False,
                        results_dir=results, policy="strict", model_overrides=dict(get_entry("unet").tiny))
    rec = run_one(spec, results_dir=results, device=torch.device("cpu"))
    ckpt = run_dir(results, rec["run_id"]) / "checkpoints"
    assert {p.name for p in ckpt.iterdir()} >= {"final.pt", "last.pt"}
    if not (ckpt / "epoch_0000.pt").exists():  # a protocol's checkpoint_every snapshot (a run this short has none)
        shutil.copyfile(ckpt / "final.pt", ckpt / "epoch_0000.pt")
    dead = _dead_pid()
    # a killed process's half-written checkpoint and record, and a rescore killed before it wrote anything
    temps = [ckpt / f".last.pt.{fileio.TEMP_MARK}{fileio.writer_tag(dead)}abcd.tmp",
             results / "records" / f".x.json.{fileio.TEMP_MARK}{fileio.writer_tag(dead)}abcd.tmp"]
    for temp in temps:
        temp.write_bytes(b"\0" * 1000)
    abandoned = run_dir(results, rec["run_id"] + ".legacy-synapse")
    abandoned.mkdir()
    (abandoned / CLAIM).write_text(_claim_of(dead), encoding="utf-8")
    # a live writer's temp file and an unfinished run's resume point: not the command's to delete
    live = ckpt / f".final.pt.{fileio.TEMP_MARK}{fileio.writer_tag()}abcd.tmp"
    live.write_bytes(b"\0")
    unfinished = run_dir(results, "synapse-smoke-unet-s1-00000000") / "checkpoints"
    unfinished.mkdir(parents=True)
    (unfinished / "last.pt").write_bytes(b"\0")

    spare = [ckpt / "last.pt", *ckpt.glob("epoch_*.pt")]
    size = sum(p.stat().st_size for p in spare + temps)
    globbed, glob = [], Path.glob
    with monkeypatch.context() as patch:
        patch.setattr(Path, "glob", lambda self, pattern, *args, **kw: globbed.append((self, pattern))
                      or glob(self, pattern, *args, **kw))
        found = clean(results, dry_run=True)
    assert globbed.count((results / "records", "*.json")) == 1  # its records listed once
    assert found.resume == {rec["run_id"]: sorted(spare)} and sorted(found.temps) == sorted(temps)
    assert found.claimed == [abandoned] and found.size == size
    assert all(p.exists() for p in spare + temps) and (abandoned / CLAIM).exists()  # a dry run deletes nothing
    # and so does the command's: a user previews what `bench clean` would delete before it does
    proc = run_bench_here(monkeypatch, capsys, "clean", "--results", results, "--dry-run")
    assert f"bench clean: would delete in {results}, {size / 1e6:,.1f} MB:" in proc.stdout, proc.stdout
    assert all(p.exists() for p in spare + temps) and (abandoned / CLAIM).exists()

    proc = run_bench_here(monkeypatch, capsys, "clean", "--results", results)
    assert f"bench clean: deleted in {results}, {size / 1e6:,.1f} MB:" in proc.stdout
    assert "2 resume-only file(s) of 1 finished run(s)" in proc.stdout and "2 temp file(s) of killed processes" in proc.stdout
    assert "1 run folder(s) holding only a killed process's claim" in proc.stdout
    assert not any(p.exists() for p in spare + temps) and not abandoned.exists()
    assert (ckpt / "final.pt").is_file() and record_path(results, rec["run_id"]).is_file()
    assert live.exists() and (unfinished / "last.pt").exists()
    # the run reads as before: its board, and its weights scored again
    assert load(results)["run_id"].tolist() == [rec["run_id"]]
    again = rescore_record(rec, "legacy-synapse", results, "cpu")
    assert again["per_case"] and again["rescored_from"] == rec["run_id"]
    assert "nothing to delete" in run_bench_here(monkeypatch, capsys, "clean", "--results", results).stdout

    # a review: a run evaluating another run's snapshot (bench run --weights) lost that file to clean, and its
    # --from-record could never run again; an older bench's temp name, days old, stayed; a stray JSON stopped it
    snapshot = ckpt / "epoch_0003.pt"
    shutil.copyfile(ckpt / "final.pt", snapshot)
    shutil.copyfile(ckpt / "final.pt", ckpt / "last.pt")  # a resume point again: spare
    evaluated = make_record("unet", seed=5)
    evaluated["weights"] = {"file": "epoch_0003.pt", "sha256": fileio.file_sha256(snapshot), "trained_by": None}
    write_record(evaluated, results)
    old_temp = ckpt / ".last.pt.99999.tmp"
    old_temp.write_bytes(b"\0")
    os.utime(old_temp, (time.time() - 3 * 86400,) * 2)
    (results / "records" / "notes.json").write_text("{}", encoding="utf-8")
    proc = run_bench_here(monkeypatch, capsys, "clean", "--results", results)
    assert snapshot.exists() and not (ckpt / "last.pt").exists() and not old_temp.exists()
    assert f"note: 1 file(s) a bench run --weights record evaluated were kept (its --from-record needs them): " \
           f"{snapshot.relative_to(results)}" in proc.stdout
    assert "note: 1 file(s) in records/ are no readable record, their runs left alone: notes.json (" in proc.stdout


def test_the_weights_a_run_selected_stay_and_a_held_run_is_left_alone(tmp_path):
    for seed, selected, scored in ((0, "best_train_loss", "best.pt"), (1, "lr_min", "lr_min.pt"), (2, None, "final.pt")):
        rec = make_record("unet", seed=seed)
        rec["train"]["selected"] = selected
        write_record(rec, tmp_path)
        ckpt = run_dir(tmp_path, rec["run_id"]) / "checkpoints"
        ckpt.mkdir(parents=True)
        for name in ("final.pt", "best.pt", "best@0003.pt", "lr_min.pt", "last.pt", "epoch_0001.pt"):
            (ckpt / name).write_bytes(b"\0")
        found = clean(tmp_path)
        assert (ckpt / scored).is_file() and not (ckpt / "last.pt").exists() and not (ckpt / "best@0003.pt").exists()
        assert not (ckpt / "epoch_0001.pt").exists()
    # a finished run a live process holds (this one's claim): none of its files are touched
    rec = make_record("unet", seed=3)
    write_record(rec, tmp_path)
    ckpt = run_dir(tmp_path, rec["run_id"]) / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "last.pt").write_bytes(b"\0")
    (ckpt.parent / CLAIM).write_text(json.dumps({"writer": fileio.writer_tag(), "pid": os.getpid(),
                                                 "proc_start": None}), encoding="utf-8")
    found = clean(tmp_path)
    assert found.held == [rec["run_id"]] and (ckpt / "last.pt").exists()


def test_a_folder_that_is_no_results_folder_is_refused(tmp_path, monkeypatch, capsys):
    """Without --results a command takes ./results (README), the folder bench run wrote: one elsewhere is no
    results folder of the user's."""
    proc = run_bench_here(monkeypatch, capsys, "clean", "--results", tmp_path / "nothing", check=False)
    assert proc.returncode == 2 and "no results folder (no records/ or runs/ in it); pass --results DIR" in proc.stderr
    monkeypatch.chdir(tmp_path)
    proc = run_bench_here(monkeypatch, capsys, "clean", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: results: no results folder"), proc.stderr
    (tmp_path / "results" / "records").mkdir(parents=True)
    assert run_bench_here(monkeypatch, capsys, "clean").stdout == "bench clean: nothing to delete in results\n"


def test_clean_reads_each_record_once(tmp_path, monkeypatch):
    """clean parsed every record twice, once for the weights files --weights records name and once more for each
    run's own record; one pass now serves both, and what it finds is the same."""
    evaluated = make_record("unet", seed=1)
    evaluated["weights"] = {"file": "epoch_0003.pt", "sha256": fileio.file_sha256(Path(__file__)), "trained_by": None}
    recs = [make_record("unet", seed=0), evaluated, {**make_record("vmunet"), "run_id": "x.strict", "rescored_from": "x"}]
    for rec in recs:
        write_record(rec, tmp_path)
    ckpt = run_dir(tmp_path, recs[0]["run_id"]) / "checkpoints"
    ckpt.mkdir(parents=True)
    shutil.copyfile(__file__, ckpt / "epoch_0003.pt")  # the file the --weights record names: kept
    (ckpt / "last.pt").write_bytes(b"\0")
    (tmp_path / "records" / "notes.json").write_text("{}", encoding="utf-8")  # no record: said, its run left alone
    (tmp_path / "records" / "cut.json").write_text('{"run_id": ', encoding="utf-8")  # a write cut short: said too
    (tmp_path / "records" / "latin.json").write_bytes(b"\xff\xfe{")  # not UTF-8: said, no traceback
    reads = []
    read_text = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: reads.append(self.name) or read_text(self, *a, **k))
    found = clean(tmp_path, dry_run=True)
    records_read = [name for name in reads if name.endswith(".json")]
    assert sorted(records_read) == sorted(p.name for p in (tmp_path / "records").glob("*.json")) and len(records_read) == 6
    assert found.evaluated == [ckpt / "epoch_0003.pt"] and found.resume == {recs[0]["run_id"]: [ckpt / "last.pt"]}
    assert [u.split(" (")[0] for u in found.unread] == ["cut.json", "latin.json", "notes.json"]
    assert f"cut.json ({tmp_path / 'records' / 'cut.json'}: not a readable run record (" in found.unread[0]
    assert f"notes.json ({tmp_path / 'records' / 'notes.json'}: " in found.unread[2]


def test_a_record_under_another_name_is_not_its_runs_for_clean_either(tmp_path):
    """`mv X.json X-backup.json`: every reader refuses it, but bench clean took it for its run's record and
    deleted the run's last.pt, so that the resume bench run then offers retrained the run from scratch."""
    rec = make_record("unet", seed=0)
    own = write_record(rec, tmp_path)
    ckpt = run_dir(tmp_path, rec["run_id"]) / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "last.pt").write_bytes(b"\0")
    (ckpt / "final.pt").write_bytes(b"\0")
    assert clean(tmp_path, dry_run=True).resume == {rec["run_id"]: [ckpt / "last.pt"]}
    own.rename(own.with_name(f"{rec['run_id']}-backup.json"))
    found = clean(tmp_path)
    assert found.resume == {} and (ckpt / "last.pt").is_file()
    assert found.unread == [f"{rec['run_id']}-backup.json ({own.with_name(rec['run_id'] + '-backup.json')}: holds "
                            f"the record of run {rec['run_id']!r}, whose file must be named {own.name} (bench run "
                            f"finds a finished run by that name); rename it to {own.name}, or move it out of "
                            f"{own.parent} if it is a backup)"]


def test_live_claims_claims_beside_files_and_hidden_files_not_benchs_stay(tmp_path):
    """A mutation audit: clean deleted a live rescore's claim folder where its claim was judged alone, would
    have counted a killed run's folder holding its resume point with its claim as abandoned, and would have
    swept any hidden file over a day old (a live run's .claim, a user's records/.keep) as a temp file."""
    runs = tmp_path / "runs"
    live = runs / "synapse-smoke-unet-s0-00000000.strict"  # a rescore that has written nothing yet
    live.mkdir(parents=True)
    (live / CLAIM).write_text(json.dumps({"writer": fileio.writer_tag(), "pid": os.getpid(), "proc_start": None}),
                              encoding="utf-8")
    killed = runs / "synapse-smoke-unet-s1-00000000"  # a killed run: its resume point stays with its claim
    (killed / "checkpoints").mkdir(parents=True)
    (killed / "checkpoints" / "last.pt").write_bytes(b"\0")
    (killed / CLAIM).write_text(_claim_of(_dead_pid()), encoding="utf-8")
    running = runs / "synapse-smoke-unet-s2-00000000"  # a run training for days, and a file the user keeps
    running.mkdir()
    (running / CLAIM).write_text(json.dumps({"writer": fileio.writer_tag(), "pid": os.getpid(), "proc_start": None}),
                                 encoding="utf-8")
    (tmp_path / "records").mkdir()
    keep = tmp_path / "records" / ".keep"
    keep.write_bytes(b"")
    for old in (running / CLAIM, keep):
        os.utime(old, (time.time() - 3 * 86400,) * 2)
    assert clean(tmp_path, dry_run=True).claimed == []
    found = clean(tmp_path)
    assert found.claimed == [] and found.temps == []
    kept = (live / CLAIM, killed / CLAIM, killed / "checkpoints" / "last.pt", running / CLAIM, keep)
    assert all(p.is_file() for p in kept)


def test_a_snapshot_trained_again_and_profiles_temps_go(tmp_path):
    """A mutation audit: a snapshot a --weights record names by name but of a training since (another SHA-256)
    is spare, and a killed profile's temp file in profiles/ is swept."""
    rec = make_record("unet", seed=0)
    write_record(rec, tmp_path)
    ckpt = run_dir(tmp_path, rec["run_id"]) / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "final.pt").write_bytes(b"\0")
    (ckpt / "epoch_0003.pt").write_bytes(b"trained again")
    evaluated = make_record("unet", seed=5)
    evaluated["weights"] = {"file": "epoch_0003.pt", "sha256": fileio.file_sha256(Path(__file__)), "trained_by": None}
    write_record(evaluated, tmp_path)
    (tmp_path / "profiles").mkdir()
    temp = tmp_path / "profiles" / f".p.json.{fileio.TEMP_MARK}{fileio.writer_tag(_dead_pid())}abcd.tmp"
    temp.write_bytes(b"\0")
    found = clean(tmp_path)
    assert found.evaluated == [] and found.resume == {rec["run_id"]: [ckpt / "epoch_0003.pt"]} and found.temps == [temp]
    assert not (ckpt / "epoch_0003.pt").exists() and not temp.exists() and (ckpt / "final.pt").is_file()


def test_a_file_that_cannot_be_deleted_is_said(tmp_path, monkeypatch, capsys):
    """A mutation audit: clean said it deleted what it could not (another user's file, a read-only disk)."""
    rec = make_record("unet", seed=0)
    write_record(rec, tmp_path)
    ckpt = run_dir(tmp_path, rec["run_id"]) / "checkpoints"
    ckpt.mkdir(parents=True)
    for name, size in (("final.pt", 1), ("last.pt", 5_000_000), ("epoch_0001.pt", 2_000_000)):
        (ckpt / name).write_bytes(b"\0" * size)
    temp = tmp_path / "records" / f".x.json.{fileio.TEMP_MARK}{fileio.writer_tag(_dead_pid())}abcd.tmp"
    temp.write_bytes(b"\0")  # a killed process's temp file, left too: not counted as deleted
    unlink = Path.unlink

    def refuse(self, *args, **kwargs):  # as for a file of another user's folder (root may delete it: no chmod)
        if self in (ckpt / "last.pt", temp):
            raise PermissionError(13, "Permission denied", str(self))
        return unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", refuse)
    proc = run_bench_here(monkeypatch, capsys, "clean", "--results", tmp_path)
    assert (ckpt / "last.pt").exists() and not (ckpt / "epoch_0001.pt").exists()
    assert f"note: 2 file(s) could not be deleted: {ckpt / 'last.pt'}, {temp}" in proc.stdout
    # what was deleted is said without it: one file, its 2 MB (it said 2 files, 7 MB)
    assert f"deleted in {tmp_path}, 2.0 MB:\n  1 resume-only file(s) of 1 finished run(s)" in proc.stdout, proc.stdout
    again = clean(tmp_path)
    assert again.kept == [ckpt / "last.pt", temp] and again.resume == {} and again.temps == [] and again.size == 0


def test_a_record_of_a_newer_bench_is_said_and_its_run_left_alone(tmp_path):
    """A mutation audit: a record whose train.selected this version does not know ("ema") was listed as
    "no readable record … ('ema')", a bare KeyError; it says what is wrong now."""
    rec = make_record("unet", seed=0)
    rec["train"]["selected"] = "ema"
    write_record(rec, tmp_path)
    ckpt = run_dir(tmp_path, rec["run_id"]) / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "last.pt").write_bytes(b"\0")
    found = clean(tmp_path)
    assert found.unread == [f"{rec['run_id']}.json (run {rec['run_id']}: train.selected 'ema' names no checkpoint "
                            "this bench knows (final, best_train_loss, lr_min); a newer bench wrote the record?)"]
    assert (ckpt / "last.pt").exists() and found.resume == {}


def test_a_dry_run_leaves_an_abandoned_claim_folder_it_names(tmp_path):
    """bench clean --dry-run says what it would remove and removes nothing: a dead process's claim folder
    is reported and stays until the real clean."""
    from bench.claim import remove_abandoned

    folder = tmp_path / "runs" / "r1"
    folder.mkdir(parents=True)
    (folder / CLAIM).write_text(_claim_of(_dead_pid()), encoding="utf-8")
    assert remove_abandoned(folder, dry_run=True) is True
    assert (folder / CLAIM).is_file()
    assert remove_abandoned(folder) is True and not folder.exists()
