"""Statistics against hand-computed values and scipy: bootstrap CI, Holm, rank-biserial, Wilcoxon, ranks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bench import metrics, stats
from bench.errors import BenchError


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


def test_a_case_is_the_mean_of_its_classes_not_the_median():
    """Guards against a case's value as the median over classes (0.9 here, not the mean 0.6)."""
    df = _cases({"ref": [[0.5, 0.4, 0.3]], "a": [[0.9, 0.9, 0.9]]}, classes=3)
    df.loc[(df["model_label"] == "a") & (df["class"] == 3), "dice"] = 0.0  # one class missed in every case
    assert stats.case_values(df)["a"].tolist() == pytest.approx([0.6, 0.6, 0.6])  # (0.9 + 0.9 + 0) / 3
    # the paired tests compare those values: differences 0.1, 0.2, 0.3
    row = stats.paired_tests(df, "ref", metrics=("dice",)).iloc[0]
    assert row["mean_diff"] == pytest.approx(0.2)


def test_the_board_statistic_of_rows_in_any_order_and_a_repeated_row_refused():
    """The statistic's table is filled by position: rows shuffled, a class absent from a run's first case
    or named by string give the numbers sorted rows give; one (case, class) twice is named, not overwritten."""
    df = _cases({"a": [[0.5, 0.7, 0.2]], "b": [[0.6, 0.1, 0.9]]}, classes=3)
    df["dice"] += np.arange(len(df)) / 1000  # every row its own value
    want = stats.policy_statistic(df, "dice", "legacy-synapse")
    shuffled = df.sample(frac=1.0, random_state=3)
    assert stats.policy_statistic(shuffled, "dice", "legacy-synapse")[want.columns].equals(want)  # bit for bit
    gap = df.drop(index=df[(df["case"] == "case00") & (df["class"] == 1)].index)  # absent from a's first case
    by_hand = gap[gap["model_label"] == "a"].groupby("class")["dice"].mean().mean()
    assert stats.policy_statistic(gap, "dice", "legacy-synapse")["a"].iloc[0] == pytest.approx(by_hand, abs=0)
    named = df.assign(**{"class": df["class"].map({1: "aorta", 2: "kidney", 3: "liver"})})
    assert stats.policy_statistic(named, "dice", "legacy-synapse").equals(want)
    with pytest.raises(BenchError, match=r"run a-s0: a case and class hold more than one dice row"):
        stats.policy_statistic(pd.concat([df, df.iloc[:1]]), "dice", "legacy-synapse")


def _scored(model: str, seed: int, cases: list[tuple[np.ndarray, np.ndarray]], policy: str, classes: int) -> pd.DataFrame:
    rows = []
    for i, (pred, gt) in enumerate(cases):
        for r in metrics.score_case(pred, gt, classes, policy, spacing=(1.0,) * gt.ndim):
            rows.append({"model_label": model, "run_id": f"{model}-s{seed}", "case": f"c{i:02d}", **r})
    return pd.DataFrame(rows)


def _strict_cases(rng, n=12, shift=0):
    """Class 1 in every case, class 2 in a quarter of them (strict scores the rest NaN)."""
    out = []
    for i in range(n):
        gt = np.zeros((4, 24, 24), int)
        pred = np.zeros_like(gt)
        w = int(rng.integers(6, 10))
        gt[:, 2:2 + w, 2:2 + w] = 1
        pred[:, 2:2 + w, 2 + shift:1 + w + shift] = 1
        if i % 4 == 0:
            gt[:, 14:18, 14:18] = 2
            pred[:, 15:19, 15:19] = 2
        out.append((pred, gt))
    return out


def _isic_cases(n=20):
    """Large lesions predicted well, small ones half missed: pooled and per-case means differ a lot."""
    out = []
    for i in range(n):
        gt = np.zeros((32, 32), int)
        pred = np.zeros_like(gt)
        if i < n // 2:
            gt[2:30, 2:30], pred[3:30, 2:30] = 1, 1
        else:
            gt[10:14, 10:14], pred[11:15, 11:15] = 1, 1
        out.append((pred, gt))
    return out


