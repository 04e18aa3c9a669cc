"""Leaderboards from run records: mean ± std over seeds, one table per dataset × protocol × policy.

Everything here is a pure function of ``bench.records.load(results_dir)``; the CLI prints.

Grouping rules (why: a number only compares with numbers produced the same way):

- a board holds runs with the same dataset, synthetic flag, kind of split, protocol (name +
  content hash), protocol overrides and metric policy. Cross-validation runs (``--folds``: each
  fold tests other cases) read ``"nnunet:ACDC (cross-validation)"``, apart from runs on one fixed
  test split. Off-protocol runs (protocol overrides given) never share
  a board with on-protocol runs: their protocol label reads ``"synapse (off-protocol: epochs=2)"``;
  synthetic data reads ``"synapse (synthetic)"``; two on-protocol hashes of one protocol name get
  ``"name@hash8"`` labels; runs on other data of one dataset (other files, or synthetic data made
  otherwise: the records' ``data_id``) get ``"synapse (data 1a2b3c4d)"`` boards of their own.
- a row is a model with one ``model_config`` and one pretrained file (``init``); a model run with
  several in one board gets one row each, labelled with what differs.
- means and stds are over runs (seeds; under cross-validation seeds × folds) with
  ``skipna=False``: a run whose aggregate is NaN makes the mean NaN rather than quietly
  disappearing; std is the sample std (ddof=1), NaN for one run. Seeds that tested other folds
  (an unfinished grid) are named in the Folds cell: their folds weigh more in the mean.

Display: DSC, mIoU, Acc, Spe, Sen and per-class DSC ×100 with 2 decimals, as the papers print
them; HD95 with 2 decimals in the unit the records name (``hd95_unit``: voxels/pixels, or mm
under ``strict`` where the data has a spacing).
"""

from __future__ import annotations

import collections
import difflib
import json
import math
import re
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import numpy as np
import pandas as pd

from bench.data.isic import test_set_id
from bench.errors import BenchError
from bench.records import (CASE_COLUMNS, RUN_ID_COLUMNS, atomic_write_text, code_version, load, miss_counts,
                           short_commit, split_fold)

__all__ = ["BoardKey", "ReportFormat", "METRICS", "label_runs", "label_cases", "leaderboards", "render", "write_report"]


class ReportFormat(str, Enum):
    md = "md"
    latex = "latex"
    csv = "csv"
    cases = "cases"  # CSV of every run × case × class row (write_report only: it needs the case rows)


class BoardKey(NamedTuple):
    dataset: str  # e.g. "synapse" or "synapse (synthetic)"
    protocol: str  # e.g. "synapse" or "synapse (off-protocol: epochs=2)"
    policy: str


# Aggregate metrics a board may show: record key -> (display name, ×100 for display, arrow).
METRICS: dict[str, tuple[str, bool, str]] = {
    "dice": ("DSC", True, "↑"),
    "hd95": ("HD95", False, "↓"),
    "nsd": ("NSD", True, "↑"),  # where the protocol asks for it (eval.nsd_tolerance)
    "iou": ("mIoU", True, "↑"),
    "acc": ("Acc", True, "↑"),
    "spe": ("Spe", True, "↑"),
    "sen": ("Sen", True, "↑"),
}
# Synapse organs in the order of the TransUNet / Swin-Unet / VM-UNet tables.
SYNAPSE_ORGANS: dict[str, str] = {
    "aorta": "Aorta",
    "gallbladder": "Gallbladder",
    "kidney_l": "Kidney(L)",
    "kidney_r": "Kidney(R)",
    "liver": "Liver",
    "pancreas": "Pancreas",
    "spleen": "Spleen",
    "stomach": "Stomach",
}
CV_LABEL = " (cross-validation)"  # in the board_dataset of --folds runs
_CSV_KEY_COLUMNS = ["dataset", "protocol", "protocol_version", "protocol_hash", "policy", "hd95_unit"]
_BOARD_COLUMNS = ["model", "family", "model_config", "n_seeds", "n_runs", "folds", "n_cases", "params"]


# ---------------------------------------------------------------------------------------------
# grouping


def _overrides_text(overrides_json: str) -> str:
    overrides = json.loads(overrides_json) if overrides_json else {}
    return ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in sorted(overrides.items()))


def label_runs(df_runs: pd.DataFrame) -> pd.DataFrame:
    """Add ``board_dataset``, ``board_protocol`` and ``model_label`` columns (see module doc).

    Shared with ``bench.drift`` so a baseline and a report name groups identically.
    """
    df = df_runs.copy()
    # dataset_name, not dataset: runs on two nnU-Net-format datasets must not share a board
    name = df["dataset_name"] if "dataset_name" in df else df["dataset"]
    df["board_dataset"] = np.where(df["synthetic"].astype(bool), name + " (synthetic)", name)
    if "split" in df:  # a fold's test cases are other cases: its numbers never average with a fixed split's
        df["board_dataset"] = np.where(df["split"].astype(str).map(split_fold).notna(),
                                       df["board_dataset"] + CV_LABEL, df["board_dataset"])
    if "data_id" in df:  # other files under one dataset name (another copy, preprocessed otherwise): another board
        ids = df["data_id"].fillna("").astype(str)  # "": a run identified by its data's path, older records
        n_ids = ids.where(ids != "").groupby([df["board_dataset"], df["protocol"], df["policy"]]).transform("nunique")
        tag = " (data " + ids.str.split(":").str[-1].str[:8] + ")"
        df["board_dataset"] = np.where((n_ids > 1) & (ids != ""), df["board_dataset"] + tag, df["board_dataset"])
    hashes = df.groupby(["board_dataset", "protocol", "policy"])["protocol_hash"].transform("nunique")
    labels = []
    for (_, row), n_hash in zip(df.iterrows(), hashes):
        label = row["protocol"] if n_hash == 1 else f"{row['protocol']}@{row['protocol_hash'][:8]}"
        if row["off_protocol"]:
            label += f" (off-protocol: {_overrides_text(row['protocol_overrides'])})"
        labels.append(label)
    df["board_protocol"] = labels
    df["model_label"] = model_labels(df["model"], df["model_config"], df[["board_dataset", "board_protocol", "policy"]],
                                     df["tiny"] if "tiny" in df else None)
    if "init" in df:  # weights started from other pretrained files (or from none): other rows
        # among the runs that trained here: evaluated weights (below) started from nothing of this run's
        trained = df["weights"].isna() if "weights" in df else pd.Series(True, index=df.index)
        inits = df["init"].fillna("").astype(str).where(trained)
        n_inits = inits.groupby([df["board_dataset"], df["board_protocol"], df["policy"], df["model_label"]]
                                ).transform("nunique")
        named = np.where(inits != "", " (init " + inits + ")", " (from scratch)")
        df["model_label"] = np.where(trained & (n_inits > 1), df["model_label"] + named, df["model_label"])
    if "weights" in df:  # weights trained elsewhere and only evaluated here: never a row of the protocol's training
        df["model_label"] = [(f"{label[:-1]}, weights {w})" if label.endswith(")") else f"{label} (weights {w})")
                             if isinstance(w, str) and w else label for label, w in zip(df["model_label"], df["weights"])]
    return df


def model_labels(models: pd.Series, configs: pd.Series, groups: pd.DataFrame | None = None,
                 tiny: pd.Series | None = None) -> list[str]:
    """Row labels: the model's name, ``"(tiny)"`` added wherever the run used the model's tiny test
    configuration (``--tiny``; ``tiny``: the records' flag, else the config is compared with it), with
    the tiny keys it set otherwise (``"mymodel (tiny, width=12)"``: neither the tiny nor the paper
    model), whatever else shares the table; where one model still runs in several configurations
    within a group (a board), the config keys that differ between them: ``"unet (encoder=resnet34)"``,
    ``"unet (tiny, img_size=96)"``. ``configs``: JSON strings."""
    parsed = pd.Series([json.loads(c) if isinstance(c, str) and c else {} for c in configs], index=models.index)
    flags = tiny if tiny is not None else pd.Series([None] * len(models), index=models.index)

    def shown(p: dict, k: str) -> str:
        return f"{k}={json.dumps(p[k], ensure_ascii=False)}" if k in p else f"{k}=default"

    own: dict[Any, list[str]] = {}  # by row: "tiny" and the tiny keys set otherwise
    for i, m, p, flag in zip(models.index, models.astype(str), parsed, flags):
        # --tiny (older records: no flag), or its configuration given by hand (--set): the same model either way
        if (flag is not None and not pd.isna(flag) and bool(flag)) or _is_tiny(m, p):
            own[i] = ["tiny", *(shown(p, k) for k in _tiny_changes(m, p))]
        else:
            own[i] = []
    frame = pd.DataFrame({"model": models.astype(str), "own": [", ".join(own[i]) for i in models.index]},
                         index=models.index)
    labels = frame["model"] + frame["own"].map(lambda o: f" ({o})" if o else "")
    if groups is not None:
        frame = pd.concat([groups.add_prefix("group_"), frame], axis=1)
    for (*_, model, _own), idx in frame.groupby(list(frame.columns), sort=False, dropna=False).groups.items():
        mine = parsed[idx].tolist()
        names = sorted({k for p in mine for k in p})
        differing = [k for k in names if len({json.dumps(p.get(k), sort_keys=True) for p in mine}) > 1]
        if not differing:
            continue
        for i, p in zip(idx, mine):
            parts = own[i] + [part for part in (shown(p, k) for k in differing) if part not in own[i]]
            labels[i] = f"{model} ({', '.join(parts)})"
    return labels.tolist()


def _tiny_config(model: str) -> dict:
    from bench.registry import get_entry

    try:
        return dict(get_entry(model).tiny)
    except BenchError:  # a record of a model no longer registered
        return {}


def _is_tiny(model: str, config: dict) -> bool:
    """Whether ``config`` holds the model's tiny test configuration (registry ``tiny``)."""
    tiny = _tiny_config(model)
    return bool(tiny) and all(json.dumps(config.get(k)) == json.dumps(v) for k, v in tiny.items())


