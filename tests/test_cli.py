"""The CLI end to end on synthetic data (tiny models, a few iterations), and its error handling."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bench import records
from bench.cli import app, data_app, default_protocol, main
from bench.errors import BenchError
from bench.report import render_methods
from tests.fixtures import make_record, restate, run_bench, run_bench_here

runner = CliRunner()
FAST = ["--tiny", "--max-iterations", "4", "--img-size", "32", "--threads", "1", "--no-progress"]
_bench = run_bench


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    _bench("run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--protocol", "smoke",
           "--results", out, *FAST)
    return out


def test_run_writes_a_record_and_report_shows_organs(smoke_results):
    df = records.load(smoke_results)
    assert len(df) == 1
    row = df.iloc[0]
    assert row["model"] == "unet" and row["policy"] == "legacy-synapse" and bool(row["off_protocol"])
    assert row["tiny"] == True  # noqa: E712 (numpy bool; older records: NaN). --tiny, recorded: no guess from the config
    assert 0.0 <= row["dice"] <= 1.0
    assert row["macs"] > 0 and row["flops"] == 2 * row["macs"] and row["paper_macs"] > 0  # counted at 32²
    rep = _bench("report", "--results", smoke_results).stdout
    for organ in ("Aorta", "Gallbladder", "Kidney(L)", "Kidney(R)", "Liver", "Pancreas", "Spleen", "Stomach"):
        assert organ in rep and f"{organ} HD95" in rep
    # TensorBoard scalars and checkpoints live in the run directory
    (run_dir,) = (smoke_results / "runs").iterdir()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / "checkpoints" / "final.pt").is_file()
    assert "legacy-synapse" in rep and "smoke" in rep


def test_a_notebook_joins_runs_and_their_cost_on_model_and_model_config(smoke_results, tmp_path, bench_here):
    """A results consumer's journey: `bench profile`'s CSV spelled ``model_config`` with spaces, ``load_profiles``
    gave dicts (pandas: "unhashable type") and ``records.load`` had no ``input_shape``, so no merge of accuracy and
    cost matched a row; the board CSV wrote counts as floats ("34526409.0")."""
    import io
    import shutil

    from bench.profiles import load_profiles

    shutil.copytree(smoke_results / "records", tmp_path / "records")
    run = records.load(tmp_path).iloc[0]
    cfg = json.loads(run["model_config"])
    csv = bench_here("profile", "--models", "unet", "--tiny", "--img-size", cfg["img_size"], "--in-chans",
                     cfg["in_chans"], "--num-classes", cfg["num_classes"], "--no-timing", "--results", tmp_path,
                     "--format", "csv").stdout
    assert pd.read_csv(io.StringIO(csv))["model_config"].tolist() == [run["model_config"]]
    both = records.load(tmp_path).merge(load_profiles(tmp_path), on=["model", "model_config"], suffixes=("", "_prof"))
    assert len(both) == 1 and both["input_shape"].iloc[0] == both["input_shape_prof"].iloc[0] == "1x1x32x32"
    assert both["params"].iloc[0] == both["params_prof"].iloc[0] and both["macs"].iloc[0] == both["macs_prof"].iloc[0]
    # the machine spelled alike (records.short_fingerprint): a run's device, a profile's fingerprint
    assert both["device"].iloc[0] == both["fingerprint"].iloc[0]
    board = pd.read_csv(io.StringIO(bench_here("report", "--results", tmp_path, "--format", "csv").stdout))
    for col in ("params", "macs", "paper_macs", "n_seeds", "n_runs", "n_missed", "n_present"):
        assert board[col].dtype == "int64", col


def test_a_runs_case_rows_agree_with_their_counts_and_one_edited_is_restated(smoke_results, tmp_path, monkeypatch,
                                                                            capsys):
    """A case's dice edited by hand, and the run's means made to agree with it, read as the run's own numbers:
    the recheck took every case row as it stood. A real run's rows are what their pixel counts give; the
    edited one is named, file, case and class, and bench report shows the mean the counts give."""
    (path,) = (smoke_results / "records").glob("*.json")
    rec = json.loads(path.read_text(encoding="utf-8"))
    assert rec["per_case"][0]["tp"] is not None and records.restated(rec) == {}
    row = rec["per_case"][0]
    was, row["dice"] = row["dice"], 0.91 if row["dice"] < 0.5 else 0.01
    restate(rec)  # the aggregates from the edited rows: only the counts tell
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / path.name).write_text(json.dumps(rec), encoding="utf-8")
    report = run_bench_here(monkeypatch, capsys, "report", "--results", tmp_path)
    (line,) = [line for line in report.stderr.splitlines() if "hold numbers other than" in line]
    assert row["case"].startswith("case")  # named once: "case0012 class 1", not "case case0012 class 1"
    assert (f"{tmp_path / 'records' / path.name}: {row['case']} class 1 (aorta): dice {row['dice']:g} stored, "
            f"{was:.6g} from its tp/fp/fn; dice ") in line
    with pytest.warns(UserWarning, match="hold numbers other than"):
        shown = records.load(tmp_path, recheck=True)["dice"].iloc[0]
    assert shown == pytest.approx(records.load(smoke_results)["dice"].iloc[0], abs=1e-12)
    assert f"{100 * shown:.2f}" in report.stdout and f"{100 * rec['metrics']['dice']:.2f}" not in report.stdout


def test_finished_runs_are_skipped(smoke_results):
    out = _bench("run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--protocol", "smoke",
                 "--results", smoke_results, *FAST).stdout
    assert "skipped" in out
    assert len(records.load(smoke_results)) == 1


def test_a_finished_runs_record_kept_under_another_name_only_is_refused_before_training(smoke_results, tmp_path,
                                                                                        bench_here):
    """`mv X.json X-backup.json`: bench run, which finds a finished run by its record's name, trained the run
    again, and every reader then refused the backup beside the new record; now bench run (and --dry-run) refuses
    as the readers do, before anything trains."""
    import shutil

    shutil.copytree(smoke_results / "records", tmp_path / "records")
    (own,) = [p for p in (tmp_path / "records").glob("*.json") if p.stem.count(".") == 0]
    backup = own.rename(own.with_name(own.stem + "-backup.json"))
    said = f"{backup}: holds the record of run '{own.stem}', whose file must be named {own.name}"
    args = ("run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--protocol", "smoke", "--results",
            tmp_path, *FAST)
    for dry in ([], ["--dry-run"]):
        out = bench_here(*args, *dry, check=False)
        assert out.returncode == 2 and said in out.stderr and "training" not in out.stdout, (dry, out.stderr)
    assert sorted(p.name for p in (tmp_path / "records").iterdir()) == [backup.name] and not (tmp_path / "runs").exists()
    backup.rename(own)  # its own name again: finished, skipped
    assert f"{own.stem}: finished earlier, skipped" in bench_here(*args).stdout


def test_weights_trained_elsewhere_are_evaluated_as_a_run(smoke_results, tmp_path, bench_here):
    """bench run --weights: an authors' checkpoint (or one's own) scored under the protocol, without
    training; the same weights score exactly as the run that trained them, and rescore takes them."""
    import dataclasses
    import hashlib

    from bench.protocol import PROTOCOL_DIR, load_protocol
    from bench.run import plan_grid

    (trained,) = [r for r in map(json.loads, (p.read_text(encoding="utf-8")
                                              for p in (smoke_results / "records").glob("*.json")))
                  if "rescored_from" not in r]
    final = smoke_results / "runs" / trained["run_id"] / "checkpoints" / "final.pt"
    mine = tmp_path / "mine.pth"
    mine.write_bytes(final.read_bytes())
    base = ["run", "--models", "unet", "--dataset", "synapse", "--data-root", trained["data_root"], "--protocol",
            "smoke", "--tiny", "--img-size", "32", "--threads", "1", "--no-progress", "--results", tmp_path / "res"]
    out = _bench(*base, "--weights", mine).stdout
    (rec,) = [json.loads(p.read_text(encoding="utf-8")) for p in (tmp_path / "res" / "records").glob("*.json")]
    assert rec["weights"]["file"] == "mine.pth" and rec["train"]["iterations"] == 0 and rec["n_train"] is None
    # the file's whole sha256, to check a copy against; the run id hashes its first 16 digits, as it did when
    # records kept only those, so runs of the same file made then are still this run (skipped, not run again)
    assert rec["weights"]["sha256"] == hashlib.sha256(mine.read_bytes()).hexdigest()
    (spec,) = plan_grid(models=["unet"], dataset="synapse", protocol=load_protocol("smoke").with_overrides(img_size=32),
                        seeds=None, data_root=trained["data_root"], synthetic=False, results_dir=tmp_path / "res",
                        tiny=True, weights=mine)
    assert spec.key == rec["run_id"] == dataclasses.replace(spec, weights=(str(mine), spec.weights[1][:16])).key
    assert records.load(tmp_path / "res")["train_time_s"].isna().all()  # nothing trained here: no train time
    assert rec["metrics"] == trained["metrics"] and rec["per_case"] == trained["per_case"]
    # the checkpoint names the run that wrote it: the record and Methods trace the weights to it
    assert {k: rec["weights"]["trained_by"][k] for k in ("run_id", "protocol", "same_items")} == {
        "run_id": trained["run_id"], "protocol": "smoke", "same_items": True}
    methods = _bench("report", "--results", tmp_path / "res", "--format", "methods").stdout
    assert f"trained by run {trained['run_id']} under protocol smoke on this split's training items" in methods
    assert "skipped" in _bench(*base, "--weights", mine).stdout and "skipped" not in out
    sha = rec["weights"]["sha256"][:8]
    assert re.search(rf"\| unet \(tiny, weights mine\.pth@{sha}\) +\|", _bench("report", "--results", tmp_path / "res").stdout)
    _bench("rescore", "--policy", "strict", "--results", tmp_path / "res")  # its weights are the run's checkpoint
    # what cannot be evaluated is refused before anything is written
    two = bench_here(*base[:2], "unet,vmunet", *base[3:-1], tmp_path / "two", "--weights", mine, check=False)
    assert two.returncode == 2 and "evaluates one model's weights, without training; give one model" in two.stderr
    every = bench_here(*base[:1], *base[3:-1], tmp_path / "two", "--weights", mine, check=False)  # no --models: all
    assert every.returncode == 2 and "give one model: --models NAME (got all" in every.stderr, every.stderr
    # another seed would score the same weights again as a second "seed"; training options split the runs
    again = bench_here(*base[:-1], tmp_path / "two", "--seeds", "1", "--lr", "0.5", "--weights", mine, check=False)
    assert again.returncode == 2 and "drop --seeds, --lr, which only a training would use" in again.stderr
    bare = bench_here(*base[:-1], tmp_path / "two", "--no-pretrained", "--weights", mine, check=False)
    assert bare.returncode == 2 and "drop --no-pretrained, which" in bare.stderr  # the option given, by its name
    other = bench_here(*base[:-1], tmp_path / "other", "--set", "widths=[8, 16, 32, 128]", "--weights", mine,
                       check=False)
    assert other.returncode == 2 and f"{mine} does not match UNet" in other.stderr
    assert not (tmp_path / "other" / "runs").exists()
    # the same file under a recipe that evaluates as smoke does, training aside: scored for its own board, and said
    lr = tmp_path / "smoke_lr.toml"
    lr.write_text((PROTOCOL_DIR / "smoke.toml").read_text(encoding="utf-8")
                  .replace('name = "smoke"', 'name = "smoke_lr"').replace("lr = 1e-3", "lr = 5e-4"), encoding="utf-8")
    note = _bench(*base[:8], lr, *base[9:], "--weights", mine).stdout
    assert re.search(rf"note: synapse-smoke_lr-unet-s0-[0-9a-f]{{8}}: these weights were already evaluated under "
                     rf"protocol smoke \(run {rec['run_id']}\), which scores as smoke_lr does; that board holds them",
                     note), note
    assert "already evaluated" not in out  # the first evaluation of the file says nothing of the kind
    # --from-record of it: the record names the file and its sha256, the command gives the file
    kept = tmp_path / "res" / "records" / f"{rec['run_id']}.json"
    need = bench_here("run", "--from-record", kept, "--results", tmp_path / "again", check=False)
    assert need.returncode == 2 and f"evaluated the weights file mine.pth (sha256 {sha[:8]}" in need.stderr \
        and "pass --weights PATH to that file" in need.stderr, need.stderr
    held = _bench("run", "--from-record", kept, "--weights", mine, "--results", tmp_path / "res").stdout
    assert f"holds run {rec['run_id']} already" in held and "skipped" in held  # the same file: the same run


def test_from_record_reruns_a_run_of_a_protocol_file_not_shipped_bit_for_bit(tmp_path):
    """bench run --from-record: a reviewer given a results folder re-runs one of its runs from its record
    alone: the protocol rebuilt from the recipe the record keeps (its file gone), the --set and --tiny
    configuration, the same run id, and at the same threads, CPU and code the same numbers, bit for bit."""
    from bench.protocol import PROTOCOL_DIR

    mine = tmp_path / "smoke_lr.toml"
    mine.write_text((PROTOCOL_DIR / "smoke.toml").read_text(encoding="utf-8")
                    .replace('name = "smoke"', 'name = "smoke_lr"').replace("lr = 1e-3", "lr = 5e-4"), encoding="utf-8")
    _bench("run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--protocol", mine, "--set",
           "widths=[4, 8, 16, 32]", "--results", tmp_path / "res", *FAST)
    mine.unlink()  # not shipped with the results
    (kept,) = (tmp_path / "res" / "records").glob("*.json")
    rec = json.loads(kept.read_text(encoding="utf-8"))
    out = _bench("run", "--from-record", kept, "--results", tmp_path / "other", "--no-progress")
    (again,) = [json.loads(p.read_text(encoding="utf-8")) for p in (tmp_path / "other" / "records").glob("*.json")]
    assert again["run_id"] == rec["run_id"] and again["protocol"] == rec["protocol"]
    assert again["model_config"]["widths"] == [4, 8, 16, 32] and again["set_keys"] == ["widths"] and again["tiny"]
    assert again["metrics"] == rec["metrics"] and again["per_case"] == rec["per_case"]
    assert "warning" not in out.stderr  # the same threads and code: nothing to say
    # its run folder names it too; a results folder holding the run skips it, and says how to re-run it
    held = _bench("run", "--from-record", tmp_path / "other" / "runs" / rec["run_id"], "--results", tmp_path / "other")
    assert f"note: {tmp_path / 'other'} holds run {rec['run_id']} already, so bench run skips it; --results " \
           "ANOTHER_FOLDER re-runs it there" in held.stdout and "finished earlier, skipped" in held.stdout
    assert "bit for bit" not in held.stdout  # the record compared with itself is no match (a mutation audit)


def test_from_record_refuses_what_would_change_the_run_and_warns_where_bits_may_differ(smoke_results, tmp_path,
                                                                                       monkeypatch, capsys):
    (kept,) = [p for p in (smoke_results / "records").glob("*.json") if p.name.count(".") == 1]
    bad = run_bench_here(monkeypatch, capsys, "run", "--from-record", kept, "--models", "unet", "--seeds", "1",
                         "--no-pretrained", "--set", "widths=[4, 8, 16, 32]", "--tiny", "--results", tmp_path,
                         check=False)
    assert bad.returncode == 2 and "drop --models, --seeds, --no-pretrained, --set, --tiny, which would make it " \
        "another run" in bad.stderr, bad.stderr
    rec = json.loads(kept.read_text(encoding="utf-8"))
    rescored = tmp_path / "rescored.json"
    rescored.write_text(json.dumps({**rec, "run_id": rec["run_id"] + ".strict", "rescored_from": rec["run_id"],
                                    "policy": "strict"}), encoding="utf-8")
    # a rescored record is its run re-run, then rescored: that run's record is looked for beside it, then in --results
    no = run_bench_here(monkeypatch, capsys, "run", "--from-record", rescored, "--results", tmp_path / "res",
                        check=False)
    assert no.returncode == 2 and f"is run {rec['run_id']}'s weights scored under strict (bench rescore); " \
        f"{tmp_path / rec['run_id']}.json is not there, nor {tmp_path / 'res' / 'records' / rec['run_id']}.json" \
        in no.stderr, no.stderr
    # a rescored record's run is re-run, then rescored, in this process: --nproc is refused (a mutation audit: it
    # would have launched torchrun and never rescored)
    beside = tmp_path / kept.name
    beside.write_text(kept.read_text(encoding="utf-8"), encoding="utf-8")
    two = run_bench_here(monkeypatch, capsys, "run", "--from-record", rescored, "--nproc", "2", "--results",
                         tmp_path / "res", check=False)
    assert two.returncode == 2 and f"--from-record {rescored}: a rescored record's run is re-run, then rescored, in " \
        "this process; --nproc 2 takes the record of a trained run" in two.stderr, two.stderr
    beside.unlink()
    # a folder's records are re-run one after another in this process: --nproc is refused for them, and said why
    many = run_bench_here(monkeypatch, capsys, "run", "--from-record", smoke_results, "--nproc", "2", "--results",
                          tmp_path, check=False)
    assert many.returncode == 2 and f"--from-record {smoke_results}: a folder's records are re-run one after " \
        "another in this process; --nproc 2 takes one record" in many.stderr, many.stderr
    # another thread count and other code than the run's: one line, saying how to match the threads
    older = tmp_path / "older.json"
    older.write_text(json.dumps({**rec, "git_commit": "0" * 40, "code_digest": "0" * 16}), encoding="utf-8")
    out = _bench("run", "--from-record", older, "--results", smoke_results, "--threads", "2", "--dry-run")
    (said,) = [line for line in out.stderr.splitlines() if "warning" in line]
    assert re.fullmatch(rf"warning: run {rec['run_id']} ran otherwise than this command: threads 2, the run's 1 "
                        r"\(--threads 1\); code \S.*, the run's 000000000000; its numbers may differ from the "
                        r"record's", said), said
    assert f"done     {rec['run_id']}" in out.stdout


def test_from_record_says_whether_the_rerun_matches_its_record_bit_for_bit(smoke_results, tmp_path):
    """A reviewer re-ran a run with 2 threads instead of its 1: DSC 6.85 against the record's 7.21, and the command
    ended "1 finished", exit 0, comparing nothing. Now each re-run is compared with its record in one line (exit 0
    still: a GPU run need not repeat bit for bit), and on CPU the record's threads are this command's."""
    (kept,) = [p for p in (smoke_results / "records").glob("*.json") if p.name.count(".") == 1]
    rec = json.loads(kept.read_text(encoding="utf-8"))
    out = _bench("run", "--from-record", kept, "--results", tmp_path / "again", "--device", "cpu", "--no-progress")
    assert f"  {rec['run_id']}: matches record {kept} bit for bit (metrics, per-class, {len(rec['per_case'])} case " \
        "rows)" in out.stdout, out.stdout
    # a record that ran with 2 threads (OMP_NUM_THREADS=1 here) and says another DSC than its run gives
    edited = tmp_path / "edited" / kept.name
    edited.parent.mkdir()
    edited.write_text(json.dumps({**rec, "device": {**rec["device"], "threads": 2},
                                  "metrics": {**rec["metrics"], "dice": 0.5}}), encoding="utf-8")
    out = _bench("run", "--from-record", edited, "--results", tmp_path / "two", "--device", "cpu", "--no-progress")
    assert "note: --threads 2, as the run had" in out.stdout and "warning" not in out.stderr, out.stderr
    (again,) = [json.loads(p.read_text(encoding="utf-8")) for p in (tmp_path / "two" / "records").glob("*.json")]
    assert again["run_id"] == rec["run_id"] and again["device"]["threads"] == 2
    assert re.search(rf"  {rec['run_id']}: differs from record {re.escape(str(edited))}: dice 0\.5 -> 0\.\d+",
                     out.stdout), out.stdout
    # where --results holds the run already: skipped, and that record compared; --threads given wins, and is said
    held = _bench("run", "--from-record", edited, "--results", tmp_path / "again", "--threads", "1", "--device", "cpu")
    assert "finished earlier, skipped" in held.stdout and "as the run had" not in held.stdout
    assert re.search(r"differs from record .*: dice 0\.5 -> 0\.\d+.*; it ran otherwise \(threads: the warning above\)$",
                     held.stdout.strip()), held.stdout
    assert "threads 1, the run's 2 (--threads 2)" in held.stderr


def test_from_record_of_a_folder_reruns_every_record_and_counts_them(tmp_path, bench_here):
    """--from-record DIR: a results folder received whole (its synthetic data not with it) is re-run in one
    command: trained runs first, then the rescored one after its run; what is alike for all said once; a
    summary counts them. A record that cannot be re-run is one line, the others go on, exit 2."""
    import shutil

    res = tmp_path / "res"
    _bench("run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--protocol", "smoke", "--seeds", "0,1",
           "--results", res, *FAST)
    _bench("rescore", "--policy", "strict", "--results", res)
    strict = sorted((res / "records").glob("*.strict.json"))
    strict[1].unlink()  # 2 trained records, 1 rescored
    for p in (res / "records").glob("*.json"):  # written by other code: said once for all of them
        p.write_text(json.dumps({**json.loads(p.read_text(encoding="utf-8")), "git_commit": "0" * 40,
                                 "code_digest": "0" * 16}), encoding="utf-8")
    shutil.move(res / "synthetic", tmp_path / "hidden")
    ids = sorted(p.stem for p in (res / "records").glob("*.json"))
    (res / "records" / "broken.json").write_text("{", encoding="utf-8")
    dry = bench_here("run", "--from-record", res, "--results", tmp_path / "again", "--dry-run", check=False)
    assert dry.returncode == 2 and "1 of 4 record(s) of" in dry.stderr and "broken" in dry.stderr, dry.stderr
    assert "could not be planned" in dry.stderr and "nothing was re-run" in dry.stderr, dry.stderr  # nor was
    assert [line.split()[:2] for line in dry.stdout.splitlines() if line.startswith("  ")] == \
        [["missing", i] for i in ids], dry.stdout
    (res / "records" / "broken.json").unlink()
    out = _bench("run", "--from-record", res, "--results", tmp_path / "again", "--device", "cpu", "--no-progress")
    assert out.stdout.count("note: --threads 1, as the run had") == 1
    assert out.stdout.count("is not there; made the same synthetic data again under") == 1, out.stdout
    (said,) = [line for line in out.stderr.splitlines() if "warning" in line]
    assert said.startswith("warning: all 2 runs ran otherwise than this command: code ") and \
        "the run's 000000000000; their numbers may differ from their records'" in said, said
    ran = [line.split(":")[0].strip() for line in out.stdout.splitlines() if "bit for bit (" in line]
    assert ran == sorted(ids, key=lambda i: (i.endswith(".strict"), i))  # the rescored one after the runs
    assert out.stdout.strip().endswith(f"bench run --from-record: 3 record(s) of {res} re-run: 3 match bit for bit, "
                                       "0 differ"), out.stdout
    assert sorted(p.stem for p in (tmp_path / "again" / "records").glob("*.json")) == ids
    # again: every run is in --results, so each record is compared with it, and nothing re-run, as the summary says
    out = _bench("run", "--from-record", res, "--results", tmp_path / "again", "--device", "cpu", "--no-progress")
    assert out.stdout.strip().endswith(f"bench run --from-record: 3 record(s) of {res}, 3 found finished in "
                                       f"{tmp_path / 'again'} already (compared, not re-run): 3 match bit for bit, "
                                       "0 differ"), out.stdout
    # a run of --results trained again since its rescore there (its record deleted): that rescore, of the earlier
    # weights, is scored again, not taken as held (the diff review's re-read)
    first = ids[0]
    (tmp_path / "again" / "records" / f"{first}.json").unlink()
    held = tmp_path / "again" / "records" / f"{first}.strict.json"
    held.write_text(json.dumps({**json.loads(held.read_text(encoding="utf-8")), "scored_weights": {"file": "final.pt",
                                                                                   "sha256": "0" * 64}}),
                    encoding="utf-8")
    out = _bench("run", "--from-record", res, "--results", tmp_path / "again", "--device", "cpu", "--no-progress")
    assert f"{first}.strict: " in out.stdout and "; scored again: its run was trained again since its rescore" in \
        out.stdout and "scored earlier, skipped" not in out.stdout, out.stdout
    assert json.loads(held.read_text(encoding="utf-8"))["scored_weights"]["sha256"] != "0" * 64


def test_from_record_of_a_rescored_record_says_why_its_rescored_numbers_differ(smoke_results, tmp_path):
    """A rescored record whose re-run differed pointed only to its run's differences: nothing where its run
    re-ran alike, though the record's numbers were scored elsewhere (its rescored_with) or from other weights."""
    import shutil

    copy = tmp_path / "res"
    shutil.copytree(smoke_results, copy)
    for p in (copy / "records").glob("*.*.json"):
        p.unlink()
    _bench("rescore", "--policy", "strict", "--results", copy, "--device", "cpu", "--threads", "1")
    (source,) = [p for p in (copy / "records").glob("*.json") if p.name.count(".") == 1]
    rec = json.loads((copy / "records" / f"{source.stem}.strict.json").read_text(encoding="utf-8"))
    given = tmp_path / "given"
    given.mkdir()
    shutil.copy(source, given)
    scored = rec["rescored_with"]
    threads = scored["device"]["threads"]
    edited = given / f"{rec['run_id']}.json"  # scored by other code with another thread count, from other weights
    edited.write_text(json.dumps({**rec, "metrics": {**rec["metrics"], "dice": 0.5},
                                  "scored_weights": {**rec["scored_weights"], "sha256": "0" * 64},
                                  "rescored_with": {**scored, "git_commit": None, "code_digest": "0" * 16,
                                                    "device": {**scored["device"], "threads": threads + 1}}}),
                      encoding="utf-8")
    out = _bench("run", "--from-record", edited, "--results", tmp_path / "again", "--device", "cpu", "--no-progress")
    assert f"  {source.stem}: matches record" in out.stdout, out.stdout  # its run re-ran alike: no warning above
    # the rescore takes the rescore's threads (its record's device is its run's, which trained with the run's)
    assert f"note: --threads {threads + 1}, as the rescore had" in out.stdout, out.stdout
    assert re.search(rf"  {re.escape(rec['run_id'])}: differs from record {re.escape(str(edited))}: dice 0\.5 -> "
                     rf"0\.\d+; it scored other weights than the record's \(final\.pt sha256 [0-9a-f]{{8}}, the "
                     rf"record's 00000000: run {source.stem} trained others\); it was rescored otherwise: code "
                     rf".+, the rescore's sources 0{{16}}\)?$", out.stdout, re.M), out.stdout