@pytest.mark.parametrize("policy", ["strict", "legacy-isic", "legacy-synapse"])
def test_bootstrap_ci_is_the_board_number_recomputed_on_resampled_cases(policy):
    rng = np.random.default_rng(0)
    if policy == "legacy-isic":
        runs = [_scored("m", s, _isic_cases(), policy, 2) for s in range(2)]
    else:
        runs = [_scored("m", s, _strict_cases(rng, shift=s), policy, 3) for s in range(2)]
    df = pd.concat(runs, ignore_index=True)
    headline = np.mean([metrics.aggregate(r, policy)["dice"] for r in runs])  # the board: mean over seeds
    assert stats.policy_statistic(df, "dice", policy).loc[0, "m"] == pytest.approx(headline, abs=1e-12)
    # independent path: the same resamples, each scored by metrics.aggregate on the repeated rows
    n_boot, cases = 60, sorted(df["case"].unique())
    draws = np.random.default_rng(5).integers(0, len(cases), size=(n_boot, len(cases)))
    expected = []
    for draw in draws:
        picked = [cases[i] for i in draw]
        expected.append(np.mean([metrics.aggregate(pd.concat([r[r["case"] == c] for c in picked]), policy)["dice"]
                                 for r in runs]))
    expected = np.array(expected)
    if policy == "strict":  # class 2 lies in 3 of 12 cases: some resamples draw none, and are left out
        assert 0 < np.isnan(expected).sum() < n_boot // 4
    expected = expected[~np.isnan(expected)]
    lo, hi = stats.bootstrap_ci(df, "dice", policy, n_boot=n_boot, seed=5)["m"]
    assert (lo, hi) == pytest.approx((np.quantile(expected, 0.025), np.quantile(expected, 0.975)), abs=1e-12)
    assert lo <= headline <= hi


def test_bootstrap_ci_brackets_a_pooled_number_a_per_case_mean_would_miss():
    df = _scored("m", 0, _isic_cases(), "legacy-isic", 2)
    pooled = metrics.aggregate(df, "legacy-isic")["dice"]
    per_case_mean = stats.case_values(df)["m"].mean()
    assert pooled - per_case_mean > 0.15  # the two numbers are far apart on this data
    lo, hi = stats.bootstrap_ci(df, "dice", "legacy-isic")["m"]
    assert lo <= pooled <= hi and not lo <= per_case_mean <= hi
    const = _scored("c", 0, [(np.eye(8, dtype=int), np.eye(8, dtype=int))] * 5, "strict", 2)
    assert stats.bootstrap_ci(const, "dice", "strict")["c"] == (1.0, 1.0)
    assert stats.bootstrap_ci(df, "dice", "legacy-isic", seed=3) == stats.bootstrap_ci(df, "dice", "legacy-isic", seed=3)


def test_the_few_cases_caution_counts_the_distinct_resamples_in_words():
    """A caption's caution over 2 test cases says "2 test cases" and "3 distinct resamples", not "2 test case":
    the plural follows the count (1 case: 1 resample); 10 cases need no caution."""
    assert stats.ci_caution(2).startswith(" Caution: with 2 test cases the bootstrap has 3 distinct resamples, ")
    assert stats.ci_caution(1).startswith(" Caution: with 1 test case the bootstrap has 1 distinct resample, ")
    assert stats.ci_caution(stats.FEW_CI_CASES) == stats.ci_caution(0) == ""


def test_holm_hand_computed():
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → monotone 0.06
    got = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert got == pytest.approx([0.03, 0.06, 0.06, 0.02])
    got = stats.holm([0.5, math.nan, 0.9])
    assert got[0] == pytest.approx(1.0) and math.isnan(got[1]) and got[2] == pytest.approx(1.0)
    # a NaN p (a pair with no shared case) is no test: the family is 2, so 0.01·2 = 0.02 (not 0.01·3)
    got = stats.holm([0.01, math.nan, 0.02])
    assert got[0] == pytest.approx(0.02) and math.isnan(got[1]) and got[2] == pytest.approx(0.02)
    assert stats.holm([0.6, 0.7]).tolist() == [1.0, 1.0]  # 0.6·2 = 1.2: a probability, capped at 1


