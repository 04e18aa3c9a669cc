"""`bench figure`: the papers' visual comparison: rows = test cases, columns = Image | Ground truth |
one column per model, each prediction overlaid on the image in a fixed colour per class.

Predictions come from the runs' weights exactly as ``bench predict`` writes them (``run_model``,
then ``predict_cases``), so every panel is on the grid its case was scored on: ISIC/polyp at model
resolution (the image resized bilinearly to it), volumes at their own grid, shown by the axial slice
(axis 0) with the most ground-truth foreground. ``figure_panels`` returns the arrays drawn;
``draw_figure`` writes them as PNG, PDF or SVG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from bench import env, records
from bench.errors import BenchError, few
from bench.plots import PLOT_FORMATS, check_dpi, missing_glyphs_said_once, new_figure, save_figure, text_rc

if TYPE_CHECKING:
    from bench.rescore import DataRoots

__all__ = ["FigurePanels", "Column", "choose_runs", "case_dsc", "choose_cases", "figure_panels", "draw_figure"]

# class 1 always blue, 2 orange, ...: Okabe and Ito's colour-blind-safe colours without black (which hides on
# CT), then Tol's wine, olive and indigo; no red beside a green (tab10's pair fell on Synapse's two kidneys)
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#882255", "#999933",
           "#332288")
ALPHA = 0.45


@dataclass
class FigurePanels:
    """What the figure draws. Per case (row): ``images`` (H, W) grey or (H, W, 3) RGB in [0, 1],
    ``truths`` (H, W) class ids, ``slices`` the axial index shown (None for 2-D cases); per case
    and run (column): ``predictions`` (H, W) class ids and ``dsc`` the case's mean DSC over classes, %."""

    board: str
    columns: list[str]
    class_names: list[str]
    case_ids: list[str]
    slices: list[int | None]
    images: list[np.ndarray]
    truths: list[np.ndarray]
    predictions: list[list[np.ndarray]]
    dsc: list[list[float]]


@dataclass
class Column:
    """One model column: its board row's label, the run's record (its case DSCs) and the record of the
    run whose weights predict (itself, or for a rescored record the run it rescored)."""

    label: str
    rec: dict[str, Any]
    weights_of: dict[str, Any]
    board: str


def choose_runs(results_dir: Path, models: list[str] | None = None, dataset: str | None = None,
                seed: int | None = None, protocol: str | None = None, policy: str | None = None) -> list[Column]:
    """One finished run per row of one board, labelled as the board labels it (a model in two
    configurations is two columns): ``seed``'s, else the lowest seed (then fold); in ``models``'
    order, else by label. ``protocol``/``policy`` choose the board where several share the data; without
    ``policy``, the runs' own (not records ``bench rescore`` added)."""
    from bench.report import label_runs

    df = records.finished_runs(records.load(results_dir, current=policy is not None), results_dir, models, dataset,
                               rescored=policy is not None)
    for option, column, value in (("--protocol", "protocol", protocol), ("--policy", "policy", policy)):
        if value is not None:
            there = sorted(set(df[column].astype(str)))
            df = df[df[column] == value]
            if df.empty:
                raise BenchError(f"{option} {value}: no finished runs of it here (there: {', '.join(there)})")
    df = label_runs(df)
    boards = sorted(set(zip(df["board_dataset"], df["board_protocol"], df["policy"])))
    if len(boards) > 1:
        listed = "; ".join(" · ".join(b) for b in boards[:5]) + (" ..." if len(boards) > 5 else "")
        raise BenchError(f"the runs form {len(boards)} boards ({listed}); a figure shows one: choose it with "
                         "--dataset, --protocol, --policy or --models")
    if seed is not None:
        missing = sorted(set(df["model_label"]) - set(df.loc[df["seed"] == seed, "model_label"]))
        if missing:
            raise BenchError(f"--seed {seed}: no finished run of {', '.join(missing)} with that seed in {results_dir}")
        df = df[df["seed"] == seed]
    fold = df["split"].map(lambda s: -1 if (f := records.split_fold(s)) is None else f)
    df = df.assign(fold=fold)
    # the lowest fold every row has: runs of one fold share their test cases (a model lacking fold 0
    # would otherwise be shown on fold 1 beside the others' fold 0, with no case in common)
    shared = set.intersection(*(set(g["fold"]) for _, g in df.groupby("model_label")))
    if shared:
        df = df[df["fold"] == min(shared)]
    first = df.sort_values(["seed", "fold", "run_id"]).drop_duplicates("model_label")
    rank = (lambda r: (models.index(r.model), r.model_label)) if models else (lambda r: (r.model_label,))
    board = " · ".join(boards[0])
    columns = []
    for row in sorted(first.itertuples(), key=rank):
        rec = records.read_record(results_dir, row.run_id)
        if rec.get("rescored_from") and not records.record_path(results_dir, rec["rescored_from"]).is_file():
            raise BenchError(records.source_missing(results_dir, rec))  # its weights are predicted as its run's
        source = records.read_record(results_dir, rec["rescored_from"]) if rec.get("rescored_from") else rec
        columns.append(Column(row.model_label, rec, source, board))
    return columns


