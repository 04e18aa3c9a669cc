"""`bench score`: predictions made elsewhere get the numbers a run's record holds for the same label maps
(round trip through bench predict), the numbers medpy computes (hand-made maps), and one-line errors."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from medpy.metric import binary as medpy

from bench.data import open_dataset, synthesize
from bench.errors import BenchError
from bench.metrics import hd95_penalty
from bench.predict import MANIFEST, predict_run
from bench.protocol import PROTOCOL_DIR, load_protocol
from bench.registry import get_entry
from bench.rescore import record_protocol
from bench.run import plan_grid, run_one
from bench.score import render, score_predictions
from tests.fixtures import md_rows, run_bench_here

CPU = torch.device("cpu")
SMOKE = load_protocol("smoke").with_overrides(img_size=32, max_iterations=3, max_cases=2)
SMOKE_ALL = load_protocol("smoke")  # every test case scored


def _train(dataset, root, results, policy=None):
    (spec,) = plan_grid(models=["unet"], dataset=dataset, protocol=SMOKE, seeds=[0], data_root=root,
                        synthetic=False, results_dir=results, policy=policy,
                        model_overrides=dict(get_entry("unet").tiny))
    return run_one(spec, results_dir=results, device=CPU)


def _same(value, expected):
    return (math.isnan(value) and math.isnan(expected)) if isinstance(expected, float) and math.isnan(expected) \
        else value == pytest.approx(expected, rel=0, abs=1e-12)


def _assert_scores_are_the_record(scores, rec):
    assert scores.hd95_unit == rec["hd95_unit"] and scores.scored["policy"] == rec["policy"]
    assert scores.scored["run_id"] == rec["run_id"] and scores.scored["n_cases"] == len({r["case"] for r in rec["per_case"]})
    assert set(scores.metrics) == set(rec["metrics"])
    for key, value in rec["metrics"].items():
        assert _same(scores.metrics[key], value), (key, scores.metrics[key], value)
    rows = scores.per_case.to_dict("records")
    assert len(rows) == len(rec["per_case"])
    for row, want in zip(rows, rec["per_case"]):
        for key, value in want.items():
            assert row[key] == value or _same(row[key], value), (key, row, want)


@pytest.mark.parametrize("policy", ["legacy-synapse", "strict"])
def test_a_run_predicted_then_scored_gives_its_record(tmp_path, policy):
    root = synthesize("synapse", tmp_path / "data", n_train=2, n_test=3, depth=4, size=32)
    rec = _train("synapse", root, tmp_path / "res", policy=policy)
    folder, _ = predict_run(rec, tmp_path / "res", tmp_path / "out", CPU)
    scores = score_predictions(folder, open_dataset("synapse", root), record_protocol(rec), policy)
    _assert_scores_are_the_record(scores, rec)
    assert scores.hd95_unit == ("mm" if policy == "strict" else "voxels")
    # misses (the tiny model's): HD95 0 under legacy-synapse, the penalty under strict; said under both, after
    # legacy-synapse's note that the authors' scoring computes DSC and HD95 alone
    authors = ["legacy-synapse is the authors' scoring"] if policy == "legacy-synapse" else []
    assert [n.split(" in a case")[0].split(" (TransUNet's")[0] for n in scores.notes] == [
        *authors, f"{policy} scores a structure predicted nowhere"]
    # no --policy: the policy the run was scored under, as its folder's manifest says (not the protocol's)
    again = score_predictions(folder, open_dataset("synapse", root), record_protocol(rec))
    assert again.scored["policy"] == policy and again.metrics == scores.metrics
    if policy == "strict":  # not the dataset's default (the smoke protocol names none): said
        assert again.notes == [f"policy strict: the one bench predict's run {rec['run_id']} was scored under",
                               *scores.notes]
    else:
        assert again.notes == scores.notes
    other = "strict" if policy == "legacy-synapse" else "legacy-synapse"
    notes = score_predictions(folder, open_dataset("synapse", root), record_protocol(rec), other).notes
    assert f"was scored under {policy}; these numbers are under {other}" in notes[1 if other == "legacy-synapse" else 0]


def test_2d_nnunet_pngs_predicted_then_scored_give_the_record(tmp_path):
    root = synthesize("nnunet", tmp_path / "data", dims=2, n_cases=5, size=32)
    rec = _train("nnunet", root, tmp_path / "res")
    folder, _ = predict_run(rec, tmp_path / "res", tmp_path / "out", CPU)
    scores = score_predictions(folder, open_dataset("nnunet", root), record_protocol(rec))
    _assert_scores_are_the_record(scores, rec)
    assert scores.hd95_unit == "pixels"


def test_a_folds_test_cases_are_scored_and_the_fold_said(tmp_path):
    """--fold K scores fold K's test cases; the output said no fold, so two folds' tables read alike, nor the
    split (nnU-Net's folds drawn by bench, or a splits_final.json's), which only the JSON held."""
    import shutil

    root = synthesize("nnunet", tmp_path / "data", dims=2, n_cases=5, size=32)
    ds = open_dataset("nnunet", root, fold=1)
    folder = tmp_path / "preds"
    folder.mkdir()
    for case_id in ds.test_ids():  # the ground truth itself, as a prediction
        shutil.copyfile(root / "labelsTr" / ds.prediction_name(case_id), folder / ds.prediction_name(case_id))
    scores = score_predictions(folder, ds, SMOKE)
    assert scores.scored["fold"] == 1 and scores.metrics["dice"] == 1.0
    assert f"{len(ds.test_ids())} cases of " in render(scores, "md") and " fold 1 (" in render(scores, "md")
    assert f") · split: {ds.split_rule} · protocol" in render(scores, "md") and "KFold" in ds.split_rule
    with pytest.raises(BenchError, match="no test case scored here"):  # fold 0's test cases are others
        score_predictions(folder, open_dataset("nnunet", root, fold=0), SMOKE)


def test_an_nnunet_predict_folder_is_scored_its_other_files_aside(tmp_path):
    """nnUNetv2_predict writes dataset.json, plans.json, predict_from_raw_data_args.json beside the label maps
    (and a .npz and .pkl per case with --save_probabilities): none is a prediction. A label map's file of no
    scored case still is."""
    import shutil

    root = synthesize("nnunet", tmp_path / "data", dims=2, n_cases=5, size=32)
    ds = open_dataset("nnunet", root, fold=0)
    folder = tmp_path / "nnunet_out"
    folder.mkdir()
    for case_id in ds.test_ids():
        shutil.copyfile(root / "labelsTr" / ds.prediction_name(case_id), folder / ds.prediction_name(case_id))
        (folder / f"{case_id}.npz").write_bytes(b"probabilities")
        (folder / f"{case_id}.pkl").write_bytes(b"properties")
    for name in ("dataset.json", "plans.json", "predict_from_raw_data_args.json"):
        (folder / name).write_text("{}", encoding="utf-8")
    scores = score_predictions(folder, ds, SMOKE)
    assert scores.metrics["dice"] == 1.0 and scores.scored["run_id"] is None
    # the model's dataset.json, as nnUNetv2_predict copies it: the data's labels, scored; other ids refused (liver
    # and tumor swapped scored DSC 0.8 % where 84.9 % was right, unsaid)
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    (folder / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    assert score_predictions(folder, ds, SMOKE).metrics["dice"] == 1.0
    (folder / "dataset.json").write_text(json.dumps({**meta, "labels": {"background": 0, "lesion": 1, "organ": 2}}),
                                         encoding="utf-8")
    with pytest.raises(BenchError, match=r"nnunet_out/dataset.json \(the model's, as nnUNetv2_predict copies it\): its "
                                         r"labels \(background 0, lesion 1, organ 2\) are not the data's \(background "
                                         r"0, organ 1, lesion 2, .*data/dataset.json\)"):
        score_predictions(folder, ds, SMOKE)
    # the same ids named otherwise (capitalised): the same classes, scored with a note; a class named alike at
    # another id, or another id set, still refused
    (folder / "dataset.json").write_text(json.dumps({**meta, "labels": {"Background": 0, "Organ": 1, "Lesion": 2}}),
                                         encoding="utf-8")
    scores = score_predictions(folder, ds, SMOKE)
    assert scores.metrics["dice"] == 1.0
    assert scores.notes == [f"{folder}/dataset.json (the model's, as nnUNetv2_predict copies it): its labels "
                            "(Background 0, Organ 1, Lesion 2) name the data's ids otherwise (background 0, organ 1, "
                            f"lesion 2, {root}/dataset.json); scored as the data names them"]
    for labels in ({"background": 0, "Lesion": 1, "organ": 2}, {"background": 0, "organ": 1, "lesion": 2, "vessel": 3}):
        (folder / "dataset.json").write_text(json.dumps({**meta, "labels": labels}), encoding="utf-8")
        with pytest.raises(BenchError, match=r"are not the data's .*would be scored as other classes"):
            score_predictions(folder, ds, SMOKE)
    (folder / "dataset.json").write_text("{}", encoding="utf-8")
    (folder / f"extra{ds.file_ending}").write_bytes(b"x")
    with pytest.raises(BenchError, match=r"nnunet_out: extra\.png: no test case scored here"):
        score_predictions(folder, ds, SMOKE)
    for path in folder.glob(f"*{ds.file_ending}"):  # the probabilities alone: said what they are
        path.unlink()
    n = 2 * len(ds.test_ids())
    with pytest.raises(BenchError, match=rf"nnunet_out: no prediction files; .*; its {n} \.npz/\.pkl files \(e\.g\. "
                                         r".*\) were passed over as probabilities and their pickled properties: "
                                         r"nnUNetv2_predict writes each case's label map beside them$"):
        score_predictions(folder, ds, SMOKE)


def test_all_folds_score_every_case_once_pooled_as_the_folds_scored_alone(tmp_path, monkeypatch, capsys):
    """--fold all: a 5-fold cross-validation's folder (nnU-Net's cv_niftis_raw, every training case predicted by
    its own fold's model) scored as one, each case against its fold's split: the case rows are those each fold's
    own --fold K gives, and the numbers the mean over all cases pooled (nnU-Net's cross-validation summary), not
    the mean of the folds' means. A case without its file is named; one fold's files alone name that fold."""
    import shutil

    import pandas as pd

    root = synthesize("nnunet", tmp_path / "data", dims=2, n_cases=7, size=32)  # folds of 2, 2, 1, 1, 1 cases
    every = tmp_path / "cv_niftis_raw"
    every.mkdir()
    ds = open_dataset("nnunet", root, fold="all")
    for shift, case_id in enumerate(ds.cases):  # each case off by its own shift: its own DSC
        case = ds.load_test(case_id)
        ds.write_prediction(case, np.roll(case.label, shift, axis=1), every / ds.prediction_name(case_id))
    base = ["score", "--dataset", "nnunet", "--data-root", root, "--protocol", "smoke", "--format", "json"]

    def scored(folder, fold):
        return json.loads(run_bench_here(monkeypatch, capsys, *base, "--predictions", folder, "--fold", fold).stdout)

    folds = []
    for k in range(5):  # each fold's validation/ folder, scored alone
        own = tmp_path / f"fold_{k}" / "validation"
        own.mkdir(parents=True)
        for case_id in open_dataset("nnunet", root, fold=k).test_ids():
            shutil.copyfile(every / ds.prediction_name(case_id), own / ds.prediction_name(case_id))
        folds.append(scored(own, str(k)))
    pooled = scored(every, "all")
    assert pooled["scored"]["fold"] == "all" and pooled["scored"]["n_folds"] == 5
    assert pooled["scored"]["n_cases"] == 7 and len(pooled["per_case"]) == 7 * 2  # each case once, 2 classes
    rows = pd.DataFrame([row for f in folds for row in f["per_case"]])
    key = ["case", "class"]
    pd.testing.assert_frame_equal(pd.DataFrame(pooled["per_case"]).sort_values(key, ignore_index=True),
                                  rows.sort_values(key, ignore_index=True))
    # strict: each class's mean over the cases that hold it, then over classes
    assert math.isclose(pooled["metrics"]["dice"], rows.groupby("class")["dice"].mean().mean())
    assert not math.isclose(pooled["metrics"]["dice"], np.mean([f["metrics"]["dice"] for f in folds]))
    assert pooled["per_fold"] == [{"fold": k, "n_cases": f["scored"]["n_cases"], "dice": f["metrics"]["dice"]}
                                  for k, f in enumerate(folds)]
    md = run_bench_here(monkeypatch, capsys, *base[:-2], "--predictions", every, "--fold", "all")
    assert "7 cases of nnunet:" in md.stdout and " · split: all 5 folds' validation cases, each case once, of " \
        "the 5 folds nnU-Net v2 generates" in md.stdout
    assert "split: all 5 folds' validation cases, 7 cases, each once, of the 5 folds" in md.stderr
    # a splits_final.json's folds: their val cases, each once (a case in two folds' val lists is one case)
    vals = [ds.cases[:3], ds.cases[3:], ds.cases[2:3]]
    (root / "splits_final.json").write_text(json.dumps([{"train": [c for c in ds.cases if c not in val], "val": val}
                                                        for val in vals]), encoding="utf-8")
    theirs = open_dataset("nnunet", root, fold="all")
    assert theirs.test_ids() == ds.cases and theirs.fold_cases == vals and theirs.n_train_cases == 0
    assert scored(every, "all")["scored"]["n_folds"] == 3
    (root / "splits_final.json").unlink()

    # nnU-Net's crossval_results_folds_* with the postprocessed predictions one folder down: each folder alone
    shutil.copytree(every, every / "postprocessed")
    proc = run_bench_here(monkeypatch, capsys, *base, "--predictions", every, "--fold", "all", check=False)
    assert proc.returncode == 2 and f"postprocessed/ holds other predictions of the cases (nnU-Net's postprocessed " \
        f"ones beside the raw): score one folder at a time, --predictions {every / 'postprocessed'} or this" \
        in proc.stderr
    assert "scored here: the 7 validation case(s) of the 5 folds nnU-Net v2 generates" in proc.stderr
    assert scored(every / "postprocessed", "all")["metrics"] == pooled["metrics"]
    shutil.rmtree(every / "postprocessed")
    (every / "notes").mkdir()  # a folder down, files that are not the cases': no postprocessed set (a mutation audit)
    shutil.copyfile(every / ds.prediction_name(ds.cases[0]), every / "notes" / "summary.png")
    proc = run_bench_here(monkeypatch, capsys, *base, "--predictions", every, "--fold", "all", check=False)
    assert proc.returncode == 2 and "notes/summary.png: no test case scored here" in proc.stderr
    assert "postprocessed" not in proc.stderr
    shutil.rmtree(every / "notes")
    (every / ds.prediction_name("synth_004")).unlink()
    proc = run_bench_here(monkeypatch, capsys, *base, "--predictions", every, "--fold", "all", check=False)
    assert proc.returncode == 2 and "no prediction of test case(s) synth_004 (1 of 7; expected synth_004.png)" \
        in proc.stderr
    one = tmp_path / "fold_1" / "validation"  # one fold's folder given for all: that fold named
    proc = run_bench_here(monkeypatch, capsys, *base, "--predictions", one, "--fold", "all", check=False)
    assert proc.returncode == 2 and "the files here are fold 1's validation cases only: pass --fold 1" in proc.stderr
    two = tmp_path / "folds_0_1"  # two folds' files: no one fold to name (a mutation audit)
    shutil.copytree(tmp_path / "fold_0" / "validation", two)
    for path in one.iterdir():
        shutil.copyfile(path, two / path.name)
    proc = run_bench_here(monkeypatch, capsys, *base, "--predictions", two, "--fold", "all", check=False)
    assert proc.returncode == 2 and "no prediction of any test case of fold(s) 2, 3, 4 (" in proc.stderr
    assert "--fold" not in proc.stderr
    for bad in ("al", "1.0"):  # (an empty value: the CLI's own refusal)
        proc = run_bench_here(monkeypatch, capsys, *base, "--predictions", one, "--fold", bad, check=False)
        assert proc.returncode == 2 and proc.stderr.startswith(f"error: --fold {bad!r}: expected a fold number (0, 1, "
                                                               "...) or 'all'")
    # a negative fold is none (it was scored as fold 1's cases, and the table named that fold)
    proc = run_bench_here(monkeypatch, capsys, *base, "--predictions", one, "--fold", "-1", check=False)
    assert proc.returncode == 2 and "fold -1 does not exist" in proc.stderr, proc.stderr


def test_all_folds_under_a_capped_protocol_score_each_folds_first_cases(tmp_path, monkeypatch, capsys):
    """eval.max_cases capped the pooled list, so --fold all under a capped protocol scored the first folds' cases
    alone (and refused the others' files as unscored): each fold's run scores its first N validation cases, and
    so does --fold all, every fold's beside, said in the notes and the table's title."""
    import shutil

    root = synthesize("nnunet", tmp_path / "data", dims=2, n_cases=7, size=32)  # folds of 2, 2, 1, 1, 1 cases
    ds = open_dataset("nnunet", root, fold="all")
    every = tmp_path / "cv_niftis_raw"
    every.mkdir()
    for shift, case_id in enumerate(ds.cases):
        case = ds.load_test(case_id)
        ds.write_prediction(case, np.roll(case.label, shift, axis=1), every / ds.prediction_name(case_id))
    capped = load_protocol("smoke").with_overrides(max_cases=1)
    firsts = [val[0] for val in ds.fold_cases]
    second = next(val[1] for val in ds.fold_cases if len(val) > 1)
    cap = ("protocol 'smoke' scores each fold's first 1 validation case (eval.max_cases), as each fold's run does: 5 "
           "of the split's 7 cases")
    said = []  # the cap, said through say before any error about the cases
    with pytest.raises(BenchError, match=rf"{second}.png.*: no test case scored here; protocol 'smoke' scores each "
                                         r"fold's first 1 validation case only \(eval.max_cases\); scored here: 5 of "
                                         r"the 7 validation case\(s\) of the 5 folds nnU-Net v2 generates, drawn"):
        score_predictions(every, ds, capped, say=said.append)
    assert said == [cap]
    for case_id in ds.cases:
        if case_id not in firsts:
            (every / ds.prediction_name(case_id)).unlink()
    scores = score_predictions(every, ds, capped)
    assert sorted(scores.per_case["case"].unique()) == sorted(firsts) and scores.scored["n_cases"] == 5
    for k, fold in enumerate(scores.per_fold):  # as fold k's own run under the protocol scores it
        own = tmp_path / f"fold_{k}"
        own.mkdir()
        shutil.copyfile(every / ds.prediction_name(firsts[k]), own / ds.prediction_name(firsts[k]))
        alone = score_predictions(own, open_dataset("nnunet", root, fold=k), capped)
        assert fold == {"fold": k, "n_cases": 1, "dice": alone.metrics["dice"]}
    assert scores.notes == [cap] and scores.said == 0  # no say: nothing said yet
    said = score_predictions(every, ds, capped, say=[].append)
    assert said.notes == [cap] and said.said == 1
    # the authors' scoring's note comes after what was said, never before it (the command prints notes[said:])
    said = score_predictions(every, ds, capped, "legacy-synapse", say=[].append)
    assert said.notes[:said.said] == [cap] and said.notes[said.said].startswith("legacy-synapse is the authors' ")
    md = render(scores, "md")
    assert "5 cases of nnunet:" in md and " · split: each fold's first 1 validation case, of the 5 folds nnU-Net v2 " \
        "generates, drawn by bench" in md
    # the command says the cap at once after the split's count of every case, and once
    toml = tmp_path / "capped.toml"
    smoke = (PROTOCOL_DIR / "smoke.toml").read_text(encoding="utf-8")
    toml.write_text(smoke.replace("max_cases = 0", "max_cases = 1").replace('name = "smoke"', 'name = "capped"'),
                    encoding="utf-8")
    proc = run_bench_here(monkeypatch, capsys, "score", "--predictions", every, "--dataset", "nnunet", "--data-root",
                          root, "--fold", "all", "--protocol", toml, "--format", "json")
    lines = proc.stderr.splitlines()
    assert "split: all 5 folds' validation cases, 7 cases, each once" in lines[0], lines
    assert lines[1:] == ["note: protocol 'capped' scores each fold's first 1 validation case (eval.max_cases), as each "
                         "fold's run does: 5 of the split's 7 cases"], lines


def test_nnunet_folders_given_by_mistake_say_what_they_hold_and_the_split_scored(tmp_path, monkeypatch, capsys):
    """What nnU-Net users point bench score at: a fold's validation/ folder without --fold (the fold to pass,
    and where nnU-Net keeps the splits_final.json bench reads beside dataset.json), the fold_K folder itself
    (beside its checkpoint and logs), predictions of imagesTs, every case (crossval_results_folds_*). Each
    error names the split scored, which the command says first, as bench run does."""
    import shutil

    from bench.data.nnunet import crossval_splits

    root = synthesize("nnunet", tmp_path / "Dataset900_Synth", n_cases=5, depth=4, size=16)
    ds = open_dataset("nnunet", root)
    (test,) = ds.test_ids()
    k, case = next((k, f["val"][0]) for k, f in enumerate(crossval_splits(ds.cases)) if f["val"] != [test])
    fold = tmp_path / "results" / f"fold_{k}"
    (fold / "validation").mkdir(parents=True)
    shutil.copyfile(root / "labelsTr" / f"{case}.nii.gz", fold / "validation" / f"{case}.nii.gz")
    (fold / "validation" / "summary.json").write_text("{}", encoding="utf-8")
    for name in ("checkpoint_final.pth", "progress.png", "training_log_2024_1_1_00_00_00.txt"):
        (fold / name).write_bytes(b"x")
    split = r"scored here: the 1 test case\(s\) of a split drawn by bench \(numpy's default_rng"
    with pytest.raises(BenchError, match=rf"validation: {case}.nii.gz: no test case scored here; they are validation "
                                         rf"cases of fold {k} of the 5 folds nnU-Net v2 generates: pass --fold {k} \(no "
                                         rf"splits_final.json in .*: nnU-Net keeps its folds in nnUNet_preprocessed/"
                                         rf"Dataset900_Synth/splits_final.json; bench reads that file copied beside "
                                         rf"dataset.json\); {split}"):
        score_predictions(fold / "validation", ds, SMOKE)
    assert score_predictions(fold / "validation", open_dataset("nnunet", root, fold=k), SMOKE).metrics["dice"] == 1.0
    # the test case's file beside it: the two are no one fold's validation cases, so no --fold is named
    shutil.copyfile(root / "labelsTr" / f"{test}.nii.gz", fold / "validation" / f"{test}.nii.gz")
    with pytest.raises(BenchError, match=rf"validation: {case}.nii.gz: no test case scored here; it is a training case "
                                         rf"of the split scored: give a folder holding the test cases' predictions "
                                         rf"only \(no splits_final.json .*\); {split}") as info:
        score_predictions(fold / "validation", ds, SMOKE)
    assert "--fold" not in str(info.value)
    (fold / "validation" / f"{test}.nii.gz").unlink()
    with pytest.raises(BenchError, match=rf"fold_{k}: checkpoint_final.pth, .*: no test case scored here; they are one "
                                         rf"folder down: --predictions {re.escape(str(fold / 'validation'))}; {split}"):
        score_predictions(fold, ds, SMOKE)
    # the command says the split before the error, as bench run says it
    proc = run_bench_here(monkeypatch, capsys, "score", "--predictions", fold / "validation", "--dataset", "nnunet",
                          "--data-root", root, "--protocol", "smoke", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith(f"note: no splits_final.json in {root}; fixed split")
    # nnU-Net's splits_final.json copied beside dataset.json: its folds are read (here the last tests the case)
    order = [*(c for c in ds.cases if c != case), case]
    (root / "splits_final.json").write_text(json.dumps(
        [{"train": [c for c in ds.cases if c != val], "val": [val]} for val in order]), encoding="utf-8")
    with pytest.raises(BenchError, match=rf"they are validation cases of fold 4 of {re.escape(str(root))}/"
                                         r"splits_final.json: pass --fold 4; scored here: the 1 test case\(s\) of "
                                         r"fold 0 of the data's splits_final.json"):
        score_predictions(fold / "validation", open_dataset("nnunet", root), SMOKE)
    (root / "splits_final.json").unlink()
    # imagesTs/labelsTs: no case bench scores
    for sub, name in (("imagesTs", "other_000_0000.nii.gz"), ("labelsTs", "other_000.nii.gz")):
        (root / sub).mkdir()
        shutil.copyfile(root / ("imagesTr" if sub == "imagesTs" else "labelsTr") / f"{test}{name[9:]}",
                        root / sub / name)
    held_out = tmp_path / "imagesTs_pred"
    held_out.mkdir()
    shutil.copyfile(root / "labelsTs" / "other_000.nii.gz", held_out / "other_000.nii.gz")
    with pytest.raises(BenchError, match=r"other_000.nii.gz: no test case scored here; other_000 is a case of "
                                         r"imagesTs/labelsTs, which bench does not score: it scores test cases drawn "
                                         rf"from labelsTr; {split}"):
        score_predictions(held_out, ds, SMOKE)
    # every case (crossval_results_folds_*): the training cases named so, and no example that is here already
    every = tmp_path / "crossval_results_folds_0_1_2_3_4"
    shutil.copytree(root / "labelsTr", every)
    with pytest.raises(BenchError, match=rf"these 4 are training cases of the split scored, and the folder holds every "
                                         rf"case: --fold all scores a cross-validation's predictions of every case, "
                                         rf"each against its own fold \(no splits_final.json .*\); {split}") as info:
        score_predictions(every, ds, SMOKE)
    assert "e.g." not in str(info.value)
    assert score_predictions(every, open_dataset("nnunet", root, fold="all"), load_protocol("smoke")).metrics[
        "dice"] == 1.0
    # nnU-Net's fold_all (nnUNetv2_train ... all) trained on every case: its validation/ is no cross-validation, so
    # the --fold all hint is not given, and every split refuses it, through a link too: one trimmed to the test
    # cases' files was scored without --fold (or with a fold's), its numbers those of cases the model trained on
    trained = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_all" / "validation"
    shutil.copytree(root / "labelsTr", trained)
    for split, cases in ((ds, [test]), (open_dataset("nnunet", root, fold=k), [case]), (ds, ds.cases)):
        for path in trained.iterdir():
            path.unlink()
        for name in cases:
            shutil.copyfile(root / "labelsTr" / f"{name}.nii.gz", trained / f"{name}.nii.gz")
        with pytest.raises(BenchError, match=rf"^--predictions {re.escape(str(trained))}: a folder of nnU-Net's "
                                             r"fold_all, whose model \(nnUNetv2_train DATASET CONFIG all\) trained on "
                                             r"every case, so its predictions are of cases it was trained on \(nothing "
                                             r"names the model's dataset: no plans.json in .* names it; predictions of "
                                             r"other cases, as an external test set's, are scored from a folder outside "
                                             r"any named fold_all\): no score "
                                             r"of it is a test score; a cross-validation fold's own folder "
                                             r"\(fold_K/validation\) is scored with --fold K$") as info:
            score_predictions(trained, split, SMOKE)
        assert "--fold all" not in str(info.value)
    (tmp_path / "linked").symlink_to(trained)
    for folder in (trained, tmp_path / "linked"):
        with pytest.raises(BenchError, match=rf"^--predictions {re.escape(str(folder))}: a folder of nnU-Net's "
                                             r"fold_all, whose model .* trained on every case, so its predictions are "
                                             r"of cases it was trained on \(.*\): no cross-validation score exists for them; "
                                             r"--fold all scores a cross-validation's predictions, each case by the "
                                             r"fold that did not train on it"):
            score_predictions(folder, open_dataset("nnunet", root, fold="all"), SMOKE)


def test_a_fold_all_folder_is_refused_only_as_a_model_of_this_data(tmp_path, monkeypatch, capsys):
    """bench score refused every path with a fold_all part as nnU-Net's fold "all" training score, an external
    test set's predictions by such a model too. Now its model's plans.json (or nnUNet_results/DatasetXXX_Name
    folder) decides: a model of this data's dataset is refused, saying so; one of another dataset is scored, on
    that name alone, said in a note (stderr, and the md and json notes)."""
    import json
    import shutil

    root = synthesize("nnunet", tmp_path / "Dataset900_Synth", n_cases=5, depth=4, size=16)
    ds = open_dataset("nnunet", root)
    model = tmp_path / "nnUNet_results" / "Dataset900_Synth" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    preds = model / "fold_all" / "validation"
    preds.mkdir(parents=True)
    for name in ds.test_ids():
        shutil.copyfile(root / "labelsTr" / f"{name}.nii.gz", preds / f"{name}.nii.gz")
    this = r"fold_all, whose model \(nnUNetv2_train DATASET CONFIG all\) trained on every case of this data "
    with pytest.raises(BenchError, match=this + r"\(Dataset900_Synth, as its results folder .*nnUNet_results/"
                                               r"Dataset900_Synth names it\), so its predictions are of cases it "
                                               r"was trained on: no score of it is a test score"):
        score_predictions(preds, ds, SMOKE)
    (model / "plans.json").write_text(json.dumps({"dataset_name": "Dataset901_External"}), encoding="utf-8")
    scores = score_predictions(preds, ds, SMOKE)  # another dataset's model: other cases
    note = (f"{model / 'fold_all'}: nnU-Net's fold_all, whose model trained on every case of its dataset, scored on "
            f"that dataset's name alone: {model / 'plans.json'} names it Dataset901_External, not this data "
            "(Dataset900_Synth), so these are taken as predictions of cases it never trained on (an external test "
            "set's); of a model of this data they would be training scores")
    assert scores.metrics["dice"] == 1.0 and scores.notes == [note]
    base = ["score", "--predictions", preds, "--dataset", "nnunet", "--data-root", root, "--protocol", "smoke"]
    proc = run_bench_here(monkeypatch, capsys, *base, "--format", "json")
    assert proc.stderr.splitlines().count(f"note: {note}") == 1 and json.loads(proc.stdout)["notes"] == [note]
    proc = run_bench_here(monkeypatch, capsys, *base)
    assert f"note: {note}" in proc.stdout.splitlines() and "nnU-Net's fold_all" not in proc.stderr
    (model / "plans.json").write_text(json.dumps({"dataset_name": "Dataset900_Synth"}), encoding="utf-8")
    with pytest.raises(BenchError, match=this + r"\(Dataset900_Synth, as .*plans.json names it\)"):
        score_predictions(preds, ds, SMOKE)
    (model / "plans.json").unlink()  # nnUNetv2_predict's copy beside the predictions names it too
    (preds / "plans.json").write_text(json.dumps({"dataset_name": "Dataset901_External"}), encoding="utf-8")
    assert score_predictions(preds, ds, SMOKE).notes == [note.replace(str(model / "plans.json"),
                                                                      str(preds / "plans.json"))]
    # names nothing: the results folder does
    (preds / "plans.json").write_text(json.dumps({"dataset_name": ""}), encoding="utf-8")
    with pytest.raises(BenchError, match=this + r"\(Dataset900_Synth, as its results folder"):
        score_predictions(preds, ds, SMOKE)
    (preds / "plans.json").unlink()
    # a DatasetXXX_Name folder names the model's dataset only above a <Trainer>__<Plans>__<config> folder
    loose = tmp_path / "Dataset901_External" / "notatrainer" / "fold_all" / "validation"
    shutil.copytree(preds, loose)
    with pytest.raises(BenchError, match=r"trained on every case, so its predictions are of cases it was trained on "
                                         r"\(nothing names the model's dataset"):
        score_predictions(loose, ds, SMOKE)


@pytest.mark.parametrize("folder, json_name, model_name, whose", [
    ("synth_copy", "Synth", "Dataset900_Synth", "this"),  # a copy, as MSD-converted data names itself: the Name part
    ("Dataset900_Copy", "Copy", "Dataset900_Synth", "this"),  # the same id under another folder name
    ("synth_copy", "Dataset900_Synth", "Dataset900_Synth", "this"),  # dataset.json's name alone
    ("Dataset900_Copy", "Copy", "Dataset901_Synth", "other"),  # another id: another dataset, though the Name agrees
    ("synth_copy", "Copy", "Dataset901_External", "unsure"),  # no id and no Name agrees: taken as this data's
    ("Dataset900_Synth", "Synth", "Liver", "unsure"),  # the model's name lacks the id: renaming the data cannot help
    ("Dataset900_Synth", "Synthetic", "Synth", "this"),  # no id in the model's name: the data's folder's Name part
    ("synth_copy", 900, "Dataset901_Other", "unsure"),  # a name in dataset.json that is no string: not a name
])
def test_a_fold_all_models_dataset_is_told_from_this_datas_by_its_nnunet_id(tmp_path, folder, json_name, model_name,
                                                                             whose):
    """A fold_all model of Dataset900_Synth scored on a copy of its data named otherwise (synth_copy, dataset.json
    "name": "Synth") was scored as a test score: names were compared whole. Now by nnU-Net's id, else the Name part;
    where nothing agrees nor differs the folder is refused, saying both datasets' names and how to score it anyway."""
    import shutil

    root = synthesize("nnunet", tmp_path / folder, n_cases=5, depth=4, size=16)
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    (root / "dataset.json").write_text(json.dumps({**meta, "name": json_name}), encoding="utf-8")
    ds = open_dataset("nnunet", root)
    preds = tmp_path / "nnUNet_results" / model_name / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_all" / "val"
    preds.mkdir(parents=True)
    for name in ds.test_ids():
        shutil.copyfile(root / "labelsTr" / f"{name}.nii.gz", preds / f"{name}.nii.gz")
    told = "its results folder .*"
    if not model_name.startswith("Dataset"):  # a results folder names a dataset by its id alone: a plans.json then
        (preds.parent.parent / "plans.json").write_text(json.dumps({"dataset_name": model_name}), encoding="utf-8")
        told = ".*plans.json"
    ours = ", ".join(dict.fromkeys(n for n in (folder, json_name) if isinstance(n, str)))
    if whose == "other":
        assert score_predictions(preds, ds, SMOKE).notes[-1].endswith(
            f"names it {model_name}, not this data ({ours}), so these are taken as predictions of cases it never "
            "trained on (an external test set's); of a model of this data they would be training scores")
        return
    also = "" if model_name in (folder, json_name) else f"; this data: {ours}"  # said where no name is the model's
    rename = "" if folder.startswith("Dataset") else r", or name this data's folder DatasetNNN_Name by its nnU-Net id"
    said = (rf"of this data \({model_name}, as {told} names it{also}\), so its predictions "
            r"are of cases it was trained on: " if whose == "this" else
            rf"of {model_name}, as {told} names it, taken as this data \({ours}\): no nnU-Net dataset id "
            r"tells the two apart, so its predictions are taken as of cases it was trained on \(if they are another "
            r"dataset's, an external test set's, score them from a folder outside any named fold_all"
            + rename + r"\): ")
    with pytest.raises(BenchError, match=r"^--predictions .*: a folder of nnU-Net's fold_all, whose model "
                                         r"\(nnUNetv2_train DATASET CONFIG all\) trained on every case " + said +
                                         r"no score of it is a test score"):
        score_predictions(preds, ds, SMOKE)


def test_predictions_of_a_run_under_another_protocol_say_which(tmp_path):
    """bench predict's masks of a smoke run (64x64) scored under isic17's 256x256 grid: the error names the
    run's protocol and the option that scores them; under the same protocol nothing more is said."""
    root = synthesize("isic", tmp_path / "data", n_train=2, n_val=2, min_size=40, max_size=48)
    ds = open_dataset("isic17", root)
    folder = tmp_path / "preds"
    folder.mkdir()
    for case_id in ds.test_ids():
        ds.write_prediction(ds.load_test(case_id), np.zeros((64, 64), np.uint8), folder / ds.prediction_name(case_id))
    (folder / MANIFEST).write_text(json.dumps({"run_id": "run-1", "protocol": "smoke"}), encoding="utf-8")
    with pytest.raises(BenchError, match=r"shape \(64, 64\), where test case '.*' is scored on \(256, 256\) \(or its "
                                         r"image's own size \(\d+, \d+\)\); these are bench predict's "
                                         r"predictions of run run-1, protocol 'smoke' \(scored here under 'isic17'\): "
                                         r"pass --protocol smoke$"):
        score_predictions(folder, ds, load_protocol("isic17"))
    assert score_predictions(folder, ds, load_protocol("smoke")).scored["run_id"] == "run-1"
    (folder / MANIFEST).write_text(json.dumps({"run_id": "run-1", "protocol": "isic17"}),
                                   encoding="utf-8")  # the same: no hint
    with pytest.raises(BenchError, match=r"is scored on \(256, 256\) \(or its image's own size \(\d+, \d+\)\)$"):
        score_predictions(folder, ds, load_protocol("isic17"))
    # another protocol on the same grid scores without an error: still said, as the README promises
    for case_id in ds.test_ids():
        ds.write_prediction(ds.load_test(case_id), np.zeros((256, 256), np.uint8), folder / ds.prediction_name(case_id))
    (folder / MANIFEST).write_text(json.dumps({"run_id": "run-1", "protocol": "isic17_copy"}), encoding="utf-8")
    assert ("these are bench predict's predictions of run run-1, protocol 'isic17_copy' (scored here under 'isic17'): "
            "pass --protocol isic17_copy for the run's own evaluation") in score_predictions(
                folder, ds, load_protocol("isic17")).notes


def test_a_volume_off_its_images_grid_is_refused_by_name_and_on_it_scored(tmp_path):
    """A prediction reoriented by another tool (RAS), of the label's shape, was scored voxel by voxel
    against other places of the body: a low DSC, unexplained. nnU-Net writes a prediction with its IMAGE's
    geometry (SimpleITK's CopyInformation): where the label's header places the case elsewhere (another
    origin; nnU-Net's verify only warns), that prediction was refused, saying nnU-Net writes the label's.
    A header of other zooms over the same voxels (a tool that writes its own spacing) was refused too: it
    is scored on the case's grid and spacing, and said."""
    import nibabel as nib

    root = synthesize("nnunet", tmp_path / "data", n_cases=5, depth=4, size=16)  # spacing (x, y, z) 0.8, 0.8, 3
    ds = open_dataset("nnunet", root)
    folder = tmp_path / "preds"
    folder.mkdir()
    for case_id in ds.test_ids():  # the ground truth itself, on its own grid: scored, DSC 1
        name = ds.prediction_name(case_id)
        (folder / name).write_bytes((root / "labelsTr" / name).read_bytes())
    assert score_predictions(folder, ds, SMOKE).metrics["dice"] == 1.0
    name = ds.prediction_name(ds.test_ids()[0])
    label = nib.load(str(root / "labelsTr" / name))
    data = np.asarray(label.dataobj)
    turn = np.eye(4)  # 5 degrees about z: the same orientation codes, other axes
    turn[:2, :2] = [[np.cos(np.radians(5)), -np.sin(np.radians(5))], [np.sin(np.radians(5)), np.cos(np.radians(5))]]
    for affine, said in ((np.diag([-1.0, 1.0, 1.0, 1.0]) @ label.affine, "orientation LAS, not RAS"),  # x flipped
                         (label.affine[:, [1, 0, 2, 3]], "orientation ARS, not RAS"),  # x and y swapped: 16 x 16
                         (turn @ label.affine, "orientation RAS as the image's, its axes turned up to 5 degrees")):
        nib.save(nib.Nifti1Image(data, affine), str(folder / name))
        with pytest.raises(BenchError, match=rf"{name}: not on the grid of its image .*_0000\.nii\.gz "
                                             rf"\({re.escape(said)}\), nor on its label file's: .*; write it on the "
                                             r"image's grid, as nnU-Net does"):
            score_predictions(folder, ds, SMOKE)
    degenerate = nib.Nifti1Image(data, None, label.header)  # y's column of the affine 0: no direction, said "?"
    degenerate.set_sform(label.affine * [1.0, 0.0, 1.0, 1.0], code=1)
    nib.save(degenerate, str(folder / name))
    with pytest.raises(BenchError, match=rf"{name}: not on the grid of its image .*\(orientation R\?S, not RAS\)"):
        score_predictions(folder, ds, SMOKE)
    # other zooms over the same voxels: scored as the case's, said once for the folder
    for zooms in ((2.0, 1.0, 1.0), (1.00005, 1.0, 1.0)):  # the second within float32 rounding: not said
        nib.save(nib.Nifti1Image(data, label.affine @ np.diag([*zooms, 1.0])), str(folder / name))
        scores = score_predictions(folder, ds, SMOKE)
        assert scores.metrics["dice"] == 1.0
        assert [n for n in scores.notes if "spacing" in n] == ([] if zooms[0] < 2 else [
            f"1 of {len(ds.test_ids())} volumes' headers give another voxel spacing than their case's (first: "
            f"{name}, (1.6, 0.8, 3) mm (x, y, z), the case's (0.8, 0.8, 3) mm): scored voxel for voxel on the "
            "case's grid, as their shape is its; the case's spacing is the one HD95 (mm) uses"])
    shifted = label.affine.copy()  # the label 2 mm off its image, the voxels the same
    shifted[0, 3] += 2.0
    nib.save(nib.Nifti1Image(data, shifted, label.header), str(root / "labelsTr" / name))
    image = nib.load(str(root / "imagesTr" / name.replace(".nii.gz", "_0000.nii.gz")))
    for grid in (image.affine, shifted):  # nnUNetv2_predict's (the image's) and bench predict's (the label's)
        nib.save(nib.Nifti1Image(data, grid), str(folder / name))
        assert score_predictions(folder, ds, SMOKE).metrics["dice"] == 1.0
    off = shifted.copy()  # on neither's: 4 mm off the image
    off[0, 3] += 2.0
    nib.save(nib.Nifti1Image(data, off @ np.diag([1.0, 1.0, 2.0, 1.0])), str(folder / name))
    with pytest.raises(BenchError, match=r"not on the grid of its image .*\(origin \(4\.0, 0\.0, 0\.0\), not "
                                         r"\(0\.0, 0\.0, 0\.0\)\), nor on its label file's"):
        score_predictions(folder, ds, SMOKE)
    # a (D, H, W) array saved as it is with a made-up affine (SimpleITK's LPS too): the transpose is named, not the grid
    for affine in (np.eye(4), np.diag([-1.0, -1.0, 1.0, 1.0])):
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine), str(folder / name))
        with pytest.raises(BenchError, match=r"stored shape .*: save np\.transpose\(volume, \(2, 1, 0\)\)$"):
            score_predictions(folder, ds, SMOKE)
    # an (x, y, z, 1) file (3D Slicer, ITK) is the volume it holds: its grid is still checked
    nib.save(nib.Nifti1Image(data[..., None], np.diag([-1.0, 1.0, 1.0, 1.0]) @ label.affine), str(folder / name))
    with pytest.raises(BenchError, match=rf"{name}: not on the grid of its image .*\(orientation LAS, not RAS\)"):
        score_predictions(folder, ds, SMOKE)


