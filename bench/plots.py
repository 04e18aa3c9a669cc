"""Figures from a results directory: accuracy against cost, per-class DSC, training curves.

Everything here reads what ``bench run`` and ``bench profile`` wrote and draws PNGs; nothing is
recomputed. Boards are the leaderboards of ``bench.report`` (dataset × protocol × policy, labelled
by ``label_runs``), so a figure never mixes runs that a table would keep apart.

File names (``<board>`` = ``<dataset>__<protocol>__<policy>``, each part slugified, e.g.
``synapse-synthetic__smoke__legacy-synapse``)::

    dsc_vs_gmacs__<board>.png     DSC (%) against GMACs (scan included) from `bench profile`
    dsc_vs_params__<board>.png    DSC (%) against parameters (M) from the run records
    dsc_vs_latency__<board>.png   DSC (%) against median latency (ms), one device fingerprint
    per_class_dsc__<board>.png    per-class DSC box plots over test cases, one box per model
    training_curves__<board>.png  train loss and learning rate against step, one line per run

matplotlib is imported inside the functions (Agg backend, headless), so ``import bench.plots``
stays cheap. Every PNG is written to a temporary name in its folder and then renamed. ``style``
(``PLOT_STYLES``): "screen" for a report read on a screen, "paper" for a journal's columns.

Example::

    paths = write_plots(Path("results/demo"), Path("results/demo/plots"))
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import json
import math
import numbers
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.errors import BenchError

__all__ = ["pareto_front", "accuracy_vs_cost", "per_class_boxplots", "training_curves", "write_plots",
           "PLOT_STYLES"]


@dataclass(frozen=True)
class PlotStyle:
    """How big the plots are: ``scale`` times the screen sizes (inches), at most ``max_width`` wide, text of
    ``font`` pt (legends and point labels a size smaller), the board's title drawn or not (a paper's
    caption carries it), PNGs at ``dpi``."""

    scale: float
    max_width: float
    font: float
    title: bool
    dpi: int

    def size(self, width: float, height: float) -> tuple[float, float]:
        return min(width * self.scale, self.max_width), height * self.scale

    def rc(self) -> dict[str, Any]:
        return {"font.size": self.font, "axes.titlesize": self.font, "axes.labelsize": self.font,
                "xtick.labelsize": self.font - 1, "ytick.labelsize": self.font - 1, "legend.fontsize": self.font - 1,
                **text_rc()}


# fonts with the scripts DejaVu Sans lacks (CJK), used where installed: matplotlib takes the first that has a glyph
_FALLBACK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK KR", "Source Han Sans", "WenQuanYi Zen Hei",
                   "Droid Sans Fallback", "Noto Sans")


@functools.lru_cache(maxsize=1)
def text_rc() -> dict[str, Any]:
    """Names drawn as written: a "$" in a class or dataset name is not TeX math (two of them crashed the
    report), and the fallback fonts installed here draw what DejaVu Sans has no glyph for."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return {"text.parse_math": False,
            "font.family": ["sans-serif"],
            "font.sans-serif": ["DejaVu Sans", *(f for f in _FALLBACK_FONTS if f in installed)]}


# paper: a journal's single column is about 3.5 in (8.5-9 cm) and its double 7 in, text 6-8 pt, raster 300 dpi
PLOT_STYLES = {"screen": PlotStyle(1.0, 16.0, 10, True, 120), "paper": PlotStyle(0.5, 7.0, 7, False, 300)}


# PNG resolutions taken (--dpi, --plot-dpi; bench.cli.options keeps a copy for --help, a test keeps them equal):
# a screen's 72 up to line art's 1200 (journals ask 300-600); 0 or 20000 is a typo (the latter a gigapixel PNG)
DPI_RANGE = (50, 1200)


def check_dpi(dpi: int, option: str = "--dpi") -> int:
    """``dpi`` where it is a whole number in ``DPI_RANGE``, else one BenchError naming ``option``."""
    lo, hi = DPI_RANGE
    if isinstance(dpi, bool) or not isinstance(dpi, numbers.Integral) or not lo <= dpi <= hi:
        raise BenchError(f"{option} must be a whole number from {lo} to {hi} (dots per inch); got {dpi!r}")
    return int(dpi)


