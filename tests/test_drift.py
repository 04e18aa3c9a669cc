import math
import re

import pandas as pd
import pytest

from bench.drift import BASELINE_COLUMNS, compare, read_baseline, write_baseline
from bench.errors import BenchError
from bench.records import load, split_name, write_record

try:
    from tests.fixtures import make_record
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from fixtures import make_record


def _runs(tmp_path, name, records):
    results = tmp_path / name
    results.mkdir()
    for rec in records:
        write_record(rec, results)
    return load(results)


@pytest.fixture
def baseline(tmp_path):
    """vmunet (2 seeds: dice 0.80/0.84, hd95 20/30) and unet (dice 0.70, hd95 40) on Synapse."""
    df = _runs(tmp_path, "base", [
        make_record("vmunet", seed=0, dice=0.80, hd95=20.0),
        make_record("vmunet", seed=1, dice=0.84, hd95=30.0),
        make_record("unet", seed=0, dice=0.70, hd95=40.0),
    ])  # fmt: skip
    path = tmp_path / "baseline.csv"
    write_baseline(df, path)
    return path


def _row(result, model, metric):
    t = result.table
    return t[(t["model"] == model) & (t["metric"] == metric)].iloc[0]


def test_baseline_file_content(baseline):
    table = read_baseline(baseline)
    assert list(table.columns) == BASELINE_COLUMNS
    vm = table[(table["model"] == "vmunet")].set_index("metric")
    assert vm.loc["dice", "value"] == pytest.approx(0.82) and vm.loc["dice", "tolerance"] == 0.02
    assert vm.loc["hd95", "value"] == pytest.approx(25.0) and vm.loc["hd95", "tolerance"] == pytest.approx(2.5)
    un = table[(table["model"] == "unet")].set_index("metric")
    assert un.loc["hd95", "tolerance"] == pytest.approx(4.0)
    assert set(table["metric"]) == {"dice", "hd95", "iou", "train_loss", "runs"}  # acc/spe/sen: no values for Synapse
    assert (vm.loc["runs", "value"], un.loc["runs", "value"], vm.loc["runs", "tolerance"]) == (2, 1, 0)
    assert un.loc["train_loss", "value"] == pytest.approx(0.123) and un.loc["train_loss", "tolerance"] == pytest.approx(0.00123)
    assert set(table["dataset"]) == {"synapse"} and set(table["policy"]) == {"legacy-synapse"}


def test_the_baseline_value_is_the_mean_over_seeds(tmp_path):
    """Guards against the median over seeds (0.80 here, where the mean is 0.70)."""
    df = _runs(tmp_path, "base", [make_record("unet", seed=s, dice=d) for s, d in enumerate((0.80, 0.80, 0.50))])
    write_baseline(df, tmp_path / "b.csv")
    rows = read_baseline(tmp_path / "b.csv").set_index("metric")
    assert rows.loc["dice", "value"] == pytest.approx(0.70)


def test_a_baseline_that_named_the_paper_configuration_by_its_default_keys_still_compares(tmp_path, baseline):
    """Boards wrote "vmunet (d_state=default)" for the paper model beside a variant; today it is "vmunet":
    a baseline saved so reads as today's labels, not as rows missing."""
    text = baseline.read_text(encoding="utf-8").replace(",vmunet,", ",vmunet (d_state=default),")
    assert "vmunet (d_state=default)" in text
    baseline.write_text(text, encoding="utf-8")
    df = _runs(tmp_path, "now", [
        make_record("vmunet", seed=0, dice=0.80, hd95=20.0),
        make_record("vmunet", seed=1, dice=0.84, hd95=30.0),
        make_record("unet", seed=0, dice=0.70, hd95=40.0),
    ])  # fmt: skip
    assert set(compare(baseline, df).table["status"]) == {"ok"}


def test_within_tolerance_is_ok(tmp_path, baseline):
    df = _runs(tmp_path, "now", [
        make_record("vmunet", seed=0, dice=0.81, hd95=22.0),
        make_record("vmunet", seed=1, dice=0.84, hd95=30.0),
        make_record("unet", seed=0, dice=0.715, hd95=43.0),
    ])  # fmt: skip
    result = compare(baseline, df)
    assert not result.failed
    assert set(result.table["status"]) == {"ok"}
    assert _row(result, "vmunet", "dice")["delta"] == pytest.approx(0.005)
    assert "Drift check passed" in result.render()


def test_outside_tolerance_is_drift(tmp_path, baseline):
    df = _runs(tmp_path, "now", [
        make_record("vmunet", seed=0, dice=0.75, hd95=20.0),
        make_record("vmunet", seed=1, dice=0.84, hd95=30.0),
        make_record("unet", seed=0, dice=0.70, hd95=45.0),
    ])  # fmt: skip
    result = compare(baseline, df)
    assert result.failed
    row = _row(result, "vmunet", "dice")
    assert row["status"] == "drift" and row["current"] == pytest.approx(0.795) and row["delta"] == pytest.approx(-0.025)
    assert _row(result, "unet", "hd95")["status"] == "drift"  # +5 > max(2, 4.0)
    assert _row(result, "unet", "dice")["status"] == "ok"
    assert result.table["status"].iloc[0] == "drift"  # failures listed first
    text = result.render()
    assert "DRIFT" in text and "-0.0250" in text and "FAILED" in text


