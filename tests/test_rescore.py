"""`bench rescore`: a finished run's weights scored under another policy equal a run trained
under that policy from the start (CPU training is bit-reproducible), without training again."""

from __future__ import annotations

import json
import math
import shutil
import warnings

import pytest
import torch

from bench import records
from bench.data import synthetic_root
from bench.errors import BenchError
from bench.protocol import PROTOCOL_DIR, load_protocol
from bench.records import load, record_path, rescore_id, write_record
from bench.registry import get_entry
from bench.report import leaderboards
from bench.rescore import plan_rescore, record_protocol, rescore_record, run_model, weights_path
from bench.run import plan_grid, run_one

CPU = torch.device("cpu")


def _spec(root, results, policy, dtype="float32"):
    proto = load_protocol("smoke").with_overrides(img_size=32, max_iterations=3, max_cases=2, dtype=dtype)
    (spec,) = plan_grid(models=["unet"], dataset="synapse", protocol=proto, seeds=[0], data_root=root,
                        synthetic=False, results_dir=results, policy=policy,
                        model_overrides=dict(get_entry("unet").tiny))
    return spec


def _run(root, results, policy, dtype="float32"):
    return run_one(_spec(root, results, policy, dtype), results_dir=results, device=CPU)


def _same(a, b):
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = synthetic_root("synapse", tmp_path_factory.mktemp("synth"))
    results = tmp_path_factory.mktemp("results")
    return root, results, _run(root, results, "legacy-synapse")


def test_rescored_metrics_equal_a_run_trained_under_that_policy(trained, tmp_path):
    root, _, legacy = trained
    results = _alone(trained, tmp_path / "copy")  # whichever test of the module ran first, and rescored it
    (rec,) = plan_rescore(results, "strict")
    assert rec["run_id"] == legacy["run_id"]
    new = rescore_record(rec, "strict", results, "cpu")  # a device's name, as run_grid takes it
    direct = _run(root, tmp_path, "strict")  # trained again, under strict from the start
    assert new["run_id"] == f"{legacy['run_id']}.strict" and new["rescored_from"] == legacy["run_id"]
    assert new["policy"] == "strict" and new["hd95_unit"] == "mm" and new["policy_conventions"]["use_spacing"]
    assert new["train"] == legacy["train"] and new["protocol"] == legacy["protocol"]
    assert new["metrics"].keys() == direct["metrics"].keys()
    assert all(_same(new["metrics"][k], direct["metrics"][k]) for k in direct["metrics"]), (new["metrics"], direct["metrics"])
    assert len(new["per_case"]) == len(direct["per_case"])
    assert all(_same(a[k], b[k]) for a, b in zip(new["per_case"], direct["per_case"]) for k in b)
    # strict differs from the legacy rules on the same weights (a missed organ is not HD95 0)
    assert new["metrics"]["hd95"] != legacy["metrics"]["hd95"]

    df = load(results)
    assert sorted(df["policy"]) == ["legacy-synapse", "strict"]
    assert df.set_index("run_id").loc[new["run_id"], "rescored_from"] == legacy["run_id"]
    assert {k.policy for k in leaderboards(df)} == {"legacy-synapse", "strict"}
    # done once: neither the original nor the rescored record is planned again
    assert plan_rescore(results, "strict") == []
    # VM-UNet's pooled confusion matrix is a binary task's: 8 organs are refused, not pooled together
    with pytest.raises(BenchError, match=rf"'legacy-isic' pools .*; run {legacy['run_id']} has 8 foreground classes"):
        plan_rescore(results, "legacy-isic")
    assert plan_rescore(results, "legacy-synapse") == []  # already its policy
    with pytest.raises(BenchError, match=r"--models vmunet: no runs of it in .* \(there: unet\)"):
        plan_rescore(results, "strict", models=["vmunet"])  # it said "nothing to score" and exited 0


def test_a_pooled_policy_leaves_multi_class_runs_out_and_says_so(trained, tmp_path):
    root, results, legacy = trained
    with pytest.raises(BenchError, match=r"'legacy-isic' pools .*; 'synapse' data at .* has 8 foreground classes"):
        _run(root, tmp_path / "res", "legacy-isic")  # refused where the grid is planned
    shutil.copytree(results, tmp_path / "mixed")
    binary = {**legacy, "run_id": "isic17-smoke-unet-s0-00000000", "dataset": "isic17",
              "per_class": legacy["per_class"][:1]}
    write_record(binary, tmp_path / "mixed")
    with pytest.warns(UserWarning, match=rf"1 run\(s\) left out: .*run {legacy['run_id']} has 8 foreground"):
        assert [r["run_id"] for r in plan_rescore(tmp_path / "mixed", "legacy-isic")] == [binary["run_id"]]