def _styled(draw):
    """``draw(..., looks=PlotStyle)`` called as ``draw(..., style="screen" | "paper", dpi=None)``, its figures
    made under the style's font sizes (matplotlib reads them as each text is created), PNGs at ``dpi`` if
    given, else the style's."""
    @functools.wraps(draw)
    def styled(*args: Any, style: str = "screen", dpi: int | None = None, **kwargs: Any) -> Any:
        import matplotlib

        looks = check_plot_style(style)
        if dpi is not None:
            looks = replace(looks, dpi=check_dpi(dpi, "--plot-dpi"))
        with matplotlib.rc_context(looks.rc()):
            return draw(*args, looks=looks, **kwargs)

    return styled


def check_plot_style(style: str) -> PlotStyle:
    """The ``PLOT_STYLES`` entry named ``style`` (any case), else one BenchError naming --plot-style."""
    if not isinstance(style, str) or style.lower() not in PLOT_STYLES:
        raise BenchError(f"--plot-style {style!r}: expected one of {', '.join(PLOT_STYLES)}")
    return PLOT_STYLES[style.lower()]


# Each built-in model keeps its colour (Okabe and Ito's colour-blind-safe palette) in every figure of every
# report, whatever else is plotted; other models and configurations take, in name order, black and Tol's
# muted colours (no hue near a built-in's), then tab20's
MODEL_COLOURS = {"unet": "#0072B2", "transunet": "#E69F00", "swin_unet": "#009E73", "vmunet": "#D55E00",
                 "vmunet_v2": "#CC79A7", "lightm_unet": "#56B4E9"}
EXTRA_COLOURS = ("#000000", "#882255", "#44AA99", "#999933", "#AA4499", "#DDCC77", "#332288", "#117733", "#CC6677")
FAMILY_MARKERS = {"cnn": "o", "transformer": "s", "ssm": "^"}  # a second cue where colours do not print
_OTHER_MARKER = "D"


# ---------------------------------------------------------------------------------------------
# helpers


def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> list[bool]:
    """For each point, whether it is on the Pareto front of *lower cost, higher score*.

    A point is dominated when another point has cost <= and score >= with at least one strict;
    identical points do not dominate each other, so duplicates on the front are all kept. A
    point with a NaN cost or score is never on the front and dominates nothing.
    """
    c = np.asarray(costs, dtype=float)
    s = np.asarray(scores, dtype=float)
    if c.shape != s.shape:
        raise ValueError(f"pareto_front: {c.size} costs but {s.size} scores")
    ok = np.isfinite(c) & np.isfinite(s)
    out = []
    for i in range(c.size):
        if not ok[i]:
            out.append(False)
            continue
        dominated = ok & (c <= c[i]) & (s >= s[i]) & ((c < c[i]) | (s > s[i]))
        out.append(not dominated.any())
    return out


def _slug(text: str) -> str:
    """``"synapse (synthetic)"`` -> ``"synapse-synthetic"``: lower case, [a-z0-9_] and dashes (no dots: LaTeX's
    graphicx reads a name's first dot as its extension's)."""
    slug = re.sub(r"[^a-z0-9_]+", "-", str(text).lower()).strip("-")
    return slug or "x"


def _board_slug(key: Sequence[str]) -> str:
    """The board's part of a file name: readable, at most 80 characters of slug, and unique through
    a short hash of the exact key (slugs drop case and non-ASCII, and long override lists would pass
    the file system's 255-byte name limit)."""
    digest = hashlib.sha256(json.dumps(list(key)).encode()).hexdigest()[:8]
    return f"{'__'.join(_slug(part) for part in key)[:80]}-{digest}"


def _board_title(key: Sequence[str]) -> str:
    dataset, protocol, policy = key
    return f"{dataset} · protocol {protocol} · policy {policy}"


