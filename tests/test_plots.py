"""bench.plots: the Pareto front on hand cases, and every figure from a small results directory."""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.plots import _board_slug, _slug, pareto_front, write_plots
from bench.records import write_record
from tests.fixtures import make_record

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BOARD = _board_slug(("synapse (synthetic)", "smoke", "legacy-synapse"))


# ---------------------------------------------------------------------------------------------
# pareto_front


def test_pareto_front_simple():
    # (cost, score): b dominates a (cheaper and better); c is dearer but better; d is dominated by c.
    costs = [2.0, 1.0, 3.0, 4.0]
    scores = [0.5, 0.6, 0.8, 0.7]
    assert pareto_front(costs, scores) == [False, True, True, False]


def test_pareto_front_single_and_empty():
    assert pareto_front([5.0], [0.1]) == [True]
    assert pareto_front([], []) == []


def test_pareto_front_duplicates_and_ties():
    # Identical points do not dominate each other: both stay on the front.
    assert pareto_front([1.0, 1.0], [0.5, 0.5]) == [True, True]
    # Same cost, higher score dominates; same score, lower cost dominates.
    assert pareto_front([1.0, 1.0], [0.5, 0.6]) == [False, True]
    assert pareto_front([1.0, 2.0], [0.5, 0.5]) == [True, False]
    # A duplicate of a dominated point is dominated too.
    assert pareto_front([1.0, 2.0, 2.0], [0.9, 0.5, 0.5]) == [True, False, False]


def test_pareto_front_nan_never_on_front_and_dominates_nothing():
    assert pareto_front([math.nan, 2.0], [0.9, 0.5]) == [False, True]
    assert pareto_front([0.5, 2.0], [math.nan, 0.5]) == [False, True]


def test_pareto_front_length_mismatch():
    with pytest.raises(ValueError, match="2 costs but 1 scores"):
        pareto_front([1.0, 2.0], [0.5])


def test_slug():
    assert _slug("synapse (synthetic)") == "synapse-synthetic"
    assert _slug("smoke (off-protocol: epochs=2)") == "smoke-off-protocol-epochs-2"
    assert _slug("legacy-synapse") == "legacy-synapse"
    assert _slug("smoke (off-protocol: lr=0.0035)") == "smoke-off-protocol-lr-0-0035"  # no dot for graphicx to cut at
    # boards whose slugs coincide (case, non-ASCII) or run long keep unique names below the limit
    a, b = _board_slug(("synapse", 'smoke (off-protocol: norm="BN")', "strict")), _board_slug(
        ("synapse", 'smoke (off-protocol: norm="bn")', "strict"))
    assert a != b and a.startswith("synapse__smoke-off-protocol-norm-bn__strict-")
    assert len(_board_slug(("nnunet:Dataset501_Лёгкие", "x" * 300, "strict"))) <= 89


# ---------------------------------------------------------------------------------------------
# figures


def _profile(model: str, family: str, macs: float, params: int, latency: float, fingerprint: str) -> dict:
    return {
        "model": model, "family": family, "input_shape": "1x3x224x224", "macs": macs, "params": params,
        "model_config": {"num_classes": 9, "in_chans": 3, "img_size": 224},  # bench profile's defaults
        "paper_macs": macs * 0.9, "latency_ms_median": latency, "fingerprint": fingerprint,
        "precision": "fp32", "channels_last": False, "compiled": False, "scan_backend": None,
    }  # fmt: skip


@pytest.fixture
def results(tmp_path: Path) -> tuple[Path, str]:
    """Three models on one synthetic Synapse smoke board (vmunet and unet with 3 seeds, one
    transunet seed), profiles for two of them, and a TensorBoard log for one vmunet run."""
    specs = [
        ("vmunet", [0, 1, 2], 0.80, 27_430_000, {"pancreas": 0.55}),
        ("unet", [0, 1, 2], 0.76, 34_530_000, {"gallbladder": 0.6}),
        ("transunet", [0], 0.78, 105_280_000, None),
    ]
    tb_run = None
    for model, seeds, dice, params, class_dice in specs:
        for seed in seeds:
            rec = make_record(model, seed=seed, dice=dice + 0.01 * seed, class_dice=class_dice, protocol="smoke",
                              synthetic=True, n_cases=3, params=params, model_config={"img_size": 224})
            rec["train"]["epoch_losses"] = [0.9, 0.6, 0.4]
            rec["train"]["iterations"] = 30
            write_record(rec, tmp_path)
            if model == "vmunet" and seed == 0:
                tb_run = rec["run_id"]
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for i, prof in enumerate([
        _profile("vmunet", "ssm", 4.1e9, 27_430_000, 30.0, "cpu-abc"),
        _profile("unet", "cnn", 65.5e9, 34_530_000, 55.0, "cpu-abc"),
        _profile("unet", "cnn", 65.5e9, 34_530_000, 5.0, "gpu-other"),  # the minority fingerprint
    ]):
        (profiles / f"p{i}.json").write_text(json.dumps(prof), encoding="utf-8")

    steps = range(1, 21)
    _tensorboard(tmp_path / "runs" / tb_run / "tb", {"train/loss": {s: 1.0 / s for s in steps},
                                                     "train/lr": {s: 0.01 * (1 - s / 21) ** 0.9 for s in steps}})
    return tmp_path, tb_run