def _rerun_record(tmp_path, run_id, outcome="", found=False):
    from bench.cli.rerun_cmd import _Record

    return _Record(tmp_path / "records" / f"{run_id}.json", {"run_id": run_id}, found=found, outcome=outcome)


def test_from_record_of_a_folders_summary_says_which_records_were_re_run_and_which_only_compared(tmp_path, capsys):
    """A reviewer's folder whose runs --results held already read "4 record(s) of resF re-run: 4 match", though
    nothing ran; and a --dry-run with a failure ended "could not be re-run ..., the others were", nothing re-run."""
    from bench.cli.rerun_cmd import _end, _summary

    todo = [_rerun_record(tmp_path, "a", "match"), _rerun_record(tmp_path, "b", "differ", found=True),
            _rerun_record(tmp_path, "c", "match", found=True), _rerun_record(tmp_path, "d", "skipped", found=True)]
    _summary(Path("recs"), todo, 5, ["e"], Path("res"))
    assert capsys.readouterr().out == (
        "bench run --from-record: 5 record(s) of recs, 1 re-run and 2 found finished in res already (compared, not "
        "re-run): 2 match bit for bit, 1 differ (b), 1 skipped (nothing to compare: being run by other processes, or "
        "the record itself), 1 failed (e)\n")
    _summary(Path("recs"), todo[2:3], 1, [], Path("res"))
    assert "1 record(s) of recs, 1 found finished in res already (compared, not re-run): 1 match" in \
        capsys.readouterr().out
    _summary(Path("recs"), todo[:1], 1, [], Path("res"))
    assert "1 record(s) of recs re-run: 1 match bit for bit, 0 differ\n" in capsys.readouterr().out
    _end([], 3, Path("recs"), dry_run=True)  # nothing failed: nothing said
    with pytest.raises(BenchError, match=r"^1 of 3 record\(s\) of recs could not be planned \(e\), the others were; "
                                         r"the lines above say why \(--dry-run: nothing was re-run\)$"):
        _end(["e"], 3, Path("recs"), dry_run=True)
    with pytest.raises(BenchError, match=r"^3 of 3 record\(s\) of recs could not be re-run \(a, b, c\); the lines"):
        _end(["a", "b", "c"], 3, Path("recs"))