def new_figure(**kwargs: Any):
    """A matplotlib Figure on its own Agg canvas (``Figure(**kwargs)``), never pyplot's: a caller's
    backend (a notebook's inline plots) stays as it was, and nothing is left open to close."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def model_colours(labels, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """One colour per model label, the same in every figure of a report (scatter plots, box plots,
    training curves): a built-in model's own (``MODEL_COLOURS``) for the first of its labels in name
    order, whatever other models are plotted; the other labels (a second configuration, a plugin) take
    ``EXTRA_COLOURS`` in name order, then tab20's. ``given``: colours chosen already, kept (``write_plots``
    takes them of all its figures' labels at once, so a label of neither kind keeps its colour between them)."""
    names = sorted(set(map(str, labels)))
    out: dict[str, Any] = {}
    for name in names:
        own = MODEL_COLOURS.get(name.split(" (")[0])
        if own is not None and own not in out.values():
            out[name] = own
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    for i, name in enumerate(n for n in names if n not in out):
        out[name] = EXTRA_COLOURS[i] if i < len(EXTRA_COLOURS) else cmap((i - len(EXTRA_COLOURS)) % cmap.N)
    return {**{name: out[name] for name in names}, **(given or {})}


PLOT_FORMATS = ("png", "pdf", "svg")  # by the file's suffix; pdf and svg: vector, for a paper


def check_plot_format(fmt: str) -> str:
    """``fmt`` where it is one of ``PLOT_FORMATS``, else one BenchError naming --plot-format."""
    if not isinstance(fmt, str) or fmt.lower() not in PLOT_FORMATS:
        raise BenchError(f"--plot-format {fmt!r}: expected one of {', '.join(PLOT_FORMATS)}")
    return fmt.lower()


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Save ``fig`` at ``path`` atomically (``fileio.atomic_write``) in the format its suffix names
    (``PLOT_FORMATS``: PNG at ``dpi``; PDF with TrueType fonts, which publishers' checks ask for; SVG
    with text as text). The report's plots and `bench figure` save through it."""
    import matplotlib

    from bench.fileio import atomic_write

    fmt = Path(path).suffix.lstrip(".").lower()

    def save(tmp: Path) -> None:
        with matplotlib.rc_context({"pdf.fonttype": 42, "svg.fonttype": "none"}):  # text stays text
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")

    with missing_glyphs_said_once(Path(path).name):
        return atomic_write(Path(path), save, suffix=f".tmp{Path(path).suffix}")


_glyph_watch = [0]  # how deep in missing_glyphs_said_once: the outermost says them


@contextlib.contextmanager
def missing_glyphs_said_once(name: str):
    """matplotlib warns once per character no font draws, at each layout: one warning for the figure
    ``name`` instead, naming them (a layout before saving, as `bench figure`'s, inside the same one)."""
    if _glyph_watch[0]:
        yield
        return
    _glyph_watch[0] += 1
    said: list = []
    try:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            yield
    finally:  # said on an error too
        _glyph_watch[0] -= 1
        missing, others = [], {}
        for w in said:
            if glyph := re.match(r"Glyph \d+ \((.+?)\) missing from", str(w.message)):
                missing.append(_character(glyph[1]))
            else:  # once each, as outside ("always" recorded repeats)
                others.setdefault((str(w.message), w.category, w.filename, w.lineno), w)
        for w in others.values():
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if missing:
            warnings.warn(f"{name}: no installed font draws {''.join(dict.fromkeys(missing))}: shown as boxes (a "
                          "font with them, such as Noto Sans CJK, is used once installed)", stacklevel=3)


def _character(shown: str) -> str:
    """The character matplotlib's warning names, as "\\N{CJK UNIFIED IDEOGRAPH-809D}" or itself."""
    import unicodedata

    name = re.fullmatch(r"\\N\{(.+)\}", shown)
    try:
        return unicodedata.lookup(name[1]) if name else shown
    except KeyError:
        return shown


def _true(value) -> bool:
    """A profile's flag as loaded (bool, numpy.bool_, or NaN where a column was missing)."""
    return isinstance(value, (bool, np.bool_)) and bool(value)


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# accuracy against cost


