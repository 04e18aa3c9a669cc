"""Is a difference real? Confidence intervals, paired tests and rank stability over test cases.

All functions work on the case-level table of ``bench.records.load(dir, level="case")``: one row
per run × case × class. A case's value is the mean over its foreground classes (the papers'
per-volume mean DSC), averaged over the model's seeds, so every model has one value per case and
two models pair on the cases they share. (Under ``legacy-isic`` the papers' aggregate is a
pooled confusion matrix; the per-case view is still the right unit for uncertainty.)

- ``bootstrap_ci``: percentile bootstrap of the mean over cases (cases resampled with
  replacement; seeded, so a report is reproducible).
- ``paired_tests``: for a reference model, a two-sided Wilcoxon signed-rank test (scipy) against
  every other model per metric over the shared cases, the matched-pairs rank-biserial
  correlation as effect size (+1: the other model is better on every case), and p-values
  adjusted with Holm's step-down over all tests of the board.
- ``rank_stability``: ranks by mean over cases, and how often each rank comes out when the
  cases are bootstrapped.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = ["case_values", "bootstrap_ci", "holm", "rank_biserial", "paired_tests", "rank_stability",
           "LOWER_IS_BETTER"]

LOWER_IS_BETTER = {"hd95"}


def case_values(df_cases: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """Wide table: one row per case, one column per ``model_label`` (mean over classes, then seeds)
    for a case-level frame of ONE board (already labelled with ``bench.report.label_runs``)."""
    per_run = df_cases.groupby(["model_label", "run_id", "case"], sort=False)[metric].mean()
    per_model = per_run.groupby(level=["model_label", "case"], sort=False).mean()
    return per_model.unstack("model_label")


def bootstrap_ci(values, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap ``(lo, hi)`` of the mean of ``values`` (NaNs dropped); NaN if empty."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment (family-wise error), NaNs left out of the family and kept."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    idx = np.where(~np.isnan(p))[0]
    order = idx[np.argsort(p[idx], kind="stable")]
    m, running = len(order), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return out


def rank_biserial(diff) -> float:
    """Matched-pairs rank-biserial correlation of paired differences (zeros dropped, as Wilcoxon's
    default): (R+ − R−) / (R+ + R−) with R± the rank sums of |d| for positive/negative d."""
    d = np.asarray(diff, dtype=float)
    d = d[(d != 0) & ~np.isnan(d)]
    if d.size == 0:
        return 0.0
    ranks = sps.rankdata(np.abs(d))
    plus, minus = ranks[d > 0].sum(), ranks[d < 0].sum()
    return float((plus - minus) / (plus + minus))


def paired_tests(df_cases: pd.DataFrame, reference: str, metrics=("dice", "hd95")) -> pd.DataFrame:
    """One row per (model ≠ reference, metric) of one board: n shared cases, mean difference
    (model − reference, in the record's unit), effect size, Wilcoxon p and Holm-adjusted p.
    The effect size is oriented so that > 0 means the model is better than the reference."""
    rows = []
    for metric in metrics:
        if metric not in df_cases or df_cases[metric].notna().sum() == 0:
            continue
        wide = case_values(df_cases, metric)
        if reference not in wide:
            continue
        for model in wide.columns:
            if model == reference:
                continue
            pair = wide[[model, reference]].dropna()
            diff = (pair[model] - pair[reference]).to_numpy()
            better = -diff if metric in LOWER_IS_BETTER else diff
            if len(diff) == 0 or np.all(diff == 0):
                p = math.nan if len(diff) == 0 else 1.0
            else:
                p = float(sps.wilcoxon(pair[model], pair[reference], zero_method="wilcox",
                                       alternative="two-sided").pvalue)
            rows.append({"model": model, "reference": reference, "metric": metric, "n_cases": len(diff),
                         "mean_diff": float(diff.mean()) if len(diff) else math.nan,
                         "effect_size": rank_biserial(better), "p": p})
    table = pd.DataFrame(rows, columns=["model", "reference", "metric", "n_cases", "mean_diff", "effect_size", "p"])
    table["p_holm"] = holm(table["p"]) if len(table) else []
    return table


def rank_stability(df_cases: pd.DataFrame, metric: str = "dice", *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Rank (1 = best) of each model by mean over the cases all models share, plus its bootstrap
    distribution: the share of resamples in which it ranks first, and the 95% rank interval."""
    wide = case_values(df_cases, metric).dropna()
    if wide.empty:
        return pd.DataFrame(columns=["model", "mean", "rank", "p_rank_1", "rank_lo", "rank_hi"])
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0  # rank ascending on sign * value
    values = wide.to_numpy()
    rank_of = lambda m: sps.rankdata(sign * m, method="min", axis=-1)  # noqa: E731
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(wide), size=(n_boot, len(wide)))
    boot = rank_of(values[idx].mean(axis=1))
    ranks = rank_of(values.mean(axis=0))
    out = pd.DataFrame({
        "model": wide.columns, "mean": values.mean(axis=0), "rank": ranks.astype(int),
        "p_rank_1": (boot == 1).mean(axis=0),
        "rank_lo": np.quantile(boot, 0.025, axis=0).astype(int), "rank_hi": np.quantile(boot, 0.975, axis=0).astype(int),
    })
    return out.sort_values(["rank", "model"]).reset_index(drop=True)