def test_from_record_into_its_own_folder_says_once_that_its_runs_are_skipped(tmp_path, capsys):
    """--from-record resF --results resF skipped every run, and only a single record was told of --results
    ANOTHER_FOLDER; now a folder is told too, once. A run held in --results is found (compared, not re-run)."""
    from bench.cli.rerun_cmd import _note_once, _say_held

    (tmp_path / "records").mkdir()
    a, b, c = (_rerun_record(tmp_path, i) for i in "abc")
    for r in (a, b):
        r.path.write_text("{}", encoding="utf-8")
    note = _note_once()
    assert _say_held(a, tmp_path, True, note) and _say_held(b, tmp_path, True, note)
    assert not _say_held(c, tmp_path, True, note)  # not in --results: re-run
    assert capsys.readouterr().out == (f"note: {tmp_path} is the folder of these records, so bench run skips their "
                                       "runs; --results ANOTHER_FOLDER re-runs them there, to compare with their "
                                       "records\n")
    assert _say_held(a, tmp_path, False, _note_once())
    assert capsys.readouterr().out == (f"note: {tmp_path} holds run a already, so bench run skips it; --results "
                                       "ANOTHER_FOLDER re-runs it there, to compare with the record\n")
    elsewhere = _rerun_record(tmp_path / "other", "a")  # another copy of the record: compared with it, no note
    assert _say_held(elsewhere, tmp_path, False, _note_once()) and capsys.readouterr().out == ""


def test_from_record_notes_are_said_by_one_process(monkeypatch, capsys):
    """--from-record R --nproc 2 printed "note: --threads 1, as the run had" three times: the launcher's and each
    process's. Now once: by the launcher (not the processes it started), or under torchrun by rank 0."""
    from bench import distributed
    from bench.cli.rerun_cmd import _note_once

    def said(**env):
        for key in ("WORLD_SIZE", "RANK", distributed.ERRORS_ENV):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        note = _note_once()
        note("threads 1", "t")
        note("threads 1, again", "t")  # its key said already
        note("data")
        return capsys.readouterr().out

    assert said() == "note: threads 1\nnote: data\n"  # one process, or bench's launcher
    assert said(WORLD_SIZE="2", RANK="0") == "note: threads 1\nnote: data\n"  # torchrun's rank 0
    assert said(WORLD_SIZE="2", RANK="1") == ""
    assert said(WORLD_SIZE="2", RANK="0", **{distributed.ERRORS_ENV: "/tmp/x"}) == ""  # its launcher said them


def test_rerun_comparison_is_exact_and_takes_nan_for_nan():
    """rerun_comparison: the same numbers (NaN, written null, as NaN) are no difference; the last bit is."""
    import math

    from bench.rerun import rerun_comparison

    rec = {"metrics": {"dice": 0.5, "hd95": None, "n_cases": 2}, "per_class": [{"class": 1, "dice": 0.5}],
           "per_case": [{"case": "a", "dice": 0.5, "hd95": None}, {"case": "b", "dice": 0.5, "hd95": 1.0}],
           "wall_time_s": 3.0, "data_root": "/a"}
    same = {**rec, "metrics": {**rec["metrics"], "hd95": math.nan}, "wall_time_s": 9.0, "data_root": "/b"}
    assert rerun_comparison(rec, same) is None
    up = math.nextafter(0.5, 1)
    other = {**rec, "metrics": {**rec["metrics"], "dice": up}, "per_case": [rec["per_case"][0], {
        **rec["per_case"][1], "hd95": math.nan}]}
    assert rerun_comparison(rec, other) == f"dice 0.5 -> {up!r}; 1 of 2 case rows differ"
    assert rerun_comparison(rec, {**rec, "per_class": [], "per_case": rec["per_case"][:1]}) == \
        "1 of 1 per-class rows (the record has 1, the re-run 0) and 1 of 2 case rows (the record has 2, the re-run 1) " \
        "differ"
    more = [*rec["per_case"], {"case": "c", "dice": 0.1}, {"case": "d", "dice": 0.2}, {"case": "e", "dice": 0.3}]
    assert rerun_comparison(rec, {**rec, "per_case": more}) == \
        "3 of 5 case rows (the record has 2, the re-run 5) differ"  # of the longer: never more than their total
    # a metric only one of them has is a difference (a mutation audit: NSD added by a newer bench went unsaid)
    nsd = {**rec, "metrics": {**rec["metrics"], "nsd": 0.5}}
    assert rerun_comparison(rec, nsd) == "nsd (none) -> 0.5" and rerun_comparison(nsd, rec) == "nsd 0.5 -> (none)"
    # numbers written with as few digits as tell them apart: 6 here, not their every digit
    third = {**rec, "metrics": {**rec["metrics"], "dice": 1 / 3}}
    assert rerun_comparison(third, {**rec, "metrics": {**rec["metrics"], "dice": 1 / 3 + 1e-6}}) == \
        "dice 0.333333 -> 0.333334"


def test_a_cuda_re_run_that_differs_says_cuda_runs_need_not_repeat_bit_for_bit(tmp_path, monkeypatch, capsys):
    """--from-record's comparison: a re-run on CUDA that differs, for no reason of its own, says a GPU run need
    not repeat bit for bit; on CPU it says nothing more (there it should have matched)."""
    import torch

    from bench import records
    from bench.cli.rerun_cmd import _compare, _Record

    rec = {"run_id": "unet_synapse_s0", "metrics": {"dice": 0.5}, "per_class": [], "per_case": []}
    given = tmp_path / "given.json"
    here = tmp_path / "records" / "unet_synapse_s0.json"
    here.parent.mkdir()
    for path in (given, here):  # the record given, and the one the re-run wrote: read_record's below
        path.write_text("{}", encoding="utf-8")
    monkeypatch.setattr(records, "read_record", lambda results, run_id: {**rec, "metrics": {"dice": 0.25}})
    for device, tail in (("cuda", "; on CUDA a run need not repeat bit for bit\n"), ("cpu", "\n")):
        assert _compare(_Record(path=given, rec=rec), tmp_path, torch.device(device)) == "differ"
        assert capsys.readouterr().out == f"  unet_synapse_s0: differs from record {given}: dice 0.5 -> 0.25{tail}"


def test_synthetic_data_with_edited_test_labels_is_not_the_authors_data(smoke_results, tmp_path, bench_here):
    """A reviewer's journey: the authors' results folder and its synthetic data, a test label edited by hand in a
    copy. The copy kept the data's id (its marker's alone): --dry-run called the authors' run done, --weights scored
    it under the authors' run id and warned of a leak. Now it is other data, said once; unedited, the same data."""
    import shutil

    import h5py

    (trained,) = [r for r in map(json.loads, (p.read_text(encoding="utf-8")
                                              for p in (smoke_results / "records").glob("*.json")))
                  if "rescored_from" not in r]
    mine = Path(shutil.copytree(trained["data_root"], tmp_path / "mine"))
    dry = ["run", "--models", "unet", "--dataset", "synapse", "--protocol", "smoke", "--results", smoke_results,
           *FAST, "--dry-run", "--data-root", mine]
    assert re.search(rf"done +{trained['run_id']}", _bench(*dry).stdout)  # a copy as generated: the authors' data
    with h5py.File(sorted((mine / "test_vol_h5").iterdir())[0], "r+") as f:
        f["label"][0, 0, 0] = (f["label"][0, 0, 0] + 1) % 9
    edited = _bench(*dry)
    assert trained["run_id"] not in edited.stdout and re.search(r"missing +synapse-smoke-unet-s0-", edited.stdout)
    assert edited.stderr.count(f"{mine}: synthetic data edited since it was generated") == 1, edited.stderr
    # --from-record on it: refused as other data, with the command that writes the record's data again
    again = bench_here("run", "--from-record", smoke_results / "records" / f"{trained['run_id']}.json", "--data-root",
                       mine, "--results", tmp_path / "again", "--dry-run", check=False)
    assert again.returncode == 2 and f"{mine}: not the data run {trained['run_id']} read" in again.stderr
    assert re.search(r"\(`bench data synth --like synapse --out DIR --seed 0( --option \S+)*` makes it again\)$",
                     again.stderr.strip()), again.stderr
    final = smoke_results / "runs" / trained["run_id"] / "checkpoints" / "final.pt"
    given = _bench("run", "--models", "unet", "--dataset", "synapse", "--data-root", mine, "--protocol", "smoke",
                   "--tiny", "--img-size", "32", "--threads", "1", "--no-progress", "--results", tmp_path / "res",
                   "--weights", final)
    assert "in data that differs from this run's only in its label files (Synapse: its test volumes)" in given.stderr
    assert "cases the weights trained on" not in given.stderr
    (rec,) = [json.loads(p.read_text(encoding="utf-8")) for p in (tmp_path / "res" / "records").glob("*.json")]
    assert rec["data_id"].startswith("files:") and rec["data_id"] != trained["data_id"] and rec["synthetic"]
    assert {k: rec["synthetic_made"][k] for k in ("kind", "seed")} == {"kind": "synapse", "seed": 0}


def test_weights_evaluated_before_are_said_only_where_they_scored_alike_on_another_board(tmp_path):
    """bench run --weights says the same file already sits on another protocol's board that scores as this one
    (synapse as synapse_vmunet); not where that record is of another metric policy (its numbers differ: a
    rescore), nor under this very protocol (this run's own board, not another)."""
    from bench.protocol import load_protocol
    from bench.run import RunSpec, evaluated_elsewhere

    sha = "ab" * 32
    spec = RunSpec(model="unet", dataset="synapse", protocol=load_protocol("synapse_vmunet"), seed=0,
                   data_root=Path("/data/synapse"), synthetic=False, policy="legacy-synapse", data_id="d",
                   weights=("/w/mine.pth", sha))

    def said(protocol: str, policy: str = "legacy-synapse") -> str | None:
        results = tmp_path / f"{protocol}-{policy}"
        rec = {**make_record("unet", "synapse", protocol=protocol), "data_id": "d", "policy": policy,
               "weights": {"file": "mine.pth", "sha256": sha, "trained_by": None}}
        rec["protocol"] = load_protocol(protocol).to_record()
        records.write_record(rec, results)
        return evaluated_elsewhere(spec, results)

    assert "these weights were already evaluated under protocol synapse (run synapse-synapse-unet" in said("synapse")
    assert said("synapse", policy="strict") is None
    assert said("synapse_vmunet") is None


def test_weights_evaluated_before_are_looked_up_in_records_read_once_per_command(tmp_path, monkeypatch):
    """evaluated_elsewhere reads the dataset's records once for all the specs of a command (the ``read`` it is
    given), not once per spec; a damaged record is passed over, not an error of planning."""
    from bench.protocol import load_protocol
    from bench.run import RunSpec, evaluated_elsewhere

    sha = "cd" * 32
    rec = {**make_record("unet", "synapse", protocol="synapse"), "data_id": "d", "policy": "legacy-synapse",
           "weights": {"file": "mine.pth", "sha256": sha, "trained_by": None}}
    rec["protocol"] = load_protocol("synapse").to_record()
    records.write_record(rec, tmp_path)
    (records.records_dir(tmp_path) / "synapse-damaged.json").write_text("{", encoding="utf-8")
    (records.records_dir(tmp_path) / "synapse-list.json").write_text("[1]", encoding="utf-8")  # was AttributeError
    calls, real = [], records.dataset_records
    monkeypatch.setattr(records, "dataset_records", lambda *a: calls.append(a) or real(*a))
    specs = [RunSpec(model="unet", dataset="synapse", protocol=load_protocol("synapse_vmunet"), seed=seed,
                     data_root=Path("/data/synapse"), synthetic=False, policy="legacy-synapse", data_id="d",
                     weights=("/w/mine.pth", sha)) for seed in (0, 1)]
    read: dict = {}
    assert all("already evaluated under protocol synapse" in evaluated_elsewhere(s, tmp_path, read) for s in specs)
    assert calls == [(tmp_path, "synapse")]


def test_runs_on_data_of_ones_own_follow_its_files_not_its_path(tmp_path):
    """A copy of the data elsewhere (a node-local copy in a grid, a moved disk) is the same data: its
    finished runs are skipped, as is a record written when runs were identified by their data's path."""
    import dataclasses
    import shutil

    from bench.data import synthesize
    from bench.protocol import load_protocol
    from bench.registry import get_entry
    from bench.run import plan_grid

    here = synthesize("synapse", tmp_path / "here" / "Synapse")
    (here / ".bench-synthetic.json").unlink()  # as data of one's own
    there = shutil.copytree(here, tmp_path / "there" / "Synapse")
    res = tmp_path / "res"
    run = lambda root: _bench("run", "--models", "unet", "--dataset", "synapse", "--data-root", root,  # noqa: E731
                              "--protocol", "smoke", "--results", res, *FAST).stdout
    assert "skipped" not in run(here)
    (rec,) = (res / "records").glob("*.json")
    assert "finished earlier, skipped" in run(there) and len(list((res / "records").glob("*.json"))) == 1
    proto = load_protocol("smoke").with_overrides(max_iterations=4, img_size=32)
    (spec,) = plan_grid(models=["unet"], dataset="synapse", protocol=proto, seeds=[proto.seed], data_root=here,
                        synthetic=False, results_dir=res, model_overrides=dict(get_entry("unet").tiny))
    assert rec.stem == spec.key and spec.data_id.startswith("files:")
    # a run begun when ids came from the data's path keeps that id: finished, it is skipped (and an
    # interrupted one resumes from its folder)
    earlier = dataclasses.replace(spec, data_id="").key
    assert earlier != spec.key
    rec.rename(rec.with_name(f"{earlier}.json"))
    (res / "runs" / spec.key).rename(res / "runs" / earlier)
    assert f"{earlier}: finished earlier, skipped" in run(here)
    rec.with_name(f"{earlier}.json").unlink()  # its folder alone: the plan takes its id, to resume it
    (again,) = plan_grid(models=["unet"], dataset="synapse", protocol=proto, seeds=[proto.seed], data_root=here,
                         synthetic=False, results_dir=res, model_overrides=dict(get_entry("unet").tiny))
    assert again.key == earlier
    # and one begun when content ids did not read the test labels keeps that one
    from bench.data import open_dataset

    legacy = dataclasses.replace(spec, data_id=open_dataset("synapse", here).content_id(scored=False)).key
    assert legacy not in (spec.key, earlier)
    (res / "runs" / earlier).rename(res / "runs" / legacy)
    (again,) = plan_grid(models=["unet"], dataset="synapse", protocol=proto, seeds=[proto.seed], data_root=here,
                         synthetic=False, results_dir=res, model_overrides=dict(get_entry("unet").tiny))
    assert again.key == legacy
    # a run of that id rescored into strict is found from a strict plan (it was trained again beside it)
    from bench.records import rescore_id

    shutil.rmtree(res / "runs" / legacy)
    (res / "records" / f"{rescore_id(legacy, 'strict')}.json").write_text("{}", encoding="utf-8")
    (strict,) = plan_grid(models=["unet"], dataset="synapse", protocol=proto, seeds=[proto.seed], data_root=here,
                          synthetic=False, results_dir=res, model_overrides=dict(get_entry("unet").tiny), policy="strict")
    assert strict.data_id == open_dataset("synapse", here).content_id(scored=False)


