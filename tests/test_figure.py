"""`bench figure`: the runs and cases it shows, and panels that are exactly the predictions `bench
predict` writes, on the grid each case was scored on."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from bench import records
from bench.data import open_dataset, synthesize
from bench.errors import BenchError
from bench.figure import FigurePanels, case_dsc, check_out, choose_cases, choose_runs, draw_figure, figure_panels
from bench.predict import predict_run
from bench.protocol import load_protocol
from bench.registry import get_entry
from bench.run import plan_grid, run_one
from tests.fixtures import make_record, run_bench, run_bench_here

CPU = torch.device("cpu")


def _train(dataset, root, results, model="unet", seed=0, tiny=False):
    proto = load_protocol("smoke").with_overrides(img_size=32, max_iterations=2, max_cases=2)
    (spec,) = plan_grid(models=[model], dataset=dataset, protocol=proto, seeds=[seed], data_root=root,
                        synthetic=False, results_dir=results, tiny=tiny,
                        model_overrides={} if tiny else dict(get_entry(model).tiny))
    return run_one(spec, results_dir=results, device=CPU)


def _rows(dsc_by_case):
    """per_case rows of one run: {case: [class DSCs]}."""
    return {"per_case": [{"case": c, "class": k, "dice": d} for c, ds in dsc_by_case.items()
                         for k, d in enumerate(ds, start=1)]}


def test_cases_shown_are_those_where_the_runs_differ_most():
    a = case_dsc(_rows({"c1": [0.9, 0.7], "c2": [0.5, math.nan], "c3": [0.2, 0.2], "c4": [0.6, 0.6], "c5": [0.1, 0.1]}))
    b = case_dsc(_rows({"c1": [0.8, 0.8], "c2": [0.9, 0.9], "c3": [0.6, 0.6], "c4": [1.0, 1.0], "c5": [0.1, 0.1]}))
    assert a["c1"] == pytest.approx(0.8) and a["c2"] == 0.5  # a class without a value is left out, as the boards
    # ranges: c1 0, c2 0.4, c3 0.4, c4 0.4, c5 0 -> the 0.4 ties by id, then c1 before c5
    assert choose_cases([a, b], n=3) == ["c2", "c3", "c4"]
    assert choose_cases([a, b], n=5) == ["c2", "c3", "c4", "c1", "c5"]
    assert choose_cases([a, b], ["c5", "c1"]) == ["c5", "c1"]  # --cases: in the order given
    with pytest.raises(BenchError, match=r"--cases c9: not a test case the runs were scored on \(there: c1, c2, c3"):
        choose_cases([a, b], ["c1", "c9"])
    # a case one run did not score is no candidate; a case without any value goes last
    c = case_dsc(_rows({"c1": [math.nan], "c2": [0.3], "c3": [0.3]}))
    assert choose_cases([a, b, c], n=3) == ["c2", "c3", "c1"]
    with pytest.raises(BenchError, match="--n-cases must be a whole number >= 1; got 0"):
        choose_cases([a, b], n=0)


def test_one_run_per_model_of_one_board(tmp_path):
    res = tmp_path / "res"
    for model, seed in (("vmunet", 2), ("vmunet", 1), ("unet", 1), ("unet", 0)):
        records.write_record(make_record(model, seed=seed), res)
    runs = lambda *a, **k: [(c.rec["model"], c.rec["seed"]) for c in choose_runs(res, *a, **k)]  # noqa: E731
    assert runs() == [("unet", 0), ("vmunet", 1)]
    assert runs(["vmunet", "unet"]) == [("vmunet", 1), ("unet", 0)]
    assert runs(seed=1) == [("unet", 1), ("vmunet", 1)]
    with pytest.raises(BenchError, match=r"--seed 0: no finished run of vmunet with that seed"):
        choose_runs(res, seed=0)
    (tmp_path / "empty").mkdir()  # as bench predict and rescore: most likely not the folder meant
    with pytest.raises(BenchError, match="empty: no finished runs; pass the --results folder that `bench run` wrote"):
        choose_runs(tmp_path / "empty")
    # a model in two configurations is two board rows: two columns, labelled as the board labels them
    records.write_record(make_record("unet", seed=0, model_config={"widths": [4, 8, 16, 32]}), res)
    assert [c.label for c in choose_runs(res, ["unet"])] == ["unet", "unet (widths=[4, 8, 16, 32])"]
    # a rescored record is its own board's, predicted from the weights of the run it rescored
    from bench.metrics import policy_fields

    source = choose_runs(res)[-1].rec["run_id"]
    rescored = make_record("vmunet", seed=1, run_id=f"{source}.strict")
    rescored.update(policy="strict", policy_conventions=policy_fields("strict"), rescored_from=source)
    records.write_record(rescored, res)
    (col,) = choose_runs(res, ["vmunet"], policy="strict")
    assert col.rec["policy"] == "strict" and col.weights_of["run_id"] == rescored["rescored_from"]
    assert runs(["vmunet"]) == [("vmunet", 1)]  # without --policy: the runs' own board
    with pytest.raises(BenchError, match=r"--policy strict-monai: no finished runs of it here \(there: "):
        choose_runs(res, policy="strict-monai")
    records.write_record(make_record("unet", "isic17"), res)
    with pytest.raises(BenchError, match=r"the runs form 2 boards \(isic17 · isic17 · legacy-isic; synapse · "
                                         r"synapse · legacy-synapse\); .* choose it with --dataset, --protocol, --policy "
                                         "or --models"):
        choose_runs(res)
    assert [c.rec["dataset"] for c in choose_runs(res, dataset="isic17")] == ["isic17"]
    assert [c.rec["dataset"] for c in choose_runs(res, protocol="isic17")] == ["isic17"]
    with pytest.raises(BenchError, match=r"--dataset polyp: no runs of it in .* \(there: isic17, synapse\)"):
        choose_runs(res, dataset="polyp")


def test_a_models_column_is_its_lowest_seed_not_its_first_run_id(tmp_path):
    """Seeds 2 and 10: the run ids sort "s10" before "s2", but the figure shows the lowest seed's run, as
    choose_runs says, so a figure drawn again after more seeds shows the same run."""
    res = tmp_path / "res"
    for seed in (10, 2):
        records.write_record(make_record("vmunet", seed=seed), res)
    assert [c.rec["seed"] for c in choose_runs(res)] == [2]


def test_a_rescored_board_of_a_run_trained_again_or_gone_is_said(tmp_path):
    """A housekeeping journey: a rescore of an earlier training drew its numbers beside the new weights'
    predictions; one whose run's record was deleted failed as "records/<id>.json: not a readable run record"."""
    from bench.metrics import policy_fields

    res = tmp_path / "res"
    source = make_record("unet", run_id="synapse-synapse-unet-s0-0000abcd")
    rescored = {**source, "run_id": f"{source['run_id']}.strict", "policy": "strict", "rescored_from": source["run_id"],
                "policy_conventions": policy_fields("strict")}
    records.write_record({**source, "train": {**source["train"], "final_loss": 0.5}}, res)  # trained again since
    records.write_record(rescored, res)
    with pytest.warns(UserWarning, match=r"\.strict\.json scored the weights of an earlier training of run "), \
            pytest.raises(BenchError, match=r"--policy strict: no finished runs of it here"):
        choose_runs(res, policy="strict")
    records.record_path(res, source["run_id"]).unlink()
    with pytest.raises(BenchError, match=rf"run {source['run_id']}: its record .*/{source['run_id']}\.json is missing "
                                         r"\(deleted\?\); its rescore under strict remains \(.*\.strict\.json\)"):
        choose_runs(res, policy="strict")