def test_synapse_volumes_spacing_is_compared_with_the_cases_and_their_orientation_is_not(tmp_path):
    """Synapse's h5 volumes keep no orientation: TransUNet's test script writes the same arrays with SimpleITK's
    LPS header and its own spacing, (1, 1, z_spacing), which bench predict writes RAS, with the case's spacing.
    Both are scored as the case's voxels; the other spacing, which changed no number silently, is said."""
    import nibabel as nib

    ds, folder = _gt_folder(tmp_path, n_test=3)
    proto = load_protocol("smoke")
    first, second = ds.prediction_name(ds.test_ids()[0]), ds.prediction_name(ds.test_ids()[1])
    for name in (first, second):  # as TransUNet writes them: LPS, 1 mm
        img = nib.load(str(folder / name))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), np.diag([-1.0, -1.0, 1.0, 1.0])), str(folder / name))
    d, h, w = ds.load_test(ds.test_ids()[0]).spacing  # the synthetic h5's own spacing attribute, (z, y, x)
    for policy, hd95 in (("legacy-synapse", "legacy-synapse's HD95 is in voxels, so no number takes a spacing"),
                         ("strict", "the case's spacing is the one HD95 (mm) uses")):
        scores = score_predictions(folder, ds, proto, policy)
        present = scores.per_case[scores.per_case["n_ref"] > 0]
        assert (present["dice"] == 1.0).all() and (present["hd95"] == 0.0).all()
        assert [n for n in scores.notes if "spacing" in n] == [
            f"2 of 3 volumes' headers give another voxel spacing than their case's (first: {first}, (1, 1, 1) mm "
            f"(x, y, z), the case's ({w:g}, {h:g}, {d:g}) mm): scored voxel for voxel on the case's grid, as their "
            f"shape is its; {hd95}"]
    for name, x in ((first, w * 1.01), (second, w)):  # 1% off along x is another spacing; the case's own is not
        img = nib.load(str(folder / name))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), np.diag([-x, -h, d, 1.0])), str(folder / name))
    notes = [n for n in score_predictions(folder, ds, proto, "strict").notes if "spacing" in n]
    assert len(notes) == 1 and notes[0].startswith(f"1 of 3 volumes' headers give another voxel spacing than their "
                                                   f"case's (first: {first}, ({w * 1.01:g}, {h:g}, {d:g}) mm")