def test_rank_biserial_hand_computed():
    assert stats.rank_biserial([1, 2, 3]) == 1.0
    assert stats.rank_biserial([1, 2, -3]) == 0.0
    assert stats.rank_biserial([-1, 2, 3]) == pytest.approx(4 / 6)
    assert stats.rank_biserial([0, 0, -2]) == -1.0  # zeros dropped, as in Wilcoxon's default
    assert stats.rank_biserial([0, 0]) == 0.0  # every pair tied: no difference
    assert math.isnan(stats.rank_biserial([])) and math.isnan(stats.rank_biserial([math.nan]))  # no pair at all
    assert stats.rank_biserial([1.0, math.nan, 2.0]) == 1.0  # a NaN pair dropped, not the whole effect made NaN


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


def test_paired_tests_pair_only_the_cases_both_models_have():
    """A model scored on fewer cases (a smoke run's max_cases) was paired with NaN on the rest: p and difference NaN."""
    ref = [0.70, 0.72, 0.65, 0.80, 0.75, 0.60, 0.68, 0.71]
    fewer = [0.75, 0.74, 0.69, 0.81, 0.78, 0.66]  # scored on the first 6 cases only
    row = stats.paired_tests(_cases({"ref": [ref], "fewer": [fewer]}), "ref", metrics=("dice",)).iloc[0]
    assert row["n_cases"] == 6
    assert row["p"] == pytest.approx(sps.wilcoxon(fewer, ref[:6]).pvalue)  # 2/64: 6 positive differences, exact
    assert row["mean_diff"] == pytest.approx(np.mean(fewer) - np.mean(ref[:6]))


def test_a_pair_with_one_undefined_board_number_gets_no_test():
    """strict: a model whose board number is NaN (a class valid in no case) got a Wilcoxon p of its other classes."""
    rows = []
    for i in range(6):
        for model, d1 in (("ref", 0.7), ("x", 0.8 + i / 100)):
            rows.append({"model_label": model, "run_id": model, "case": f"c{i}", "class": 1, "dice": d1})
        # class 2 is in no reference mask: x predicts none (strict: NaN), ref a false positive in c0 (DSC 0)
        rows.append({"model_label": "x", "run_id": "x", "case": f"c{i}", "class": 2, "dice": math.nan})
        rows.append({"model_label": "ref", "run_id": "ref", "case": f"c{i}", "class": 2,
                     "dice": 0.0 if i == 0 else math.nan})
    df = pd.DataFrame(rows)
    board = stats.policy_statistic(df, "dice", "strict").iloc[0]
    assert math.isnan(board["x"]) and board["ref"] == pytest.approx((0.7 + 0.0) / 2)  # one side undefined
    row = stats.paired_tests(df, "ref", metrics=("dice",), policy="strict").iloc[0]
    assert row["test"] == "undefined" and math.isnan(row["p"]) and math.isnan(row["mean_diff"])


