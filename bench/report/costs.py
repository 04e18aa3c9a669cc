"""Cost tables of ``bench profile`` records (Markdown, LaTeX), and GMACs joined to boards whose records lack them."""

from __future__ import annotations

import collections
import json
import math
from typing import Any

import pandas as pd

from bench.records import canonical_json, config_dict
from bench.report.labels import BoardKey, model_labels
from bench.report.tables import latex_table, md_table


# --columns paper,cost: a paper's cost table, the columns readers compare (cells keep their units)
PAPER_COST = {"model": "Model", "params": "Params", "macs": "GMACs (scan incl.)", "paper_macs": "thop GMACs",
              "latency_ms_median": "Latency (ms)", "fps": "FPS"}
PAPER_COST_NOTE = ("Params: sum(p.numel()). GMACs: one forward at the input above with the selective scan counted "
                   "(1 MAC = 2 FLOPs); thop GMACs: what thop counts, the convention of most published tables (no "
                   "scan, no einsum or functional matmul). M = 10⁶, G = 10⁹.")
PAPER_TIMING_NOTE = (" Latency: median of batch-1 forwards after warm-up, on the machine named above; FPS: its inverse;"
                     " a mark such as \"(torch scan)\": the selective scan ran on a fallback, not the kernel the "
                     "model would use there.")
# A p90 over twice the median: the timed forwards were not alike (another process on the machine, CPU
# frequency changes), so the median is no steady speed. A quiet CPU gave 1.1 to 1.4 over 5 timed forwards
# (a smoke grid's tiny models); one shared with other jobs 1.9 to 6.6: 2 leaves room for the first.
NOISY_P90 = 2.0
NOISY_MARK = " (noisy)"
NOISY_NOTE = (f" \"{NOISY_MARK.strip()}\": the p90 latency is over {NOISY_P90:g}× the median, so the timed forwards "
              "varied (a busy machine): retime with bench profile on an idle one before comparing.")


def render_cost_latex(df_prof: pd.DataFrame, paper: bool = False, label: str = "cost") -> str:
    """The cost tables (``cost_tables``) as booktabs tables, the fingerprint in the caption; ``paper``:
    the columns of ``PAPER_COST`` only, named for a paper; ``label``: their labels' first word (``bench
    profile``'s own, so that its tables and a report's of the same profiles go in one paper)."""
    parts, labels = [], collections.Counter()
    for title, table in cost_tables(df_prof).items():
        table = table.drop(columns="fingerprint")  # the title names it
        note = _cost_note(table)
        if paper:
            iters = table.get("timed_iters", pd.Series(dtype=object))  # said in the note, not a column
            table = table[[c for c in PAPER_COST if c in table]].rename(columns=PAPER_COST)
            note = PAPER_COST_NOTE + (PAPER_TIMING_NOTE + _iters_note(iters) + _noisy_note(table["Latency (ms)"])
                                      if "Latency (ms)" in table else "")
        spec = "".join("l" if c in ("model", "family", "input_shape", "Model") else "r" for c in table.columns)
        # labelled by input and precision (the fingerprint would make a label of a line), numbered per machine
        name = " ".join([label, *title.split(" · ")[1:3]]) + (" paper" if paper else "")
        parts.append(latex_table(title, note, name, table, spec, labels))
    return "\n\n".join(parts)


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
    configs = pd.Series([canonical_json(config_dict(c)) if isinstance(c, (dict, str)) else "" for c in
                         (g["model_config"] if "model_config" in g else [None] * len(g))], index=g.index)
    keys = pd.Series([",".join(k) if isinstance(k, list) else None for k in
                      (g["set_keys"] if "set_keys" in g else [None] * len(g))], index=g.index)
    return model_labels(g["model"].astype(str), configs, tiny=g["tiny"] if "tiny" in g else None, set_keys=keys)


