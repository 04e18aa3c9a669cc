"""Metric drift check for CI: compare current results with a committed baseline CSV.

Baseline file (one row per board × model × metric; reviewers may edit ``tolerance``)::

    dataset,protocol,policy,model,metric,value,tolerance
    synapse (synthetic),smoke,legacy-synapse,unet,dice,0.8123,0.02

``bench check --update`` rewrites the values and keeps the tolerances edited by hand; with
``--models`` it compares (rewrites) those models' rows only, the baseline's others kept as they are
(a model added to the grid gets its rows without the others' values moving).

``dataset``/``protocol``/``model`` are the labels ``bench.report`` prints (so off-protocol and
synthetic runs are keyed apart), ``value`` is the mean over the seeds that have one, in the record's
units (Dice and friends in [0, 1]), ``tolerance`` is absolute. Where some seeds' value is NaN, a row
``<metric> nan runs`` counts them (tolerance 0): one NaN seed no longer makes the mean NaN on both
sides, which passed whatever the other seeds did. A row ``runs`` counts each model's finished runs
(seeds × folds; tolerance 0): a seed whose run crashed (no record) moved the mean of the others by
chance only. An empty ``value`` is NaN.

Statuses of ``compare``:

- ``ok``: |current - baseline| <= tolerance, or both NaN;
- ``drift``: outside the tolerance, or NaN on exactly one side (fails);
- ``missing``: in the baseline, but the model or the metric has no value at all now (fails);
- ``new``: a model/metric the baseline does not list (reported, does not fail; add it to the
  baseline with ``write_baseline`` when reviewed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.records import finished, records_dir
from bench.fileio import absent, atomic_write_text, folder_lock
from bench.report import label_runs
from bench.report.tables import md_table

__all__ = ["BASELINE_COLUMNS", "DEFAULT_TOLERANCES", "DriftResult", "baseline_table", "write_baseline", "compare"]

BASELINE_COLUMNS = ["dataset", "protocol", "policy", "model", "metric", "value", "tolerance"]
_KEY = ["dataset", "protocol", "policy", "model", "metric"]
STATUSES = ("ok", "drift", "missing", "new")

Tolerance = float | Callable[[float], float]
NAN_RUNS = " nan runs"  # the metric of a row counting a model's runs whose value is NaN
RUNS = "runs"  # the metric of a row counting a model's finished runs
# values are written with 6 significant digits (%.6g), which rounds them by up to 5e-6 of their size
_WRITTEN_SLACK = 5.5e-6
# Absolute tolerances. Overlap metrics live in [0, 1], so 0.02 is two DSC points; HD95 spreads
# with its size, hence 10 % of the value but never below 2 pixels/mm.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "dice": 0.02,
    "iou": 0.02,
    "acc": 0.02,
    "spe": 0.02,
    "sen": 0.02,
    "hd95": lambda v: max(2.0, 0.1 * v) if not math.isnan(v) else 2.0,
    # the last epoch's training loss: moves when a model's training path changes even where its
    # metrics cannot (a tiny model that still predicts only background scores DSC 0 either way)
    "train_loss": lambda v: max(1e-3, 0.01 * abs(v)) if not math.isnan(v) else 1e-3,
    RUNS: 0.0,  # a count: exact
}


def _rule(metric: str) -> Tolerance | None:
    """The default tolerance of a baseline row's metric (NaN-run counts: exact), None for others."""
    return 0.0 if metric.endswith(NAN_RUNS) else DEFAULT_TOLERANCES.get(metric)


def label_model(label: str) -> str:
    """The registered model a board label names: "unet (tiny)", "unet@3f2a" -> "unet"."""
    return re.split(r"[ @]", label, maxsplit=1)[0]


def _of_models(table: pd.DataFrame, models: list[str] | None) -> pd.Series:
    """Which rows of a baseline-shaped ``table`` belong to ``models`` (all for None)."""
    return table["model"].map(label_model).isin(models) if models is not None else pd.Series(True, index=table.index)