def _scatter(points: pd.DataFrame, xlabel: str, title: str, path: Path, left_out: Sequence[str] = (),
             looks: PlotStyle = PLOT_STYLES["screen"]) -> Path:
    """``points``: columns label, family, colour (the model's, ``model_colours``), cost, dsc (%), dsc_std (%);
    NaN-free cost and dsc; the family as the marker's shape. ``left_out``: the board's rows without such a
    cost, named under the axis (the front is of the points shown). ``looks``: sizes and fonts."""
    fig = new_figure(figsize=looks.size(7, 4.8), layout="constrained")
    ax = fig.subplots()
    front = np.array(pareto_front(points["cost"], points["dsc"]))
    for _, p in points.iterrows():
        yerr = p["dsc_std"] if _finite(p["dsc_std"]) else None
        ax.errorbar([p["cost"]], [p["dsc"]], yerr=None if yerr is None else [yerr],
                    fmt=FAMILY_MARKERS.get(p["family"], _OTHER_MARKER), color=p["colour"], ecolor=p["colour"],
                    elinewidth=1, capsize=3 * looks.scale ** 0.5, markersize=7 * looks.scale ** 0.5, alpha=0.9)
    for family in sorted(set(points["family"])):  # the legend: families by shape (the points are labelled)
        ax.plot([], [], FAMILY_MARKERS.get(family, _OTHER_MARKER), color="0.35", label=family)
    on = points[front].sort_values(["cost", "dsc"])
    if not on.empty:
        ax.step(on["cost"], on["dsc"], where="post", color="black", linewidth=1, alpha=0.6, zorder=1,
                label="Pareto front" + (" (of those shown)" if left_out else ""))
        ax.scatter(on["cost"], on["dsc"], s=110 * looks.scale, facecolors="none", edgecolors="black", linewidths=1.5,
                   zorder=3)
    log = points["cost"].min() > 0 and points["cost"].max() / points["cost"].min() > 20
    if log:
        ax.set_xscale("log")  # 0.1 M to 100 M params: on a linear axis the small models pile up at 0
        xlabel += ", log scale"
    x = np.log10(points["cost"].to_numpy(float)) if log else points["cost"].to_numpy(float)
    at = (x - x.min()) / (np.ptp(x) or 1.0)  # where each point lies across the axis, 0 to 1
    for (_, p), right in zip(points.iterrows(), at > 0.6):
        label = p["label"] if len(p["label"]) <= 40 else p["label"][:39] + "…"  # long config labels
        # labels of the right-hand points run leftwards, inside the axes, not under the legend beside them
        ax.annotate(label, (p["cost"], p["dsc"]), textcoords="offset points", xytext=(-5, 5) if right else (5, 5),
                    ha="right" if right else "left", fontsize=looks.font - 2)
    if left_out:  # a model missing from the plot could be the front's best: said, not silently dropped
        xlabel += "\nnot shown, without this cost measured like the others: " + ", ".join(left_out)
    ax.set_xlabel(xlabel)
    bars = points["dsc_std"].map(_finite).any()  # what the bars are, where a reader sees them
    ax.set_ylabel("DSC (%)" + (", bars: SD over seeds" if bars else ""))
    if looks.title:
        ax.set_title(title, fontsize=looks.font - 1)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)  # beside, not over, the points
    return save_figure(fig, path, looks.dpi)