def test_a_changed_training_path_drifts_where_the_metrics_cannot_see_it(tmp_path, baseline):
    recs = [make_record("vmunet", seed=0, dice=0.80, hd95=20.0), make_record("vmunet", seed=1, dice=0.84, hd95=30.0),
            make_record("unet", seed=0, dice=0.70, hd95=40.0)]
    recs[2]["train"]["final_loss"] = 0.13  # same scores, another loss curve: 0.007 > 1 % of 0.123
    result = compare(baseline, _runs(tmp_path, "now", recs))
    assert result.failed and _row(result, "unet", "train_loss")["status"] == "drift"
    assert set(result.table.loc[result.table["metric"] != "train_loss", "status"]) == {"ok"}


def test_a_negative_training_loss_gets_1_percent_of_its_size_and_holds_on_itself_at_tolerance_0(tmp_path):
    """nnU-Net's loss is negative: its tolerance fell to the 0.001 floor, and at tolerance 0 it failed on its own runs."""
    def loss_runs(name, loss):
        rec = make_record("unet", seed=0, dice=0.70, hd95=40.0)
        rec["train"]["final_loss"] = loss  # its Dice term is negated
        return _runs(tmp_path, name, [rec])

    first, path = loss_runs("first", -0.7123456789), tmp_path / "b.csv"
    write_baseline(first, path)
    assert read_baseline(path).set_index("metric").loc["train_loss", "tolerance"] == pytest.approx(0.01 * 0.7123456789, rel=1e-5)
    near = compare(path, loss_runs("near", -0.718))  # 0.0057 from it: inside 1 %, outside 0.001
    assert _row(near, "unet", "train_loss")["status"] == "ok"
    table = pd.read_csv(path)
    table.loc[table["metric"] == "train_loss", "tolerance"] = 0.0
    table.to_csv(path, index=False)
    assert _row(compare(path, first), "unet", "train_loss")["status"] == "ok"  # written as -0.712346


def test_missing_metric_and_missing_model_fail(tmp_path, baseline):
    rec = make_record("vmunet", seed=0, dice=0.82, hd95=25.0)
    del rec["metrics"]["hd95"]
    df = _runs(tmp_path, "now", [rec])  # unet is gone too
    result = compare(baseline, df)
    assert result.failed
    assert _row(result, "vmunet", "hd95")["status"] == "missing"
    assert _row(result, "vmunet", "dice")["status"] == "ok"
    assert _row(result, "unet", "dice")["status"] == "missing"
    assert result.counts()["missing"] == 6  # vmunet hd95 + unet dice/hd95/iou/train_loss/runs
    # one of vmunet's two seeds left no record (a crashed run): its count drifts, whatever the mean does
    assert _row(result, "vmunet", "runs")[["baseline", "current", "status"]].tolist() == [2, 1, "drift"]


def test_new_model_does_not_fail(tmp_path, baseline):
    df = _runs(tmp_path, "now", [
        make_record("vmunet", seed=0, dice=0.80, hd95=20.0),
        make_record("vmunet", seed=1, dice=0.84, hd95=30.0),
        make_record("unet", seed=0, dice=0.70, hd95=40.0),
        make_record("swin_unet", seed=0, dice=0.79, hd95=21.0),
        make_record("unet", dataset="isic17", seed=0, dice=0.88),
    ])  # fmt: skip
    result = compare(baseline, df)
    assert not result.failed
    new = result.table[result.table["status"] == "new"]
    assert set(new["model"]) == {"swin_unet", "unet"} and set(new["dataset"]) == {"synapse", "isic17"}
    assert math.isnan(_row(result, "swin_unet", "dice")["baseline"])
    assert "hd95" not in set(new[new["dataset"] == "isic17"]["metric"])  # no value -> not listed


def test_off_protocol_runs_are_not_compared_with_baseline(tmp_path, baseline):
    df = _runs(tmp_path, "now", [
        make_record("vmunet", seed=0, dice=0.80, hd95=20.0),
        make_record("vmunet", seed=1, dice=0.84, hd95=30.0),
        make_record("unet", seed=0, dice=0.70, hd95=40.0),
        make_record("unet", seed=1, dice=0.10, hd95=90.0, overrides={"epochs": 1}),
    ])  # fmt: skip
    result = compare(baseline, df)
    assert not result.failed
    off = result.table[result.table["protocol"].str.contains("off-protocol")]
    assert set(off["status"]) == {"new"}