def test_rescore_refuses_what_it_cannot_reproduce(trained, tmp_path):
    _, results, legacy = trained
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    rec = json.loads(record_path(copy, legacy["run_id"]).read_text(encoding="utf-8"))
    with pytest.raises(BenchError, match="unknown metric policy"):
        plan_rescore(copy, "strictt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match=r"empty: no finished runs; pass the --results folder that `bench run` wrote"):
        plan_rescore(tmp_path / "empty", "strict")  # as bench predict: most likely not the folder meant
    # a record keeps its recipe: its protocol whatever became of the file (edited, lost, several versions)
    assert record_protocol({**rec, "protocol": {**rec["protocol"], "name": "gone"}}).train == \
        load_protocol("smoke").with_overrides(**rec["protocol"]["overrides"]).train
    with pytest.warns(UserWarning, match=r"--protocol .*smoke\.toml: not used for runs whose records keep their recipe"):
        record_protocol(rec, PROTOCOL_DIR / "smoke.toml")  # a file given for them is said to be unused
    # records written before they kept it are rebuilt from the file, checked by its hash
    rec = {**rec, "protocol": {k: v for k, v in rec["protocol"].items() if k != "recipe"}}
    changed = {**rec, "protocol": {**rec["protocol"], "hash": "0" * 16}}
    with pytest.raises(BenchError, match="the built-in 'smoke' now has hash .* pass the protocol file the run used"):
        rescore_record(changed, "strict", copy, CPU)
    # a run of an earlier bench, whose built-in changed since: where that version's file is
    with pytest.raises(BenchError, match=r"--protocol \(a built-in of an earlier bench: `git show 0123456789ab:bench/"
                                         r"protocols/smoke.toml > smoke_v1.toml` in a checkout writes the file"):
        record_protocol({**changed, "git_commit": "0123456789abcdef0123-dirty"})
    # --protocol applies to runs of the protocol it names; the others keep their built-in one
    other = tmp_path / "other.toml"
    other.write_text((PROTOCOL_DIR / "smoke.toml").read_text(encoding="utf-8")
                     .replace('name = "smoke"', 'name = "other"'), encoding="utf-8")
    assert record_protocol(rec, other).hash == rec["protocol"]["hash"]
    edited = tmp_path / "smoke_edited.toml"  # a file of the run's protocol name, but other content
    edited.write_text((PROTOCOL_DIR / "smoke.toml").read_text(encoding="utf-8").replace("seed = 0", "seed = 5"),
                      encoding="utf-8")
    with pytest.raises(BenchError, match=f"the file {edited} now has hash"), warnings.catch_warnings():
        warnings.simplefilter("error")  # an earlier version of a built-in, named as it: not "give it its own name"
        record_protocol(rec, edited)
    # the split now holds other cases (data changed, or a fold drawn another way): refused, since
    # the weights could then be scored on cases they trained on
    other = {**rec, "per_case": [{**row, "case": "case0001"} for row in rec["per_case"]]}
    with pytest.raises(BenchError, match="now holds other cases than the 1 it was scored on"):
        rescore_record(other, "strict", copy, CPU)
    # a plugin's code edited since the run: its weights still fit, and are scored with a warning
    with pytest.warns(UserWarning, match=rf"run {rec['run_id']}: unet's code changed since it trained; its weights "
                                         "are rescored with the code as it is now"):
        run_model({**rec, "model_code": "0" * 16}, copy, None, "rescored")  # what rescore and predict build
    # a record's model as it spells it: a plugin "UNet" not installed here is not the built-in unet
    with pytest.raises(BenchError, match=rf"run {rec['run_id']}: its model 'UNet' is not installed here \('unet' is "
                                         r"another model, alike but for case\)"):
        run_model({**rec, "model": "UNet"}, copy, None, "rescored")
    # weights the model's code no longer fits (a plugin edited since the run): one line, not torch's traceback
    widened = {**rec, "model_config": {**rec["model_config"], "widths": [8, 16, 32, 72]}}
    with pytest.raises(BenchError, match=rf"run {rec['run_id']}: .*final\.pt does not match UNet: missing 0 \[none\]; "
                                         r"unexpected 0 \[none\]; mis-shaped \d+ \[.*; the model's code changed since"):
        rescore_record(widened, "strict", copy, CPU)
    # a damaged weights file: said so (it read "delete it to restart; the model's code changed")
    blob = weights_path(copy, rec).read_bytes()
    weights_path(copy, rec).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(BenchError, match=rf"run {rec['run_id']}: .*final\.pt: unreadable \(damaged or cut short\), so "
                                         r"its weights cannot be rescored; train the run again"):
        rescore_record(rec, "strict", copy, CPU)
    weights_path(copy, rec).unlink()
    with pytest.raises(BenchError, match=r"final\.pt: not found"):
        rescore_record(rec, "strict", copy, CPU)
    # a run that selected its lowest-train-loss epoch was evaluated with best.pt
    best = {**rec, "train": {**rec["train"], "selected": "best_train_loss@3"}}
    assert weights_path(copy, best).name == "best.pt"
    low = {**rec, "train": {**rec["train"], "selected": "lr_min@250"}}
    assert weights_path(copy, low).name == "lr_min.pt"


def test_float64_runs_rescore_exactly_and_trained_twins_are_not_rescored(trained, tmp_path):
    root = trained[0]
    legacy = _run(root, tmp_path, "legacy-synapse", "float64")
    direct = _run(root, tmp_path / "direct", "strict", "float64")
    (rec,) = plan_rescore(tmp_path, "strict")
    new = rescore_record(rec, "strict", tmp_path, CPU)  # weights loaded in float64, as evaluated
    assert all(_same(new["metrics"][k], direct["metrics"][k]) for k in direct["metrics"])
    # a run trained under strict beside the legacy one: the same training, so nothing to rescore
    twin_dir = tmp_path / "twin"
    _run(root, twin_dir, "legacy-synapse", "float64")
    _run(root, twin_dir, "strict", "float64")
    assert plan_rescore(twin_dir, "strict") == [] and plan_rescore(twin_dir, "legacy-synapse") == []
    assert legacy["run_id"] != direct["run_id"]
    # a twin recorded before records held data_id is still the same training; one of other data is not
    strict_path = next(p for p in (twin_dir / "records").glob("*.json") if '"strict"' in p.read_text(encoding="utf-8"))
    old = json.loads(strict_path.read_text(encoding="utf-8"))
    del old["data_id"]
    strict_path.write_text(json.dumps(old), encoding="utf-8")
    assert plan_rescore(twin_dir, "strict") == []
    strict_path.write_text(json.dumps({**old, "data_id": "files:0123456789abcdef"}), encoding="utf-8")
    assert [r["policy"] for r in plan_rescore(twin_dir, "strict")] == ["legacy-synapse"]


def test_bench_run_skips_a_run_already_rescored_into_its_policy(trained, tmp_path):
    from bench.rescore import rescored_twin

    root, results, legacy = trained
    proto = load_protocol("smoke").with_overrides(img_size=32, max_iterations=3, max_cases=2, dtype="float32")
    (strict,) = plan_grid(models=["unet"], dataset="synapse", protocol=proto, seeds=[0], data_root=root,
                          synthetic=False, results_dir=results, policy="strict",
                          model_overrides=dict(get_entry("unet").tiny))
    for rec in plan_rescore(results, "strict"):  # unless the first test rescored it already
        rescore_record(rec, "strict", results, CPU)
    assert rescored_twin(strict, results) == f"{legacy['run_id']}.strict"
    (seed1,) = plan_grid(models=["unet"], dataset="synapse", protocol=proto, seeds=[1], data_root=root,
                         synthetic=False, results_dir=results, policy="strict",
                         model_overrides=dict(get_entry("unet").tiny))
    assert rescored_twin(seed1, results) is None  # another seed: nothing to reuse


def test_rescore_refuses_data_changed_in_place_and_names_a_custom_protocol(trained, tmp_path):
    """A run records what its data was (data_id): the same file names with other content are refused,
    not scored against the old weights; a run of a protocol file that is not built in asks for it."""
    from bench.data.synth import MARKER

    root, _, _ = trained
    data = tmp_path / "data"  # the same data as one's own (no synthetic marker): identified by its files
    shutil.copytree(root, data)
    (data / MARKER).unlink()
    rec = _run(data, tmp_path / "res", "legacy-synapse")
    assert rec["data_id"].startswith("files:")
    from bench.data import open_dataset

    assert rec["n_train"] == len(open_dataset("synapse", data).train_ids())  # the report's split check reads it
    assert load(tmp_path / "res")["n_train"].tolist() == [rec["n_train"]]
    (strict,) = plan_rescore(tmp_path / "res", "strict")
    # a run recorded when content ids did not read the test labels is still of this data
    legacy = {**strict, "data_id": open_dataset("synapse", data).content_id(scored=False)}
    assert legacy["data_id"] != rec["data_id"]
    assert rescore_record(legacy, "strict", tmp_path / "res", CPU)["metrics"]
    record_path(tmp_path / "res", rescore_id(rec["run_id"], "strict")).unlink(missing_ok=True)
    test_file = next((data / "test_vol_h5").iterdir())
    test_file.write_bytes(test_file.read_bytes() + b"\0")  # edited in place: same name, other size
    with pytest.raises(BenchError, match=rf"run {rec['run_id']}: the data at {data} changed since it was scored"):
        rescore_record(strict, "strict", tmp_path / "res", CPU)
    older = {k: v for k, v in rec["protocol"].items() if k != "recipe"}  # a record from before recipes were kept
    custom = {**rec, "protocol": {**older, "name": "my_recipe"}}
    with pytest.raises(BenchError, match=rf"run {rec['run_id']}: its protocol 'my_recipe' is not built in; pass "
                                         "the file it was run with as --protocol FILE"):
        record_protocol(custom)
    with pytest.raises(BenchError, match=r"not built in \(--protocol .*smoke\.toml is protocol 'smoke'\); pass"):
        record_protocol(custom, PROTOCOL_DIR / "smoke.toml")  # a file, but of another protocol


def test_synthetic_data_edited_since_the_run_is_refused_saying_so(trained, tmp_path):
    """A review's find: synthetic data whose test labels were edited by hand kept its id (its marker's), so
    rescore scored the run's weights on the edited labels and wrote the authors' data id. Edited, the data is
    identified by its files: refused, with both ids and what differs."""
    import h5py

    from bench.records import read_record

    root, results, legacy = trained
    data = tmp_path / "data"
    shutil.copytree(root, data)
    rec = {**read_record(results, legacy["run_id"]), "data_root": str(data)}
    assert rec["data_id"].startswith("synthetic:") and run_model(rec, results)[1].root == data  # as written: its data
    with h5py.File(next((data / "test_vol_h5").iterdir()), "r+") as f:  # one voxel of a test label relabelled
        f["label"][0, 0, 0] = (f["label"][0, 0, 0] + 1) % 9
    with pytest.warns(UserWarning, match="synthetic data edited since it was generated"), \
            pytest.raises(BenchError, match=rf"run {rec['run_id']}: the data at {data} changed since it was scored \("
                                            rf"files, sizes or content differ: data id {rec['data_id']} then, {data} "
                                            r"has id files:\w+: its files were edited since they were generated\), so "
                                            r"it cannot be rescored on it$"):
        rescore_record(rec, "strict", results, CPU)


def test_rescored_records_say_where_they_were_scored_and_other_devices_are_warned(trained, tmp_path):
    from bench.rescore import other_device_warning

    _, results, legacy = trained
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    rec = json.loads(record_path(copy, legacy["run_id"]).read_text(encoding="utf-8"))
    new = rescore_record(rec, "strict-monai", copy, CPU)
    assert new["device"] == legacy["device"]  # the run's training device stays the run's
    assert new["rescored_with"]["device"]["device"] == "cpu" and "torch" in new["rescored_with"]["packages"]
    assert other_device_warning([rec], CPU, "rescored") is None
    gpu = {**rec, "device": {**rec["device"], "device": "cuda"}}
    assert other_device_warning([gpu, rec], CPU, "rescored") == (
        "runs scored on cuda are rescored on cpu: numbers can differ from the runs' own (autocast, TF32 and "
        "cuDNN kernels apply on CUDA only); --device cuda repeats their conditions")


def test_a_record_another_rescore_wrote_meanwhile_skips_the_run(trained, tmp_path, monkeypatch):
    """Two rescores of one folder: the slower one's exclusive write failed ("already exists") and
    ended the command, the runs after it never scored."""
    from typer.testing import CliRunner

    import bench.rescore
    from bench.cli import app

    _, results, legacy = trained
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    for other in (copy / "records").glob("*.*.json"):  # what other tests of this module rescored into it
        other.unlink()

    def raced(rec, policy, results_dir, *args, **kwargs):  # the other process finished first
        record_path(results_dir, rescore_id(rec["run_id"], policy)).write_text("{}", encoding="utf-8")
        raise BenchError("a record with that run_id already exists")

    monkeypatch.setattr(bench.rescore, "rescore_record", raced)
    out = CliRunner().invoke(app, ["rescore", "--policy", "strict", "--results", str(copy)])
    assert out.exit_code == 0 and "scored meanwhile by another process, skipped" in out.output


def test_rescoring_into_mm_needs_every_test_case_s_spacing(trained, tmp_path):
    """A review's find: bench run refuses a spacing table that leaves test volumes in voxels under a
    policy scoring in mm, but the usual way there, legacy-synapse rescored into strict, did not."""
    import h5py

    from bench.data import open_dataset
    from bench.data.synth import MARKER

    root, _, _ = trained
    data = tmp_path / "data"
    shutil.copytree(root, data)
    (data / MARKER).unlink()
    cases = open_dataset("synapse", data).test_ids()
    for case in cases:  # as TransUNet's files: no spacing attribute
        with h5py.File(data / "test_vol_h5" / f"{case}.npy.h5", "r+") as f:
            del f.attrs["spacing"]
    (data / "spacing.csv").write_text(f"case,d,h,w\n{cases[0]},3.0,0.7,0.7\n", encoding="utf-8")  # the others left out
    assert len(cases) > 1  # so that some are left out
    rec = _run(data, tmp_path / "res", "legacy-synapse")  # voxels for all: the table is not read
    with pytest.raises(BenchError, match=r"spacing\.csv: no line for .*: (its|their) HD95 would be in voxels"):
        rescore_record(rec, "strict", tmp_path / "res", CPU)


def test_records_copied_without_their_weights_are_one_line_and_long_failure_lists_are_cut(trained, tmp_path,
                                                                                          bench_here):
    """From a scale journey: 1,050 records without runs/ printed a FAILED line each, then an error line of
    37 KB naming every run id."""
    _, results, legacy = trained
    copy = tmp_path / "results"
    ids = [f"{legacy['run_id']}-{i:02d}" for i in range(12)]
    for run_id in ids:
        write_record({**legacy, "run_id": run_id}, copy)
    for command in ("rescore", "predict"):
        extra = ["--policy", "strict"] if command == "rescore" else ["--out", tmp_path / "pred"]
        proc = bench_here(command, "--results", copy, *extra, check=False)
        verb = "rescored" if command == "rescore" else "predicted"
        assert proc.returncode == 2 and proc.stderr == (
            f"error: none of the 12 runs has its weights under {copy / 'runs'} (e.g. {ids[0]}/checkpoints/final.pt), "
            f"which they are {verb} from: were the records copied without the runs/ folder bench run wrote beside "
            "them?\n")
        assert not (tmp_path / "pred").exists()  # refused before --out is made
    shutil.copytree(results / "runs" / legacy["run_id"], copy / "runs" / ids[0])  # one of them has its weights
    proc = bench_here("rescore", "--results", copy, "--policy", "strict", check=False)
    assert proc.returncode == 2 and proc.stderr.count(": FAILED: ") == 11
    assert proc.stderr.splitlines()[-1].startswith(
        f"error: 11 of 12 run(s) could not be rescored ({', '.join(ids[1:6])} (and 6 more)), the others were; ")


def test_a_spacing_table_added_after_a_run_scored_in_voxels_keeps_its_data(trained, tmp_path):
    """From a predictions journey: bench predict's warning of 1 mm voxels advises a spacing.csv, and adding
    it made a legacy-synapse run's data "changed since it was scored" (its scores, in voxels, read none)."""
    from bench.data import open_dataset
    from bench.data.synth import MARKER
    from bench.predict import plan_predict, predict_run

    root, _, _ = trained
    data = tmp_path / "data"
    shutil.copytree(root, data)
    (data / MARKER).unlink()
    legacy = _run(data, tmp_path / "res", "legacy-synapse")
    strict = _run(data, tmp_path / "res", "strict")
    cases = open_dataset("synapse", data).test_ids()
    (data / "spacing.csv").write_text("case,d,h,w\n" + "".join(f"{c},3.0,0.7,0.7\n" for c in cases), encoding="utf-8")
    assert open_dataset("synapse", data).content_id() != legacy["data_id"]
    folder, written = predict_run(legacy, tmp_path / "res", tmp_path / "pred", CPU)
    assert written == len({row["case"] for row in legacy["per_case"]})
    # a run scored in mm read the spacings: for it the data did change
    with pytest.raises(BenchError, match=rf"run {strict['run_id']}: the data at {data} changed since it was scored"):
        predict_run(strict, tmp_path / "res", tmp_path / "pred", CPU)
    # rescoring it into a policy that reads the table is a change of its data, as for the strict run (its
    # record would name data without the table its HD95 in mm came from)
    with pytest.raises(BenchError, match=rf"run {legacy['run_id']}: the data at {data} changed since it was scored"):
        rescore_record(legacy, "strict", tmp_path / "res", CPU)
    assert rescore_record(strict, "legacy-synapse", tmp_path / "res", CPU)["metrics"]  # into voxels: read none
    # bench run finds the legacy run finished, and would train the strict one again
    for policy, same in (("legacy-synapse", True), ("strict", False)):
        proto = load_protocol("smoke").with_overrides(img_size=32, max_iterations=3, max_cases=2)
        (spec,) = plan_grid(models=["unet"], dataset="synapse", protocol=proto, seeds=[0], data_root=data,
                            synthetic=False, results_dir=tmp_path / "res", policy=policy,
                            model_overrides=dict(get_entry("unet").tiny))
        assert (spec.key == (legacy if policy == "legacy-synapse" else strict)["run_id"]) is same
    assert {r["run_id"] for r in plan_predict(tmp_path / "res")} == {legacy["run_id"], strict["run_id"]}


def test_data_moved_since_the_run_is_found_by_its_identity(trained, tmp_path):
    """A results folder copied to a colleague's machine: the data was no longer at the recorded path,
    and rescore and predict had no way to be told where it is. --data-root gives candidates; a run
    takes the one holding the very data it was scored on, and its new record names the folder read."""
    import json as _json

    from typer.testing import CliRunner

    from bench.cli import app
    from bench.data import synthetic_identity
    from bench.data.synth import MARKER, synthesize
    from bench.records import read_record
    from bench.rescore import DataRoots

    root, results, legacy = trained
    bob = tmp_path / "bob"
    shutil.copytree(results, bob)
    for other_policy in (bob / "records").glob(f"{legacy['run_id']}.*.json"):  # other tests' rescores
        other_policy.unlink()
    moved = tmp_path / "moved data"
    shutil.copytree(root, moved)
    rec = read_record(bob, legacy["run_id"])
    rec["data_root"] = str(tmp_path / "alice" / "synthetic" / root.name)  # bench run --synthetic's, on alice's machine
    record_path(bob, rec["run_id"]).write_text(_json.dumps(rec), encoding="utf-8")
    with pytest.raises(BenchError, match=r"its data .*alice.* is not there; if it moved, pass its folder now as "
                                         r"--data-root DIR \(checked to hold the data the run was scored on\); "
                                         rf"synthetic data: `bench run` of its grid with --synthetic --results {bob} "
                                         r"makes it again \(its finished runs are skipped\)$"):
        rescore_record(rec, "strict", bob, CPU)
    # synthetic data of bench data synth's, elsewhere: bench run --synthetic would make other data (and train anew);
    # the record keeps how it was made, so the error gives the command that makes it where the record looks
    mine = {**rec, "data_root": str(tmp_path / "alice" / "mydata")}
    with pytest.raises(BenchError, match=rf"synthetic data: `bench data synth --like synapse --out "
                                         rf"{tmp_path / 'alice' / 'mydata'} --seed 0` makes it again$"):
        run_model(mine, bob)
    older = {**mine, "synthetic_made": None}  # a record written before it kept how
    with pytest.raises(BenchError, match=r"; synthetic data: the same `bench data synth` options \(--like, --seed, "
                                         r"--option\) make it again$"):
        run_model(older, bob)
    with pytest.raises(BenchError, match=r"is not there; if it moved, pass its folder now as --data-root DIR "
                                         r"\(checked to hold the data the run was scored on\)$"):
        run_model({**rec, "synthetic": False}, bob)
    other = synthesize("synapse", tmp_path / "other", seed=1)  # synapse data too, of another identity
    with pytest.raises(BenchError, match=rf"--data-root {other} holds other data than it was scored on \(synapse "
                                         rf"data of id {rec['data_id']}; {other} has id {synthetic_identity(other)}\)"):
        rescore_record(rec, "strict", bob, CPU, data_roots=DataRoots([other]))
    # the very files, copied without the marker that made them synthetic data: the error says the marker is missing
    bare = tmp_path / "bare"
    shutil.copytree(root, bare)
    (bare / MARKER).unlink()
    with pytest.raises(BenchError, match=rf"{bare} has id files:\w+: the files the run was scored on, without the "
                                         rf"marker {MARKER} that identifies them as synthetic data; copy it in"):
        rescore_record(rec, "strict", bob, CPU, data_roots=DataRoots([bare]))
    new = rescore_record(rec, "strict", bob, CPU, data_roots=DataRoots([tmp_path / "bob", other, moved]))
    assert new["data_root"] == str(moved.resolve())  # the folder scored, not alice's
    out = tmp_path / "pred"
    cli = CliRunner().invoke(app, ["predict", "--results", str(bob), "--out", str(out), "--data-root", str(moved)])
    assert cli.exit_code == 0, cli.output
    manifest = _json.loads((out / legacy["run_id"] / "prediction.json").read_text(encoding="utf-8"))
    assert manifest["data_root"] == str(moved.resolve())
    home = tmp_path / "home"
    CliRunner().invoke(app, ["predict", "--results", str(results), "--out", str(home), "--run", legacy["run_id"]])
    files = sorted(p.name for p in (out / legacy["run_id"]).glob("*.nii.gz"))
    assert files and all((out / legacy["run_id"] / f).read_bytes() == (home / legacy["run_id"] / f).read_bytes()
                         for f in files)
    # what cannot be checked or found is said, not guessed
    rec.pop("data_id")
    with pytest.raises(BenchError, match=r"its record names no data id \(an older bench\), so --data-root .* cannot "
                                         r"be checked"):
        run_model(rec, bob, data_roots=DataRoots([moved]))
    with pytest.raises(BenchError, match=r"--data-root .*prediction.json: not a folder"):
        DataRoots([out / legacy["run_id"] / "prediction.json"])


def _strict_spec(root, results):
    return _spec(root, results, "strict")


def _alone(trained, tmp_path):
    """A copy of the module's results without what other tests rescored into it."""
    copy = tmp_path / "results"
    shutil.copytree(trained[1], copy)
    for other in (copy / "records").glob("*.*.json"):
        other.unlink()
    return copy


def test_a_rescore_and_a_run_under_its_policy_never_both_record_one_training(trained, tmp_path, monkeypatch):
    """A concurrency journey: `bench run --policy strict` beside `bench rescore --policy strict` on one
    folder wrote both records of one training (seed 0 weighed double on the board). Each now claims
    the record the rescore writes; the one that finds it held skips, and the rescore looks again."""
    from typer.testing import CliRunner

    import bench.claim
    from bench.claim import claim_run
    from bench.cli import app
    from bench.run import run_grid

    root, _, legacy = trained
    copy = _alone(trained, tmp_path)
    spec = _strict_spec(root, copy)
    twin = rescore_id(legacy["run_id"], "strict")
    with claim_run(copy, twin):  # a rescore scoring it now: the run waits its turn
        with pytest.raises(BenchError, match=r"1 of 1 run\(s\) were being run by other processes"):
            run_grid([spec], results_dir=copy, device=CPU, say=lambda *a: None)
        out = CliRunner().invoke(app, ["rescore", "--policy", "strict", "--results", str(copy)])
    assert f"{twin}: being scored or trained under strict by pid" in out.output
    assert isinstance(out.exception, BenchError)  # the command's one error line: exit 2
    assert "1 of 1 run(s) were being scored or trained under strict by other processes" in str(out.exception)
    assert not list((copy / "records").glob("*.strict.json")) and not record_path(copy, spec.key).is_file()
    assert not (copy / "runs" / twin).exists()  # the claims' folders went with them

    claim = bench.claim.claim_run

    def trained_meanwhile(results_dir, run_id):  # the run finished between the rescore's plan and its claim
        if run_id == twin and not ran:
            ran.append(1)  # (the run claims the twin too: once)
            run_grid([spec], results_dir=copy, device=CPU, say=lambda *a: None)
        return claim(results_dir, run_id)

    ran = []

    monkeypatch.setattr(bench.claim, "claim_run", trained_meanwhile)
    out = CliRunner().invoke(app, ["rescore", "--policy", "strict", "--results", str(copy)])
    assert out.exit_code == 0 and f"{twin}: trained under strict meanwhile" in out.output
    assert record_path(copy, spec.key).is_file() and not record_path(copy, twin).is_file()


def test_runs_another_process_held_and_finished_meanwhile_end_the_grid_well(trained, tmp_path, monkeypatch):
    """Two jobs given one grid: each skipped the runs the other held, and both exited 2 although every
    run had finished by then (a scheduler marks both failed)."""
    import bench.claim
    from bench.run import run_grid

    root, _, _ = trained
    copy = _alone(trained, tmp_path)
    spec = _strict_spec(root, copy)

    def held_then_done(results_dir, run_id):
        # the other process's record, by the grid's end
        record_path(results_dir, run_id).write_text("{}", encoding="utf-8")
        return "pid 1 on node7 since 2026-12-06 07:00:00 UTC"

    monkeypatch.setattr(bench.claim, "claim_run", held_then_done)
    said = []
    run_grid([spec], results_dir=copy, device=CPU, say=said.append)
    assert said == [f"  {spec.key}: being run by pid 1 on node7 since 2026-12-06 07:00:00 UTC, skipped",
                    f"bench run: 0 finished, 1 skipped (done already); records in {copy / 'records'}; next: "
                    f"bench report --results {copy}"]  # done by that process meanwhile


def test_work_held_by_the_other_kind_of_command_and_done_meanwhile_ends_well(trained, tmp_path, monkeypatch):
    """A review: the held runs' recheck looked for the record this command would have written only, so a
    rescore whose run was trained under the policy meanwhile (or a run whose training was rescored into
    it) still exited 2, its work done."""
    from typer.testing import CliRunner

    import bench.claim
    from bench.cli import app
    from bench.run import run_grid

    root, _, legacy = trained
    copy = _alone(trained, tmp_path)
    spec = _strict_spec(root, copy)
    twin = rescore_id(legacy["run_id"], "strict")
    claim = bench.claim.claim_run

    def run_holds_it(results_dir, run_id):  # a bench run --policy strict holds the twin, and finishes
        if run_id != twin:
            return claim(results_dir, run_id)
        monkeypatch.setattr(bench.claim, "claim_run", claim)
        run_grid([spec], results_dir=copy, device=CPU, say=lambda *a: None)
        return "pid 1 on node7 since 2026-12-06 07:00:00 UTC"

    monkeypatch.setattr(bench.claim, "claim_run", run_holds_it)
    out = CliRunner().invoke(app, ["rescore", "--policy", "strict", "--results", str(copy)])
    assert out.exception is None and f"{twin}: being scored or trained under strict by pid 1" in out.output
    assert record_path(copy, spec.key).is_file() and not record_path(copy, twin).is_file()

    again = _alone(trained, tmp_path / "2")
    spec = _strict_spec(root, again)

    def rescore_holds_it(results_dir, run_id):  # a bench rescore holds the twin ...
        return claim(results_dir, run_id) if run_id != twin else "pid 1 on node7 since 2026-12-06 07:00:00 UTC"

    def finished(line):  # ... and writes it by the grid's end
        said.append(line)
        shutil.copy(record_path(again, legacy["run_id"]), record_path(again, twin))

    monkeypatch.setattr(bench.claim, "claim_run", rescore_holds_it)
    said = []
    run_grid([spec], results_dir=again, device=CPU, say=finished)  # no BenchError: nothing left undone
    assert said == [f"  {spec.key}: being run by pid 1 on node7 since 2026-12-06 07:00:00 UTC (scoring it under "
                    "strict: bench rescore), skipped", f"bench run: 0 finished, 1 skipped (done already); records in "
                    f"{again / 'records'}; next: bench report --results {again}"]


def test_a_rescore_in_progress_leaves_no_run_unrecorded_and_no_record_half_written(trained, tmp_path, monkeypatch):
    """A report while `bench rescore` scores: the rescore claims the record it writes (runs/<run id>.<policy>/,
    bench.claim) and writes it whole once scored, so the claim's folder is no run without a record, and the
    records read are the run's alone."""
    from typer.testing import CliRunner

    import bench.rescore
    from bench.cli import app
    from bench.records import unrecorded_runs

    _, _, legacy = trained
    copy = _alone(trained, tmp_path)
    twin = rescore_id(legacy["run_id"], "strict")
    evaluate, seen = bench.rescore.evaluate, []
    boards = [(legacy["dataset"], legacy["protocol"]["name"])]

    def midway(*args, **kwargs):  # scoring now: its claim held, its record not written
        seen.append(((copy / "runs" / twin / ".claim").is_file(), list(load(copy)["run_id"]),
                     unrecorded_runs(copy, boards)))
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(bench.rescore, "evaluate", midway)
    out = CliRunner().invoke(app, ["rescore", "--policy", "strict", "--results", str(copy)])
    assert out.exit_code == 0, out.output
    assert seen == [(True, [legacy["run_id"]], [])]
    assert record_path(copy, twin).is_file() and not (copy / "runs" / twin).exists()  # written, claim released
    # the same folder with the run's record gone: the run is named, the rescore's folder is not
    record_path(copy, legacy["run_id"]).unlink()
    (copy / "runs" / twin).mkdir()
    (found,) = unrecorded_runs(copy, boards)
    assert found["run_id"] == legacy["run_id"] and found["why"].endswith("its rescore under strict remains")


def test_other_data_says_what_the_folder_found_is(tmp_path):
    """other_data, for an error naming data that is not a run's: not that dataset's, its id, and for a run on
    synthetic data found as files, whether the marker was lost (same files), the files edited, or neither."""
    from bench.data.synth import MARKER, WRITTEN
    from bench.rescore import other_data

    rec = {"dataset": "synapse", "data_id": "synthetic:aa", "synthetic_made": {WRITTEN: {"synapse": "files:bb"}}}
    assert other_data(rec, tmp_path, None) == f"{tmp_path} does not open as synapse data"
    assert other_data(rec, tmp_path, "synthetic:cc") == f"{tmp_path} has id synthetic:cc"
    assert other_data({**rec, "data_id": "files:aa"}, tmp_path, "files:cc") == f"{tmp_path} has id files:cc"
    assert other_data(rec, tmp_path, "files:bb").startswith(f"{tmp_path} has id files:bb: the files the run was "
                                                            f"scored on, without the marker {MARKER}")
    assert other_data(rec, tmp_path, "files:cc") == f"{tmp_path} has id files:cc and no marker {MARKER} (synthetic " \
                                                    "data holds one)"
    (tmp_path / MARKER).write_text("{}\n", encoding="utf-8")
    assert other_data(rec, tmp_path, "files:bb") == f"{tmp_path} has id files:bb: its files were edited since they " \
                                                    "were generated"


def test_a_run_trained_again_has_its_rescore_left_off_the_board_until_scored_again(trained, tmp_path, monkeypatch):
    """A housekeeping journey: a run trained again (its record deleted, bench run training it afresh to other
    weights) kept its old strict record on the board, beside the new weights, unsaid, and bench rescore said
    "nothing to score"."""
    from typer.testing import CliRunner

    import bench.run
    from bench.cli import app
    from bench.fileio import file_sha256
    from bench.run import run_grid

    root, _, legacy = trained
    results = _alone(trained, tmp_path)
    (rec,) = plan_rescore(results, "strict")
    old = rescore_record(rec, "strict", results, CPU)
    final = weights_path(results, legacy)
    assert old["scored_weights"] == legacy["scored_weights"] == {"file": "final.pt", "sha256": file_sha256(final)}
    record_path(results, legacy["run_id"]).unlink()
    seeded = bench.run.seed_everything  # other initial weights stand for another thread count's training
    monkeypatch.setattr(bench.run, "seed_everything", lambda seed: seeded(seed + 1))
    lines = []
    with pytest.warns(UserWarning, match="an earlier attempt's checkpoint"):  # its folder kept: trained afresh
        run_grid([_spec(root, results, "legacy-synapse")], results_dir=results, device=CPU, say=lines.append)
    new = json.loads(record_path(results, legacy["run_id"]).read_text(encoding="utf-8"))
    assert new["scored_weights"]["sha256"] == file_sha256(final) != old["scored_weights"]["sha256"]
    said = (f"{record_path(results, old['run_id'])} scored the weights of an earlier training of run {legacy['run_id']}, "
            f"trained again since: `bench rescore --policy strict --results {results}` scores the new weights")
    assert f"  note: {legacy['run_id']}: {said}" in lines
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        out = CliRunner().invoke(app, ["report", "--results", str(results), "--format", "csv"])
    assert out.exit_code == 0, out.output
    assert f"{said}; left out of its board until then" in [str(w.message) for w in warned]
    assert ",strict," not in out.output and ",legacy-synapse," in out.output

    with warnings.catch_warnings(record=True) as warned:  # planned again: its own line says so, no board's warning
        warnings.simplefilter("always")
        assert [r["run_id"] for r in plan_rescore(results, "strict")] == [legacy["run_id"]]
    assert not [w for w in warned if "earlier training" in str(w.message)]
    out = CliRunner().invoke(app, ["rescore", "--policy", "strict", "--results", str(results)])
    assert out.exit_code == 0 and "scored again: its run was trained again since its rescore" in out.output, out.output
    again = json.loads(record_path(results, old["run_id"]).read_text(encoding="utf-8"))
    assert again["scored_weights"] == new["scored_weights"] and again["train"] == new["train"]
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        assert sorted(load(results, current=True)["policy"]) == ["legacy-synapse", "strict"]
    assert not [w for w in warned if "earlier training" in str(w.message)]
    read = []  # nothing to score: each record read once (it read every rescore, and its run, twice)
    monkeypatch.setattr(records, "_read", lambda path, _read=records._read: read.append(path.name) or _read(path))
    assert plan_rescore(results, "strict") == [] and sorted(read) == sorted(p.name for p in (results / "records").iterdir())


def test_bench_run_under_the_policy_scores_a_rescore_of_an_earlier_training_again(trained, tmp_path, monkeypatch):
    """`bench run --policy strict` took a strict rescore of the run's earlier training (its run trained again
    since) as its training done and skipped it; the board left that rescore out, so nothing scored the new
    weights under strict. Now bench run scores them into it, as bench rescore does, without training."""
    import bench.run
    from bench.fileio import file_sha256
    from bench.claim import claim_run
    from bench.errors import HeldError
    from bench.rescore import rescored_twin, twin_state
    from bench.run import run_grid, run_state

    root, _, legacy = trained
    results = _alone(trained, tmp_path)
    (rec,) = plan_rescore(results, "strict")
    old = rescore_record(rec, "strict", results, CPU)
    record_path(results, legacy["run_id"]).unlink()
    seeded = bench.run.seed_everything  # other initial weights stand for another thread count's training
    monkeypatch.setattr(bench.run, "seed_everything", lambda seed: seeded(seed + 1))
    with pytest.warns(UserWarning, match="an earlier attempt's checkpoint"):
        run_grid([_spec(root, results, "legacy-synapse")], results_dir=results, device=CPU, say=lambda line: None)
    strict = _spec(root, results, "strict")
    assert rescored_twin(strict, results) == old["run_id"]
    twin, stale = twin_state(strict, results)
    assert twin is None and stale["run_id"] == legacy["run_id"]
    assert run_state(strict, results) == ("finished", f"rescored into its policy ({old['run_id']}) from an earlier "
                                                      f"training of run {legacy['run_id']}: bench run scores its "
                                                      "weights now")
    with claim_run(results, strict.key):  # held: bench run says so before reading its rescores, as --dry-run
        assert run_state(strict, results)[0] == "running"
        lines = []
        with pytest.raises(HeldError):
            run_grid([strict], results_dir=results, device=CPU, say=lines.append)
        assert any(line.startswith(f"  {strict.key}: being run by ") for line in lines), lines
    lines, read = [], []
    reading = records.read_record
    monkeypatch.setattr(records, "read_record", lambda d, rid: read.append(rid) or reading(d, rid))
    run_grid([strict], results_dir=results, device=CPU, say=lines.append)
    # deciding to score it again reads the run's record and its rescore once (the rescore reads no more)
    assert sorted(read) == sorted([legacy["run_id"], old["run_id"]]), read
    assert f"  {strict.key}: the same training was rescored under strict ({old['run_id']}), from an earlier training " \
           f"of run {legacy['run_id']}, trained again since: scoring its weights now" in lines, lines
    assert lines[-1].startswith("bench run: 1 finished;"), lines
    again = json.loads(record_path(results, old["run_id"]).read_text(encoding="utf-8"))
    assert again["scored_weights"]["sha256"] == file_sha256(weights_path(results, legacy)) != \
        old["scored_weights"]["sha256"]
    assert not record_path(results, strict.key).is_file()  # scored, not trained a second time
    assert run_state(strict, results)[0] == "done" and plan_rescore(results, "strict") == []


def test_bench_run_trains_the_run_where_a_stale_rescore_s_weights_are_gone(trained, tmp_path, monkeypatch):
    """`bench run --policy strict` of a run whose strict rescore is of an earlier training, its run's weights
    deleted since, failed (final.pt not found) while --dry-run said it scores them: that rescore cannot be made
    current, so it does not count, and bench run trains the strict run itself (as --dry-run says)."""
    import bench.run
    from bench.rescore import twin_state
    from bench.run import run_grid, run_state

    root, _, legacy = trained
    results = _alone(trained, tmp_path)
    (rec,) = plan_rescore(results, "strict")
    rescore_record(rec, "strict", results, CPU)
    record_path(results, legacy["run_id"]).unlink()
    seeded = bench.run.seed_everything  # other initial weights stand for another thread count's training
    monkeypatch.setattr(bench.run, "seed_everything", lambda seed: seeded(seed + 1))
    with pytest.warns(UserWarning, match="an earlier attempt's checkpoint"):
        run_grid([_spec(root, results, "legacy-synapse")], results_dir=results, device=CPU, say=lambda line: None)
    for path in (results / "runs" / legacy["run_id"] / "checkpoints").glob("*.pt"):
        path.unlink()
    strict = _spec(root, results, "strict")
    assert twin_state(strict, results) == (None, None)
    assert run_state(strict, results) == ("missing", "")
    lines = []
    run_grid([strict], results_dir=results, device=CPU, say=lines.append)
    assert record_path(results, strict.key).is_file() and lines[-1].startswith("bench run: 1 finished;"), lines


def test_a_resume_evaluating_the_same_final_pt_keeps_its_rescore(trained, tmp_path):
    """`bench run --resume` of a finished run whose record was deleted evaluates final.pt again without
    training: the same weights, so its rescore stays on the board."""
    root, _, legacy = trained
    results = _alone(trained, tmp_path)
    (rec,) = plan_rescore(results, "strict")
    rescore_record(rec, "strict", results, CPU)
    record_path(results, legacy["run_id"]).unlink()
    again = run_one(_spec(root, results, "legacy-synapse"), results_dir=results, device=CPU, resume=True)
    assert again["train"]["resumed_from"] is not None  # nothing trained: its last checkpoint was the last epoch's
    assert again["scored_weights"] == legacy["scored_weights"]
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        assert len(load(results, current=True)) == 2
    assert not [w for w in warned if "earlier training" in str(w.message)]
    assert plan_rescore(results, "strict") == []
