"""`bench report --format methods`: the Methods paragraphs say what ran (the recipe as recorded, the
iterations that ran, the policy's conventions, the code and environment), per board."""

from __future__ import annotations

import re
import shutil
import warnings

import pytest
import torch
from typer.testing import CliRunner

from bench.cli import app
from bench.data import synthetic_root
from bench.errors import BenchError
from bench.protocol import load_protocol
from bench.records import write_record
from bench.registry import get_entry
from bench.report import render_methods, write_report
from bench.run import plan_grid, run_one
from tests.fixtures import make_record


def _record(dataset: str = "synapse", seed: int = 0, iterations: int = 13950, commit: str | None = None,
            steps_per_epoch: int | None = None, n_cases: int = 2, **train: object) -> dict:
    """make_record with the protocol's recipe as a real record keeps it (``train`` changes its [train]
    settings) and the model's output channels in its config, as bench run writes them."""
    rec = make_record("unet", dataset, seed, n_cases=n_cases)
    recipe = load_protocol(rec["protocol"]["name"]).to_record()["recipe"]
    recipe["train"].update(train)
    rec["protocol"]["recipe"] = recipe
    rec["model_config"] = {"num_classes": 1 if dataset.startswith("isic") else 9, "in_chans": 3}
    rec["train"]["iterations"] = iterations
    if steps_per_epoch:  # records since they keep it
        rec["train"]["steps_per_epoch"] = steps_per_epoch
    if commit:
        rec["git_commit"] = commit
    return rec


def _methods(tmp_path, *recs: dict) -> str:
    for rec in recs:
        write_record(rec, tmp_path)
    return render_methods(tmp_path)


def test_adamw_names_its_settings_and_a_binary_board_bce(tmp_path):
    text = _methods(tmp_path, _record("isic17"))
    assert "AdamW (lr 0.001, betas (0.9, 0.999), eps 1e-8, weight decay 0.01)" in text
    assert "momentum" not in text
    assert "cosine annealing per epoch (T_max 50 epochs, eta_min 1e-5)" in text
    assert "1 BCE + 1 Dice (sigmoid)" in text and not re.search(r"\bCE\b", text)
    assert "foreground where the sigmoid ≥ 0.5" in text
    assert text.startswith(f"## isic17 · protocol isic17 v1 ({load_protocol('isic17').hash}) · policy legacy-isic")


def test_sgd_names_momentum_and_poly_power_and_the_multi_class_loss(tmp_path):
    text = _methods(tmp_path, _record("synapse"))
    assert "SGD (lr 0.01, momentum 0.9, weight decay 0.0001)" in text
    assert "betas" not in text
    assert "poly learning-rate decay per iteration (power 0.9)" in text
    assert "0.5 CE + 0.5 Dice (TransUNet's soft Dice" in text and "BCE" not in text


def test_legacy_synapse_conventions_say_voxels_and_the_miss_rule(tmp_path):
    text = _methods(tmp_path, _record("synapse"))
    assert "in voxels, spacing ignored" in text
    assert "the argmax over classes resized back to the slice's grid (nearest)" in text  # how volumes are scored
    assert "a missed structure (in the reference only) scores DSC 0 and HD95 0" in text


def test_iterations_that_ran_a_range_where_runs_differ(tmp_path):
    text = _methods(tmp_path, _record(seed=0, iterations=13950), _record(seed=1, iterations=13000))
    assert "Trained for 13000 to 13950 (runs differ) iterations over" in text  # an older record: no epoch size
    assert "cut" not in text


def test_max_iterations_is_said_to_cut_only_where_it_cut(tmp_path):
    """A journey: 2 full epochs of 6 iterations under max_iterations 12 were said to be cut short, and
    Synapse's 40 of 2 × 24 iterations were called 2 epochs."""
    text = _methods(tmp_path / "a", _record(iterations=40, max_iterations=40, epochs=2, steps_per_epoch=24))
    assert ("Trained for 40 iterations (1 epoch of 24 iterations and 16 iterations of the next); the recipe caps "
            "training at 40 iterations, before the end of its 2 epochs (48 iterations).") in text
    text = _methods(tmp_path / "b", _record("isic17", iterations=12, max_iterations=12, epochs=2, steps_per_epoch=6))
    assert ("Trained for 12 iterations (2 epochs of 6 iterations); the recipe's full 2 epochs (its cap of 12 "
            "iterations not reached).") \
        in text and "cut" not in text
    text = _methods(tmp_path / "c", _record(seed=0, iterations=30, steps_per_epoch=6),
                    _record(seed=1, iterations=3, steps_per_epoch=6))
    assert ("differing between runs: 5 epochs of 6 iterations (unet seed 0); 3 of the first epoch's 6 iterations "
            "(unet seed 1)") in text


def test_two_code_versions_are_both_named(tmp_path):
    text = _methods(tmp_path, _record(seed=0, commit="a" * 40), _record(seed=1, commit="b" * 40))
    assert "2 versions of its code" in text and "a" * 12 in text and "b" * 12 in text