def _assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_SIGNATURE), path


def _drawn(monkeypatch) -> dict[str, list]:
    """The figures the plot functions draw, by kind ("dsc_vs_params", ...), kept instead of saved."""
    from bench import plots

    figures: dict[str, list] = {}

    def keep(fig, path, dpi=120):
        figures.setdefault(Path(path).name.split("__")[0], []).append(fig)
        return path

    monkeypatch.setattr(plots, "save_figure", keep)
    return figures


def _tensorboard(tb_dir: Path, scalars: dict[str, dict[int, float]]) -> None:
    """A run's TensorBoard log: each tag's value by step."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tb_dir))
    for tag, by_step in scalars.items():
        for step, value in by_step.items():
            writer.add_scalar(tag, value, step)
    writer.close()


def test_write_plots_writes_every_figure(results, tmp_path):
    results_dir, _ = results
    out = tmp_path / "plots"
    paths = write_plots(results_dir, out)
    names = sorted(p.name for p in paths)
    expected = sorted(f"{kind}__{BOARD}.png" for kind in
                      ("dsc_vs_gmacs", "dsc_vs_params", "dsc_vs_latency", "per_class_dsc", "training_curves"))
    assert names == expected
    for p in paths:
        assert p.parent == out
        _assert_png(p)
    assert not list(out.glob(".*.tmp")), "temporary files left behind"


def test_a_save_that_fails_midway_leaves_the_earlier_plot_whole(tmp_path, monkeypatch):
    """A disk that fills while a report's plot is rewritten must leave last time's plot, not half a PNG
    (the figure is written to a temporary name, then renamed), and no temporary file behind."""
    from matplotlib.figure import Figure

    from bench.plots import new_figure, save_figure

    target = tmp_path / "p.png"
    target.write_bytes(b"old plot")

    def half_written(self, fname, **kw):
        Path(fname).write_bytes(PNG_SIGNATURE)
        raise OSError("No space left on device")

    monkeypatch.setattr(Figure, "savefig", half_written)
    fig = new_figure()
    fig.subplots().plot([1, 2], [3, 4])
    with pytest.raises(OSError, match="No space left"):
        save_figure(fig, target)
    assert target.read_bytes() == b"old plot" and [p.name for p in tmp_path.iterdir()] == ["p.png"]


def test_plots_for_a_paper_are_vector_files(results, tmp_path):
    """A paper journey: the report's figures were 120-dpi PNGs only."""
    from bench.errors import BenchError
    from bench.report import write_report

    results_dir, _ = results
    pdfs = write_plots(results_dir, tmp_path / "pdf", fmt="pdf")
    assert sorted(p.suffix for p in pdfs) == [".pdf"] * 5
    assert all(p.read_bytes().startswith(b"%PDF") and b"/Type3" not in p.read_bytes() for p in pdfs)
    (svg,) = [p for p in write_plots(results_dir, tmp_path / "svg", fmt="svg") if p.name.startswith("per_class")]
    assert b"<svg" in svg.read_bytes()[:2000]
    md = write_report(results_dir, out=tmp_path / "rep" / "report.md", plot_format="pdf")
    assert f"(report_files/per_class_dsc__{BOARD}.pdf)" in md and (tmp_path / "rep" / "report_files").is_dir()
    with pytest.raises(BenchError, match=r"--plot-format 'jpg': expected one of png, pdf, svg"):
        write_plots(results_dir, tmp_path / "jpg", fmt="jpg")
    assert {p.suffix for p in write_plots(results_dir, tmp_path / "upper", fmt="PDF")} == {".pdf"}  # as typed
    from typer.testing import CliRunner

    from bench.cli import app

    cli = CliRunner().invoke(app, ["report", "--results", str(results_dir), "--plot-format", "jpg"])
    assert "--plot-format 'jpg': expected one of png, pdf, svg" in str(cli.exception)  # said without --out too


def test_accuracy_vs_cost_skips_axes_without_points(results, tmp_path):
    from bench.profiles import load_profiles
    from bench.plots import accuracy_vs_cost
    from bench.records import load

    results_dir, _ = results
    df_runs = load(results_dir)
    # No profiles at all: only the params axis has points.
    paths = accuracy_vs_cost(df_runs, None, tmp_path / "a")
    assert [p.name for p in paths] == [f"dsc_vs_params__{BOARD}.png"]
    # A profile row with NaN cost must not crash; it just drops that point.
    prof = load_profiles(results_dir)
    prof.loc[prof["model"] == "vmunet", ["macs", "latency_ms_median"]] = math.nan
    paths = accuracy_vs_cost(df_runs, prof, tmp_path / "b")
    assert len(paths) == 3
    for p in paths:
        _assert_png(p)
    # the point left out is named under the axis (it could have been the front's best), where it is left out
    svgs = {p.name.split("__")[0]: p.read_text(encoding="utf-8")
            for p in accuracy_vs_cost(df_runs, prof, tmp_path / "s", fmt="svg")}
    assert "not shown, without this cost measured like the others: transunet, vmunet" in svgs["dsc_vs_latency"]
    assert "(of those shown)" in svgs["dsc_vs_latency"] and "not shown" not in svgs["dsc_vs_params"]