def case_dsc(rec: dict[str, Any]) -> dict[str, float]:
    """Each scored case's mean DSC over classes (NaN values left out, as the boards' case values)."""
    values: dict[str, list[float]] = {}
    for row in rec["per_case"]:
        # a NaN DSC (strict: both masks empty) is null in the record, None here
        values.setdefault(row["case"], []).append(math.nan if row["dice"] is None else float(row["dice"]))
    return {case: _nanmean(v) for case, v in values.items()}


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def choose_cases(per_run: Sequence[dict[str, float]], cases: Sequence[str] | None = None, n: int = 3) -> list[str]:
    """``cases`` as given (each must be scored by every run), else the ``n`` cases where the runs
    differ most: the largest range of their case values (cases without one last), ties by case id."""
    common = sorted(set.intersection(*(set(d) for d in per_run))) if per_run else []
    if not common:
        raise BenchError("the chosen runs have no scored test case in common (runs of other folds?)")
    if cases:
        for case in cases:
            if case not in common:
                raise BenchError(f"--cases {case}: not a test case the runs were scored on (there: {few(common)})")
        return list(dict.fromkeys(cases))
    if n < 1:
        raise BenchError(f"--n-cases must be a whole number >= 1; got {n}")

    def spread(case: str) -> float:
        values = [d[case] for d in per_run if not math.isnan(d[case])]
        # rounded: 0.6 - 0.2 and 1.0 - 0.6 are one range, ordered by id, not by a rounding error
        return round(max(values) - min(values), 9) if values else -1.0

    return sorted(common, key=lambda c: (-spread(c), c))[:n]


def figure_panels(columns: list[Column], results_dir: Path, case_ids: list[str], device: torch.device | str,
                  data_roots: DataRoots | None = None) -> FigurePanels:
    """Predict ``case_ids`` with each run's weights and cut the panels (see ``FigurePanels``); the
    image and ground truth are the first run's (a board's runs share the data)."""
    from bench.data.intensity import intensity_stats
    from bench.data.preprocess import volume_prep
    from bench.evaluate import predict_cases
    from bench.report import class_display
    from bench.rescore import run_model

    device = env.resolve_device(device)  # "cpu", "cuda:1" as the Python API's other calls take them
    rows: dict[str, dict[str, Any]] = {c: {"preds": []} for c in case_ids}
    names: list[str] = []
    for i, column in enumerate(columns):
        model, dataset, protocol = run_model(column.weights_of, results_dir, None, "shown", data_roots=data_roots)
        model.to(device=device, dtype=protocol.torch_dtype)
        names = [class_display(n, dataset.name) for n in dataset.class_names]  # as the boards name them

        def keep(case, pred: np.ndarray, gt: np.ndarray, first: bool = i == 0) -> None:
            row = rows[case.case_id]
            if first:
                row.update(_ground(case.image, gt, pred.shape))
            k = row["slice"]
            row["preds"].append(np.asarray(pred if k is None else pred[k]).astype(np.int64))

        prep = volume_prep(dataset, protocol) if protocol.patches else None
        predict_cases(model, dataset, case_ids, protocol, keep, device=device,
                      stats=intensity_stats(dataset, protocol), prep=prep, native=False)
        del model
    scores = [case_dsc(c.rec) for c in columns]  # the board's policy's (a rescored record's own)
    return FigurePanels(
        board=columns[0].board, columns=[c.label for c in columns],
        class_names=names, case_ids=list(case_ids), slices=[rows[c]["slice"] for c in case_ids],
        images=[rows[c]["image"] for c in case_ids], truths=[rows[c]["truth"] for c in case_ids],
        predictions=[rows[c]["preds"] for c in case_ids],
        dsc=[[100.0 * s[c] for s in scores] for c in case_ids])