def _tiny_changes(model: str, config: dict) -> list[str]:
    """The tiny configuration's keys that ``config`` sets otherwise (``--tiny --set width=12``)."""
    return [k for k, v in _tiny_config(model).items() if k in config and json.dumps(config[k]) != json.dumps(v)]


def _class_columns(group: pd.DataFrame) -> list[str]:
    """Per-class DSC then per-class HD95 columns with data in this board: Synapse organs in paper
    order, else class id order."""
    # this board's classes in class-id order (load's columns follow every record in the folder); a
    # class with no value in any run stays, as nan (strict: valid in no case)
    own = (list(dict.fromkeys(n for c in group["classes"].dropna() for n in json.loads(c)))
           if "classes" in group else [])
    out = []
    for metric in ("dice", "hd95"):
        cols = ([f"{metric}/{n}" for n in own if f"{metric}/{n}" in group] if own else
                [c for c in group.columns if c.startswith(f"{metric}/") and group[c].notna().any()])
        if metric == "hd95" and not group[cols].notna().any().any():
            continue  # no per-class HD95 at all (legacy-isic)
        if len(cols) < 2:  # a binary task's one class repeats the aggregate column
            continue
        names = [c.split("/", 1)[1] for c in cols]
        if group["dataset"].iloc[0] == "synapse" and all(n in SYNAPSE_ORGANS for n in names):
            cols = [f"{metric}/{n}" for n in SYNAPSE_ORGANS if n in names]  # the papers' column order
        out += cols
    return out


def class_display(name: str, dataset: str) -> str:
    """A class as boards and plots name it: Synapse's organs as the papers print them, other data's own names."""
    return SYNAPSE_ORGANS.get(name, name) if dataset.split(" (")[0] == "synapse" else name


def _display_name(col: str, dataset: str = "") -> str:
    if col in METRICS:
        return METRICS[col][0]
    metric, name = col.split("/", 1)
    name = class_display(name, dataset)
    return name if metric == "dice" else f"{name} {METRICS[metric][0]}"


def _board(group: pd.DataFrame) -> pd.DataFrame:
    from bench.metrics import POLICIES

    policy = POLICIES.get(group["policy"].iloc[0])
    # a metric the runs computed stays, NaN in every run too (the caption: NaN is shown): Dice and IoU
    # always, HD95 where the policy has one, the others where per-case counts of their NaNs were kept
    computed = {"dice", "iou"} | ({"hd95"} if policy is not None and policy.hd_definition else set()) | {
        m for m in ("acc", "spe", "sen") if f"n_nan_{m}" in group and group[f"n_nan_{m}"].notna().any()}
    metrics = [m for m in METRICS if m in group.columns and (group[m].notna().any() or m in computed)]
    value_cols = metrics + _class_columns(group)
    rows, repeated = [], {}
    for (label, config), runs in group.groupby(["model_label", "model_config"], sort=False):  # label: init too
        # one seed (of one fold) run twice: its data identified otherwise (by path in older records)
        per_seed = runs.groupby(["seed", "split"] if "split" in runs else ["seed"]).size()
        if (per_seed > 1).any():
            repeated[label] = sorted({int(k[0] if isinstance(k, tuple) else k) for k in per_seed[per_seed > 1].index})
        row = {
            "model": label,
            "family": runs["family"].iloc[0],
            "model_config": config,
            "n_seeds": runs["seed"].nunique(),
            "n_runs": len(runs),
            "folds": _folds_cell(runs) if "split" in runs else "",
            "fold_set": _folds(runs["split"]) if "split" in runs else "",  # the folds alone, to compare
            "n_cases": _joined(runs["n_cases"]) if "n_cases" in runs else "",
            "n_train": _joined(runs["n_train"]) if "n_train" in runs else "",  # training items; "" before kept
            # weights evaluated as given (--weights; the label names them): no training recipe applied
            "evaluated": bool("weights" in runs and runs["weights"].notna().all()),
            "params": runs["params"].mean(),
            "macs": runs["macs"].mean() if "macs" in runs else math.nan,
            "paper_macs": runs["paper_macs"].mean() if "paper_macs" in runs else math.nan,
            "peak_mem_mb": runs["peak_mem_mb"].max() if "peak_mem_mb" in runs else math.nan,  # CUDA runs
            # NaN propagates: a run whose time is unknown (resumed from an older checkpoint) shows none
            "train_time_s": runs["train_time_s"].mean(skipna=False) if "train_time_s" in runs else math.nan,
            # structures present in a case's reference and predicted nowhere, over all runs
            "n_missed": int(runs["n_missed"].sum()) if "n_missed" in runs else 0,
            "n_present": int(runs["n_present"].sum()) if "n_present" in runs else 0,
        }
        if {"n_nan_dice", "n_valid_dice"} <= set(runs) and runs["n_nan_dice"].notna().any():
            # strict: case x class entries with no Dice (both masks empty), excluded from the means
            row["dice_n_na"] = int(runs["n_nan_dice"].sum())
            row["dice_n_entries"] = row["dice_n_na"] + int(runs["n_valid_dice"].sum())
        for col in value_cols:
            row[f"{col}_mean"] = runs[col].mean(skipna=False)
            row[f"{col}_std"] = runs[col].std(skipna=False) if len(runs) > 1 else math.nan
            row[f"{col}_n_nan"] = int(runs[col].isna().sum())
        rows.append(row)
    board = pd.DataFrame(rows)
    if "dice_mean" in board:
        board = board.sort_values(["dice_mean", "model"], ascending=[False, True], na_position="last")
    board = board.reset_index(drop=True)
    first = group.iloc[0]
    board.attrs.update(
        dataset=first["dataset"],
        protocol_name=first["protocol"],
        protocol_version=int(first["protocol_version"]),
        protocol_hash=first["protocol_hash"],
        overrides=_overrides_text(first["protocol_overrides"]),
        value_columns=value_cols,
        hd95_units=sorted(set(group["hd95_unit"].dropna())) if "hd95_unit" in group else [],
        # one for all classes (numbers), then per-class tables as records.load's text ("liver 5, spleen 3")
        nsd_tolerances=[t for col in ("nsd_tolerance", "nsd_tolerances") if col in group
                        for t in sorted(set(group[col].dropna()))],
        devices=sorted(set(group["device"].dropna())) if "device" in group else [],
        commits=_code_versions(group),
        plugin_code=_plugin_code_changed(group),
        repeated=repeated,
        n_train=sorted({int(n) for n in group["n_train"].dropna()}) if "n_train" in group else [],
    )
    return board


def _code_versions(group: pd.DataFrame) -> list[str]:
    """The versions of bench's code a board's runs ran (``records.code_version``), one per source
    digest: the same sources under a clean commit and in an edited tree ("-dirty": a README) are one
    version. A record written before digests were kept counts by its commit, "unknown" without one."""
    if "git_commit" not in group:
        return []
    pairs = [(c if isinstance(c, str) else None, d if isinstance(d, str) else None)
             for c, d in zip(group["git_commit"], group.get("code_digest", pd.Series(None, index=group.index)))]
    clean: dict[str, set[str]] = {}  # a clean commit names its sources, where all its records agree on them
    for commit, digest in pairs:
        if commit and digest and not commit.endswith("-dirty"):
            clean.setdefault(commit, set()).add(digest)
    digest_of = {c: next(iter(d)) for c, d in clean.items() if len(d) == 1}
    versions: dict[str | None, tuple[str | None, str | None]] = {}
    for commit, digest in pairs:
        key = digest or digest_of.get(commit) or commit
        if versions.get(key, (None, None))[1] is None:  # a record naming its digest names the version
            versions[key] = (commit, digest)
    labels = [code_version(c, d) or "unknown" for c, d in versions.values()]
    # one clean commit with other sources (modules git does not track): its digests tell them apart
    return sorted(label if labels.count(label) == 1 or not d else f"{c} sources {d}"
                  for label, (c, d) in zip(labels, versions.values()))


def _plugin_code_changed(group: pd.DataFrame) -> dict[str, str]:
    """Per plugin model whose code changed since some of its runs trained (their records' model_code
    against its sources now): "2 of 3 runs". A run is identified by its name and configuration, not
    its code, so the board would show the old code's numbers under the model's name, unsaid. Models
    not installed now are left out (nothing to compare with)."""
    from bench.registry import model_code

    if "model_code" not in group:
        return {}
    changed = {}
    for model, codes in group.groupby("model")["model_code"]:
        codes = codes.dropna()
        if codes.empty:  # built-in models: records' code_digest names their code
            continue
        try:
            now = model_code(model)
        except BenchError:  # a plugin not installed here
            continue
        if (old := int((codes != now).sum())):
            changed[model] = f"{old} of {len(codes)} run(s)"
    return changed


def _folds(splits: pd.Series) -> str:
    """The cross-validation folds a model's runs tested, "0-4" or "0, 2"; "" for a fixed test split."""
    folds = sorted({f for f in splits.astype(str).map(split_fold) if f is not None})
    if len(folds) > 2 and folds == list(range(folds[0], folds[-1] + 1)):
        return f"{folds[0]}-{folds[-1]}"
    return ", ".join(map(str, folds))


def _folds_cell(runs: pd.DataFrame) -> str:
    """``_folds`` of a model's runs, and where its seeds tested other folds (an unfinished grid,
    whose mean weighs some folds more) each seed's: "0-4 (uneven: seed 0: 0-4; seed 1: 0, 1)"."""
    every = _folds(runs["split"])
    per_seed = {seed: _folds(g["split"]) for seed, g in runs.groupby("seed", sort=True)}
    if len(set(per_seed.values())) <= 1:
        return every
    return f"{every} (uneven: {'; '.join(f'seed {s}: {f}' for s, f in per_seed.items())})"


def _joined(values: pd.Series) -> str:
    # n_cases (n_train) normally agrees across runs; a smoke run with max_cases shows up as "12/4".
    uniq = sorted({int(v) for v in values.dropna()})
    return "/".join(str(v) for v in uniq)