def test_out_takes_the_plots_formats():
    check_out(Path("fig.PDF"))
    check_out(Path("fig.svg"))
    with pytest.raises(BenchError, match=r"--out fig.jpg: the figure is written as .png, .pdf, .svg \(by its suffix\); got .jpg"):
        check_out(Path("fig.jpg"))
    with pytest.raises(BenchError, match=r"--out fig: .* got no suffix"):
        check_out(Path("fig"))


def _one_panel(size=4):
    labels = np.eye(size, dtype=int)
    return FigurePanels(board="b", columns=["unet"], class_names=["lesion"], case_ids=["case_a"], slices=[None],
                        images=[np.linspace(0, 1, size * size).reshape(size, size)], truths=[labels],
                        predictions=[[labels]], dsc=[[100.0]])


def test_dpi_sets_the_pngs_pixels_and_the_vector_files_images(tmp_path, monkeypatch, capsys):
    """Journals ask 300-600 dpi raster figures; the PNG was 200 dpi whatever was needed."""
    import re

    sizes = {}
    for dpi in (100, 300):
        png = Image.open(draw_figure(_one_panel(), tmp_path / f"fig{dpi}.png", dpi=dpi))
        assert png.info["dpi"] == pytest.approx((dpi, dpi), abs=0.01)  # the pHYs a layout program reads
        sizes[dpi] = png.size
    assert all(abs(big - 3 * small) <= 3 for big, small in zip(sizes[300], sizes[100])), sizes
    # a PDF keeps its text and lines vector; matplotlib resamples each imshow at the saving dpi
    small, big = ([int(w) for w in re.findall(rb"/Width (\d+)", draw_figure(_one_panel(), tmp_path / f"fig{dpi}.pdf",
                                                                            dpi=dpi).read_bytes())]
                  for dpi in (100, 300))
    assert small and big == [pytest.approx(3 * w, abs=3) for w in small]  # one image per panel, 3x the pixels
    for bad in (0, 49, 1201, True, 300.0):
        with pytest.raises(BenchError, match=rf"--dpi must be a whole number from 50 to 1200 \(dots per inch\); "
                                             rf"got {re.escape(repr(bad))}"):
            draw_figure(_one_panel(), tmp_path / "bad.png", dpi=bad)
    assert not (tmp_path / "bad.png").exists()
    # the command says it before anything is read (no results folder here)
    proc = run_bench_here(monkeypatch, capsys, "figure", "--results", tmp_path / "none", "--out", tmp_path / "x.png",
                          "--dpi", "20", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --dpi must be a whole number from 50 to 1200 (dots per inch); got 20"


def test_an_svg_figure_keeps_its_text_as_text(tmp_path):
    labels = np.array([[0, 1], [1, 0]])
    panels = FigurePanels(board="b", columns=["unet"], class_names=["lesion"], case_ids=["case_a"], slices=[None],
                          images=[np.zeros((2, 2))], truths=[labels], predictions=[[labels]], dsc=[[100.0]])
    svg = draw_figure(panels, tmp_path / "fig.svg").read_text(encoding="utf-8")
    assert ">case_a<" in svg and ">Ground truth<" in svg  # svg.fonttype none: words a journal's editor can fix


def test_a_figure_draws_names_as_written_and_says_missing_glyphs_once(tmp_path):
    """A class "$5 & $\\badcmd$" crashed the figure (TeX math); a CJK name no font here has was a warning per
    character at the layout and again at the save."""
    import warnings

    from bench.plots import text_rc

    labels = np.array([[0, 1], [1, 0]])
    panels = FigurePanels(board="b", columns=["unet"], class_names=["$5 & $\\badcmd$", "肝臓"], case_ids=["c"],
                          slices=[None], images=[np.zeros((2, 2))], truths=[labels], predictions=[[labels]],
                          dsc=[[100.0]])
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        draw_figure(panels, tmp_path / "fig.png")
    glyphs = [str(w.message) for w in said if "font" in str(w.message).lower()]
    assert all("Glyph" not in g for g in glyphs)
    if len(text_rc()["font.sans-serif"]) == 1:  # no CJK font installed here
        assert len(glyphs) == 1 and glyphs[0].startswith("fig.png: no installed font draws 肝臓")


def test_synapse_panels_are_the_predicted_volumes_slice_with_most_foreground(tmp_path, bench_here):
    root = synthesize("synapse", tmp_path / "data", n_train=2, n_test=3, depth=6, size=32)
    res = tmp_path / "res"
    recs = [_train("synapse", root, res, "unet", 0), _train("synapse", root, res, "lightm_unet", 0, tiny=True)]
    columns = choose_runs(res)
    runs = [c.rec for c in columns]
    assert [r["run_id"] for r in runs] == [recs[1]["run_id"], recs[0]["run_id"]]  # by label
    ids = choose_cases([case_dsc(r) for r in runs], n=2)
    panels = figure_panels(columns, res, ids, CPU)
    assert panels.columns == ["lightm_unet (tiny)", "unet (tiny)"] and panels.case_ids == ids  # the boards' labels
    ds = open_dataset("synapse", root)
    # as the boards and plots name them (the legend said kidney_l where the table said Kidney(L))
    assert panels.class_names == ["Aorta", "Gallbladder", "Kidney(L)", "Kidney(R)", "Liver", "Pancreas", "Spleen",
                                  "Stomach"]
    assert [n.lower().replace("(", "_").rstrip(")") for n in panels.class_names] == list(ds.class_names)
    for j, rec in enumerate(runs):
        folder, _ = predict_run(rec, res, tmp_path / "pred", CPU)
        for i, case_id in enumerate(ids):
            written = np.asarray(nib.load(folder / f"{case_id}.nii.gz").dataobj).transpose(2, 1, 0)
            label = ds.load_test(case_id).label
            k = panels.slices[i]
            assert k == int(np.argmax([(s > 0).sum() for s in label])) and (label[k] > 0).sum() > 0
            np.testing.assert_array_equal(panels.predictions[i][j], written[k])
            np.testing.assert_array_equal(panels.truths[i], label[k])
            assert panels.dsc[i][j] == pytest.approx(100 * np.nanmean([r["dice"] for r in rec["per_case"]
                                                                       if r["case"] == case_id]))
    image = ds.load_test(ids[0]).image[panels.slices[0]]
    lo, hi = np.percentile(image, [1, 99])
    np.testing.assert_allclose(panels.images[0], np.clip((image - lo) / (hi - lo), 0, 1), atol=1e-6)

    # the command: PNG and PDF, one line; an unknown case and a seed no run has are one error each
    for name in ("fig.png", "sub/fig.pdf"):
        proc = run_bench("figure", "--results", res, "--out", tmp_path / name, "--cases", ",".join(ids[::-1]),
                         "--device", "cpu")
        assert proc.stdout.strip() == (f"wrote {tmp_path / name} (2 cases × 2 models; board synapse (synthetic) · "
                                       f"smoke (off-protocol: img_size=32, max_cases=2, max_iterations=2) · "
                                       f"{runs[0]['policy']})")  # as bench report titles it
    png = Image.open(tmp_path / "fig.png")
    assert png.size[0] > 500 and png.info["dpi"] == pytest.approx((200, 200), abs=0.01)  # the default
    run_bench("figure", "--results", res, "--out", tmp_path / "fig100.png", "--cases", ",".join(ids[::-1]),
              "--device", "cpu", "--dpi", "100")
    assert Image.open(tmp_path / "fig100.png").size[0] == pytest.approx(png.size[0] / 2, abs=2)
    pdf = (tmp_path / "sub" / "fig.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and b"/Type3" not in pdf and b"FontFile2" in pdf  # TrueType: publishers refuse Type 3
    proc = bench_here("figure", "--results", res, "--out", tmp_path / "x.png", "--cases", ids[0], "--n-cases", "2",
                      check=False)
    assert proc.returncode == 2 and "--cases names the rows and --n-cases counts them" in proc.stderr
    proc = bench_here("figure", "--results", res, "--out", tmp_path / "x.png", "--cases", "nope", check=False)
    assert proc.returncode == 2 and "error: --cases nope: not a test case the runs were scored on" in proc.stderr
    proc = bench_here("figure", "--results", res, "--out", tmp_path / "x.png", "--seed", "7", check=False)
    assert proc.returncode == 2 and "--seed 7: no finished run of lightm_unet (tiny), unet (tiny) with that seed" in proc.stderr
    proc = bench_here("figure", "--results", res, "--out", tmp_path / "x.jpg", check=False)
    assert proc.returncode == 2 and "--out " in proc.stderr and ".png, .pdf, .svg" in proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_binary_panels_are_at_model_resolution(tmp_path):
    from bench.figure import _resize

    root = synthesize("isic", tmp_path / "data", n_train=4, n_val=2, min_size=40, max_size=48)
    res = tmp_path / "res"
    rec = _train("isic17", root, res)
    ds = open_dataset("isic17", root)
    case_id = ds.test_ids()[0]
    (column,) = choose_runs(res)
    assert column.rec["run_id"] == rec["run_id"]
    panels = figure_panels([column], res, [case_id], "cpu")  # a device's name, as run_grid takes it
    folder, _ = predict_run(rec, res, tmp_path / "pred", "cpu")
    written = np.asarray(Image.open(folder / f"{case_id}.png")) // 255
    np.testing.assert_array_equal(panels.predictions[0][0], written)
    case = ds.load_test(case_id)
    assert case.image.shape[:2] != (32, 32) and panels.images[0].shape == (32, 32, 3)
    np.testing.assert_allclose(panels.images[0], _resize(case.image.astype(np.float32), (32, 32)) / 255, atol=1e-6)
    assert panels.truths[0].shape == (32, 32) and set(np.unique(panels.truths[0])) <= {0, 1}
    assert panels.slices == [None] and panels.class_names == list(ds.class_names)


def test_nan_case_values_and_folds_every_model_has(tmp_path):
    """A review: a strict record's null DSC crashed case_dsc; a model lacking fold 0 was shown on fold 1
    beside the others' fold 0, with no test case in common."""
    assert math.isnan(case_dsc({"per_case": [{"case": "a", "dice": None}]})["a"])
    assert case_dsc({"per_case": [{"case": "a", "dice": None}, {"case": "a", "dice": 0.5}]})["a"] == 0.5
    res = tmp_path / "res"
    for model, folds in (("unet", (1, 2)), ("vmunet", (0, 1, 2))):
        for fold in folds:
            rec = make_record(model, dataset="nnunet", seed=0, classes=["spleen"])
            rec["split"] = f"fold{fold}"
            records.write_record(rec, res)
    assert {c.rec["split"] for c in choose_runs(res)} == {"fold1"}


def test_figure_takes_a_protocol_file_as_bench_run_does(monkeypatch, capsys, tmp_path):
    """A CLI audit: --protocol of bench run takes a name or a .toml, figure's only a name ("--protocol
    .../smoke.toml: no finished runs of it here (there: smoke)")."""
    from bench.cli import main
    from bench.protocol import PROTOCOL_DIR

    records.write_record(make_record("unet"), tmp_path)
    for given in ("isic17", str(PROTOCOL_DIR / "isic17.toml")):
        monkeypatch.setattr(sys, "argv", ["bench", "figure", "--results", str(tmp_path), "--out",
                                          str(tmp_path / "f.png"), "--protocol", given])
        with pytest.raises(SystemExit):
            main()
        assert "error: --protocol isic17: no finished runs of it here (there: " in capsys.readouterr().err


def test_each_models_dsc_is_written_under_its_own_column(tmp_path, monkeypatch):
    """Columns A (DSC 10) and B (DSC 90): the panel under A's title says 10.0 and B's 90.0, or a reader
    credits one model with the other's score."""
    from bench import figure

    seen = {}
    monkeypatch.setattr(figure, "save_figure", lambda fig, out, dpi: seen.setdefault("fig", fig) and out)
    z = np.zeros((4, 4), np.int64)
    panels = FigurePanels(board="b", columns=["A", "B"], class_names=["lesion"], case_ids=["c1"], slices=[None],
                          images=[np.zeros((4, 4))], truths=[z], predictions=[[z, z]], dsc=[[10.0, 90.0]])
    draw_figure(panels, tmp_path / "f.png", dpi=50)
    titled = [(ax.get_title(), [t.get_text() for t in ax.texts]) for ax in seen["fig"].axes[2:4]]
    assert titled == [("A", ["10.0"]), ("B", ["90.0"])]


def test_a_class_is_overlaid_in_its_legend_colour():
    """Class 1 is drawn in the legend's first colour, blue #0072B2 (legend entry i is PALETTE[i], for
    class i + 1), and background stays transparent: else the legend names the wrong organ."""
    from bench.figure import ALPHA, _overlay

    rgba = _overlay(np.array([[0, 1]]))
    assert rgba[0, 0].tolist() == [0, 0, 0, 0]
    assert np.allclose(rgba[0, 1], [0x00 / 255, 0x72 / 255, 0xB2 / 255, ALPHA])


def test_a_2d_case_is_shown_as_it_was_scored():
    """The panel shows what the model was scored on: a mask value of 0.5 is foreground (as scored), an
    (H, W, 1) image is a grey (H, W) panel (matplotlib cannot draw the former), and resizing uses half-pixel
    centres as the binary test transform: a 1x2 ramp [0, 1] at width 4 samples x = (i + 0.5) / 2 - 0.5 =
    -0.25, 0.25, 0.75, 1.25, clamped: [0, 0.25, 0.75, 1], not [0, 1/3, 2/3, 1]."""
    from bench.figure import _ground, _resize

    gt = np.array([[0.0, 0.5], [0.49, 1.0]], dtype=np.float32)
    assert _ground(np.zeros((2, 2, 3), np.float32), gt, (2, 2))["truth"].tolist() == [[0, 1], [0, 1]]
    row = _ground(np.arange(16, dtype=np.float32).reshape(4, 4, 1), np.zeros((4, 4), np.int64), (4, 4))
    assert row["image"].shape == (4, 4)
    np.testing.assert_allclose(_resize(np.array([[0.0, 1.0]], dtype=np.float32), (1, 4)), [[0.0, 0.25, 0.75, 1.0]])
