import json
import math
import multiprocessing as mp
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import fileio, records
from bench.errors import BenchError
from bench.records import RUN_COLUMNS, load, validate_record, write_record

try:
    from tests.fixtures import SYNAPSE_CLASSES, case_row, make_record, recount, restate
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from fixtures import SYNAPSE_CLASSES, case_row, make_record, recount, restate


def test_validate_accepts_fixture_and_numpy_scalars():
    rec = make_record()
    rec["seed"] = np.int64(1)
    rec["metrics"]["dice"] = np.float32(0.5)
    validate_record(rec)


def test_validate_lists_every_problem():
    rec = make_record()
    del rec["run_id"], rec["metrics"]["n_cases"]
    rec["seed"] = "0"
    rec["synthetic"] = 1
    rec["family"] = "rnn"
    rec["per_class"][2].pop("name")
    with pytest.raises(BenchError) as err:
        validate_record(rec)
    msg = str(err.value)
    for expected in ("run_id: missing", "metrics.n_cases: missing", "seed: expected int", "synthetic: expected bool",
                     "family: expected one of", "per_class[2].name: missing"):  # fmt: skip
        assert expected in msg


def test_validate_rejects_bool_as_count_and_wrong_schema():
    rec = make_record()
    rec["seed"] = True
    rec["schema"] = 2
    with pytest.raises(BenchError, match="seed: expected int") as err:
        validate_record(rec)
    assert "schema" in str(err.value)


def test_a_split_no_run_writes_is_named_when_the_record_is_read(tmp_path):
    """A record's "split": "fold_1" made bench report crash with a traceback (int('_1') reading its fold), and
    "validation" was taken for the test split: validate_record names both, and the two that runs write pass."""
    for split in ("test", "fold0", "fold12"):
        validate_record({**make_record(), "split": split})
    for split in ("fold_1", "validation", "fold", "Fold1"):
        path = tmp_path / split / "records" / "synapse-run.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({**make_record(run_id="synapse-run"), "split": split}), encoding="utf-8")
        with pytest.raises(BenchError, match=rf"^{re.escape(str(path))}: invalid run record 'synapse-run': split: "
                                             rf"expected 'test' .* or 'fold<k>' .*, got '{split}'$"):
            load(path.parent.parent)


def test_write_record_layout_and_nan_as_null(tmp_path):
    rec = make_record(hd95=float("nan"))
    path = write_record(rec, tmp_path)
    assert path == tmp_path / "records" / f"{rec['run_id']}.json"
    assert os.listdir(path.parent) == [path.name]  # no temp file left behind
    raw = path.read_text(encoding="utf-8")
    assert "NaN" not in raw  # strict JSON
    data = json.loads(raw)
    assert data["metrics"]["hd95"] is None
    assert data["per_class"][0]["n_nan"] == 2


def test_write_record_refuses_inf_and_existing_id(tmp_path):
    rec = make_record()
    rec["metrics"]["hd95"] = float("inf")
    with pytest.raises(BenchError, match="metrics.hd95 is inf"):
        write_record(rec, tmp_path)
    assert not list((tmp_path / "records").glob("*"))
    ok = make_record()
    write_record(ok, tmp_path)
    with pytest.raises(BenchError, match="already exists"):
        write_record(ok, tmp_path)


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_record_another_process_writes_meanwhile_is_never_replaced(tmp_path, monkeypatch, hard_links):
    """Two processes finishing the same run (a shard started twice) both passed a check for an
    existing record, then both renamed theirs into place: the second silently replaced the first."""
    rec = make_record()
    path = records.record_path(tmp_path, rec["run_id"])
    theirs = '{"theirs": 1}\n'
    real_fsync = os.fsync

    def other_process_writes_first(fd):  # between our check and our rename
        if not path.exists():
            path.write_text(theirs, encoding="utf-8")
        real_fsync(fd)

    monkeypatch.setattr(fileio.os, "fsync", other_process_writes_first)
    if not hard_links:  # a filesystem without them: the fallback still refuses an existing record
        monkeypatch.setattr(fileio.os, "link", lambda *a: (_ for _ in ()).throw(PermissionError("no links")))
    with pytest.raises(BenchError, match="already exists"):
        write_record(rec, tmp_path)
    assert path.read_text(encoding="utf-8") == theirs
    assert os.listdir(path.parent) == [path.name]  # our temp file removed
    monkeypatch.undo()
    other = make_record(run_id="other")
    assert write_record(other, tmp_path).is_file() and sorted(os.listdir(path.parent)) == sorted([path.name, "other.json"])


def test_crash_during_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(fileio.os, "fsync", boom)
    with pytest.raises(OSError, match="disk gone"):
        write_record(make_record(), tmp_path)
    assert list((tmp_path / "records").iterdir()) == []
    monkeypatch.undo()
    assert load(tmp_path).empty


def test_readers_never_see_a_write_in_flight(tmp_path, monkeypatch):
    real_link, seen = os.link, []

    def link_after_load(src, dst):  # records are published by a hard link (never replacing one)
        seen.append(len(load(tmp_path)))  # the temp file exists and is complete here
        real_link(src, dst)

    monkeypatch.setattr(fileio.os, "link", link_after_load)
    write_record(make_record(), tmp_path)
    assert seen == [0] and len(load(tmp_path)) == 1