def test_pooled_boards_test_the_difference_the_board_shows():
    """legacy-isic: "a" wins the pooled DSC on one large lesion, "b" wins per image on five small
    ones; a Wilcoxon over per-image Dice said b − a = +30 beside a board ranking a first. The pooled
    test reports the board's own difference, and its p is the permutation test's, recomputed here
    from metrics.aggregate over every way of swapping the two models' images."""
    import itertools

    def image(tp, fp, fn):  # a 1-D "image" with these counts, and 10 background pixels
        pred = np.array([1] * tp + [1] * fp + [0] * fn + [0] * 10)
        gt = np.array([1] * tp + [0] * fp + [1] * fn + [0] * 10)
        return pred, gt

    a = [image(990, 10, 10)] + [image(5, 5, 5)] * 5
    b = [image(800, 200, 200)] + [image(9, 1, 1)] * 5
    runs = {"a": _scored("a", 0, a, "legacy-isic", 2), "b": _scored("b", 0, b, "legacy-isic", 2)}
    df = pd.concat(runs.values(), ignore_index=True)
    board = {m: metrics.aggregate(r, "legacy-isic")["dice"] for m, r in runs.items()}
    assert board["a"] > board["b"] and stats.case_values(df)["b"].mean() > stats.case_values(df)["a"].mean()
    row = stats.paired_tests(df, "a", metrics=("dice", "hd95"), policy="legacy-isic")
    assert list(row["metric"]) == ["dice"]  # no pooled HD95 to compare
    row = row.iloc[0]
    assert row["model"] == "b" and row["test"] == "permutation" and row["n_cases"] == 6
    assert row["mean_diff"] == pytest.approx(board["b"] - board["a"]) and math.isnan(row["effect_size"])
    cases = sorted(df["case"].unique())
    observed, diffs = board["b"] - board["a"], []
    for swap in itertools.product([False, True], repeat=len(cases)):  # all 64 ways
        other = {"a": "b", "b": "a"}
        mine = {m: pd.concat([runs[other[m] if s else m][lambda r, c=c: r["case"] == c] for c, s in zip(cases, swap)])
                for m in runs}
        diffs.append(metrics.aggregate(mine["b"], "legacy-isic")["dice"]
                     - metrics.aggregate(mine["a"], "legacy-isic")["dice"])
    assert row["p"] == pytest.approx(np.mean(np.abs(diffs) >= abs(observed) - 1e-12))
    assert row["p"] == row["p_holm"] and row["p"] > 0.03  # one large image decides: not significant
    # a difference on one shared case cannot be told from a swap: p 1 (a bootstrap said 0.001)
    one = df[df["case"] == cases[0]]
    assert stats.paired_tests(one, "a", metrics=("dice",), policy="legacy-isic").loc[0, "p"] == 1.0
    # per-case policies keep Wilcoxon
    assert stats.paired_tests(df, "a", metrics=("dice",), policy="legacy-synapse").loc[0, "test"] == "wilcoxon"