def test_each_nifti_prediction_header_is_read_once(tmp_path, monkeypatch):
    """A prediction's channels, grid and voxels come from one nibabel open of the file (nnU-Net data: its image's
    and label's headers beside it, to compare its grid with)."""
    from collections import Counter
    from pathlib import Path

    import nibabel as nib

    root = synthesize("nnunet", tmp_path / "data", n_cases=5, depth=4, size=16)
    ds = open_dataset("nnunet", root)
    folder = tmp_path / "preds"
    folder.mkdir()
    for case_id in ds.test_ids():
        ds.write_prediction(case := ds.load_test(case_id), case.label, folder / ds.prediction_name(case_id))
    syn, syn_folder = _gt_folder(tmp_path / "synapse")
    opened, real_load = Counter(), nib.load
    monkeypatch.setattr(nib, "load", lambda path, *a, **k: opened.update([Path(path)]) or real_load(path, *a, **k))
    assert score_predictions(folder, ds, SMOKE).metrics["dice"] == 1.0
    assert score_predictions(syn_folder, syn, SMOKE, "legacy-synapse").metrics["dice"] == 1.0
    assert {path: n for path, n in opened.items() if path.parent in (folder, syn_folder)} == \
        {**{folder / ds.prediction_name(c): 1 for c in ds.test_ids()},
         **{syn_folder / syn.prediction_name(c): 1 for c in syn.test_ids()}}