def leaderboards(df_runs: pd.DataFrame) -> dict[BoardKey, pd.DataFrame]:
    """One numeric leaderboard per (dataset, protocol, policy), models sorted by mean DSC (without
    the CIs, per-test-set boards and profile GMACs that ``render`` adds from case rows and profiles).

    Each board has columns ``model, family, model_config, n_seeds, n_runs, n_cases, params`` then
    ``<metric>_mean``/``<metric>_std``/``<metric>_n_nan`` (runs whose value is NaN) for every
    aggregate metric with data (record keys: dice, hd95, iou, acc, spe, sen; values as stored, in
    [0, 1] and HD95 units) and the same three for per-class ``dice/<name>``; where records count
    them, ``dice_n_na`` / ``dice_n_entries`` (case × class entries without a Dice, summed over
    runs / all entries: what ``strict`` left out of the means). ``board.attrs``
    holds protocol name, version, hash, overrides and the ordered value columns. Keys are
    ``BoardKey`` named tuples (plain tuples work too). Runs whose status is not "finished" are
    left out.
    """
    if df_runs.empty:
        return {}
    df = label_runs(df_runs[df_runs["status"] == "finished"])
    boards: dict[BoardKey, pd.DataFrame] = {}
    for (dataset, protocol, policy), group in df.groupby(["board_dataset", "board_protocol", "policy"], sort=True):
        boards[BoardKey(dataset, protocol, policy)] = _board(group)
    return boards


# ---------------------------------------------------------------------------------------------
# rendering


def _fmt_value(mean: float, std: float, n_nan: int, n_runs: int, col: str) -> str:
    scale = 100.0 if METRICS[col.split("/", 1)[0]][1] else 1.0
    if math.isnan(mean):
        return f"nan ({n_nan}/{n_runs} runs)"
    if math.isnan(std):
        return f"{mean * scale:.2f}"
    return f"{mean * scale:.2f} ± {std * scale:.2f}"


def _fmt_params(params: float) -> str:
    return "" if math.isnan(params) else f"{params / 1e6:.2f}"


def _missed_at_hd95_zero(key: BoardKey, board: pd.DataFrame) -> str:
    """"vmunet 24 of 24, unet 3 of 24": the entries each model missed, where the board's policy
    scores a miss HD95 0 (legacy-synapse) and some model missed one; "" otherwise."""
    from bench.metrics import POLICIES

    policy = POLICIES.get(key.policy)
    if policy is None or policy.ref_only.hd95 != 0 or "hd95_mean" not in board or not board["n_missed"].gt(0).any():
        return ""
    return ", ".join(f"{r.model} {r.n_missed} of {r.n_present}" for r in board.itertuples())


def _has_exclusions(board: pd.DataFrame) -> bool:
    """Some run of the board left case x class entries out of its means (strict, both empty)."""
    return "dice_n_na" in board and bool(board["dice_n_na"].fillna(0).gt(0).any())


# Column groups of the Markdown/LaTeX boards (``--columns``); the model column is always shown.
COLUMN_GROUPS = {
    "family": "the model family", "seeds": "seeds and folds", "params": "parameters",
    "time": "training time and GPU memory",
    "cost": "GMACs, counted by each run at its input (older records: from bench profile), and the cost tables",
    "metrics": "the aggregate metrics (DSC, HD95, mIoU, ..., and DSC n/a)", "ci": "bootstrap 95% CIs",
    "classes": "per-class DSC", "class-hd95": "per-class HD95 (and NSD)",
}
COLUMN_PRESETS = {"all": tuple(COLUMN_GROUPS), "paper": ("metrics", "classes")}  # paper: the papers' table layout


def parse_columns(text: str | None) -> tuple[str, ...] | None:
    """``--columns``: a comma list of ``COLUMN_GROUPS`` and presets (``all``, ``paper``: the metrics and
    per-class DSC, as the papers' tables) -> groups; None (all) for None. BenchError naming the unknown."""
    if text is None:
        return None
    groups: list[str] = []
    for name in (n.strip().lower() for n in text.split(",") if n.strip()):
        if name in COLUMN_PRESETS:
            groups += COLUMN_PRESETS[name]
        elif name in COLUMN_GROUPS:
            groups.append(name)
        else:
            known = [*COLUMN_PRESETS, *COLUMN_GROUPS]
            close = difflib.get_close_matches(name, known, n=1)
            raise BenchError(f"--columns {name!r}: not a column group{f'; did you mean {close[0]!r}?' if close else '.'}"
                             f" Groups: {'; '.join(f'{k} ({v})' for k, v in COLUMN_GROUPS.items())}; presets: "
                             "all, paper (metrics,classes)")
    if not groups:
        raise BenchError(f"--columns {text!r} names no column group; e.g. paper, or metrics,classes")
    return tuple(dict.fromkeys(groups))


