"""Is a difference real? Confidence intervals, paired tests and rank stability over test cases.

All functions work on the case-level table of ``bench.records.load(dir, level="case")`` for ONE
board: one row per run × case × class, labelled with ``bench.report.label_cases`` (its board and
``model_label`` columns; added here where missing; rows of several boards are refused).

- ``bootstrap_ci``: percentile bootstrap of the number the board shows. Test cases are resampled
  with replacement (seeded, so a report is reproducible) and each run's metric is recomputed under
  the board's policy exactly as ``bench.metrics.aggregate`` computes it (per-case policies: mean
  over cases per class, NaN skipped, then over classes; legacy-isic: one pooled confusion matrix),
  then averaged over the model's seeds; each model is resampled over its own cases.
- ``paired_tests``: for a reference model, a two-sided test against every other model per metric
  over the shared cases, and p-values adjusted with Holm's step-down over all tests of the board.
  Per-case policies: Wilcoxon signed-rank (scipy), its unit the case (a case's value is the mean
  over its foreground classes, averaged over seeds: ``case_values``), effect size the matched-pairs
  rank-biserial correlation (+1: the other model is better on every case). Pooled policies
  (legacy-isic): their board number is no mean of per-case values, and a per-case test can
  contradict it (a model better on many small lesions, worse on the large ones that dominate the
  pooled matrix), so the test is a paired permutation test of the board's difference: under "no
  difference" a case's confusion counts in the two models' runs (paired in seed and fold order) are
  exchangeable, so every swap pattern of the cases (all 2^n up to 2^12, else ``N_PERM`` drawn), each
  run's pooled metric recomputed and averaged over the runs, gives the difference's null
  distribution; no per-case effect size.
- ``rank_stability``: ranks by the board's statistic over the cases every model has, and how
  often each rank comes out when those cases are bootstrapped.

A resample in which the statistic is undefined (under strict, a class valid in none of the drawn
cases: the mean over classes is NaN, as nnU-Net's) is left out of the bootstrap's distribution.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bench import metrics
from bench.errors import BenchError

__all__ = ["one_board", "reference_label", "case_values", "policy_statistic", "bootstrap_ci", "ci_caution", "holm",
           "rank_biserial", "paired_tests", "rank_stability", "LOWER_IS_BETTER", "N_BOOT", "N_BOOT_RANKS", "N_PERM",
           "FEW_CI_CASES"]

LOWER_IS_BETTER = {"hd95"}
N_BOOT = 2000  # resamples of bootstrap_ci
N_BOOT_RANKS = 1000  # resamples of rank_stability (the report's rank note says how many)
N_PERM = 4096  # swap patterns of the pooled paired test where there are more than that (2^12 with 12 cases)
# Under this many test cases a percentile bootstrap CI is rough: n cases have only C(2n-1, n) distinct
# resamples (10 for 3 cases, 126 for 5), and percentile intervals run narrow in small samples (their
# spread is the plug-in SD, short by sqrt((n-1)/n), and they never reach past the data's range); their
# coverage falls well under the nominal 95% below about 10 observations (Hesterberg 2015, "What teachers
# should know about the bootstrap", The American Statistician 69(4)).
FEW_CI_CASES = 10


def one_board(df_cases: pd.DataFrame) -> pd.DataFrame:
    """``df_cases`` with ``bench.report.label_cases``' labels (added where missing); BenchError where
    its rows belong to several boards (datasets, protocols or policies), whose cases must not mix."""
    if df_cases.empty:
        raise BenchError("no case rows to compare: pass records.load(results, level='case') of finished runs")
    if "model_label" not in df_cases:
        from bench.report import label_cases

        df_cases = label_cases(df_cases)
    keys = [k for k in ("board_dataset", "board_protocol", "policy") if k in df_cases]
    boards = df_cases[keys].drop_duplicates() if keys else ()
    if len(boards) > 1:
        listed = "; ".join(" · ".join(map(str, row)) for row in boards.itertuples(index=False))
        raise BenchError(f"case rows of {len(boards)} boards ({listed}); these statistics compare the models of "
                         "one board: select its rows (e.g. df[df.board_dataset == ...])")
    return df_cases


def reference_label(df_cases: pd.DataFrame, reference: str) -> str:
    """The board row ``reference`` names: itself, or a model name standing for its one row there
    ("unet" for "unet (tiny)")."""
    own = set(df_cases.loc[df_cases["model"] == reference, "model_label"]) if "model" in df_cases else set()
    return own.pop() if reference not in set(df_cases["model_label"]) and len(own) == 1 else reference


def case_values(df_cases: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """Wide table: one row per case, one column per ``model_label`` (mean over classes, then seeds)."""
    df_cases = one_board(df_cases)
    per_run = df_cases.groupby(["model_label", "run_id", "case"], sort=False)[metric].mean()
    per_model = per_run.groupby(level=["model_label", "case"], sort=False).mean()
    return per_model.unstack("model_label")


def _resample_weights(n_cases: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_cases): how often each case is drawn in each bootstrap resample."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_cases, size=(n_boot, n_cases)) + n_cases * np.arange(n_boot)[:, None]
    return np.bincount(idx.ravel(), minlength=n_boot * n_cases).reshape(n_boot, n_cases).astype(np.float64)


def _run_statistic(run: pd.DataFrame, metric: str, pooled: bool, cases: pd.Index,
                   weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One run's ``metrics.aggregate(...)[metric]`` for every row of case ``weights``, and whether
    the row drew any case the run has (where not, the statistic is undefined, not a score)."""
    drawn = weights @ cases.isin(run["case"]).astype(np.float64) > 0
    if pooled:
        counts = run.groupby("case")[list(metrics.COUNTS)].sum().reindex(cases, fill_value=0)
        pooled_values = metrics.pooled_metrics(*(weights @ counts.to_numpy(np.float64)).T)
        return pooled_values.get(metric, np.full(len(weights), math.nan)), drawn  # hd95: NaN, as aggregate
    # cases × classes, NaN where a case has no value (pandas' set_index/unstack here was most of a report's time)
    class_codes, classes = pd.factorize(run["class"], sort=True, use_na_sentinel=False)  # unstack's column order
    table = np.full((len(cases), len(classes)), np.nan)
    rows = cases.get_indexer(run["case"])
    kept = rows >= 0
    cells = rows[kept] * len(classes) + class_codes[kept]
    if np.unique(cells).size != cells.size:  # one value per case and class, as records hold them
        raise BenchError(f"run {run['run_id'].iloc[0]}: a case and class hold more than one {metric} row")
    table[rows[kept], class_codes[kept]] = run[metric].to_numpy(np.float64)[kept]
    valid = ~np.isnan(table)
    sums, n = weights @ np.where(valid, table, 0.0), weights @ valid
    with np.errstate(invalid="ignore", divide="ignore"):  # a class no drawn case is valid for: NaN, as aggregate
        return (sums / n).mean(axis=1), drawn


