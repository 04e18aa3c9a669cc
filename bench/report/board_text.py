"""The boards as text: Markdown, LaTeX and CSV, their captions and ``--columns`` groups; the ``cases`` CSV."""

from __future__ import annotations

import collections
from collections.abc import Iterable
import math

import pandas as pd

from bench.errors import BenchError, counted, did_you_mean, few
from bench.names import name_list
from bench.protocol import builtin_difference
from bench.stats import ci_caution
from bench.records import CASE_COLUMNS, RUN_ID_COLUMNS, short_commit
from bench.report.boards import METRICS, _code_versions, _joined, _rescored_from, class_display
from bench.report.costs import _g
from bench.report.formats import ReportFormat
from bench.report.labels import CV_LABEL, BoardKey, label_cases, label_runs
from bench.report.tables import _align, as_counts, latex_header, latex_table, md_table


_CSV_KEY_COLUMNS = ["dataset", "protocol", "protocol_version", "protocol_hash", "protocol_builtin", "policy", "hd95_unit",
                    "code"]
_BOARD_COLUMNS = ["model", "family", "init", "model_config", "n_seeds", "n_runs", "folds", "n_cases", "params"]


def _display_name(col: str, dataset: str = "") -> str:
    if col in METRICS:
        return METRICS[col][0]
    metric, name = col.split("/", 1)
    name = class_display(name, dataset)
    return name if metric == "dice" else f"{name} {METRICS[metric][0]}"


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
    if not _hd95_of_misses(board).any():
        return ""
    return ", ".join(f"{r.model} {r.n_missed} of {r.n_present}" for r in board.itertuples())


def _hd95_of_misses(board: pd.DataFrame) -> pd.Series:
    """The rows whose HD95 mean holds misses scored 0, the best value: the board's policy scores a structure
    predicted nowhere so (legacy-synapse) and the row's runs missed some. Such a mean is no segmentation's."""
    if "hd95_mean" not in board or "n_missed" not in board or not _misses_score_zero(board.attrs.get("policy")):
        return pd.Series(False, index=board.index)
    return board["n_missed"] > 0


def _misses_score_zero(policy_name: str | None) -> bool:
    """Whether the policy scores a structure predicted nowhere HD95 0, the best value (legacy-synapse)."""
    from bench.metrics import POLICIES

    policy = POLICIES.get(policy_name)
    return policy is not None and policy.misses_score_zero