def test_nan_rules(tmp_path):
    """One NaN seed made the mean NaN on both sides, and "NaN vs NaN: ok" passed whatever the other
    seeds did: the value is the mean over the seeds that have one, and their NaN count a row."""
    base_df = _runs(tmp_path, "base", [make_record("unet", seed=0, hd95=float("nan")), make_record("unet", seed=1, hd95=10.0)])
    path = tmp_path / "b.csv"
    write_baseline(base_df, path)
    rows = read_baseline(path).set_index("metric")
    assert rows.loc["hd95", "value"] == 10.0 and (rows.loc["hd95 nan runs", "value"], rows.loc["hd95 nan runs", "tolerance"]) == (1, 0)
    same = compare(path, _runs(tmp_path, "same", [make_record("unet", seed=0, hd95=float("nan")), make_record("unet", seed=1, hd95=10.0)]))
    assert not same.failed and _row(same, "unet", "hd95 nan runs")["status"] == "ok"
    worse = compare(path, _runs(tmp_path, "worse", [make_record("unet", seed=0, hd95=float("nan")), make_record("unet", seed=1, hd95=50.0)]))
    assert _row(worse, "unet", "hd95")["status"] == "drift" and worse.failed  # seed 1 moved
    fixed = compare(path, _runs(tmp_path, "fixed", [make_record("unet", seed=0, hd95=10.0), make_record("unet", seed=1, hd95=10.0)]))
    assert _row(fixed, "unet", "hd95")["status"] == "ok"
    gone = _row(fixed, "unet", "hd95 nan runs")
    assert (gone["current"], gone["status"]) == (0, "drift") and fixed.failed  # the NaN seed has a value now
    nan_now = compare(tmp_path / "b0.csv" if write_baseline(_runs(tmp_path, "b0", [make_record("unet", seed=0, hd95=5.0),
                      make_record("unet", seed=1, hd95=5.0)]), tmp_path / "b0.csv") else None,
                      _runs(tmp_path, "nan", [make_record("unet", seed=0, hd95=float("nan")), make_record("unet", seed=1, hd95=5.0)]))
    came = _row(nan_now, "unet", "hd95 nan runs")  # a seed's HD95 turned NaN: drift, not "new"
    assert _row(nan_now, "unet", "hd95")["status"] == "ok" and (came["baseline"], came["status"]) == (0, "drift")
    # every seed NaN now: the metric is missing (not "1 -> 0 nan runs", which read as fewer)
    all_nan = compare(path, _runs(tmp_path, "all", [make_record("unet", seed=s, hd95=float("nan")) for s in (0, 1)]))
    assert _row(all_nan, "unet", "hd95")["status"] == "missing" and all_nan.failed
    assert math.isnan(_row(all_nan, "unet", "hd95 nan runs")["current"])
    # a metric the baseline does not track: its count is new too, not drift
    write_baseline(_runs(tmp_path, "dice_only", [make_record("unet", seed=s, hd95=10.0) for s in (0, 1)]),
                   tmp_path / "d.csv", metrics=["dice"])
    untracked = compare(tmp_path / "d.csv", _runs(tmp_path, "nan2", [make_record("unet", seed=0, hd95=float("nan")),
                                                                     make_record("unet", seed=1, hd95=5.0)]))
    assert not untracked.failed and _row(untracked, "unet", "hd95 nan runs")["status"] == "new"


def test_nan_on_one_side_only_is_drift(tmp_path, baseline):
    """Guards against a NaN on exactly one side passing as "ok" (only NaN against NaN is)."""
    from bench.drift import _status

    table = pd.read_csv(baseline)
    table.loc[(table["model"] == "unet") & (table["metric"] == "dice"), "value"] = math.nan  # a baseline edited to nan
    table.to_csv(baseline, index=False)
    now = compare(baseline, _runs(tmp_path, "now", [
        make_record("vmunet", seed=0, dice=0.80, hd95=20.0),
        make_record("vmunet", seed=1, dice=0.84, hd95=30.0),
        make_record("unet", seed=0, dice=0.80, hd95=40.0),
    ]))  # fmt: skip
    assert _row(now, "unet", "dice")["status"] == "drift" and now.failed
    # the reverse, a NaN now against a number (a mean over seeds with values is not NaN; the rule itself)
    assert _status(0.8, math.nan, 1, 0.02) == "drift" and _status(math.nan, math.nan, 1, 0.02) == "ok"


def test_a_baseline_nan_for_a_metric_the_runs_still_lack_is_ok(tmp_path, baseline):
    """A row a reviewer set to nan ("the metric has none") failed as missing while the runs still had no value."""
    table = pd.read_csv(baseline)
    table.loc[(table["model"] == "unet") & (table["metric"] == "hd95"), "value"] = math.nan
    table.to_csv(baseline, index=False)
    unet = make_record("unet", seed=0, dice=0.70, hd95=40.0)
    del unet["metrics"]["hd95"]
    now = compare(baseline, _runs(tmp_path, "now", [make_record("vmunet", seed=0, dice=0.80, hd95=20.0),
                                                    make_record("vmunet", seed=1, dice=0.84, hd95=30.0), unet]))
    assert _row(now, "unet", "hd95")["status"] == "ok" and not now.failed