def test_a_moved_results_folders_older_records_are_its_runs(tmp_path):
    """An upgrade journey: records written before data had an id name it by its path; a copy of the
    results folder (its synthetic data inside) elsewhere trained every run again beside them."""
    import dataclasses
    import shutil

    from bench.data import synthesize
    from bench.data.synth import MARKER
    from bench.protocol import load_protocol
    from bench.run import plan_grid

    old = tmp_path / "alice" / "res"
    synthesize("synapse", old / "synthetic" / "synapse-synth-v1")
    (old / "synthetic" / "synapse-synth-v1" / MARKER).unlink()  # as data made before the marker
    proto = load_protocol("smoke")
    plan = lambda res: plan_grid(models=["unet"], dataset="synapse", protocol=proto, seeds=[0],  # noqa: E731
                                 data_root=res / "synthetic" / "synapse-synth-v1", synthetic=False, results_dir=res)
    (spec,) = plan(old)
    by_path = dataclasses.replace(spec, data_id="")  # the id runs had then
    older = lambda root: {**make_record("unet", protocol="smoke", run_id=by_path.key, synthetic=True),  # noqa: E731
                          "data_root": str(root)}  # a whole record (planning reads those load reads), no data_id
    records.write_record(older(by_path.data_root.resolve()), old)
    bob = tmp_path / "bob" / "res"
    shutil.copytree(old, bob)
    shutil.rmtree(tmp_path / "alice")
    (moved,) = plan(bob)
    assert moved.key == by_path.key  # skipped as finished, not trained again beside it
    (bob / "records" / f"{by_path.key}.json").unlink()
    assert plan(bob)[0].key != by_path.key  # no record of it: nothing to keep
    # a record whose data still exists where it names it is other data, not this folder's
    records.write_record(older(bob / "synthetic" / "synapse-synth-v1"), bob)
    assert plan(bob)[0].key != by_path.key


def test_data_root_from_synth_matches_synthetic(smoke_results, tmp_path):
    data = tmp_path / "syn"
    _bench("data", "synth", "--like", "synapse", "--out", data)
    _bench("data", "verify", "--dataset", "synapse", "--data-root", data)
    res = tmp_path / "res"
    _bench("run", "--models", "unet", "--dataset", "synapse", "--data-root", data, "--protocol", "smoke",
           "--results", res, *FAST)
    a = records.load(smoke_results).iloc[0]
    b = records.load(res).iloc[0]
    assert a["dice"] == b["dice"] and a["hd95"] == b["hd95"]


def test_isic_run_uses_pooled_policy(tmp_path):
    _bench("run", "--models", "unet", "--dataset", "isic17", "--synthetic", "--protocol", "smoke",
           "--results", tmp_path, *FAST)
    rec = json.loads(next((tmp_path / "records").glob("*.json")).read_text(encoding="utf-8"))
    assert rec["policy"] == "legacy-isic"
    counts = {k: sum(r[k] for r in rec["per_case"]) for k in ("tp", "fp", "fn", "tn")}
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    expected = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0
    assert rec["metrics"]["dice"] == pytest.approx(expected)


def test_check_passes_on_itself_and_fails_on_drift(smoke_results, tmp_path, monkeypatch, capsys):
    def _bench(*args, check=True):  # in this process: bench check loads no model (14 processes took 40 s)
        return run_bench_here(monkeypatch, capsys, *args, check=check)

    base = tmp_path / "baseline.csv"
    _bench("check", "--baseline", base, "--results", smoke_results, "--update")
    assert _bench("check", "--baseline", base, "--results", smoke_results).stderr == ""
    table = pd.read_csv(base)
    # rows a baseline lacks (a model added to the grid) pass as new, and a hint says how they get checked
    table.iloc[:-2].to_csv(base, index=False)
    proc = _bench("check", "--baseline", base, "--results", smoke_results)
    assert "2 row(s) are new: the baseline does not check them yet; `bench check --update" in proc.stderr
    _bench(*proc.stderr.split("`")[1].split()[1:])
    assert _bench("check", "--baseline", base, "--results", smoke_results).stderr == ""
    table = pd.read_csv(base)
    table.loc[table["metric"] == "dice", "value"] += 0.5
    table.to_csv(base, index=False)
    proc = _bench("check", "--baseline", base, "--results", smoke_results, check=False)
    assert proc.returncode == 1
    n = (table["metric"] == "dice").sum()
    assert f"{n} value(s) drifted past their tolerance: see the rows marked above" in proc.stderr
    assert f"--results {smoke_results}` rewrites the values" in proc.stderr  # no --prune: no row is missing
    table.loc[table["metric"] == "dice", "value"] -= 0.5  # back in tolerance; the other rows' model gone
    table.loc[table["metric"] != "dice", "model"] = "gone"
    table.to_csv(base, index=False)
    proc = _bench("check", "--baseline", base, "--results", smoke_results, check=False)
    assert proc.returncode == 1 and "value(s) drifted" not in proc.stderr
    assert f"{(table['metric'] != 'dice').sum()} baseline row(s) have no value now" in proc.stderr
    # none of the rows has a value: most likely another grid's folder, which --prune would take as the baseline
    table.assign(model="gone").to_csv(base, index=False)
    proc = _bench("check", "--baseline", base, "--results", smoke_results, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith(f"none of the baseline's {len(table)} rows has a value "
                                                           f"in {smoke_results}, which holds "), proc.stderr
    assert "is it the results folder of the grid the baseline was written from" in proc.stderr
    # every row back under a new label (a baseline from before "(tiny)"): the renaming --update said, not --prune
    fresh = tmp_path / "fresh.csv"
    _bench("check", "--baseline", fresh, "--results", smoke_results, "--update")
    table = pd.read_csv(fresh)
    assert table["model"].str.endswith(" (tiny)").all()
    table.assign(model=table["model"].str.replace(" (tiny)", "", regex=False)).to_csv(fresh, index=False)
    renamed = _bench("check", "--baseline", fresh, "--results", smoke_results, check=False)
    assert renamed.returncode == 1 and "none of the baseline's" not in renamed.stderr
    assert "bench check --update renames the baseline's rows" in renamed.stderr
    table.assign(value=table["value"] + 50).to_csv(fresh, index=False)  # every row drifted: drift, not another folder
    drifted = _bench("check", "--baseline", fresh, "--results", smoke_results, check=False)
    assert drifted.returncode == 1 and "drifted past their tolerance" in drifted.stderr
    assert "none of the baseline's" not in drifted.stderr
    # the command said is one that runs: --update alone refuses to drop rows that have no value now
    suggested = proc.stderr.split("`")[1].split()
    assert suggested[-1] == "--prune" and _bench(*suggested[1:], check=False).returncode == 0


def test_report_takes_its_format_from_the_out_suffix_and_pipes_clean_csv(smoke_results, tmp_path, bench_here):
    """A CLI audit: `--out table.csv` wrote Markdown into it, and CSV on stdout ended in an empty row."""
    import csv

    _bench("report", "--results", smoke_results, "--out", tmp_path / "t.csv")
    _bench("report", "--results", smoke_results, "--out", tmp_path / "t.tex")
    assert list(csv.DictReader((tmp_path / "t.csv").open(encoding="utf-8")))[0]["model"] == "unet (tiny)"
    assert "\\begin{table" in (tmp_path / "t.tex").read_text(encoding="utf-8") and not (tmp_path / "t_files").exists()
    proc = bench_here("report", "--results", smoke_results, "--format", "latex", "--out", tmp_path / "x.csv",
                      check=False)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: --out {tmp_path / 'x.csv'} with --format latex: "
                                                           "a .csv file holds csv or cases"), proc.stderr
    piped = _bench("report", "--results", smoke_results, "--format", "csv").stdout
    assert piped.endswith("\n") and not piped.endswith("\n\n")
    assert all(row for row in csv.reader(piped.splitlines()))


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--models", "vm_unett", "--synthetic"], "unknown model 'vm_unett'"),
        (["run", "--models", "unet", "--dataset", "synapsee", "--synthetic"], "did you mean 'synapse'"),
        (["run", "--models", "unet", "--protocol", "smok", "--synthetic"], "did you mean 'smoke'"),
        (["run", "--models", "unet", "--dataset", "synapse"], "--data-root"),
        (["run", "--models", "unet", "--dataset", "synapse", "--data-root", "/nonexistent/x"], "/nonexistent/x"),
    ],
)
def test_user_errors_are_one_line(args, message, tmp_path, bench_here):
    proc = bench_here(*args, "--results", tmp_path, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr



def test_repeated_models_and_seeds_plan_each_run_once(tmp_path, bench_here):
    from bench.registry import resolve_models

    assert resolve_models("unet,vmunet,unet") == ["unet", "vmunet"]
    # in any case, as reports took it and the commands that train or load a model did not: one model, once
    assert resolve_models("UNET,Vmunet,unet") == ["unet", "vmunet"]
    proc = _bench("run", "--models", "unet,unet", "--seeds", "5,5", "--dataset", "synapse", "--synthetic",
                  "--protocol", "smoke", "--tiny", "--results", tmp_path, "--max-iterations", "1", "--threads", "1")
    assert "bench run: 1 run(s) · dataset synapse · protocol smoke v1 (" in proc.stdout and "skipped" not in proc.stdout
    assert "· policy legacy-synapse · device cpu" in proc.stdout
    assert "\n\n" not in proc.stdout  # progress bars (on by default) draw nothing into a pipe, not even a line
    again = _bench("run", "--models", "unet", "--seeds", "5", "--dataset", "synapse", "--synthetic", "--protocol", "smoke",
                   "--tiny", "--results", tmp_path, "--max-iterations", "1", "--threads", "1", "--workers", "1")
    assert "skipped" in again.stdout  # the loader's worker count is no part of a run
    bad = bench_here("run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--protocol", "smoke", "--tiny",
                     "--results", tmp_path, "--workers", "-1", check=False)
    assert bad.returncode == 2 and "--workers: expected a whole number >= 0" in bad.stderr


def test_set_reads_python_literals_json_words_and_plain_words():
    from bench.cli.options import _parse_sets

    # a value copied from a board's label or a record (JSON) means what it says there
    assert _parse_sets(["a=false", "b=[true, null]", "c=resnet34", "d=16", "e=(1, 2)", "f=True"]) == {
        "a": False, "b": [True, None], "c": "resnet34", "d": 16, "e": (1, 2), "f": True}
    with pytest.raises(BenchError, match=r"--set d_state: given twice \(d_state=8 and d_state=4\); give each key once"):
        _parse_sets(["d_state=8", "d_state=4"])  # the last one won, unsaid
    with pytest.raises(BenchError, match=r"--set expects key=value \(a model constructor argument\); got '=5'"):
        _parse_sets(["=5"])  # no key: refused before any model is built


def test_models_all_of_a_command_on_finished_runs_is_read_as_bench_run_reads_it():
    from bench.registry import model_filter

    assert model_filter("all") is model_filter("all,") is model_filter([" all"]) is None  # "all," was a model name
    assert model_filter("unet, vmunet") == ["unet", "vmunet"]
    with pytest.raises(BenchError, match="unknown model 'unt'"):
        model_filter("unt")

def test_warnings_are_one_line_each_and_shown_once(tmp_path):
    """Swin-Unet at 64² warns about its window where the grid is planned and again where the run
    builds the model: the user sees it once, as one line, without Python's source line."""
    proc = _bench("run", "--models", "swin_unet", "--dataset", "synapse", "--synthetic", "--protocol", "smoke",
                  "--max-iterations", "1", "--epochs", "1", "--threads", "1", "--results", tmp_path)
    lines = [line for line in proc.stderr.splitlines() if "window 7 does not tile" in line]
    assert lines == ["warning: swin_unet: window 7 does not tile a 64² input; using 4 (recorded in the record's "
                     "model_config)"], proc.stderr
    assert "UserWarning" not in proc.stderr and "entry.constructor" not in proc.stderr


def test_benchs_own_warning_categories_read_as_plain_warnings(capsys):
    """records.StaleRescoresLeftOut (a category so that bench rescore can ignore it) read "warning
    (StaleRescoresLeftOut): ..." on the command line; bench's categories are plain warnings, others named."""
    from bench.cli.console import _show_warning
    from bench.records import StaleRescoresLeftOut

    _show_warning(StaleRescoresLeftOut("a stale rescore left out"), StaleRescoresLeftOut, "f.py", 1)
    _show_warning(FutureWarning("torch will change"), FutureWarning, "f.py", 1)
    _show_warning(DeprecationWarning("\nPyarrow will become\n  a required dependency\n"), DeprecationWarning, "f.py", 1)
    assert capsys.readouterr().err == ("warning: a stale rescore left out\nwarning (FutureWarning): torch will change\n"
                                       "warning (DeprecationWarning): Pyarrow will become a required dependency\n")


# every command, as registered (a command added later is checked too)
@pytest.mark.parametrize("cmd", [[], ["data"], *([c.callback.__name__] for c in app.registered_commands),
                                 *(["data", c.callback.__name__.removeprefix("data_")] for c in data_app.registered_commands)])
def test_every_help_shows_an_example(cmd):
    result = runner.invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0
    assert "Example: bench" in result.output


@pytest.mark.parametrize("cmd", ["run", "score", "rescore", "figure", "report"])
def test_policy_help_lists_every_metric_policy(cmd):
    """--help names the policies (STYLE 4.6), from a list kept apart from bench.metrics for a fast start: the
    two are one list."""
    from bench.cli.options import POLICY_NAMES
    from bench.metrics import POLICIES

    assert POLICY_NAMES == tuple(POLICIES)
    said = " ".join(runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "200"}).output.split())
    assert ", ".join(POLICIES) in said.replace("│ ", "").replace(" │", ""), cmd
    assert cmd == "report" or re.search(r"--policy +POLICY ", said), cmd  # report's is a comma list