def policy_statistic(df_cases: pd.DataFrame, metric: str, policy: str, weights: np.ndarray | None = None,
                     cases: pd.Index | None = None) -> pd.DataFrame:
    """The board's number per model (columns, ``model_label``) for each row of ``weights``
    (n_resamples × n_cases, case multiplicities; one row of ones by default): each run aggregated
    under ``policy`` as ``bench.metrics.aggregate`` does, then the mean over the model's runs (a NaN
    score propagates, as on the board; a run none of whose cases a resample drew sits that one out).
    ``cases``: the case order of the weights' columns (default: all)."""
    cases = pd.Index(sorted(df_cases["case"].unique())) if cases is None else cases
    weights = np.ones((1, len(cases))) if weights is None else weights
    pooled = metrics.get_policy(policy).pooled
    # the columns the statistic reads, before any grouping: slicing the whole case frame per run was
    # most of a large report's time
    needed = ["model_label", "run_id", "case", *(metrics.COUNTS if pooled else ("class", metric))]
    df = df_cases.loc[df_cases["case"].isin(cases), needed]
    out = {}
    for model, runs in df.groupby("model_label", sort=False):
        values, drawn = map(np.array, zip(*(_run_statistic(run, metric, pooled, cases, weights)
                                            for _, run in runs.groupby("run_id", sort=False))))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[model] = np.where(drawn, values, 0.0).sum(axis=0) / drawn.sum(axis=0)
    return pd.DataFrame(out)