def test_pooled_test_over_seeds_permutes_the_board_statistic():
    """With several seeds the board shows the mean over runs of each run's pooled DSC. The test
    permutes that statistic, swapping a case's counts between paired runs (it averaged the counts
    over seeds first: another number, here of the other sign when one seed floods the large image)."""
    import itertools

    def image(tp, fp, fn):
        return np.array([1] * (tp + fp) + [0] * (fn + 10)), np.array([1] * tp + [0] * fp + [1] * fn + [0] * 10)

    small, b = [image(5, 5, 5)] * 4, [image(400, 600, 600)] + [image(9, 1, 1)] * 4
    cases = {("a", 0): [image(990, 10, 10)] + small, ("a", 1): [image(100, 5000, 900)] + small, ("b", 0): b, ("b", 1): b}
    runs = {key: _scored(key[0], key[1], imgs, "legacy-isic", 2) for key, imgs in cases.items()}
    df = pd.concat(runs.values(), ignore_index=True)

    def board(pick):  # mean over the two seeds of each run's pooled DSC
        return {m: np.mean([metrics.aggregate(pick(m, s), "legacy-isic")["dice"] for s in (0, 1)]) for m in "ab"}

    shown = board(lambda m, s: runs[(m, s)])
    averaged = {m: metrics.pooled_metrics(*sum(runs[(m, s)][list(metrics.COUNTS)].sum() for s in (0, 1)) / 2)["dice"]
                for m in "ab"}
    assert np.sign(shown["b"] - shown["a"]) != np.sign(averaged["b"] - averaged["a"])  # the trap
    row = stats.paired_tests(df, "a", metrics=("dice",), policy="legacy-isic").iloc[0]
    assert row["test"] == "permutation" and row["mean_diff"] == pytest.approx(shown["b"] - shown["a"])
    ids, diffs = sorted(df["case"].unique()), []
    for swap in itertools.product([False, True], repeat=len(ids)):
        other = {"a": "b", "b": "a"}
        mine = board(lambda m, s: pd.concat([runs[(other[m] if w else m, s)][lambda r, c=c: r["case"] == c]
                                             for c, w in zip(ids, swap)]))
        diffs.append(mine["b"] - mine["a"])
    assert row["p"] == pytest.approx(np.mean(np.abs(diffs) >= abs(shown["b"] - shown["a"]) - 1e-12))
    # runs that do not pair up (one seed of b): the counts averaged over runs, and the row says so
    one = df[df["run_id"] != "b-s1"]
    row = stats.paired_tests(one, "a", metrics=("dice",), policy="legacy-isic").iloc[0]
    assert row["test"] == "permutation (seed-averaged)"
    per_case = {m: np.mean([runs[(m, s)].groupby("case")[list(metrics.COUNTS)].sum().to_numpy()
                            for s in ((0, 1) if m == "a" else (0,))], axis=0) for m in "ab"}
    dsc = lambda counts: metrics.pooled_metrics(*counts.sum(axis=0))["dice"]  # noqa: E731
    diffs = [dsc(np.where(np.array(w)[:, None], per_case["a"], per_case["b"]))
             - dsc(np.where(np.array(w)[:, None], per_case["b"], per_case["a"]))
             for w in itertools.product([False, True], repeat=len(ids))]
    observed = dsc(per_case["b"]) - dsc(per_case["a"])
    assert row["p"] == pytest.approx(np.mean(np.abs(diffs) >= abs(observed) - 1e-12))


def test_permutation_p_drawn_when_the_cases_are_many():
    """Up to 2^12 swap patterns every one counts; over that, drawn ones, the observed counted once."""
    import itertools

    def share(sums):
        return sums[:, 0] / sums.sum(axis=1)

    # 12 cases are 2^12 = N_PERM patterns: all enumerated, as by hand (drawn instead, p moved by chance)
    rng = np.random.default_rng(0)
    a = np.c_[rng.integers(50, 60, 12), rng.integers(5, 15, 12)].astype(float)
    b = np.c_[rng.integers(45, 55, 12), rng.integers(8, 18, 12)].astype(float)
    observed = share(a.sum(0, keepdims=True))[0] - share(b.sum(0, keepdims=True))[0]
    diffs = []
    for swap in itertools.product([0, 1], repeat=12):
        w = np.array(swap)[:, None]
        diffs.append(share((w * b + (1 - w) * a).sum(0, keepdims=True))[0]
                     - share((w * a + (1 - w) * b).sum(0, keepdims=True))[0])
    assert stats.permutation_p(a, b, share) == pytest.approx(np.mean(np.abs(diffs) >= abs(observed) - 1e-12), abs=0)

    rng = np.random.default_rng(0)
    a = np.c_[rng.integers(80, 90, 40), rng.integers(0, 5, 40)].astype(float)  # (hits, misses) per case
    b = np.c_[rng.integers(60, 70, 40), rng.integers(20, 30, 40)].astype(float)
    p = stats.permutation_p(a, b, share, n_perm=999, seed=1)
    assert p == pytest.approx(1 / 1000)  # a clear difference: no drawn pattern reaches it, (0 + 1) / (999 + 1)
    assert stats.permutation_p(a, a.copy(), share, n_perm=999) == 1.0  # identical models


def test_permutation_p_of_an_undefined_difference_is_nan():
    """A statistic undefined on the models' own cases gave p 0: no swap reached NaN, read as the clearest difference."""
    assert math.isnan(stats.permutation_p(np.ones((3, 2)), np.ones((3, 2)), lambda s: np.full(len(s), np.nan)))