def test_temp_files_of_killed_writes_go_when_old(tmp_path):
    """A SIGKILL between mkstemp and the rename leaves ".<name>.bench-<random>.tmp": a later write into
    the folder removes such leftovers once a day old (younger ones may be a live writer's), also those
    of a run never written again; files not named by us stay."""
    import time

    rec = make_record()
    folder = records.record_path(tmp_path, rec["run_id"]).parent
    folder.mkdir(parents=True)
    mine = folder / f".{rec['run_id']}.json.{fileio.TEMP_MARK}k1ll3d.tmp"
    other = folder / f".another-run.json.{fileio.TEMP_MARK}k1ll3d.tmp"
    young = folder / f".third-run.json.{fileio.TEMP_MARK}wr1t1ng.tmp"
    foreign = folder / ".notes.tmp"  # not ours, however old
    dotted = folder / ".notes.old.tmp"  # another program's, named as ours but for bench's mark
    for path in (mine, other, young, foreign, dotted):
        path.write_text("{", encoding="utf-8")
        if path is not young:
            os.utime(path, (time.time() - 2 * 86400,) * 2)
    write_record(rec, tmp_path)
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == sorted(
        [young.name, foreign.name, dotted.name])
    assert len(load(tmp_path)) == 1


def test_temp_files_of_a_dead_writer_on_this_host_go_at_once(tmp_path):
    """A killed checkpoint write's temp file (hundreds of MB) stayed a day, also beside a run resumed
    and finished at once: temp names carry their writer (pid@host), so one whose process is gone on
    this host goes at the next write; a live writer's, or another host's on a shared disk (if hours old,
    only a day decides), stays."""
    import socket
    import subprocess
    import sys
    import time

    rec = make_record()
    folder = records.record_path(tmp_path, rec["run_id"]).parent
    folder.mkdir(parents=True)
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, encoding="utf-8").stdout)
    dead = folder / f".a.json.{fileio.TEMP_MARK}{fileio.writer_tag(gone)}x1.tmp"
    live = folder / f".b.json.{fileio.TEMP_MARK}{fileio.writer_tag()}x2.tmp"
    elsewhere = folder / f".c.json.{fileio.TEMP_MARK}{gone}@another-host.example:1~x3.tmp"
    # a container sharing this host name, whose pids are another namespace's: its pid says nothing here
    container = folder / f".d.json.{fileio.TEMP_MARK}{gone}@{socket.gethostname()}:1~x4.tmp"
    for path in (dead, live, elsewhere, container):
        path.write_text("{", encoding="utf-8")
    os.utime(elsewhere, (time.time() - 3 * 3600,) * 2)  # hours old: a long conversion onto a shared disk, say
    write_record(rec, tmp_path)
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == sorted(
        [live.name, elsewhere.name, container.name])