def test_binary_masks_predicted_then_scored_give_the_record_and_native_ones_are_resized(tmp_path):
    root = synthesize("isic", tmp_path / "data", n_train=4, n_val=3, min_size=40, max_size=48)
    rec = _train("isic17", root, tmp_path / "res")
    ds, proto = open_dataset("isic17", root), record_protocol(rec)
    folder, _ = predict_run(rec, tmp_path / "res", tmp_path / "out", CPU)
    scores = score_predictions(folder, ds, proto)  # the protocol's policy: legacy-isic
    _assert_scores_are_the_record(scores, rec)
    assert scores.hd95_unit is None and "HD95" not in render(scores, "md")
    # --native-size: masks at each image's size, brought to the scored 32x32 grid as the ground truth is, and said so
    native, _ = predict_run(rec, tmp_path / "res", tmp_path / "native", CPU, native_size=True)
    resized = score_predictions(native, ds, proto)
    assert resized.scored["resized"] == ds.test_ids()[:2]
    assert "2 of 2 masks were at their image's own size and were resized to the scored 32x32 grid" in resized.notes[0]
    assert resized.notes[0] in render(resized, "md")


def _gt_folder(tmp_path, n_test=2, edit=None):
    """Synthetic Synapse data and a folder of its ground truth written as predictions (``edit(case_id, label)``
    changes a copy first)."""
    root = synthesize("synapse", tmp_path / "data", n_train=2, n_test=n_test, depth=6, size=32)
    ds = open_dataset("synapse", root)
    folder = tmp_path / "preds"
    folder.mkdir()
    for case_id in ds.test_ids():
        case = ds.load_test(case_id)
        label = case.label.copy()
        if edit is not None:
            edit(case_id, label)
        ds.write_prediction(case, label, folder / ds.prediction_name(case_id))
    return ds, folder


def test_hand_made_predictions_score_as_medpy_and_the_policies_say(tmp_path):
    ds, folder = _gt_folder(tmp_path)
    proto = load_protocol("smoke")
    perfect = score_predictions(folder, ds, proto, "legacy-synapse").per_case
    present = perfect[perfect["n_ref"] > 0]
    assert len(present) and (present["dice"] == 1.0).all() and (present["hd95"] == 0.0).all()

    first = ds.test_ids()[0]
    case = ds.load_test(first)
    organs = [c for c in range(1, ds.num_classes) if (case.label == c).any()]
    erased, shifted = organs[0], organs[1]

    def edit(case_id, label):
        if case_id == first:
            label[label == erased] = 0  # missed
            moved = np.roll(label == shifted, 2, axis=2)  # shifted 2 voxels in x
            label[label == shifted] = 0
            label[moved & (label == 0)] = shifted

    edit(first, pred := case.label.copy())
    ds.write_prediction(case, pred, folder / ds.prediction_name(first))
    said = score_predictions(folder, ds, proto, "legacy-synapse")
    legacy = said.per_case.set_index(["case", "class"])
    strict = score_predictions(folder, ds, proto, "strict").per_case.set_index(["case", "class"])
    # a miss scores the best HD95 there, as the papers' tables count it: said, with how many (the board's caption does)
    authors_note, note = said.notes
    assert authors_note.startswith("legacy-synapse is the authors' scoring")
    assert note.startswith("legacy-synapse scores a structure predicted nowhere in a case DSC 0 and HD95 0") and \
        "1 of " in note
    assert (legacy.loc[(first, erased), "dice"], legacy.loc[(first, erased), "hd95"]) == (0.0, 0.0)  # TransUNet's rule
    assert strict.loc[(first, erased), "dice"] == 0.0
    penalty = hd95_penalty(case.label.shape, case.spacing)
    assert strict.loc[(first, erased), "hd95"] == pytest.approx(penalty)
    # strict's penalty for the miss: said with its count and value, as legacy-synapse's 0 is
    (note,) = score_predictions(folder, ds, proto, "strict").notes
    assert note.startswith("strict scores a structure predicted nowhere in a case DSC 0 and HD95 the penalty, the "
                           f"diagonal of the case's extent ({penalty:.2f} mm here), the worst HD95: 1 of ")
    # the table's mIoU, Acc, Spe, Sen are no number of the authors', whose scoring computes DSC and HD95 alone: said
    # first under legacy-synapse, as a board's caption says what they are
    authors = ("note: legacy-synapse is the authors' scoring (TransUNet's calculate_metric_percase), which computes DSC "
               "and HD95 alone: mIoU, Acc, Spe, Sen are bench's, under the same rules (an empty mask's IoU as its DSC): "
               "per case and class, one class against the rest, then averaged as DSC is (no Synapse paper reports "
               "them); Acc and Spe count every background voxel, so they sit near 100%\n\nnote: legacy-synapse scores ")
    assert authors in render(said, "md") and "authors' scoring" not in render(score_predictions(
        folder, ds, proto, "strict"), "md")
    p, g = pred == shifted, case.label == shifted
    assert legacy.loc[(first, shifted), "dice"] == pytest.approx(medpy.dc(p, g), abs=1e-12)
    assert legacy.loc[(first, shifted), "hd95"] == pytest.approx(medpy.hd95(p, g), abs=1e-12)  # voxels
    assert strict.loc[(first, shifted), "hd95"] == pytest.approx(medpy.hd95(p, g, voxelspacing=case.spacing), abs=1e-12)
    assert medpy.hd95(p, g) > 0 and strict.loc[(first, shifted), "hd95"] != legacy.loc[(first, shifted), "hd95"]


def test_pairs_empty_in_the_ground_truth_say_how_the_policy_scored_them(tmp_path):
    """A structure absent from a case's ground truth and predicted nowhere (both empty), or predicted there (a
    false positive): each kind counted in a note with the policy's numbers for it (legacy-synapse's (0, 0) for both
    empty, the authors' rule, and (1, 0)); strict's n/a count in the table, as boards show it."""
    import h5py

    ds, folder = _gt_folder(tmp_path)
    first = ds.test_ids()[0]
    label = ds.load_test(first).label
    gone, extra = [c for c in range(1, ds.num_classes) if (label == c).any()][:2]
    with h5py.File(ds.test_file(first), "r+") as f:  # both absent from the ground truth; one still predicted
        f["label"][...] = np.where(np.isin(label, (gone, extra)), 0, label)
    ds.write_prediction(ds.load_test(first), np.where(label == gone, 0, label), folder / ds.prediction_name(first))
    n = 2 * (ds.num_classes - 1)
    absent = sum(not (ds.load_test(c).label == k).any() for c in ds.test_ids() for k in range(1, ds.num_classes))
    legacy = score_predictions(folder, ds, SMOKE, "legacy-synapse")
    assert f"{absent - 1} of {n} (case, class) pairs were empty in both prediction and ground truth: legacy-synapse " \
           "scores each DSC 0 and HD95 0, as a miss (the authors' rule: an empty prediction scores (0, 0) whatever " \
           "the ground truth holds)" in legacy.notes
    assert f"1 of {n} (case, class) pairs were false positives, predicted where the structure is absent from the " \
           "case: legacy-synapse scores each DSC 1 and HD95 0" in legacy.notes
    assert "DSC n/a" not in render(legacy, "md")
    strict = score_predictions(folder, ds, SMOKE, "strict")
    assert f"{absent - 1} of {n} (case, class) pairs were empty in both prediction and ground truth: strict scores " \
           "each DSC n/a, left out of the means (DSC n/a counts them) and HD95 n/a" in strict.notes
    assert f"1 of {n} (case, class) pairs were false positives, predicted where the structure is absent from the " \
           "case: strict scores each DSC 0 and HD95 the penalty, the diagonal of the case's extent" in strict.notes
    md = render(strict, "md")
    (overall,) = md_rows(md, md.split("\n\n")[1].split("|")[1].strip())  # the aggregate table, its first column
    assert overall["DSC n/a"] == f"{absent - 1}/{n}"
    # legacy-isic pools every image's pixels into one DSC: no (case, class) pair is scored, so none is said so
    from PIL import Image

    isic, masks = _isic_gt_folder(tmp_path / "isic")
    gt = isic.scored_files()[0]  # its lesion erased from the ground truth, still predicted
    with Image.open(gt) as image:
        size = image.size
    Image.new("L", size).save(gt)
    pooled = score_predictions(masks, isic, load_protocol("smoke"), "legacy-isic")
    assert pooled.metrics["dice"] < 1 and not [n for n in pooled.notes if "(case, class) pairs" in n]