def _current_values(df_runs: pd.DataFrame, metrics: list[str], models: list[str] | None = None) -> pd.DataFrame:
    """Long table (key columns, value, n_values) of the mean over seeds per board × model × metric,
    NaN seeds left out and counted in a ``<metric> nan runs`` row where there are any.

    ``n_values`` counts runs with a non-NaN value: 0 means the metric is absent now (``load``
    fills a key missing from a record with NaN, so "absent" and "NaN in every run" look alike;
    both are treated as absent). ``models``: only theirs, labelled among all runs (a label depends on
    what else shares the board).
    """
    cols = _KEY + ["value", "n_values"]
    done = finished(df_runs)
    if done.empty:
        return pd.DataFrame(columns=cols)
    df = label_runs(done)
    if models is not None:
        df = df[df["model"].isin(models)]
    rows = []
    for (dataset, protocol, policy, model), runs in df.groupby(
        ["board_dataset", "board_protocol", "policy", "model_label"], sort=True
    ):
        rows.append((dataset, protocol, policy, model, RUNS, float(len(runs)), len(runs)))
        for metric in metrics:
            if metric.endswith(NAN_RUNS) or metric == RUNS:  # made with its metric's row, below; above
                continue
            values = runs[metric] if metric in runs else pd.Series([math.nan] * len(runs))
            n = int(values.notna().sum())
            rows.append((dataset, protocol, policy, model, metric, values.mean(), n))
            if 0 < n < len(values):
                rows.append((dataset, protocol, policy, model, metric + NAN_RUNS, float(len(values) - n), len(values)))
    return pd.DataFrame(rows, columns=cols)


def baseline_table(
    df_runs: pd.DataFrame,
    tolerances: Mapping[str, Tolerance] | None = None,
    metrics: list[str] | None = None,
    models: list[str] | None = None,
) -> pd.DataFrame:
    """The baseline rows ``write_baseline`` writes (metrics with no value at all are left out), of
    ``models`` only where given."""
    tolerances = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    metrics = metrics or [m for m in DEFAULT_TOLERANCES if m in df_runs.columns]
    metrics = [RUNS, *(m for m in metrics if m != RUNS)]
    tolerances.update({m + NAN_RUNS: 0.0 for m in metrics})  # a count: exact
    unknown = [m for m in metrics if m not in tolerances]
    if unknown:
        raise BenchError(f"no tolerance for metric(s) {', '.join(unknown)}; pass tolerances={{name: value}}")
    cur = _current_values(df_runs, metrics, models)
    cur = cur[cur["n_values"] > 0].drop(columns="n_values").reset_index(drop=True)
    cur["tolerance"] = [
        tol(value) if callable(tol) else float(tol)
        for tol, value in zip((tolerances[m] for m in cur["metric"]), cur["value"])
    ]
    return cur[BASELINE_COLUMNS]


def write_baseline(
    df_runs: pd.DataFrame,
    path: Path,
    tolerances: Mapping[str, Tolerance] | None = None,
    metrics: list[str] | None = None,
    prune: bool = False,
    models: list[str] | None = None,
) -> tuple[int, int]:
    """Write the baseline CSV for ``df_runs`` atomically; ``tolerances`` override the defaults.
    Returns how many rows it wrote and how many rows of the old baseline ``prune`` dropped.

    A tolerance is an absolute number or a function of the baseline value (like the HD95 default).
    Where ``path`` already holds a baseline, a tolerance a reviewer edited there (one that is not
    what ``DEFAULT_TOLERANCES`` gives for that row's old value) is kept, unless ``tolerances`` names
    its metric; the others follow the new values. Rows of the old baseline without a value now (a
    --results folder holding part of the grid, or none of it) are a BenchError unless ``prune``:
    an update never drops them, nor their tolerances, by accident. ``models``: only their rows are
    written (and checked for the above); the old baseline's other rows stay as they are.
    """
    if finished(df_runs).empty:
        raise BenchError(f"{path}: no finished runs to write it from; pass the --results folder that `bench run` wrote")
    with folder_lock(Path(path).parent):  # two updates of some models' rows each: both kept
        return _write_baseline(df_runs, Path(path), tolerances, metrics, prune, models)