def _unit(v: Any, scale: float, unit: str) -> str:
    """``v / scale`` with its unit ("27.43 M", "0.0045 G"); empty for a missing value."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    x = v / scale
    return "0" if x == 0 else f"{x:.2f} {unit}" if abs(x) >= 1 else f"{x:.4f} {unit}"


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
            "num_classes": [config_dict(c).get("num_classes", "") for c in g.get("model_config", none)],
            "macs": [_unit(v, 1e9, "G") for v in g["macs"]],
            "scan_macs": [_unit(v, 1e9, "G") for v in g["scan_macs"]],
            "paper_macs": [_unit(v, 1e9, "G") for v in g["paper_macs"]],
            "paper_macs_missing_pct": [_num(v, ".1f") for v in g["paper_macs_missing_pct"]],
            "flops": [_unit(v, 1e9, "G") for v in flops],
            "fvcore_macs": [_unit(v, 1e9, "G") for v in g["fvcore_macs"]],
            "latency_ms_median": [_num(v, ".2f") + m + (NOISY_MARK if _noisy(v, p) else "") if t else ""
                                  for v, p, m, t in zip(g.get("latency_ms_median", none),
                                                        g.get("latency_ms_p90", none), mark, timed)],
            "latency_ms_p90": [_num(v, ".2f") if t else "" for v, t in zip(g.get("latency_ms_p90", none), timed)],
            # the forwards behind the median and p90 (bench profile --iters; older profiles: none kept)
            "timed_iters": [_num(v, ".0f") if t else "" for v, t in zip(g.get("timed_iters", none), timed)],
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
        untimed = [c for c in ("latency_ms_median", "latency_ms_p90", "timed_iters", "fps", "peak_mem_mb",
                               "train_peak_mem_mb")
                   if not table[c].astype(bool).any()]
        tables[title] = table.drop(columns=untimed)  # counts only (--no-timing): no empty timing columns
    return tables


COST_NOTE = ("params: `sum(p.numel())`; paper_params: what thop counts (called modules of the types it has a rule "
             "for: no bare `nn.Parameter`, no layer applied as a function, no Conv2d subclass). macs: our count "
             "(torch.utils.flop_counter, one multiply-add = 1 MAC = 2 FLOPs, so flops = 2 × macs) with the selective "
             "scan included (scan_macs: 9·B·L·D·N FLOPs per scan, the Mamba authors' estimate, plus the D and z "
             "terms). paper_macs: thop's count, the convention of most papers in this field (thop 0.1.1: the leaf "
             "modules it has a rule for — no scan, no einsum, no functional matmul, no Conv2d subclass); "
             "paper_macs_missing_pct: the share of macs it leaves out. fvcore_macs: a cross-check of ours (it also "
             "prices normalisation, up-sampling and pooling). num_classes: the head's classes (a board's GMACs are "
             "its runs' own count). M = 10⁶, G = 10⁹.")
TIMING_NOTE = ("latency_ms_median / p90 and fps (batch 1): forward passes of random input after warm-up, "
               "synchronised on CUDA (timed_iters: how many were timed); a mark such as \"(torch scan)\" means the "
               "selective scan ran on a fallback, not the kernel the model would use there. peak_mem_mb: a "
               "forward's peak (its kind in brackets), train_peak_mem_mb: a training step's.")


def _cost_note(table: pd.DataFrame) -> str:
    """What a cost table's columns mean; timing only where it has some (--no-timing has none)."""
    if "latency_ms_median" not in table:
        return COST_NOTE
    return COST_NOTE + " " + TIMING_NOTE + _noisy_note(table["latency_ms_median"])


def _noisy(median: Any, p90: Any) -> bool:
    """Whether a timing's p90 is over ``NOISY_P90`` × its median (a busy machine)."""
    try:
        return float(p90) > NOISY_P90 * float(median) > 0
    except (TypeError, ValueError):
        return False


def _noisy_note(latency: pd.Series) -> str:
    """``NOISY_NOTE`` where a cell of ``latency`` carries its mark, else ""."""
    return NOISY_NOTE if latency.str.contains(NOISY_MARK, regex=False).any() else ""


def _iters_note(counts: pd.Series) -> str:
    """The paper cost table's words on how many forwards were timed (``counts``: the table's
    ``timed_iters`` cells): " Timed forwards per model: 100."; "" where no profile kept the count."""
    kept = sorted({c for c in counts if c})
    if not kept:
        return ""
    return f" Timed forwards per model: {', '.join(kept)}."


def render_cost_md(df_prof: pd.DataFrame) -> str:
    parts = []
    for title, table in cost_tables(df_prof).items():
        align = ["left" if c in ("model", "family", "input_shape", "fingerprint") else "right" for c in table.columns]
        parts.append(f"## {title}\n\n{_cost_note(table)}\n\n" + md_table(table, align) + "\n")
    return "\n".join(parts)


_HEAD_KEYS = ("num_classes", "in_chans")


def cost_key(model: str, config: Any) -> str:
    """What makes a ``bench profile`` row the cost of a board row's model: the model (a board label's
    name part) and its configuration, input size included, with the output classes and input
    channels aside (they change the first and last layer only; profiles default to 9 and 3)."""
    config = config_dict(config)  # {} for a profile written before configs were kept
    return json.dumps([model.split(" (")[0], {k: v for k, v in config.items() if k not in _HEAD_KEYS}],
                      sort_keys=True)


# what a model reads and writes: a timing at another image size, channel count or head is not its cost
_INPUT_KEYS = ("img_size", "patch_size", "in_chans", "num_classes")


def same_input(df_prof: pd.DataFrame, configs) -> pd.DataFrame:
    """The profiles taken at the input of ``configs`` (a board's rows' model configurations): their
    image (or patch) size, input channels and classes as some row's; all profiles where none is (a
    board's records or older profiles that keep no such keys), as the plot's title then shows."""
    def key(config: Any) -> str:
        c = config_dict(config)
        return json.dumps([c.get(k) for k in _INPUT_KEYS])

    wanted = {key(c) for c in configs}
    kept = df_prof[[key(c) in wanted for c in df_prof.get("model_config", [None] * len(df_prof))]]
    return kept if len(kept) else df_prof


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