@pytest.mark.parametrize("chans", [1, 3])
def test_latency_comes_from_profiles_at_the_boards_input(tmp_path, chans):
    """A review: the DSC-vs-latency plot took the folder's most common fingerprint, so an ISIC board (3
    channels, 1 class) was plotted with timings of Synapse's models (1 channel, 9 classes) on another
    machine. Profiles at the board's input are taken where there are some, and the title names the input;
    the class count alone differing (3-channel Synapse-like data) is another input too."""
    from bench.plots import accuracy_vs_cost
    from bench.records import load

    isic = {"img_size": 64, "in_chans": 3, "num_classes": 1}
    for model in ("unet", "vmunet"):
        write_record(make_record(model, dataset="isic17", model_config=isic), tmp_path)
    profiles = []
    for model in ("unet", "vmunet", "transunet"):  # Synapse's input, the most common fingerprint
        profiles.append({**_profile(model, "cnn", 1e9, 1_000_000, 10.0, "cpu x1"), "input_shape": f"1x{chans}x64x64",
                         "model_config": {"img_size": 64, "in_chans": chans, "num_classes": 9}})
    for model in ("unet", "vmunet"):  # the board's own input, timed elsewhere
        profiles.append({**_profile(model, "cnn", 1e9, 1_000_000, 500.0, "cpu x2"), "input_shape": "1x3x64x64",
                         "model_config": isic})
    paths = accuracy_vs_cost(load(tmp_path), pd.DataFrame(profiles), tmp_path / "p", fmt="svg")
    svg = next(p for p in paths if p.name.startswith("dsc_vs_latency")).read_text(encoding="utf-8")
    assert "input 1x3x64x64 (1 class) · cpu x2" in svg and "cpu x1" not in svg


def test_a_scatter_point_is_the_boards_mean_dsc_with_its_sd_bar_at_the_cost_in_the_axis_unit(tmp_path, monkeypatch):
    """The plot must show the numbers the table shows: a point at another statistic, a bar of SEM where the
    caption says SD, params in billions on an "(M)" axis, or a ring on a dominated model would mislead."""
    import matplotlib.collections

    from bench.plots import accuracy_vs_cost
    from bench.records import load

    runs = {"unet": ([0.70, 0.74, 0.78], 34_530_000, 65.5e9), "vmunet": ([0.80, 0.84], 27_430_000, 4.1e9),
            "transunet": ([0.78], 105_280_000, 29.0e9)}  # Dice per seed, params, MACs
    for model, (dices, params, macs) in runs.items():
        for seed, dice in enumerate(dices):
            rec = make_record(model, seed=seed, dice=dice, params=params)
            rec["cost"]["macs"] = macs
            write_record(rec, tmp_path)
    figures = _drawn(monkeypatch)
    accuracy_vs_cost(load(tmp_path), None, tmp_path / "out")
    assert sorted(figures) == ["dsc_vs_gmacs", "dsc_vs_params"]
    for kind, cost in (("dsc_vs_params", lambda run: run[1] / 1e6), ("dsc_vs_gmacs", lambda run: run[2] / 1e9)):
        (fig,) = figures[kind]
        ax = fig.axes[0]
        at = {text.get_text(): text.xy for text in ax.texts}
        assert {model: at[model] for model in runs} == {
            model: pytest.approx((cost(run), 100 * statistics.mean(run[0])), rel=1e-9) for model, run in runs.items()}
        bars = {}  # half each error bar's length, by its point's cost
        for container in ax.containers:  # an ErrorbarContainer: the point, its caps, its bar
            point, _, bar = container.lines
            if bar:  # a single seed has none
                ((_, low), (_, high)), = bar[0].get_segments()
                bars[round(float(point.get_xdata()[0]), 6)] = (high - low) / 2
        assert bars == pytest.approx({round(cost(runs[m]), 6): 100 * statistics.stdev(runs[m][0])
                                      for m in ("unet", "vmunet")})
        # vmunet is cheaper and better than both others on either axis: the front's only ring
        (ring,) = [c for c in ax.collections if isinstance(c, matplotlib.collections.PathCollection)]
        assert ring.get_offsets().tolist() == [pytest.approx([cost(runs["vmunet"]), 82.0])]


def test_latency_is_read_on_the_most_common_machine_at_its_most_common_setting(tmp_path, monkeypatch):
    """Profiles from two machines, one timed in bf16 once: the points must be one machine's fp32 timings, as
    the title says, not a minority machine's nor a bf16 row's (a key's last row would otherwise win)."""
    from bench.plots import accuracy_vs_cost
    from bench.records import load

    for model in ("unet", "vmunet"):
        write_record(make_record(model, seed=0, model_config={"img_size": 224}), tmp_path)
    profiles = pd.DataFrame([
        _profile("unet", "cnn", 1e9, 1_000_000, 55.0, "cpu-abc"),
        _profile("vmunet", "ssm", 1e9, 1_000_000, 30.0, "cpu-abc"),
        {**_profile("vmunet", "ssm", 1e9, 1_000_000, 1.0, "cpu-abc"), "precision": "bf16"},
        _profile("unet", "cnn", 1e9, 1_000_000, 5.0, "gpu-other"),  # 2 rows of 5: the minority machine
        _profile("vmunet", "ssm", 1e9, 1_000_000, 3.0, "gpu-other"),
    ])  # fmt: skip
    figures = _drawn(monkeypatch)
    accuracy_vs_cost(load(tmp_path), profiles, tmp_path / "out")
    (fig,) = figures["dsc_vs_latency"]
    ax = fig.axes[0]
    assert {text.get_text(): text.xy[0] for text in ax.texts} == {"unet": 55.0, "vmunet": 30.0}
    assert "cpu-abc · fp32" in ax.get_title()