def test_a_metric_nan_in_every_seed_gets_no_baseline_row(tmp_path):
    """A metric no seed had a value for was written as a nan row: its first real value then failed as drift, not new."""
    path = tmp_path / "b.csv"
    write_baseline(_runs(tmp_path, "base", [make_record("unet", seed=s, hd95=math.nan) for s in (0, 1)]), path)
    assert set(read_baseline(path)["metric"]) == {"dice", "iou", "train_loss", "runs"}
    valued = compare(path, _runs(tmp_path, "now", [make_record("unet", seed=s, hd95=10.0) for s in (0, 1)]))
    assert _row(valued, "unet", "hd95")["status"] == "new" and not valued.failed


def test_the_runs_row_counts_every_fold_so_a_crashed_fold_drifts(tmp_path):
    """Under cross-validation the runs row counted seeds: a fold whose run crashed (no record) passed unseen."""
    def folds(name, ks):
        recs = [make_record("unet", seed=0, dice=0.70, hd95=40.0, run_id=f"synapse-synapse-unet-s0-f{k}-0000000{k}")
                for k in ks]
        for k, rec in zip(ks, recs):
            rec["split"] = split_name(k)
        return _runs(tmp_path, name, recs)

    write_baseline(folds("base", [0, 1, 2]), tmp_path / "b.csv")
    assert read_baseline(tmp_path / "b.csv").set_index("metric").loc["runs", "value"] == 3  # 1 seed x 3 folds
    crashed = compare(tmp_path / "b.csv", folds("now", [0, 1]))  # fold 2 left no record; the others' means stay
    assert _row(crashed, "unet", "runs")[["baseline", "current", "status"]].tolist() == [3, 2, "drift"]


def test_reviewer_edited_tolerance_is_used(tmp_path, baseline):
    table = pd.read_csv(baseline)
    table.loc[(table["model"] == "unet") & (table["metric"] == "dice"), "tolerance"] = 0.5
    table.to_csv(baseline, index=False)
    df = _runs(tmp_path, "now", [make_record("vmunet", seed=0, dice=0.82, hd95=25.0), make_record("unet", seed=0, dice=0.40, hd95=40.0)])
    result = compare(baseline, df)
    assert _row(result, "unet", "dice")["status"] == "ok"



def test_update_keeps_hand_edited_tolerances_and_zero_tolerance_holds_on_itself(tmp_path):
    """`bench check --update` rewrites the values, not a reviewer's tolerances; a tolerance of 0
    passes the very runs the baseline was written from (the file keeps 6 significant digits)."""
    first = _runs(tmp_path, "first", [make_record("unet", seed=0, dice=0.7123456789, hd95=40.0)])
    path = tmp_path / "b.csv"
    write_baseline(first, path)
    table = pd.read_csv(path)
    table.loc[table["metric"] == "dice", "tolerance"] = 0.0
    table.to_csv(path, index=False)
    same = compare(path, first)
    assert not same.failed and _row(same, "unet", "dice")["status"] == "ok"
    row = _row(same, "unet", "dice")  # the file rounded it (the slack is needed), and no difference is shown
    assert abs(row["current"] - row["baseline"]) > 1e-9 and row["delta"] == 0.0
    moved = compare(path, _runs(tmp_path, "moved", [make_record("unet", seed=0, dice=0.7124, hd95=40.0)]))
    assert _row(moved, "unet", "dice")["status"] == "drift"

    write_baseline(_runs(tmp_path, "second", [make_record("unet", seed=0, dice=0.75, hd95=60.0)]), path)
    tol = read_baseline(path).set_index("metric")
    assert tol.loc["dice", "tolerance"] == 0.0 and tol.loc["dice", "value"] == pytest.approx(0.75)  # kept
    assert tol.loc["hd95", "tolerance"] == pytest.approx(6.0)  # the rule's, for the new value (was 4)
    write_baseline(first, path, tolerances={"dice": 0.05})  # an explicit tolerance wins
    assert read_baseline(path).set_index("metric").loc["dice", "tolerance"] == 0.05