def _ground(image: np.ndarray, gt: np.ndarray, shape: tuple[int, ...]) -> dict[str, Any]:
    """The row's image and ground-truth panels: a volume's slice with the most foreground (its
    channel 0), a 2-D image resized to the prediction's grid (binary data is scored at model resolution)."""
    image = np.asarray(image, dtype=np.float32)
    gt = np.asarray(gt)
    k = None
    if gt.ndim == 3:
        k = int(np.argmax((gt > 0).reshape(gt.shape[0], -1).sum(axis=1)))  # argmax: the lowest on ties
        image, gt = image[k], gt[k]
        if image.ndim == 3:  # nnU-Net's channels last
            image = image[..., 0]
    elif image.ndim == 3 and image.shape[-1] != 3:  # a 2-D image of other channels than RGB
        image = image[..., 0]
    if image.shape[:2] != tuple(shape[-2:]):
        image = _resize(image, tuple(shape[-2:]))
    # a binary mask may come as fractions (foreground >= 0.5, as scored); -1 (outside a volume's region): background
    truth = (gt >= 0.5) if gt.dtype.kind == "f" else np.maximum(gt, 0)
    return {"slice": k, "image": _display(image), "truth": truth.astype(np.int64)}


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (half-pixel centres, as the binary test transform), channels kept."""
    t = torch.from_numpy(np.ascontiguousarray(image))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    out = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)[0]
    return (out[0] if image.ndim == 2 else out.permute(1, 2, 0)).numpy()


def _display(image: np.ndarray) -> np.ndarray:
    """RGB: 8-bit values scaled to [0, 1]; grey: its 1st-99th percentile window -> [0, 1]."""
    if image.ndim == 3:
        return np.clip(image / 255.0 if image.max() > 1 else image, 0, 1)
    lo, hi = np.percentile(image, [1, 99])
    return np.clip((image - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(image)


def _overlay(labels: np.ndarray) -> np.ndarray:
    """RGBA: each class in its colour at ``ALPHA``, background transparent."""
    from matplotlib.colors import to_rgb

    rgba = np.zeros((*labels.shape, 4))
    for c in np.unique(labels[labels > 0]):
        rgba[labels == c] = (*to_rgb(PALETTE[(int(c) - 1) % len(PALETTE)]), ALPHA)
    return rgba


def draw_figure(panels: FigurePanels, out: Path, dpi: int = 200) -> Path:
    """Write the figure to ``out`` (.png at ``dpi``, or vector .pdf or .svg, their panels' images
    resampled at ``dpi``: matplotlib rasterises an imshow at the saving dpi) atomically."""
    import matplotlib

    check_dpi(dpi)
    # names drawn as written (a "$" is no math), in a font that has them, or its lack said once
    with matplotlib.rc_context(text_rc()), missing_glyphs_said_once(Path(out).name):
        return _draw(panels, out, dpi)


def _draw(panels: FigurePanels, out: Path, dpi: int) -> Path:
    from matplotlib.patches import Patch

    n_rows, n_cols = len(panels.case_ids), 2 + len(panels.columns)
    band = 0.22 * math.ceil(len(panels.class_names) / 5) + 0.1  # inches under the panels for the legend
    height = 2.2 * n_rows + band
    fig = new_figure(figsize=(2.2 * n_cols, height))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, case in enumerate(panels.case_ids):
        image = panels.images[r]
        shown = [None, panels.truths[r], *panels.predictions[r]]
        for col, labels in enumerate(shown):
            ax = axes[r, col]
            ax.imshow(image, cmap=None if image.ndim == 3 else "gray", vmin=0, vmax=1, interpolation="nearest")
            if labels is not None:
                ax.imshow(_overlay(labels), interpolation="nearest")
            if col >= 2 and not math.isnan(d := panels.dsc[r][col - 2]):
                ax.text(0.03, 0.97, f"{d:.1f}", transform=ax.transAxes, va="top", ha="left", fontsize=8,
                        color="white", bbox={"facecolor": "black", "alpha": 0.6, "pad": 1.5, "lw": 0})
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(["Image", "Ground truth", *panels.columns][col], fontsize=9)
        k = panels.slices[r]
        axes[r, 0].set_ylabel(case if k is None else f"{case}\nslice {k}", fontsize=8)
    handles = [Patch(color=PALETTE[i % len(PALETTE)], alpha=ALPHA, label=name)
               for i, name in enumerate(panels.class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, band / height, 1, 1))
    return save_figure(fig, Path(out), dpi=dpi)


def check_out(out: Path) -> None:
    """BenchError unless ``out``'s suffix names one of ``plots.PLOT_FORMATS``."""
    if out.suffix.lower().lstrip(".") not in PLOT_FORMATS:
        raise BenchError(f"--out {out}: the figure is written as {', '.join('.' + f for f in PLOT_FORMATS)} (by its "
                         f"suffix); got {out.suffix or 'no suffix'}")