@pytest.mark.parametrize("config", [{"img_size": 64}, {"img_size": 224, "base_c": 8}])
def test_costs_of_another_size_or_configuration_are_not_plotted(results, tmp_path, config):
    """The profiles are of the default models at 224²; runs at 64², or of a smaller configuration at
    224², get no GMACs or latency from them (only params)."""
    from bench.profiles import load_profiles
    from bench.plots import accuracy_vs_cost
    from bench.records import load

    results_dir, _ = results
    df_runs = load(results_dir)
    df_runs["model_config"] = json.dumps(config)
    paths = accuracy_vs_cost(df_runs, load_profiles(results_dir), tmp_path / "c")
    assert [p.name for p in paths] == [f"dsc_vs_params__{BOARD}.png"]


def test_join_cost_takes_the_profile_of_the_same_configuration():
    """A record without a count takes the profile's of its model and configuration; the output
    classes and input channels (first and last layer only) may differ, nothing else may. A record
    with its own count keeps it: a profile's would put another run's GMACs in its row."""
    import pandas as pd

    from bench.report import join_cost

    prof = pd.DataFrame({"model": ["unet", "unet", "vmunet"], "macs": [9e9, 1e9, 5e9], "paper_macs": [8e9, 0.9e9, 3e9],
                         "model_config": [{"img_size": 224, "num_classes": 9, "in_chans": 3},
                                          {"img_size": 224, "num_classes": 9, "in_chans": 3, "base_c": 8},
                                          {"img_size": 224}]})
    configs = [{"img_size": 224, "num_classes": 2, "in_chans": 1}, {"img_size": 224, "base_c": 8},
               {"img_size": 224, "base_c": 16}, {"img_size": 96}, {"img_size": 224}]
    board = pd.DataFrame({"model": ["unet", "unet (base_c=8)", "unet (base_c=16)", "unet (img_size=96)", "vmunet"],
                          "model_config": [json.dumps(c) for c in configs], "macs": [math.nan] * 4 + [7e9],
                          "paper_macs": [math.nan] * 4 + [4e9]})
    join_cost({"b": board}, prof)
    assert board["macs"].tolist()[:2] == [9e9, 1e9] and board["macs"][2:4].isna().all()
    assert board.loc[4, ["macs", "paper_macs"]].tolist() == [7e9, 4e9]  # its own count, not the profile's


def test_training_curves_fall_back_to_epoch_losses(results, tmp_path):
    import shutil

    from bench.plots import training_curves

    results_dir, tb_run = results
    shutil.rmtree(results_dir / "runs" / tb_run)  # no TensorBoard events at all now
    paths = training_curves(results_dir, tmp_path / "curves")
    assert [p.name for p in paths] == [f"training_curves__{BOARD}.png"]
    _assert_png(paths[0])


def test_empty_and_missing_results_give_no_plots(tmp_path):
    from bench.plots import per_class_boxplots, training_curves

    (tmp_path / "empty").mkdir()
    assert write_plots(tmp_path / "empty", tmp_path / "out") == []
    assert write_plots(tmp_path / "missing", tmp_path / "out") == []
    assert training_curves(tmp_path / "missing", tmp_path / "out") == []
    import pandas as pd

    assert per_class_boxplots(pd.DataFrame(columns=["run_id", "dice"]), tmp_path / "out") == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("costs", [[1.0, 2.0, 3.0], [0.5, 30.0, 105.0]])  # a linear and a log axis
def test_point_labels_stay_inside_the_axes(monkeypatch, tmp_path, costs):
    """A long label at the dearest model ran off the axes, under the legend beside them."""
    import pandas as pd

    from bench import plots

    figures = _drawn(monkeypatch)
    points = pd.DataFrame({"label": ["unet", "vmunet (tiny)", "transunet (hidden_size=96, num_layers=2)"],
                           "family": ["cnn", "ssm", "transformer"], "colour": ["#0072B2", "#D55E00", "#E69F00"],
                           "cost": costs, "dsc": [70.0, 75.0, 72.0], "dsc_std": [1.0, 1.0, 1.0]})
    plots._scatter(points, "params (M)", "title", tmp_path / "p.png")
    (fig,) = figures["p.png"]
    fig.canvas.draw()
    ax = fig.axes[0]
    box, renderer = ax.get_window_extent(), fig.canvas.get_renderer()
    labels = [t for t in ax.texts if t.get_text() in set(points["label"])]
    assert len(labels) == 3
    for text in labels:
        extent = text.get_window_extent(renderer)
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1, text.get_text()