def test_the_writable_probe_finds_a_full_disk(tmp_path, monkeypatch):
    """An empty probe file is created on a full disk too: the folder passed, and the run failed at
    its first checkpoint. The probe writes and syncs some bytes."""
    import errno

    real = os.write

    def full(fd, data):  # as a full disk: an empty write passes, bytes are refused
        if len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(fileio.os, "write", full)
    with pytest.raises(BenchError, match=r"not writable \(No space left on device\); choose another --results"):
        fileio.ensure_writable_dir(tmp_path / "res")
    assert not [p for p in (tmp_path / "res").iterdir()]  # the probe is gone
    monkeypatch.setattr(fileio.os, "write", lambda fd, data: real(fd, data[: len(data) // 2]))  # a short write
    with pytest.raises(BenchError, match=r"not writable \(No space left on device\)"):
        fileio.ensure_writable_dir(tmp_path / "res2")


def test_a_sweep_that_cannot_remove_a_leftover_never_fails_the_write(tmp_path, monkeypatch):
    """Another user's leftover in a shared folder, a stale NFS handle: the record is written all the same."""
    import pathlib
    import time

    rec = make_record()
    folder = records.record_path(tmp_path, rec["run_id"]).parent
    folder.mkdir(parents=True)
    theirs = folder / f".other.json.{fileio.TEMP_MARK}k1ll3d.tmp"
    theirs.write_text("{", encoding="utf-8")
    os.utime(theirs, (time.time() - 2 * 86400,) * 2)
    real = pathlib.Path.unlink

    def refuse(self, *a, **k):
        if self == theirs:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "unlink", refuse)
    write_record(rec, tmp_path)
    assert len(load(tmp_path)) == 1 and theirs.exists()


def test_invalid_record_is_never_written(tmp_path):
    rec = make_record()
    del rec["metrics"]
    with pytest.raises(BenchError, match="metrics: missing"):
        write_record(rec, tmp_path)
    assert not (tmp_path / "records").exists() or not any((tmp_path / "records").iterdir())



def test_another_tools_json_in_records_is_one_line(tmp_path):
    """A results folder shared with another project: its JSON is named in one line, not with the
    26 keys a run record needs."""
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "x.json").write_text('{"name": "x", "value": 1}', encoding="utf-8")
    with pytest.raises(BenchError, match=r"records/x\.json: not a run record of ssm-unet-bench \(no 'schema', "
                                         r"no 'run_id'\); move it out") as info:
        load(tmp_path)
    assert "\n" not in str(info.value)

def _writer(args):
    results_dir, worker = args
    for i in range(10):
        write_record(make_record(model="unet", seed=worker * 100 + i), results_dir)


def test_concurrent_writers(tmp_path):
    with mp.get_context("spawn" if os.name == "nt" else "fork").Pool(4) as pool:
        pool.map(_writer, [(tmp_path, w) for w in range(4)])
    files = sorted((tmp_path / "records").iterdir())
    assert len(files) == 40 and all(f.suffix == ".json" for f in files)
    df = load(tmp_path)
    assert len(df) == 40 and df["run_id"].is_unique
    assert sorted(df["seed"]) == sorted(w * 100 + i for w in range(4) for i in range(10))


def test_load_run_level_columns_and_values(tmp_path):
    rec = make_record("vmunet", seed=0, dice=0.8, class_dice={"aorta": 0.6}, hd95=float("nan"))
    rec["cost"].update(peak_mem_mb=1234.5, peak_mem_kind="cuda_train")  # a training on a GPU
    rec["train"]["commits"] = ["a-dirty sources d", "b"]
    write_record(rec, tmp_path)
    write_record(isic_rec := make_record("isic-model", dataset="isic17", seed=1, dice=0.9), tmp_path)
    df = load(tmp_path)
    assert list(df.columns[: len(RUN_COLUMNS)]) == RUN_COLUMNS
    metrics = [c for c in df.columns[len(RUN_COLUMNS):] if "/" not in c]
    assert metrics == ["dice", "hd95", "iou", "acc", "spe", "sen", "n_cases"]
    # per-class columns follow class id order, dice then hd95 per class
    per_class = [c for c in df.columns if "/" in c]
    assert per_class[:4] == ["dice/aorta", "hd95/aorta", "dice/lesion", "hd95/lesion"]
    assert set(f"dice/{c}" for c in SYNAPSE_CLASSES) <= set(per_class)

    syn = df[df["dataset"] == "synapse"].iloc[0]
    assert syn["dice"] == pytest.approx((0.6 + 7 * 0.8) / 8)
    # the code versions it trained under (a resume under other code adds one); older records: none kept
    assert syn["train_commits"] == "a-dirty sources d,b" and df["train_commits"].isna().sum() == 1  # isic17's
    # what peak_mem_mb measured: a whole training's allocator peak, not a profile's forward
    assert (syn["peak_mem_mb"], syn["peak_mem_kind"]) == (1234.5, "cuda_train")
    assert syn["dice/aorta"] == pytest.approx(0.6)
    assert math.isnan(syn["hd95"]) and math.isnan(syn["hd95/liver"])  # null -> NaN
    assert math.isnan(syn["acc"])  # key absent in legacy-synapse record
    assert syn["protocol"] == "synapse" and syn["protocol_version"] == 1 and not syn["off_protocol"]
    assert syn["device"] == "AMD EPYC 7763 x2 threads / torch 2.5.1"  # short_fingerprint, as profiles spell it
    assert syn["params"] == 27_430_000 and syn["model_config"] == "{}"
    assert df["hd95"].dtype == np.float64 and df["dice/lesion"].dtype == np.float64
    isic = df[df["dataset"] == "isic17"].iloc[0]
    assert isic["policy"] == "legacy-isic" and isic["acc"] == pytest.approx(isic_rec["metrics"]["acc"]) and isic["acc"] > 0.9
    assert math.isnan(isic["dice/aorta"])


def test_load_case_level(tmp_path):
    rec = {**make_record("unet", n_cases=3, hd95=float("nan")), "hd95_unit": "voxels"}
    write_record(rec, tmp_path)
    df = load(tmp_path, level="case")
    assert len(df) == 3 * 8
    assert {"run_id", "model", "dataset", "protocol_hash", "policy", "seed", "case", "class", "name", "dice", "hd95", "tp"} <= set(df.columns)
    assert (df["run_id"] == rec["run_id"]).all()
    assert df["hd95"].isna().all()
    assert df.columns[-1] == "hd95_unit" and (df["hd95_unit"] == rec["hd95_unit"]).all()  # each row says its unit
    assert df.groupby("name")["dice"].mean().to_dict() == pytest.approx({c: 0.8 for c in SYNAPSE_CLASSES})


def test_load_says_where_a_run_ran_and_older_records_without_it_still_load(tmp_path):
    """A surprising run of a Slurm array could not be traced to its job's log: records name the host and
    the job (an array's task as Slurm writes it); records written before that load with None."""
    array = {**make_record("unet", seed=0), "launch": {"host": "node7", "argv": ["bench", "run"], "slurm": {
        "job_id": "1205", "array_job_id": "1200", "array_task_id": "5"}}}
    job = {**make_record("unet", seed=1), "launch": {"host": "node8", "argv": [], "slurm": {"job_id": "1300"}}}
    here = {**make_record("unet", seed=2), "launch": {"host": "laptop", "argv": [], "slurm": None}}
    for rec in (array, job, here, make_record("unet", seed=3)):  # the last: an older record, no "launch"
        write_record(rec, tmp_path)
    df = load(tmp_path).set_index("seed")
    assert df["host"].fillna("-").to_dict() == {0: "node7", 1: "node8", 2: "laptop", 3: "-"}
    assert df["slurm_job"].fillna("-").to_dict() == {0: "1200_5", 1: "1300", 2: "-", 3: "-"}


def test_load_empty_dir_has_columns(tmp_path):
    df = load(tmp_path)
    assert df.empty and list(df.columns) == RUN_COLUMNS + ["dice", "hd95", "iou", "acc", "spe", "sen", "n_cases"]
    cases = load(tmp_path, level="case")
    assert cases.empty and "case" in cases.columns


def test_load_missing_dir_and_bad_level(tmp_path):
    with pytest.raises(BenchError, match="not found"):
        load(tmp_path / "nope")
    with pytest.raises(BenchError, match="level"):
        load(tmp_path, level="class")


def test_corrupt_file_error_names_the_file(tmp_path):
    write_record(make_record(), tmp_path)
    bad = tmp_path / "records" / "synapse-broken.json"
    for text in (b'{"schema": 1, "run_id": ', b"\xff\xfe{"):  # cut short; not UTF-8 (another tool's file)
        bad.write_bytes(text)
        with pytest.raises(BenchError, match=r"synapse-broken\.json: not a readable run record \("):
            load(tmp_path)
    bad.write_text(json.dumps({"schema": 1, "run_id": "x"}), encoding="utf-8")
    with pytest.raises(BenchError, match=r"synapse-broken\.json: invalid run record .x.: status: missing \(str\); model: missing"):
        load(tmp_path)



def _misnamed(path, run_id: str, fix: str) -> str:
    """The error of a record file ``path`` of ``run_id`` under another name than the run's, ending with ``fix``."""
    return (rf"^{re.escape(str(path))}: holds the record of run '{re.escape(run_id)}', whose file must be named "
            rf"{re.escape(run_id)}\.json \(bench run finds a finished run by that name\); {fix}$")


def test_a_copied_record_is_one_error_naming_both_files(tmp_path):
    """`cp X.json X_copy.json` in records/ aborted the report with "a case and class hold more than one
    dice row" (bench.stats), naming neither file."""
    first = write_record(make_record(), tmp_path)
    copy = first.with_name(first.stem + "_copy.json")
    copy.write_text(first.read_text(encoding="utf-8"), encoding="utf-8")
    fix = rf"{re.escape(first.name)} is there too, and a run has one record: move {re.escape(copy.name)} out of .*"
    for level in ("run", "case"):
        with pytest.raises(BenchError, match=_misnamed(copy, first.stem, fix)):
            load(tmp_path, level=level)


def test_a_record_under_another_name_than_its_runs_is_an_error(tmp_path):
    """`mv X.json X-backup.json`: bench report still counted the run while bench run, which finds a finished
    run by its record's name, trained it again; the folder then held two records of the run, and every command
    stopped. A `bench rescore` record's own name is its run id's, <run_id>.<policy>.json."""
    source = make_record("unet", run_id="synapse-synapse-unet-s0-0000abcd")
    own = write_record(source, tmp_path)
    rescored = write_record(_rescored(source), tmp_path)
    assert rescored.name == "synapse-synapse-unet-s0-0000abcd.strict.json" and len(load(tmp_path)) == 2
    for path, moved in ((own, "synapse-synapse-unet-s0-0000abcd-backup.json"),
                        (rescored, "synapse-synapse-unet-s0-0000abcd-strict.json")):
        backup = path.rename(path.with_name(moved))
        fix = rf"rename it to {re.escape(path.name)}, or move it out of {re.escape(str(path.parent))} if it is a backup"
        with pytest.raises(BenchError, match=_misnamed(backup, path.name[:-len(".json")], fix)):
            load(tmp_path)
        backup.rename(path)
    assert len(load(tmp_path)) == 2


def test_a_run_folder_without_its_record_is_said_so(tmp_path, monkeypatch):
    """--from-record results/runs/<id> of a run whose record was deleted said the folder "holds no run record;
    expected ... a run folder (runs/<run_id>, beside records/)", which it is: now it names the record missing."""
    rec = make_record(run_id="synapse-synapse-vmunet-s0-0000abcd")
    own, folder = write_record(rec, tmp_path), records.run_dir(tmp_path, rec["run_id"])
    folder.mkdir(parents=True)
    (folder / "run.log").write_text("training\n", encoding="utf-8")
    assert records.record_files(folder) == ([own], False)
    own.unlink()
    with pytest.raises(BenchError, match=rf"^{re.escape(str(folder))}: a run folder whose record {re.escape(str(own))} "
                                         rf"is missing \(deleted, or the run did not finish: its "
                                         rf"{re.escape(str(folder / 'run.log'))} says why\); --from-record re-runs"):
        records.record_at(folder)
    # the run's folder given from inside runs/ ("--from-record <id>"): the same folder, the same answers
    monkeypatch.chdir(folder.parent)
    with pytest.raises(BenchError, match=r"^synapse-synapse-vmunet-s0-0000abcd: a run folder whose record "):
        records.record_at(Path(folder.name))
    write_record(rec, tmp_path)
    assert records.record_files(Path(folder.name)) == ([own], False)
    monkeypatch.chdir(folder)  # and as "../<id>" from inside it
    assert records.record_files(Path("..") / folder.name) == ([own], False)
    own.unlink()
    # a folder in a folder named runs that no run began (no run.log, no checkpoints/) is no run's folder
    (folder / "run.log").unlink()
    with pytest.raises(BenchError, match=r"0000abcd: holds no run record; expected a record"):
        records.record_files(folder)
    # a results folder that sits in a folder named runs is read as one, records and all
    results = tmp_path / "runs" / "exp1"
    kept = write_record(rec, results)
    assert records.record_files(results) == ([kept], True)
    kept.unlink()
    with pytest.raises(BenchError, match=r"exp1: holds no run record; expected a record"):
        records.record_files(results)


def test_planning_reads_the_records_that_load_reads_and_passes_over_the_others(tmp_path):
    """bench run --weights crashed with AttributeError ('list' object has no attribute 'get') on a record file
    of JSON that is not an object: dataset_records reads as load does, and passes over what load refuses."""
    kept = make_record("unet", run_id="synapse-synapse-unet-s0-0000abcd")
    write_record(kept, tmp_path)
    folder = records.records_dir(tmp_path)
    (folder / "synapse-junk.json").write_text("[1]", encoding="utf-8")
    (folder / "synapse-cut.json").write_text('{"schema": 1, "run_id": ', encoding="utf-8")
    (folder / "synapse-copy.json").write_text(json.dumps(kept), encoding="utf-8")  # under another run's name
    (folder / "synapse-foreign.json").write_text('{"name": "x"}', encoding="utf-8")
    assert records.dataset_records(tmp_path, "synapse") == [json.loads(json.dumps(kept))]
    with pytest.raises(BenchError, match=r"synapse-copy\.json: holds the record of run"):  # load names the first
        load(tmp_path)
    (folder / "synapse-copy.json").unlink()
    with pytest.raises(BenchError, match=r"synapse-cut\.json: not a readable run record"):
        load(tmp_path)
    (folder / "synapse-cut.json").unlink()
    with pytest.raises(BenchError, match=r"synapse-foreign\.json: not a run record of ssm-unet-bench"):
        load(tmp_path)
    (folder / "synapse-foreign.json").unlink()
    with pytest.raises(BenchError, match=r"^\S*synapse-junk\.json: run record must be a JSON object, got list$"):
        load(tmp_path)


def test_an_interrupt_mid_write_stays_an_interrupt(tmp_path):
    """SIGTERM (as Ctrl-C) landing inside torch.save: its zip writer's cleanup raised its own
    RuntimeError ("unexpected pos") over the KeyboardInterrupt, and a stopped run printed a
    traceback instead of "interrupted"."""
    def write(tmp):
        try:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt("signal 15")
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 489408 vs 489304")

    (tmp_path / "last.pt").write_bytes(b"the previous checkpoint")
    with pytest.raises(KeyboardInterrupt, match="signal 15"):
        fileio.atomic_write(tmp_path / "last.pt", write)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file; the old checkpoint whole
    assert (tmp_path / "last.pt").read_bytes() == b"the previous checkpoint"
    with pytest.raises(RuntimeError, match="disk on fire"):  # an error of its own stays that error
        fileio.atomic_write(tmp_path / "x.pt", lambda tmp: (_ for _ in ()).throw(RuntimeError("disk on fire")))


def test_the_exception_chain_is_walked_once_even_where_it_loops():
    from bench.errors import exception_chain

    a, b, c = RuntimeError("a"), OSError("b"), KeyboardInterrupt()
    a.__cause__, b.__context__, c.__context__ = b, c, a  # a cycle: a -> b -> c -> a
    assert list(exception_chain(a)) == [a, b, c]


def test_a_run_id_reads_back_as_the_run_that_made_it():
    """RunSpec.key writes run ids and unrecorded_runs read them with a regex of its own: one format now
    (make_run_id, parse_run_id), read back whatever "-" or "-s<n>" the names hold."""
    from pathlib import Path

    from bench.protocol import load_protocol
    from bench.run import RunSpec

    for dataset, protocol, model, seed, fold in [("synapse", "smoke", "unet", 0, None),
                                                 ("nnunet", "nnunet-2d", "my-s1-net", 12, 3)]:
        run_id = records.make_run_id(dataset, protocol, model, seed, fold, "0123abcd")
        assert records.parse_run_id(run_id, dataset, protocol) == {"model": model, "seed": seed, "fold": fold}
        assert records.parse_run_id(records.rescore_id(run_id, "strict"), dataset, protocol) is None  # a rescore's record
        # less its digest: what its runs under other settings share (train names their leftover checkpoints)
        assert records.run_stem(run_id) == run_id[:-len("-0123abcd")]
        assert records.run_stem(records.rescore_id(run_id, "strict")) is None
    assert records.parse_run_id(run_id, "synapse", "smoke") is None  # another board's run
    spec = RunSpec(model="vmunet_v2", dataset="synapse", protocol=load_protocol("smoke"), seed=2,
                   data_root=Path("/data/synapse"), synthetic=False, policy="strict", fold=1, split_sha="ab" * 8)
    assert spec.key.startswith("synapse-smoke-vmunet_v2-s2-f1-")
    assert records.parse_run_id(spec.key, "synapse", "smoke") == {"model": "vmunet_v2", "seed": 2, "fold": 1}


def _rechecked(tmp_path, *recs):
    """``recs`` written, then ``load(recheck=True)``: its rows by model, and the one warning's text."""
    for rec in recs:
        write_record(rec, tmp_path)
    with pytest.warns(UserWarning, match="hold numbers other than") as caught:
        df = load(tmp_path, recheck=True).set_index("model")
    (said,) = [str(w.message) for w in caught]
    return df, said


def test_restated_numbers_name_the_code_that_stored_them(tmp_path):
    """A record whose numbers its case rows, recomputed under today's aggregation, do not give was called
    "edited by hand?": one stored by a bench that aggregated otherwise reads alike, so the warning names the
    code that computed the stored numbers (for a rescored record, bench rescore's) instead of guessing."""
    run = make_record("unet", seed=0, dice=0.3)
    run["metrics"]["dice"] = 0.8
    rescored = make_record("vmunet", seed=0, dice=0.3)
    rescored.update(run_id=f"{rescored['run_id']}.strict", rescored_from=rescored["run_id"],
                    rescored_with={"git_commit": "feedbeef" * 5 + "-dirty", "code_digest": "d" * 16})
    rescored["metrics"]["dice"] = 0.7
    df, said = _rechecked(tmp_path, run, rescored)
    assert "stored by a version of bench that aggregated otherwise" in said
    assert f"{run['run_id']}.json: dice 0.8 stored, 0.3 from the case rows (stored by code 0123456789ab)" in said
    assert f"{rescored['run_id']}.json: dice 0.7 stored, 0.3 from the case rows (stored by code feedbeeffeed-dirty " \
           f"(sources {'d' * 16}))" in said
    assert df.loc["unet", "restated"].endswith("(stored by code 0123456789ab)") and df.loc["unet", "dice"] == 0.3


def test_a_per_class_hd95_edited_is_restated_from_the_case_rows(tmp_path):
    """A per_class hd95 edited by hand is an aggregate, as its dice is: the board takes the case rows' value and
    says so; taken for a case row's number, it kept the edit and was said to come from tp/fp/fn."""
    rec = make_record("unet", seed=0, dice=0.3)
    rec["per_class"][0]["hd95"] += 5  # aorta's: 20 from the case rows
    df, said = _rechecked(tmp_path, rec)
    assert df.loc["unet", "hd95/aorta"] == 20.0
    assert df.loc["unet", "restated"] == "hd95/aorta 25 stored, 20 from the case rows (stored by code 0123456789ab)"


def test_a_case_rows_own_numbers_are_checked_against_its_pixel_counts(tmp_path, monkeypatch):
    """One case's dice edited by hand flowed into the recomputed means unnoticed: the recheck recomputed the
    aggregates from the case rows but never a row's dice from its own tp/fp/fn. Now the row's count-derived
    numbers replace it, one warning names the file, case and class, and the board shows the counts' mean, also
    where the aggregates were edited to match the edited row."""
    honest = make_record("unet", dice=0.8, n_cases=2)
    forged = make_record("vmunet", dice=0.8, n_cases=2)
    liver = next(row for row in forged["per_case"] if row["case"] == "case0001" and row["name"] == "liver")
    liver["dice"] = 0.91
    restate(forged)  # its aggregates made to agree with the edited row, as a careful hand edit would
    assert forged["metrics"]["dice"] > 0.8
    df, said = _rechecked(tmp_path, honest, forged)
    assert f"{forged['run_id']}.json: case0001 class 5 (liver): dice 0.91 stored, 0.8 from its tp/fp/fn; " in said
    assert honest["run_id"] not in said
    assert df.loc["vmunet", "dice"] == pytest.approx(0.8, abs=1e-12) and df.loc["vmunet", "dice/liver"] == 0.8
    assert df.loc["vmunet", "restated"] == (
        "case0001 class 5 (liver): dice 0.91 stored, 0.8 from its tp/fp/fn; dice 0.806875 stored, 0.8 from the "
        "case rows; dice/liver 0.855 stored, 0.8 from the case rows (stored by code 0123456789ab)")
    assert df.loc["unet", "restated"] is None and df.loc["unet", "dice"] == pytest.approx(0.8, abs=1e-12)
    assert load(tmp_path).set_index("model").loc["vmunet", "dice"] > 0.8  # without recheck: the file as it is
    # the case rows the CIs and paired tests take: as the counts give them, as the board's mean is
    cases = load(tmp_path, level="case", recheck=True)
    row = (cases["model"] == "vmunet") & (cases["case"] == "case0001") & (cases["name"] == "liver")
    assert cases.loc[row, "dice"].tolist() == [0.8]
    stored = load(tmp_path, level="case")
    assert stored.loc[row, "dice"].tolist() == [0.91] and len(stored) == len(cases)
    # a mutation audit: what bench report draws from the case rows, its CIs and the figures' boxplots, took the
    # stored rows unnoticed (the stored 0.91 widens vmunet's dice CI to [0.8, 0.81375])
    from io import StringIO

    from bench import plots
    from bench.report import write_report

    with pytest.warns(UserWarning, match="hold numbers other than"):
        board = pd.read_csv(StringIO(write_report(tmp_path, "csv"))).set_index("model")
    assert board.loc["vmunet", ["dice_ci_lo", "dice_ci_hi"]].tolist() == [0.8, 0.8]
    drawn, dots = [], []
    monkeypatch.setattr(plots, "per_class_boxplots", lambda cases, *args, **kwargs: drawn.append(cases) or [])
    monkeypatch.setattr(plots, "accuracy_vs_cost", lambda runs, *args, **kwargs: dots.append(runs) or [])
    with pytest.warns(UserWarning, match="hold numbers other than"):
        plots.write_plots(tmp_path, tmp_path / "plots")
    (boxed,), (runs,) = drawn, dots
    assert runs.set_index("model").loc["vmunet", "dice"] == pytest.approx(0.8, abs=1e-12)  # the board's, not 0.806875
    liver = boxed[(boxed["model"] == "vmunet") & (boxed["case"] == "case0001") & (boxed["name"] == "liver")]
    assert liver["dice"].tolist() == [0.8]


def test_a_case_rows_empty_label_is_checked_against_its_counts(tmp_path):
    """A row's ``empty`` label (a word, not a number) was passed over by the recheck, yet the boards' miss counts
    (n_missed, n_present) take it: one edited to hide a miss ("none" where the counts predict nothing) kept its
    run's n_missed low, unsaid. Now it is checked and restated as the numbers are, and the miss counts follow."""
    rec = make_record("unet", dice=0.8, n_cases=2)
    missed = rec["per_case"][0]
    recount(missed, rec["policy"], tp=0, fp=0, fn=40, tn=960)  # the structure predicted nowhere: a miss
    restate(rec)
    assert missed["empty"] == "ref_only" and records.restated(rec) == {}
    missed["empty"] = "none"  # the miss hidden: the numbers (dice 0 under legacy-synapse) left as they are
    key = records.case_key(missed, "empty")
    assert records.restated(rec) == {key: ("none", "ref_only")}
    df, said = _rechecked(tmp_path, rec)
    assert f"{rec['run_id']}.json: {key} none stored, ref_only from its tp/fp/fn (stored by code" in said
    assert df.loc["unet", "n_missed"] == 1 and load(tmp_path).set_index("model").loc["unet", "n_missed"] == 0
    cases = load(tmp_path, level="case", recheck=True)
    assert cases.loc[(cases["case"] == "case0000") & (cases["class"] == missed["class"]), "empty"].tolist() == \
        ["ref_only"]


def test_a_case_row_is_named_once_whatever_its_ids_word():
    """Warnings named case rows "case case0000 class 1 (...)" where the ids start with "case" (Synapse's, KiTS's
    case_00000): the word is said once, and still said for ids without it (img0003, ISIC_0000000)."""
    for case, said in (("case0000", "case0000"), ("Case_00001", "Case_00001"), ("img0003", "case img0003"),
                       ("ISIC_0000000", "case ISIC_0000000"), ("cas1", "case cas1")):
        assert records.case_key({"case": case, "class": 2, "name": "liver"}, "dice") == f"{said} class 2 (liver): dice"
    rec = make_record("unet", dice=0.8, n_cases=1, case_ids=["img0003"])
    rec["per_case"][0]["dice"] = 0.5
    row, found = {}, []
    records._restate(row, records.restated(rec), rec, "r.json", found)  # the case row's number stays off the run's row, either way
    assert row == {"restated": "case img0003 class 1 (aorta): dice 0.5 stored, 0.8 from its tp/fp/fn (stored by code "
                               "0123456789ab)"}


def test_a_report_reads_and_recounts_each_record_once(tmp_path, monkeypatch):
    """bench report loaded the folder twice, its run rows and then its case rows, so every record file was read and
    its case rows recounted twice; now one read serves both (load_both), with the frames and warnings as before."""
    from bench.report import write_report

    forged = make_record("vmunet", dice=0.8, n_cases=2)
    forged["per_case"][0]["dice"] = 0.5  # its counts give 0.8: restated
    source = make_record("unet")
    for rec in (forged, source, _rescored(source, train={**source["train"], "final_loss": 0.2})):  # a stale rescore
        write_record(rec, tmp_path)
    with pytest.warns(UserWarning) as said:
        runs, cases = load(tmp_path, recheck=True, current=True), load(tmp_path, level="case", recheck=True)
    with pytest.warns(UserWarning) as said_both:
        both = records.load_both(tmp_path, recheck=True, current=True)
    assert [str(w.message) for w in said_both] == [str(w.message) for w in said]  # once each, in the same words
    pd.testing.assert_frame_equal(both[0], runs)
    kept = cases[cases["run_id"].isin(runs["run_id"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(both[1], kept)  # the stale rescore's rows left out, as its run row is
    reads, recounts = [], []
    read, recounted = records._read, records.recounted
    monkeypatch.setattr(records, "_read", lambda path: reads.append(path.name) or read(path))
    monkeypatch.setattr(records, "recounted", lambda rec: recounts.append(rec["run_id"]) or recounted(rec))
    with pytest.warns(UserWarning) as again:
        write_report(tmp_path, "md")
    assert sorted(reads) == sorted(p.name for p in records.records_dir(tmp_path).glob("*.json")) and len(reads) == 3
    assert sorted(recounts) == sorted([forged["run_id"], source["run_id"]])  # the stale one is left out first
    assert [str(w.message) for w in again] == [str(w.message) for w in said]  # stale, then restated, once each
    assert "left out of its board" in str(said[0].message) and "hold numbers other than" in str(said[1].message)


def test_many_case_rows_restated_are_counted_and_counts_differ_from_their_sums():
    rec = make_record("unet", dice=0.8, n_cases=3)
    for row in rec["per_case"][:6]:
        row.update(dice=0.5, iou=0.5)
    rec["per_case"][7]["n_pred"] = 7  # tp + fp are 100
    diffs = records.restated(rec)
    assert diffs["case0000 class 1 (aorta): iou"] == (0.5, 80 / 120)
    assert diffs["case0001 class 3 (kidney_l): n_pred"] == (7, 100)
    assert len(diffs) == 13 and not any(k.startswith(("dice", "iou")) for k in diffs)  # the aggregates agree
    row, found = {}, []
    records._restate(row, diffs, rec, "r.json", found)
    assert row["restated"] == ("case0000 class 1 (aorta): dice 0.5 stored, 0.8 from its tp/fp/fn; case0000 "
                               "class 1 (aorta): iou 0.5 stored, 0.666667 from its tp/fp/fn (and 11 more) "
                               "(stored by code 0123456789ab)")
    assert row.keys() == {"restated"} and found == [f"r.json: {row['restated']}"]  # no case column on the run's row


def test_an_empty_case_row_is_checked_by_its_policys_outcome():
    """Counts of an empty mask give no Dice: the policy's rule does (legacy-synapse scores a false positive on an
    absent organ 1, strict 0; both masks empty 0 and NaN), so a row is checked against its own policy's rule."""
    for policy, fp_only, both in (("legacy-synapse", 1.0, 0.0), ("strict", 0.0, math.nan)):
        rec = make_record("unet", n_cases=1)
        rec["policy"] = policy
        rec["per_case"][:2] = [case_row("case0000", 1, "aorta", policy, {"tp": 0, "fp": 5, "fn": 0, "tn": 995}),
                               case_row("case0000", 2, "gallbladder", policy, {"tp": 0, "fp": 0, "fn": 0, "tn": 1000})]
        assert rec["per_case"][0]["dice"] == fp_only and records._same(rec["per_case"][1]["dice"], both)
        assert records.restated(restate(rec)) == {}  # as a run under the policy writes them
        rec["per_case"][0]["dice"] = 1.0 - fp_only  # the other policy's rules
        rec["per_case"][1]["dice"] = 0.0 if math.isnan(both) else None
        got = {k: v for k, v in records.restated(rec).items() if k.startswith("case0")}
        assert list(got) == ["case0000 class 1 (aorta): dice", "case0000 class 2 (gallbladder): dice"]
        assert got["case0000 class 1 (aorta): dice"] == (1.0 - fp_only, fp_only)
        stored, again = got["case0000 class 2 (gallbladder): dice"]
        assert stored == rec["per_case"][1]["dice"] and records._same(again, both)


def test_a_record_without_counts_is_not_checked_by_them():
    """Older records' case rows may lack tp/fp/fn/tn: nothing to recompute a row from, so nothing is flagged."""
    rec = make_record("unet", n_cases=2)
    for row in rec["per_case"]:
        for k in ("tp", "fp", "fn", "tn"):
            del row[k]
    rec["per_case"][0]["dice"] = 0.3
    restate(rec)
    assert records.restated(rec) == {}
    rec["per_case"][1].update(tp=None, fp=0, fn=0, tn=0)  # a null count: not a count either
    assert records.restated(rec) == {}


@pytest.mark.parametrize("policy", records.POLICIES)
def test_the_rows_a_run_scores_agree_with_their_counts_under_every_policy(policy):
    """Every empty-mask rule of every policy: the rows score_case writes are the rows the recheck recomputes."""
    from bench.metrics import aggregate, aggregate_per_class, score_case

    pred, gt = np.zeros((4, 6, 6), np.uint8), np.zeros((4, 6, 6), np.uint8)
    pred[0, 1:4, 1:4], gt[0, 2:5, 2:5] = 1, 1  # both present
    gt[1, 1:3, 1:3] = 1  # a miss
    pred[2, 4:, 4:] = 1  # a false positive; case 3: both empty
    rows = [{"case": f"c{i}", **r} for i in range(4) for r in score_case(pred[i], gt[i], 2, policy, spacing=(1, 2))]
    assert {r["empty"] for r in rows} == {"none", "ref_only", "pred_only", "both"}
    agg, per_class = aggregate(rows, policy), aggregate_per_class(rows, policy)
    rec = {"policy": policy, "per_case": [{k: None if v != v else v for k, v in r.items()} for r in rows],  # JSON's
           "metrics": {k: agg[k] for k in ("dice", "iou", "acc", "spe", "sen")},
           "per_class": [{k: pc[k] for k in ("class", "name", "dice", "hd95")} for pc in per_class]}
    assert records.restated(rec) == {}
    rec["per_case"][0]["fn"] += 1  # another count: its numbers no longer agree
    assert "case c0 class 1 (class1): dice" in records.restated(rec)


def _rescored(source, **changes):
    """``source``'s record as `bench rescore` writes it under strict, ``changes`` applied."""
    from bench.metrics import policy_fields

    return {**source, "run_id": f"{source['run_id']}.strict", "policy": "strict",
            "policy_conventions": policy_fields("strict"), "rescored_from": source["run_id"], **changes}


def test_a_rescore_of_an_earlier_training_is_told_and_left_off_the_boards(tmp_path):
    """A housekeeping journey: a run trained again (its record deleted, bench run) kept its old
    `bench rescore` record on the strict board, beside its new weights, unsaid."""
    sha = lambda c: {"file": "final.pt", "sha256": c * 64}  # noqa: E731
    source = make_record("unet", run_id="synapse-synapse-unet-s0-0000abcd")
    source["train"] = {**source["train"], "epoch_losses": [0.5, 0.123]}
    stale = records.scored_other_weights
    assert not stale(_rescored(source), source)  # older records without the field: the same losses, the same training
    # one keeps the sha256 (a rescore by a newer bench), the other not: the losses decide, as where neither keeps it
    assert not stale(_rescored(source, scored_weights=sha("a")), source)
    assert not stale(_rescored(source), {**source, "scored_weights": sha("a")})
    assert stale(_rescored(source, train={**source["train"], "final_loss": 0.2}), source)
    assert stale(_rescored(source, train={**source["train"], "epoch_losses": [0.5, 0.1]}), source)
    # the checkpoints' sha256 decides where both keep it, whatever the losses say
    assert stale(_rescored(source, scored_weights=sha("a")), {**source, "scored_weights": sha("b")})
    assert not stale(_rescored(source, scored_weights=sha("a"), train={}), {**source, "scored_weights": sha("a")})
    assert not stale(_rescored(source, train={}), {**source, "train": {}})  # nothing tells: not stale
    with pytest.raises(BenchError, match=r"scored_weights.sha256: missing"):  # optional, but whole where present
        validate_record({**source, "scored_weights": {"file": "final.pt"}})

    write_record({**source, "scored_weights": sha("b")}, tmp_path)
    write_record(_rescored(source, scored_weights=sha("a")), tmp_path)
    assert len(load(tmp_path)) == 2  # the reader keeps every record; boards ask for current ones
    with pytest.warns(UserWarning) as said:
        df = load(tmp_path, recheck=True, current=True)
    assert list(df["run_id"]) == [source["run_id"]]
    # a category of its own, public for callers that filter it (docs/results.md)
    assert [w.category for w in said] == [records.StaleRescoresLeftOut] and "StaleRescoresLeftOut" in records.__all__
    (text,) = [str(w.message) for w in said]
    assert text == (f"{records.record_path(tmp_path, source['run_id'] + '.strict')} scored the weights of an earlier "
                    f"training of run {source['run_id']}, trained again since: `bench rescore --policy strict --results "
                    f"{tmp_path}` scores the new weights; left out of its board until then")


def test_short_fingerprint_names_the_driver_and_cudnn_on_cuda_and_the_isa_on_cpu():
    fp = {"device": "cuda", "gpu": "NVIDIA H200", "driver": "580.159.03", "cuda": "13.0", "cudnn": 91002,
          "torch": "2.11.0"}
    assert records.short_fingerprint(fp) == "NVIDIA H200 / driver 580.159.03 / CUDA 13.0 / cuDNN 91002 / torch 2.11.0"
    # cost tables group timings by it: one ISA's kernels do not rank against another's
    cpu = {"device": "cpu", "cpu": "AMD EPYC", "threads": 1, "cpu_capability": "AVX512", "torch": "2.13.0"}
    assert records.short_fingerprint(cpu) == "AMD EPYC x1 threads (AVX512) / torch 2.13.0"
    assert records.short_fingerprint({**cpu, "cpu_capability": "DEFAULT"}) != records.short_fingerprint(cpu)
    # what an older record lacks is left out, not printed as None
    assert records.short_fingerprint({"device": "cpu", "cpu": "AMD EPYC", "threads": 2}) == "AMD EPYC x2 threads"
    assert records.short_fingerprint({"device": "cuda", "gpu": "NVIDIA H100", "cuda": "12.4", "torch": "2.5.1"}) \
        == "NVIDIA H100 / CUDA 12.4 / torch 2.5.1"
    assert records.short_fingerprint({"device": "cpu"}) == "unknown CPU"