@pytest.mark.parametrize("group", [[], ["data"]])
def test_command_lists_give_each_command_one_summary_line(group):
    """`bench --help` lists each command with its summary; one that spans lines in the source shows
    the source's line breaks there (typer keeps them)."""
    import typer.main

    cli = typer.main.get_command(app)
    for name in group:
        cli = cli.commands[name]
    summaries = {name: cmd.help.split("\n\n")[0] for name, cmd in cli.commands.items()}
    assert len(summaries) >= 3 and all("\n" not in s.strip() for s in summaries.values()), summaries


def test_bench_cli_names_each_command_function_not_a_submodule():
    """bench.cli is a package that re-exports its commands: a submodule named like one (bench/cli/run.py)
    would replace the function with the module once imported."""
    import bench.cli

    infos = [*bench.cli.app.registered_commands, *bench.cli.data_app.registered_commands]
    assert len(infos) >= 11
    for info in infos:
        assert getattr(bench.cli, info.callback.__name__) is info.callback, info.callback.__name__


def test_models_and_doctor():
    out = runner.invoke(app, ["models"]).output.splitlines()
    assert out[0].split() == ["model", "family", "description"]
    rows = {line.split()[0]: line.split()[1] for line in out[1:] if not line.startswith(" ")}
    from bench.registry import list_models

    assert set(rows) == set(list_models())  # a model added to the registry is listed (and its family below)
    assert {m: rows[m] for m in ("unet", "transunet", "swin_unet", "vmunet", "vmunet_v2", "lightm_unet")} == {
        "unet": "cnn", "transunet": "transformer", "swin_unet": "transformer", "vmunet": "ssm", "vmunet_v2": "ssm",
        "lightm_unet": "ssm"}
    heads = [line for line in out if not line.startswith(" ")]
    assert len({line.index(f" {line.split()[1]} ", len(line.split()[0])) for line in heads}) == 1  # one family column
    doc = runner.invoke(app, ["doctor"])
    assert doc.exit_code == 0 and "torch" in doc.output and "scan backend" in doc.output
    from bench import env  # the code's version, as records name it: the commit, with the sources' digest if no clean one
    commit, line = env.git_commit(), next(s for s in doc.output.splitlines() if s.startswith("code "))
    assert (commit or "")[:12] in line and (env.source_digest() in line) == (not commit or commit.endswith("-dirty"))


def test_main_called_in_process_gives_the_sigterm_handler_back(monkeypatch):
    """bench.cli.main's SIGTERM handler (Ctrl-C's cleanup) stayed installed after an in-process
    call: a process forked later inherited it, and a multiprocessing pool's terminate() could hang
    on a worker it interrupted mid-way. Its one-line warnings likewise: the caller's warnings
    (pytest's recwarn) went to stderr after it."""
    import warnings

    mine = lambda signum, frame: None  # noqa: E731
    monkeypatch.setattr(sys, "argv", ["bench", "models"])
    original, shown = signal.getsignal(signal.SIGTERM), warnings.showwarning
    try:
        for before in (signal.SIG_DFL, mine):
            signal.signal(signal.SIGTERM, before)
            with pytest.raises(SystemExit) as info:
                main()
            assert info.value.code == 0 and signal.getsignal(signal.SIGTERM) is before
            assert warnings.showwarning is shown
    finally:
        signal.signal(signal.SIGTERM, original)


def test_three_seed_grid_report_with_statistics_published_and_plots(tmp_path):
    results = tmp_path / "results"
    _bench("run", "--models", "unet,vmunet", "--dataset", "synapse", "--synthetic", "--protocol", "smoke",
           "--seeds", "0,1,2", "--results", results, *FAST)
    runs = records.load(results).groupby("model")[["macs", "paper_macs"]].first()
    assert runs.loc["vmunet", "macs"] > runs.loc["vmunet", "paper_macs"]  # the record counts the scan
    _bench("profile", "--models", "unet,vmunet", "--tiny", "--img-size", "32", "--iters", "2", "--warmup", "0",
           "--threads", "1", "--results", results, "--format", "csv")
    out = tmp_path / "report.md"
    _bench("report", "--results", results, "--reference", "unet", "--published", "--out", out)
    text = out.read_text(encoding="utf-8")
    assert "Mean ± std" in text and "DSC 95% CI" in text and "| 3 " in text  # 3 seeds per model
    assert "## Significance · synapse (synthetic)" in text and "p (Holm)" in text
    assert "## Published vs ours · synapse (synthetic)" in text and "Ours − published" in text
    assert "## Cost · input 1x3x32x32" in text
    for kind in ("dsc_vs_gmacs", "dsc_vs_params", "per_class_dsc", "training_curves"):
        assert re.search(rf"!\[{kind}__[^\]]+\]\(report_files/{kind}__\S+\.png\)", text), kind
    latex = _bench("report", "--results", results, "--format", "latex").stdout
    assert "\\toprule" in latex and "\\bottomrule" in latex
    _bench("report", "--results", results, "--format", "cases", "--out", tmp_path / "cases.csv")
    rows = (tmp_path / "cases.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("board_dataset,board_protocol,model_label") and len(rows) - 1 == len(
        records.load(results, level="case"))


def test_predict_writes_each_runs_test_cases(smoke_results, tmp_path, bench_here):
    (run_id,) = records.load(smoke_results)["run_id"]
    out = _bench("predict", "--results", smoke_results, "--out", tmp_path / "pred", "--run", run_id).stdout
    files = json.loads((tmp_path / "pred" / run_id / "prediction.json").read_text(encoding="utf-8"))["files"]
    assert f"{run_id}: {len(files)} file(s) written" in out and len(files) >= 1
    assert all((tmp_path / "pred" / run_id / name).is_file() for name in files.values())
    again = _bench("predict", "--results", smoke_results, "--out", tmp_path / "pred", "--run", run_id).stdout
    assert f"{run_id}: complete already, nothing written" in again
    bad = bench_here("predict", "--results", smoke_results, "--out", tmp_path / "pred", "--run", "nope", check=False)
    assert bad.returncode == 2 and "--run nope: no finished run" in bad.stderr


def test_folds_give_one_record_per_fold(tmp_path, bench_here):
    out = _bench("run", "--models", "unet", "--dataset", "nnunet", "--synthetic", "--protocol", "smoke", "--folds",
                 "0,1", "--results", tmp_path, *FAST).stdout
    df = records.load(tmp_path)
    assert sorted(df["split"]) == ["fold0", "fold1"] and df["run_id"].nunique() == 2
    # the run says how the folds' split was made (the reader's notes were never shown), once for all folds,
    # before the runs; each record keeps its own fold's note
    root = records.read_record(tmp_path, df["run_id"].iloc[0])["data_root"]
    said = f"note: no splits_final.json in {root}; split: folds 0, 1 of the 5 folds nnU-Net v2 generates"
    assert out.count("note: ") == 1 and said in out and out.index(said) < out.index("[1/2]")
    for k in (0, 1):
        rec = records.read_record(tmp_path, df["run_id"].iloc[k])
        assert f"split: fold {records.split_fold(rec['split'])} of the 5 folds" in rec["data_notes"][0]
    # and the Methods text, which said "the dataset's test split" of a split bench drew
    assert ("own validation cases (2 per fold, 4 over the folds run) and trained on its training cases, from "
            "cross-validation folds 0, 1 of the 5 folds nnU-Net v2 generates, drawn by bench (KFold(shuffle=True, "
            "random_state=12345) over the sorted case ids).") in render_methods(tmp_path)
    # the dataset's name in any case is that dataset: the same runs, not new ones (they trained twice, counted twice)
    again = _bench("run", "--models", "unet", "--dataset", "NNUNet", "--synthetic", "--protocol", "smoke", "--folds",
                   "0,1", "--results", tmp_path, *FAST).stdout
    assert again.count("finished earlier, skipped") == 2 and "dataset nnunet" in again
    assert _bench("data", "verify", "--dataset", "NNUNet", "--data-root", root).stdout.endswith("OK (nnunet)\n")
    # a protocol file's datasets list, in any case too
    import dataclasses

    from bench.protocol import load_protocol
    from bench.run import plan_grid

    mine = dataclasses.replace(load_protocol("smoke"), datasets=("NNUNet",))
    (spec,) = plan_grid(models=["unet"], dataset="nnunet", protocol=mine, seeds=[0], data_root=Path(root),
                        synthetic=False, results_dir=tmp_path / "other")
    assert spec.dataset == "nnunet"
    bad = bench_here("run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--folds", "0", "--results",
                     tmp_path / "fixed", check=False)
    assert bad.returncode == 2 and "fixed test split" in bad.stderr
    assert not (tmp_path / "fixed" / "synthetic").exists()  # refused before the synthetic data is written


def test_a_fold_given_twice_plans_one_run_as_a_seed_given_twice_does(tmp_path, bench_here):
    """plan_grid ran each seed once but a fold given twice twice (the CLI alone removed repeats): one run
    was planned twice, and --shard put both copies into one shard, the other empty."""
    from bench.run import plan_grid, select_shard

    specs = plan_grid(models="unet", dataset="nnunet", protocol="smoke", seeds=[0, 0], folds=[1, 1, 0], data_root=None,
                      synthetic=True, results_dir=tmp_path, tiny=True)
    assert [(s.seed, s.fold) for s in specs] == [(0, 1), (0, 0)]
    assert [len(select_shard(specs, f"{k}/2")) for k in (1, 2)] == [1, 1]
    listed = bench_here("run", "--models", "unet", "--dataset", "nnunet", "--synthetic", "--protocol", "smoke",
                        "--folds", "1,1,0", "--results", tmp_path, *FAST, "--dry-run").stdout
    assert "bench run --dry-run: 2 run(s) · " in listed  # each fold given, once
    assert sorted(re.findall(r"^  missing  \S+-unet-s0-(f\d)-\w+$", listed, re.M)) == ["f0", "f1"], listed


def test_run_without_tiny_plans_each_models_published_configuration(tmp_path, bench_here):
    """--tiny is off unless given: a grid run without it trains and records the models the papers describe,
    not their tiny test configurations under the real models' names."""
    from bench.run import plan_grid

    def planned(tiny):
        (spec,) = plan_grid(models="unet", dataset="synapse", protocol="smoke", seeds=[0], data_root=None,
                            synthetic=True, results_dir=tmp_path, tiny=tiny)
        return spec.key

    listed = bench_here("run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--protocol", "smoke",
                        "--results", tmp_path, "--dry-run").stdout
    assert re.findall(r"^  missing  (\S+)$", listed, re.M) == [planned(False)] and planned(False) != planned(True)


def test_each_dataset_defaults_to_its_published_protocol():
    assert [default_protocol(d, None) for d in ("synapse", "isic17", "isic18", "polyp", "isic_all")] == \
        ["synapse", "isic17", "isic18", "polyp", "isic_all"]
    assert default_protocol("nnunet", "smoke") == "smoke"  # --protocol always wins
    with pytest.raises(BenchError, match="did you mean 'polyp'"):  # a typo is named as one
        default_protocol("polpy", None)


def test_lightm_unet_2d_protocol_trains_and_scores_png_cases(tmp_path):
    """LightM-UNet's nnU-Net recipe end to end on a 2-D nnU-Net-format dataset (PNG cases): epochs of
    fixed length, 2-D patches, nnU-Net's loss and augmentation, per-case scoring at native size under strict."""
    import numpy as np

    from bench.data import open_dataset, synthesize

    root = synthesize("nnunet", tmp_path / "png", dims=2, n_cases=6, size=40)
    fast = [a for a in FAST if a not in ("--img-size", "32")]
    _bench("run", "--models", "lightm_unet,unet", "--dataset", "nnunet", "--data-root", root, "--protocol",
           "lightm_unet_2d", "--batch-size", "2", "--patch-size", "32,32", "--results", tmp_path / "res", *fast)
    df = records.load(tmp_path / "res")
    assert sorted(df["model"]) == ["lightm_unet", "unet"] and set(df["policy"]) == {"strict"}
    for path in sorted((tmp_path / "res" / "records").glob("*.json")):
        rec = json.loads(path.read_text(encoding="utf-8"))
        assert rec["protocol"]["name"] == "lightm_unet_2d" and rec["train"]["iterations"] == 4
        assert rec["train"]["epochs"] == 1  # 4 iterations of a 250-iteration epoch
        assert {c["case"] for c in rec["per_case"]} == {"synth_005"}  # the fixed split's test case, whole
        native = open_dataset("nnunet", root).load_test("synth_005").label.shape
        assert {c["tp"] + c["fp"] + c["fn"] + c["tn"] for c in rec["per_case"]} == {int(np.prod(native))}  # not 32²