def test_training_curves_of_many_runs_are_one_colour_and_one_legend_entry_per_model(tmp_path, monkeypatch):
    """From a scale journey: 6 models × 3 seeds × 5 folds drew 90 legend entries, 'lightm_unet s0' five times
    over (the fold was not in the label), and an empty learning-rate panel beside runs that logged none."""
    from bench import plots

    for model in ("unet", "vmunet"):
        for seed in (0, 1):
            for fold in range(3):
                rec = make_record(model, seed=seed, protocol="smoke", synthetic=True)
                rec["split"], rec["train"]["epoch_losses"], rec["train"]["iterations"] = f"fold{fold}", [0.9, 0.5], 20
                write_record(rec, tmp_path)
    lone = make_record("transunet", seed=3, protocol="smoke", synthetic=True)
    lone["split"], lone["train"]["epoch_losses"] = "fold2", [0.8, 0.6]
    write_record(lone, tmp_path)
    figures = _drawn(monkeypatch)
    (path,) = plots.training_curves(tmp_path, tmp_path / "out")
    assert list(figures) == ["training_curves"]
    (fig,) = figures["training_curves"]
    assert len(fig.axes) == 1  # no run logged a learning rate: no empty panel
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["transunet s3 fold 2", "unet (6 runs)", "vmunet (6 runs)"]
    lines = fig.axes[0].get_lines()
    colour = {line.get_label(): line.get_color() for line in lines if not line.get_label().startswith("_")}
    assert len(lines) == 13 and len(set(colour.values())) == 3  # every run drawn, one colour per model
    assert all(line.get_color() in colour.values() for line in lines)
    # no TensorBoard log: the records' epoch means, each at its epoch's last step (20 steps in 2 epochs)
    assert [list(line.get_xdata()) for line in lines if line.get_color() != colour["transunet s3 fold 2"]] == [
        [10.0, 20.0]] * 12


def test_a_model_has_one_colour_in_every_figure_and_pooled_boards_say_their_boxes_are_per_case(tmp_path,
                                                                                             monkeypatch):
    """From a paper journey: LightM-UNet was blue in the Synapse box plot and orange in the ISIC one (colours
    followed each board's median order), and ISIC's per-image boxes sat beside a pooled DSC unsaid."""
    import matplotlib.colors as mcolors
    import pandas as pd

    from bench import plots
    from bench.records import load

    for dataset, dice in (("synapse", {"unet": 0.5, "vmunet": 0.8}), ("isic17", {"unet": 0.9, "vmunet": 0.4})):
        for model, d in dice.items():  # the best model differs: the median order flips between boards
            write_record(make_record(model, dataset=dataset, seed=0, dice=d), tmp_path)
    figures = _drawn(monkeypatch)
    plots.per_class_boxplots(load(tmp_path, level="case"), tmp_path / "out")
    assert list(figures) == ["per_class_dsc"]
    boards = figures["per_class_dsc"]
    assert len(boards) == 2
    colours = [{t.get_text(): mcolors.to_hex(h.get_color()) for t, h in zip(fig.axes[0].get_legend().get_texts(),
                                                                          fig.axes[0].get_legend().legend_handles)}
               for fig in boards]
    assert colours[0] == colours[1] and len(set(colours[0].values())) == 2
    assert colours[0] == {m: mcolors.to_hex(c) for m, c in plots.model_colours(["vmunet", "unet"]).items()}
    titles = {fig.axes[0].get_title().split(" · ")[1]: fig.axes[0].get_title() for fig in boards}
    assert "the board's is pooled over all test pixels" in titles["isic17"]
    assert "pooled" not in titles["synapse"]
    assert plots.model_colours(pd.Series(["b", "a", "b"])) == plots.model_colours(["a", "b"])


def test_a_box_holds_each_cases_dsc_averaged_over_seeds_classes_in_label_order_best_model_first(tmp_path,
                                                                                                monkeypatch):
    """A box is a model's per-case DSC (%) for one class, each case averaged over its seeds; classes keep the
    dataset's label order (spleen before aorta), the best median first, and colours passed in are kept."""
    import matplotlib.axes
    import matplotlib.colors as mcolors

    from bench.plots import per_class_boxplots
    from bench.records import load

    classes, n_cases = ["spleen", "aorta"], 2
    unet = [{"spleen": 0.5, "aorta": 0.3}, {"spleen": 0.7, "aorta": 0.2}]  # per seed, each case alike
    for seed, class_dice in enumerate(unet):
        write_record(make_record("unet", seed=seed, dataset="nnunet", classes=classes, class_dice=class_dice,
                                 n_cases=n_cases), tmp_path)
    for seed in (0, 1):
        write_record(make_record("vmunet", seed=seed, dataset="nnunet", classes=classes, dice=0.9, n_cases=n_cases),
                     tmp_path)
    boxes, real = [], matplotlib.axes.Axes.boxplot
    monkeypatch.setattr(matplotlib.axes.Axes, "boxplot",  # one call per model, a box per class
                        lambda self, data, **kw: boxes.append([[float(v) for v in box] for box in data])
                        or real(self, data, **kw))
    figures = _drawn(monkeypatch)
    given = {"unet": "#123456", "vmunet": "#abcdef"}
    per_class_boxplots(load(tmp_path, level="case"), tmp_path / "out", colours=given)
    (fig,) = figures["per_class_dsc"]
    ax, legend = fig.axes[0], fig.axes[0].get_legend()
    assert {t.get_text(): mcolors.to_hex(h.get_color()) for t, h in zip(legend.get_texts(), legend.legend_handles)
            } == given and [t.get_text() for t in legend.get_texts()] == ["vmunet", "unet"]
    assert [t.get_text() for t in ax.get_xticklabels()] == classes
    unet_mean = {c: 100 * statistics.mean(seed[c] for seed in unet) for c in classes}
    assert boxes == [[[90.0] * n_cases] * 2, [[pytest.approx(unet_mean[c])] * n_cases for c in classes]]