def test_a_baseline_from_before_tiny_labels_is_told_and_renamed_with_its_tolerances(tmp_path):
    """Baselines written before boards called --tiny runs 'unet (tiny)' key them 'unet': the check
    says they are back under a new label, and --update renames them keeping hand-set tolerances."""
    from bench.drift import pre_tiny_label
    from bench.registry import get_entry

    assert pre_tiny_label("unet (tiny)") == "unet" and pre_tiny_label("unet (tiny, img_size=96)") == "unet (img_size=96)"
    tiny = {k: list(v) if isinstance(v, tuple) else v for k, v in get_entry("unet").tiny.items()}
    runs = _runs(tmp_path, "tiny", [make_record("unet", seed=0, dice=0.7, hd95=40.0, model_config=tiny)])
    path = tmp_path / "old.csv"
    write_baseline(runs, path)
    table = pd.read_csv(path)
    assert set(table["model"]) == {"unet (tiny)"}
    table["model"] = "unet"  # as written before
    table.loc[table["metric"] == "dice", "tolerance"] = 0.11  # by hand
    table.to_csv(path, index=False)
    result = compare(path, runs)
    assert result.failed and result.relabelled() == result.counts()["missing"] == len(table)
    from typer.testing import CliRunner

    from bench.cli import app

    cli = CliRunner().invoke(app, ["check", "--baseline", str(path), "--results", str(tmp_path / "tiny")])
    assert cli.exit_code == 1 and f"{len(table)} of them may be back under a new label" in cli.output
    assert "--prune" not in cli.output  # every row is renamed by --update: nothing to drop
    write_baseline(runs, path)
    renamed = read_baseline(path).set_index(["model", "metric"])
    assert renamed.loc[("unet (tiny)", "dice"), "tolerance"] == 0.11 and not compare(path, runs).failed


def test_custom_tolerances_and_bad_files(tmp_path):
    df = _runs(tmp_path, "base", [make_record("unet", seed=0)])
    path = tmp_path / "b.csv"
    write_baseline(df, path, tolerances={"dice": 0.05, "hd95": 1.0})
    tol = read_baseline(path).set_index("metric")["tolerance"]
    assert tol["dice"] == 0.05 and tol["hd95"] == 1.0 and tol["iou"] == 0.02
    with pytest.raises(BenchError, match=r"nope\.csv \(the project's is results/baseline/smoke\.csv in a checkout, "
                                         r"for `make check`'s grid; `bench check --update --baseline .*nope\.csv` writes one"):
        compare(tmp_path / "nope.csv", df)  # the way to make the first one
    bad = tmp_path / "bad.csv"
    bad.write_text("dataset,model,metric,value\nsynapse,unet,dice,0.8\n", encoding="utf-8")
    with pytest.raises(BenchError, match=r"bad\.csv.*protocol"):
        compare(bad, df)


def test_render_plain_only_changes(tmp_path, baseline):
    df = _runs(tmp_path, "now", [make_record("vmunet", seed=0, dice=0.60, hd95=25.0), make_record("unet", seed=0, dice=0.70, hd95=40.0)])
    text = compare(baseline, df).render(fmt="plain", only_changes=True)
    assert "DRIFT" in text and " ok " not in text and "|" not in text.splitlines()[0]


def test_a_baseline_that_does_not_read_is_refused_row_by_row_and_never_rewritten(tmp_path):
    """--update over a baseline with one typo wrote it afresh, exit 0: rows and hand-set tolerances
    gone unsaid. Now each problem names its line, and --update refuses the file as check does."""
    df = _runs(tmp_path, "now", [make_record("unet", seed=0, dice=0.7)])
    path = tmp_path / "b.csv"
    write_baseline(df, path)
    good = path.read_text(encoding="utf-8")
    lines = good.splitlines()
    cases = {  # what a hand edit can do to line 3 -> the error
        lines[2].rsplit(",", 1)[0] + ",0.02x": r"line 3: tolerance '0\.02x' is not a number",
        lines[2].rsplit(",", 1)[0] + ",-0.02": r"line 3: tolerance -0\.02; every row needs a finite tolerance >= 0",
        lines[2].rsplit(",", 1)[0] + ",": r"line 3: tolerance nan; every row needs",
        # an inf tolerance, or an inf value (its 6-digit slack inf too), passed every value: the row's check off
        lines[2].rsplit(",", 1)[0] + ",inf": r"line 3: tolerance inf; every row needs a finite tolerance >= 0",
        ",".join([*lines[2].split(",")[:5], "inf", lines[2].split(",")[6]]): r"line 3: value inf; expected a finite",
        ",".join(["synapse", "", *lines[2].split(",")[2:]]): r"line 3: empty 'protocol'",
        lines[1]: r"lines 2, 3 list one row twice \(synapse · synapse · legacy-synapse · unet · ",
    }
    for bad, why in cases.items():
        path.write_text("\n".join([*lines[:2], bad, *lines[3:]]) + "\n", encoding="utf-8")
        with pytest.raises(BenchError, match=why):
            compare(path, df)
        with pytest.raises(BenchError, match=why):
            write_baseline(df, path)
        assert path.read_text(encoding="utf-8").splitlines()[2] == bad  # untouched
    path.write_text("\n".join([*lines[:2], "", lines[2].rsplit(",", 1)[0] + ",x", *lines[3:]]) + "\n", encoding="utf-8")
    with pytest.raises(BenchError, match=r"line 4: tolerance 'x' is not a number"):  # the blank line counted
        compare(path, df)
    path.write_text(lines[0] + "\n", encoding="utf-8")
    with pytest.raises(BenchError, match=r"holds no rows, so every check would pass"):
        compare(path, df)
    write_baseline(df, path)  # what the message asks for works
    assert not compare(path, df).failed
    with pytest.raises(BenchError, match=r"is a folder; --baseline takes the baseline CSV file \(results/baseline/"
                                         r"smoke.csv\)$"):
        compare(tmp_path, df)
    (tmp_path / "received" / "records").mkdir(parents=True)  # a results folder received: how to compare with it
    with pytest.raises(BenchError, match=r"is a folder; .* write their baseline first: bench check --update "
                                         rf"--baseline BASELINE.csv --results {re.escape(str(tmp_path / 'received'))}$"):
        compare(tmp_path / "received", df)