def test_nnunet_without_protocol_fails_before_writing(tmp_path, bench_here):
    proc = bench_here("run", "--models", "unet", "--dataset", "nnunet", "--synthetic", "--results", tmp_path, *FAST,
                      check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--dataset nnunet has no default protocol" in proc.stderr and "pass --protocol" in proc.stderr
    assert "built-in for nnunet: " in proc.stderr and "lightm_unet_3d" in proc.stderr and "isic17" not in proc.stderr
    assert not any(tmp_path.iterdir())  # no records, runs or synthetic data


def test_two_shards_share_one_results_dir(tmp_path, bench_here):
    base = ["run", "--models", "unet,swin_unet", "--dataset", "synapse", "--synthetic", "--protocol", "smoke",
            "--results", tmp_path, *FAST]
    first = _bench(*base, "--shard", "1/2")
    assert "1 run(s) (shard 1/2 of 2)" in first.stdout
    second = _bench(*base, "--shard", "2/2")
    assert sorted(records.load(tmp_path)["model"]) == ["swin_unet", "unet"]
    # Swin-Unet's window warning (32² input) comes from the shard that runs it, not from both
    warned = ["window" in proc.stderr for proc in (first, second)]
    assert sorted(warned) == [False, True]
    bad = bench_here(*base, "--shard", "3/2", check=False)
    assert bad.returncode == 2 and "--shard must be K/N" in bad.stderr


@pytest.mark.parametrize("dry", [["--dry-run"], []])
def test_synthetic_and_a_data_root_are_refused_by_a_dry_run_as_by_a_run(monkeypatch, capsys, tmp_path, dry):
    # a dry run planned from a temporary synthetic copy in --data-root's place: the folder given went unsaid
    proc = run_bench_here(monkeypatch, capsys, "run", "--models", "unet", "--tiny", "--dataset", "isic17",
                          "--synthetic", "--data-root", tmp_path / "isic", "--protocol", "smoke", "--results",
                          tmp_path / "res", *dry, check=False)
    assert proc.returncode == 2 and proc.stderr == "error: give either --data-root or --synthetic, not both\n"
    assert not (tmp_path / "res").exists()
    # and neither: no data of the user's own is planned on a temporary synthetic copy
    proc = run_bench_here(monkeypatch, capsys, "run", "--models", "unet", "--tiny", "--dataset", "isic17",
                          "--protocol", "smoke", "--results", tmp_path / "res", *dry, check=False)
    assert proc.returncode == 2 and "--data-root is required for dataset 'isic17' (or use --synthetic)" in proc.stderr


def test_dry_run_lists_each_runs_state_and_shard_and_writes_nothing(tmp_path):
    """A Slurm array's user could not see which runs of the grid were done, partial, running or missing
    before submitting more: --dry-run lists them (each shard's), from the same plan, and writes nothing,
    not even the synthetic data, which the runs' ids do not depend on the place of."""
    import socket

    from bench.claim import claim_run

    base = ["run", "--models", "unet", "--seeds", "0,1,2,3", "--dataset", "synapse", "--synthetic", "--protocol",
            "smoke", "--results", tmp_path, *FAST]
    fresh = _bench(*base, "--shard", "1/2", "--dry-run")
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # nothing written
    # the grid as bench run's header says it (the dry run's named neither the data nor the policy)
    assert re.search(r"^bench run --dry-run: 4 run\(s\) · dataset synapse · protocol smoke v1 \(\w+, off-protocol\) · "
                    r"policy legacy-synapse · results ", fresh.stdout, re.M), fresh.stdout
    planned = re.findall(r"^  shard (\d)/2  missing  (\S+)$", fresh.stdout, re.M)
    assert len(planned) == 4 and fresh.stdout.rstrip().endswith("missing 4; shards with runs not done: 1,2")
    assert sorted(run.split("-")[3] for _, run in planned) == ["s0", "s1", "s2", "s3"]  # the seeds given, no others
    _bench(*base, "--shard", "1/2")
    first = {run for k, run in planned if k == "1"}
    assert {p.stem for p in (tmp_path / "records").glob("*.json")} == first  # the ids the dry run listed
    partial, running = sorted(run for k, run in planned if k == "2")
    (tmp_path / "runs" / partial / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / partial / "checkpoints" / "last.pt").write_bytes(b"")
    with claim_run(tmp_path, running):
        files = sorted(tmp_path.rglob("*"))
        listed = _bench(*base, "--shard", "2/2", "--dry-run").stdout
        assert sorted(tmp_path.rglob("*")) == files
    assert all(f"shard 1/2  done     {run}" in listed for run in first)
    assert f"shard 2/2  partial  {partial}  a checkpoint, no record: --resume continues it\n" in listed
    assert f"shard 2/2  running  {running}  by pid {os.getpid()} on {socket.gethostname()} (claim " in listed
    # the claim's own parentheses were inside the line's: "(by pid … on … (claim …))"
    (line,) = [line for line in listed.splitlines() if running in line]
    assert _parentheses_depth(line) == 1
    assert listed.rstrip().endswith("done 2, partial 1, running 1; shards with runs not done: 2")


def test_dry_run_calls_a_trained_run_without_its_record_finished_and_says_what_bench_run_does(
        tmp_path, monkeypatch, capsys):
    """A run whose record was deleted (its final.pt there) read "partial (a checkpoint, no record: --resume
    continues it)": it is finished, and --resume only evaluates it again (train_model resumes after its
    last epoch); without last.pt nothing resumes and bench run trains it afresh."""
    base = ["run", "--models", "unet", "--seeds", "0,1", "--dataset", "synapse", "--synthetic", "--protocol",
            "smoke", "--results", tmp_path, *FAST, "--dry-run"]
    _, trained = re.findall(r"^  missing  (\S+)$", run_bench_here(monkeypatch, capsys, *base).stdout, re.M)
    ckpt = tmp_path / "runs" / trained / "checkpoints"
    ckpt.mkdir(parents=True)
    for name in ("last.pt", "final.pt"):
        (ckpt / name).write_bytes(b"")
    listed = run_bench_here(monkeypatch, capsys, *base).stdout
    assert (f"  finished {trained}  record missing: --resume evaluates its trained weights again without training; "
            "without --resume, bench run trains it afresh\n") in listed
    assert listed.rstrip().endswith("finished 1, missing 1")
    (ckpt / "last.pt").unlink()
    listed = run_bench_here(monkeypatch, capsys, *base).stdout
    assert f"  finished {trained}  record missing: bench run trains it afresh (no last.pt to resume)\n" in listed


QUICK_GRID = ["run", "--models", "unet", "--dataset", "isic17", "--synthetic", "--protocol", "smoke", "--tiny",
              "--max-iterations", "2", "--threads", "1", "--no-progress"]


def test_a_damaged_or_newer_record_of_a_finished_run_does_not_stop_the_grid(tmp_path, bench_here):
    """A finished run's record was read in full only to decide a "code changed" note: a damaged one, or one
    of a newer schema, ended the grid there (--dry-run said "done 1, missing 1"). It is skipped as finished."""
    bench_here(*QUICK_GRID, "--results", tmp_path)
    (path,) = (tmp_path / "records").glob("*.json")
    good = path.read_text(encoding="utf-8")
    path.write_text(good[:300], encoding="utf-8")  # cut short, as a full disk leaves it
    out = bench_here(*QUICK_GRID, "--seeds", "0,1", "--results", tmp_path).stdout
    assert f"  {path.stem}: finished earlier, skipped\n" in out and len(list(path.parent.glob("*.json"))) == 2
    path.write_text(json.dumps({**json.loads(good), "schema": 2}), encoding="utf-8")  # a newer bench's
    out = bench_here(*QUICK_GRID, "--seeds", "0,1", "--results", tmp_path).stdout
    assert f"  {path.stem}: finished earlier, skipped\n" in out and out.count("finished earlier, skipped") == 2


def test_the_runs_of_one_process_name_the_commit_it_imported(tmp_path, bench_here, monkeypatch):
    """A commit made while a grid trained was named by its later runs' git_commit and train.commits,
    though they ran the code imported before it (their code_digest said so)."""
    from bench import env

    heads = iter(["a" * 40, "b" * 40])  # the checkout's HEAD, moved by a commit after the first read
    monkeypatch.setattr(env, "_git_head", lambda root: next(heads))
    env.git_commit.cache_clear()
    try:
        bench_here(*QUICK_GRID, "--seeds", "0,1", "--results", tmp_path)
    finally:
        env.git_commit.cache_clear()  # the next test reads the real checkout's
    recs = [json.loads(p.read_text(encoding="utf-8")) for p in (tmp_path / "records").glob("*.json")]
    assert [(r["git_commit"], r["train"]["commits"]) for r in recs] == [("a" * 40, ["a" * 40])] * 2


def test_a_record_says_which_host_job_and_command_line_made_it(tmp_path):
    """A record of a Slurm array's shared results folder did not say which job (and so which log) it
    came from."""
    import socket

    job = {"SLURM_JOB_ID": "1205", "SLURM_ARRAY_JOB_ID": "1200", "SLURM_ARRAY_TASK_ID": "5"}
    args = ["run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--protocol", "smoke", "--results",
            str(tmp_path), *FAST]
    _bench(*args, env=job)
    (path,) = (tmp_path / "records").glob("*.json")
    launch = json.loads(path.read_text(encoding="utf-8"))["launch"]
    assert launch["host"] == socket.gethostname() and launch["argv"][1:] == args
    assert launch["slurm"] == {"job_id": "1205", "array_job_id": "1200", "array_task_id": "5"}
    assert records.load(tmp_path)["slurm_job"].tolist() == ["1200_5"]


def test_a_run_another_process_trains_is_skipped_not_trained_twice(tmp_path):
    """Two processes given one grid (a shard started twice, a requeued job whose first copy still
    runs) both trained the run; the second replaced the weights behind the first's record and then
    failed. A run claimed by a live process is skipped; one whose process died is taken over."""
    import json
    import os
    import socket
    import subprocess
    import sys

    from bench.claim import CLAIM, claim_run
    from bench.fileio import writer_tag

    base = ["run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--protocol", "smoke",
            "--results", tmp_path, *FAST]
    _bench(*base)
    (record,) = (tmp_path / "records").glob("*.json")
    run_id = record.stem
    record.unlink()  # as if not finished yet
    weights = (tmp_path / "runs" / run_id / "checkpoints" / "final.pt").read_bytes()
    with claim_run(tmp_path, run_id) as claim:  # this test's process trains it, as far as anyone can tell
        held = _bench(*base, check=False)  # not done here: said, and not exit 0 (a requeued job would end)
        assert f"{run_id}: being run by pid {os.getpid()} on {socket.gethostname()} (claim " in held.stdout
        assert "taken over once that process ends" in held.stdout
        # EX_TEMPFAIL, not a user error's 2: a job script can requeue ("try again later")
        # skipped on purpose, nothing failed: "held:", not "error:"
        assert held.returncode == 75 and "error:" not in held.stderr
        assert f"held: 1 of 1 run(s) were being run by other processes and were skipped: {run_id}; " in held.stderr
        assert not record.exists() and (tmp_path / "runs" / run_id / "checkpoints" / "final.pt").read_bytes() == weights
        assert claim.path.exists()
    assert not (tmp_path / "runs" / run_id / CLAIM).exists()  # released
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          encoding="utf-8")
    (tmp_path / "runs" / run_id / CLAIM).write_text(json.dumps(
        {"writer": writer_tag(int(gone.stdout)), "started": "2026-01-01T00:00:00+00:00"}), encoding="utf-8")
    taken = _bench(*base)  # a killed process's claim: taken over, trained, released
    assert "being run by" not in taken.stdout and record.exists()
    assert not (tmp_path / "runs" / run_id / CLAIM).exists()


def _parentheses_depth(line: str) -> int:
    return max(itertools.accumulate((c == "(") - (c == ")") for c in line), default=0)


def test_many_held_runs_are_said_without_parentheses_in_parentheses(tmp_path, monkeypatch):
    """Six runs held by other processes were named "skipped (a, b, c, d, e (and 1 more))"."""
    import bench.claim
    from bench.errors import HeldError
    from bench.run import plan_grid, run_grid

    specs = plan_grid(models="unet", dataset="synapse", protocol="smoke", seeds=list(range(6)), data_root=None,
                      synthetic=True, results_dir=tmp_path, tiny=True)
    monkeypatch.setattr(bench.claim, "claim_run", lambda results_dir, run_id: f"pid 1 on node7 (claim {run_id})")
    said = []
    with pytest.raises(HeldError, match=r"6 of 6 run\(s\) were being run by other processes and were skipped: "
                                        rf"{specs[0].key}, .* \(and 1 more\); the same command later") as held:
        run_grid(specs, results_dir=tmp_path, device="cpu", say=said.append)
    assert said[0] == f"  {specs[0].key}: being run by pid 1 on node7 (claim {specs[0].key}), skipped"
    assert [_parentheses_depth(line) for line in [str(held.value), *said]] == [1] * 8


def test_a_failed_run_closes_its_training_log(tmp_path, monkeypatch):
    """A run that fails after training closes its TensorBoard writer (its file and flush thread;
    the scalars logged so far are on disk) and writes no record."""
    import bench.run
    from bench.plots import _tb_scalars

    writers = []
    make_writer = bench.run._tensorboard

    def spied(run_dir):
        writer = make_writer(run_dir)
        close, writer.closed = writer.close, False

        def closing():
            writer.closed = True
            close()

        writer.close = closing
        writers.append(writer)
        return writer

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(bench.run, "_tensorboard", spied)
    monkeypatch.setattr(bench.run, "evaluate", broken)
    result = runner.invoke(app, ["run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--protocol",
                                 "smoke", "--results", str(tmp_path), *FAST])
    assert isinstance(result.exception, RuntimeError) and "evaluation broke" in str(result.exception)
    assert records.load(tmp_path).empty
    assert [w.closed for w in writers] == [True]
    (run_dir,) = (tmp_path / "runs").iterdir()
    steps, losses = _tb_scalars(run_dir / "tb")["train/loss"]
    assert steps == [1, 2, 3, 4] and all(v > 0 for v in losses)