def test_a_model_keeps_its_colour_in_every_plot_and_report(results, tmp_path, monkeypatch):
    """A plots review: U-Net was orange beside three models and blue beside two, and the scatter plots
    coloured by family where the others coloured by model, so one model had two colours in one report."""
    from bench import plots
    from bench.records import load

    alone, crowd = plots.model_colours(["unet"]), plots.model_colours(["vmunet", "unet", "swin_unet", "mine"])
    assert alone["unet"] == crowd["unet"] == plots.MODEL_COLOURS["unet"]
    # a second configuration and a plugin: colours of their own, none shared
    labels = ["unet", "unet (tiny)", "mine", "vmunet", "vmunet (init x.pth@1234)"]
    colours = plots.model_colours(labels)
    assert colours["vmunet"] == plots.MODEL_COLOURS["vmunet"] and len(set(colours.values())) == len(labels)
    # never a built-in's colour (transunet's, were it absent), nor a hue near one (tab20's first blue beside unet's)
    extras = plots.model_colours(["unet", *(f"plugin{i}" for i in range(9))])
    assert not {c for m, c in extras.items() if m != "unet"} & set(plots.MODEL_COLOURS.values())
    assert "#1f77b4" not in extras.values()
    seen = []
    monkeypatch.setattr(plots, "_scatter", lambda points, xlabel, title, path, *rest: seen.append(points) or path)
    results_dir, _ = results
    plots.accuracy_vs_cost(load(results_dir), None, tmp_path / "a")
    (points,) = seen  # the params axis: every model, each in its colour, its family as the marker
    assert dict(zip(points["label"], points["colour"])) == {m: plots.model_colours(points["label"])[m]
                                                              for m in points["label"]}
    assert dict(zip(points["label"], points["colour"]))["unet"] == plots.MODEL_COLOURS["unet"]


def test_paper_style_draws_for_a_journals_column(results, tmp_path, monkeypatch):
    """A plots review: 7-11 inch figures scaled to an 8.5 cm column left 2-5 pt text, at 120 dpi, with the
    board's title in the figure where a paper's caption says it."""
    from bench import plots

    results_dir, _ = results
    saved, real = [], plots.save_figure

    def save(fig, path, dpi=120):  # size, dpi, titles and axis-label size of each figure, then saved
        titles = [ax.get_title() for ax in fig.axes] + [fig._suptitle.get_text() if fig._suptitle else ""]
        font = max(label.get_fontsize() for ax in fig.axes for label in (ax.xaxis.label, ax.yaxis.label))
        saved.append((fig.get_size_inches().tolist(), dpi, titles, font))
        return real(fig, path, dpi)

    monkeypatch.setattr(plots, "save_figure", save)
    paper = plots.write_plots(results_dir, tmp_path / "paper", style="paper")
    screen_saved = len(saved)
    plots.write_plots(results_dir, tmp_path / "screen")
    assert len(paper) == screen_saved == len(saved) - screen_saved == 5
    for (width, height), dpi, titles, font in saved[:screen_saved]:
        assert width <= 7.0 and height <= 2.5 and dpi == 300 and font == 7
        assert not any(t.startswith(("DSC vs", "Per-class DSC", "Training")) for t in titles)  # the caption's
    for (width, height), dpi, titles, font in saved[screen_saved:]:
        assert width >= 6.0 and dpi == 120 and font == 10
        assert any(t.startswith(("DSC vs", "Per-class DSC", "Training")) for t in titles)
    from bench.errors import BenchError

    with pytest.raises(BenchError, match=r"--plot-style 'poster': expected one of screen, paper"):
        plots.write_plots(results_dir, tmp_path / "x", style="poster")


def test_plot_dpi_sets_the_report_pngs_resolution(results, tmp_path):
    """Journals ask 300-600 dpi raster figures; the report's PNGs were the style's 120 or 300 only."""
    from PIL import Image
    from typer.testing import CliRunner

    from bench.cli import app
    from bench.cli.options import DPI_RANGE
    from bench.errors import BenchError
    from bench.plots import DPI_RANGE as CHECKED
    from bench.report import write_report

    assert DPI_RANGE == CHECKED  # --help says the range the check takes
    results_dir, _ = results
    paper = {p.name: Image.open(p) for p in write_plots(results_dir, tmp_path / "300", style="paper")}
    fine = {p.name: Image.open(p) for p in write_plots(results_dir, tmp_path / "600", style="paper", dpi=600)}
    assert sorted(fine) == sorted(paper) and len(fine) == 5
    for name, png in fine.items():  # the same figure, twice the pixels each way
        assert png.info["dpi"] == pytest.approx((600, 600), abs=0.01), name
        assert png.size == pytest.approx(tuple(2 * n for n in paper[name].size), abs=3), name
    write_report(results_dir, out=tmp_path / "rep" / "report.md", plot_dpi=72)
    assert {round(Image.open(p).info["dpi"][0]) for p in (tmp_path / "rep" / "report_files").iterdir()} == {72}
    # vector plots have no pixels for it to set; without plots it did nothing
    with pytest.raises(BenchError, match=r"--plot-dpi sets the PNG plots' resolution; --plot-format svg writes "
                                         r"vector plots, which have none: leave --plot-dpi out"):
        write_report(results_dir, out=tmp_path / "rep" / "report.md", plot_format="svg", plot_dpi=300)
    with pytest.raises(BenchError, match=r"--plot-dpi shapes the plots, .*; got no --out"):
        write_report(results_dir, plot_dpi=300)
    with pytest.raises(BenchError, match=r"--plot-dpi must be a whole number from 50 to 1200 \(dots per inch\); "
                                         r"got 0"):
        write_plots(results_dir, tmp_path / "x", dpi=0)
    cli = CliRunner().invoke(app, ["report", "--results", str(results_dir), "--plot-dpi", "5000"])
    assert str(cli.exception) == "--plot-dpi must be a whole number from 50 to 1200 (dots per inch); got 5000"