def _write_baseline(df_runs, path, tolerances, metrics, prune, models) -> tuple[int, int]:
    # a baseline that does not read is an error: written afresh, it lost its hand-edited tolerances
    # and rows unsaid (delete the file to start over)
    old = read_baseline(path, allow_empty=True) if Path(path).exists() else None
    others = None
    if old is not None:
        mine = _of_models(old, models)
        others, old = old[~mine], old[mine].set_index(_KEY)
    given = dict(tolerances or {})
    # metrics a reviewer added to the baseline by hand (a per-class column: "dice/aorta") stay in it
    added = [] if old is None or metrics else sorted(
        {m for m in old.index.get_level_values("metric") if m in df_runs.columns and _rule(m) is None})
    if added:
        metrics = [m for m in DEFAULT_TOLERANCES if m in df_runs.columns] + added
        tolerances = {**{m: math.nan for m in added}, **given}  # from the old rows, below
    table = baseline_table(df_runs, tolerances, metrics, models)
    dropped: list = []
    if added:  # those metrics' rows where the reviewer put them, not for every model and board
        keys = pd.Series(list(table[_KEY].itertuples(index=False, name=None)), index=table.index)
        extra = table["metric"].isin(added + [m + NAN_RUNS for m in added])
        table = table[~extra | keys.isin(set(old.index))].reset_index(drop=True)
    if old is not None:
        current = {tuple(k) for k in table[_KEY].itertuples(index=False)}
        kept = current | {(*k[:3], pre_tiny_label(k[3]), k[4]) for k in current}
        dropped = [k for k in old.index if tuple(k) not in kept]
        fewer = [k for k, n in zip(table[_KEY].itertuples(index=False, name=None), table["value"])
                 if k[4] == RUNS and k in old.index and n < old.loc[k, "value"]]
        if (dropped or fewer) and not prune:
            first = " · ".join(str(v) for v in (dropped or fewer)[0])
            what = (f"{len(dropped)} of its {len(old)} rows have no value in these runs" if dropped else
                    f"{len(fewer)} model(s) have fewer finished runs here than it counts")
            raise BenchError(f"{path}: {what} (first: {first}); run the whole grid into --results, or pass --prune "
                             "to drop them")
        for i, row in table.iterrows():
            key = tuple(row[c] for c in _KEY)
            bare = (*key[:3], pre_tiny_label(key[3]), key[4])
            if key not in old.index and bare not in current:  # a baseline from before labels named tiny configs
                key = bare
            if key not in old.index or row["metric"] in given:
                continue
            rule, value, tol = _rule(row["metric"]), old.loc[key, "value"], old.loc[key, "tolerance"]
            if rule is None or not math.isclose(tol, rule(value) if callable(rule) else rule, rel_tol=1e-5,
                                                 abs_tol=1e-12):
                table.loc[i, "tolerance"] = tol  # set by hand (a row added by hand: its own)
    if others is not None and not others.empty:  # in the order a whole update writes: by board and model
        table = pd.concat([others, table], ignore_index=True).sort_values(_KEY[:4], kind="stable")
    atomic_write_text(Path(path), table.to_csv(index=False, lineterminator="\n", float_format="%.6g"))
    return len(table), len(dropped)


def pre_tiny_label(label: str) -> str:
    """The board label a ``--tiny`` run had before labels named tiny configurations: "unet (tiny)"
    -> "unet", "unet (tiny, img_size=96)" -> "unet (img_size=96)"."""
    return label.replace(" (tiny)", "").replace("(tiny, ", "(")