def test_update_keeps_rows_and_tolerances_set_by_hand(tmp_path):
    """A per-class row added by hand ("dice/aorta") and a NaN-run count's tolerance set by hand were
    dropped or reset by --update."""
    recs = [make_record("unet", seed=0, dice=0.7), make_record("unet", seed=1, dice=0.7)]
    recs[1]["metrics"]["hd95"] = None
    df = _runs(tmp_path, "now", recs)
    path = tmp_path / "b.csv"
    write_baseline(df, path)
    table = read_baseline(path)
    table.loc[table["metric"] == "hd95 nan runs", "tolerance"] = 1.0
    extra = pd.DataFrame([["synapse", "synapse", "legacy-synapse", "unet", "dice/aorta", 0.7, 0.05]],
                         columns=BASELINE_COLUMNS)
    pd.concat([table, extra]).to_csv(path, index=False)
    write_baseline(df, path)
    kept = read_baseline(path).set_index("metric")
    assert kept.loc["hd95 nan runs", "tolerance"] == 1.0
    assert kept.loc["dice/aorta", ["value", "tolerance"]].tolist() == [pytest.approx(0.7), 0.05]
    assert not compare(path, df).failed


def test_update_never_drops_rows_by_accident(tmp_path, baseline):
    """--update from a folder holding part of the grid (or nothing: a typo in --results) used to
    shrink the baseline silently, hand-set tolerances with it; now it is refused unless --prune."""
    before = baseline.read_text(encoding="utf-8")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BenchError, match="no finished runs to write it from; pass the --results folder that `bench run` wrote"):
        write_baseline(load(empty), baseline)
    part = _runs(tmp_path, "part", [make_record("vmunet", seed=0, dice=0.80, hd95=20.0)])
    with pytest.raises(BenchError, match=r"baseline\.csv: \d+ of its \d+ rows have no value in these runs \(first: "
                                         r"synapse · synapse · legacy-synapse · unet · .*pass --prune to drop them"):
        write_baseline(part, baseline)
    assert baseline.read_text(encoding="utf-8") == before  # untouched
    write_baseline(part, baseline, prune=True)
    assert set(read_baseline(baseline)["model"]) == {"vmunet"}
    # a model with fewer finished runs than the baseline counts: a partial grid too
    two = tmp_path / "two.csv"
    two.write_text(before, encoding="utf-8")  # vmunet with 2 runs
    one_seed = _runs(tmp_path, "one", [make_record("vmunet", seed=0, dice=0.80, hd95=20.0),
                                       make_record("unet", seed=0, dice=0.70, hd95=40.0)])
    with pytest.raises(BenchError, match=r"1 model\(s\) have fewer finished runs here than it counts \(first: "
                                         r"synapse · synapse · legacy-synapse · vmunet · runs\)"):
        write_baseline(one_seed, two)


def test_rows_moved_by_other_runs_in_the_folder_are_told(tmp_path, baseline):
    """One record of another version of the protocol in the results folder gave every board of that
    protocol the label 'synapse@<hash>': all rows missing and new, with no hint why."""
    older = make_record("transunet", seed=0)
    older["protocol"]["hash"] = "deadbeefdeadbeef"
    result = compare(baseline, _runs(tmp_path, "mixed", [
        make_record("vmunet", seed=0, dice=0.80, hd95=20.0), make_record("vmunet", seed=1, dice=0.84, hd95=30.0),
        make_record("unet", seed=0, dice=0.70, hd95=40.0), older]))
    assert result.failed and result.counts()["missing"] == result.moved() > 0
    assert result.relabelled() == 0
    from typer.testing import CliRunner

    from bench.cli import app

    cli = CliRunner().invoke(app, ["check", "--baseline", str(baseline), "--results", str(tmp_path / "mixed")])
    assert cli.exit_code == 1 and f"{result.moved()} of them are back under a tagged label" in cli.output
    plain = compare(baseline, _runs(tmp_path, "plain", [make_record("vmunet", seed=0, dice=0.80, hd95=20.0)]))
    assert plain.failed and plain.moved() == 0  # rows really gone: no such hint