def test_the_code_of_a_resumed_run_and_of_a_rescore_is_named(tmp_path):
    """An audit: a run trained under edited code, resumed (or rescored) under clean code, read as the clean code's."""
    dirty, clean = "a" * 40 + "-dirty", "b" * 40
    resumed = {**_record(seed=0), "git_commit": clean, "code_digest": "d" * 16}
    resumed["train"]["commits"] = [f"{dirty} sources {'c' * 16}", clean]
    text = _methods(tmp_path / "resumed", resumed)
    assert (f"2 versions of its code ({'a' * 12}-dirty (sources {'c' * 16}), {'b' * 12})" in text
            and "Every run was trained under each in turn" in text and '"-dirty": a checkout with uncommitted edits' in text)
    source = {**_record(seed=0), "git_commit": dirty, "code_digest": "c" * 16}
    rescored = {**source, "run_id": f"{source['run_id']}.strict", "policy": "strict", "rescored_from": source["run_id"],
                "hd95_unit": "mm", "rescored_with": {"git_commit": clean, "code_digest": "d" * 16,
                                                     "device": source["device"], "packages": {}}}
    text = _methods(tmp_path / "rescored", source, rescored)
    strict = text[text.index("policy strict"):]
    assert f"trained under {'a' * 12}-dirty (sources {'c' * 16}), scored under {'b' * 12};" in strict


def test_code_that_follows_the_rows_is_named_per_row(tmp_path):
    """An audit: every vmunet run under one version, every unet run under another; Methods named two
    versions, not which model ran which, though the comparison is the code's too."""
    vmunet = {**_record(seed=0), "model": "vmunet", "git_commit": "b" * 40}
    text = _methods(tmp_path, _record(seed=0, commit="a" * 40), vmunet)
    assert (f"Code per row: unet: {'a' * 12}; vmunet: {'b' * 12}; the versions follow the rows, so between rows of other "
            "code the model comparison and the code change cannot be told apart.") in text


def test_a_rescored_board_names_the_weights_it_scored(tmp_path):
    source = _record()
    rescored = {**_record(), "run_id": f"{source['run_id']}.strict", "policy": "strict",
                "rescored_from": source["run_id"], "hd95_unit": "mm"}
    rescored["protocol"]["recipe"]["eval"]["nsd_tolerance"] = 2
    text = _methods(tmp_path, source, rescored)
    strict = text[text.index("policy strict"):]
    assert ("Scores under strict come from evaluating again the weights trained in the legacy-synapse runs, without "
            "retraining.") in strict
    assert "Scored under" not in text[:text.index("policy strict")]  # the original board trained them
    assert "HD95 (95th percentile of both directions' surface distances pooled) in mm from each case's voxel " \
        "spacing; a missed structure (in the reference only) scores DSC 0 and HD95 a penalty, the diagonal of the " \
        "volume in mm" in strict and "NSD (normalised surface distance) at tolerance 2 mm." in strict


def test_a_stale_rescore_is_not_described_and_said_left_out(tmp_path):
    """A rescore of an earlier training of its run (other weights than the run's record names) is on no board,
    so Methods describes no board of it, and says so as the boards do."""
    from bench.records import StaleRescoresLeftOut

    source = {**_record(), "scored_weights": {"file": "final.pt", "sha256": "b" * 64}}
    stale = {**source, "run_id": f"{source['run_id']}.strict", "policy": "strict", "rescored_from": source["run_id"],
             "hd95_unit": "mm", "scored_weights": {"file": "final.pt", "sha256": "a" * 64}}
    with pytest.warns(StaleRescoresLeftOut, match="scored the weights of an earlier training of run "):
        text = _methods(tmp_path, source, stale)
    assert "policy legacy-synapse" in text and "strict" not in text


def test_a_2d_board_under_strict_says_pixels_and_the_image_diagonal_once(tmp_path):
    """A review: a 2-D strict board's Methods said HD95 "in mm from each case's spacing", a penalty of
    "the volume's diagonal", then "HD95 unit: pixels"."""
    with warnings.catch_warnings():  # its stored numbers are legacy-isic's: restated from its case rows
        warnings.simplefilter("ignore")
        text = _methods(tmp_path, {**_record("isic17"), "policy": "strict", "hd95_unit": "pixels"})
    assert "in pixels of the model's input (2-D images are scored at its resolution)" in text
    assert "HD95 a penalty, the image's diagonal in pixels" in text
    assert not re.search(r"\bmm\b|volume|HD95 unit", text)


def test_records_whose_numbers_the_boards_restate_are_named(tmp_path):
    """A review: the boards show a hand-edited record's numbers recomputed from its case rows, and the
    Methods text, written beside them, said nothing of it."""
    edited = _record(seed=1)
    edited["metrics"]["dice"] = 0.99
    with pytest.warns(UserWarning, match="other than this code recomputes from their own case rows"):
        text = _methods(tmp_path, _record(), edited)
    assert ("Restated from their case rows: unet seed 1 (stored numbers differ from those this version of bench "
            "recomputes: edited by hand, or stored by a version that aggregated otherwise).") in text
    assert "seed 0 (stored" not in text