def read_baseline(path: Path, allow_empty: bool = False) -> pd.DataFrame:
    """The baseline CSV, checked row by row: each problem names the file's line and what was expected.
    A header without rows is an error (every check would pass) unless ``allow_empty`` (an update)."""
    path = Path(path)
    if path.is_dir():
        held = (f"; to compare with its runs, write their baseline first: bench check --update --baseline "
                f"BASELINE.csv --results {path}" if records_dir(path).is_dir() else "")  # a results folder
        raise BenchError(f"{path}: is a folder; --baseline takes the baseline CSV file (results/baseline/smoke.csv)"
                         f"{held}")
    if path.exists() and not path.is_file():
        raise BenchError(f"{path}: not a regular file (a FIFO?); --baseline takes the baseline CSV file")
    if not path.is_file():
        raise absent(path, f"baseline file not found: {path} (the project's is results/baseline/smoke.csv in a checkout, "
                         f"for `make check`'s grid; `bench check --update --baseline {path}` writes one from the "
                         "--results runs, for later runs to be compared with)")
    try:
        table = pd.read_csv(path, dtype={c: str for c in _KEY}, skip_blank_lines=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path}: not a readable baseline CSV ({exc})") from exc
    missing = [c for c in BASELINE_COLUMNS if c not in table.columns]
    if missing:
        raise BenchError(
            f"{path}: baseline CSV lacks column(s) {', '.join(missing)}; expected {', '.join(BASELINE_COLUMNS)}"
        )
    line = table.index + 2  # the file's line of each row (the header is line 1; blank lines kept, then dropped)
    table = table[table.notna().any(axis=1)]
    line = line[table.index]
    table = table.reset_index(drop=True)
    if table.empty and not allow_empty:
        raise BenchError(f"{path}: holds no rows, so every check would pass; `bench check --update` writes them")
    for col in _KEY:
        blank = table[col].isna() | (table[col].astype(str).str.strip() == "")
        if blank.any():
            raise BenchError(f"{path}: line {line[blank.argmax()]}: empty {col!r}; every row names dataset, "
                             "protocol, policy, model and metric")
    for col in ("value", "tolerance"):
        numbers = pd.to_numeric(table[col], errors="coerce")
        bad = numbers.isna() & table[col].notna() & (table[col].astype(str).str.strip().str.lower() != "nan")
        if bad.any():
            raise BenchError(f"{path}: line {line[bad.argmax()]}: {col} {table[col][bad].iloc[0]!r} is not a number")
        table[col] = numbers
    wrong = table["tolerance"].isna() | (table["tolerance"] < 0) | np.isinf(table["tolerance"])
    if wrong.any():  # inf would pass every value: the check off for that row, unsaid
        raise BenchError(f"{path}: line {line[wrong.argmax()]}: tolerance {table['tolerance'][wrong].iloc[0]}; every "
                         "row needs a finite tolerance >= 0 (absolute, in the metric's unit)")
    endless = np.isinf(table["value"])
    if endless.any():  # its tolerance would grow endless with it
        raise BenchError(f"{path}: line {line[endless.argmax()]}: value {table['value'][endless].iloc[0]}; expected a "
                         "finite number (or nan, where the metric has none)")
    twice = table.duplicated(_KEY, keep=False)
    if twice.any():
        lines = [str(n) for n in line[twice]]
        raise BenchError(f"{path}: lines {', '.join(lines[:2])} list one row twice "
                         f"({' · '.join(table.loc[twice, _KEY].iloc[0])}); keep one")
    table["model"] = table["model"].map(without_default_keys)
    return table[BASELINE_COLUMNS]


def without_default_keys(label: str) -> str:
    """A row label as boards write it since they name only keys a run set: "vmunet (tiny,
    d_state=default)", the paper configuration beside a variant in a baseline of before, is "vmunet (tiny)"."""
    label = re.sub(r", [A-Za-z_]\w*=default(?=[,)])", "", label)
    return re.sub(r"\([A-Za-z_]\w*=default(, |(?=\)))", "(", label).replace(" ()", "")


@dataclass(frozen=True)
class DriftResult:
    """``table``: key columns, baseline, current, delta, tolerance, status (one row per metric)."""

    table: pd.DataFrame

    @property
    def failed(self) -> bool:
        return bool(self.table["status"].isin(["drift", "missing"]).any())

    def counts(self) -> dict[str, int]:
        return {s: int((self.table["status"] == s).sum()) for s in STATUSES}

    def relabelled(self) -> int:
        """Missing rows that may be back as new rows under their tiny label ("unet" -> "unet (tiny)"):
        a baseline written before labels named tiny configurations (or a full run gone, a tiny one new)."""
        return self._back_as_new(new_key=lambda k: (*k[:3], pre_tiny_label(k[3]), k[4]))

    def moved(self) -> int:
        """Missing rows back as new rows under a longer label: a board or row now tagged
        ("smoke@1234abcd", "synapse (data …)", "unet (init …)") because other runs share the
        results folder (another version of the protocol, other data, other pretrained files)."""

        def bare(key: tuple) -> tuple:
            dataset, protocol, policy, model, metric = key
            return (dataset.split(" (data ")[0], re.sub(r"@[0-9a-f]{8}", "", protocol), policy,
                    re.sub(r" \((init [^)]*|from scratch)\)", "", model), metric)

        return self._back_as_new(new_key=bare, missing_key=bare)

    def _back_as_new(self, new_key: Callable[[tuple], tuple], missing_key: Callable[[tuple], tuple] = tuple) -> int:
        """Missing rows whose ``missing_key`` is the ``new_key`` of a new row."""
        t = self.table
        new = {new_key(k) for k in t[t["status"] == "new"][_KEY].itertuples(index=False, name=None)}
        return sum(missing_key(k) in new for k in t[t["status"] == "missing"][_KEY].itertuples(index=False, name=None))

    def render(self, fmt: str = "md", only_changes: bool = False) -> str:
        """A diff table (``fmt="md"`` Markdown, ``"plain"`` aligned text) and a summary line."""
        if fmt not in ("md", "plain"):
            raise BenchError(f"unknown drift format {fmt!r}; expected 'md' or 'plain'")
        table = self.table[self.table["status"] != "ok"] if only_changes else self.table
        shown = table.assign(
            baseline=[_num(v) for v in table["baseline"]],
            current=[_num(v) for v in table["current"]],
            delta=[_num(v, signed=True) for v in table["delta"]],
            tolerance=[_num(v) for v in table["tolerance"]],
            status=[s.upper() if s in ("drift", "missing") else s for s in table["status"]],
        )
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items())
        summary = f"Drift check {'FAILED' if self.failed else 'passed'}: {counts}."
        if shown.empty:
            return summary + "\n"
        body = md_table(shown) if fmt == "md" else shown.to_markdown(index=False, tablefmt="simple",
                                                                       disable_numparse=True)
        return f"{body}\n\n{summary}\n"