def _timed_profiles(profiles: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Profiles with a latency taken the most common way: one fingerprint (the most common one),
    then one precision/layout/compile setting within it. Returns the rows and a title suffix."""
    from bench.records import config_dict

    timed = profiles[profiles["latency_ms_median"].map(_finite)] if "latency_ms_median" in profiles else profiles[:0]
    if timed.empty or timed["fingerprint"].isna().all():
        return timed[:0], ""
    fingerprint = timed["fingerprint"].dropna().astype(str).value_counts().index[0]
    timed = timed[timed["fingerprint"].astype(str) == fingerprint]
    how = timed[["precision", "channels_last", "compiled"]].astype(str).agg("|".join, axis=1)
    timed = timed[how == how.value_counts().index[0]]
    first = timed.iloc[0]
    layout = (" · channels_last" if _true(first["channels_last"]) else "") + (
        " · compiled" if _true(first["compiled"]) else "")
    classes = sorted({str(c["num_classes"]) for c in map(config_dict, timed.get("model_config", [])) if "num_classes" in c})
    shapes = ", ".join(sorted(set(timed["input_shape"].dropna().astype(str)))) if "input_shape" in timed else ""
    inputs = f"input {shapes or '?'}" + (f" ({'/'.join(classes)} class{'es' * (classes != ['1'])})" if classes else "")
    return timed, f"{inputs} · {fingerprint} · {first['precision']}{layout}"


@_styled
def accuracy_vs_cost(df_runs: pd.DataFrame, df_profiles: pd.DataFrame | None, out_dir: Path,
                     fmt: str = "png", *, colours: dict[str, Any] | None = None,
                     looks: PlotStyle = PLOT_STYLES["screen"]) -> list[Path]:
    """DSC (%) against GMACs, params (M) and latency (ms), one PNG per board and cost axis.

    GMACs are the boards' (``bench.report.join_cost``: the records' own counts, else the profile
    of the same model and configuration); latency comes from a ``bench profile`` row of the same
    model and configuration, input size included (``bench.report.cost_key``), among the profiles at the
    board's own input, channels and classes where there are some (``bench.report.same_input``), with
    their most common device fingerprint; the title names that input and fingerprint. A cost of another
    size or configuration is never shown for a run (patch runs are keyed by their patch's largest side, as their models are built). Error bars: std over seeds. The Pareto front
    (higher DSC, lower cost) is drawn as a step line with ringed markers. Points with a missing
    cost or DSC are left out; an axis without points writes no file.
    """
    from bench.report import cost_key, join_cost, leaderboards, same_input, scan_mark

    out_dir = Path(out_dir)
    profiles = df_profiles if df_profiles is not None else pd.DataFrame(columns=["model", "input_shape"])
    boards = leaderboards(df_runs)
    join_cost(boards, profiles)
    colour_of = model_colours([m for board in boards.values() for m in board["model"]], colours)
    written: list[Path] = []
    for key, board in boards.items():
        if "dice_mean" not in board:
            continue
        gmacs = pd.to_numeric(board["macs"], errors="coerce") / 1e9 if "macs" in board else [math.nan] * len(board)
        # the board's own input (size, channels, classes) where profiled: another's is another model's speed
        timed, timed_title = (_timed_profiles(same_input(profiles, board["model_config"])) if not profiles.empty
                              else (profiles[:0], ""))
        latency_of = {cost_key(m, c): (float(v), scan_mark(b)) for m, c, v, b in
                      zip(timed.get("model", []), timed.get("model_config", []), timed.get("latency_ms_median", []),
                          timed.get("scan_backend", []))}
        timing = [latency_of.get(cost_key(m, c), (math.nan, "")) for m, c in zip(board["model"], board["model_config"])]
        std = board["dice_std"] if "dice_std" in board else pd.Series(math.nan, index=board.index)
        plain = board["model"].tolist()
        axes = [
            ("gmacs", "GMACs", "GMACs (scan included)", gmacs, "", plain),
            ("params", "params", "Params (M)", pd.to_numeric(board["params"], errors="coerce") / 1e6, "", plain),
            ("latency", "latency", "Latency (ms, median, batch 1)", [t[0] for t in timing], f" · {timed_title}",
             [m + t[1] for m, t in zip(plain, timing)]),  # a fallback scan's timing says so
        ]
        for name, shown, xlabel, cost, extra, labels in axes:
            points = pd.DataFrame({
                "label": labels, "family": board["family"].values, "colour": [colour_of[m] for m in plain],
                "cost": np.asarray(cost, dtype=float), "dsc": board["dice_mean"].to_numpy(dtype=float) * 100,
                "dsc_std": std.to_numpy(dtype=float) * 100,
            })
            costed, scored = points["cost"].map(_finite), points["dsc"].map(_finite)
            points, left_out = points[costed & scored], points.loc[scored & ~costed, "label"].tolist()
            if len(points) < 1:
                continue
            title = f"DSC vs {shown} · {_board_title(key)}{extra}"
            written.append(_scatter(points, xlabel, title, out_dir / f"dsc_vs_{name}__{_board_slug(key)}.{fmt}",
                                    left_out, looks))
    return written


# ---------------------------------------------------------------------------------------------
# per-class DSC


@_styled
def per_class_boxplots(df_cases: pd.DataFrame, out_dir: Path, fmt: str = "png", *,
                       colours: dict[str, Any] | None = None, looks: PlotStyle = PLOT_STYLES["screen"]) -> list[Path]:
    """Per-class DSC (%) box plots over test cases, one PNG per board, one box per model.

    Input: ``records.load(results_dir, level="case")``. A case's value is its DSC averaged over
    the model's seeds (so each box has one value per test case); NaN DSC (both masks empty under
    ``strict``) is left out of the box. Classes in class-id order, models by median DSC.
    """
    from bench.metrics import POLICIES
    from bench.report import class_display, label_cases

    out_dir = Path(out_dir)
    if df_cases is None or df_cases.empty or df_cases["dice"].notna().sum() == 0:
        return []
    df = label_cases(df_cases)
    colour_of = model_colours(df["model_label"], colours)
    written: list[Path] = []
    for key, board in df.groupby(["board_dataset", "board_protocol", "policy"], sort=True):
        per_case = board.groupby(["model_label", "class", "name", "case"], sort=False)["dice"].mean().reset_index()
        per_case = per_case[per_case["dice"].map(_finite)]
        if per_case.empty:
            continue
        classes = list(dict.fromkeys(per_case.sort_values("class", kind="stable")["name"]))
        models = list(per_case.groupby("model_label")["dice"].median().sort_values(ascending=False).index)
        width = 0.8 / len(models)
        fig = new_figure(figsize=looks.size(max(6.0, 0.5 + len(classes) * (0.35 + 0.25 * len(models))), 4.8),
                         layout="constrained")
        ax = fig.subplots()
        for m, model in enumerate(models):
            colour = colour_of[model]
            data, pos = [], []
            for c, name in enumerate(classes):
                vals = per_case[(per_case["model_label"] == model) & (per_case["name"] == name)]["dice"] * 100
                if len(vals):
                    data.append(vals.to_numpy())
                    pos.append(c - 0.4 + width * (m + 0.5))
            if not data:
                continue
            ax.boxplot(data, positions=pos, widths=width * 0.85, patch_artist=True, manage_ticks=False,
                       boxprops={"facecolor": colour, "alpha": 0.6}, medianprops={"color": "black"},
                       flierprops={"markersize": 3 * looks.scale})
            ax.plot([], [], color=colour, linewidth=6, alpha=0.6, label=model)  # legend handle
        ax.set_xticks(range(len(classes)))
        ax.set_xticklabels([class_display(n, key[0]) for n in classes], rotation=30, ha="right")
        ax.set_xlim(-0.6, len(classes) - 0.4)
        pooled = getattr(POLICIES.get(key[2]), "pooled", False)  # the board's DSC is not these cases' mean
        ax.set_ylabel("DSC (%) per test case" + (" (the board's: pooled)" if pooled and not looks.title else ""))
        if looks.title:
            ax.set_title(f"Per-class DSC · {_board_title(key)}" + ("\n(each case's own DSC; the board's is pooled "
                                                                 "over all test pixels)" if pooled else ""),
                         fontsize=looks.font - 1)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
        written.append(save_figure(fig, out_dir / f"per_class_dsc__{_board_slug(key)}.{fmt}", looks.dpi))
    return written


# ---------------------------------------------------------------------------------------------
# training curves


def _tb_scalars(tb_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """``{tag: (steps, values)}`` for train/loss and train/lr; {} when there are no events.

    A resumed run appends to the same folder; a step logged twice keeps its last value."""
    if not tb_dir.is_dir() or not any(tb_dir.glob("events.out.tfevents.*")):
        return {}
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return {}
    try:
        acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
        acc.Reload()
        tags = set(acc.Tags().get("scalars", []))
        out = {}
        for tag in ("train/loss", "train/lr"):
            if tag in tags:
                by_step = {int(e.step): float(e.value) for e in acc.Scalars(tag)}
                steps = sorted(by_step)
                out[tag] = (steps, [by_step[s] for s in steps])
        return out
    except Exception:  # a truncated or foreign event file must not stop the other plots
        return {}


def _epoch_curve(train: dict) -> tuple[list[float], list[float]]:
    """The record's per-epoch mean losses, placed at each epoch's last step when known."""
    losses = [float(v) if _finite(v) else math.nan for v in (train.get("epoch_losses") or [])]
    if not losses:
        return [], []
    iterations = train.get("iterations")
    per_epoch = float(iterations) / len(losses) if _finite(iterations) and iterations else 1.0
    return [per_epoch * (i + 1) for i in range(len(losses))], losses


@_styled
def training_curves(results_dir: Path, out_dir: Path, df_runs: pd.DataFrame | None = None,
                    fmt: str = "png", *, colours: dict[str, Any] | None = None,
                    looks: PlotStyle = PLOT_STYLES["screen"]) -> list[Path]:
    """Train loss and learning rate against step, one PNG per board, one line per run, one colour and
    one legend entry per model (a grid of seeds × folds stays readable); a model of several runs logged
    by TensorBoard has its runs' mean loss drawn bold, at the steps all of them logged, over its runs thin.

    Reads ``results_dir/runs/<run_id>/tb`` (the ``train/loss`` and ``train/lr`` scalars) for
    every run that has a record (``df_runs``: ``records.load(results_dir)``, loaded here when not
    given); a run without events falls back to its record's ``train.epoch_losses`` (dashed, loss
    panel only; no learning-rate panel where no run logged one). Runs without a record (still in
    progress) are not drawn. A missing directory or no records gives an empty list.
    """
    from bench.records import TB_DIR, load, read_record, run_dir
    from bench.report import label_runs

    results_dir, out_dir = Path(results_dir), Path(out_dir)
    if not results_dir.is_dir():
        return []
    df = load(results_dir) if df_runs is None else df_runs
    if df.empty:
        return []

    def epoch_curve(run_id: str) -> tuple[list[float], list[float]]:
        # only runs without TensorBoard events need their record's train block
        rec = read_record(results_dir, run_id)
        return _epoch_curve(rec.get("train") or {})

    df = label_runs(df).sort_values(["model_label", "seed", "run_id"])
    colour = model_colours(df["model_label"], colours)
    written: list[Path] = []
    for key, runs in df.groupby(["board_dataset", "board_protocol", "policy"], sort=True):
        curves = []
        for _, run in runs.iterrows():
            trained = run.get("rescored_from")  # a rescored record shares its run's directory
            trained_id = str(trained) if isinstance(trained, str) and trained else str(run["run_id"])
            scalars = _tb_scalars(run_dir(results_dir, trained_id) / TB_DIR)
            fallback = epoch_curve(str(run["run_id"])) if "train/loss" not in scalars else ([], [])
            if scalars or fallback[0]:
                curves.append((run, scalars, fallback))
        if not curves:
            continue
        with_lr = any("train/lr" in scalars for _, scalars, _ in curves)
        fig = new_figure(figsize=looks.size(11 if with_lr else 8, 4.2), layout="constrained")
        axes = fig.subplots(1, 2 if with_lr else 1, squeeze=False)
        ax_loss, ax_lr = axes[0][0], axes[0][-1] if with_lr else None
        n_runs = collections.Counter(run["model_label"] for run, _, _ in curves)  # in the order of first appearance
        logged: dict[str, list[dict]] = {}  # per model, each run's logged loss by step
        for run, scalars, _ in curves:
            if "train/loss" in scalars:
                logged.setdefault(run["model_label"], []).append(dict(zip(*scalars["train/loss"])))
        averaged = {m for m, losses in logged.items() if len(losses) > 1}
        labelled: set[str] = set(averaged)  # their legend entry is the mean's
        for run, scalars, (ep_steps, ep_losses) in curves:
            model = run["model_label"]
            label = "_nolegend_" if model in labelled else _curve_label(run, n_runs[model])  # one entry per model
            labelled.add(model)
            line = dict(linewidth=0.6 if model in averaged else 1, color=colour[model],
                        alpha=1 if n_runs[model] == 1 else 0.35 if model in averaged else 0.6)
            if "train/loss" in scalars:
                ax_loss.plot(*scalars["train/loss"], label=label, **line)
            else:
                ax_loss.plot(ep_steps, ep_losses, "--o", markersize=3 * looks.scale, label=label, **line)
            if with_lr and "train/lr" in scalars:
                ax_lr.plot(*scalars["train/lr"], **line)
        for model in averaged:  # the seeds' mean, where every run logged the step
            losses = logged[model]
            steps = sorted(set.intersection(*(set(loss) for loss in losses)))
            ax_loss.plot(steps, [float(np.mean([loss[s] for loss in losses])) for s in steps], linewidth=1.6,
                         color=colour[model], label=f"{model} (mean of {len(losses)} runs, each thin)")
        ax_loss.set(xlabel="step", ylabel="train loss", title="Loss (dashed: the records' epoch means)"
                    if any(not scalars.get("train/loss") for _, scalars, _ in curves) else "Loss")
        if with_lr:
            ax_lr.set(xlabel="step", ylabel="learning rate", title="Learning rate")
        for ax in axes[0]:
            ax.grid(True, alpha=0.3)
        fig.legend(*ax_loss.get_legend_handles_labels(), fontsize=looks.font - 2, loc="outside right center")
        if looks.title:
            fig.suptitle(f"Training · {_board_title(key)}", fontsize=looks.font - 1)
        written.append(save_figure(fig, out_dir / f"training_curves__{_board_slug(key)}.{fmt}", looks.dpi))
    return written


def _curve_label(run: pd.Series, n_runs: int) -> str:
    """The legend entry of a model's curves: the run itself (seed, fold) where it is the only one."""
    if n_runs > 1:
        return f"{run['model_label']} ({n_runs} runs)"
    from bench.records import split_fold

    fold = split_fold(str(run.get("split") or "test"))
    return f"{run['model_label']} s{run['seed']}" + (f" fold {fold}" if fold is not None else "")