def test_given_weights_from_before_a_runs_last_epoch_say_which_epoch(tmp_path):
    """--weights of an interrupted run's last.pt read as "trained by run r0" alone, as its finished weights.
    A review: a best.pt or lr_min.pt, the weights its run selects, read as "not its final ones" too, and a
    record's 16-digit sha256 (before the full hash was kept) as a whole hash."""
    by = {"run_id": "r0", "protocol": "smoke", "same_data": True, "same_items": True, "epochs": 10}
    recs = [_record(seed=seed) for seed in range(5)]
    for rec, (file, sha, epoch, checkpoint) in zip(recs, [
            ("last.pt", "ab" * 32, 2, "last"), ("final.pt", "cd" * 32, 9, "final"),
            ("best.pt", "ef" * 8, 4, "best_train_loss"), ("lr_min.pt", "01" * 32, 6, "lr_min"),
            ("old.pt", "23" * 32, 2, None)]):  # a file written before trained_by named its checkpoint
        rec["weights"] = {"file": file, "sha256": sha, "trained_by": {**by, "epoch": epoch, "checkpoint": checkpoint}}
    text = _methods(tmp_path, *recs)
    assert (f"evaluated from given weights last.pt (sha256 {'ab' * 32}), trained by run r0 (its last checkpoint, "
            "after epoch 3 of 10: an unfinished training's, not its final weights) under protocol smoke on this "
            "split's training items") in text
    assert f"given weights final.pt (sha256 {'cd' * 32}), trained by run r0 under protocol smoke" in text
    assert (f"given weights best.pt (sha256 {'ef' * 8}…, its first 16 hex digits), trained by run r0 (the weights "
            "it selects, those of the epoch with the lowest training loss: after epoch 5 of 10) under") in text
    assert ("lr_min.pt (sha256 " + "01" * 32 + "), trained by run r0 (the weights it selects, those of the last "
            "epoch at the schedule's lowest learning rate: after epoch 7 of 10) under") in text
    assert "old.pt (sha256 " + "23" * 32 + "), trained by run r0 (its weights after epoch 3 of 10, not its last " \
           "epoch's) under" in text


def test_given_weights_of_the_same_items_in_other_data_claim_no_leak(tmp_path):
    """A review: weights trained on the same items of data whose test labels were edited since read as "other
    data than this run's (its test cases may be among them)", a leak they cannot have."""
    by = {"run_id": "r0", "protocol": "smoke", "same_data": False, "same_items": False, "epochs": 1, "epoch": 0}
    cases = [({"same_item_names": True, "same_but_labels": True},
              "on this split's training items, in data whose label files (Synapse: test volumes) differ from this run's"),
             ({"same_item_names": True, "same_but_labels": None}, "on items named as this split's training items, "
              "in other data"),
             ({"same_item_names": False}, "on other data than this run's (its test cases may be among them)")]
    for seed, (said, words) in enumerate(cases):
        rec = _record(seed=seed)
        rec["weights"] = {"file": "w.pt", "sha256": "ab" * 32, "trained_by": {**by, **said}}
        assert words in _methods(tmp_path / str(seed), rec)


@pytest.mark.parametrize("option", [{"columns": "paper"}, {"published": True}])
def test_board_options_are_refused(tmp_path, option):
    write_record(_record(), tmp_path)
    with pytest.raises(BenchError, match=f"--{next(iter(option))} shapes the leaderboards; --format methods"):
        write_report(tmp_path, "methods", **option)


def test_the_statistics_the_tables_use_are_said_and_the_reference_adds_its_tests(tmp_path):
    """A review: Methods said nothing of the CIs, the paired tests, Holm or the ranks the report's tables
    show, and --reference, which decides the tests, was refused with --format methods."""
    from bench import stats

    vmunet = {**_record(seed=0), "model": "vmunet", "run_id": "synapse-synapse-vmunet-s0-00000001"}
    for rec in (_record(seed=0), _record(seed=1), vmunet):
        write_record(rec, tmp_path)
    text = write_report(tmp_path, "methods")
    assert ("**Statistical analysis.** Tables give each model's mean over its seeds ± their sample standard "
            "deviation (n − 1).") in text
    assert (f"95% confidence intervals of DSC and HD95: percentile bootstrap over test cases ({stats.N_BOOT} "
            "resamples, seeded)") in text
    assert "Wilcoxon" not in text and "Holm" not in text and "rank" not in text  # no --reference: no such tables
    text = write_report(tmp_path, "methods", reference="unet")
    assert ("Each model was compared with unet on DSC and HD95 by a two-sided Wilcoxon signed-rank test over the "
            "shared test cases") in text and "adjusted with Holm's step-down method" in text
    assert f"{stats.N_BOOT_RANKS} bootstrap resamples of those cases" in text
    with pytest.raises(BenchError, match="--reference 'swin_unet': no runs of that model"):
        write_report(tmp_path, "methods", reference="swin_unet")


def test_the_pooled_policy_is_tested_by_permutation(tmp_path):
    from bench import stats

    unet = _record("isic17")
    vmunet = {**_record("isic17"), "model": "vmunet", "run_id": "isic17-isic17-vmunet-s0-00000001"}
    text = _methods(tmp_path, unet, vmunet)
    assert "95% confidence intervals of DSC:" in text  # no HD95 under legacy-isic
    assert "Tables give each model's one run: no standard deviation." in text and "n − 1" not in text
    text = render_methods(tmp_path, reference="vmunet")
    assert ("Each model was compared with vmunet on DSC by a two-sided paired permutation test of the difference "
            "of the board's numbers (pooled over all test pixels)") in text and f"else {stats.N_PERM} drawn" in text