def test_a_training_log_that_cannot_be_written_never_stops_the_run(tmp_path, monkeypatch):
    """A disk filling up failed TensorBoard's writer first: its thread's traceback, then add_scalar
    raised out of the training loop. The log stops with one warning; the run finishes."""
    import errno

    import torch.utils.tensorboard

    class FullDisk:
        def __init__(self, log_dir, flush_secs):
            pass

        def add_scalar(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", FullDisk)
    with pytest.warns(UserWarning, match=r"tb: TensorBoard log stopped \(OSError: .*No space left on device\); the run "
                                         r"goes on") as said:
        result = runner.invoke(app, ["run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--protocol",
                                     "smoke", "--results", str(tmp_path), *FAST])
    assert result.exit_code == 0, result.output
    assert len(records.load(tmp_path)) == 1 and sum("TensorBoard" in str(w.message) for w in said) == 1


def test_no_pretrained_trains_from_scratch_off_protocol(tmp_path):
    _bench("run", "--models", "vmunet", "--dataset", "synapse", "--synthetic", "--no-pretrained",
           "--results", tmp_path, *FAST)
    (rec,) = [json.loads(p.read_text(encoding="utf-8")) for p in (tmp_path / "records").glob("*.json")]
    assert rec["init"] is None and rec["protocol"]["name"] == "synapse"
    assert rec["protocol"]["off_protocol"] and rec["protocol"]["overrides"]["pretrained"] is False
    assert "pretrained init: vmamba_small_e238_ema.pth" in _bench("models").stdout


def test_rescore_puts_the_same_weights_on_a_strict_board(tmp_path, bench_here):
    results = tmp_path / "results"  # its own run: run ids depend on the (synthetic) data's path
    _bench("run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--protocol", "smoke",
           "--results", results, *FAST)
    scored = _bench("rescore", "--policy", "strict", "--results", results)
    out = scored.stdout
    assert "1 run(s) to score under strict" in out and ".strict: DSC" in out and "mm" in out
    # each run's start said: a real volume's evaluation took minutes without a line
    assert re.search(r"\n\[1/1\] synapse-smoke-unet-s0-\w+: scoring\n  synapse-smoke-unet-s0-\w+\.strict: DSC", out)
    df = records.load(results)
    assert sorted(df["policy"]) == ["legacy-synapse", "strict"]
    assert df["rescored_from"].notna().sum() == 1
    rep = _bench("report", "--results", results).stdout
    assert "policy legacy-synapse" in rep and "policy strict" in rep and "HD95 in mm" in rep
    strict = _bench("report", "--results", results, "--policy", "strict").stdout  # a CLI audit: no way to pick
    assert "policy strict" in strict and "policy legacy-synapse" not in strict
    methods = _bench("report", "--results", results, "--policy", "legacy-synapse", "--format", "methods").stdout
    assert "legacy-synapse" in methods and "policy strict" not in methods
    wrong = bench_here("report", "--results", results, "--policy", "strictt", check=False)
    assert wrong.returncode == 2 and "--policy strictt: no runs of it" in wrong.stderr and "did you mean 'strict'" \
        in wrong.stderr
    again = _bench("rescore", "--policy", "strict", "--results", results).stdout
    assert "nothing to score: every finished run has a record under strict already; to check a record's numbers " \
        f"against its training, re-run it: bench run --from-record {results / 'records'}/<run_id>.json --results " \
        "ANOTHER_FOLDER" in again
    # asking bench run for the strict score of the same training reuses the rescored record
    out = _bench("run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--protocol", "smoke",
                 "--policy", "strict", "--results", results, *FAST).stdout
    assert "rescored under strict" in out and "skipped" in out and len(records.load(results)) == 2


def test_pretrained_flag_is_no_override_for_models_without_a_file(tmp_path):
    # U-Net has no pretrained file: --pretrained on smoke changes nothing, so the record must not say so
    _bench("run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--protocol", "smoke", "--pretrained",
           "--results", tmp_path, *FAST)
    (rec,) = [json.loads(p.read_text(encoding="utf-8")) for p in (tmp_path / "records").glob("*.json")]
    assert "pretrained" not in rec["protocol"]["overrides"] and rec["init"] is None


def test_data_synth_takes_dataset_names_and_writes_their_synthetic_data(tmp_path):
    """`--like isic18` (the name --dataset takes) writes the data `bench run --synthetic` trains on."""
    from bench.data import synthetic_identity, synthetic_root

    result = runner.invoke(app, ["data", "synth", "--like", "isic18", "--out", str(tmp_path / "mine")])
    assert result.exit_code == 0, result.output
    assert synthetic_identity(tmp_path / "mine") == synthetic_identity(synthetic_root("isic18", tmp_path / "cache"))
    result = runner.invoke(app, ["data", "synth", "--like", "isic18", "--seed", "5", "--out", str(tmp_path / "other")])
    assert synthetic_identity(tmp_path / "other") != synthetic_identity(tmp_path / "mine")


def test_how_a_records_synthetic_data_is_made_again_is_said_only_where_a_generator_can():
    """A review: a run on synthetic data edited after it was generated (its id files:...) was told to run the
    bench data synth command of its marker, which makes the unedited data: refused again, in a loop."""
    from bench.data.synth import GENERATOR_VERSION, grid_data, remake_text

    made = {"generator": GENERATOR_VERSION, "kind": "isic", "seed": 4, "options": {}}
    rec = {"synthetic": True, "data_id": "synthetic:ab", "data_root": "/d/mine", "synthetic_made": made}
    assert remake_text(rec, "DIR") == "`bench data synth --like isic --out DIR --seed 4` makes it again"
    assert remake_text({**rec, "data_id": "files:cd"}, "DIR").startswith(
        "its synthetic data was edited after it was generated (data id files:cd), so no generator makes it again")
    older = {**rec, "synthetic_made": {**made, "generator": GENERATOR_VERSION + 1}}
    assert f"with generator version {GENERATOR_VERSION + 1}, and this bench's ({GENERATOR_VERSION}) makes other " \
           "data" in remake_text(older, "DIR")
    grid = {**rec, "data_root": "/r/synthetic/synapse-synth-v1", "synthetic_made": None}
    assert remake_text(grid, "DIR", "/r") == ("`bench run` of its grid with --synthetic --results /r makes it again "
                                              "(its finished runs are skipped)")
    # bench run --from-record makes only that data again, unedited, itself: the rest it asks for
    assert grid_data(grid) and not grid_data({**grid, "data_id": "files:cd"}) and not grid_data(rec)
    assert remake_text({**rec, "synthetic_made": None}, "DIR").startswith("the same `bench data synth` options")
    assert remake_text({**rec, "synthetic": False}, "DIR") == ""
    # a record from before data ids were kept: its synthetic data is taken as generated
    assert remake_text({**rec, "data_id": None}, "DIR") == remake_text(rec, "DIR")


def test_the_synth_command_a_record_keeps_makes_the_same_data(tmp_path):
    """rescore's advice for synthetic data that is gone gives the command that makes it again: its kind, seed
    and settings, quoted for the shell (a list-valued setting, a folder name with a space)."""
    import shlex

    from bench.data import synthetic_identity, synthetic_made
    from bench.data.synth import synth_command

    made = tmp_path / "made here"
    result = runner.invoke(app, ["data", "synth", "--like", "nnunet", "--out", str(made), "--seed", "3", "--option",
                                 "dims=2", "--option", "n_cases=3", "--option", "size=32", "--option",
                                 "spacing=[2.0, 1.0, 1.0]"])
    assert result.exit_code == 0, result.output
    again = tmp_path / "made again"
    line = synth_command(synthetic_made(made), again)
    assert line == (f"bench data synth --like nnunet --out '{again}' --seed 3 --option dims=2 --option n_cases=3 "
                    "--option size=32 --option 'spacing=[2.0,1.0,1.0]'")
    result = runner.invoke(app, shlex.split(line)[1:])
    assert result.exit_code == 0, result.output
    assert synthetic_identity(again) == synthetic_identity(made) is not None


def test_data_synth_writes_volumes_of_the_size_asked_for(tmp_path):
    """To time evaluation at a real CT's size without the data: --option size=... depth=..."""
    import h5py

    from bench.data import open_dataset

    result = runner.invoke(app, ["data", "synth", "--like", "synapse", "--out", str(tmp_path / "big"), "--option",
                                 "size=128", "--option", "depth=20", "--option", "n_test=1", "--option", "n_train=1"])
    assert result.exit_code == 0, result.output
    ds = open_dataset("synapse", tmp_path / "big")
    (case,) = ds.test_ids()
    with h5py.File(next((tmp_path / "big" / "test_vol_h5").glob("*.h5"))) as f:
        assert f["image"].shape == (20, 128, 128) and case


@pytest.mark.parametrize("argv, training, said", [
    (["run", "--tiny"], None, "interrupted; the same command with --resume continues each unfinished run from its "
     "last checkpoint (each protocol's checkpoint_every sets when); without --resume, unfinished runs train afresh"),
    (["run", "--resume"], ("r1", "every 50 epochs"), "interrupted while training r1; the same command continues it "
     "from its last checkpoint (its protocol writes one every 50 epochs)"),
    (["run", "--resume", "--no-resume"], ("r1", "at every epoch's end"), "interrupted while training r1; the same "
     "command with --resume continues it from its last checkpoint (its protocol writes one at every epoch's end); "
     "without --resume, unfinished runs train afresh"),
    (["rescore", "--policy", "strict"], None,
     "interrupted; the same command scores the rest (the runs scored already are kept and skipped)"),
    (["predict"], None, "interrupted; the same command does it again"),
    (["run", "--resume"], ("r1", "at the end only"), "interrupted while training r1; the same command trains it "
     "again from the start (its protocol writes no checkpoint before the end)"),
    (["run", "--weights", "w.pth"], ("r1", "at every epoch's end"), "interrupted while evaluating r1; the same "
     "command evaluates it again"),
])
def test_the_interrupt_message_fits_the_command(monkeypatch, argv, training, said):
    """It said "checkpoint_every epochs of its protocol" (a key, not a value), told a command that had
    --resume to add it, named no run, and told rescore it would do again what it keeps."""
    from bench import runlog, train  # noqa: F401 (a run imports both)
    from bench.cli.console import _interrupted_line

    monkeypatch.setattr(sys, "argv", ["bench", *argv])
    run, when = training or (None, None)
    monkeypatch.setattr(runlog, "current_run", run)
    monkeypatch.setattr(runlog, "checkpoints", when)
    monkeypatch.setattr(runlog, "phase", "training")
    assert _interrupted_line() == said
    if run and "--resume" in argv and when != "at the end only":  # after its last epoch: evaluating, so said
        monkeypatch.setattr(runlog, "phase", "evaluating")
        assert _interrupted_line() == said.replace("while training", "while evaluating")
    if when == "at the end only":  # evaluating, its last epoch's checkpoint is there to continue from
        monkeypatch.setattr(runlog, "phase", "evaluating")
        assert _interrupted_line() == ("interrupted while evaluating r1; the same command continues it from its last "
                                       "checkpoint (its protocol writes one at the end only)")


def test_an_eof_error_a_command_lets_out_is_its_traceback_not_an_interrupt(tmp_path, monkeypatch, capsys):
    """click turns an EOFError escaping a command (a truncated pickle, say) into the Abort of a Ctrl-C: bench
    said "interrupted; the same command does it again" and exited 130, where the same command fails again."""
    import bench.clean
    from bench.cli import main

    def truncated(*args, **kwargs):
        raise EOFError("Ran out of input")

    (tmp_path / "records").mkdir()
    monkeypatch.setattr(bench.clean, "clean", truncated)
    monkeypatch.setattr(sys, "argv", ["bench", "clean", "--results", str(tmp_path)])
    with pytest.raises(EOFError, match="Ran out of input"):  # uncaught: Python prints it and exits 1
        main()
    assert "interrupted" not in capsys.readouterr().err


@pytest.mark.parametrize("signum, debug, said", [("SIGINT", "", 2), ("SIGTERM", "", 2), ("", "", 3),
                                                  ("SIGINT", "1", 3)])
def test_what_an_interrupt_cut_short_fails_unsaid_as_it_is_freed(tmp_path, signum, debug, said):
    """A SIGTERM landing in zipfile.ZipFile.__init__ (numpy reading a training slice) left half a ZipFile, whose
    __del__, as the interrupt's traceback was freed, printed "Exception ignored in: ZipFile.__del__ ... Traceback
    ... AttributeError" above the interrupted line: a crash's look. After Ctrl-C or SIGTERM such failures are
    unsaid; without an interrupt, with BENCH_DEBUG=1 and once the command is over, Python says them as ever."""
    import subprocess

    script = f"""
import io, signal, sys, zipfile
from bench.cli import main
from bench.errors import BenchError
from bench.report import write

def half_zipfile():  # what ZipFile.__init__ had made when the signal came: fp set, _writing not yet
    half = zipfile.ZipFile.__new__(zipfile.ZipFile)
    half.fp = io.BytesIO()
    return half

def interrupted(*args, **kwargs):
    half_zipfile()  # freed at once, before any interrupt: said
    half = half_zipfile()  # held by this frame, so by the interrupt's traceback
    if {signum!r}:
        signal.raise_signal(getattr(signal, {signum!r}))
    raise BenchError("no interrupt")

write.load_both = interrupted
sys.argv = ["bench", "report", "--results", sys.argv[1]]
try:
    main()
finally:
    half_zipfile()
"""
    (tmp_path / "records").mkdir()
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                          encoding="utf-8", env={**os.environ, "OMP_NUM_THREADS": "1", "BENCH_DEBUG": debug})
    assert proc.returncode == (130 if signum else 2), proc.stderr
    assert ("interrupted; the same command does it again" if signum else "error: no interrupt") in proc.stderr
    assert proc.stderr.count("Exception ignored") == said, proc.stderr  # before the interrupt and after the command


def test_a_commands_signal_handlers_are_the_callers_again_after_it(monkeypatch, capsys):
    """bench's handlers (SIGTERM as Ctrl-C; Ctrl-C noted) are its command's: an in-process caller (a notebook,
    a test) gets its own back, and a handler of its own for Ctrl-C is left as it is throughout."""
    def mine(signum, frame):
        raise KeyboardInterrupt

    for before in (signal.default_int_handler, mine):
        monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
        signal.signal(signal.SIGINT, before)
        try:
            run_bench_here(monkeypatch, capsys, "models")
            assert signal.getsignal(signal.SIGINT) is before and sys.unraisablehook is sys.__unraisablehook__
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def test_a_command_after_an_interrupted_one_in_the_same_process_says_what_its_objects_fail(monkeypatch, capsys):
    """An interrupt quiets what the interrupted command's objects fail as they are freed; the next command in
    that process (a notebook cell run again) is not interrupted: what its objects fail reaches the caller's hook."""
    from bench.cli import console

    seen = []
    monkeypatch.delenv("BENCH_DEBUG", raising=False)  # which says everything
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    monkeypatch.setattr(console, "_interrupted", True)  # as a Ctrl-C in the previous command left it
    monkeypatch.setattr(console, "_main", lambda: sys.unraisablehook("freed"))
    console.main()
    assert seen == ["freed"] and sys.unraisablehook == seen.append  # passed on; the caller's hook back
    monkeypatch.setattr(console, "_main", lambda: (setattr(console, "_interrupted", True), sys.unraisablehook("cut")))
    console.main()
    assert seen == ["freed"]  # an interrupt within the command: unsaid


def test_the_live_bar_follows_stderr_and_each_phase_has_its_own_total(monkeypatch, tmp_path):
    """The bar checked stdout's terminal (`bench run > out` at a terminal showed none), read "0/None"
    before the first step, and evaluation kept training's total until its first case."""
    import io

    from rich.progress import Progress

    from bench import run
    from bench.protocol import load_protocol
    from bench.registry import get_entry

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setattr(sys, "stderr", Terminal())
    with run._progress_bar(True) as bar:
        assert isinstance(bar, Progress)
        task = bar.add_task("unet s0 train", total=None, info="")
        assert "0/?" in str(bar.columns[2].render(bar.tasks[task]))
    monkeypatch.setattr(sys, "stdout", Terminal())
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not isinstance(run._progress_bar(True), Progress)

    monkeypatch.setattr(sys, "stderr", Terminal())
    added, add_task = [], Progress.add_task
    monkeypatch.setattr(Progress, "add_task", lambda self, name, **kw: added.append((name, kw.get("total")))
                        or add_task(self, name, **kw))
    proto = load_protocol("smoke").with_overrides(img_size=32, max_iterations=2, batch_size=4, max_cases=1)
    (spec,) = run.plan_grid(models=["unet"], dataset="synapse", protocol=proto, seeds=[0], synthetic=True,
                            data_root=None, results_dir=tmp_path, model_overrides=dict(get_entry("unet").tiny))
    run.run_one(spec, results_dir=tmp_path, device="cpu", show_progress=True)
    assert added == [("unet s0 train", None), ("unet s0 eval", None)]