# ---------------------------------------------------------------------------------------------


def write_plots(results_dir: Path, out_dir: Path, *, df_runs: pd.DataFrame | None = None,
                df_cases: pd.DataFrame | None = None, df_profiles: pd.DataFrame | None = None,
                set_runs: pd.DataFrame | None = None, set_cases: pd.DataFrame | None = None,
                fmt: str = "png", style: str = "screen", dpi: int | None = None) -> list[Path]:
    """All figures of ``results_dir`` into ``out_dir``; the paths written (none for no runs).
    Frames a caller has already loaded from ``results_dir`` (``bench.report``) are reused;
    ``set_runs``/``set_cases``: the per-test-set boards' rows (``bench.report.split_test_sets``: a
    polyp set, an isic_all year, the boards compared with the papers), plotted like the others
    except for training curves, which are their pooled runs'. ``fmt``: one of ``PLOT_FORMATS``; ``style``:
    of ``PLOT_STYLES``; ``dpi``: the PNGs' (``DPI_RANGE``; None: the style's)."""
    fmt, _ = check_plot_format(fmt), check_plot_style(style)
    if dpi is not None:
        check_dpi(dpi, "--plot-dpi")
    from bench.profiles import load_profiles
    from bench.records import load, load_both

    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        return []
    if df_runs is None:  # as bench report reads them: the numbers the case rows give, and no stale rescore
        df_runs, loaded = load_both(results_dir, recheck=True, current=True)
        df_cases = loaded if df_cases is None else df_cases
    if df_runs.empty:
        return []
    df_cases = load(results_dir, level="case", recheck=True) if df_cases is None else df_cases
    df_profiles = load_profiles(results_dir) if df_profiles is None else df_profiles
    boards_runs = df_runs if set_runs is None or set_runs.empty else pd.concat([df_runs, set_runs], ignore_index=True)
    boards_cases = df_cases if set_cases is None or set_cases.empty else pd.concat([df_cases, set_cases],
                                                                                   ignore_index=True)
    from bench.report import label_runs

    # one colour per label across the figures (a plugin's too), whichever of them it appears in
    colours = model_colours(label_runs(boards_runs)["model_label"])
    paths = accuracy_vs_cost(boards_runs, df_profiles, out_dir, fmt, colours=colours, style=style, dpi=dpi)
    paths += per_class_boxplots(boards_cases, out_dir, fmt, colours=colours, style=style, dpi=dpi)
    paths += training_curves(results_dir, out_dir, df_runs, fmt, colours=colours, style=style, dpi=dpi)
    return paths