def test_the_cost_tables_counting_and_timing_are_said(tmp_path):
    """A review: Methods said nothing of how GMACs were counted (the scan included, beside thop's) nor of
    the latency setup."""
    from bench.profiles import write_profile

    rec = _record()
    rec["cost"].update(macs=1e9, paper_macs=5e8)
    write_record(rec, tmp_path)
    assert "## Computational cost" in (text := render_methods(tmp_path))
    assert "FlopCounterMode" in text and "selective scan included" in text and "thop 0.1.1" in text
    assert "Latency" not in text  # no bench profile record: no cost table timed
    row = {"model": "unet", "input_shape": "1x3x224x224", "model_config": {},
           "device_fingerprint": {"device": "cpu", "cpu": "AMD EPYC", "threads": 4, "torch": "2.5"},
           "fingerprint": "AMD EPYC x4 threads (AVX2) / torch 2.5", "device": "cpu", "precision": "fp32",
           "channels_last": False, "compiled": False, "scan_backend": None, "macs": 1e9, "paper_macs": 5e8,
           "latency_ms_median": 10.0, "timed_iters": 100, "warmup_iters": 20, "batch_size": 1}
    write_profile(row, tmp_path)
    text = render_methods(tmp_path)
    assert ("Latency on CPU AMD EPYC, 4 threads, torch 2.5 (float32, batch size 1): the median and "
            "90th percentile of 100 timed forward passes of random input, after 20 warm-up passes (unet; input "
            "1x3x224x224).") in text
    write_profile({**row, "warmup_iters": 1}, tmp_path)
    assert "after 1 warm-up pass (unet;" in render_methods(tmp_path)
    del row["warmup_iters"]  # a profile written before it was kept: said so, not guessed
    write_profile(row, tmp_path)
    assert "after warm-up passes (their number not recorded)" in render_methods(tmp_path)


def test_the_cli_prints_it_and_writes_out(tmp_path):
    write_record(_record("isic17"), tmp_path)
    res = CliRunner().invoke(app, ["report", "--results", str(tmp_path), "--format", "methods"])
    assert res.exit_code == 0, res.output
    assert "**Training.**" in res.output and "AdamW" in res.output
    out = tmp_path / "methods.md"
    res = CliRunner().invoke(app, ["report", "--results", str(tmp_path), "--format", "methods", "--out", str(out)])
    assert res.exit_code == 0 and "**Models.**" in out.read_text(encoding="utf-8")
    refused = CliRunner().invoke(app, ["report", "--results", str(tmp_path), "--format", "methods", "--published"])
    # bench's entry point turns it into one line and exit 2; in process it arrives as the exception
    assert isinstance(refused.exception, BenchError) and "--published shapes the leaderboards" in str(refused.exception)
    res = CliRunner().invoke(app, ["report", "--results", str(tmp_path), "--format", "methods", "--reference", "unet"])
    assert res.exit_code == 0 and "**Statistical analysis.**" in res.output, res.output
    # --out methods.tex: the same text as LaTeX (it was refused: "a .tex file holds latex"), escaped as the tables
    tex = tmp_path / "methods.tex"
    res = CliRunner().invoke(app, ["report", "--results", str(tmp_path), "--format", "methods", "--out", str(tex)])
    assert res.exit_code == 0, res.output
    text, md = tex.read_text(encoding="utf-8"), render_methods(tmp_path)
    assert text.startswith("% Requires \\usepackage[T1]{fontenc}") and "booktabs" not in text
    assert "\n\\subsection*{isic17 $\\cdot$ protocol isic17 v1" in text and "**" not in text and "##" not in text
    assert "\n\n\\paragraph{Training.} Optimizer AdamW (lr 0.001" in text
    assert text.count("\\paragraph{") == md.count("**") // 2 and "weight decay 0.01" in text
    assert "Evaluation: foreground where the sigmoid $\\geq$ 0.5" in text