def test_check_on_no_runs_is_a_user_error_not_drift(tmp_path, baseline):
    """An empty or wrong --results printed every row MISSING and exited 1, as drift; a CI script
    could not tell a typo from a regression. --prune alone was ignored."""
    from typer.testing import CliRunner

    from bench.cli import app

    (tmp_path / "empty").mkdir()
    cli = CliRunner().invoke(app, ["check", "--baseline", str(baseline), "--results", str(tmp_path / "empty")])
    assert cli.exit_code == 1 and isinstance(cli.exception, BenchError)  # main() turns it into one line, exit 2
    assert str(cli.exception) == f"{tmp_path / 'empty'}: no finished runs; pass the --results folder that `bench run` wrote"
    cli = CliRunner().invoke(app, ["check", "--baseline", str(baseline), "--results", str(tmp_path), "--prune"])
    assert "--prune goes with --update" in str(cli.exception)
    df = _runs(tmp_path, "now", [make_record("vmunet", seed=0, dice=0.5, hd95=20.0),
                                 make_record("vmunet", seed=1, dice=0.84, hd95=30.0),
                                 make_record("unet", seed=0, dice=0.70, hd95=40.0)])
    assert len(df) == 3
    cli = CliRunner().invoke(app, ["check", "--baseline", str(baseline), "--results", str(tmp_path / "now")])
    assert cli.exit_code == 1 and "bench check --update --baseline" in cli.output and "widen a row's tolerance" in cli.output
    assert "| ok " in cli.output
    short = CliRunner().invoke(app, ["check", "--baseline", str(baseline), "--results", str(tmp_path / "now"),
                                     "--changes-only"])
    assert short.exit_code == 1 and "| DRIFT " in short.output and "| ok " not in short.output
    part = _runs(tmp_path, "part", [make_record("vmunet", seed=0, dice=0.8, hd95=20.0),
                                    make_record("vmunet", seed=1, dice=0.84, hd95=30.0)])
    assert len(part) == 2
    before = read_baseline(baseline)
    gone = int((before["model"] == "unet").sum())
    pruned = CliRunner().invoke(app, ["check", "--baseline", str(baseline), "--results", str(tmp_path / "part"),
                                      "--update", "--prune"])
    assert pruned.exit_code == 0, pruned.output
    assert f"wrote baseline {baseline} from 2 run(s): {len(before) - gone} rows ({gone} dropped by --prune)" \
        in pruned.output


def test_a_label_with_a_pipe_keeps_the_markdown_table_whole(tmp_path):
    """A model configuration holding "|" (its label "unet (norm=a|b)") split the drift table's row
    into an extra column; the boards escape it, and so does the drift table."""
    df = _runs(tmp_path, "base", [make_record("unet", model_config={"norm": "a|b"}, run_id="a"),
                                  make_record("unet", run_id="b")])  # two configurations: labels name them
    path = tmp_path / "baseline.csv"
    write_baseline(df, path)
    rows = [line for line in compare(path, df).render().splitlines() if line.startswith("|")]
    assert rows and any("a\\|b" in line for line in rows)
    assert len({line.replace("\\|", "").count("|") for line in rows}) == 1  # every row the same columns


def test_models_compares_and_rewrites_only_their_rows(tmp_path, baseline):
    """A contributor adding a model to the grid ran its runs only: --update refused (the others' rows
    had no value), and a whole-grid update moved every model's values. --models touches its rows only."""
    from typer.testing import CliRunner

    from bench.cli import app

    before = read_baseline(baseline)
    mine = _runs(tmp_path, "mine", [make_record("swin_unet", seed=0, dice=0.79, hd95=21.0),
                                    make_record("unet", seed=0, dice=0.10, hd95=90.0)])  # unet drifted here
    cli = CliRunner().invoke(app, ["check", "--baseline", str(baseline), "--results", str(tmp_path / "mine"),
                                   "--models", "swin_unet"])
    assert cli.exit_code == 0, cli.output
    assert "| unet " not in cli.output and "| vmunet " not in cli.output
    assert "row(s) are new" in cli.output and "--models swin_unet" in cli.output  # the hint's command adds only them
    cli = CliRunner().invoke(app, ["check", "--baseline", str(baseline), "--results", str(tmp_path / "mine"),
                                   "--models", "swin_unet", "--update"])
    assert cli.exit_code == 0 and "from 1 run(s)" in cli.output and "only the rows of swin_unet rewritten" in cli.output
    after = read_baseline(baseline)
    kept = after[after["model"] != "swin_unet"].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, before)  # the others as they were, in their order (unet's too)
    swin = after[after["model"] == "swin_unet"].set_index("metric")
    assert swin.loc["dice", "value"] == pytest.approx(0.79) and swin.loc["runs", "value"] == 1
    assert list(after["model"]) == sorted(after["model"], key=["swin_unet", "unet", "vmunet"].index)  # board order
    # only the chosen models are compared, on both sides: unet's drift shows under --models unet alone
    assert not compare(baseline, mine, ["swin_unet"]).failed
    drifted = compare(baseline, mine, ["unet"])
    assert drifted.failed and set(drifted.table["model"]) == {"unet"}
    # an update of one model still refuses a partial grid of that model unsaid (2 seeds in the baseline)
    with pytest.raises(BenchError, match=r"1 model\(s\) have fewer finished runs here than it counts \(first: "
                                         r"synapse · synapse · legacy-synapse · vmunet · runs\)"):
        write_baseline(_runs(tmp_path, "vm", [make_record("vmunet", seed=0, dice=0.8, hd95=20.0)]), baseline,
                       models=["vmunet"])
    cli = CliRunner().invoke(app, ["check", "--baseline", str(baseline), "--results", str(tmp_path / "mine"),
                                   "--models", "vmunett"])
    assert "--models vmunett: no runs of it" in str(cli.exception)