def and_list(items: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def single_run(rows: pd.DataFrame) -> bool:
    """Whether each row of a board holds one run, so its mean has no ± std (the caption and Methods say so).
    ``rows``: the board (its ``n_runs``) or its labelled runs (one row per run, ``model_label``)."""
    counts = rows["n_runs"] if "n_runs" in rows else rows.groupby("model_label")["run_id"].nunique()
    return bool((counts == 1).all())


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
# paper: the papers' table layout; its "paper" mark (no group) keeps the metrics their tables report, the
# per-class cells as means, and sets the best value of each column in bold
COLUMN_PRESETS = {"all": tuple(COLUMN_GROUPS), "paper": ("paper", "metrics", "classes")}
# what the papers report: TransUNet's lineage DSC and HD95 per organ set; VM-UNet's ISIC tables these five
PAPER_METRICS = {"classes": ("dice", "hd95", "nsd"), "binary": ("dice", "iou", "acc", "spe", "sen")}


def paper_layout(columns: tuple[str, ...] | None) -> bool:
    """Whether ``columns`` (``parse_columns``') hold the ``paper`` preset's mark."""
    return columns is not None and "paper" in columns


def _paper_metrics(board: pd.DataFrame) -> tuple[str, ...]:
    """The metrics the papers report for the board's task (``PAPER_METRICS``)."""
    return PAPER_METRICS["binary" if board.attrs.get("binary") else "classes"]


def board_title(dataset: str, protocol: str, version: int, protocol_hash: str, overrides: str, policy: str) -> str:
    """A board's title, as captions and the Methods text head it: "synapse · protocol synapse v1 (hash) ·
    policy legacy-synapse", with "· OFF-PROTOCOL (<overrides>)" where the runs set some, and where a built-in's
    name names other content ", a modified copy (built-in: <hash>)" (``protocol.builtin_difference``)."""
    off = f" · OFF-PROTOCOL ({overrides})" if overrides else ""
    other = builtin_difference(protocol, version, protocol_hash)
    return f"{dataset} · protocol {protocol} v{version} ({protocol_hash}){f', {other}' if other else ''}{off} · policy {policy}"


def parse_columns(text: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """``--columns``: a comma list (or a list) of ``COLUMN_GROUPS`` and presets (``all``, ``paper``: the
    metrics and per-class DSC, as the papers' tables) -> groups; None (all) for None. BenchError naming
    the unknown."""
    picked = name_list(text)
    if picked is None:  # None or "all"
        return None
    groups: list[str] = []
    for name in (n.lower() for n in picked):
        if name in COLUMN_PRESETS:
            groups += COLUMN_PRESETS[name]
        elif name in COLUMN_GROUPS:
            groups.append(name)
        else:
            known = [*COLUMN_PRESETS, *COLUMN_GROUPS]
            raise BenchError(f"--columns {name!r}: not a column group{did_you_mean(name, known)}. Groups: {'; '.join(f'{k} ({v})' for k, v in COLUMN_GROUPS.items())}; presets: "
                             "all, paper (the papers' layout: their metrics and per-class DSC, the best in bold)")
    if not groups:
        raise BenchError(f"--columns {text!r} names no column group; e.g. paper, or metrics,classes")
    return tuple(dict.fromkeys(groups))


def _display_table(board: pd.DataFrame, columns: tuple[str, ...] | None = None,
                   cases: pd.DataFrame | None = None) -> pd.DataFrame:
    """Strings for humans: one column per metric, "81.23 ± 0.45"; of the ``COLUMN_GROUPS`` in
    ``columns`` only (None: all). ``cases``: the board's case rows, where the paper layout tests its bold."""
    # Init goes with the metrics: a board mixing pretrained and scratch rows is no architecture comparison alone
    group: dict[str, str] = {"Family": "family", "Init": "metrics", "Seeds": "seeds", "Folds": "seeds", "Params (M)": "params",
                             "DSC n/a": "metrics", "Train time": "time", "Train GPU peak (MB)": "time",
                             "GMACs (scan incl.)": "cost", "thop GMACs": "cost"}
    out = pd.DataFrame(
        {
            "Model": board["model"],
            "Family": board["family"],
            # weights only evaluated: one scoring of a given file, no training seed
            "Seeds": [
                "— (given weights)" if given else str(s) if s == r else f"{s} ({r} runs)"
                for s, r, given in zip(board["n_seeds"], board["n_runs"],
                                       board["evaluated"] if "evaluated" in board else [False] * len(board))
            ],
            "Params (M)": [_fmt_params(p) for p in board["params"]],
        }
    )
    if "folds" in board and board["folds"].astype(bool).any():
        out.insert(3, "Folds", board["folds"])
    if "init" in board and not board["init"].isin(["scratch", ""]).all():  # some row started pretrained
        out.insert(2, "Init", ["; ".join(f.split("@")[0] for f in i.split("; ")) for i in board["init"]])
    if _has_exclusions(board):
        out["DSC n/a"] = ["" if math.isnan(n) else f"{int(n)}/{int(t)}"
                          for n, t in zip(board["dice_n_na"], board["dice_n_entries"])]
    if "train_time_s" in board and board["train_time_s"].notna().any():
        out["Train time"] = [_fmt_duration(v) for v in board["train_time_s"]]
    if "peak_mem_mb" in board and board["peak_mem_mb"].notna().any():  # training on CUDA, the most of its runs
        out["Train GPU peak (MB)"] = ["" if math.isnan(v) else f"{v:.0f}" for v in board["peak_mem_mb"]]
    if "macs" in board and board["macs"].notna().any():  # the runs' own counts (older records: join_cost's)
        out["GMACs (scan incl.)"] = [_g(v) for v in board["macs"]]
        out["thop GMACs"] = [_g(v) for v in board["paper_macs"]]
    heads: dict[str, str] = {}  # value column -> its display column
    for col in board.attrs["value_columns"]:
        head = _display_name(col, board.attrs.get("dataset", ""))
        if col in METRICS:
            unit = "%" if METRICS[col][1] else _one_hd95_unit(board) if col == "hd95" else ""
            head += f" {METRICS[col][2]}" + (f" ({unit})" if unit else "")
        cells = zip(board[f"{col}_mean"], board[f"{col}_std"], board[f"{col}_n_nan"], board["n_runs"])
        out[head] = [_fmt_value(m, s, k, n, col) for m, s, k, n in cells]
        heads[col] = head
        group[head] = "metrics" if col in METRICS else "classes" if col.startswith("dice/") else "class-hd95"
        if f"{col}_ci_lo" in board:  # joined by join_ci (bootstrap over cases)
            scale = 100.0 if METRICS[col][1] else 1.0
            ci = f"{_display_name(col, board.attrs.get('dataset', ''))} 95% CI"
            out[ci] = ["" if math.isnan(lo) else f"[{lo * scale:.2f}, {hi * scale:.2f}]"
                       for lo, hi in zip(board[f"{col}_ci_lo"], board[f"{col}_ci_hi"])]
            group[ci] = "ci"
    if columns is not None:
        out = out[[c for c in out.columns if c == "Model" or group[c] in columns]]
    if paper_layout(columns):
        out = _paper_table(board, out, heads, cases)
    return out


def _mixes_evaluated(board: pd.DataFrame) -> bool:
    """Whether a board holds both runs trained here and weights only evaluated (``bench run --weights``)."""
    return "evaluated" in board and 0 < int(board["evaluated"].astype(bool).sum()) < len(board)


def _paper_table(board: pd.DataFrame, shown: pd.DataFrame, heads: dict[str, str],
                 cases: pd.DataFrame | None = None) -> pd.DataFrame:
    """``--columns paper``: the metrics the papers report for such a board (``PAPER_METRICS``), the
    per-class cells as means, and ``shown.attrs["best"]``: per column, the rows holding its best mean
    among the rows ``_bold_excluded`` leaves (``attrs["no_best"]``: why a column has none);
    ``attrs["tested"]``: per column of one best row, its paired test against the runner-up over
    ``cases`` (the board's case rows; ``_runner_up_test``), its cell marked where the test does not back
    it (``_bold_mark``)."""
    paper = _paper_metrics(board)
    shown = shown.drop(columns=[h for c, h in heads.items() if c in METRICS and c not in paper and h in shown])
    best: dict[str, list[int]] = {}
    no_best: dict[str, str] = {}
    tested: dict[str, dict] = {}
    for col, head in heads.items():
        if head not in shown:
            continue
        means = board[f"{col}_mean"].astype(float)
        if col.startswith("dice/"):
            shown[head] = [_fmt_value(m, math.nan, k, n, col)
                           for m, k, n in zip(means, board[f"{col}_n_nan"], board["n_runs"])]
        metric = METRICS[col.split("/", 1)[0]]
        # as the cells print them ("82.75" twice is a tie, whatever the third decimal was)
        values = pd.Series([float(f"{v:.2f}") for v in means * (100.0 if metric[1] else 1.0)], index=means.index)
        if values.nunique() < 2:  # one value for all (every model 0.00): nothing stands out
            continue
        out, why = _bold_excluded(board, col)
        values = values.where(~out)
        if values.notna().any():
            top = values.min() if metric[2] == "↓" else values.max()
            best[head] = [i for i, v in enumerate(values) if v == top]
            if (test := _runner_up_test(board, col, values, best[head], cases)) is not None:
                tested[head] = test
                if mark := _bold_mark(test):
                    shown.iat[best[head][0], shown.columns.get_loc(head)] += f" {mark}"
        else:
            no_best[head] = why
    shown.attrs.update(best=best, no_best=no_best, tested=tested, cols={head: col for col, head in heads.items()})
    return shown


def _bold_excluded(board: pd.DataFrame, col: str) -> tuple[pd.Series, str]:
    """The rows whose mean in ``col`` cannot be a column's best, and why none is where no row is left:
    each reason naming the rows it removed ("every model" where it removed all). One rule: a value that a
    miss earns is no segmentation's. HD95 under a policy scoring misses 0, the models that missed some
    structure (their 0 is the rule's: ``_hd95_of_misses``); Spe and Acc, those that found none (background
    everywhere scores Spe 100); on a board mixing runs trained here with weights only evaluated, the
    evaluated ones (trained elsewhere: no comparison of the protocol's trainings)."""
    none = pd.Series(False, index=board.index)
    rules = [
        (_hd95_of_misses(board) if col == "hd95" else none, "{} missed some structure, which the policy scores HD95 0"),
        (_found_nothing(board) if col in ("spe", "acc") else none,
         "{} found no structure (background everywhere scores Spe 100)"),
        (board["evaluated"].astype(bool) if _mixes_evaluated(board) else none, "the weights of {} were only evaluated"),
    ]
    out, why = none, []
    for rows, reason in rules:  # each reason names the rows it removes, not removed before
        if (new := rows & ~out).any():
            who = "every model" if new.all() else and_list(list(board["model"][new]))
            why.append(reason.format(who))
            out = out | new
    return out, "; ".join(why)


def _found_nothing(board: pd.DataFrame) -> pd.Series:
    """Rows whose runs missed every structure present (``n_missed`` of ``n_present``): no segmentation."""
    if "n_missed" not in board or "n_present" not in board:
        return pd.Series(False, index=board.index)
    return (board["n_present"] > 0) & (board["n_missed"] == board["n_present"])


def _runner_up_test(board: pd.DataFrame, col: str, values: pd.Series, top: list[int],
                    cases: pd.DataFrame | None) -> dict | None:
    """The board's paired test (``stats.paired_tests``: Wilcoxon over cases, or the permutation test of
    a pooled policy) of a column's one best row against the runner-up, the next best of ``values``
    (its rows that may be best): {"runner_up", "p", "n", "metric", "favours"}, ``favours`` the row the
    test's difference favours (a per-case test's effect size, a pooled one's difference: the best mean can
    rest on a few cases while most favour the runner-up); None where there is none to run (a tie at the
    top, a per-class column, no case rows, or a p that is nan)."""
    from bench import stats

    rest = values.drop(values.index[top]).dropna()
    if len(top) != 1 or col not in METRICS or cases is None or rest.empty or col not in cases:
        return None
    runner = board["model"].loc[rest.idxmin() if METRICS[col][2] == "↓" else rest.idxmax()]
    pair = cases[cases["model_label"].isin([board["model"].iloc[top[0]], runner])]
    tests = stats.paired_tests(pair, runner, metrics=(col,), policy=board.attrs.get("policy"))
    if tests.empty or math.isnan(tests["p"].iloc[0]):
        return None
    test = tests.iloc[0]  # the best row against the runner-up: > 0 favours the best row (``paired_tests``)
    lead = test["effect_size"] if not math.isnan(test["effect_size"]) else (
        -test["mean_diff"] if col in stats.LOWER_IS_BETTER else test["mean_diff"])
    return {"runner_up": runner, "p": float(test["p"]), "n": int(test["n_cases"]), "metric": col,
            "favours": runner if lead < 0 else test["model"]}


# The paper layout's marks of a bold tested against the runner-up: one per meaning, each explained in the
# caption where it is used (``_bold_note``)
BOLD_MARKS = {"†": "p >= 0.05, these cases do not separate it from the runner-up",
              "‡": "p < 0.05 in the runner-up's favour: by the test the cases favour it, and the best mean rests on "
                   "a few of them"}


def _bold_mark(test: dict) -> str:
    """The mark of a tested bold (``BOLD_MARKS``): † where p >= 0.05, ‡ where p < 0.05 favours the
    runner-up, "" where the test backs the best mean."""
    if not test["p"] < 0.05:
        return "†"
    return "‡" if test["favours"] == test["runner_up"] else ""


def _one_hd95_unit(board: pd.DataFrame) -> str:
    """The board's HD95 unit where its runs share one (mm, voxels, pixels), else ""."""
    units = board.attrs.get("hd95_units", [])
    return units[0] if len(units) == 1 and units[0] != "mixed" else ""


def _fmt_duration(seconds: float) -> str:
    if math.isnan(seconds):
        return ""
    if seconds < 1:  # a smoke run's loop: "0 s" read as not timed
        return f"{seconds:.1f} s" if seconds >= 0.05 else "< 0.1 s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _caption(key: BoardKey, board: pd.DataFrame, columns: tuple[str, ...] | None = None,
             table: pd.DataFrame | None = None) -> tuple[str, str]:
    """(title, note) of a board; the note explains the ``columns`` shown (None: all). ``table``: its
    ``_display_table`` where the caller has it (the paper layout's note says what it set in bold)."""
    shown = lambda group: _shows(columns, group)  # noqa: E731
    a = board.attrs
    title = board_title(key.dataset, a["protocol_name"], a["protocol_version"], a["protocol_hash"], a["overrides"],
                        key.policy)
    seeds = _joined(board["n_seeds"])
    cases = "/".join(map(str, a.get("n_cases", []))) or "?"  # per run
    units = a.get("hd95_units", [])
    unit = _one_hd95_unit(board)
    hd = f"HD95 in {unit}" if unit else "HD95 in the policy's unit"
    if unit == "pixels" and key.dataset.split(":")[0].split(" (")[0] in ("isic17", "isic18", "isic_all", "polyp"):
        hd += " of the square model input (images are resized to it, so not the images' own pixels)"
    if len(units) > 1 or "mixed" in units:  # a mean over mm and voxels has no unit
        hd = f"HD95 units differ between or within runs ({', '.join(units)}): not comparable"
    hd = f"; {hd}" if "hd95_mean" in board else ""  # pooled ISIC boards have no HD95
    train = "/".join(str(n) for n in a.get("n_train", []))  # absent in records written before it was kept
    single = single_run(board)
    note = (
        (f"One run per model (no ± std); test cases per run: {cases}" if single else
         f"Mean ± std (sample, ddof=1) over seeds: {seeds} per model; test cases per run: {cases}")
        + f"{f'; training items: {train}' if train else ''}."
        + (f" {_percent_names(board, columns)} in %{hd}; NaN is shown, not dropped."  # where a metric is shown
           if any(shown(g) for g in ("metrics", "classes", "class-hd95", "ci")) else "")
    )
    if shown("metrics"):
        note += _metric_names_note(key, board, paper=paper_layout(columns))
    if ":" in key.dataset and len(a.get("classes", [])) == 1 and shown("metrics"):  # one's own data's one class
        note += f" Class: {a['classes'][0]}."
    if CV_LABEL in key.dataset:
        folds = sorted(set(board["fold_set"]))
        note = note.replace("over seeds: ", "over runs, one per seed and fold (each fold tests other cases, so the "
                                            "std holds the split's variance too); seeds: ")
        # nnU-Net's cross-validation summary pools every fold's validation cases into one aggregate instead
        note += (" The mean is over the folds' own scores, each over its validation cases: not nnU-Net's "
                 "cross-validation summary, which scores all folds' cases together (they differ where folds "
                 "hold different numbers of cases or per-class means leave cases out).")
        if "dice_pooled" in board and board["dice_pooled"].notna().any() and shown("metrics"):
            note += _pooled_note(board)
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
    if len(set(board["seeds"])) > 1 and shown("metrics"):  # a model's extra seeds added later, another's not
        each = "; ".join(f"{m} {s}" for m, s in zip(board["model"], board["seeds"]))
        note += (f" Seeds differ between rows ({each}): each mean is over its own seeds' training draws, and "
                 "paired tests average each model's cases over its own seeds.")
    devices = a.get("devices", [])
    if len(devices) > 1 and shown("metrics"):  # not only the time: a GPU's arithmetic is not a CPU's
        note += (f" Devices: these runs trained on {len(devices)} ({'; '.join(devices)}); a GPU's reduced "
                 "precision (TF32, autocast) and its kernels move the numbers beyond what the seed does.")
    if len(sizes := a.get("world_sizes", [])) > 1 and shown("metrics"):  # --nproc for some seeds, not others
        note += (f" Processes: these runs trained with {' or '.join(map(str, sizes))} processes; "
                 "BatchNorm's batch statistics and the order of reductions differ with them, so the numbers too.")
    if "train_time_s" in board and board["train_time_s"].notna().any() and shown("time"):
        where = (f"on {devices[0]}" if len(devices) == 1
                 else f"on different devices ({'; '.join(devices)}): not comparable between them")
        note += f" Train time: mean per run of the training loop's wall-clock time, resumes included, {where}."
    if a.get("repeated"):
        which = "; ".join(f"{m} seed {', '.join(map(str, seeds))}" for m, seeds in a["repeated"].items())
        note += (f" Repeated: {which} ran more than once here, and each run counts in the mean: a record written "
                 "before bench identified data by its content names it by its path, so a run on that data moved, "
                 "or on other data of this name, was not the same run.")
    note += code_note(a.get("code", {}))
    if plugin := a.get("plugin_code"):
        which = "; ".join(f"{m}: {n}" for m, n in plugin.items())
        note += (f" Plugin code changed since these runs trained ({which}): their numbers are the old code's.")
    if "macs" in board and board["macs"].notna().any() and shown("cost"):
        note += (" GMACs: one forward of one input at the protocol's input size (the square image, or the patch), "
                 "the selective scan included; thop GMACs: what thop counts, the convention of published tables.")
    missed = _missed_at_hd95_zero(key, board)
    if missed and any(shown(g) for g in ("metrics", "class-hd95")):
        note += (f" HD95 of misses: {key.policy} scores a structure predicted nowhere in a case HD95 0, the best "
                 f"value (the papers' rule), so misses lower a model's HD95; missed case × class entries, over all "
                 f"runs: {missed}; the strict policy scores them with a penalty instead.")
    if _has_exclusions(board) and shown("metrics"):
        note += (" DSC n/a: case × class entries with both masks empty, over all runs; strict scores them NaN and "
                 "leaves them out of the means; a class with no other entry has no mean, and the DSC is nan (as "
                 "nnU-Net's foreground mean), not a mean over the other classes.")
    n_rescored, n_runs, first, gone = a.get("rescored", (0, 0, [], 0))
    if n_rescored:
        note += (f" Rescored: scored under {key.policy} from the weights of runs trained and first scored under "
                 f"{_first_scored(n_rescored, n_runs, first, gone)}, evaluated again without retraining.")
    if restated := a.get("restated"):
        which = few([f"records/{r.split('@')[0]}.json: {t}" for r, t in restated.items()], 3, sep="; ")
        note += (f" Restated: the stored numbers of {len(restated)} record(s) differ from those this code recomputes "
                 f"from their own case rows ({which}): edited by hand, or stored by a version of bench that "
                 "aggregated otherwise; this board shows the recomputed numbers.")
    if "dice_ci_lo" in board and shown("ci"):
        over = "the model's runs, every seed and fold" if CV_LABEL in key.dataset else "seeds"
        note += (" 95% CI: percentile bootstrap over test cases of the number shown (each resample re-aggregated "
                 f"under the board's policy, then averaged over {over}): how much the test set moves these "
                 "models' number" + ("." if single else f"; the spread between "
                                         f"{'runs' if CV_LABEL in key.dataset else 'seeds'} is the ± std, not part "
                                         "of the CI.")) + ci_caution(a.get("ci_cases", 0))
    if paper_layout(columns):
        note += _bold_note(key, board, _display_table(board, columns) if table is None else table, single)
    return title, note


def _pooled_note(board: pd.DataFrame) -> str:
    """A cross-validation board's DSC pooled over all its folds' cases (``boards.join_pooled``), per row."""
    each = "; ".join(f"{m} {d * 100:.2f} over {counted(n, 'case')}"  # a row without case rows has none
                     for m, d, n in zip(board["model"], board["dice_pooled"], board["n_cases"]) if not math.isnan(d))
    seeds = "; per seed, then averaged over seeds" if (board["n_seeds"] > 1).any() else ""
    return (f" DSC pooled over all folds' validation cases, as nnU-Net's cross-validation summary scores them "
            f"(under the board's policy{seeds}): {each}.")


def _bold_note(key: BoardKey, board: pd.DataFrame, table: pd.DataFrame, single: bool) -> str:
    """The paper layout's words on its bold (``_paper_table``): best mean, among which rows; per column
    tested against the runner-up (p and its ``BOLD_MARKS``), else untested; why a column has no bold (a
    board of one row: once for all)."""
    a = table.attrs
    name = lambda head: _display_name(a["cols"][head], key.dataset)  # noqa: E731
    said = ["no bold: one model, nothing to compare"] if len(board) == 1 else []
    if a.get("best"):
        among = " among the models trained here (not the weights only evaluated)" if _mixes_evaluated(board) else ""
        rules = (["HD95 among the models that missed no structure"] if _hd95_of_misses(board).any() else []) + (
            ["Spe and Acc among the models that found some structure"]
            if {"Spe", "Acc"} & {name(h) for h in a["best"]} and _found_nothing(board).any() else [])
        text = f"Bold: each column's best mean{among}" + (f" ({'; '.join(rules)})" if rules else "")
        tested, untested = a.get("tested", {}), [h for h in a["best"] if h not in a.get("tested", {})]
        # per-class columns: the papers' tables bold them too, and no per-class test is run
        untested = (["the per-class columns"] if all(a["cols"][h] not in METRICS for h in untested)
                    else [name(h) for h in untested]) if untested else []
        if tested:
            marks = {h: _bold_mark(t) for h, t in tested.items()}
            runs = "; ".join(f"{name(h)} p = {t['p']:.3g}{f' {marks[h]}' if marks[h] else ''} against "
                             f"{t['runner_up']} over {counted(t['n'], 'case')}" for h, t in tested.items())
            legend = "".join(f"; {m}: {meaning}" for m, meaning in BOLD_MARKS.items() if m in marks.values())
            text += (f", tested against the runner-up (the next best mean) by the board's paired test over test "
                     f"cases (two-sided, unadjusted): {runs}{legend}"
                     + (f"; untested (best mean only): {few(untested, 4)}" if untested else ""))
        else:
            text += ", untested (no paired test against the runner-up)"
        said.append(text)
    said += [f"{name(h)}: no bold, {why}" for h, why in a.get("no_best", {}).items()]
    per_class = any(c.startswith("dice/") and h in table for h, c in a["cols"].items())  # none on a binary board
    said += ["per-class cells are means"] if per_class and not single else []
    text = "; ".join(said)
    return f" {text[:1].upper()}{text[1:]}." if text else ""


def _percent_names(board: pd.DataFrame, columns: tuple[str, ...] | None) -> str:
    """The metrics in % a board's caption names: those ``--columns paper`` keeps, else all of them."""
    if not paper_layout(columns):
        return "DSC, mIoU, Acc, Spe, Sen"
    shown = [m for m in _paper_metrics(board) if m in METRICS and METRICS[m][1] and f"{m}_mean" in board]
    return ", ".join(METRICS[m][0] for m in shown)


def _metric_names_note(key: BoardKey, board: pd.DataFrame, paper: bool = False) -> str:
    """What the board's mIoU/Acc/Spe/Sen are where the name could mislead: under legacy-isic the
    papers' "mIoU" is the foreground IoU of the pooled matrix; on multi-class boards they are this
    harness's own per case × class numbers (no Synapse paper reports them), whose Acc and Spe count
    every background voxel. ``paper``: ``--columns paper``, which shows none of them on multi-class boards."""
    extra = [METRICS[m][0] for m in ("iou", "acc", "spe", "sen") if f"{m}_mean" in board]
    if key.policy == "legacy-isic" and "iou_mean" in board:
        return (" mIoU: the foreground IoU of the confusion matrix pooled over the test set (the papers' name), "
                "not a mean over classes.")
    classes = [c for c in board.attrs["value_columns"] if c.startswith("dice/")]
    if extra and len(classes) > 1 and not paper:
        return f" {', '.join(extra)}: {class_metrics_said(extra, key.dataset)}."
    return ""


def class_metrics_said(extra: list[str], dataset: str) -> str:
    """How a multi-class table's ``extra`` metrics (display names of mIoU, Acc, Spe, Sen) are computed, for
    ``dataset`` (a board's, "synapse (...)" too): said alike on boards and by ``bench score``."""
    them = "them" if len(extra) > 1 else "it"
    papers = f" (no Synapse paper reports {them})" if dataset.split(" (")[0] == "synapse" else ""
    near = "; Acc and Spe count every background voxel, so they sit near 100%" if {"Acc", "Spe"} & set(extra) else ""
    return f"per case and class, one class against the rest, then averaged as DSC is{papers}{near}"


def _render_md(boards: dict[BoardKey, pd.DataFrame], columns: tuple[str, ...] | None = None,
               groups: dict[BoardKey, pd.DataFrame] | None = None) -> str:
    if not boards:
        return "No finished runs found.\n"
    parts = []
    for key, board in boards.items():
        shown = _display_table(board, columns, (groups or {}).get(key))
        title, note = _caption(key, board, columns, shown)
        align = [_align(c) for c in shown.columns]
        parts.append(f"## {title}\n\n{note}\n\n{md_table(shown, align)}\n")
    return "\n".join(parts)


def _render_latex(boards: dict[BoardKey, pd.DataFrame], columns: tuple[str, ...] | None = None,
                  groups: dict[BoardKey, pd.DataFrame] | None = None) -> str:
    # A small booktabs emitter: DataFrame.to_latex needs jinja2, which is not a dependency.
    parts = [latex_header("bench report --columns paper keeps the papers' columns.")]
    labels: collections.Counter = collections.Counter()
    for key, board in boards.items():
        table = _display_table(board, columns, (groups or {}).get(key))
        title, note = _caption(key, board, columns, table)
        if "Folds" in table:  # a range of folds ("0-4") takes an en dash
            table["Folds"] = table["Folds"].str.replace(r"(?<=\d)-(?=\d)", "–", regex=True)
        spec = "".join(_align(c)[0] for c in table.columns)
        # a column selection in the label too: two tables of one board (--columns paper, --columns cost),
        # written to two files and included in one paper, would define one label twice
        chosen = "" if columns is None else " " + " ".join(columns)
        parts.append(latex_table(title, note, f"{key.dataset} {key.protocol} {key.policy}{chosen}", table, spec,
                                  labels))
    return "\n\n".join(parts) + "\n"


def _first_scored(n_rescored: int, n_runs: int, first: list[str], gone: int) -> str:
    """The policies a board's rescored runs were first scored under, in words: "legacy-synapse (1 of 2 runs;
    the other's first record is gone)"; a run whose first record is gone has no policy to name."""
    if not gone:
        return ", ".join(first) + ("" if n_rescored == n_runs else f" ({n_rescored} of {n_runs} runs)")
    if not first:
        which = "" if n_rescored == n_runs else f"{n_rescored} of {n_runs} runs; "
        return f"another policy ({which}{'its first record is' if gone == 1 else 'their first records are'} gone)"
    known, rest = n_rescored - gone, n_rescored == n_runs  # rest: the runs not named are all those gone
    if rest:
        others = "the other's first record is" if gone == 1 else "the others' first records are"
    else:
        others = ("1 other rescored run's first record is" if gone == 1
                  else f"{gone} other rescored runs' first records are")
    return f"{', '.join(first)} ({known} of {n_runs} runs; {others} gone)"


def code_note(code: dict) -> str:
    """The caption's words on which versions of bench made a board's numbers (``code``:
    ``boards._code_versions``): every version a run trained or was scored under, and where runs differ,
    each row's: a change of code between them moves scores as a model does."""
    versions = code.get("versions", [])
    if not versions or versions == ["unknown"]:
        return ""
    if len(versions) == 1:  # a shared report says which code made its numbers
        note = f" Code: bench {_short(versions)}."
    elif code["rescored"]:  # the weights' code and the numbers' code, both
        note = f" Code: trained under bench {_short(code['trained'])}; scored under bench {_short(code['scored'])}."
    else:
        note = f" Code: these runs come from {len(versions)} versions of bench ({_short(versions)})."
    return note + code_detail(code)


def code_detail(code: dict) -> str:
    """After a board's versions are named (``code_note``, Methods), which runs ran which: every run the
    same ones, else each row's (``_rows_code``), and what "-dirty" means where one is."""
    note = ""
    if code["split"] == "same" and len(code["trained"]) > 1:
        note += " Every run was trained under each in turn (interrupted and resumed under the next)."
    elif code["split"] != "same":
        why = ("the versions follow the rows, so between rows of other code the model comparison and the code "
               "change cannot be told apart." if code["split"] == "rows" else
               "a row's mean can mix runs of several versions, and whether a change between them moved scores "
               "cannot be told apart.")
        note += (f" Code per row: {_rows_code(code['rows'])}; {why}" if len(code["rows"]) > 1
                 else f" {why[0].upper()}{why[1:]}")
    if any("-dirty" in v for v in code["versions"]):
        note += ' "-dirty": a checkout with uncommitted edits.'
    return note


def _rows_code(rows: dict[str, dict]) -> str:
    """Each row's versions (those it was scored under after, where others), in the board's order; the rows
    of the most common versions, where two or more share them and they hold no "-dirty" one, summed up
    after the others as "all other rows": a row of other code, or of uncommitted edits, is always named."""
    texts = {label: ", ".join(map(short_commit, r["trained"]))
             + (f" (scored under {', '.join(map(short_commit, r['scored']))})"
                if set(r["scored"]) - set(r["trained"]) else "") for label, r in rows.items()}
    common, n = collections.Counter(texts.values()).most_common(1)[0]
    if n == len(texts):
        return f"every row: {common}"
    if n < 2 or "-dirty" in common:
        return "; ".join(f"{label}: {text}" for label, text in texts.items())
    return "; ".join(f"{label}: {text}" for label, text in texts.items() if text != common) + \
        f"; all {n} other rows: {common}"


def _short(versions: list[str]) -> str:
    return few([short_commit(v) for v in versions], 3)


def _row_code(code: dict, label: str) -> str:
    """A board row's bench versions, in full, for the CSV's ``code`` column."""
    row = code.get("rows", {}).get(label, {})
    return "; ".join(sorted({*row.get("trained", []), *row.get("scored", [])}))


def _render_csv(boards: dict[BoardKey, pd.DataFrame]) -> str:
    frames = []
    for key, board in boards.items():
        head = pd.DataFrame(
            {
                "dataset": key.dataset,
                "protocol": key.protocol,
                "protocol_version": board.attrs["protocol_version"],
                "protocol_hash": board.attrs["protocol_hash"],
                # "a modified copy (built-in: <hash>)" where a built-in's name names other content; "" otherwise
                "protocol_builtin": builtin_difference(board.attrs["protocol_name"], board.attrs["protocol_version"],
                                                       board.attrs["protocol_hash"]) or "",
                "policy": key.policy,
                # the policy does not say it: strict's HD95 is in mm, voxels or pixels by the data
                "hd95_unit": "/".join(board.attrs.get("hd95_units", [])),
                # the bench versions the row's numbers came from (trained, scored)
                "code": [_row_code(board.attrs.get("code", {}), label) for label in board["model"]],
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
    # counts: 0, not 0.0 where another board lacks the column (n_train: empty where records did not keep it)
    as_counts(table, [c for c in values if c.endswith("_n_nan")] + [
        "n_cases", "n_train", "n_seeds", "n_runs", "n_missed", "n_present", "dice_n_na", "dice_n_entries", "params",
        "trainable_params", "macs", "paper_macs", "flops"])
    return table.to_csv(index=False, lineterminator="\n")


def _render(boards: dict[BoardKey, pd.DataFrame], fmt: ReportFormat, columns: tuple[str, ...] | None,
            groups: dict[BoardKey, pd.DataFrame] | None = None) -> str:
    """The boards in ``fmt``; ``groups``: their case rows (``_boards``), where the paper layout tests its bold."""
    if fmt == ReportFormat.csv:
        return _render_csv(boards)
    return (_render_md if fmt == ReportFormat.md else _render_latex)(boards, columns, groups)


def _shows(columns: tuple[str, ...] | None, group: str) -> bool:
    """Whether the ``COLUMN_GROUPS`` chosen (None: all) include ``group``."""
    return columns is None or group in columns


def _check_columns(columns: str | Iterable[str] | None, fmt: ReportFormat) -> tuple[str, ...] | None:
    """``columns`` as groups (presets expanded, names checked: ``parse_columns``) for the format ``fmt``."""
    if columns is not None and fmt not in (ReportFormat.md, ReportFormat.latex):
        raise BenchError(f"--columns chooses the Markdown and LaTeX tables' columns; --format {fmt.value} holds every "
                         "value (select columns where you read it)")
    return parse_columns(columns)


def _check_format(fmt: str) -> str:
    if fmt not in ReportFormat.__members__:
        raise BenchError(f"unknown report format {fmt!r}; expected one of: {', '.join(ReportFormat.__members__)}")
    return fmt


def render_cases(df_cases: pd.DataFrame | None, df_runs: pd.DataFrame | None = None) -> str:
    """The ``cases`` format: every run × case × class row (``records.load(level="case")``) as CSV,
    led by the run's board and model labels, so any statistic can be recomputed elsewhere (R's
    challengeR, a spreadsheet) on the rows behind a board; the per-test-set boards of polyp and
    isic_all runs take the rows whose ``case`` starts with "<set>/". With ``df_runs`` (``records.load``),
    each row's run also gives ``code`` and ``rescored_from_policy`` before the case columns, as the
    board CSV has them per row (``_run_provenance``)."""
    extra = [] if df_runs is None else _RUN_PROVENANCE
    if df_cases is None or df_cases.empty:
        lead = ["board_dataset", "board_protocol", "model_label"]
        return ",".join([*lead, *RUN_ID_COLUMNS, *extra, *CASE_COLUMNS]) + "\n"
    df = label_cases(df_cases)
    if df_runs is not None:
        df = df.merge(_run_provenance(df_runs), on="run_id", how="left")
    lead = ["board_dataset", "board_protocol", "model_label"]
    rest = [c for c in df.columns if c not in lead + extra]
    at = rest.index("case") if "case" in rest else len(rest)  # the run's columns, then the case's
    return df[lead + rest[:at] + extra + rest[at:]].to_csv(index=False, lineterminator="\n")


_RUN_PROVENANCE = ["code", "rescored_from_policy"]


def _run_provenance(df_runs: pd.DataFrame) -> pd.DataFrame:
    """Per run: ``code``, the bench versions it trained and was scored under (``_code_versions`` over its
    board's runs, each run a row of its own, so versions are named as its board's CSV names them), and
    ``rescored_from_policy`` (``_rescored_from``: "?" where its first record is gone)."""
    out = []
    for _, runs in label_runs(df_runs).groupby(["board_dataset", "board_protocol", "policy"], sort=False):
        code = _code_versions(runs.assign(model_label=runs["run_id"]))
        out += [{"run_id": r, "code": _row_code(code, r),
                 "rescored_from_policy": _rescored_from(runs[runs["run_id"] == r])} for r in runs["run_id"]]
    return pd.DataFrame(out, columns=["run_id", *_RUN_PROVENANCE])