def test_report_plot_format_is_checked_before_plot_dpi(results, tmp_path):
    """write_report as the command takes it: PNG in capitals is PNG, at the dpi asked; jpg is an unknown format,
    not a vector one that --plot-dpi does not apply to."""
    from PIL import Image
    from typer.testing import CliRunner

    from bench.cli import app
    from bench.errors import BenchError
    from bench.report import write_report

    results_dir, _ = results
    write_report(results_dir, out=tmp_path / "rep" / "report.md", plot_format="PNG", plot_dpi=300)
    pngs = list((tmp_path / "rep" / "report_files").iterdir())
    assert pngs and {(p.suffix, round(Image.open(p).info["dpi"][0])) for p in pngs} == {(".png", 300)}
    said = "--plot-format 'jpg': expected one of png, pdf, svg"
    with pytest.raises(BenchError, match=f"^{re.escape(said)}$"):
        write_report(results_dir, out=tmp_path / "jpg" / "report.md", plot_format="jpg", plot_dpi=5000)  # both wrong
    cli = CliRunner().invoke(app, ["report", "--results", str(results_dir), "--out", str(tmp_path / "cli" / "report.md"),
                                   "--plot-format", "jpg", "--plot-dpi", "5000"])
    assert str(cli.exception) == said


def test_dpi_range_ends_are_taken_and_each_entry_checks_it(tmp_path):
    """50 and 1200 dpi are taken, 49 and 1201 refused; write_plots checks --plot-dpi before it finds it has
    nothing to plot, and a plot function called on its own names --plot-dpi, not --dpi."""
    from bench import plots
    from bench.errors import BenchError

    assert plots.check_dpi(50) == 50 and plots.check_dpi(1200) == 1200
    for dpi in (49, 1201):
        with pytest.raises(BenchError, match=rf"^--dpi must be a whole number from 50 to 1200 \(dots per inch\); "
                                             rf"got {dpi}$"):
            plots.check_dpi(dpi)
    said = r"^--plot-dpi must be a whole number from 50 to 1200 \(dots per inch\); got 5$"
    (tmp_path / "results").mkdir()
    with pytest.raises(BenchError, match=said):
        write_plots(tmp_path / "results", tmp_path / "out", dpi=5)  # no runs: nothing drawn, still refused
    with pytest.raises(BenchError, match=said):
        plots.training_curves(tmp_path / "results", tmp_path / "out", dpi=5)


def test_a_models_seeds_are_drawn_thin_under_their_mean_loss(tmp_path, monkeypatch):
    """A plots review: every seed was one more line of the same colour, with no mean to read. The bold line
    is the seeds' mean (not their median), and the learning-rate panel shows the logged learning rate."""
    import numpy as np

    from bench import plots

    lr = {step: 0.01 * (1 - step / 21) ** 0.9 for step in range(1, 21)}
    runs = ((1.0, 20), (2.0, 10), (6.0, 20))  # the second logged half the steps; mean 3/step, median 2/step
    for seed, (scale, last) in enumerate(runs):
        rec = make_record("unet", seed=seed, protocol="smoke", synthetic=True)
        write_record(rec, tmp_path)
        steps = range(1, last + 1)
        _tensorboard(tmp_path / "runs" / rec["run_id"] / "tb", {"train/loss": {s: scale / s for s in steps},
                                                                "train/lr": {s: lr[s] for s in steps}})
    figures = _drawn(monkeypatch)
    plots.training_curves(tmp_path, tmp_path / "out")
    (fig,) = figures["training_curves"]
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["unet (mean of 3 runs, each thin)"]
    (mean,) = [line for line in fig.axes[0].get_lines() if line.get_label().startswith("unet (mean")]
    assert list(mean.get_xdata()) == list(range(1, 11))  # the steps every run logged
    mean_of_runs = [statistics.mean(scale / s for scale, _ in runs) for s in range(1, 11)]
    np.testing.assert_allclose(mean.get_ydata(), mean_of_runs, rtol=1e-6)
    thin = [line for line in fig.axes[0].get_lines() if line is not mean]
    assert len(thin) == 3 and all(line.get_linewidth() < mean.get_linewidth() for line in thin)
    lr_lines = fig.axes[1].get_lines()
    assert sorted(len(line.get_xdata()) for line in lr_lines) == [10, 20, 20]
    for line in lr_lines:
        np.testing.assert_allclose(line.get_ydata(), [lr[int(s)] for s in line.get_xdata()], rtol=1e-6)