def _num(value: float, signed: bool = False) -> str:
    if pd.isna(value):
        return "nan"
    value = round(value, 4) + 0.0  # -0.00001 shows as +0.0000, not -0.0000
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _status(baseline: float, current: float, n_values: float, tolerance: float) -> str:
    if pd.isna(n_values):  # no such model / board now
        return "missing"
    if n_values == 0:
        return "ok" if math.isnan(baseline) else "missing"
    if math.isnan(baseline) or math.isnan(current):
        return "ok" if math.isnan(baseline) and math.isnan(current) else "drift"
    # a value written with 6 significant digits must still equal itself, even at tolerance 0
    return "ok" if abs(current - baseline) <= tolerance + 1e-12 + _WRITTEN_SLACK * abs(baseline) else "drift"


def compare(baseline_csv: Path, df_runs: pd.DataFrame, models: list[str] | None = None) -> DriftResult:
    """Compare ``df_runs`` (from ``records.load``) with the baseline file; see module docstring.
    ``models``: only their rows, on both sides."""
    base = read_baseline(baseline_csv)
    base = base[_of_models(base, models)]
    metrics = sorted(set(base["metric"]) | {m for m in DEFAULT_TOLERANCES if m in df_runs.columns} | {RUNS})
    cur = _current_values(df_runs, metrics, models)
    merged = base.merge(cur, on=_KEY, how="outer", suffixes=("", "_cur"), indicator="side")
    # a NaN count on one side only, where the model has rows on both: 0 on the other, so a seed
    # turning NaN (or getting a value) is drift, not "new" (which passes) or "missing"
    # (only where the metric's own row is on both sides: with no value at all now it is "missing";
    # a metric the baseline does not track is "new", its count too)
    counts = merged["metric"].str.endswith(NAN_RUNS)
    metric_key = pd.Series([(*k[:4], k[4].removesuffix(NAN_RUNS)) for k in
                            merged[_KEY].itertuples(index=False, name=None)], index=merged.index)
    in_base = set(base[_KEY].itertuples(index=False, name=None))
    in_cur = set(cur.loc[cur["n_values"] > 0, _KEY].itertuples(index=False, name=None))
    gone = counts & (merged["side"] == "left_only") & metric_key.isin(in_cur)
    merged.loc[gone, ["value_cur", "n_values"]] = [0.0, 1]
    came = counts & (merged["side"] == "right_only") & metric_key.isin(in_base)
    merged.loc[came, ["value", "tolerance", "side"]] = [0.0, 0.0, "both"]
    # Rows only in the current results are "new" unless the metric has no value there either.
    merged = merged[~((merged["side"] == "right_only") & (merged["n_values"] == 0))]
    rows = []
    for r in merged.itertuples(index=False):
        if r.side == "right_only":
            status, baseline, tol = "new", math.nan, math.nan
        else:
            baseline, tol = float(r.value), float(r.tolerance)
            status = _status(baseline, float(r.value_cur), r.n_values, tol)
        current = float(r.value_cur)
        key = (r.dataset, r.protocol, r.policy, r.model, r.metric)
        # the same value as the baseline's 6 digits keep it: no difference shown (115.7432 written as 115.743)
        delta = 0.0 if float(f"{current:.6g}") == baseline else current - baseline
        rows.append((*key, baseline, current, delta, tol, status))
    table = pd.DataFrame(
        rows, columns=_KEY + ["baseline", "current", "delta", "tolerance", "status"]
    )
    # Failures first so a long CI log starts with what matters.
    order = table["status"].map({"missing": 0, "drift": 1, "new": 2, "ok": 3})
    table = table.assign(_o=order).sort_values(["_o"] + _KEY, kind="stable").drop(columns="_o").reset_index(drop=True)
    return DriftResult(table)