def _display_table(board: pd.DataFrame, columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Strings for humans: one column per metric, "81.23 ± 0.45"; of the ``COLUMN_GROUPS`` in
    ``columns`` only (None: all)."""
    group: dict[str, str] = {"Family": "family", "Seeds": "seeds", "Folds": "seeds", "Params (M)": "params",
                             "DSC n/a": "metrics", "Train time": "time", "Train GPU peak (MB)": "time",
                             "GMACs (scan incl.)": "cost", "thop GMACs": "cost"}
    out = pd.DataFrame(
        {
            "Model": board["model"],
            "Family": board["family"],
            "Seeds": [
                str(s) if s == r else f"{s} ({r} runs)" for s, r in zip(board["n_seeds"], board["n_runs"])
            ],
            "Params (M)": [_fmt_params(p) for p in board["params"]],
        }
    )
    if "folds" in board and board["folds"].astype(bool).any():
        out.insert(3, "Folds", board["folds"])
    if _has_exclusions(board):
        out["DSC n/a"] = ["" if math.isnan(n) else f"{int(n)}/{int(t)}"
                          for n, t in zip(board["dice_n_na"], board["dice_n_entries"])]
    if "train_time_s" in board and board["train_time_s"].notna().any():
        out["Train time"] = [_fmt_duration(v) for v in board["train_time_s"]]
    if "peak_mem_mb" in board and board["peak_mem_mb"].notna().any():  # training on CUDA, the most of its runs
        out["Train GPU peak (MB)"] = ["" if math.isnan(v) else f"{v:.0f}" for v in board["peak_mem_mb"]]
    if "macs" in board and board["macs"].notna().any():  # joined from `bench profile` records
        out["GMACs (scan incl.)"] = [_g(v) for v in board["macs"]]
        out["thop GMACs"] = [_g(v) for v in board["paper_macs"]]
    for col in board.attrs["value_columns"]:
        head = _display_name(col, board.attrs.get("dataset", ""))
        if col in METRICS:
            head += f" {METRICS[col][2]}" + (" (%)" if METRICS[col][1] else "")
        cells = zip(board[f"{col}_mean"], board[f"{col}_std"], board[f"{col}_n_nan"], board["n_runs"])
        out[head] = [_fmt_value(m, s, k, n, col) for m, s, k, n in cells]
        group[head] = "metrics" if col in METRICS else "classes" if col.startswith("dice/") else "class-hd95"
        if f"{col}_ci_lo" in board:  # joined by join_ci (bootstrap over cases)
            scale = 100.0 if METRICS[col][1] else 1.0
            ci = f"{_display_name(col, board.attrs.get('dataset', ''))} 95% CI"
            out[ci] = ["" if math.isnan(lo) else f"[{lo * scale:.2f}, {hi * scale:.2f}]"
                       for lo, hi in zip(board[f"{col}_ci_lo"], board[f"{col}_ci_hi"])]
            group[ci] = "ci"
    if columns is not None:
        out = out[[c for c in out.columns if c == "Model" or group[c] in columns]]
    return out


def _fmt_duration(seconds: float) -> str:
    if math.isnan(seconds):
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _caption(key: BoardKey, board: pd.DataFrame, columns: tuple[str, ...] | None = None) -> tuple[str, str]:
    """(title, note) of a board; the note explains the ``columns`` shown (None: all)."""
    shown = lambda group: _shows(columns, group)  # noqa: E731
    a = board.attrs
    off = f" · OFF-PROTOCOL ({a['overrides']})" if a["overrides"] else ""
    protocol = f"{a['protocol_name']} v{a['protocol_version']} ({a['protocol_hash']})"
    title = f"{key.dataset} · protocol {protocol}{off} · policy {key.policy}"
    seeds = _joined(board["n_seeds"])
    cases = "/".join(sorted({c for c in board["n_cases"] if c}, key=lambda c: c)) or "?"
    units = a.get("hd95_units", [])
    unit = units[0] if len(units) == 1 and units[0] != "mixed" else ""
    hd = f"HD95 in {unit}" if unit else "HD95 in the policy's unit"
    if unit == "pixels" and key.dataset.split(":")[0].split(" (")[0] in ("isic17", "isic18", "isic_all", "polyp"):
        hd += " of the square model input (images are resized to it, so not the images' own pixels)"
    if len(units) > 1 or "mixed" in units:  # a mean over mm and voxels has no unit
        hd = f"HD95 units differ between or within runs ({', '.join(units)}): not comparable"
    hd = f"; {hd}" if "hd95_mean" in board else ""  # pooled ISIC boards have no HD95
    train = "/".join(str(n) for n in a.get("n_train", []))  # absent in records written before it was kept
    note = (
        f"Mean ± std (sample, ddof=1) over seeds: {seeds} per model; test cases per run: {cases}"
        f"{f'; training items: {train}' if train else ''}."
        + (f" DSC, mIoU, Acc, Spe, Sen in %{hd}; NaN is shown, not dropped."  # where a metric is shown
           if any(shown(g) for g in ("metrics", "classes", "class-hd95", "ci")) else "")
    )
    if CV_LABEL in key.dataset:
        folds = sorted(set(board["fold_set"]))
        note = note.replace("over seeds: ", "over runs, one per seed and fold (each fold tests other cases, so the "
                                            "std holds the split's variance too); seeds: ")
        if len(folds) > 1:
            note += f" Models tested on different folds ({'; '.join(folds)}): not comparable."
        if any("(uneven" in f for f in board["folds"]):
            note += " Uneven: a model's seeds tested other folds (an unfinished grid), so some folds weigh more."
    nsd_shown = shown("metrics") or shown("class-hd95") or (shown("ci") and "nsd_ci_lo" in board)
    if a.get("nsd_tolerances") and nsd_shown:  # one per board: the protocol's
        per_class = any(isinstance(t, str) for t in a["nsd_tolerances"])
        tol = ("; " if per_class else ", ").join(t if isinstance(t, str) else f"{t:g}" for t in a["nsd_tolerances"])
        if per_class:
            note += (f" NSD: % of both surfaces within the class's tolerance of the other, in "
                     f"{unit or 'the HD95 unit'}: {tol}.")
        else:
            note += f" NSD: % of both surfaces within {tol} {unit or '(HD95 unit)'} of the other."
    if "train_time_s" in board and board["train_time_s"].notna().any() and shown("time"):
        devices = a.get("devices", [])
        where = (f"on {devices[0]}" if len(devices) == 1
                 else f"on different devices ({'; '.join(devices)}): not comparable between them")
        note += f" Train time: mean per run of the training loop's wall-clock time, resumes included, {where}."
    if a.get("repeated"):
        which = "; ".join(f"{m} seed {', '.join(map(str, seeds))}" for m, seeds in a["repeated"].items())
        note += (f" Repeated: {which} ran more than once here, and each run counts in the mean: a record written "
                 "before bench identified data by its content names it by its path, so a run on that data moved, "
                 "or on other data of this name, was not the same run. records.load's data_id and data_root tell "
                 "them apart: delete the record that should not count.")
    commits = a.get("commits", [])
    if len(commits) > 1:  # seeds run before and after an upgrade average two versions of the code
        named = ", ".join(map(short_commit, commits[:3])) + (", …" if len(commits) > 3 else "")
        note += (f" Code: these runs come from {len(commits)} versions of bench ({named}); a change between them "
                 "that moved scores is not told apart (records' git_commit and code_digest).")
    if plugin := a.get("plugin_code"):
        which = "; ".join(f"{m}: {n}" for m, n in plugin.items())
        note += (f" Plugin code changed since these runs trained ({which}; records' model_code): their numbers are "
                 "the old code's; train them into another --results folder for the code as it is.")
    if "macs" in board and board["macs"].notna().any() and shown("cost"):
        note += (" GMACs: one forward of one input at the protocol's input size (the square image, or the patch), "
                 "the selective scan included; thop GMACs: what thop counts, the convention of published tables.")
    missed = _missed_at_hd95_zero(key, board)
    if missed and any(shown(g) for g in ("metrics", "class-hd95")):
        note += (f" HD95 of misses: {key.policy} scores a structure predicted nowhere in a case HD95 0, the best "
                 f"value (the papers' rule), so misses lower a model's HD95; missed case × class entries, over all "
                 f"runs: {missed}. `bench rescore --policy strict` scores them with a penalty.")
    if _has_exclusions(board) and shown("metrics"):
        note += (" DSC n/a: case × class entries with both masks empty, over all runs; strict scores them NaN and "
                 "leaves them out of the means; a class with no other entry has no mean, and the DSC is nan (as "
                 "nnU-Net's foreground mean), not a mean over the other classes.")
    if "dice_ci_lo" in board and shown("ci"):
        over = "the model's runs, every seed and fold" if CV_LABEL in key.dataset else "seeds"
        note += (" 95% CI: percentile bootstrap over test cases of the number shown (each resample re-aggregated "
                 f"under the board's policy, then averaged over {over}): how much the test set moves these trained "
                 f"models' number; the spread between {'runs' if CV_LABEL in key.dataset else 'seeds'} is the ± std, "
                 "not part of the CI.")
    return title, note


def _render_md(boards: dict[BoardKey, pd.DataFrame], columns: tuple[str, ...] | None = None) -> str:
    if not boards:
        return "No finished runs found.\n"
    parts = []
    for key, board in boards.items():
        title, note = _caption(key, board, columns)
        shown = _display_table(board, columns)
        align = [_align(c) for c in shown.columns]
        parts.append(f"## {title}\n\n{note}\n\n{_md_table(shown, align)}\n")
    return "\n".join(parts)


def _md_table(table: pd.DataFrame, colalign: list[str] | None = None) -> str:
    """A pipe table whose cells may hold ``|`` (a model config such as ``norm="a|b"``): escaped, so
    the columns stay where they are."""
    esc = lambda v: v.replace("|", "\\|") if isinstance(v, str) else v  # noqa: E731
    table = table.rename(columns=esc).map(esc)
    return table.to_markdown(index=False, disable_numparse=True, **({"colalign": colalign} if colalign else {}))


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "·": r"$\cdot$", "×": r"$\times$", "−": r"$-$",
    "–": "--", "—": "---", "⁰": r"$^0$", "¹": r"$^1$", "²": r"$^2$", "³": r"$^3$", "⁴": r"$^4$", "⁵": r"$^5$",
    "⁶": r"$^6$", "⁷": r"$^7$", "⁸": r"$^8$", "⁹": r"$^9$", "`": "",  # a Markdown code mark
    "|": r"\textbar{}", "<": r"\textless{}", ">": r"\textgreater{}", '"': r"\texttt{\char34}",  # straight quote, any encoding
}  # fmt: skip


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def _align(column: str) -> str:
    return "left" if column in ("Model", "Family") else "right"


def _render_latex(boards: dict[BoardKey, pd.DataFrame], columns: tuple[str, ...] | None = None) -> str:
    # A small booktabs emitter: DataFrame.to_latex needs jinja2, which is not a dependency.
    parts = ["% Requires \\usepackage{booktabs} and \\usepackage{graphicx} (tables wider than the line are shrunk to it);"
             " names outside Latin-1 need xelatex or lualatex. bench report --columns paper keeps the papers' columns."]
    labels: collections.Counter = collections.Counter()
    for key, board in boards.items():
        title, note = _caption(key, board, columns)
        table = _display_table(board, columns)
        if "Folds" in table:  # a range of folds ("0-4") takes an en dash
            table["Folds"] = table["Folds"].str.replace(r"(?<=\d)-(?=\d)", "–", regex=True)
        spec = "".join(_align(c)[0] for c in table.columns)
        parts.append(_latex_table(title, note, f"{key.dataset} {key.protocol} {key.policy}", table, spec, labels))
    return "\n\n".join(parts) + "\n"


def _latex_table(title: str, note: str, name: str, table: pd.DataFrame, spec: str,
                 labels: collections.Counter) -> str:
    """A booktabs table captioned ``title. note`` (the title alone in a list of tables); its label
    from ``name`` ("tab:synapse-smoke-legacy-synapse"), numbered where ``labels`` has seen it."""
    label = "tab:" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    labels[label] += 1
    lines = [
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption[{{{_latex_escape(title)}}}]{{{_latex_escape(title)}. {_latex_escape(note)}}}",  # {}: a ] in it
        f"\\label{{{label}{'' if labels[label] == 1 else f'-{labels[label]}'}}}",
        # shrunk to the line where wider (Synapse's board has ~26 columns), never enlarged
        "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(_latex_escape(c) for c in table.columns) + " \\\\",
        "\\midrule",
    ]
    lines += [" & ".join(_latex_escape(v) for v in row) + " \\\\" for row in table.itertuples(index=False)]
    lines += ["\\bottomrule", "\\end{tabular}", "}", "\\end{table}"]
    return "\n".join(lines)


def render_cost_latex(df_prof: pd.DataFrame) -> str:
    """The cost tables (``cost_tables``) as booktabs tables, the fingerprint in the caption."""
    parts, labels = [], collections.Counter()
    for title, table in cost_tables(df_prof).items():
        table = table.drop(columns="fingerprint")  # the title names it
        spec = "".join("l" if c in ("model", "family", "input_shape") else "r" for c in table.columns)
        # labelled by input and precision (the fingerprint would make a label of a line), numbered per machine
        parts.append(_latex_table(title, _cost_note(table), " ".join(title.split(" · ")[:3]), table, spec, labels))
    return "\n\n".join(parts)


def _render_csv(boards: dict[BoardKey, pd.DataFrame]) -> str:
    frames = []
    for key, board in boards.items():
        head = pd.DataFrame(
            {
                "dataset": key.dataset,
                "protocol": key.protocol,
                "protocol_version": board.attrs["protocol_version"],
                "protocol_hash": board.attrs["protocol_hash"],
                "policy": key.policy,
                # the policy does not say it: strict's HD95 is in mm, voxels or pixels by the data
                "hd95_unit": "/".join(board.attrs.get("hd95_units", [])),
            },
            index=board.index,
        )
        frames.append(pd.concat([head, board], axis=1))
    if not frames:
        return ",".join(_CSV_KEY_COLUMNS + _BOARD_COLUMNS) + "\n"
    table = pd.concat(frames, ignore_index=True)
    # Column union follows board order; put aggregates in METRICS order, per-class after them.
    values = [c for c in table.columns if c.endswith(("_mean", "_std", "_n_nan"))]
    aggregates = [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "n_nan") if f"{m}_{s}" in values]
    first = [c for c in table.columns if c not in values]
    table = table[first + aggregates + [c for c in values if c not in aggregates]]
    for c in (c for c in values if c.endswith("_n_nan")):  # counts: 0, not 0.0 where another board lacks the column
        table[c] = table[c].astype("Int64")
    return table.to_csv(index=False, lineterminator="\n")


# ---------------------------------------------------------------------------------------------
# cost (from `bench profile` records)

def _g(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v / 1e9:.2f}" if abs(v) >= 1e9 else f"{v / 1e9:.4f}"


def _num(v, fmt: str) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def scan_mark(backend: Any) -> str:
    """`` (ref scan)`` where a timing ran on a fallback scan, not the kernel the model would use
    there (cpu, cuda): a reference backend is never shown as the model's speed without saying so."""
    return "" if backend in (None, "cpu", "cuda") or (isinstance(backend, float) and math.isnan(backend)) \
        else f" ({backend} scan)"


def profile_labels(g: pd.DataFrame) -> list[str]:
    """Model names labelled as boards label runs (``model_labels``): tiny configurations, and the
    config keys that differ where one model was profiled in several (``--set``, ``--num-classes``)."""
    configs = pd.Series([json.dumps(c, sort_keys=True) if isinstance(c, dict) else "" for c in
                         (g["model_config"] if "model_config" in g else [None] * len(g))], index=g.index)
    return model_labels(g["model"].astype(str), configs, tiny=g["tiny"] if "tiny" in g else None)


def _unit(v: Any, scale: float, unit: str, fmt: str = ".2f", small: str = ".4f") -> str:
    """``v / scale`` with its unit ("27.43 M", "0.0045 G"); empty for a missing value."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    x = v / scale
    return "0" if x == 0 else f"{format(x, fmt if abs(x) >= 1 else small)} {unit}"


def cost_tables(df_prof: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One display table per (device fingerprint, input shape, precision, layout, compile):
    timings only rank against timings taken the same way on the same machine. The columns keep
    the profile output's names (``model``, ``params``, ``input_shape``, ``macs``, ``paper_macs``,
    ``flops``, ``latency_ms_median``, ``fps``, ``fingerprint``, as the CSV and JSON have them);
    the cells carry their units (M, G) so that the table reads without the caption."""
    tables: dict[str, pd.DataFrame] = {}
    if df_prof is None or df_prof.empty:
        return tables
    keys = ["fingerprint", "input_shape", "precision", "channels_last", "compiled"]
    for (fp, shape, prec, cl, comp), g in df_prof.groupby(keys, sort=True):
        g = g.sort_values("macs")
        timed = g["latency_ms_median"].notna() if "latency_ms_median" in g else pd.Series(False, index=g.index)
        mark = [scan_mark(b) for b in g["scan_backend"]]
        layout = (" · channels_last" if cl else "") + (" · torch.compile" if comp else "")
        title = f"Cost · input {shape} · {prec}{layout} · {fp}"
        none = [None] * len(g)  # columns a --no-timing profile has not got
        flops = g["flops"].fillna(2 * g["macs"]) if "flops" in g else 2 * g["macs"]  # 1 MAC = 2 FLOPs
        table = pd.DataFrame({
            "model": profile_labels(g), "family": g["family"],
            "params": [_unit(v, 1e6, "M") for v in g["params"]],
            "paper_params": [_unit(v, 1e6, "M") for v in g["paper_params"]],
            "input_shape": g["input_shape"],
            # the head's size: a board's GMACs are its runs' own count, at their data's classes
            "num_classes": [_config(c).get("num_classes", "") for c in g.get("model_config", none)],
            "macs": [_unit(v, 1e9, "G") for v in g["macs"]],
            "scan_macs": [_unit(v, 1e9, "G") for v in g["scan_macs"]],
            "paper_macs": [_unit(v, 1e9, "G") for v in g["paper_macs"]],
            "paper_macs_missing_pct": [_num(v, ".1f") for v in g["paper_macs_missing_pct"]],
            "flops": [_unit(v, 1e9, "G") for v in flops],
            "fvcore_macs": [_unit(v, 1e9, "G") for v in g["fvcore_macs"]],
            "latency_ms_median": [_num(v, ".2f") + m if t else ""
                                  for v, m, t in zip(g.get("latency_ms_median", none), mark, timed)],
            "latency_ms_p90": [_num(v, ".2f") if t else "" for v, t in zip(g.get("latency_ms_p90", none), timed)],
            "fps": [_num(v, ".1f") + (m if t else "") for v, m, t in zip(g.get("fps", none), mark, timed)],
            "peak_mem_mb": [f"{_num(f, '.0f')} ({k})" if isinstance(f, (int, float)) and f == f else ""
                            for f, k in zip(g.get("peak_mem_mb", none), g.get("peak_mem_kind", none))],
            "train_peak_mem_mb": [_num(v, ".0f") for v in g.get("train_peak_mem_mb", none)],
            "fingerprint": g["fingerprint"],
        })
        if "throughput_fps" in g and g["throughput_fps"].notna().any():  # measured at a batch > 1
            table.insert(table.columns.get_loc("fps") + 1, "throughput_fps",
                         [f"{f:.1f} @ batch {int(b)}{m}" if f == f and f is not None else ""
                          for f, b, m in zip(g["throughput_fps"], g["throughput_batch"], mark)])
        untimed = [c for c in ("latency_ms_median", "latency_ms_p90", "fps", "peak_mem_mb", "train_peak_mem_mb")
                   if not table[c].astype(bool).any()]
        tables[title] = table.drop(columns=untimed)  # counts only (--no-timing): no empty timing columns
    return tables


COST_NOTE = ("params: `sum(p.numel())`; paper_params: what thop counts (no bare `nn.Parameter`). macs: our "
             "count (torch.utils.flop_counter, one multiply-add = 1 MAC = 2 FLOPs, so flops = 2 × macs) with "
             "the selective scan included (scan_macs: 9·B·L·D·N FLOPs per scan, the Mamba authors' estimate, "
             "plus the D and z terms). paper_macs: thop's count, the convention of most papers in this field "
             "(thop 0.1.1: leaf modules only — no scan, no einsum, no functional matmul); paper_macs_missing_pct: "
             "the share of macs it leaves out. fvcore_macs: a cross-check of ours (it also prices normalisation, "
             "up-sampling and pooling). num_classes: the head's classes (a board's GMACs are its runs' own "
             "count). M = 10⁶, G = 10⁹.")
TIMING_NOTE = ("latency_ms_median / p90 and fps (batch 1): forward passes of random input after warm-up, "
               "synchronised on CUDA; a mark such as \"(torch scan)\" means the selective scan ran on a fallback, "
               "not the kernel the model would use there. peak_mem_mb: a forward's peak (its kind in brackets), "
               "train_peak_mem_mb: a training step's.")


def _config(config: Any) -> dict:
    """A model configuration as records and profiles keep it (a dict, or its JSON text), or {}."""
    if isinstance(config, str):
        config = json.loads(config) if config else {}
    return config if isinstance(config, dict) else {}


def _cost_note(table: pd.DataFrame) -> str:
    """What a cost table's columns mean; timing only where it has some (--no-timing has none)."""
    return COST_NOTE + (" " + TIMING_NOTE if "latency_ms_median" in table else "")


def render_cost_md(df_prof: pd.DataFrame) -> str:
    parts = []
    for title, table in cost_tables(df_prof).items():
        align = ["left" if c in ("model", "family", "input_shape", "fingerprint") else "right" for c in table.columns]
        parts.append(f"## {title}\n\n{_cost_note(table)}\n\n" + _md_table(table, align) + "\n")
    return "\n".join(parts)


_HEAD_KEYS = ("num_classes", "in_chans")


def cost_key(model: str, config: Any) -> str:
    """What makes a ``bench profile`` row the cost of a board row's model: the model (a board label's
    name part) and its configuration, input size included, with the output classes and input
    channels aside (they change the first and last layer only; profiles default to 9 and 3)."""
    config = _config(config)  # {} for a profile written before configs were kept
    return json.dumps([model.split(" (")[0], {k: v for k, v in config.items() if k not in _HEAD_KEYS}],
                      sort_keys=True)


def join_cost(boards: dict[BoardKey, pd.DataFrame], df_prof: pd.DataFrame | None) -> None:
    """Fill ``macs``/``paper_macs`` of board rows whose records carry none (records written
    before runs counted them) from the profile of the same model and configuration (``cost_key``);
    counts do not depend on the device, so any fingerprint serves."""
    if df_prof is None or df_prof.empty:
        return
    configs = df_prof["model_config"] if "model_config" in df_prof else [None] * len(df_prof)
    lookup = {cost_key(m, c): (a, b) for m, c, a, b in
              zip(df_prof["model"], configs, df_prof["macs"], df_prof["paper_macs"])}
    for board in boards.values():
        pairs = [lookup.get(cost_key(m, c), (math.nan, math.nan)) for m, c in zip(board["model"], board["model_config"])]
        have = board["macs"].notna() if "macs" in board else pd.Series(False, index=board.index)
        board["macs"] = board["macs"].where(have, [p[0] for p in pairs])
        board["paper_macs"] = board["paper_macs"].where(have, [p[1] for p in pairs])


CI_METRICS = ("dice", "hd95", "nsd")  # where the rows carry them


def label_cases(df_cases: pd.DataFrame) -> pd.DataFrame:
    """A case-level frame with the board and model labels of ``label_runs``, computed once per
    run (a run has many case rows) and joined back."""
    runs = df_cases.drop_duplicates("run_id")
    labels = label_runs(runs)[["run_id", "board_dataset", "board_protocol", "model_label"]]
    return df_cases.merge(labels, on="run_id", how="left")


# Datasets whose test ids are "<set>/<stem>" and whose authors score each test set on its own
# (VM-UNet-V2's five polyp sets and its two ISIC years; bench.data.isic.MultiSetDataset). A run
# on them also gets one board per set.
TEST_SET_DATASETS = ("polyp", "isic_all")


def split_test_sets(df_runs: pd.DataFrame, df_cases: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs on ``TEST_SET_DATASETS`` once more per test set, as (run rows, case rows) to append.

    A set's run row is the run's, with ``dataset_name`` "<name>:<set>", ``run_id`` "<run_id>@<set>"
    and its metrics re-aggregated from that set's case rows under the run's policy
    (``bench.metrics.aggregate``: legacy-isic pools the set's confusion counts, as VM-UNet-V2's
    engine does per set); its case rows are the run's, relabelled the same way. Every set then
    gets its own board, CI, tests and published rows. Empty frames when there is nothing to split."""
    from bench import metrics

    empty = (df_runs.iloc[0:0], df_cases.iloc[0:0] if df_cases is not None else pd.DataFrame())
    if df_cases is None or df_cases.empty or df_runs.empty:
        return empty
    runs = df_runs[df_runs["dataset"].isin(TEST_SET_DATASETS)]
    cases = df_cases[df_cases["run_id"].isin(runs["run_id"]) & df_cases["case"].str.contains("/", regex=False)]
    new_runs, new_cases = [], []
    for (run_id, test_set), rows in cases.groupby(["run_id", cases["case"].str.split("/").str[0]], sort=True):
        run = runs[runs["run_id"] == run_id].iloc[0].copy()
        policy, set_id, name = run["policy"], f"{run_id}@{test_set}", f"{run['dataset_name']}:{test_set}"
        for key, value in metrics.aggregate(rows, policy).items():
            run[key] = value
        for pc in metrics.aggregate_per_class(rows, policy):
            run[f"dice/{pc['name']}"], run[f"hd95/{pc['name']}"] = pc["dice"], pc["hd95"]
        if "empty" in rows:  # the misses of this set's cases (the run's row counts all its sets')
            for key, value in miss_counts(rows["empty"]).items():
                run[key] = value
        run["run_id"], run["dataset_name"] = set_id, name
        new_runs.append(run)
        new_cases.append(rows.assign(run_id=set_id, dataset_name=name))
    if not new_runs:
        return empty
    return pd.DataFrame(new_runs).reset_index(drop=True), pd.concat(new_cases, ignore_index=True)


def _case_groups(df_cases: pd.DataFrame | None) -> dict[BoardKey, pd.DataFrame]:
    """The case-level frame split like the boards (same labels), for statistics per board."""
    if df_cases is None or df_cases.empty:
        return {}
    df = label_cases(df_cases)
    return {BoardKey(*k): g for k, g in df.groupby(["board_dataset", "board_protocol", "policy"], sort=True)}


def join_ci(boards: dict[BoardKey, pd.DataFrame], groups: dict[BoardKey, pd.DataFrame]) -> None:
    """Add ``<metric>_ci_lo/_ci_hi`` for ``CI_METRICS``: a bootstrap 95% CI of the board's own number
    (test cases resampled, each run re-aggregated under the board's policy, then averaged over
    seeds; ``bench.stats.bootstrap_ci``). ``groups``: the case rows per board (``_case_groups``)."""
    from bench import stats

    for key, board in boards.items():
        cases = groups.get(key)
        if cases is None:
            continue
        for metric in CI_METRICS:
            if f"{metric}_mean" not in board or cases[metric].notna().sum() == 0:
                continue
            ci = stats.bootstrap_ci(cases, metric, key.policy)
            cis = [ci.get(m, (math.nan, math.nan)) for m in board["model"]]
            board[f"{metric}_ci_lo"], board[f"{metric}_ci_hi"] = [c[0] for c in cis], [c[1] for c in cis]


def significance_md(boards: dict[BoardKey, pd.DataFrame], groups: dict[BoardKey, pd.DataFrame],
                    reference: str) -> str:
    """Per board: paired tests of every model against ``reference`` (Holm-adjusted; ``stats.paired_tests``)
    and the rank table with its bootstrap stability. ``groups``: the case rows per board."""
    from bench import stats

    parts = []
    for key, cases in groups.items():
        if key not in boards:
            continue
        labels = sorted(set(cases["model_label"]))
        ref = stats.reference_label(cases, reference)  # "unet" for "unet (tiny)"
        tests = stats.paired_tests(cases, ref, metrics=CI_METRICS, policy=key.policy)
        ranks = stats.rank_stability(cases, "dice", key.policy)
        title = f"## Significance · {_caption(key, boards[key])[0]}"
        rank_table = pd.DataFrame({
            "Model": ranks["model"], "DSC (%)": [f"{100 * v:.2f}" for v in ranks["mean"]],
            "Rank": ranks["rank"], "P(rank 1)": [_num(p, ".2f") for p in ranks["p_rank_1"]],
            "95% rank interval": ["" if math.isnan(a) else f"{a:.0f}–{b:.0f}"
                                  for a, b in zip(ranks["rank_lo"], ranks["rank_hi"])],
        })
        rank_table = _md_table(rank_table)
        unranked = sorted(set(labels) - set(ranks["model"]))
        if unranked:  # their DSC is NaN on the shared cases (strict: a class valid in none of them)
            rank_table += f"\n\nNot ranked (DSC nan over the cases every model has): {', '.join(unranked)}."
        rank_note = ("Ranks by the board's DSC (its policy's aggregate) over the cases every model has; stability "
                     "from 1000 bootstrap resamples of those cases (any in which a model's DSC is undefined left out), "
                     "for these trained runs: a retrained seed can rank otherwise. "
                     "Tied models share the better rank, so P(rank 1) can add up to more than 1.")
        if tests.empty:
            if ref in labels:
                why = (f"{ref!r} is the only model on this board" if len(labels) == 1
                       else f"{ref!r} shares no scored test case with another model")
            elif configs := [m for m in labels if m.startswith(f"{reference} (")]:  # "unet (encoder=resnet34)": per config
                why = (f"{reference!r} runs here in several configurations ({', '.join(configs)}); pass one as "
                       "--reference")
            else:
                why = f"{reference!r} has no runs on this board"
            parts.append(f"{title}\n\nNo paired comparison: {why}. {rank_note}\n\n{rank_table}\n")
            continue
        pooled = tests["test"].str.startswith("permutation").any()
        shown = pd.DataFrame({
            "Model": tests["model"], "Metric": [METRICS[m][0] for m in tests["metric"]],
            "Cases": tests["n_cases"],
            ("Diff of board values (model − ref)" if pooled else "Mean per-case diff (model − ref)"):
                [_num(d * (100 if METRICS[m][1] else 1), "+.2f") for d, m in zip(tests["mean_diff"], tests["metric"])],
            **({} if pooled else {"Effect size (r)": [_num(r, "+.2f") for r in tests["effect_size"]]}),
            ("p (permutation)" if pooled else "p (Wilcoxon)"): [
                _num(p, ".3g") + (" (seed-averaged)" if test.endswith("(seed-averaged)") else "")
                for p, test in zip(tests["p"], tests["test"])],
            "p (Holm)": [_num(p, ".3g") for p in tests["p_holm"]],
        })
        if pooled:
            note = (f"Reference: {ref}. The board's number is pooled over all test pixels, not a mean over cases, so "
                    "the test is a paired permutation test of the board's difference: each shared case's confusion "
                    "counts swapped or not between the two models' runs (paired in seed and fold order), every "
                    f"pattern up to 2^12 (else {stats.N_PERM} drawn), the pooled numbers recomputed per run and "
                    "averaged over runs; two-sided p, adjusted with Holm over the board's tests (a per-case test can "
                    "contradict a pooled gap)."
                    + (" \"seed-averaged\": the models' runs do not pair up (other seeds or folds), so the p tests "
                       "another number, the pooled metric of each case's counts averaged over the model's runs, which "
                       "can differ from the board values' difference, even in sign."
                       if (tests["test"] == "permutation (seed-averaged)").any() else "") + f" {rank_note}")
        else:
            note = (f"Reference: {ref}. Two-sided Wilcoxon signed-rank over the shared test cases (each case "
                    "averaged over its classes and the seeds; where some classes are NaN in a case, this mean "
                    "per-case difference can differ from the difference of board values, which averages each "
                    "class over cases first); effect size: matched-pairs rank-biserial correlation, > 0 means the "
                    f"model beats the reference; p adjusted with Holm over the board's tests. {rank_note}")
            if (tests["test"] == "undefined").any():
                note += (" nan: the board's number of the model or the reference is nan (a class valid in no "
                         "shared case), so there is nothing to test.")
        if key.policy == "legacy-synapse":
            note += (" Caution: under legacy-synapse a missed organ scores HD95 0 (the papers' rule), so a model "
                     "that finds nothing looks best on HD95; `--policy strict` penalises misses.")
        parts.append(f"{title}\n\n{note}\n\n" + _md_table(shown) + "\n\n" + rank_table + "\n")
    return "\n".join(parts)


PUBLISHED_METRICS = ("dice", "hd95", "iou", "acc", "spe", "sen")
BUILD_KEYS = {"num_classes", "in_chans", "img_size"}  # what every run's model_config holds; more is a variant
PUBLISHED_NOTE = ("Ours − published is given only where the paper's number was trained under this board's protocol "
                  "(\"Their recipe\", the published table's column protocol) in its current version, run as written, "
                  "with the model as registered, on the paper's test split, and scored under the paper's convention; "
                  "otherwise the cell says what differs (recipe, split, protocol version, model config or metric "
                  "policy), since the gap would mix the model with it.")


# nnU-Net dataset names -> published ids: LightM-UNet's Dataset801_LiverCT / Dataset802_LungXray, MSD's liver
_NNUNET_ALIASES = {"liverct": "lits", "liver": "lits", "lungxray": "montgomery_shenzhen"}


# class names of the data -> the papers' per-class columns where they differ (nnU-Net's ACDC labels)
_CLASS_ALIASES = {"mlm": "myo", "lvc": "lv"}


def _class_column(row: pd.Series, metric: str, cls: str) -> str | None:
    """The board column of ``metric`` for the published class ``cls`` ("dice:aorta" -> "dice/aorta_mean";
    "dice:myo" -> "dice/MLM_mean" on nnU-Net's ACDC), or None."""
    for col in row.index:
        name = str(col).removeprefix(f"{metric}/").removesuffix("_mean")
        if col == f"{metric}/{name}_mean" and _CLASS_ALIASES.get(name.lower(), name.lower()) == cls:
            return col
    return None


def published_dataset(board_dataset: str) -> str:
    """The ``dataset`` id of ``results/published.csv`` for a board: "nnunet:Dataset027_ACDC" and
    "nnunet:ACDC" -> "acdc", "nnunet:Dataset801_LiverCT" -> "lits" (``_NNUNET_ALIASES``),
    "polyp:CVC-ClinicDB" -> "polyp:clinicdb", "isic_all:isic17" -> "isic17" (VM-UNet-V2 reports its
    merged-ISIC model under each year); other names as they are, without " (synthetic)"."""
    name = board_dataset.split(" (")[0]
    if name.startswith("nnunet:"):
        name = re.sub(r"^Dataset\d+_", "", name.removeprefix("nnunet:")).lower()
        name = _NNUNET_ALIASES.get(name, name)
    elif name.startswith("polyp:"):
        name = f"polyp:{test_set_id(name.removeprefix('polyp:'))}"
    elif name.startswith("isic_all:"):
        name = test_set_id(name.removeprefix("isic_all:"))
    return name


def split_mismatch(board_dataset: str, cases: pd.DataFrame | None, n_train: list[int] | None = None) -> str | None:
    """Why a board's test cases (its case rows) or training items (its runs' ``n_train``) are not the
    paper's split, or None where they are: Synapse's test volumes by case id (TransUNet's 12) and its
    2,211 training slices; an ISIC year and a PraNet test set by image count (their lists are not
    published; another 7:3 draw has the counts too), their training sets likewise (VM-UNet-V2's
    merged ISIC: both years' together); ACDC, LiTS and Montgomery/Shenzhen never (their papers'
    splits are not published, so no run of ours tests the papers' cases). Runs recorded before
    ``n_train`` was kept are judged by their test cases alone."""
    from bench.data.synapse import TRANSUNET_TEST_CASES, TRANSUNET_TRAIN_SLICES
    from bench.data.verify import PRANET_TEST_SETS, PRANET_TRAIN_IMAGES, VMUNET_ISIC_SPLITS

    dataset = published_dataset(board_dataset)
    pranet = {test_set_id(k): n for k, n in PRANET_TEST_SETS.items()}
    if cases is None or cases.empty:
        return "test cases unknown (no per-case rows)"
    ids = set(cases["case"].astype(str))
    if dataset == "synapse":
        if ids != set(TRANSUNET_TEST_CASES):
            return f"other split ({len(ids)} test volumes, {len(ids & set(TRANSUNET_TEST_CASES))} of TransUNet's 12)"
        train, unit = TRANSUNET_TRAIN_SLICES, "training slices"
    elif dataset in VMUNET_ISIC_SPLITS or dataset.startswith("polyp:") and dataset.removeprefix("polyp:") in pranet:
        test = (VMUNET_ISIC_SPLITS[dataset][1] if dataset in VMUNET_ISIC_SPLITS
                else pranet[dataset.removeprefix("polyp:")])
        if len(ids) != test:
            return f"other split ({len(ids)} test images, the paper's {test})"
        train = (sum(tr for tr, _ in VMUNET_ISIC_SPLITS.values()) if board_dataset.startswith("isic_all:")
                 else VMUNET_ISIC_SPLITS[dataset][0] if dataset in VMUNET_ISIC_SPLITS else PRANET_TRAIN_IMAGES)
        unit = "training images"
    else:
        return "other split (the paper's test cases are not published)"
    other = sorted(set(n_train or []) - {train})
    return f"other split ({other[0]} {unit}, the paper's {train})" if other else None


def _same_evaluation(x, y) -> bool:
    """Whether protocols ``x`` and ``y`` score a model alike (input, normalisation, precision, policy,
    the [eval] table): a recipe's training settings aside."""
    fields = ("img_size", "patch_size", "normalize", "target_spacing", "dtype", "metric_policy", "eval")
    return all(getattr(x, f) == getattr(y, f) for f in fields)


def published_tables(boards: dict[BoardKey, pd.DataFrame], published: pd.DataFrame,
                     groups: dict[BoardKey, pd.DataFrame] | None = None) -> dict[str, pd.DataFrame]:
    """Per board, the papers' numbers for its dataset next to ours: one row per (model, metric,
    published source), with both metric conventions and the paper's recipe named. ours − published
    only where that recipe is the board's protocol as built in now, run as written (not
    off-protocol), with the model as registered, on the paper's test split (``split_mismatch``;
    ``groups``: the case rows per board), and scored under the paper's convention (the protocol's
    policy where the CSV does not name one of ours) — see ``why_not``; elsewhere the difference
    would mix the model with something else."""
    from bench.metrics import POLICIES
    from bench.protocol import list_protocols, load_protocol

    protocols: dict[str, Any] = {}
    builtin = set(list_protocols())

    def protocol(name: str):
        """The built-in protocol ``name``, loaded once per report."""
        if name not in protocols:
            protocols[name] = load_protocol(name)
        return protocols[name]

    def why_not(p: pd.Series, key: BoardKey, a: dict, row: pd.Series) -> str | None:
        """Every reason the gap is not given ("; "-joined), or None where it is."""
        same = bool(p["protocol"]) and p["protocol"] == a["protocol_name"]
        # nothing else compares with a recipe this board did not run; weights evaluated as given were trained
        # elsewhere, so there only the evaluation need be the paper's (synapse_vmunet scores as synapse does)
        if not same and not (row.get("evaluated") and {p["protocol"], a["protocol_name"]} <= builtin
                             and _same_evaluation(protocol(p["protocol"]), protocol(a["protocol_name"]))):
            return "other recipe"
        reasons = [f"off-protocol ({a['overrides']})"] if a["overrides"] else []
        folds, synthetic = CV_LABEL in key.dataset, "(synthetic)" in key.dataset
        if folds:  # the papers score one fixed test split
            reasons.append("other split (cross-validation)")
        if synthetic:
            reasons.append("synthetic data")
        proto = protocol(p["protocol"])
        if same and a["protocol_hash"] != proto.hash:  # an older version, or an edited copy of the file
            reasons.append("other protocol version")
        config = json.loads(row["model_config"] or "{}")
        extra = set(config) - BUILD_KEYS
        if config.get("spatial_dims") == proto.spatial_dims:  # a 3-D protocol builds the 3-D variant itself
            extra.discard("spatial_dims")
        if extra:  # --set, --tiny, an adapted window
            reasons.append("other model config")
        policy = p["convention"] if p["convention"] in POLICIES else proto.metric_policy
        if policy and policy != key.policy:
            reasons.append("other metric policy")
        # mm against voxels, or a board of both (older records name no unit: not judged)
        if p["metric"].split(":")[0] == "hd95" and a["hd95_units"] and a["hd95_units"] != [p["unit"]]:
            reasons.append("other unit")
        if not folds and not synthetic:  # else the split says nothing more
            # this row's runs: their test cases and training items
            cases = (groups or {}).get(key)
            if cases is not None and "model_label" in cases:
                cases = cases[cases["model_label"] == row["model"]]
            n_train = [int(n) for n in str(row.get("n_train", "") or "").split("/") if n]
            split = split_mismatch(key.dataset, cases, n_train)
            reasons += [split] if split else []
        return "; ".join(reasons) or None

    out: dict[str, pd.DataFrame] = {}
    for key, board in boards.items():
        dataset = published_dataset(key.dataset)
        rows = []
        for _, b in board.iterrows():
            model = b["model"].split(" (")[0]
            # per-class rows ("dice:aorta") beside the board's per-class columns ("dice/aorta")
            pub = published[(published["model"] == model) & (published["dataset"] == dataset)
                            & published["metric"].str.split(":").str[0].isin(PUBLISHED_METRICS)]
            for _, p in pub.iterrows():
                base, _, cls = p["metric"].partition(":")
                mean = b.get(_class_column(b, base, cls) if cls else f"{base}_mean", math.nan)
                scale = 100.0 if METRICS[base][1] else 1.0
                ours = mean * scale if isinstance(mean, float) and not math.isnan(mean) else math.nan
                blocked = why_not(p, key, board.attrs, b)
                diff = blocked or ("" if math.isnan(ours) else f"{ours - p['value']:+.2f}")
                label = METRICS[base][0] + (f" ({class_display(cls, key.dataset)})" if cls else "")  # as the board
                units = board.attrs.get("hd95_units", [])
                unit = "%" if METRICS[base][1] else (units[0] if len(units) == 1 and units[0] != "mixed" else "")
                rows.append({"Model": b["model"], "Metric": label,  # the board's row label
                             "Published": f"{p['value']:g} {p['unit']}".strip(), "Source": p["source"],
                             "Their convention": p["convention"], "Their recipe": p["protocol"] or "not one of ours",
                             "Ours": "" if math.isnan(ours) else f"{ours:.2f} {unit}".strip(), "Ours − published": diff,
                             "Note": p["note"]})
        if rows:
            synth = " — synthetic data: the difference says nothing about the model" if "(synthetic)" in key.dataset else ""
            table = pd.DataFrame(rows)
            out[f"Published vs ours · {_caption(key, board)[0]} (ours){synth}"] = \
                table if table["Note"].astype(bool).any() else table.drop(columns="Note")
    return out


def render(df_runs: pd.DataFrame, fmt: str | ReportFormat = "md", df_cases: pd.DataFrame | None = None,
           profiles: pd.DataFrame | None = None, columns: tuple[str, ...] | None = None) -> str:
    """All leaderboards of ``df_runs`` (from ``records.load``) as Markdown, LaTeX or CSV text.

    ``md``: a ``##`` heading per board naming dataset, protocol (name, version, hash) and metric
    policy, a line with seeds/cases, then a table of "81.23 ± 0.45" strings. ``latex``: one
    booktabs ``table`` per board, same content. ``csv``: the numeric boards stacked into one tidy
    table (mean and std columns, metrics as stored in [0, 1]) with the board key columns first.
    With ``df_cases`` (``records.load(dir, level="case")``) the boards gain their bootstrap CIs and
    polyp/isic_all runs a board per test set; with ``profiles`` (``cost.load_profiles``), GMACs of
    runs whose records count none, and in LaTeX the cost tables after the boards: then this is
    ``bench report``'s text (``write_report`` adds the Markdown sections after the boards: paired
    tests, published numbers, cost tables, plots).
    ``columns``: the Markdown/LaTeX tables' ``COLUMN_GROUPS`` (``parse_columns``); None: all.
    """
    fmt = ReportFormat(fmt.value if isinstance(fmt, ReportFormat) else _check_format(fmt))
    _check_columns(columns, fmt)
    if fmt == ReportFormat.cases:
        if df_cases is None:
            raise BenchError("format 'cases' needs the records' case rows: pass df_cases (bench report --format cases)")
        return render_cases(df_cases[df_cases["run_id"].isin(_finished(df_runs)["run_id"])])
    boards, _, _ = _boards(df_runs, df_cases, profiles)
    return _with_cost_latex(_render(boards, fmt, columns), fmt, profiles, columns)


def _with_cost_latex(text: str, fmt: ReportFormat, profiles: pd.DataFrame | None,
                     columns: tuple[str, ...] | None) -> str:
    """LaTeX boards followed by the cost tables of ``profiles`` (a paper's cost table), unless
    ``columns`` leaves the cost out."""
    if fmt != ReportFormat.latex or profiles is None or profiles.empty or not _shows(columns, "cost"):
        return text
    cost = render_cost_latex(profiles)
    return text.rstrip("\n") + "\n\n" + cost + "\n" if cost else text


def _render(boards: dict[BoardKey, pd.DataFrame], fmt: ReportFormat, columns: tuple[str, ...] | None) -> str:
    if fmt == ReportFormat.csv:
        return _render_csv(boards)
    return (_render_md if fmt == ReportFormat.md else _render_latex)(boards, columns)


def _shows(columns: tuple[str, ...] | None, group: str) -> bool:
    """Whether the ``COLUMN_GROUPS`` chosen (None: all) include ``group``."""
    return columns is None or group in columns


def _check_columns(columns: tuple[str, ...] | None, fmt: ReportFormat) -> None:
    if columns is not None and fmt not in (ReportFormat.md, ReportFormat.latex):
        raise BenchError(f"--columns chooses the Markdown and LaTeX tables' columns; --format {fmt.value} holds every "
                         "value (select columns where you read it)")


def _finished(df_runs: pd.DataFrame) -> pd.DataFrame:
    # a run that did not finish feeds no board, CI, test, rank, plot or case row
    return df_runs[df_runs["status"] == "finished"] if not df_runs.empty else df_runs


def _boards(df_runs: pd.DataFrame, df_cases: pd.DataFrame | None, profiles: pd.DataFrame | None) -> tuple[
        dict[BoardKey, pd.DataFrame], dict[BoardKey, pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame]]:
    """The boards (per-test-set ones included, costs and CIs joined), their case rows, and the
    per-test-set (run rows, case rows) of ``split_test_sets``."""
    df_runs = _finished(df_runs)
    if df_cases is not None:
        df_cases = df_cases[df_cases["run_id"].isin(df_runs["run_id"])]
    set_runs, set_cases = split_test_sets(df_runs, df_cases)
    boards = leaderboards(pd.concat([df_runs, set_runs], ignore_index=True) if len(set_runs) else df_runs)
    groups = _case_groups(pd.concat([df_cases, set_cases], ignore_index=True) if len(set_cases) else df_cases)
    join_cost(boards, profiles)
    join_ci(boards, groups)
    return boards, groups, (set_runs, set_cases)


def _check_format(fmt: str) -> str:
    if fmt not in ReportFormat.__members__:
        raise BenchError(f"unknown report format {fmt!r}; expected one of: {', '.join(ReportFormat.__members__)}")
    return fmt


def render_cases(df_cases: pd.DataFrame | None) -> str:
    """The ``cases`` format: every run × case × class row (``records.load(level="case")``) as CSV,
    led by the run's board and model labels, so any statistic can be recomputed elsewhere (R's
    challengeR, a spreadsheet) on the rows behind a board; the per-test-set boards of polyp and
    isic_all runs take the rows whose ``case`` starts with "<set>/"."""
    if df_cases is None or df_cases.empty:
        return ",".join(["board_dataset", "board_protocol", "model_label", *RUN_ID_COLUMNS, *CASE_COLUMNS]) + "\n"
    df = label_cases(df_cases)
    lead = ["board_dataset", "board_protocol", "model_label"]
    return df[lead + [c for c in df.columns if c not in lead]].to_csv(index=False, lineterminator="\n")


def _check_reference(reference: str, groups: dict[BoardKey, pd.DataFrame], results_dir: Path) -> None:
    """BenchError when ``reference`` names no model (nor a board row such as "unet (widths=...)") of
    any board: a typo would print 'no runs on this board' under every board."""
    rows = [g[["model", "model_label"]] for g in groups.values()]
    names = sorted(set(pd.concat(rows).stack())) if rows else []
    if reference in names:
        return
    close = difflib.get_close_matches(reference, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise BenchError(f"--reference {reference!r}: no runs of that model in {results_dir} (models there: "
                     f"{', '.join(names) or 'none'}){hint}")


def select_runs(df_runs: pd.DataFrame, models: list[str] | None = None, datasets: list[str] | None = None,
                results_dir: Path | str = "", profiled: Iterable[str] = ()) -> pd.DataFrame:
    """The runs of ``models`` on ``datasets`` (a reader's name such as ``synapse``, or a board's data
    name such as ``nnunet:ACDC``); None: all. BenchError for a name no run has, with the names there,
    unless ``profiled`` has it (a model with a cost table only)."""
    for option, names, columns in (("--models", models, ["model"]), ("--dataset", datasets, ["dataset", "dataset_name"])):
        if not names:
            continue
        have = sorted({str(v) for c in columns if c in df_runs for v in df_runs[c].dropna()})
        for name in names:
            if name not in have and not (option == "--models" and name in set(profiled)):
                close = difflib.get_close_matches(name, have, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                if option == "--models" and close:  # a registered model without runs is no misspelling
                    from bench.registry import list_models

                    hint = "" if name in list_models() else hint
                raise BenchError(f"{option} {name}: no runs of it in {results_dir} (there: {', '.join(have) or 'none'})"
                                 f"{hint}")
        df_runs = df_runs[np.logical_or.reduce([df_runs[c].isin(names) for c in columns if c in df_runs])]
    return df_runs


def write_report(results_dir: Path, fmt: str | ReportFormat = "md", out: Path | None = None,
                 published: Path | bool | None = None, reference: str | None = None,
                 models: list[str] | None = None, datasets: list[str] | None = None,
                 columns: tuple[str, ...] | None = None) -> str:
    """Render the report of ``results_dir``; if ``out`` is given, also write it there atomically.

    Accuracy boards gain GMAC columns from ``bench profile`` records of the same model and input
    size and a bootstrap 95% CI over cases; Markdown reports end with, when asked, paired tests
    against ``reference`` and, with ``published`` (True: the repo's ``results/published.csv``, or
    a path), a published-vs-ours table per board, then the cost tables; with ``out``, the plots of
    ``bench.plots`` are written to ``<out stem>_files/`` beside it and linked. ``models`` /
    ``datasets``: only their runs (and profiles of those models; ``select_runs``). ``columns``: the
    boards' ``COLUMN_GROUPS`` (Markdown, LaTeX; None: all)."""
    from bench.cost import load_profiles

    fmt = ReportFormat(fmt.value if isinstance(fmt, ReportFormat) else _check_format(fmt))
    if (reference or published) and fmt != ReportFormat.md:
        asked = [o for o, v in (("--reference", reference), ("--published", published)) if v]
        raise BenchError(f"{' and '.join(asked)} add{'s' if len(asked) == 1 else ''} Markdown sections; use "
                         f"--format md (got --format {fmt.value})")
    _check_columns(columns, fmt)
    df_runs, profiles = load(results_dir), load_profiles(results_dir)  # load first: it checks the folder
    profiled = set(profiles["model"]) if profiles is not None and "model" in profiles else set()
    df_runs = _finished(select_runs(df_runs, models, datasets, results_dir, profiled))
    if models and profiles is not None and "model" in profiles:
        profiles = profiles[profiles["model"].isin(models)]
    df_cases = load(results_dir, level="case") if not df_runs.empty else None
    if df_cases is not None:
        df_cases = df_cases[df_cases["run_id"].isin(df_runs["run_id"])]
    if fmt == ReportFormat.cases:
        text = render_cases(df_cases)
    else:
        boards, groups, (set_runs, set_cases) = _boards(df_runs, df_cases, profiles)
        text = _render(boards, fmt, columns)
        if not boards and fmt == ReportFormat.md and profiles is not None and not profiles.empty:
            text = f"No finished runs in {results_dir}: the cost tables of its `bench profile` records only.\n"
        elif not boards and fmt == ReportFormat.md:  # most likely not the folder meant
            text = (f"No finished runs found in {results_dir}"
                    f"{' for these --models/--dataset' if models or datasets else ''}: pass the --results folder "
                    "of `bench run`.\n")
        if fmt == ReportFormat.md:
            extra = []
            if reference:
                if models and reference.split(" (")[0] not in models:
                    raise BenchError(f"--reference {reference!r}: not among --models {','.join(models)}; add it "
                                     "there to compare with it")
                _check_reference(reference, groups, results_dir)
                extra.append(significance_md(boards, groups, reference))
            if published:
                from bench.published import DEFAULT_NAME, load_published

                pub = load_published(None if published is True else Path(published))
                for title, table in published_tables(boards, pub, groups).items():
                    extra.append(f"## {title}\n\n{PUBLISHED_NOTE}\n\n{_md_table(table)}\n")
                # a board without a published table says why, rather than nothing at all (a pooled
                # polyp / isic_all board is compared through its per-test-set boards)
                held, silent = {d for d in pub["dataset"] if d}, []
                for key, board in boards.items():
                    data = published_dataset(key.dataset)
                    if key.dataset.split(" (")[0] in TEST_SET_DATASETS:
                        continue
                    models = sorted({m.split(" (")[0] for m in board["model"]})
                    if data not in held:
                        silent.append(f"{key.dataset} (data no paper in it reports on)")
                    elif not (pub["dataset"].eq(data) & pub["model"].isin(models)).any():
                        silent.append(f"{key.dataset} (none for {', '.join(models)})")
                if silent:
                    source = DEFAULT_NAME if published is True else str(published)
                    extra.append(f"## Published vs ours\n\nNo published numbers for {'; '.join(silent)}. {source} "
                                 f"holds data {', '.join(sorted(held))}; --published-file takes your own table of "
                                 "its columns.\n")
            cost = render_cost_md(profiles) if _shows(columns, "cost") else ""
            extra += [cost] if cost else []
            if out is not None:  # the images go beside the Markdown file, linked relatively
                from bench.plots import write_plots

                images = Path(out).parent / f"{Path(out).stem}_files"
                paths = write_plots(results_dir, images, df_runs=df_runs, df_cases=df_cases, df_profiles=profiles,
                                    set_runs=set_runs, set_cases=set_cases)
                if paths:
                    extra.append("## Plots\n\n" + "\n\n".join(
                        f"![{p.stem}](<{images.name}/{p.name}>)" for p in paths) + "\n")  # <>: names with spaces
            if extra:
                text = text.rstrip("\n") + "\n\n" + "\n".join(extra)
        text = _with_cost_latex(text, fmt, profiles, columns)
    if out is not None:
        atomic_write_text(Path(out), text)
    return text