def test_methods_out_replaces_its_file_atomically(tmp_path, monkeypatch):
    """`--format methods --out` replaces its file as every other format does: a crash while writing leaves
    the old text whole, not a half-written Methods section, and no temporary file beside it."""
    import bench.fileio

    write_record(_record(), tmp_path)
    out = tmp_path / "paper" / "methods.md"
    out.parent.mkdir()
    out.write_text("old", encoding="utf-8")

    def crash(src, dst):
        raise OSError("simulated crash at the rename")

    monkeypatch.setattr(bench.fileio.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        write_report(tmp_path, "methods", out=out)
    assert out.read_text(encoding="utf-8") == "old" and [p.name for p in out.parent.iterdir()] == ["methods.md"]


def test_a_real_tiny_run_states_what_ran(tmp_path):
    """The smoke protocol's description says 40 iterations; capped at 3 here, the text says 3."""
    root = synthetic_root("isic17", tmp_path / "synth")
    proto = load_protocol("smoke").with_overrides(img_size=32, max_iterations=3, max_cases=2)
    (spec,) = plan_grid(models=["unet"], dataset="isic17", protocol=proto, seeds=[0], data_root=root,
                        synthetic=False, results_dir=tmp_path / "res", tiny=True)
    rec = run_one(spec, results_dir=tmp_path / "res", device=torch.device("cpu"))
    text = render_methods(tmp_path / "res")
    assert "OFF-PROTOCOL (img_size=32, max_cases=2, max_iterations=3)" in text
    assert ("Trained for 3 iterations (3 of the first epoch's 6 iterations); the recipe caps training at 3 iterations, "
            "before the end of its 2 epochs (12 iterations).") in text  # 24 images in batches of 4
    assert rec["train"]["steps_per_epoch"] == 6
    assert ("unet (tiny): a convolutional network; the small test configuration, not the paper's (widths=[8, 16, 32, "
            "64])") in text
    assert f"{rec['cost']['params'] / 1e6:.2f} M parameters" in text
    assert "1 BCE + 0.5 Dice (sigmoid)" in text and not re.search(r"\bCE\b", text)
    assert "Inputs resized to 32 × 32" in text and "only the first 2 test cases" in text
    assert f"Seed 0. Training set: {rec['n_train']} items." in text and "2 test cases per run" in text
    assert f"(synthetic data generated by bench, identity {rec['data_id'].split(':')[1]} from its generator's " \
           "settings)" in text and "data id" not in text
    assert f"torch {torch.__version__}" in text and "trained from scratch" in text
    assert get_entry("unet").family == "cnn"


def test_the_split_is_said_as_the_data_made_it(tmp_path):
    """Own data without a splits_final.json: bench drew the split, which the text called "the dataset's
    test split"; records before split_rule keep that wording."""
    from bench.data import open_dataset, synthetic_root

    root = synthetic_root("nnunet", tmp_path / "synth")
    drawn = open_dataset("nnunet", root).split_rule
    assert drawn.startswith("a split drawn by bench (numpy's default_rng(12345) permutation")
    rec = _record()
    rec["split_rule"] = drawn
    assert f"test cases per run from {drawn}." in _methods(tmp_path / "drawn", rec)
    del rec["split_rule"]
    assert "test cases per run from the dataset's test split." in _methods(tmp_path / "old", rec)
    assert " 1 test case per run from " in _methods(tmp_path / "one", _record(n_cases=1))  # not "1 test cases"
    (root / "splits_final.json").write_text('[{"train": ["synth_000", "synth_001"], "val": ["synth_002"]}]',
                                            encoding="utf-8")
    assert open_dataset("nnunet", root).split_rule == (
        "fold 0 of the data's splits_final.json (its val cases as test cases)")


def test_seeds_per_model_where_they_differ_and_a_set_key_called_so(tmp_path):
    """A journey: a --tiny --set widths=... run of seed 0 beside seeds 0 and 1 of the tiny unet read
    "Seeds 0, 1", and its widths as the tiny configuration's."""
    tiny = {k: list(v) if isinstance(v, tuple) else v for k, v in get_entry("unet").tiny.items()}
    recs = []
    for seed, widths in ((0, None), (1, None), (0, [4, 8, 16, 32])):
        rec = _record(seed=seed)
        rec["model_config"].update(tiny, **({"widths": widths} if widths else {}))
        rec["tiny"] = True
        if widths:
            rec["run_id"] += "-w4"
        recs.append(rec)
    text = _methods(tmp_path, *recs)
    assert "Seeds differing between models: unet (tiny) 0, 1; unet (tiny, widths=[4, 8, 16, 32]) 0" in text
    assert ("unet (tiny, widths=[4, 8, 16, 32]): a convolutional network; the small test configuration, not the "
            "paper's, with widths=[4, 8, 16, 32] set otherwise") in text  # records before set_keys: by whom unsaid
    assert "unet (tiny): a convolutional network; the small test configuration, not the paper's (widths=[8, 16, " \
           "32, 64])" in text


def test_a_key_the_model_chose_for_the_input_is_told_from_one_the_user_set(tmp_path):
    """A review: Swin-Unet's window, which it chose itself for a small input, read "with window_size=4 set
    otherwise", as if the user had set it."""
    tiny = {k: list(v) if isinstance(v, tuple) else v for k, v in get_entry("unet").tiny.items()}
    rec = _record()
    rec["model_config"].update(tiny, widths=[4, 8, 16, 32], window_size=4)
    rec.update(tiny=True, set_keys=["widths"])
    text = _methods(tmp_path, rec)
    assert ("the small test configuration, not the paper's, with widths=[4, 8, 16, 32] set by the user, with "
            "window_size=4 chosen by the model for the input size") in text and "set otherwise" not in text


def test_a_3d_protocols_volumetric_variant_is_the_papers_configuration(tmp_path):
    """A review: every lightm_unet_3d run read "the paper's configuration, with spatial_dims=3 chosen by the
    model for the input size", while its label and the published table take the protocol's dimensions for
    no change (one rule: labels.config_changes); a key the user set is still said."""
    rec = make_record("lightm_unet", dataset="nnunet", protocol="lightm_unet_3d", classes=["liver", "tumour"],
                      model_config={"num_classes": 3, "in_chans": 1, "img_size": 128, "spatial_dims": 3})
    rec["protocol"]["recipe"] = load_protocol("lightm_unet_3d").to_record()["recipe"]
    rec["set_keys"] = []
    set_one = {**rec, "run_id": rec["run_id"] + "x", "seed": 1, "set_keys": ["init_filters"],
               "model_config": {**rec["model_config"], "init_filters": 16}}
    text = _methods(tmp_path, rec, set_one)
    assert "lightm_unet: a state-space (Mamba-style) model; the paper's configuration; " in text
    assert ("lightm_unet (init_filters=16): a state-space (Mamba-style) model; the paper's configuration, with "
            "init_filters=16 set by the user;") in text and "spatial_dims" not in text


def test_the_protocols_dimensions_are_read_once_per_board_not_per_row(tmp_path, monkeypatch):
    """A board's rows share its protocol: its recipe is rebuilt once for the board (a lightm_unet_3d board
    of two rows still says both in the 3-D variant's terms), not once per row."""
    import bench.report.methods as methods

    rec = make_record("lightm_unet", dataset="nnunet", protocol="lightm_unet_3d", classes=["liver", "tumour"],
                      model_config={"num_classes": 3, "in_chans": 1, "img_size": 128, "spatial_dims": 3})
    rec["protocol"]["recipe"] = load_protocol("lightm_unet_3d").to_record()["recipe"]
    other = {**rec, "run_id": rec["run_id"] + "x", "model_config": {**rec["model_config"], "init_filters": 16}}
    built, real = [], methods.protocol_from_record
    monkeypatch.setattr(methods, "protocol_from_record", lambda meta: built.append(meta["name"]) or real(meta))
    text = _methods(tmp_path, rec, other)
    assert text.count("the paper's configuration") == 2 and "spatial_dims" not in text
    assert built == ["lightm_unet_3d"]


def test_a_tiny_key_set_back_to_the_papers_value_is_said_once(tmp_path):
    """A review: --tiny --set widths=<the paper's> printed "tiny test configuration, with  set otherwise"."""
    rec = _record()
    rec["model_config"].update(widths=list(get_entry("unet").paper_config.get("widths", [64, 128, 256, 512, 1024])))
    rec["tiny"] = True
    text = _methods(tmp_path, rec)
    model = text[text.index("**Models.**"):text.index("**Training.**")]
    assert "with  set" not in model and "set otherwise" in model and "widths=[" in model


def test_a_gpu_run_names_its_tf32_and_cudnn_settings(tmp_path):
    rec = _record()
    rec["device"] = {"device": "cuda", "gpu": "NVIDIA H100", "cuda": "12.8", "cudnn": 91000,
                     "tf32_cudnn": True, "tf32_matmul": False, "cudnn_deterministic": True, "cudnn_benchmark": False}
    older = _record(seed=1)
    older["device"] = {"device": "cuda", "gpu": "NVIDIA H100", "cuda": "12.8"}  # before the flags were kept
    text = _methods(tmp_path, rec, older)
    assert ("NVIDIA H100 (CUDA 12.8, cuDNN 91000, TF32 convolutions on, TF32 matmuls off, "
            "deterministic cuDNN kernels)") in text
    assert "NVIDIA H100 (CUDA 12.8)" in text


def test_resumed_runs_are_named_by_their_rows_labels(tmp_path):
    """A journey: "Vmunet_v2 seed 0 resumed after epoch 7; vmunet_v2 seed 0 resumed after epoch 1":
    which configuration was which, and a model's name capitalised."""
    plain, other = _record(), _record()
    other["model_config"]["widths"] = [4, 8, 16, 32]
    other["run_id"] += "-w4"
    plain["train"]["resumed_from"], other["train"]["resumed_from"] = 6, 0
    plain["train"]["resumes"], other["train"]["resumes"] = [2, 4, 6], [0]
    other["train"]["world_size"] = 2
    text = _methods(tmp_path, plain, other)
    assert ("Resumed after an interruption: unet seed 0 after epochs 3, 5 and 7; "
            "unet (widths=[4, 8, 16, 32]) seed 0 after epoch 1.") in text
    assert "Trained in several processes: unet (widths=[4, 8, 16, 32]) seed 0 on 2 processes." in text
    del plain["train"]["resumes"]  # a record before every resume was kept: its last one only, said so
    assert "unet seed 0 after epoch 7 (the last resume);" in _methods(tmp_path / "older", plain, other)


def _run_folder(results, run_id: str, *said: str, checkpoints: tuple[str, ...] = ()) -> None:
    """``runs/<run_id>/`` as bench run leaves it: its log (``said``, as runlog writes lines) and checkpoint files."""
    from bench import runlog
    from bench.records import run_dir

    folder = run_dir(results, run_id)
    (folder / "checkpoints").mkdir(parents=True)
    for name in checkpoints:
        (folder / "checkpoints" / name).write_bytes(b"weights")
    with runlog.kept(folder):
        for text in said:
            runlog.append(text)


def test_runs_without_a_record_are_named_in_methods_and_warned(tmp_path, monkeypatch, capsys):
    """A seed's record deleted, or a seed diverged: the board showed "Seeds 0, 2" and said nothing. Runs
    of the boards' datasets and protocols begun without a record are named, with what their folders
    say; not a run a live process trains, or one of another board. Each is named with its run id's last part
    (a failed off-protocol variant of unet seed 0 read as the board's unet seed 0), a run whose rescore
    remains is named all the same (its first board lost it), and the warning says how it goes away."""
    from bench.claim import claim_run
    from bench.records import rescore_id
    from tests.fixtures import run_bench_here

    kept = {**_record(), "tiny": True}  # its row "unet (tiny)", in Methods and bench report's warning alike
    write_record(kept, tmp_path)
    stem = kept["run_id"].rsplit("-s0-", 1)[0].rsplit("-unet", 1)[0]  # synapse-synapse
    deleted, diverged, killed, live, twin = (f"{stem}-{m}-s{s}-0000000{s}" for m, s in
                                             (("unet", 1), ("vmunet", 1), ("unet", 2), ("unet", 3), ("unet", 4)))
    _run_folder(tmp_path, deleted, f"[2/5] {deleted}: training", f"  {deleted}: DSC 80.00 % · HD95 20.00 voxels · 9s",
                checkpoints=("last.pt", "final.pt"))
    _run_folder(tmp_path, diverged, f"[3/5] {diverged}: training", f"  {diverged}: FAILED: non-finite loss (nan) at "
                "epoch 3, step 40: training stopped. Lower the learning rate or check the data",
                checkpoints=("last.pt",))
    _run_folder(tmp_path, killed, checkpoints=("last.pt",))  # killed before run logs were kept
    _run_folder(tmp_path, live, f"[4/5] {live}: training", checkpoints=("last.pt",))
    _run_folder(tmp_path, twin, f"[5/5] {twin}: training", f"  {twin}: DSC 80.00 % · HD95 20.00 voxels · 9s",
                checkpoints=("last.pt", "final.pt"))
    rescored = _record(seed=4)
    rescored.update(run_id=rescore_id(twin, "strict"), policy="strict", rescored_from=twin)
    write_record(rescored, tmp_path)
    _run_folder(tmp_path, "isic17-isic17-unet-s1-00000001", checkpoints=("final.pt",))  # no board of it here
    variant = f"{stem}-unet-s0-abcdef12"  # `bench run ... --lr 1e30`: another run id
    _run_folder(tmp_path, variant, f"[1/1] {variant}: training", f"{variant}: settings: unet (tiny) · off-protocol: "
                "lr=1e+30", f"  {variant}: FAILED: non-finite loss (inf)")
    said = ("Runs without a record, which no board counts: unet (tiny) seed 0, off-protocol: lr=1e+30, run …abcdef12 "
            f"(failed: non-finite loss (inf)), another run than the board's unet (tiny) seed 0 (run …{kept['run_id'][-8:]}); "
            "unet seed 1, run …00000001 (finished, record missing: deleted?); unet seed 2, run …00000002 "
            "(interrupted); unet seed 4, run …00000004 (finished, record missing: deleted?; its rescore under strict remains); vmunet seed 1, "
            "run …00000001 (failed: non-finite loss (nan) at epoch 3, step 40: training stopped).")
    with claim_run(tmp_path, live):
        with pytest.warns(UserWarning, match=re.escape(said)):
            text = render_methods(tmp_path)
        assert text.endswith(f"## Runs without a record\n\n{said}\n")
        report = run_bench_here(monkeypatch, capsys, "report", "--results", tmp_path)
        (line,) = [line for line in report.stderr.splitlines() if "without a record" in line]
        assert line.startswith(f"warning: {said} Their logs: ")
        assert line.endswith(f"once a run should not count, delete (or move out) its folder {tmp_path}/runs/<run "
                             "id>/ and it is no longer said")
    with pytest.warns(UserWarning):
        assert "unet seed 3, run …00000003 (interrupted)" in render_methods(tmp_path)  # its process gone: not trained now
        assert "vmunet" not in render_methods(tmp_path, models="unet")  # of the models asked for only
    for run_id in (variant, deleted, diverged, killed, live, twin):  # the advice followed: nothing said
        shutil.rmtree(tmp_path / "runs" / run_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "without a record" not in render_methods(tmp_path)


def test_a_runs_logged_label_is_its_board_rows(tmp_path):
    """The label a run's log keeps (runlog.settings), which names it where it wrote no record, is made by
    the board's rule (label_runs): a failed --weights run read "unet" where its row reads "unet (weights
    mine.pth@abababab)". A pretrained file is named in the log always (read beside runs of any init); on
    a board, where its runs started from several."""
    from dataclasses import replace
    from pathlib import Path

    from bench.records import load
    from bench.report.labels import label_runs
    from bench.run import RunSpec, _settings

    spec = RunSpec(model="unet", dataset="synapse", protocol=load_protocol("smoke"), seed=0, data_root=Path("/data"),
                   synthetic=False, policy="strict", weights=("/w/mine.pth", "ab" * 32))
    given = {**make_record("unet", protocol="smoke", seed=0),
             "weights": {"file": "mine.pth", "sha256": "ab" * 32, "trained_by": None}}
    started = {**make_record("unet", protocol="smoke", seed=1),
               "init": {"source": "imagenet", "file": "r34.pth", "sha256": "cd" * 8}}
    for rec in (given, started, make_record("unet", protocol="smoke", seed=2)):
        write_record(rec, tmp_path)
    rows = label_runs(load(tmp_path)).set_index("seed")["model_label"]
    assert _settings(spec) == rows[0] == "unet (weights mine.pth@abababab)"
    init = replace(spec, weights=None, init=("imagenet", "/w/r34.pth", "cd" * 8))
    assert _settings(init) == rows[1] == "unet (init r34.pth@cdcdcdcd)"
    assert _settings(replace(spec, weights=None)) == "unet" and rows[2] == "unet (from scratch)"


def test_the_lead_says_whose_protocol_the_runs_followed(tmp_path):
    """A user's protocol file read as "bench's protocol", and a built-in's name over other settings as the
    built-in itself: a reader takes both for the bench recipe."""
    synapse = load_protocol("synapse")
    builtin, own, copied, earlier = _record(seed=0), _record(seed=1), _record(seed=2), _record(seed=3)
    for rec in (builtin, own, copied, earlier):
        rec["protocol"]["version"] = synapse.version  # the fixture's records are of an earlier synapse's version
    own["protocol"]["name"] = "smoke_student"
    copied["protocol"]["hash"] = earlier["protocol"]["hash"] = "0" * 16
    earlier["protocol"]["version"] = synapse.version - 1
    text = _methods(tmp_path, builtin)
    assert f"Runs of bench protocol synapse, version {synapse.version} (settings hash {synapse.hash}); scores" in text
    text = _methods(tmp_path / "own", own)
    assert "Runs of the custom protocol smoke_student (a protocol file, not one built into bench), version" in text
    text = _methods(tmp_path / "copied", copied)
    assert (f"Runs of bench protocol synapse, version {synapse.version} (settings hash {'0' * 16}), a modified copy "
            f"(built-in: {synapse.hash}); scores") in text
    text = _methods(tmp_path / "earlier", earlier)
    assert (f"version {synapse.version - 1} (settings hash {'0' * 16}), another version (built-in: v{synapse.version}, "
            f"{synapse.hash}); scores") in text


def test_weights_only_evaluated_still_say_the_inputs_they_were_given(tmp_path):
    """A board of the authors' checkpoints said "Training. None here" and nothing of the resize and the
    normalisation the scores depend on; the full sha256 is said, to match the authors' published one."""
    rec = _record("isic17")
    rec["weights"] = {"file": "best.pth", "sha256": "ab" * 32, "trained_by": None}
    isic = load_protocol("isic17")
    text = _methods(tmp_path, rec)
    assert (f"**Training.** None here: every run evaluated given weights. At evaluation: inputs resized to "
            f"{isic.img_size} × {isic.img_size}, intensities normalised ({isic.normalize}). Precision {isic.dtype}.") in text
    assert f"given weights best.pth (sha256 {'ab' * 32})" in text


def test_given_weights_normalised_by_this_datas_foreground_say_whose_statistics(tmp_path):
    """lightm_unet_3d normalises CT by the training cases' foreground (nnU-Net's CTNormalization): for a
    checkpoint only evaluated those are this data's, not its own plans'; a run trained here needs no such word."""
    rec = make_record("lightm_unet", dataset="nnunet", protocol="lightm_unet_3d", classes=["liver", "tumour"],
                      model_config={"num_classes": 3, "in_chans": 1, "img_size": 128, "spatial_dims": 3})
    rec["protocol"]["recipe"] = load_protocol("lightm_unet_3d").to_record()["recipe"]
    said = "statistics of this dataset's training cases' foreground (a checkpoint's own plans are not read)"
    assert said not in _methods(tmp_path / "trained", rec)
    rec["weights"] = {"file": "checkpoint_final.pth", "sha256": "ab" * 32, "trained_by": None}
    assert said in _methods(tmp_path / "given", rec)


def test_a_cross_validation_board_says_its_folds_are_averaged(tmp_path):
    """A CV journey: the board's mean of the folds' scores read as nnU-Net's summary of all folds' cases."""
    recs = []
    for fold, n_cases in ((0, 3), (1, 2)):  # 5 cases in 2 folds: k-fold's own unevenness, no runs that differ
        rec = _record(seed=0, n_cases=n_cases)
        rec["split"], rec["run_id"] = f"fold{fold}", f"r_fold{fold}"
        recs.append(rec)
    text = _methods(tmp_path, *recs)
    assert "(cross-validation)" in text and "differing between runs: 3" not in text
    assert ("each fold's run scored on that fold's own validation cases (2 to 3 per fold, 5 over the folds run) "
            "and trained on its training cases, from cross-validation folds 0, 1.") in text
    assert text.count("Each fold is scored over its own validation cases and the folds' scores are averaged") == 1
    # the boards' captions give nnU-Net's pooled figure beside the mean (their case rows hold the Dice)
    assert "captions also give the DSC pooled over all folds' validation cases (per seed)" in text
    assert "Each fold is scored" not in _methods(tmp_path / "test", _record(seed=0), _record(seed=1))


def test_reproducibility_says_what_repeats_bit_for_bit_where_the_runs_trained(tmp_path):
    """A reviewer found the Methods text named threads and CPU but not what they mean for repeating a run:
    bit-identical on a CPU at the same thread count and instruction set, not on a GPU."""
    cpu = _record()
    cpu["device"].update(cpu_capability="AVX2", mkl_cbwr="COMPATIBLE")
    text = _methods(tmp_path / "cpu", cpu)
    assert ("**Reproducibility.** Every run seeds its random generators from its seed (the data order from seed and "
            "epoch, each item's augmentation from seed, epoch and item); on a CPU, a run repeated with the same code, "
            "data, seed, thread count, vector instruction set (AVX2) and MKL reproducibility mode (COMPATIBLE) "
            "gives bit-identical weights and scores") in text
    assert "on a GPU" not in text
    gpu = _record(seed=1)
    gpu["device"] = {"device": "cuda", "gpu": "NVIDIA H100", "cuda": "12.8"}
    both = _methods(tmp_path / "both", _record(), gpu)
    assert "(another thread count sums in another order, and training carries last-bit differences on); on a GPU, " \
           "kernels that add with atomics can differ in the last bits between repeats" in both
    assert "vector instruction set" not in both  # a record that keeps none: nothing made up
    assert "number of processes" not in both
    parallel = _record()
    parallel["train"]["world_size"] = 2  # --nproc 2: each process's share of the batch sums in its order
    assert "the same code, data, seed, thread count and number of processes gives" in _methods(tmp_path / "nproc",
                                                                                                 parallel)
    given = _record("isic17")
    given["weights"] = {"file": "best.pth", "sha256": "ab" * 32, "trained_by": None}
    assert "Reproducibility" not in _methods(tmp_path / "given", given)


def test_each_record_is_read_once(tmp_path, monkeypatch):
    """--format methods read every record for the boards' frame, then each finished run's again, and a rescore's
    run's a third time: a large results folder read twice over."""
    from bench import records

    source = _record()
    rescored = {**_record(), "run_id": f"{source['run_id']}.strict", "policy": "strict",
                "rescored_from": source["run_id"]}
    for rec in (source, rescored, _record(seed=1), _record("isic17")):
        write_record(rec, tmp_path)
    read = []
    parse = records.parse_record
    monkeypatch.setattr(records, "parse_record", lambda path: read.append(path.name) or parse(path))
    text = render_methods(tmp_path)
    assert sorted(read) == sorted(p.name for p in (tmp_path / "records").glob("*.json"))  # 4 files, once each
    assert "come from evaluating again the weights trained in the legacy-synapse runs" in text


def test_a_rescore_whose_run_record_is_gone_names_the_original_runs(tmp_path):
    source = _record()
    write_record({**_record(), "run_id": f"{source['run_id']}.strict", "policy": "strict",
                  "rescored_from": source["run_id"]}, tmp_path)  # its run's record deleted since
    assert "the weights trained in the original runs, without retraining" in render_methods(tmp_path)