def test_what_cannot_be_scored_is_one_line_naming_the_path(tmp_path):
    ds, folder = _gt_folder(tmp_path, n_test=3)
    proto = load_protocol("smoke")
    ids = ds.test_ids()
    (folder / MANIFEST).write_text(json.dumps({"run_id": "some-run"}),
                                   encoding="utf-8")  # bench predict's: not a prediction
    (folder / ".DS_Store").write_bytes(b"x")  # hidden: never data
    assert score_predictions(folder, ds, proto).scored["run_id"] == "some-run"

    with pytest.raises(BenchError, match=r"--predictions .*nowhere: not found; expected the folder"):
        score_predictions(tmp_path / "nowhere", ds, proto)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match=rf"empty: no prediction files; expected one per test case, named as {ids[0]}"):
        score_predictions(tmp_path / "empty", ds, proto)
    # text logs beside them (TransUNet's test.py: test_log/<name>.txt) are passed over as no label map
    (folder / "test_log").mkdir()
    for name in ("test_log.txt", "test_log/epoch_149.txt", "run.log"):
        (folder / name).write_text("mean_dice : 0.85", encoding="utf-8")
    (folder / "log").write_bytes(b"epoch 1\nmean_dice\t0.85\r\n")  # lines, a tab, CRLF: text all the same
    assert score_predictions(folder, ds, proto).scored["n_cases"] == len(ids)
    for blob in ((folder / f"{ids[0]}.nii.gz").read_bytes(), b""):  # no ending, but no text (or nothing): refused
        (folder / "blob").write_bytes(blob)
        with pytest.raises(BenchError, match=r"preds: blob: no test case scored here"):
            score_predictions(folder, ds, proto)
    (folder / "blob").unlink()
    (folder / "copy.nii.gz").write_bytes((folder / f"{ids[0]}.nii.gz").read_bytes())
    with pytest.raises(BenchError, match=r"preds: copy.nii.gz: no test case scored here; the test cases' files are "
                                         r"here too: leave the others out; scored here: the 3 test case\(s\) of the "
                                         r"data's test split$"):
        score_predictions(folder, ds, proto)
    (folder / "copy.nii.gz").unlink()
    with pytest.raises(BenchError, match=rf"{ids[2]}.nii.gz: no test case scored here; protocol 'smoke' scores the "
                                         r"first 2 test cases only \(eval.max_cases\)"):
        score_predictions(folder, ds, proto.with_overrides(max_cases=2))
    moved = (folder / f"{ids[1]}.nii.gz").rename(tmp_path / "aside.nii.gz")
    with pytest.raises(BenchError, match=rf"preds: no prediction of test case\(s\) {ids[1]} \(1 of 3; expected "
                                         rf"{ids[1]}.nii.gz\)"):
        score_predictions(folder, ds, proto)
    moved.rename(folder / f"{ids[1]}.nii.gz")

    case = ds.load_test(ids[0])
    path = folder / f"{ids[0]}.nii.gz"
    ds.write_prediction(case, case.label[:, :, :-4], path)
    d, h, w = case.label.shape  # a NIfTI stores (x, y, z) = (W, H, D): the file's own terms
    with pytest.raises(BenchError, match=rf"{ids[0]}.nii.gz: stored shape \({w - 4}, {h}, {d}\), where test case "
                                         rf"'{ids[0]}' is scored on \(x, y, z\) = \(W, H, D\) = \({w}, {h}, {d}\)$"):
        score_predictions(folder, ds, proto)
    import nibabel as nib  # a (D, H, W) array saved as it is: stored reversed, and said how to fix

    nib.save(nib.Nifti1Image(case.label.astype(np.uint8), np.eye(4)), str(path))
    with pytest.raises(BenchError, match=rf"stored shape \({d}, {h}, {w}\), where test case '{ids[0]}' is scored on "
                                         rf"\(x, y, z\) = \(W, H, D\) = \({w}, {h}, {d}\); a \(D, H, W\) array saved "
                                         r"as it is: save np\.transpose\(volume, \(2, 1, 0\)\)$"):
        score_predictions(folder, ds, proto)
    ds.write_prediction(case, np.where(case.label == 1, ds.num_classes, case.label), path)
    with pytest.raises(BenchError, match=rf"{ids[0]}.nii.gz: label values \[{ds.num_classes}\] outside 0..8"):
        score_predictions(folder, ds, proto)
    path.write_bytes(b"not a volume")
    with pytest.raises(BenchError, match=rf"{ids[0]}.nii.gz: cannot read it as a NIfTI volume"):
        score_predictions(folder, ds, proto)