def test_a_runs_log_keeps_its_lines_warnings_and_interrupt(tmp_path, capsys, monkeypatch):
    """A run's lines went to stdout and stderr only: with a batch job's log gone, nothing told why a run
    had no record. Its warnings and an interrupt are kept too, and a later attempt appends."""
    import warnings

    from bench import runlog

    monkeypatch.setattr(runlog, "current_run", None)  # both restored after the interrupt below set them
    monkeypatch.setattr(runlog, "checkpoints", None)
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    runlog.say("outside any run")  # said, kept nowhere
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda *a, **k: None  # the command line's one-line display, say
        with runlog.kept(run_dir, "every 50 epochs"):
            runlog.say("  r1: resuming after epoch 50")
            warnings.warn("r1: a warning about it", stacklevel=1)
    assert runlog.current_run is None  # left well: no run to name
    with pytest.raises(KeyboardInterrupt), runlog.kept(run_dir, "every 50 epochs"):
        raise KeyboardInterrupt
    assert (runlog.current_run, runlog.checkpoints) == ("r1", "every 50 epochs")  # for the interrupt message
    said = (run_dir / runlog.RUN_LOG).read_text(encoding="utf-8").splitlines()
    assert [line.split("  ", 1)[1] for line in said] == ["r1: resuming after epoch 50", "warning: r1: a warning about it",
                                                        "interrupted while training (Ctrl-C or SIGTERM)"], said
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC  ", line) for line in said)
    assert capsys.readouterr().err.splitlines() == ["outside any run", "  r1: resuming after epoch 50"]
    # a log that cannot be written (a full disk; here a folder in its place) never stops the run: said still
    unwritable = tmp_path / "runs" / "r2"
    (unwritable / runlog.RUN_LOG).mkdir(parents=True)
    with runlog.kept(unwritable, "every 50 epochs"):
        runlog.say("  r2: training")
    assert capsys.readouterr().err == "  r2: training\n" and (unwritable / runlog.RUN_LOG).is_dir()


def test_data_synths_choices_are_every_format_and_dataset():
    from bench.cli.data_cmds import SynthKind
    from bench.data import DATASETS
    from bench.data.synth import KINDS

    readers = {kind: [name for name, cls in DATASETS.items() if cls.kind == kind and name != kind] for kind in KINDS}
    assert [k.value for k in SynthKind] == [name for kind in KINDS for name in (kind, *readers[kind])]


def test_threads_are_the_commands_own_in_process(tmp_path):
    """A notebook journey: a command line run in-process with --threads 1 left the kernel's torch on
    one thread from then on."""
    import torch

    from bench.cli import app

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        app(["profile", "--models", "unet", "--tiny", "--img-size", "32", "--no-timing", "--threads", "1",
             "--results", str(tmp_path)], standalone_mode=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_from_record_refuses_records_it_cannot_replay_each_in_its_words(tmp_path):
    """rerun_args' refusals, each a record a few keys long: what --from-record cannot rebuild, or the file
    it must be given (a mutation audit found none of them tested)."""
    from bench.rerun import rerun_args

    rec = {"run_id": "r1", "set_keys": [], "policy": "strict", "data_root": str(tmp_path / "gone"), "synthetic": False}
    with pytest.raises(BenchError, match=r"^run r1: bench rescore scored run r0's weights under strict: re-run run "
                                         r"r0 from its own record \(r0\.json, which rerun_source finds .*\), then "
                                         r"score it under strict with bench\.rescore\.rescore_record, as `bench run "
                                         r"--from-record` of this record does$"):
        rerun_args({**rec, "rescored_from": "r0"}, None, None, None)
    with pytest.raises(BenchError, match="run r1: its record predates set_keys"):
        rerun_args({**rec, "set_keys": None}, None, None, None)
    weights = {"file": "best.pth", "sha256": "ab" * 32}
    with pytest.raises(BenchError, match=r"weights file best\.pth \(sha256 abababababababab\).*pass --weights PATH"):
        rerun_args({**rec, "weights": weights}, None, None, None)
    with pytest.raises(BenchError, match="--weights: run r1 trained its weights; --from-record trains them again"):
        rerun_args(rec, None, tmp_path / "w.pth", None)
    with pytest.raises(BenchError, match=r"pretrained file init\.pth .*; pass --pretrained-dir DIR holding it"):
        rerun_args({**rec, "init": {"file": "init.pth", "sha256": "cd" * 32}}, None, None, None)
    # weights given stand for the init: no --pretrained-dir asked for
    with pytest.raises(BenchError, match=r"gone: the data run r1 read is not there; pass --data-root DIR holding it$"):
        rerun_args({**rec, "init": {"file": "init.pth", "sha256": "cd" * 32}, "weights": weights}, None,
                   tmp_path / "w.pth", None)
    # a --data-root that is not there: for bench run --synthetic's data, the advice is to leave it out
    with pytest.raises(BenchError, match=r"--data-root .*nowhere: not found; pass the folder holding the data run r1 "
                                         r"read$"):
        rerun_args(rec, tmp_path / "nowhere", None, None)
    grid = {**rec, "synthetic": True, "data_id": "synthetic:ab", "data_root": str(tmp_path / "r" / "synthetic" / "s")}
    with pytest.raises(BenchError, match=r"not found; pass the folder holding the data run r1 read \(drop --data-root: "
                                         r"the bench run --synthetic data it read is made again under --results\)$"):
        rerun_args(grid, tmp_path / "nowhere", None, None)


def test_a_rerun_planned_otherwise_names_what_differs():
    """check_rerun: the same run id passes; else the data, the weights or pretrained file, or the id's hashing."""
    from types import SimpleNamespace

    from bench.rerun import check_rerun

    spec = SimpleNamespace(key="r1", data_id="synthetic:aa", data_root=Path("d"), weights=None, init=None)
    rec = {"run_id": "r1", "data_id": "synthetic:bb", "synthetic": False}
    check_rerun(spec, rec)  # its own id: nothing else is looked at
    rec = {**rec, "run_id": "r0"}
    with pytest.raises(BenchError, match=r"^d: not the data run r0 read \(data id synthetic:aa, the record's "
                                         r"synthetic:bb\); pass --data-root DIR holding that data$"):
        check_rerun(spec, rec)
    rec["data_id"] = "synthetic:aa"
    with pytest.raises(BenchError, match=r"^run r0: planned again as run r1, another id"):
        check_rerun(spec, rec)
    given = {"weights": {"file": "best.pth", "sha256": "ab" * 32}, "init": {"file": "init.pth", "sha256": "ab" * 32}}
    for kind, what, field in (("weights", "--weights", dict(weights=("w", "cd" * 32))),
                              ("init", "--pretrained-dir", dict(init=("p", "f", "cd" * 32)))):
        with pytest.raises(BenchError, match=rf"^{what}: not the file {given[kind]['file']} run r0 used \(sha256 "
                                             r"cdcdcdcdcdcdcdcd, the record's abababababababab\)$"):
            check_rerun(SimpleNamespace(**{**vars(spec), **field}), {**rec, kind: given[kind]})
    with pytest.raises(BenchError, match=r"^run r0: planned again as run r1"):  # the very file: the id is what differs
        check_rerun(SimpleNamespace(**{**vars(spec), "weights": ("w", "ab" * 32)}), {**rec, "weights": given["weights"]})


def test_a_rerun_says_each_thing_that_differs_from_where_the_run_ran():
    """rerun_differing: [] where device, CPU, torch, threads, processes and code are the run's; else each, and
    differences_text says them once, for one run or for several runs of a folder alike."""
    import torch

    from bench import env
    from bench.rerun import differences_text, rerun_differing, rescore_differing

    cpu = torch.device("cpu")
    here = env.fingerprint(cpu)
    rec = {"run_id": "r1", "device": dict(here), "train": {"world_size": 1}, "git_commit": env.git_commit(),
           "code_digest": env.source_digest()}
    assert rerun_differing(rec, cpu, 1) == []
    assert rerun_differing({**rec, "device": {**here, "threads": None, "cpu": None}}, cpu, 1) == []  # not kept
    differ = rerun_differing({**rec, "device": {**here, "threads": here["threads"] + 1}, "train": {"world_size": 2},
                              "code_digest": "0" * 16}, cpu, 1)
    assert [d.split()[0] for d in differ] == ["threads", "processes", "code"]
    said = differences_text(["r1"], differ)
    assert said.startswith(f"run r1 ran otherwise than this command: threads {here['threads']}, the run's "
                           f"{here['threads'] + 1} (--threads {here['threads'] + 1}); processes 1, the run's 2 "
                           "(--nproc 2); code ")
    assert said.endswith("; its numbers may differ from the record's")
    assert "processes 2, the run's 1 (--nproc 1)" in rerun_differing(rec, cpu, 2)
    assert [d.split()[0] for d in rerun_differing({**rec, "device": {**here, "torch": "0.0"}}, cpu, 1)] == ["torch"]
    # a rescore's differences name no option: --from-record's --threads is its run's too, re-run first
    scored = {"device": {**here, "threads": here["threads"] + 1}, "git_commit": rec["git_commit"],
              "code_digest": rec["code_digest"]}
    assert rescore_differing({**rec, "rescored_with": scored}, cpu) == [
        f"threads {here['threads']}, the rescore's {here['threads'] + 1}"]
    assert rescore_differing(rec, cpu) == []  # a record without rescored_with says nothing
    assert differences_text(["r1", "r2"], differ[:1], 2).startswith("all 2 runs ran otherwise than this command: "
                                                                   "threads ")
    some = differences_text(["r1", "r2"], differ[:1], 5)
    assert some.startswith("2 runs (r1, r2) ran otherwise") and some.endswith("; their numbers may differ from their "
                                                                               "records'")


def test_a_grids_fold_notes_are_said_once_naming_every_fold():
    """grid_notes: one fold's note per fold run joined into one ("folds 0, 1 of"), other notes once each."""
    from types import SimpleNamespace

    from bench.run import grid_notes

    def spec(fold, *notes):
        return SimpleNamespace(fold=fold, notes=list(notes))

    specs = [spec(0, "split: fold 0 of R", "odd"), spec(1, "split: fold 1 of R", "odd"), spec(0, "split: fold 0 of R")]
    assert grid_notes(specs) == ["split: folds 0, 1 of R", "odd"]
    assert grid_notes([spec(3, "split: fold 3 of R")]) == ["split: fold 3 of R"]
    assert grid_notes([spec(None, "split: fold 3 of R")]) == ["split: fold 3 of R"]  # no fold run: as it is
    assert grid_notes([spec(2, "split: fold 3 of R")]) == ["split: fold 3 of R"]  # another fold's words: as they are


def test_dry_run_says_a_run_stopped_before_its_first_checkpoint(tmp_path):
    """A housekeeping review: a run interrupted before its first checkpoint was "interrupted" in the report's
    warning and a bare "missing" in --dry-run, though its folder and log were there."""
    from bench.data import synthetic_root
    from bench.registry import get_entry
    from bench.run import plan_grid, run_state

    root = synthetic_root("synapse", tmp_path / "synth")
    (spec,) = plan_grid(models=["unet"], dataset="synapse", protocol="smoke", seeds=[0], data_root=root,
                        synthetic=False, results_dir=tmp_path, model_overrides=dict(get_entry("unet").tiny))
    assert run_state(spec, tmp_path) == ("missing", "")
    log = tmp_path / "runs" / spec.key / "run.log"
    log.parent.mkdir(parents=True)
    log.write_text(f"2026-12-06 10:00:00Z  [1/1] {spec.key}: training\n"
                   f"2026-12-06 10:00:05Z  interrupted while training {spec.key} (Ctrl-C)\n", encoding="utf-8")
    assert run_state(spec, tmp_path) == ("missing", f"interrupted while training {spec.key}, before its first "
                                                    "checkpoint: bench run trains it afresh")
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"2026-12-06 10:01:00Z  [1/1] {spec.key}: training\n"
                 f"2026-12-06 10:01:02Z  FAILED: out of memory. More words\n")
    assert run_state(spec, tmp_path)[1] == "failed (out of memory), before its first checkpoint: bench run trains it afresh"


def test_a_rescored_records_run_is_looked_for_beside_it_then_in_results(smoke_results, tmp_path, monkeypatch, capsys):
    """A mutation audit: which record of a rescored record's run --from-record takes (the one beside it, else
    the one finished in --results, which is rescored from there as it is, not re-run), that a run that failed is
    not rescored from an older record of it in --results, and that the record's threads are set back after."""
    import shutil

    import torch

    from bench.rerun import rerun_source

    (kept,) = [p for p in (smoke_results / "records").glob("*.json") if p.name.count(".") == 1]
    rec = json.loads(kept.read_text(encoding="utf-8"))
    rescored = {**rec, "run_id": rec["run_id"] + ".strict", "rescored_from": rec["run_id"], "policy": "strict"}
    recs, held = tmp_path / "recs", tmp_path / "held" / "records"  # held: a results folder holding the run's record
    recs.mkdir()
    held.mkdir(parents=True)
    shutil.copyfile(kept, held / kept.name)
    (recs / f"{rescored['run_id']}.json").write_text(json.dumps(rescored), encoding="utf-8")
    # its run only in --results: planned as found there, not re-run
    dry = run_bench_here(monkeypatch, capsys, "run", "--from-record", recs / f"{rescored['run_id']}.json", "--results",
                         held.parent, "--dry-run")
    assert "bench run --dry-run: 1 run(s)" in dry.stdout and f"done     {rec['run_id']}" not in dry.stdout
    # beside it and in --results: the one beside it
    shutil.copyfile(kept, recs / kept.name)
    assert rerun_source(rescored, recs / f"{rescored['run_id']}.json", held.parent) == recs / kept.name
    # its run failed to re-run (a record this bench cannot replay), an older record of it in --results: not
    # rescored from that one's weights
    (recs / kept.name).write_text(json.dumps({**rec, "set_keys": None}), encoding="utf-8")
    bad = run_bench_here(monkeypatch, capsys, "run", "--from-record", recs, "--results", held.parent, check=False)
    assert bad.returncode == 2 and f"{rescored['run_id']}: FAILED: run {rec['run_id']}, whose weights it scored " \
        "under strict, was not re-run (see above), so there is nothing to rescore" in bad.stderr, bad.stderr
    # a run that had 2 CPU threads is planned at 2, and this process's count set back after
    (recs / kept.name).write_text(json.dumps({**rec, "device": {**rec["device"], "threads": 2}}), encoding="utf-8")
    before = torch.get_num_threads()
    out = run_bench_here(monkeypatch, capsys, "run", "--from-record", recs / kept.name, "--results", tmp_path / "res",
                         "--device", "cpu", "--dry-run")
    assert "note: --threads 2, as the run had" in out.stdout and torch.get_num_threads() == before != 2
