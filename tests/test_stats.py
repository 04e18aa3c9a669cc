"""Statistics against hand-computed values and scipy: bootstrap CI, Holm, rank-biserial, Wilcoxon, ranks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bench import stats


def _cases(values: dict[str, list[list[float]]], metric="dice", classes=2) -> pd.DataFrame:
    """values[model][seed][case] -> a case-level frame with every class of a case equal to it."""
    rows = []
    for model, seeds in values.items():
        for s, per_case in enumerate(seeds):
            for c, v in enumerate(per_case):
                for k in range(1, classes + 1):
                    rows.append({"model_label": model, "run_id": f"{model}-s{s}", "case": f"case{c:02d}",
                                 "class": k, metric: v})
    return pd.DataFrame(rows)


def test_case_values_average_classes_then_seeds():
    df = _cases({"a": [[0.5, 0.7], [0.7, 0.9]]})
    df.loc[(df["run_id"] == "a-s0") & (df["case"] == "case00") & (df["class"] == 2), "dice"] = 0.1  # seed 0, case 0: (0.5 + 0.1) / 2
    wide = stats.case_values(df)
    assert wide.loc["case00", "a"] == pytest.approx((0.3 + 0.7) / 2)
    assert wide.loc["case01", "a"] == pytest.approx((0.7 + 0.9) / 2)


def test_bootstrap_ci():
    assert stats.bootstrap_ci([0.8] * 10) == (0.8, 0.8)
    assert all(math.isnan(v) for v in stats.bootstrap_ci([math.nan]))
    rng = np.random.default_rng(1)
    x = rng.normal(0.7, 0.1, size=400)
    lo, hi = stats.bootstrap_ci(x, n_boot=4000)
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))  # normal approximation
    assert lo < x.mean() < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)
    assert stats.bootstrap_ci(x, seed=3) == stats.bootstrap_ci(x, seed=3)  # reproducible


def test_holm_hand_computed():
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → monotone 0.06
    got = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert got == pytest.approx([0.03, 0.06, 0.06, 0.02])
    got = stats.holm([0.5, math.nan, 0.9])
    assert got[0] == pytest.approx(1.0) and math.isnan(got[1]) and got[2] == pytest.approx(1.0)


def test_rank_biserial_hand_computed():
    assert stats.rank_biserial([1, 2, 3]) == 1.0
    assert stats.rank_biserial([1, 2, -3]) == 0.0
    assert stats.rank_biserial([-1, 2, 3]) == pytest.approx(4 / 6)
    assert stats.rank_biserial([0, 0, -2]) == -1.0  # zeros dropped, as in Wilcoxon's default


def test_paired_tests_match_scipy_and_adjust():
    ref = [0.70, 0.72, 0.65, 0.80, 0.75, 0.60, 0.68, 0.71]
    better = [v + d for v, d in zip(ref, [0.05, 0.02, 0.04, 0.01, 0.03, 0.06, -0.01, 0.02])]
    same = [v + d for v, d in zip(ref, [0.01, -0.02, 0.015, -0.005, 0.0, -0.01, 0.02, -0.01])]
    df = _cases({"ref": [ref], "better": [better], "same": [same]})
    df["hd95"] = -df["dice"]  # lower is better; exactly mirrored differences
    table = stats.paired_tests(df, "ref", metrics=("dice", "hd95")).set_index(["model", "metric"])
    p_better = sps.wilcoxon(better, ref).pvalue
    assert table.loc[("better", "dice"), "p"] == pytest.approx(p_better)
    assert table.loc[("same", "dice"), "p"] == pytest.approx(sps.wilcoxon(same, ref).pvalue)
    assert table.loc[("better", "dice"), "mean_diff"] == pytest.approx(np.mean(better) - np.mean(ref))
    # effect size oriented "> 0: better than the reference" for both directions of metric
    assert table.loc[("better", "dice"), "effect_size"] == pytest.approx(table.loc[("better", "hd95"), "effect_size"])
    assert table.loc[("better", "dice"), "effect_size"] > 0.8
    assert table["p_holm"].to_numpy() == pytest.approx(stats.holm(table["p"].to_numpy()))
    assert table.loc[("better", "dice"), "n_cases"] == 8


def test_paired_tests_edge_cases():
    df = _cases({"ref": [[0.5, 0.6]], "twin": [[0.5, 0.6]]})
    table = stats.paired_tests(df, "ref", metrics=("dice",))
    assert table.loc[0, "p"] == 1.0 and table.loc[0, "effect_size"] == 0.0
    assert stats.paired_tests(df, "absent", metrics=("dice",)).empty


def test_rank_stability():
    top = [0.9, 0.92, 0.88, 0.91, 0.93]
    df = _cases({"top": [top], "mid": [[v - 0.2 for v in top]], "mid2": [[v - 0.2 + e for v, e in
                                                                           zip(top, [0.02, -0.02, 0.01, -0.01, 0.0])]]})
    table = stats.rank_stability(df, n_boot=500).set_index("model")
    assert table.loc["top", "rank"] == 1 and table.loc["top", "p_rank_1"] == 1.0
    assert (table.loc["top", "rank_lo"], table.loc["top", "rank_hi"]) == (1, 1)
    assert table.loc["mid", "rank_lo"] >= 2 and table.loc["mid2", "rank_lo"] >= 2
    assert table.loc["mid", "p_rank_1"] == 0.0
    hd = _cases({"a": [[1.0, 2.0]], "b": [[3.0, 4.0]]}, metric="hd95")
    assert stats.rank_stability(hd, "hd95").set_index("model").loc["a", "rank"] == 1  # lower is better