def test_a_resumed_runs_curve_keeps_the_steps_it_logged_again(tmp_path, monkeypatch):
    """A run killed after step 5 and resumed from its step-2 checkpoint logs steps 3-5 again, in a second
    event file: the curve must show what the resumed training logged, the weights the record was scored from."""
    from bench.plots import training_curves

    rec = make_record("unet", seed=0, protocol="smoke", synthetic=True)
    write_record(rec, tmp_path)
    tb = tmp_path / "runs" / rec["run_id"] / "tb"
    _tensorboard(tb, {"train/loss": {s: 1.0 for s in range(1, 6)}})
    (killed,) = tb.iterdir()  # events.out.tfevents.<seconds>.<host>...: read in name order, so a second earlier
    stamp = killed.name.split(".")[3]
    killed.rename(tb / killed.name.replace(f".{stamp}.", f".{int(stamp) - 1:010d}.", 1))
    _tensorboard(tb, {"train/loss": {s: 2.0 for s in range(3, 6)}})
    figures = _drawn(monkeypatch)
    training_curves(tmp_path, tmp_path / "out")
    (fig,) = figures["training_curves"]
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_xdata()) == [1, 2, 3, 4, 5] and list(line.get_ydata()) == [1.0, 1.0, 2.0, 2.0, 2.0]


def test_a_rescored_board_draws_the_training_of_the_run_it_rescored(tmp_path, monkeypatch):
    """A `bench rescore` record (another policy's board) has no TensorBoard log of its own: its curve is its
    run's logged loss, drawn solid, not the records' dashed epoch means."""
    from bench.plots import training_curves

    rec = make_record("unet", seed=0)
    write_record(rec, tmp_path)
    write_record({**rec, "run_id": rec["run_id"] + ".strict", "rescored_from": rec["run_id"], "policy": "strict"},
                 tmp_path)
    _tensorboard(tmp_path / "runs" / rec["run_id"] / "tb", {"train/loss": {s: 1.0 / s for s in range(1, 4)}})
    figures = _drawn(monkeypatch)
    training_curves(tmp_path, tmp_path / "out")
    assert len(figures["training_curves"]) == 2  # the run's board and the rescored one
    for fig in figures["training_curves"]:
        (line,) = fig.axes[0].get_lines()
        assert list(line.get_ydata()) == pytest.approx([1.0, 1 / 2, 1 / 3]) and line.get_linestyle() == "-"


def test_names_are_drawn_as_written_and_missing_glyphs_are_said_once(tmp_path):
    """A Unicode journey: a class named "$\\badcmd{x}$" crashed `bench report --out` (matplotlib read it as
    TeX math), "Preis $5 und $6" was typeset as math, and each CJK character no font had was a warning."""
    import warnings

    from bench import plots
    from bench.records import load

    names = ["$\\badcmd{x}$", "Preis $5 und $6", "肝臓"]
    for model in ("unet", "vmunet"):
        write_record(make_record(model, seed=0, classes=names, dataset="nnunet"), tmp_path)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        (path,) = plots.per_class_boxplots(load(tmp_path, level="case"), tmp_path / "out")
    _assert_png(path)
    glyphs = [str(w.message) for w in said if "font" in str(w.message).lower()]
    if len(plots.text_rc()["font.sans-serif"]) == 1:  # no CJK font installed here: boxes, said once
        assert glyphs == [f"{path.name}: no installed font draws 肝臓: shown as boxes (a font with them, such as "
                          "Noto Sans CJK, is used once installed)"]
    assert all("Glyph" not in g for g in glyphs)


def test_other_warnings_while_drawing_are_passed_on(tmp_path):
    """missing_glyphs_said_once records every warning while a figure is drawn, to say missing glyphs once:
    the others must still come out (they were dropped, and no test would have seen it)."""
    import warnings

    from bench import plots

    with pytest.warns(UserWarning, match="^another warning while drawing$") as said:
        with plots.missing_glyphs_said_once("fig.png"):
            for _ in range(3):  # once, as outside the block
                warnings.warn("another warning while drawing", UserWarning, stacklevel=1)
    assert len(said) == 1
    with pytest.warns(UserWarning, match="^said before the error$"), pytest.raises(OSError):
        with plots.missing_glyphs_said_once("fig.png"):  # a failing save: what was said still comes out
            warnings.warn("said before the error", UserWarning, stacklevel=1)
            raise OSError("disk full")


def test_drawing_leaves_the_callers_matplotlib_backend_alone(tmp_path):
    """A notebook journey: writing a report switched matplotlib to Agg (pyplot's global backend), and
    the notebook's inline plots showed nothing from then on."""
    code = """
import sys, matplotlib
matplotlib.use("svg")
import pandas as pd
from bench import plots
points = pd.DataFrame({"label": ["unet"], "family": ["cnn"], "colour": ["#0072B2"], "cost": [1.0],
                       "dsc": [70.0], "dsc_std": [1.0]})
plots._scatter(points, "params (M)", "title", __import__("pathlib").Path(sys.argv[1]))
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.png")], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120, encoding="utf-8")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["svg", "False"]
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