def test_binary_masks_must_be_0_255(tmp_path):
    root = synthesize("isic", tmp_path / "data", n_train=2, n_val=2, min_size=40, max_size=48)
    ds = open_dataset("isic17", root)
    proto = load_protocol("smoke")
    folder = tmp_path / "preds"
    folder.mkdir()
    for case_id in ds.test_ids():
        case = ds.load_test(case_id)
        ds.write_prediction(case, (case.label >= 0.5).astype(np.uint8), folder / ds.prediction_name(case_id))
    assert score_predictions(folder, ds, proto).metrics["dice"] == 1.0  # native size, resized as the ground truth
    path = folder / ds.prediction_name(ds.test_ids()[0])
    from PIL import Image

    mask = np.asarray(Image.open(path))
    Image.fromarray(mask // 255).save(path)
    with pytest.raises(BenchError, match=r"mask values \[1\]; expected 0 \(background\) and 255 .*a 0/1 mask\? store "
                                         "the foreground as 255"):
        score_predictions(folder, ds, proto)
    Image.fromarray(mask > 0).save(path)  # a 1-bit PNG, which cannot store 255: foreground and background
    assert score_predictions(folder, ds, proto).metrics["dice"] == 1.0
    Image.fromarray((mask * 0.8).astype(np.uint8)).save(path)  # grey levels: a probability map
    with pytest.raises(BenchError, match=r"mask values \[204\]; .*a probability map \(or a JPEG's noise\)\? threshold "
                                         r"it into a 0/255 PNG"):
        score_predictions(folder, ds, proto)


def _isic_gt_folder(tmp_path, named=None):
    """Synthetic ISIC data and a folder of its test masks written as predictions, each named ``named(case_id)``
    (default: as bench predict names them)."""
    from bench.evaluate import ground_truth

    root = synthesize("isic", tmp_path / "data", n_train=2, n_val=2, min_size=40, max_size=48)
    ds = open_dataset("isic17", root)
    folder = tmp_path / "preds"
    folder.mkdir()
    for case_id in ds.test_ids():  # on the smoke protocol's grid: none resized
        name = ds.prediction_name(case_id) if named is None else named(case_id)
        ds.write_prediction(case := ds.load_test(case_id), ground_truth(case, load_protocol("smoke"), True),
                            folder / name)
    return ds, folder


def test_isic_masks_named_as_the_challenge_ships_them_are_scored_and_said(tmp_path):
    """ISIC's challenge names a mask ISIC_0000000_segmentation.png: taken for ISIC_0000000.png, said; a case
    with both names is refused, naming the two."""
    ds, folder = _isic_gt_folder(tmp_path, lambda case_id: f"{case_id}_segmentation.png")
    proto = load_protocol("smoke")
    first = ds.test_ids()[0]
    scores = score_predictions(folder, ds, proto)
    assert scores.metrics["dice"] == 1.0 and scores.scored["n_cases"] == 2
    assert scores.notes == [f"2 of 2 files are named as the data's challenge names its masks, with '_segmentation' "
                            f"after the case id ({first}_segmentation.png): each scored as its case's"]
    (folder / f"{first}_segmentation.png").rename(folder / f"{first}.png")  # one so, one as bench predict names it
    assert [n[:4] for n in score_predictions(folder, ds, proto).notes] == ["1 of"]
    ds.write_prediction(ds.load_test(first), np.zeros((8, 8), np.uint8), folder / f"{first}_segmentation.png")
    with pytest.raises(BenchError, match=rf"preds: {first}.png and {first}_segmentation.png both name test case "
                                         rf"'{first}' \(1 of 2 cases have two files\); keep one of each"):
        score_predictions(folder, ds, proto)
    (tmp_path / "synapse").mkdir()
    synapse, volumes = _gt_folder(tmp_path / "synapse")  # no challenge suffix there: such a name is no case's
    name = synapse.prediction_name(synapse.test_ids()[0])
    (volumes / name).rename(volumes / name.replace(".nii.gz", "_segmentation.nii.gz"))
    with pytest.raises(BenchError, match="_segmentation.nii.gz: no test case scored here"):
        score_predictions(volumes, synapse, proto)


def _test_script_folder(tmp_path, n_test=2, labels=None, ending=".nii.gz"):
    """``_gt_folder``'s data and folder as TransUNet's test script writes one instead (utils.py test_single_volume,
    given a save path): each test case's <case>_pred.nii.gz, <case>_img.nii.gz and <case>_gt.nii.gz, float32
    (D, H, W) arrays saved with SimpleITK at spacing (1, 1, 1). The prediction is the case's labels; the _gt file
    holds ``labels(case_id, label)`` where given (a copy, changed or not; None: no _gt file). ``ending``: the
    files' (the script's save path may say .nii)."""
    import SimpleITK as sitk

    ds, folder = _gt_folder(tmp_path, n_test)
    for case_id in ds.test_ids():
        (folder / ds.prediction_name(case_id)).unlink()
        case = ds.load_test(case_id)
        gt = case.label.copy() if labels is None else labels(case_id, case.label.copy())
        for suffix, array in {"_pred": case.label, "_img": case.image, **({} if gt is None else {"_gt": gt})}.items():
            itk = sitk.GetImageFromArray(array.astype(np.float32))
            itk.SetSpacing((1, 1, 1))  # the script's (1, 1, z_spacing=1)
            sitk.WriteImage(itk, str(folder / f"{case_id}{suffix}{ending}"))
    return ds, folder


def test_transunets_test_script_output_is_scored_as_it_is(tmp_path):
    """The TransUNet lineage's test script names each prediction <case>_pred.nii.gz, beside its image and labels:
    scored as the case's, the other two passed over, said; a case with a <case>.nii.gz too is refused."""
    ds, folder = _test_script_folder(tmp_path)
    first = ds.test_ids()[0]
    scores = score_predictions(folder, ds, SMOKE, "legacy-synapse")
    assert scores.metrics["dice"] == 1.0 and scores.scored["n_cases"] == 2
    assert f"2 of 2 files are named as TransUNet's test script (utils.py test_single_volume) names its " \
           f"predictions, with '_pred' after the case id ({first}_pred.nii.gz): each scored as its case's" \
           in scores.notes
    second = ds.test_ids()[1]  # a case without its file: named as the folder names the others
    (folder / f"{second}_pred.nii.gz").rename(tmp_path / "aside.nii.gz")
    with pytest.raises(BenchError, match=rf"preds: no prediction of test case\(s\) {second} \(1 of 2; expected "
                                         rf"{second}_pred.nii.gz\); --allow-missing scores them as empty "
                                         r"predictions$"):
        score_predictions(folder, ds, SMOKE)
    (tmp_path / "aside.nii.gz").rename(folder / f"{second}_pred.nii.gz")
    (folder / f"{first}_pred.nii.gz").rename(folder / f"{first}.nii.gz")  # as bench predict names it: the same
    assert score_predictions(folder, ds, SMOKE, "legacy-synapse").metrics["dice"] == 1.0
    (folder / f"{first}_pred.nii.gz").write_bytes((folder / f"{first}.nii.gz").read_bytes())
    with pytest.raises(BenchError, match=rf"preds: {first}.nii.gz and {first}_pred.nii.gz both name test case "
                                         rf"'{first}' \(1 of 2 cases have two files\); keep one of each"):
        score_predictions(folder, ds, SMOKE)
    for case_id in ds.test_ids():  # no prediction left: the image and labels are no prediction of the case
        for name in (f"{case_id}.nii.gz", f"{case_id}_pred.nii.gz"):
            (folder / name).unlink(missing_ok=True)
    with pytest.raises(BenchError, match=rf"preds: no prediction files; expected one per test case, named as "
                                         rf"{first}.nii.gz$"):
        score_predictions(folder, ds, SMOKE)


def test_the_test_scripts_plain_nii_files_are_read_as_its_nii_gz_ones(tmp_path):
    """Saved as .nii (uncompressed, which a rename to .nii.gz would make no gzip file), the script's predictions are
    scored, its images passed over and its labels compared, as .nii.gz ones; a case with both is refused. On nnU-Net
    data, whose file_ending is what nnU-Net reads, a .nii where .nii.gz is expected is to be gzipped, said so."""
    import shutil

    import nibabel as nib

    ds, folder = _test_script_folder(tmp_path / "nii", ending=".nii")
    first, second = ds.test_ids()
    assert (folder / f"{first}_pred.nii").read_bytes()[:2] != b"\x1f\x8b"  # no gzip file
    scores = score_predictions(folder, ds, SMOKE, "legacy-synapse")
    assert scores.metrics["dice"] == 1.0 and scores.scored["n_cases"] == 2
    assert f"their labels are ours: the labels written beside the predictions of 2 of 2 test cases (first: {first}_gt.nii) are the " \
           "ground truth scored here, voxel for voxel: same test data" in scores.notes
    assert any(n.startswith("2 of 2 files are named as TransUNet's test script") and f"({first}_pred.nii)" in n
               for n in scores.notes)
    (folder / f"{first}_pred.nii").rename(folder / f"{first}.nii")  # as bench predict names it, uncompressed
    scores = score_predictions(folder, ds, SMOKE, "legacy-synapse")
    assert scores.metrics["dice"] == 1.0 and any("1 of 2 files are named" in n for n in scores.notes)
    shutil.copyfile(folder / f"{first}.nii", folder / f"{first}_pred.nii")
    with pytest.raises(BenchError, match=rf"preds: {first}.nii and {first}_pred.nii both name test case '{first}'"):
        score_predictions(folder, ds, SMOKE)
    (folder / f"{first}_pred.nii").unlink()
    ds_other, other = _test_script_folder(tmp_path / "other", ending=".nii",
                                          labels=lambda case_id, label: np.where(label == 3, 7, label))
    with pytest.raises(BenchError, match=rf"{first}_gt.nii: labels written beside the predictions that are not"):
        score_predictions(other, ds_other, SMOKE)

    nn = open_dataset("nnunet", synthesize("nnunet", tmp_path / "nnunet", n_cases=5, depth=4, size=16), fold=0)
    (preds := tmp_path / "nnunet_out").mkdir()
    case = nn.test_ids()[0]
    for case_id in nn.test_ids():  # its labels as predictions, the first saved uncompressed (<case>.nii)
        name = nn.prediction_name(case_id).removesuffix(".gz" if case_id == case else "")
        nib.save(nib.load(nn.root / "labelsTr" / nn.prediction_name(case_id)), str(preds / name))
    with pytest.raises(BenchError, match=rf"{case}.nii stands for {case}.nii.gz: gzip them \(\.nii\.gz\)"):
        score_predictions(preds, nn, SMOKE)
    # the reverse: data whose file_ending is .nii, a prediction gzipped (<case>.nii.gz): gunzip it, which scores
    for path in [*nn.root.glob("imagesTr/*.nii.gz"), *nn.root.glob("labelsTr/*.nii.gz")]:
        nib.save(nib.load(path), str(path.with_suffix("")))
        path.unlink()
    meta = json.loads((nn.root / "dataset.json").read_text(encoding="utf-8"))
    (nn.root / "dataset.json").write_text(json.dumps({**meta, "file_ending": ".nii"}), encoding="utf-8")
    nn = open_dataset("nnunet", nn.root, fold=0)
    for path in preds.iterdir():
        path.unlink()
    for case_id in nn.test_ids():  # its labels as predictions again, the first gzipped (<case>.nii.gz)
        nib.save(nib.load(nn.root / "labelsTr" / f"{case_id}.nii"),
                 str(preds / f"{case_id}.nii{'.gz' if case_id == case else ''}"))
    with pytest.raises(BenchError, match=rf"{case}.nii.gz stands for {case}.nii: gunzip them \(\.nii\)"):
        score_predictions(preds, nn, SMOKE)
    nib.save(nib.load(preds / f"{case}.nii.gz"), str(preds / f"{case}.nii"))
    (preds / f"{case}.nii.gz").unlink()
    assert score_predictions(preds, nn, SMOKE).metrics["dice"] == 1.0


def test_the_test_scripts_labels_are_compared_with_the_ground_truth_scored(tmp_path, monkeypatch):
    """Each <case>_gt.nii.gz beside the predictions, read once, is compared voxel for voxel with the ground truth
    scored: the same, said; else refused once every case's is compared, naming how many voxels and which classes
    differ in the first that differs, or the ids the same structures carry there, or the other volume's shape, and
    how many differ; the remap only where one class order explains every file that differs."""
    from collections import Counter
    from pathlib import Path

    import nibabel as nib

    ds, folder = _test_script_folder(tmp_path / "same")
    opened, real_load = Counter(), nib.load
    monkeypatch.setattr(nib, "load", lambda path, *a, **k: opened.update([Path(path).name]) or real_load(path, *a, **k))
    scores = score_predictions(folder, ds, SMOKE, "legacy-synapse")
    first, second = ds.test_ids()
    assert f"their labels are ours: the labels written beside the predictions of 2 of 2 test cases (first: {first}_gt.nii.gz) are the " \
           "ground truth scored here, voxel for voxel: same test data" in scores.notes
    assert opened == Counter({f"{c}{suffix}.nii.gz": 1 for c in (first, second) for suffix in ("_pred", "_gt")})

    def edited(edit):
        return lambda case_id, label: edit(label) if case_id == second else label

    def refused(tmp, labels, remedy=ANYWAY):
        ds, folder = _test_script_folder(tmp_path / tmp, labels=labels)
        with pytest.raises(BenchError) as err:
            score_predictions(folder, ds, SMOKE, "legacy-synapse")
        start = (f"{folder / second}_gt.nii.gz: labels written beside the predictions that are not the ground truth "
                 f"scored here, at {ds.root} (")
        said = "); the numbers their tool gave were computed against them: "
        assert str(err.value).startswith(start) and str(err.value).endswith(said + remedy)
        return str(err.value)[len(start):str(err.value).index(said)], ds.load_test(second).label

    def kidney_as_spleen(label):  # 3 voxels of the left kidney (3) labelled spleen (7)
        label[tuple(np.argwhere(label == 3)[:3].T)] = 7
        return label

    only = "; the only one of the 2 cases' labels that differs"
    assert refused("voxels", edited(kidney_as_spleen))[0] == \
        "3 of 6,144 voxels differ, in classes 3 (kidney_l), 7 (spleen)" + only
    # aorta and gallbladder swapped, the stomach given an id the data has no class of: their predictions are in
    # that order too, so scored as they are they would be scored as our other organs; remapped, not moved out
    order = [0, 2, 1, 3, 4, 5, 6, 7, 12]
    said, label = refused("ids", edited(lambda label: np.choose(label, order)), (
        "their predictions are in that order too, so their ids would score as our other organs: remap the "
        "predictions (and these label files) to our ids, theirs to ours 2->1, 1->2, 12->8 (pred = np.array([0, 2, "
        "1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 8])[pred]), or score them with the data they were made on (its --data-root)"))
    assert said == (f"{int(np.isin(label, (1, 2, 8)).sum()):,} of 6,144 voxels differ, in classes 1 (aorta), 2 "
                    "(gallbladder), 8 (stomach), 12 (no class of the data); the same structures under other ids, ours "
                    "1 (aorta) as 2, 2 (gallbladder) as 1, 8 (stomach) as 12: another class order" + only)
    lookup = np.array([0, 2, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 8])  # the remap said undoes the order
    assert np.array_equal(lookup[np.choose(label, order)], label)
    # the stomach as 9, the first id past Synapse's 8 organs (BTCV's 13-organ ids): no class of the data
    said, label = refused("past", edited(lambda label: np.where(label == 8, 9, label)), (
        "their predictions are in that order too, so their ids would score as our other organs: remap the "
        "predictions (and these label files) to our ids, theirs to ours 9->8 (pred = np.array([0, 1, 2, 3, 4, 5, 6, "
        "7, 8, 8])[pred]), or score them with the data they were made on (its --data-root)"))
    assert said == (f"{int((label == 8).sum()):,} of 6,144 voxels differ, in classes 8 (stomach), 9 (no class of the "
                    "data); the same structures under other ids, ours 8 (stomach) as 9: another class order" + only)
    # two of our classes under one id (the gallbladder as aorta), or organ voxels erased: no class order, no remap;
    # only the classes that differ are named, never the background
    said, label = refused("merged", edited(lambda label: np.where(label == 2, 1, label)))
    assert said == f"{int((label == 2).sum()):,} of 6,144 voxels differ, in classes 1 (aorta), 2 (gallbladder)" + only

    def erased(label):  # 3 voxels of the left kidney (3) as background
        label[tuple(np.argwhere(label == 3)[:3].T)] = 0
        return label

    assert refused("erased", edited(erased))[0] == "3 of 6,144 voxels differ, in classes 3 (kidney_l)" + only
    assert refused("shape", edited(lambda label: label[1:]))[0] == \
        "stored shape (32, 32, 5), where its case's is (x, y, z) = (32, 32, 6): another volume's" + only
    # saved the other way round, (x, y, z) = (D, H, W): the fix said, as of a prediction so saved
    assert refused("transposed", edited(lambda label: label.transpose(2, 1, 0)))[0] == \
        "stored shape (6, 32, 32), where its case's is (x, y, z) = (32, 32, 6); a (D, H, W) array saved as it is: " \
        "save np.transpose(volume, (2, 1, 0))" + only

    # every case's file compared (each read once; no prediction read after the first that differs) before the one
    # error, which counts them: one class order in both gives the remap; else two files that disagree are named
    def swapped(a, b):
        return lambda case_id, label: np.choose(label, [{a: b, b: a}.get(i, i) for i in range(9)])

    def both(first_edit, second_edit):
        return lambda case_id, label: (first_edit if case_id == second else second_edit)(case_id, label)

    def refused_all(tmp, labels):
        ds, folder = _test_script_folder(tmp_path / tmp, labels=labels)
        with pytest.raises(BenchError) as err:
            score_predictions(folder, ds, SMOKE, "legacy-synapse")
        assert str(err.value).startswith(f"{folder / first}_gt.nii.gz: labels written beside the predictions that "
                                         "are not the ground truth scored here")
        return str(err.value)

    opened.clear()
    said = refused_all("both", swapped(1, 2))
    assert opened == Counter([f"{first}_gt.nii.gz", f"{second}_gt.nii.gz"])
    assert "; the same structures under other ids in these files, ours 1 (aorta) as 2, 2 (gallbladder) as 1: another " \
        f"class order; 2 of the 2 cases' labels differ: {first}_gt.nii.gz, {second}_gt.nii.gz); " in said
    assert said.endswith("remap the predictions (and these label files) to our ids, theirs to ours 2->1, 1->2 (pred "
                         "= np.array([0, 2, 1, 3, 4, 5, 6, 7, 8])[pred]), or score them with the data they were made "
                         "on (its --data-root)")
    said = refused_all("two_orders", both(swapped(1, 3), swapped(1, 2)))  # no remap of the first's given
    assert f"; {first}_gt.nii.gz holds ours 1 (aorta) as 2, {second}_gt.nii.gz ours 1 (aorta) as 3: no one class " \
        f"order explains them; 2 of the 2 cases' labels differ: {first}_gt.nii.gz, {second}_gt.nii.gz); " in said
    assert said.endswith(ANYWAY)
    said = refused_all("order_and_voxels", both(lambda case_id, label: kidney_as_spleen(label), swapped(1, 2)))
    assert f"; {first}_gt.nii.gz holds our structures under other ids, {second}_gt.nii.gz other voxels: no one class " \
        "order explains them; 2 of the 2 cases' labels differ" in said and said.endswith(ANYWAY)

ANYWAY = ("score the predictions with the data they were made on (its --data-root), or move the label files out of "
          "the folder to score them against these labels anyway")


def test_two_files_putting_two_of_our_ids_under_one_of_theirs_clash_with_no_remap(tmp_path):
    """One file holds the aorta as 9 (no gallbladder in it), another the gallbladder as 9 (no aorta): each file
    alone is an order, but together they give one id of theirs two of ours; both files named, no remap."""
    from bench.score import _one_order

    ds, _ = _test_script_folder(tmp_path)
    differ = [("A_gt.nii.gz", "ids", [(0, 0), (1, 9), (3, 3)]), ("B_gt.nii.gz", "ids", [(0, 0), (2, 9), (3, 3)])]
    assert _one_order(differ, ds) == ([], "A_gt.nii.gz holds ours 1 (aorta) as 9, B_gt.nii.gz ours 2 (gallbladder) as 9")


def test_one_case_without_gt_and_one_that_differs_counts_the_cases_not_the_files(tmp_path):
    """A case with no _gt file beside one whose _gt differs: the differing one is "the only one of the 2 cases'
    labels", the count of the cases compared, not of the files read."""
    probe, _ = _test_script_folder(tmp_path / "probe", n_test=3)
    no_gt, stomach_as_9, _ = probe.test_ids()

    def labels(case_id, label):
        return None if case_id == no_gt else np.where(label == 8, 9, label) if case_id == stomach_as_9 else label

    ds, folder = _test_script_folder(tmp_path / "folder", n_test=3, labels=labels)
    with pytest.raises(BenchError) as err:
        score_predictions(folder, ds, SMOKE.with_overrides(max_cases=3), "legacy-synapse")
    assert "another class order; the only one of the 2 cases' labels that differs); " in str(err.value)


def test_colour_and_jpeg_masks_are_read_as_grey_or_refused_by_name(tmp_path):
    """A mask saved as RGB with three equal channels (OpenCV's imwrite of a 3-channel array) is that grey, said;
    one of other colours, or see-through, has no one label to read; a JPEG's edges are no 0/255."""
    from PIL import Image

    ds, folder = _isic_gt_folder(tmp_path)
    proto = load_protocol("smoke")
    path = folder / ds.prediction_name(ds.test_ids()[0])
    mask = np.asarray(Image.open(path))
    Image.fromarray(np.stack([mask] * 3, axis=-1)).save(path)
    scores = score_predictions(folder, ds, proto)
    assert scores.metrics["dice"] == 1.0
    assert scores.notes == [f"1 of 2 masks were PNGs stored in colour whose channels are equal (first: {path.name}): "
                            "read as that grey"]
    Image.fromarray(np.stack([mask, mask, 0 * mask], axis=-1)).save(path)  # yellow on black
    expected = r"expected a single-channel PNG of 0 \(background\) and 255 \(lesion\), or a 1-bit one$"
    with pytest.raises(BenchError, match=rf"{path.name}: a colour PNG \(mode RGB\) with colour channels that differ; "
                                         + expected):
        score_predictions(folder, ds, proto)
    Image.fromarray(np.stack([mask] * 3 + [mask], axis=-1)).save(path)  # the mask in the alpha channel too
    with pytest.raises(BenchError, match=r"a colour PNG \(mode RGBA\) with an alpha channel that is not opaque "
                                         r"everywhere; " + expected):
        score_predictions(folder, ds, proto)
    Image.fromarray(np.stack([mask] * 3 + [np.full_like(mask, 128)], axis=-1)).save(path)  # half see-through
    with pytest.raises(BenchError, match=r"a colour PNG \(mode RGBA\) with an alpha channel that is not opaque "
                                         r"everywhere; "):
        score_predictions(folder, ds, proto)
    Image.fromarray(mask).save(path.with_suffix(".jpg"))
    path.unlink()
    with pytest.raises(BenchError, match=rf"{path.stem}.jpg: no test case scored here; {path.stem}.jpg is a JPEG, "
                                         r"whose lossy compression leaves edges that are neither background nor "
                                         rf"foreground; save the masks as PNG, named as the test cases \(e.g. "):
        score_predictions(folder, ds, proto)


def test_each_png_prediction_is_opened_once(tmp_path, monkeypatch):
    """Its mode (1-bit, grey or colour) and its pixels come from one open of the file, grey or colour."""
    from collections import Counter
    from pathlib import Path

    from PIL import Image

    ds, folder = _isic_gt_folder(tmp_path)
    first = folder / ds.prediction_name(ds.test_ids()[0])
    Image.fromarray(np.stack([np.asarray(Image.open(first))] * 3, axis=-1)).save(first)  # one colour, one grey
    opened, real_open = Counter(), Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: opened.update([Path(fp)]) or real_open(fp, *a, **k))
    assert score_predictions(folder, ds, load_protocol("smoke")).metrics["dice"] == 1.0
    assert {path: n for path, n in opened.items() if path.parent == folder} == \
        {folder / ds.prediction_name(case_id): 1 for case_id in ds.test_ids()}