def test_paired_tests_edge_cases():
    """A twin of the reference gets p 1, a model sharing no case NaN, neither through scipy's warnings."""
    import warnings

    apart = _cases({"apart": [[0.7, 0.8]]}).replace({"case": {"case00": "case10", "case01": "case11"}})
    df = pd.concat([_cases({"ref": [[0.5, 0.6]], "twin": [[0.5, 0.6]]}), apart], ignore_index=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Wilcoxon of all-zero or no differences warns in every report
        table = stats.paired_tests(df, "ref", metrics=("dice",)).set_index("model")
    assert table.loc["twin", "p"] == 1.0 and table.loc["twin", "effect_size"] == 0.0
    assert table.loc["apart", "n_cases"] == 0 and math.isnan(table.loc["apart", "p"])
    assert stats.paired_tests(df, "absent", metrics=("dice",)).empty


def test_case_rows_as_records_load_them_are_labelled_and_must_be_one_boards():
    # a script passes records.load(dir, level="case") as it comes: the labels were a bare KeyError,
    # and "unet" found no rows labelled "unet (tiny)" (an empty table, unsaid)
    df = _cases({"unet": [[0.5, 0.6, 0.7]], "vmunet": [[0.6, 0.7, 0.9]]}).drop(columns="model_label")
    df = df.assign(model=df["run_id"].str.split("-").str[0], model_config="{}", dataset="synapse", synthetic=False,
                   protocol="smoke", policy="legacy-synapse", protocol_hash="abc", off_protocol=False,
                   protocol_overrides="{}", tiny=True)
    table = stats.paired_tests(df, "unet", metrics=("dice",))
    assert list(table["model"]) == ["vmunet (tiny)"] and list(table["reference"]) == ["unet (tiny)"]
    assert table.loc[0, "mean_diff"] == pytest.approx(0.4 / 3)
    assert set(stats.bootstrap_ci(df, "dice", "legacy-synapse")) == {"unet (tiny)", "vmunet (tiny)"}
    two = pd.concat([df, df.assign(policy="strict")])
    with pytest.raises(BenchError, match=r"^case rows of 2 boards \(synapse · smoke · legacy-synapse; synapse · smoke · "
                                         r"strict\); these statistics compare the models of one board"):
        stats.rank_stability(two, "dice", "strict")
    with pytest.raises(BenchError, match=r"^no case rows to compare"):  # a KeyError before (a filter left none)
        stats.bootstrap_ci(df.iloc[:0], "dice", "legacy-synapse")


def test_rank_stability():
    top = [0.9, 0.92, 0.88, 0.91, 0.93]
    df = _cases({"top": [top], "mid": [[v - 0.2 for v in top]], "mid2": [[v - 0.2 + e for v, e in
                                                                           zip(top, [0.02, -0.02, 0.01, -0.01, 0.0])]]})
    table = stats.rank_stability(df, "dice", "legacy-synapse", n_boot=500).set_index("model")
    assert table.loc["top", "rank"] == 1 and table.loc["top", "p_rank_1"] == 1.0
    assert (table.loc["top", "rank_lo"], table.loc["top", "rank_hi"]) == (1, 1)
    assert table.loc["mid", "rank_lo"] >= 2 and table.loc["mid2", "rank_lo"] >= 2
    assert table.loc["mid", "p_rank_1"] == 0.0
    hd = _cases({"a": [[1.0, 2.0]], "b": [[3.0, 4.0]]}, metric="hd95")
    assert stats.rank_stability(hd, "hd95", "strict").set_index("model").loc["a", "rank"] == 1  # lower is better
    # tied models share the better rank (the report's note says so): P(rank 1) adds up to 2 here
    tied = stats.rank_stability(_cases({"a": [top], "b": [top]}), "dice", "legacy-synapse", n_boot=50)
    assert list(tied["rank"]) == [1, 1] and list(tied["p_rank_1"]) == [1.0, 1.0]


def test_the_rank_interval_ends_are_the_ranks_drawn_at_2_5_and_97_5_percent():
    """A rank drawn in 2.5–5 % of the resamples fell out of the 95 % rank interval (ends at 5 %, or rounded in)."""
    draws = np.random.default_rng(0).integers(0, 8, size=(400, 8))  # _resample_weights' draws of 8 cases, seed 0

    def wins(vals, first, second):  # resamples in which ``first``'s mean beats ``second``'s
        return int((np.array(vals[first])[draws].mean(1) > np.array(vals[second])[draws].mean(1)).sum())

    def interval(vals, model):
        one_seed = _cases({m: [v] for m, v in vals.items()})
        table = stats.rank_stability(one_seed, "dice", "legacy-synapse", n_boot=400, seed=0).set_index("model")
        return table.loc[model, "rank_lo"], table.loc[model, "rank_hi"], table.loc[model, "p_rank_1"]

    close = {"a": [0.721, 0.696, 0.765, 0.713, 0.846, 0.720, 0.674, 0.705],
             "b": [0.724, 0.638, 0.754, 0.689, 0.779, 0.729, 0.692, 0.707]}
    assert wins(close, "b", "a") == 19  # b first in 4.75 %: the 2.5 % end is rank 1 (the 5 % end would be 2)
    assert interval(close, "b") == (1, 2, pytest.approx(19 / 400))
    ahead = {"a": [0.926, 0.818, 0.812, 0.747, 0.858, 0.896, 0.732, 0.967],
             "b": [0.891, 0.834, 0.779, 0.778, 0.823, 0.896, 0.704, 0.897]}
    assert wins(ahead, "b", "a") == 10  # a second in 2.5 %: the 97.5 % point lies between ranks 1 and 2, taken up
    assert interval(ahead, "a")[:2] == (1, 2)


def test_ranks_use_only_the_cases_every_model_has():
    """A case one model alone has (its best) counted toward its rank: the models were ranked over other cases."""
    df = _cases({"a": [[0.5, 0.5, 0.5, 1.0]], "b": [[0.6, 0.6, 0.6]]})
    table = stats.rank_stability(df, "dice", "legacy-synapse", n_boot=50).set_index("model")
    assert table.loc["a", "mean"] == pytest.approx(0.5) and table.loc["b", "rank"] == 1  # with case03 a had 0.625


def test_rank_stability_ranks_the_board_number_not_the_per_case_mean():
    # "rare": perfect on the common class, poor on the rare one; "common": the other way round.
    # strict's board number (mean over classes of per-class means) prefers "rare"; a mean of
    # per-case means (3 of 4 cases lack class 2) would prefer "common".
    rows = []
    for model, (d1, d2) in {"rare": (0.8, 0.9), "common": (0.9, 0.6)}.items():
        for i in range(8):
            rows.append({"model_label": model, "run_id": model, "case": f"c{i}", "class": 1, "dice": d1})
            rows.append({"model_label": model, "run_id": model, "case": f"c{i}", "class": 2,
                         "dice": d2 if i % 4 == 0 else math.nan})
    df = pd.DataFrame(rows)
    assert stats.case_values(df)["common"].mean() > stats.case_values(df)["rare"].mean()
    table = stats.rank_stability(df, "dice", "strict", n_boot=200).set_index("model")
    assert table.loc["rare", "rank"] == 1 and table.loc["rare", "mean"] == pytest.approx((0.8 + 0.9) / 2)
    assert table.loc["common", "mean"] == pytest.approx((0.9 + 0.6) / 2)


def test_a_seed_with_no_drawn_case_sits_the_resample_out():
    """A resample that drew none of a seed's cases scored that seed 0 (or the model NaN), not the other seeds' mean."""
    df = _cases({"a": [[0.2, 0.4, 0.6, 0.8], [0.9]]})  # seed 1 scored case00 only
    weights = np.array([[0.0, 2.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0]])  # case multiplicities of two resamples
    got = stats.policy_statistic(df, "dice", "legacy-synapse", weights, pd.Index(sorted(df["case"].unique())))
    assert got["a"].tolist() == pytest.approx([(0.4 * 2 + 0.6) / 3, ((0.2 + 0.8) / 2 + 0.9) / 2])  # seed 0 alone; both


def test_models_and_seeds_with_different_case_sets():
    """A model (or a seed) scored on fewer cases, as smoke runs with max_cases are: each model's CI
    comes from its own cases, and a resample missing a seed's cases leaves that seed out."""
    rng = np.random.default_rng(2)
    full = _scored("a", 0, _strict_cases(rng), "strict", 3)
    part = _scored("b", 0, _strict_cases(rng, shift=1), "strict", 3)
    part = part[part["case"].isin([f"c{i:02d}" for i in range(4)])]
    df = pd.concat([full, part], ignore_index=True)
    ci = stats.bootstrap_ci(df, "dice", "strict")
    for model, rows in (("a", full), ("b", part)):
        lo, hi = ci[model]
        assert lo <= metrics.aggregate(rows, "strict")["dice"] <= hi
    seeds = pd.concat([full, part.assign(model_label="a", run_id="a-s1")], ignore_index=True)
    lo, hi = stats.bootstrap_ci(seeds, "dice", "strict")["a"]
    assert not math.isnan(lo) and lo <= stats.policy_statistic(seeds, "dice", "strict").loc[0, "a"] <= hi
    # legacy-isic: a model with 2 of 20 images never pools an empty draw into DSC 0
    isic = _scored("m", 0, _isic_cases(), "legacy-isic", 2)
    two = isic[isic["case"].isin(["c00", "c01"])]
    lo, hi = stats.bootstrap_ci(two, "dice", "legacy-isic")["m"]
    assert lo > 0.9 and hi <= 1.0


def test_rank_stability_leaves_out_resamples_where_the_board_number_is_undefined():
    """strict: a class valid in one case only; resamples that miss it have no DSC (NaN, as the mean
    over classes is) and are left out, rather than ranking every model last together (all tied first)."""
    rows = []
    for model, (d1, d2) in {"good": (0.9, 0.9), "bad": (0.5, 0.5)}.items():
        for i in range(6):
            rows.append({"model_label": model, "run_id": model, "case": f"c{i}", "class": 1, "dice": d1})
            rows.append({"model_label": model, "run_id": model, "case": f"c{i}", "class": 2,
                         "dice": d2 if i == 0 else math.nan})
    table = stats.rank_stability(pd.DataFrame(rows), "dice", "strict", n_boot=200).set_index("model")
    assert table.loc["good", "p_rank_1"] == 1.0 and table.loc["bad", "p_rank_1"] == 0.0
    assert (table.loc["bad", "rank_lo"], table.loc["bad", "rank_hi"]) == (2, 2)
    one = pd.DataFrame([r for r in rows if r["case"] == "c0" or r["class"] == 1])
    one.loc[(one["case"] == "c0") & (one["class"] == 2), "dice"] = math.nan  # no case where class 2 is valid
    assert stats.rank_stability(one, "dice", "strict", n_boot=50).empty  # no model has a DSC to rank


def test_rank_stability_keeps_cases_where_a_model_scores_nan():
    # case c0 has no class 1 in the reference: "x" predicts nothing there (strict: NaN, left out),
    # "y" predicts a false positive (DSC 0). Both are cases of both models and count.
    rows = []
    for model, c0 in (("x", math.nan), ("y", 0.0)):
        rows.append({"model_label": model, "run_id": model, "case": "c0", "class": 1, "dice": c0})
        for i in range(1, 4):
            rows.append({"model_label": model, "run_id": model, "case": f"c{i}", "class": 1, "dice": 0.9})
    table = stats.rank_stability(pd.DataFrame(rows), "dice", "strict", n_boot=100).set_index("model")
    assert table.loc["y", "mean"] == pytest.approx(0.9 * 3 / 4) and table.loc["x", "mean"] == pytest.approx(0.9)
    assert table.loc["x", "rank"] == 1