def bootstrap_ci(df_cases: pd.DataFrame, metric: str, policy: str, *, n_boot: int = N_BOOT,
                 alpha: float = 0.05, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Per model: the percentile bootstrap ``(lo, hi)`` of the board's number (``policy_statistic``)
    over resamples of that model's own test cases, those where it is undefined left out; NaN where
    the number itself is NaN."""
    df_cases = one_board(df_cases)
    out = {}
    for model, rows in df_cases.groupby("model_label", sort=False):
        cases = pd.Index(sorted(rows["case"].unique()))
        v = policy_statistic(rows, metric, policy, _resample_weights(len(cases), n_boot, seed), cases)[model].to_numpy()
        v = v[~np.isnan(v)]
        full = policy_statistic(rows, metric, policy, cases=cases)[model].iloc[0]
        out[model] = ((math.nan, math.nan) if np.isnan(full) or v.size == 0
                      else (float(np.quantile(v, alpha / 2)), float(np.quantile(v, 1 - alpha / 2))))
    return out


def ci_caution(n_cases: int) -> str:
    """A caption's caution where ``bootstrap_ci`` resampled fewer than ``FEW_CI_CASES`` cases; "" otherwise."""
    if not 0 < n_cases < FEW_CI_CASES:
        return ""
    return (f" Caution: with {n_cases} test case{'s' * (n_cases != 1)} the bootstrap has "
            f"{math.comb(2 * n_cases - 1, n_cases)} distinct resample{'s' * (n_cases != 1)}, and percentile "
            f"intervals run too narrow under about {FEW_CI_CASES} cases: read these CIs as rough.")


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
    d = d[~np.isnan(d)]
    if d.size == 0:
        return math.nan  # no pair: no effect to speak of (0 would read as "no difference")
    d = d[d != 0]
    if d.size == 0:
        return 0.0  # every pair tied
    from scipy.stats import rankdata  # in the functions: a board's intervals need none of it (0.5 s of import)

    ranks = rankdata(np.abs(d))
    plus, minus = ranks[d > 0].sum(), ranks[d < 0].sum()
    return float((plus - minus) / (plus + minus))


def permutation_p(a: np.ndarray, b: np.ndarray, statistic, *, n_perm: int = N_PERM, seed: int = 0) -> float:
    """Two-sided p of a paired permutation test: ``a``, ``b`` (n_cases, k) hold each case's values for
    two models; ``statistic`` maps (n_patterns, k) sums over cases to a number per pattern. Under
    the null the two rows of a case are exchangeable; p is the share of swap patterns whose
    |difference| reaches the observed one: exact over all 2^n patterns where 2^n <= ``n_perm``,
    else over ``n_perm`` drawn ones, the observed counted as one (never 0)."""
    n = len(a)
    exact = 2 ** n <= n_perm
    if exact:
        swaps = (np.arange(2 ** n)[:, None] >> np.arange(n)) & 1
    else:
        swaps = np.random.default_rng(seed).integers(0, 2, size=(n_perm, n))
    swaps = swaps.astype(np.float64)
    diff = statistic(swaps @ b + (1 - swaps) @ a) - statistic(swaps @ a + (1 - swaps) @ b)
    observed = statistic(a.sum(0, keepdims=True))[0] - statistic(b.sum(0, keepdims=True))[0]
    if np.isnan(observed):
        return math.nan
    hits = int((np.abs(diff) >= abs(observed) - 1e-12).sum())
    return hits / len(diff) if exact else (hits + 1) / (len(diff) + 1)


def paired_tests(df_cases: pd.DataFrame, reference: str, metrics=("dice", "hd95"), policy: str | None = None, *,
                 n_perm: int = N_PERM, seed: int = 0) -> pd.DataFrame:
    """One row per (model ≠ reference, metric) of one board: n shared cases, difference (model −
    reference, in the record's unit), effect size, test, p and Holm-adjusted p. Per-case policies
    (and ``policy`` None): the mean of the per-case differences, Wilcoxon's p and the rank-biserial
    effect size, oriented so that > 0 means the model is better; with a per-case ``policy``, a pair
    one of whose board numbers is NaN gets test "undefined" and NaN p. A pooled ``policy``: the
    difference of the board's numbers over the shared cases and the paired permutation test's p
    (``permutation_p``); effect size NaN. ``reference`` is a board row's label or a model's name
    standing for its one row; no rows where it has no runs on the board."""
    from scipy.stats import wilcoxon

    df_cases = one_board(df_cases)
    reference = reference_label(df_cases, reference)
    pooled = policy is not None and _pooled(policy)
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
            if pooled:
                row = _pooled_pair(df_cases, model, reference, metric, policy, pair.index, n_perm, seed)
                if row is not None:
                    rows.append(row)
                continue
            diff = (pair[model] - pair[reference]).to_numpy()
            better = -diff if metric in LOWER_IS_BETTER else diff
            if policy is not None and len(diff) and policy_statistic(
                    df_cases[df_cases["model_label"].isin([model, reference])], metric, policy,
                    cases=pair.index).iloc[0].isna().any():
                # the board's number of one of them is undefined (strict: a class valid in no case):
                # a test of per-case means over the other classes would read as a test of that number
                rows.append({"model": model, "reference": reference, "metric": metric, "n_cases": len(diff),
                             "mean_diff": math.nan, "effect_size": math.nan, "test": "undefined", "p": math.nan})
                continue
            if len(diff) == 0 or np.all(diff == 0):
                p = math.nan if len(diff) == 0 else 1.0
            else:
                p = float(wilcoxon(pair[model], pair[reference], zero_method="wilcox",
                                   alternative="two-sided").pvalue)
            rows.append({"model": model, "reference": reference, "metric": metric, "n_cases": len(diff),
                         "mean_diff": float(diff.mean()) if len(diff) else math.nan,
                         "effect_size": rank_biserial(better), "test": "wilcoxon", "p": p})
    columns = ["model", "reference", "metric", "n_cases", "mean_diff", "effect_size", "test", "p"]
    table = pd.DataFrame(rows, columns=columns)
    table["p_holm"] = holm(table["p"]) if len(table) else []
    return table


def _pooled(policy: str) -> bool:
    return metrics.get_policy(policy).pooled


def _run_blocks(rows: pd.DataFrame, cases: pd.Index) -> tuple[list[frozenset], np.ndarray]:
    """A model's runs that scored any of ``cases``, in (seed, split, run id) order: each run's set of
    those cases, and (n_cases, n_runs · 4) confusion counts, a run's block of 4 zero where it has no
    such case (cross-validation: each fold scores its own cases)."""
    runs = rows[rows["case"].isin(cases)]
    order = runs.drop_duplicates("run_id").sort_values(
        [c for c in ("seed", "split", "run_id") if c in runs])["run_id"]
    blocks, owned = [], []
    for run_id in order:
        run = runs[runs["run_id"] == run_id]
        owned.append(frozenset(run["case"]))
        blocks.append(run.groupby("case")[list(metrics.COUNTS)].sum().reindex(cases, fill_value=0).to_numpy(np.float64))
    return owned, np.concatenate(blocks, axis=1)


def _pooled_pair(df_cases: pd.DataFrame, model: str, reference: str, metric: str, policy: str, cases: pd.Index,
                 n_perm: int, seed: int) -> dict | None:
    """``paired_tests``' row for a pooled policy: the board's difference over ``cases`` (shared by
    both models) and the permutation test's p; None where the pooled statistic has no such metric.

    The permuted statistic is the board's own: each run's metric from its pooled counts, averaged over
    the model's runs. Under "no difference" a case's counts in the two models' runs (paired in seed
    and fold order) are exchangeable as a whole. Where the runs do not pair up (other seed counts or
    folds), each model's counts are averaged over its runs first, a nearby statistic (``test``
    "permutation (seed-averaged)")."""
    both = df_cases[df_cases["model_label"].isin([model, reference])]
    cases = pd.Index(sorted(cases))
    row = {"model": model, "reference": reference, "metric": metric, "n_cases": len(cases), "mean_diff": math.nan,
           "effect_size": math.nan, "test": "permutation", "p": math.nan}
    if not len(cases):
        return row
    full = policy_statistic(both, metric, policy, cases=cases).iloc[0]
    if full.isna().any():
        return None  # hd95: the pooled matrix has none
    k = len(metrics.COUNTS)
    (owned_m, counts_m), (owned_r, counts_r) = (_run_blocks(both[both["model_label"] == label], cases)
                                                for label in (model, reference))
    if owned_m == owned_r:  # the runs pair up case for case
        def statistic(sums: np.ndarray) -> np.ndarray:  # (patterns, runs · 4) -> mean over runs
            per_run = sums.reshape(len(sums), -1, k)
            return np.asarray(metrics.pooled_metrics(*np.moveaxis(per_run, 2, 0))[metric]).mean(axis=1)
    else:
        row["test"] = "permutation (seed-averaged)"
        # each case's counts averaged over the runs that scored it (under cross-validation, its fold's)
        counts_m, counts_r = (c.reshape(len(cases), -1, k).sum(axis=1)
                              / np.array([[sum(case in run for run in o)] for case in cases])
                              for c, o in ((counts_m, owned_m), (counts_r, owned_r)))

        def statistic(sums: np.ndarray) -> np.ndarray:
            return np.asarray(metrics.pooled_metrics(*sums.T)[metric], dtype=np.float64)

    return {**row, "mean_diff": float(full[model] - full[reference]),
            "p": permutation_p(counts_m, counts_r, statistic, n_perm=n_perm, seed=seed)}


def rank_stability(df_cases: pd.DataFrame, metric: str, policy: str, *, n_boot: int = N_BOOT_RANKS,
                   seed: int = 0) -> pd.DataFrame:
    """Rank (1 = best) of each model by the board's statistic (``policy_statistic``) over the cases
    every model has, plus its bootstrap distribution: the share of resamples in which it ranks
    first, and the 95% rank interval (NaN where no resample has every model's statistic defined).
    Models whose statistic is NaN are left out; so are resamples where some model's is."""
    from scipy.stats import rankdata

    df_cases = one_board(df_cases)
    per_model = df_cases.groupby("model_label")["case"].agg(set)  # rows, not values: strict's NaN counts
    cases = pd.Index(sorted(set.intersection(*per_model))) if len(per_model) else pd.Index([])
    full = policy_statistic(df_cases, metric, policy, cases=cases).iloc[0].dropna() if len(cases) else pd.Series()
    if full.empty:
        return pd.DataFrame(columns=["model", "mean", "rank", "p_rank_1", "rank_lo", "rank_hi"])
    models = list(full.index)
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0  # rank ascending on sign * value

    def rank_of(m):
        return rankdata(sign * m, method="min", axis=-1)

    values = policy_statistic(df_cases, metric, policy, _resample_weights(len(cases), n_boot, seed), cases)[models]
    defined = values.to_numpy()[values.notna().all(axis=1).to_numpy()]
    ranks = rank_of(full.to_numpy())
    if len(defined):
        boot = rank_of(defined)
        # ranks are whole numbers: the interval's ends are ranks drawn, not interpolated between two
        share, lo, hi = ((boot == 1).mean(axis=0), np.quantile(boot, 0.025, axis=0, method="lower").astype(int),
                         np.quantile(boot, 0.975, axis=0, method="higher").astype(int))
    else:
        share = lo = hi = np.full(len(models), math.nan)
    out = pd.DataFrame({"model": models, "mean": full.to_numpy(), "rank": ranks.astype(int), "p_rank_1": share,
                        "rank_lo": lo, "rank_hi": hi})
    return out.sort_values(["rank", "model"]).reset_index(drop=True)