def test_predictions_of_another_dataset_or_fold_are_named_so(tmp_path):
    """bench predict's manifest names the run's data and split: another dataset is refused (its numbers against
    this ground truth mean nothing; another nnU-Net dataset by its name), the same one read elsewhere is said;
    another fold is named in the error its other cases give, and said where its cases are the same ones; a
    split of no record's form (test, foldN) is passed over, not a crash."""
    import shutil

    ds, folder = _isic_gt_folder(tmp_path)
    proto = load_protocol("smoke")
    manifest = {"run_id": "run-1", "protocol": "smoke", "dataset": "isic18", "dataset_name": "isic18",
                "data_root": str(tmp_path / "isic18"), "split": "test"}
    (folder / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(BenchError, match=r"preds: bench predict's predictions of run run-1, of 'isic18' data at .*isic18; "
                                         r"scored here against 'isic17' data at .*: give the data they are of "
                                         r"\(--dataset isic18 and its --data-root\)$"):
        score_predictions(folder, ds, proto)
    (folder / MANIFEST).write_text(json.dumps({"run_id": "run-1", "dataset": "synapse"}),
                                   encoding="utf-8")  # an older run's: no name
    with pytest.raises(BenchError, match=r"of 'synapse' data; scored here against 'isic17' data"):
        score_predictions(folder, ds, proto)
    (folder / MANIFEST).write_text(json.dumps({**manifest, "dataset": "isic17", "dataset_name": "isic17"}),
                                   encoding="utf-8")
    assert score_predictions(folder, ds, proto).notes == [
        f"bench predict's run run-1 read its isic17 data at {tmp_path / 'isic18'}; the ground truth here is that at "
        f"{ds.root.resolve()}"]

    root = synthesize("nnunet", tmp_path / "nnunet", dims=2, n_cases=5, size=32)
    cases = sorted(p.name.split(".")[0] for p in (root / "labelsTr").iterdir())
    (root / "splits_final.json").write_text(json.dumps(  # fold k tests case k
        [{"train": [c for c in cases if c != case], "val": [case]} for case in cases]), encoding="utf-8")
    fold1 = open_dataset("nnunet", root, fold=1)
    folder = tmp_path / "fold1"
    folder.mkdir()
    name = fold1.prediction_name(cases[1])
    shutil.copyfile(root / "labelsTr" / name, folder / name)
    (folder / MANIFEST).write_text(json.dumps({"run_id": "run-2", "split": "fold1"}), encoding="utf-8")
    assert score_predictions(folder, fold1, SMOKE).notes == []
    for split in ("fold_1", "fold"):  # no split a record names: nothing to compare, nothing said
        (folder / MANIFEST).write_text(json.dumps({"run_id": "run-2", "split": split}), encoding="utf-8")
        assert score_predictions(folder, fold1, SMOKE).notes == []
    (folder / MANIFEST).write_text(json.dumps({"run_id": "run-2", "dataset": "nnunet", "split": "fold1",
                                               "dataset_name": "nnunet:Dataset002_B"}),
                                   encoding="utf-8")  # the same reader's
    with pytest.raises(BenchError, match=rf"of 'nnunet:Dataset002_B' data; scored here against "
                                         rf"'{re.escape(fold1.dataset_name)}' data"):
        score_predictions(folder, fold1, SMOKE)
    (folder / MANIFEST).write_text(json.dumps({"run_id": "run-2", "split": "fold1"}), encoding="utf-8")
    with pytest.raises(BenchError, match=rf"{name}: no test case scored here.*; fold mismatch: bench predict's run "
                                         r"run-2 is of fold 1, scored here as fold 0: pass --fold 1$"):
        score_predictions(folder, open_dataset("nnunet", root, fold=0), SMOKE)
    (folder / MANIFEST).write_text(json.dumps({"run_id": "run-2", "split": "test"}), encoding="utf-8")
    with pytest.raises(BenchError, match=r"fold mismatch: bench predict's run run-2 is of the data's test split, scored "
                                         r"here as fold 2: pass no --fold$"):
        score_predictions(folder, open_dataset("nnunet", root, fold=2), SMOKE)
    # the data's test split is fold 0 of its splits_final.json: a fold-0 run's cases, its numbers, the fold said
    (folder / name).unlink()
    name = fold1.prediction_name(cases[0])
    shutil.copyfile(root / "labelsTr" / name, folder / name)
    (folder / MANIFEST).write_text(json.dumps({"run_id": "run-3", "split": "fold0"}), encoding="utf-8")
    scores = score_predictions(folder, open_dataset("nnunet", root), SMOKE)
    assert scores.metrics["dice"] == 1.0
    assert scores.notes == ["fold mismatch: bench predict's run run-3 is of fold 0, scored here as the data's test "
                            "split: pass --fold 0 to have the output name its fold; both hold the same test cases (1), "
                            "so these are the run's numbers"]
    # every fold's cases scored (--fold all): a fold's run is named where its cases alone are here; its manifest
    # in a folder the other folds' files were added to is not taken for the pooled numbers' run, nor named as the
    # folder's maker in the table's title or the JSON (they named it, beside the note that they are not its numbers)
    every = open_dataset("nnunet", root, fold="all")
    with pytest.raises(BenchError, match=r"no prediction of test case\(s\) .* \(4 of 5; .*\); fold mismatch: bench "
                                         r"predict's run run-3 is of fold 0, scored here as all folds' validation "
                                         r"cases: pass --fold 0$"):
        score_predictions(folder, every, load_protocol("smoke"))
    for case in cases[1:]:
        shutil.copyfile(root / "labelsTr" / every.prediction_name(case), folder / every.prediction_name(case))
    scores = score_predictions(folder, every, load_protocol("smoke"))
    assert scores.scored["n_cases"] == 5 and scores.scored["run_id"] is None
    assert scores.notes == [f"{MANIFEST} is bench predict's of run run-3, of fold 0 alone; the 5 cases scored here are "
                            "all folds' validation cases, so these are not that run's numbers"]
    title = render(scores, "md").splitlines()[0]
    assert title.startswith(f"{folder.resolve()}: 5 cases of ") and "run-3" not in title
    assert json.loads(render(scores, "json"))["scored"]["run_id"] is None


def test_files_named_otherwise_and_one_hot_volumes_are_said_what_to_do(tmp_path):
    import nibabel as nib

    ds, folder = _gt_folder(tmp_path)
    proto = load_protocol("smoke")
    first = ds.prediction_name(ds.test_ids()[0])  # <case>.nii.gz
    (folder / first).rename(folder / first.replace(".nii.gz", ".png"))
    with pytest.raises(BenchError, match=rf"{first[:-7]}.png stands for {first}: name the files with the data's "
                                         r"ending \(\.nii\.gz\)"):
        score_predictions(folder, ds, proto)
    (folder / first.replace(".nii.gz", ".png")).rename(folder / first)
    below = folder / "run1"  # the files one folder down
    below.mkdir()
    for path in list(folder.glob("*.nii.gz")):
        path.rename(below / path.name)
    with pytest.raises(BenchError, match=rf"they are one folder down: --predictions {re.escape(str(below))}"):
        score_predictions(folder, ds, proto)
    case = ds.load_test(ds.test_ids()[0])
    one_hot = np.stack([case.label.transpose(2, 1, 0) == c for c in range(ds.num_classes)], axis=-1)
    nib.save(nib.Nifti1Image(one_hot.astype(np.uint8), np.eye(4)), str(below / first))
    with pytest.raises(BenchError, match=r"expected a label map of class ids, \(x, y, z\), not one channel per class: "
                                         "save the argmax over the channel axis"):
        score_predictions(below, ds, proto)


def test_volumes_of_several_frames_or_axes_of_size_one_are_said_what_they_hold(tmp_path):
    """Any 4th axis was called one channel per class (a series of 2 volumes of a 9-class data too), and a
    (1, D, H, W) array SimpleITK saved as it is (a vector image, shape (H, D, 1, 1, W)) was refused with no
    remedy."""
    import nibabel as nib
    import SimpleITK as sitk

    ds, folder = _gt_folder(tmp_path, n_test=1)
    case_id = ds.test_ids()[0]
    path, label = folder / ds.prediction_name(case_id), ds.load_test(case_id).label  # (D, H, W)
    depth, height, width = label.shape
    xyz = label.transpose(2, 1, 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(np.stack([xyz, xyz], axis=-1), np.eye(4)), str(path))
    with pytest.raises(BenchError, match=r"expected a label map of class ids, \(x, y, z\): it holds 2 volumes "
                                         r"\(frames\), not one channel per class \(9 classes\), and a label map is "
                                         "one 3-D volume: save the one to score$"):
        score_predictions(folder, ds, SMOKE)
    nib.save(nib.Nifti1Image(np.stack([np.stack([xyz] * 4, -1)] * 3, -2), np.eye(4)), str(path))  # (x, y, z, 3, 4)
    with pytest.raises(BenchError, match=rf"{path.name}: expected a 3-D NIfTI volume, got shape \({width}, {height}, "
                                         rf"{depth}, 3, 4\)$"):  # two axes past the volume's: no frames, no channels
        score_predictions(folder, ds, SMOKE)
    one_hot = (label[..., None] == np.arange(ds.num_classes)).astype(np.float32)  # SimpleITK: 9 values per voxel
    sitk.WriteImage(sitk.GetImageFromArray(one_hot), str(path))
    with pytest.raises(BenchError, match=r"not one channel per class: save the argmax over the channel axis$"):
        score_predictions(folder, ds, SMOKE)
    sitk.WriteImage(sitk.GetImageFromArray(label[None].astype(np.float32)), str(path))
    with pytest.raises(BenchError, match=rf"got shape \({height}, {depth}, 1, 1, {width}\); its axes of size 1 "
                                         rf"dropped it is 3-D, \({height}, {depth}, {width}\), out of x, y, z order: "
                                         rf".* here \(1, {depth}, {height}, {width}\), reads so: save volume\[0\]$"):
        score_predictions(folder, ds, SMOKE)
    nib.save(nib.Nifti1Image(xyz[None], np.eye(4)), str(path))  # (1, x, y, z)
    with pytest.raises(BenchError, match=rf"got shape \(1, {width}, {height}, {depth}\); its axes of size 1 dropped "
                                         rf"it is 3-D, \({width}, {height}, {depth}\): .*volume.squeeze\(\)\)$"):
        score_predictions(folder, ds, SMOKE)
    sitk.WriteImage(sitk.GetImageFromArray(label[None][0].astype(np.float32)), str(path))  # the remedy works
    assert score_predictions(folder, ds, SMOKE, "legacy-synapse").metrics["dice"] == 1.0

def test_polyp_masks_are_read_from_a_folder_per_test_set(tmp_path):
    root = synthesize("polyp", tmp_path / "data", n_train=2, n_test=2, min_size=40, max_size=48)
    ds = open_dataset("polyp", root)
    folder = tmp_path / "preds"
    proto = load_protocol("smoke")
    for case_id in ds.test_ids():
        case = ds.load_test(case_id)
        path = folder / ds.prediction_name(case_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.write_prediction(case, np.zeros(case.label.shape, np.uint8), path)  # nothing found: DSC 0
    assert {p.parent.name for p in folder.rglob("*.png")} == {"CVC-ClinicDB", "Kvasir"}
    scores = score_predictions(folder, ds, proto)
    assert scores.scored["n_cases"] == len(ds.test_ids()) and scores.metrics["dice"] == 0.0
    assert scores.metrics["spe"] == 1.0 and scores.per_case["tp"].sum() == 0


def test_the_command_prints_a_table_writes_csv_and_json_and_fails_in_one_line(tmp_path, monkeypatch, capsys):
    ds, folder = _gt_folder(tmp_path)
    base = ["score", "--predictions", folder, "--dataset", "synapse", "--data-root", ds.root, "--protocol", "smoke"]
    proc = run_bench_here(monkeypatch, capsys, *base)
    (overall,) = md_rows(proc.stdout, "DSC ↑ (%)")
    assert list(overall) == ["DSC ↑ (%)", "HD95 ↓ (voxels)", "mIoU ↑ (%)", "Acc ↑ (%)", "Spe ↑ (%)", "Sen ↑ (%)"]
    assert overall["HD95 ↓ (voxels)"] == "0.00" and overall["Acc ↑ (%)"] == "100.00"
    classes = md_rows(proc.stdout, "Class")
    assert [r["Class"] for r in classes[:3]] == ["Aorta", "Gallbladder", "Kidney(L)"] and len(classes) == 8
    assert "policy legacy-synapse" in proc.stdout and "2 cases of synapse" in proc.stdout
    assert " · split: the data's test split · " in proc.stdout and "note:" not in proc.stderr  # Synapse's own lists

    # the authors' scoring computes DSC and HD95 alone: said to csv and json users too, once, as the table says it
    authors = next(line for line in proc.stdout.splitlines() if "legacy-synapse is the authors' scoring" in line)
    proc = run_bench_here(monkeypatch, capsys, *base, "--out", tmp_path / "x.csv")
    assert proc.stderr.splitlines().count(authors) == 1 and proc.stderr.count("authors' scoring") == 1
    run_bench_here(monkeypatch, capsys, *base, "--out", tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text(encoding="utf-8"))["notes"][0] == authors.removeprefix("note: ")
    import pandas as pd

    rows = pd.read_csv(tmp_path / "x.csv")
    assert len(rows) == 2 * 8 and list(rows.columns[:3]) == ["case", "class", "name"] and set(rows["hd95_unit"]) == {"voxels"}
    run_bench_here(monkeypatch, capsys, *base, "--policy", "strict", "--format", "json", "--out", tmp_path / "s.json")
    data = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    assert data["scored"]["policy"] == "strict" and data["hd95_unit"] == "mm" and len(data["per_class"]) == 8
    assert data["scored"]["predictions_sha256"] and data["scored"]["n_cases"] == 2
    proc = run_bench_here(monkeypatch, capsys, *base, "--format", "md", "--out", tmp_path / "t.csv", check=False)
    assert proc.returncode == 2 and "a .csv file holds csv" in proc.stderr and not (tmp_path / "t.csv").exists()
    # --out a folder or a link to nothing: report's one line, before any case is scored (a case error is not said)
    (folder / "extra.nii.gz").write_bytes(b"x")
    proc = run_bench_here(monkeypatch, capsys, *base, "--out", tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: --out {tmp_path}: is a folder; give a file name, " \
                                                          f"e.g. {tmp_path / 'scores.md'}"
    (tmp_path / "gone.json").symlink_to(tmp_path / "nowhere" / "s.json")
    proc = run_bench_here(monkeypatch, capsys, *base, "--out", tmp_path / "gone.json", check=False)
    assert proc.returncode == 2 and "gone.json: a link to " in proc.stderr and "choose another --out" in proc.stderr
    # --fold: the data's fixed test split said in words that fit score's option (not run's --folds)
    for fold in ("0", "all"):
        proc = run_bench_here(monkeypatch, capsys, *base, "--fold", fold, check=False)
        assert proc.returncode == 2 and "fixed test split; cross-validation folds apply to nnunet-format data" in \
            proc.stderr
        assert "--folds" not in proc.stderr
    (folder / "extra.nii.gz").unlink()

    (folder / "extra.nii.gz").write_bytes(b"x")
    proc = run_bench_here(monkeypatch, capsys, *base, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "extra.nii.gz: no test case scored here" in proc.stderr
    proc = run_bench_here(monkeypatch, capsys, *base[:5], "--protocol", "smoke", check=False)
    assert proc.returncode == 2 and "give --data-root DIR" in proc.stderr
    # --synthetic: the data bench run --synthetic wrote into --results, never written here
    (folder / "extra.nii.gz").unlink()
    synthetic = [*base[:5], "--synthetic", "--results", tmp_path / "res", "--protocol", "smoke"]
    proc = run_bench_here(monkeypatch, capsys, *synthetic, check=False)
    assert proc.returncode == 2 and "--synthetic: no synthetic synapse data at " in proc.stderr
    assert not (tmp_path / "res").exists()
    from bench.data import synthetic_folder

    synthesize("synapse", synthetic_folder("synapse", tmp_path / "res" / "synthetic"), n_train=2, n_test=2, depth=6,
               size=32)  # the same data as _gt_folder's
    assert "2 cases of synapse" in run_bench_here(monkeypatch, capsys, *synthetic).stdout
    # a case without its prediction file fails the command unless --allow-missing scores it as empty
    next(iter(sorted(folder.iterdir()))).unlink()
    proc = run_bench_here(monkeypatch, capsys, *base, check=False)
    assert proc.returncode == 2 and "--allow-missing scores them as empty predictions" in proc.stderr, proc.stderr
    proc = run_bench_here(monkeypatch, capsys, *base, "--allow-missing")
    assert "1 of 2 test cases had no prediction (" in proc.stdout, proc.stdout


def test_the_splits_file_is_looked_for_under_nnunets_dataset_name(tmp_path):
    """The hint named nnUNet_preprocessed/<the raw folder's name>, wrong where that folder is no nnU-Net
    dataset folder (data/nnunet): nnU-Net names preprocessed data DatasetXXX_Name as the raw folder."""
    from bench.data.nnunet import _dataset_folder

    assert _dataset_folder(tmp_path / "Dataset501_Liver") == "Dataset501_Liver"
    assert _dataset_folder(tmp_path / "nnunet") == "DatasetXXX_Name"
    assert _dataset_folder(tmp_path / "Dataset5_Liver") == "DatasetXXX_Name"  # nnU-Net's ids have 3 digits


def _scored_alike(scores, written):
    """Whether ``scores`` (a case scored empty with --allow-missing) hold the numbers of ``written`` (the same
    folder with an all-zero label map written for it): every metric and per-case row, NaN for NaN."""
    import pandas as pd

    assert scores.metrics.keys() == written.metrics.keys()
    for key, value in written.metrics.items():
        assert _same(scores.metrics[key], value), (key, scores.metrics[key], value)
    pd.testing.assert_frame_equal(scores.per_case, written.per_case)
    pd.testing.assert_frame_equal(scores.per_class, written.per_class)


@pytest.mark.parametrize("policy", ["strict", "legacy-synapse"])
def test_allow_missing_scores_a_case_without_its_file_as_an_all_zero_volume_written(tmp_path, policy):
    """--allow-missing: a Synapse case without its file scores as its all-background volume written out would
    (each structure missed: DSC 0, HD95 the penalty under strict and 0 under legacy-synapse), said in a note and
    Scores.missing; without it, the error says the flag. A file with other problems is refused all the same."""
    ds, folder = _gt_folder(tmp_path, n_test=3)
    ids = ds.test_ids()
    path = folder / ds.prediction_name(ids[1])
    path.unlink()
    with pytest.raises(BenchError, match=rf"preds: no prediction of test case\(s\) {ids[1]} \(1 of 3; expected "
                                         rf"{ids[1]}.nii.gz\); --allow-missing scores them as empty predictions$"):
        score_predictions(folder, ds, SMOKE_ALL, policy)
    scores = score_predictions(folder, ds, SMOKE_ALL, policy, allow_missing=True)
    assert scores.missing == [ids[1]] and scores.scored["n_cases"] == 3
    assert "1 of 3 test cases had no prediction (" f"{ids[1]}): scored as empty predictions (--allow-missing)" \
        in scores.notes
    case = ds.load_test(ids[1])
    rows = scores.per_case[(scores.per_case["case"] == ids[1]) & (scores.per_case["n_ref"] > 0)]
    assert len(rows) and (rows["dice"] == 0).all()
    penalty = hd95_penalty(case.label.shape, case.spacing)
    assert rows["hd95"].tolist() == pytest.approx([penalty if policy == "strict" else 0.0] * len(rows))
    ds.write_prediction(case, np.zeros_like(case.label), path)
    written = score_predictions(folder, ds, SMOKE_ALL, policy)
    _scored_alike(scores, written)
    assert written.missing == [] and [n for n in scores.notes if "had no prediction" not in n] == written.notes
    # json says the missing cases; csv has their rows
    data = json.loads(render(scores, "json"))
    assert data["missing"] == [ids[1]] and json.loads(render(written, "json"))["missing"] == []
    assert render(scores, "csv").count(f"\n{ids[1]},") == ds.num_classes - 1
    assert "\n\nnote: 1 of 3 test cases had no prediction" in render(scores, "md")
    path.write_bytes(b"not a volume")  # present but unreadable: refused with the flag too
    with pytest.raises(BenchError, match=rf"{ids[1]}.nii.gz: cannot read it as a NIfTI volume"):
        score_predictions(folder, ds, SMOKE_ALL, policy, allow_missing=True)


@pytest.mark.parametrize("policy", ["legacy-isic", "strict"])
def test_allow_missing_scores_an_isic_image_without_its_mask_as_an_all_zero_png_written(tmp_path, policy):
    """ISIC: the empty mask on the scored grid; legacy-isic pools its lesion's pixels as missed (false negatives)."""
    from bench.evaluate import ground_truth

    ds, folder = _isic_gt_folder(tmp_path)
    first = ds.test_ids()[0]
    path = folder / ds.prediction_name(first)
    path.unlink()
    scores = score_predictions(folder, ds, SMOKE_ALL, policy, allow_missing=True)
    assert scores.missing == [first] and scores.metrics["dice"] < 1
    case = ds.load_test(first)
    ds.write_prediction(case, np.zeros_like(ground_truth(case, SMOKE_ALL, True)), path)
    _scored_alike(scores, score_predictions(folder, ds, SMOKE_ALL, policy))
    # every case without its file: nothing was predicted, the wrong folder, refused by name
    for case_id in ds.test_ids():
        (folder / ds.prediction_name(case_id)).unlink()
    with pytest.raises(BenchError, match=r"preds: no prediction files; .*; --allow-missing scores a case without its "
                                         r"file as empty, not a folder without any: the wrong folder\?$"):
        score_predictions(folder, ds, SMOKE_ALL, policy, allow_missing=True)


def test_allow_missing_notes_count_the_files_there(tmp_path):
    # a note about the files named "1 of 2 files" where the folder held one: the missing case counted as a file
    from bench.data.isic import ISIC_MASK_SUFFIX

    ds, folder = _isic_gt_folder(tmp_path, named=lambda case_id: f"{case_id}{ISIC_MASK_SUFFIX}.png")
    first, second = ds.test_ids()
    (folder / f"{first}{ISIC_MASK_SUFFIX}.png").unlink()
    notes = " ".join(score_predictions(folder, ds, SMOKE_ALL, allow_missing=True).notes)
    assert "1 of 1 files are named as" in notes and f"({second}{ISIC_MASK_SUFFIX}.png)" in notes


def test_allow_missing_counts_the_scored_cases_and_leaves_the_labels_beside_as_they_are(tmp_path, monkeypatch,
                                                                                        capsys):
    """eval.max_cases: only the cases scored count (an unscored case's file is still refused); a run's folder
    under another protocol is refused with the flag too (its cases, not misses); the command's json says the
    missing cases and its stderr the note. TransUNet's test script's <case>_gt.nii.gz is compared where there,
    and a case missing with its _gt file is scored empty."""
    ds, folder = _gt_folder(tmp_path, n_test=3)
    ids = ds.test_ids()
    capped = SMOKE_ALL.with_overrides(max_cases=2)
    (folder / ds.prediction_name(ids[2])).unlink()
    assert score_predictions(folder, ds, capped, allow_missing=True).missing == []
    (folder / ds.prediction_name(ids[0])).unlink()
    scores = score_predictions(folder, ds, capped, allow_missing=True)
    assert scores.missing == [ids[0]] and scores.scored["n_cases"] == 2
    assert f"1 of 2 test cases had no prediction ({ids[0]})" in " ".join(scores.notes)
    proc = run_bench_here(monkeypatch, capsys, "score", "--predictions", folder, "--dataset", "synapse", "--data-root",
                          ds.root, "--protocol", "smoke", "--allow-missing", "--format", "json")
    assert json.loads(proc.stdout)["missing"] == [ids[0], ids[2]]
    assert f"note: 2 of 3 test cases had no prediction ({ids[0]}, {ids[2]}): scored as empty predictions " \
           "(--allow-missing)" in proc.stderr.splitlines()
    (folder / MANIFEST).write_text(json.dumps({"run_id": "r1", "protocol": "capped"}), encoding="utf-8")
    with pytest.raises(BenchError, match=r"no prediction of test case\(s\) .*: pass --protocol capped$"):
        score_predictions(folder, ds, SMOKE_ALL, allow_missing=True)

    (tmp_path / "script").mkdir()
    ds, folder = _test_script_folder(tmp_path / "script")
    first, second = ds.test_ids()
    (folder / f"{first}_pred.nii.gz").unlink()  # its _gt file kept: compared, the same labels
    scores = score_predictions(folder, ds, SMOKE_ALL, "legacy-synapse", allow_missing=True)
    assert scores.missing == [first] and any(n.startswith("their labels are ours: the labels written beside the predictions of 2 of 2 test")
                                             for n in scores.notes)
    (folder / f"{first}_gt.nii.gz").unlink()  # none beside it: the other case's compared alone
    scores = score_predictions(folder, ds, SMOKE_ALL, "legacy-synapse", allow_missing=True)
    assert scores.missing == [first] and any(f"beside the predictions of 1 of 2 test cases (first: {second}_gt.nii.gz)" in n
                                             for n in scores.notes)


def test_allow_missing_pooled_over_folds_names_each_missing_cases_fold_and_refuses_a_fold_left_out(tmp_path):
    """--fold all: a missing case scores empty in its fold's DSC too, the note names its fold; one fold's files
    alone, or a fold without any of its files, are refused with the flag too (a folder not copied in)."""
    import shutil

    root = synthesize("nnunet", tmp_path / "data", dims=2, n_cases=7, size=32)  # folds of 2, 2, 1, 1, 1 cases
    ds = open_dataset("nnunet", root, fold="all")
    every = tmp_path / "cv"
    every.mkdir()
    for case_id in ds.cases:
        case = ds.load_test(case_id)
        ds.write_prediction(case, case.label, every / ds.prediction_name(case_id))
    gone = [ds.fold_cases[0][1], ds.fold_cases[1][0]]
    for case_id in gone:
        (every / ds.prediction_name(case_id)).unlink()
    scores = score_predictions(every, ds, SMOKE_ALL, allow_missing=True)
    assert f"2 of 7 test cases had no prediction ({gone[0]} of fold 0, {gone[1]} of fold 1)" in " ".join(scores.notes)
    assert scores.missing == gone
    for case_id in gone:
        case = ds.load_test(case_id)
        ds.write_prediction(case, np.zeros_like(case.label), every / ds.prediction_name(case_id))
    written = score_predictions(every, ds, SMOKE_ALL)
    _scored_alike(scores, written)
    assert scores.per_fold == written.per_fold and scores.per_fold[0]["dice"] < 1 and scores.per_fold[1]["dice"] < 1
    one = tmp_path / "fold_1"
    one.mkdir()
    for case_id in ds.fold_cases[1]:
        shutil.copyfile(every / ds.prediction_name(case_id), one / ds.prediction_name(case_id))
    with pytest.raises(BenchError, match=r"the files here are fold 1's validation cases only: pass --fold 1"):
        score_predictions(one, ds, SMOKE_ALL, allow_missing=True)
    for case_id in ds.fold_cases[3]:  # folds 0-2 and 4 held: fold 3 left out
        (every / ds.prediction_name(case_id)).unlink()
    for allow in (True, False):  # without the flag too: not offered where it would be refused
        with pytest.raises(BenchError, match=rf"cv: no prediction of any test case of fold\(s\) 3 \("
                                             rf"{ds.fold_cases[3][0]}; 1 of 7\): their fold_K/validation files left out\? "
                                             r"\(--allow-missing scores a case without its file as empty, not a whole "
                                             r"fold's\)$"):
            score_predictions(every, ds, SMOKE_ALL, allow_missing=allow)
