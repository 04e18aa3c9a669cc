"""Numeric leaderboards: mean ± std per board row, per-test-set boards, bootstrap CIs joined."""

from __future__ import annotations

import collections
import json
import math
import re
import statistics

import pandas as pd

from bench.errors import BenchError
from bench.organs import SYNAPSE_ORGANS  # in the papers' column order
from bench.records import code_version, finished, folds_text, miss_counts, split_fold
from bench.report.costs import join_cost
from bench.report.labels import CV_LABEL, BoardKey, label_cases, label_runs, overrides_text


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


def _board_classes(group: pd.DataFrame) -> list[str]:
    """The class names of a board's runs (each run's ``classes``, JSON text), in class-id order, each once."""
    return (list(dict.fromkeys(n for c in group["classes"].dropna() for n in json.loads(c)))
            if "classes" in group else [])


def _class_columns(group: pd.DataFrame) -> list[str]:
    """Per-class DSC then per-class HD95 columns with data in this board: Synapse organs in paper
    order, else class id order."""
    # this board's classes in class-id order (load's columns follow every record in the folder); a
    # class with no value in any run stays, as nan (strict: valid in no case)
    own = _board_classes(group)
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


def _board(group: pd.DataFrame) -> pd.DataFrame:
    from bench.metrics import POLICIES

    policy = POLICIES.get(group["policy"].iloc[0])
    # a metric the runs computed stays, NaN in every run too (the caption: NaN is shown): Dice and IoU
    # always, HD95 where the policy has one, the others where per-case counts of their NaNs were kept
    computed = {"dice", "iou"} | ({"hd95"} if policy is not None and policy.hd_definition else set()) | {
        m for m in ("acc", "spe", "sen") if f"n_nan_{m}" in group and group[f"n_nan_{m}"].notna().any()}
    metrics = [m for m in METRICS if m in group.columns and (group[m].notna().any() or m in computed)]
    value_cols = metrics + _class_columns(group)
    rows, repeated, repeated_runs = [], {}, []
    # a label names one configuration (and init): a key written at its paper value is the same model
    for label, runs in group.groupby("model_label", sort=False):
        config = min(runs["model_config"], key=len)  # the fewest keys: the paper's values left out
        # one seed (of one fold) run twice: its data identified otherwise (by path in older records)
        per_seed = runs.groupby(["seed", "split"] if "split" in runs else ["seed"]).size()
        if (per_seed > 1).any():
            repeated[label] = sorted({int(k[0] if isinstance(k, tuple) else k) for k in per_seed[per_seed > 1].index})
            twice = runs.set_index(list(per_seed.index.names)).index.isin(per_seed[per_seed > 1].index)
            repeated_runs.append(sorted(runs.loc[twice, "run_id"]))
        row = {
            "model": label,
            "family": runs["family"].iloc[0],
            "init": _init_cell(runs),
            "model_config": config,
            "n_seeds": runs["seed"].nunique(),
            "seeds": ", ".join(map(str, sorted({int(s) for s in runs["seed"]}))),
            "n_runs": len(runs),
            "folds": _folds_cell(runs) if "split" in runs else "",
            "fold_set": _folds(runs["split"]) if "split" in runs else "",  # the folds alone, to compare
            # numbers (a CSV's int columns), with the runs' own counts where they differ: k-fold's folds of
            # 2 and 3 cases, a smoke run's max_cases
            "n_cases": _cases_scored(runs),
            "n_cases_per_run": _differing(runs["n_cases"]),
            # training items: the most of a run (each fold trains on others); NaN before records kept them
            "n_train": runs["n_train"].max() if "n_train" in runs else math.nan,
            "n_train_per_run": _differing(runs["n_train"]) if "n_train" in runs else "",
            # weights evaluated as given (--weights; the label names them): no training recipe applied
            "evaluated": bool("weights" in runs and runs["weights"].notna().all()),
            "params": runs["params"].mean(),
            "macs": runs["macs"].mean() if "macs" in runs else math.nan,
            "paper_macs": runs["paper_macs"].mean() if "paper_macs" in runs else math.nan,
            "peak_mem_mb": runs["peak_mem_mb"].max() if "peak_mem_mb" in runs else math.nan,  # CUDA runs
            # NaN propagates: a run whose time is unknown (resumed from an older checkpoint) shows none
            "train_time_s": runs["train_time_s"].mean(skipna=False) if "train_time_s" in runs else math.nan,
            # where that time was taken ("cpu: <model> x<threads>", "cuda: <GPU>"): a time without its machine
            # compares with nothing; evaluated weights trained nowhere here
            "train_device": _train_devices(runs),
            # structures present in a case's reference and predicted nowhere, over all runs
            "n_missed": int(runs["n_missed"].sum()) if "n_missed" in runs else 0,
            "n_present": int(runs["n_present"].sum()) if "n_present" in runs else 0,
            # bench rescore: the policies its runs were first scored under ("?": the run's record is gone)
            "rescored_from_policy": _rescored_from(runs),
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
    board = board.drop(columns=[c for c in ("n_cases_per_run", "n_train_per_run") if not board[c].any()])
    if "dice_mean" in board:
        board = board.sort_values(["dice_mean", "model"], ascending=[False, True], na_position="last")
    board = board.reset_index(drop=True)
    first = group.iloc[0]
    code = _code_versions(group)
    if code:  # each row's, in the board's order
        code["rows"] = {label: code["rows"][label] for label in board["model"]}
    board.attrs.update(
        dataset=first["dataset"],
        protocol_name=first["protocol"],
        protocol_version=int(first["protocol_version"]),
        protocol_hash=first["protocol_hash"],
        policy=first["policy"],
        binary=_binary_task(first["dataset"]),
        overrides=overrides_text(first["protocol_overrides"]),
        value_columns=value_cols,
        hd95_units=sorted(set(group["hd95_unit"].dropna())) if "hd95_unit" in group else [],
        # one for all classes (numbers), then per-class tables as records.load's text ("liver 5, spleen 3")
        nsd_tolerances=[t for col in ("nsd_tolerance", "nsd_tolerances") if col in group
                        for t in sorted(set(group[col].dropna()))],
        devices=sorted(set(group["device"].dropna())) if "device" in group else [],
        world_sizes=sorted({int(w) for w in group["world_size"].dropna()}) if "world_size" in group else [],
        code=code,  # the bench versions behind the numbers, per row too
        plugin_code=_plugin_code_changed(group),
        repeated=repeated,
        repeated_runs=repeated_runs,  # per model, the run ids of its seeds counted more than once
        run_ids={label: sorted(runs["run_id"]) for label, runs in group.groupby("model_label", sort=False)},
        # bench rescore: each rescored run's source run (its weights), by run id
        rescored_from={r: s for r, s in zip(group["run_id"], group["rescored_from"]) if isinstance(s, str)}
        if "rescored_from" in group else {},
        n_cases=sorted({int(n) for n in group["n_cases"].dropna()}),  # per run, as the caption says them
        n_train=sorted({int(n) for n in group["n_train"].dropna()}) if "n_train" in group else [],
        # bench rescore: (runs rescored, runs, their first policies, how many have their first record gone)
        rescored=_rescored_count(group),
        # records.load(recheck=True): runs whose stored numbers their case rows do not give, shown recomputed
        restated={r: t for r, t in zip(group["run_id"], group["restated"]) if isinstance(t, str)}
        if "restated" in group else {},
        # the board's classes in id order (a one-class board shows no column naming its class)
        classes=_board_classes(group),
    )
    return board


def _train_devices(runs: pd.DataFrame) -> str:
    """The devices ``runs`` trained on (CPU threads included), "; "-joined: each run's ``train_devices``
    (every device a resume moved it to), else, in older records, the device it ran on."""
    if "device" not in runs:
        return ""
    trained = runs["weights"].isna() if "weights" in runs else pd.Series(True, index=runs.index)
    where = runs["train_devices"].fillna(runs["device"]) if "train_devices" in runs else runs["device"]
    return "; ".join(sorted({d for joined in where[trained].dropna() for d in str(joined).split("; ")}))


def _rescored_from(runs: pd.DataFrame) -> str:
    """The policies the rescored ones of ``runs`` were first scored under ("legacy-synapse"; "?" where the
    run's record is gone), "" where none was rescored."""
    _, _, first, gone = _rescored_count(runs)
    return ", ".join(sorted([*first, *(["?"] if gone else [])]))


def _rescored_count(runs: pd.DataFrame) -> tuple[int, int, list[str], int]:
    """(runs rescored, runs, the policies the rescored ones were first scored under, how many of them have
    their first record gone: no policy to name)."""
    if "rescored_from" not in runs:
        return 0, len(runs), [], 0
    first = runs.loc[runs["rescored_from"].notna(), "rescored_from_policy"] if "rescored_from_policy" in runs \
        else pd.Series([None] * int(runs["rescored_from"].notna().sum()), dtype=object)
    known = [p for p in first if isinstance(p, str)]
    return len(first), len(runs), sorted(set(known)), len(first) - len(known)


def _binary_task(dataset: str) -> bool:
    """Whether the dataset's reader is a one-channel sigmoid task (ISIC, polyp): a board of one foreground
    class of softmax data (MSD Spleen in nnU-Net format) is not one."""
    from bench.data import DATASETS

    reader = DATASETS.get(dataset)
    return reader is not None and reader.num_classes == 1


def _code_versions(group: pd.DataFrame) -> dict:
    """The versions of bench's code a board's numbers came from (``records.code_version``): per run,
    every version it trained under (``train_commits``; older records: its git_commit and code_digest)
    and the one that scored it (a ``bench rescore`` record's: the rescoring code; else its training's
    last). ``versions``, ``trained``, ``scored``: sorted; ``rescored``: whether a record was rescored;
    ``rows``: per row label, its ``trained`` and ``scored``; ``split``: "same" (every run one history),
    "rows" (each row's runs one history, rows others) or "mixed"."""
    if "git_commit" not in group:
        return {}
    runs = []  # (row label, trained pairs, scoring pair, rescored): pairs are (commit, digest)
    for r in group.to_dict("records"):
        own = (_text(r.get("git_commit")), _text(r.get("code_digest")))
        listed = _text(r.get("train_commits"))
        trained = [_version_pair(v) for v in listed.split(",")] if listed else [own]
        # the record's digest names a clean commit's sources (code_version leaves them out)
        trained = [own if own[0] and pair == (own[0], None) else pair for pair in trained]
        scored = (_text(r.get("scored_commit")), _text(r.get("scored_digest")))  # bench rescore's code
        rescored = any(scored)
        runs.append((r.get("model_label") or r["model"], trained, scored if rescored else trained[-1], rescored))
    name = _version_names([pair for _, trained, scored, _ in runs for pair in (*trained, scored)])
    histories: dict[str, list[tuple[tuple[str, ...], str]]] = {}
    for label, trained, scored, _ in runs:
        histories.setdefault(label, []).append((tuple(dict.fromkeys(name[p] for p in trained)), name[scored]))
    every = [h for hs in histories.values() for h in hs]
    rows = {label: {"trained": sorted({v for t, _ in hs for v in t}), "scored": sorted({s for _, s in hs})}
            for label, hs in histories.items()}
    return {
        "versions": sorted({v for t, s in every for v in (*t, s)}),
        "trained": sorted({v for t, _ in every for v in t}),
        "scored": sorted({s for _, s in every}),
        "rescored": any(rescored for *_, rescored in runs),
        "rows": rows,
        "split": ("same" if len(set(every)) == 1 else
                  "rows" if all(len(set(hs)) == 1 for hs in histories.values()) else "mixed"),
    }


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None  # NaN: the record has none


def _version_pair(version: str) -> tuple[str | None, str | None]:
    """A ``records.code_version`` text back as its (commit, digest); "unknown" (a checkpoint older
    than commits, or none at all) as (None, None)."""
    if version.startswith("unknown"):
        return None, None
    if match := re.fullmatch(r"(?:(\S+) )?sources (\S+)", version):
        return match[1], match[2]
    return version, None


def _version_names(pairs: list[tuple[str | None, str | None]]) -> dict[tuple[str | None, str | None], str]:
    """Each (commit, digest) as the version it names (``records.code_version``), one per source digest:
    the same sources under a clean commit and in an edited tree ("-dirty": a README) are one version. A
    pair without a digest (records older than them) counts by its commit, "unknown" without one."""
    clean: dict[str, set[str]] = {}  # a clean commit names its sources, where all its pairs agree on them
    for commit, digest in pairs:
        if commit and digest and not commit.endswith("-dirty"):
            clean.setdefault(commit, set()).add(digest)
    digest_of = {c: next(iter(d)) for c, d in clean.items() if len(d) == 1}

    def key(pair: tuple[str | None, str | None]) -> str | None:
        return pair[1] or digest_of.get(pair[0]) or pair[0]

    versions: dict[str | None, tuple[str | None, str | None]] = {}
    for pair in pairs:
        if versions.get(key(pair), (None, None))[1] is None:  # a pair naming its digest names the version
            versions[key(pair)] = pair
    labels = {k: code_version(*pair) or "unknown" for k, pair in versions.items()}
    counts = collections.Counter(labels.values())
    # one clean commit with other sources (modules git does not track): its digests tell them apart
    names = {k: label if counts[label] == 1 or not versions[k][1] else f"{versions[k][0]} sources {versions[k][1]}"
             for k, label in labels.items()}
    return {pair: names[key(pair)] for pair in pairs}


def _plugin_code_changed(group: pd.DataFrame) -> dict[str, str]:
    """Per plugin model whose code changed since some of its runs trained (their records' model_code
    against its sources now): "2 of 3 runs". A run is identified by its name and configuration, not
    its code, so the board would show the old code's numbers under the model's name, unsaid. Models
    not installed now are left out (nothing to compare with)."""
    if "model_code" not in group:
        return {}
    changed = {}
    for model, codes in group.groupby("model")["model_code"]:
        codes = codes.dropna()
        if codes.empty:  # built-in models: records' code_digest names their code
            continue
        from bench.registry import model_code  # a plugin's runs only: the registry loads the models (torch)

        try:
            now = model_code(model)
        except BenchError:  # a plugin not installed here
            continue
        if (old := int((codes != now).sum())):
            changed[model] = f"{old} of {len(codes)} run(s)"
    return changed


def _folds(splits: pd.Series) -> str:
    """The cross-validation folds a model's runs tested, "0-4" or "0, 2"; "" for a fixed test split."""
    return folds_text([f for f in splits.astype(str).map(split_fold) if f is not None])


def _init_cell(runs: pd.DataFrame) -> str:
    """The pretrained file(s) (``file@sha256[:8]``) a row's trained runs started from, "scratch" where they
    started from none; "" where its weights were only evaluated (the label names them)."""
    trained = runs[runs["weights"].isna()] if "weights" in runs else runs
    if trained.empty:
        return ""
    inits = sorted({str(i) for i in trained["init"] if isinstance(i, str) and i}) if "init" in trained else []
    return "; ".join(inits) or "scratch"


def _folds_cell(runs: pd.DataFrame) -> str:
    """``_folds`` of a model's runs, and where its seeds tested other folds (an unfinished grid,
    whose mean weighs some folds more) each seed's: "0-4 (uneven: seed 0: 0-4; seed 1: 0, 1)"."""
    every = _folds(runs["split"])
    per_seed = {seed: _folds(g["split"]) for seed, g in runs.groupby("seed", sort=True)}
    if len(set(per_seed.values())) <= 1:
        return every
    return f"{every} (uneven: {'; '.join(f'seed {s}: {f}' for s, f in per_seed.items())})"


def _joined(values: pd.Series) -> str:
    uniq = sorted({int(v) for v in values.dropna()})
    return "/".join(str(v) for v in uniq)


def _differing(values: pd.Series) -> str:
    """The runs' counts, "2/3", where they differ; "" where they agree."""
    return _joined(values) if values.dropna().nunique() > 1 else ""


def per_run(row: pd.Series, column: str) -> list[int]:
    """A board row's ``n_cases`` or ``n_train`` as its runs' own counts (``<column>_per_run`` where
    they differ); [] where its records kept none."""
    differing = row.get(f"{column}_per_run")
    if isinstance(differing, str) and differing:
        return [int(n) for n in differing.split("/")]
    return [] if pd.isna(row.get(column, math.nan)) else [int(row[column])]


def _cases_scored(runs: pd.DataFrame) -> int:
    """The test cases a row's runs were scored on: a cross-validation's folds hold other cases, so
    their sum; of one split the most a run scored (max_cases scores the first of the same cases)."""
    if "split" not in runs:
        return int(runs["n_cases"].max())
    return int(runs.groupby("split")["n_cases"].max().sum())


def leaderboards(df_runs: pd.DataFrame) -> dict[BoardKey, pd.DataFrame]:
    """One numeric leaderboard per (dataset, protocol, policy), models sorted by mean DSC (without
    the CIs, per-test-set boards and older records' GMACs that ``render`` adds from case rows and
    profiles).

    A board's row is a model label (``label_runs``) with its runs': ``model, family, model_config,
    n_seeds, n_runs, folds`` (the cell shown), ``fold_set`` (the folds alone), ``n_cases`` (the test
    cases its runs were scored on: a cross-validation's summed over its folds), ``n_train`` (the most
    training items of a run; NaN before records kept them), each with ``<column>_per_run`` ("2/3", the
    runs' own counts) on boards where some row's runs differ, ``evaluated`` (weights evaluated as given), ``params, macs,
    paper_macs`` (means; the records' own counts), ``peak_mem_mb`` (max), ``train_time_s`` (mean),
    ``train_device`` (where: CPU threads included), ``n_missed, n_present`` (sums: structures predicted nowhere / present); where records count
    them, ``dice_n_na`` / ``dice_n_entries`` (case × class entries without a Dice, summed over
    runs / all entries: what ``strict`` left out of the means); then ``<col>_mean``/``<col>_std``/
    ``<col>_n_nan`` (runs whose value is NaN) for each value column: the aggregate metrics the runs
    computed (``METRICS`` order: dice, hd95, nsd, iou, acc, spe, sen; values as stored, in [0, 1]
    and HD95 units), then per-class ``dice/<name>`` and ``hd95/<name>`` (with data) where a board
    has two or more classes. ``board.attrs`` holds the dataset, protocol name, version, hash and
    overrides, the ordered value columns, HD95 units, NSD tolerances, devices, code versions,
    changed plugin code, repeated seeds and training-set sizes. Keys are ``BoardKey`` named tuples
    (plain tuples work too). Runs whose status is not "finished" are left out.
    """
    if df_runs.empty:
        return {}
    df = label_runs(finished(df_runs))
    boards: dict[BoardKey, pd.DataFrame] = {}
    for (dataset, protocol, policy), group in df.groupby(["board_dataset", "board_protocol", "policy"], sort=True):
        boards[BoardKey(dataset, protocol, policy)] = _board(group)
    return boards


CI_METRICS = ("dice", "hd95", "nsd")  # where the rows carry them


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
        if isinstance(run.get("rescored_from"), str):  # its source's run on this set
            run["rescored_from"] = f"{run['rescored_from']}@{test_set}"
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
        # the fewest cases a row's bootstrap resampled: its caption's caution (stats.ci_caution)
        board.attrs["ci_cases"] = int(cases.groupby("model_label")["case"].nunique().min())
        for metric in CI_METRICS:
            if f"{metric}_mean" not in board or cases[metric].notna().sum() == 0:
                continue
            ci = stats.bootstrap_ci(cases, metric, key.policy)
            cis = [ci.get(m, (math.nan, math.nan)) for m in board["model"]]
            board[f"{metric}_ci_lo"], board[f"{metric}_ci_hi"] = [c[0] for c in cis], [c[1] for c in cis]


def join_pooled(boards: dict[BoardKey, pd.DataFrame], groups: dict[BoardKey, pd.DataFrame]) -> None:
    """Add ``dice_pooled`` to cross-validation boards: per seed, the DSC of all its folds' validation
    cases scored together under the board's policy (what nnU-Net's cross-validation summary gives,
    where the board's mean is over the folds' own scores), averaged over seeds. ``groups``: the case
    rows per board (``_case_groups``)."""
    from bench import metrics

    for key, board in boards.items():
        cases = groups.get(key)
        if CV_LABEL not in key.dataset or cases is None or "dice_mean" not in board:
            continue
        pooled = {label: statistics.fmean(metrics.aggregate(seed_rows, key.policy)["dice"]
                                          for _, seed_rows in rows.groupby("seed"))
                  for label, rows in cases.groupby("model_label")}
        board["dice_pooled"] = [pooled.get(m, math.nan) for m in board["model"]]


def _boards(df_runs: pd.DataFrame, df_cases: pd.DataFrame | None, profiles: pd.DataFrame | None) -> tuple[
        dict[BoardKey, pd.DataFrame], dict[BoardKey, pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame]]:
    """The boards (per-test-set ones included, costs, CIs and cross-validation boards' pooled DSC joined),
    their case rows, and the per-test-set (run rows, case rows) of ``split_test_sets``."""
    df_runs = finished(df_runs)
    if df_cases is not None:
        df_cases = df_cases[df_cases["run_id"].isin(df_runs["run_id"])]
    set_runs, set_cases = split_test_sets(df_runs, df_cases)
    boards = leaderboards(pd.concat([df_runs, set_runs], ignore_index=True) if len(set_runs) else df_runs)
    groups = _case_groups(pd.concat([df_cases, set_cases], ignore_index=True) if len(set_cases) else df_cases)
    join_cost(boards, profiles)
    join_ci(boards, groups)
    join_pooled(boards, groups)
    return boards, groups, (set_runs, set_cases)