def test_the_hint_for_a_new_models_rows_adds_them_alone(tmp_path, baseline):
    """A journey: the hint's --update for a model added to the grid rewrote every model's values."""
    from typer.testing import CliRunner

    from bench.cli import app

    _runs(tmp_path, "now", [make_record("vmunet", seed=0, dice=0.80, hd95=20.0),
                            make_record("vmunet", seed=1, dice=0.84, hd95=30.0),
                            make_record("unet", seed=0, dice=0.70, hd95=40.0),
                            make_record("swin_unet", seed=0, dice=0.79, hd95=21.0)])
    cli = CliRunner().invoke(app, ["check", "--baseline", str(baseline), "--results", str(tmp_path / "now")])
    assert cli.exit_code == 0 and "row(s) are new" in cli.output
    assert f"--results {tmp_path / 'now'} --models swin_unet` adds them" in cli.output


def test_two_updates_of_some_models_rows_at_once_keep_both(tmp_path, baseline, monkeypatch):
    """A concurrency journey: `bench check --update --models unet` beside the same for another model
    (a CI matrix, one job per model) each wrote back the file it had read, so one update was lost."""
    import threading
    import time

    import bench.drift

    now = _runs(tmp_path, "now", [make_record("vmunet", seed=0, dice=0.60, hd95=20.0),
                                  make_record("vmunet", seed=1, dice=0.64, hd95=30.0),
                                  make_record("unet", seed=0, dice=0.50, hd95=40.0)])
    read = bench.drift.read_baseline
    first_read = threading.Event()

    def slow_read(*args, **kwargs):  # the first update reads, then the second starts before it writes
        out = read(*args, **kwargs)
        if not first_read.is_set():
            first_read.set()
            time.sleep(0.5)
        return out

    monkeypatch.setattr(bench.drift, "read_baseline", slow_read)
    one = threading.Thread(target=write_baseline, args=(now, baseline), kwargs={"models": ["unet"]})
    one.start()
    first_read.wait(10)
    with pytest.warns(UserWarning, match="another process is rewriting a file here .*; waiting for it"):
        write_baseline(now, baseline, models=["vmunet"])
    one.join(10)
    after = read_baseline(baseline).set_index(["model", "metric"])["value"]
    assert after["unet", "dice"] == pytest.approx(0.50) and after["vmunet", "dice"] == pytest.approx(0.62)


def test_check_and_its_update_use_the_numbers_report_shows_of_a_hand_edited_record(tmp_path, baseline):
    """A review: bench report restated a hand-edited dice (0.99 stored, 0.70 from its case rows) while bench
    check flagged drift on the 0.99 and --update wrote it into the baseline: check reads the numbers alike."""
    from typer.testing import CliRunner

    from bench.cli import app

    edited = make_record("unet", seed=0, dice=0.70, hd95=40.0)
    edited["metrics"]["dice"] = 0.99
    _runs(tmp_path, "now", [make_record("vmunet", seed=0, dice=0.80, hd95=20.0),
                            make_record("vmunet", seed=1, dice=0.84, hd95=30.0), edited])
    now = str(tmp_path / "now")
    with pytest.warns(UserWarning, match=rf"{edited['run_id']}\.json: dice 0\.99 stored, 0\.7 from the case rows"):
        cli = CliRunner().invoke(app, ["check", "--baseline", str(baseline), "--results", now])
    assert cli.exit_code == 0 and "DRIFT" not in cli.output, cli.output
    fresh = tmp_path / "fresh.csv"
    with pytest.warns(UserWarning, match="other than this code recomputes from their own case rows"):
        cli = CliRunner().invoke(app, ["check", "--baseline", str(fresh), "--results", now, "--update"])
    assert cli.exit_code == 0, cli.output
    rows = read_baseline(fresh).set_index(["model", "metric"])
    assert rows.loc[("unet", "dice"), "value"] == pytest.approx(0.70)
