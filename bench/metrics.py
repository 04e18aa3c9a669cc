"""One metrics core: per-case functions on numpy masks, named policies, aggregation on rows.

Definitions (each named, because the same name means different numbers elsewhere):

- ``dice``/``iou``: 2TP/(2TP+FP+FN) and TP/(TP+FP+FN); NaN when both masks are empty (the
  policy decides what that case scores).
- ``hd95``: medpy's definition (loli/medpy binary.py ``hd95``): surfaces are ``mask XOR
  erosion(mask)`` with face connectivity (voxels on the array border are surface), distances are
  Euclidean distance transforms, and the result is the 95th percentile (linear) of the POOLED
  distances of both directions. Voxel units unless ``spacing`` (mm per axis) is given.
- ``hd95_max_directed``: MONAI's ``HausdorffDistanceMetric(percentile=95)``: the larger of the
  two directed 95th percentiles.

Speed: distances are computed only inside the bounding box of the two masks' union plus a
one-voxel margin (clipped to the array). Every surface voxel lies inside that box, and the margin
keeps erosion at the box edge identical to erosion at the array edge, so values equal medpy's.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from bench.errors import BenchError

NAN = float("nan")


# ----------------------------------------------------------------------------------- mask metrics


def _bool(mask: Any) -> np.ndarray:
    return np.asarray(mask).astype(bool, copy=False)


def _check_shapes(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise BenchError(f"prediction shape {pred.shape} does not match ground-truth shape {gt.shape}")


def confusion(pred: Any, gt: Any) -> dict[str, int]:
    """Pixel counts ``tp``, ``fp``, ``fn``, ``tn`` of two binary masks."""
    p, g = _bool(pred), _bool(gt)
    _check_shapes(p, g)
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(g)) - tp
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(p.size) - tp - fp - fn}


def _ratio(num: float, den: float, empty: float) -> float:
    return num / den if den else empty


def dice(pred: Any, gt: Any) -> float:
    """2TP / (2TP + FP + FN); NaN when both masks are empty."""
    c = confusion(pred, gt)
    return _ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"], NAN)


def iou(pred: Any, gt: Any) -> float:
    """TP / (TP + FP + FN); NaN when both masks are empty."""
    c = confusion(pred, gt)
    return _ratio(c["tp"], c["tp"] + c["fp"] + c["fn"], NAN)


def _union_box(p: np.ndarray, g: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of p | g plus one voxel each side, clipped to the array."""
    box = []
    for axis in range(p.ndim):
        other = tuple(a for a in range(p.ndim) if a != axis)
        idx = np.flatnonzero(p.any(axis=other) | g.any(axis=other))
        box.append(slice(max(int(idx[0]) - 1, 0), min(int(idx[-1]) + 2, p.shape[axis])))
    return tuple(box)


def surface_distances(pred: Any, gt: Any, spacing: Sequence[float] | None = None,
                      connectivity: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each surface voxel of ``pred`` to the surface of ``gt``, and back.

    Returns ``(d_pred_to_gt, d_gt_to_pred)`` as 1-D float arrays (medpy's ``__surface_distances``
    in both directions). Raises ValueError if either mask is empty.
    """
    p, g = _bool(pred), _bool(gt)
    _check_shapes(p, g)
    if not p.any() or not g.any():
        raise ValueError("surface distances need two non-empty masks")
    box = _union_box(p, g)
    p, g = p[box], g[box]
    sampling = None if spacing is None else np.broadcast_to(np.asarray(spacing, dtype=np.float64), (p.ndim,))
    footprint = ndimage.generate_binary_structure(p.ndim, connectivity)
    p_surf = p ^ ndimage.binary_erosion(p, structure=footprint, iterations=1)
    g_surf = g ^ ndimage.binary_erosion(g, structure=footprint, iterations=1)
    d_pg = ndimage.distance_transform_edt(~g_surf, sampling=sampling)[p_surf]
    d_gp = ndimage.distance_transform_edt(~p_surf, sampling=sampling)[g_surf]
    return d_pg, d_gp


def hd95(pred: Any, gt: Any, spacing: Sequence[float] | None = None) -> float:
    """medpy's HD95: 95th percentile of the pooled surface distances (voxel units unless spacing)."""
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    return float(np.percentile(np.hstack((d_pg, d_gp)), 95))


def hd95_max_directed(pred: Any, gt: Any, spacing: Sequence[float] | None = None) -> float:
    """MONAI's HD95: the larger of the two directed 95th percentiles."""
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    return float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))


HD_FUNCTIONS = {"pooled": hd95, "max_directed": hd95_max_directed}


# ------------------------------------------------------------------------------------------ policies

PENALTY = "penalty"  # marker: the strict policy's HD95 penalty, the volume's physical diagonal


@dataclass(frozen=True)
class Policy:
    """The conventions behind a number. Empty-case rules give (dice/iou value, hd95 value)."""

    name: str
    description: str
    pooled: bool  # one confusion matrix over all test pixels (VM-UNet ISIC) vs per case
    use_spacing: bool  # HD95 in mm from the case spacing, or in voxels
    hd_definition: str | None  # "pooled" (medpy) | "max_directed" (MONAI) | None (not computed)
    both_empty: tuple[float, Any]
    ref_only: tuple[float, Any]  # the structure is missed
    pred_only: tuple[float, Any]  # false positive on an absent structure
    zero_division: float  # Acc/Spe/Sen (and per-case Dice here) when a denominator is 0


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy(
            name="legacy-synapse",
            description=(
                "TransUNet utils.calculate_metric_percase (also Swin-Unet, VM-UNet): per volume and class; "
                "HD95 medpy pooled in voxels. | both empty: (0, 0) | only reference (miss): (0, 0) | "
                "only prediction: (1, 0) | both present: medpy dc, hd95"
            ),
            pooled=False, use_spacing=False, hd_definition="pooled",
            both_empty=(0.0, 0.0), ref_only=(0.0, 0.0), pred_only=(1.0, 0.0), zero_division=0.0,
        ),
        Policy(
            name="legacy-isic",
            description=(
                "VM-UNet engine.py: one confusion matrix pooled over all test pixels at threshold 0.5; "
                "DSC = 2TP/(2TP+FP+FN), 'mIoU' = foreground IoU TP/(TP+FP+FN); a ratio with a zero "
                "denominator is 0. No HD95."
            ),
            pooled=True, use_spacing=False, hd_definition=None,
            both_empty=(0.0, NAN), ref_only=(0.0, NAN), pred_only=(0.0, NAN), zero_division=0.0,
        ),
        Policy(
            name="strict",
            description=(
                "Per case and class, HD95 in mm with the case spacing (voxels where unknown). | both empty: "
                "(NaN, NaN), counted in n_nan | only reference (miss): (0, penalty) | only prediction: "
                "(0, penalty) | both present: Dice, medpy-pooled HD95. penalty = the volume's diagonal."
            ),
            pooled=False, use_spacing=True, hd_definition="pooled",
            both_empty=(NAN, NAN), ref_only=(0.0, PENALTY), pred_only=(0.0, PENALTY), zero_division=NAN,
        ),
    )
}


def get_policy(policy: str | Policy) -> Policy:
    if isinstance(policy, Policy):
        return policy
    if policy not in POLICIES:
        close = difflib.get_close_matches(str(policy), list(POLICIES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise BenchError(f"unknown metric policy {policy!r}{hint} Known policies: {', '.join(POLICIES)}")
    return POLICIES[policy]


def penalty(shape: Sequence[int], spacing: Sequence[float] | None) -> float:
    """Diagonal of the volume's physical extent (BraTS-style worst-case distance)."""
    sp = np.ones(len(shape)) if spacing is None else np.asarray(spacing, dtype=np.float64)
    return float(math.sqrt(float(np.sum((np.asarray(shape) * sp) ** 2))))


# ------------------------------------------------------------------------------------------ scoring


def _boxes(labels: np.ndarray, num: int) -> list[tuple[slice, ...] | None]:
    """Bounding box of each label 1..num in one pass (None where the label is absent)."""
    found = ndimage.find_objects(labels.astype(np.int64, copy=False), max_label=num)
    return list(found) + [None] * (num - len(found))


def _merge(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None, shape: Sequence[int]) -> tuple[slice, ...] | None:
    if a is None and b is None:
        return None
    both = [x for x in (a, b) if x is not None]
    return tuple(
        slice(max(min(s[i].start for s in both) - 1, 0), min(max(s[i].stop for s in both) + 1, shape[i]))
        for i in range(len(shape))
    )


def score_case(pred: Any, gt: Any, num_classes: int, policy: str | Policy, spacing: Sequence[float] | None = None,
               class_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per foreground class of one case (2-D image or 3-D volume).

    ``pred``/``gt`` are integer label maps (ids 0..num_classes-1); a binary task (``num_classes``
    1 or 2) takes 0/1 masks and scores class 1. Rows hold dice, iou, hd95, acc, spe, sen, the raw
    counts (tp, fp, fn, tn, n_pred, n_ref) and ``empty`` in {"both", "ref_only", "pred_only", "none"}.
    """
    pol = get_policy(policy)
    p = np.asarray(pred)
    g = np.asarray(gt)
    _check_shapes(p, g)
    if p.dtype == bool:
        p = p.astype(np.uint8)
    if g.dtype == bool:
        g = g.astype(np.uint8)
    n_fg = max(num_classes - 1, 1)
    sp = spacing if pol.use_spacing else None
    p_boxes, g_boxes = _boxes(p, n_fg), _boxes(g, n_fg)
    rows = []
    for c in range(1, n_fg + 1):
        box = _merge(p_boxes[c - 1], g_boxes[c - 1], p.shape)
        if box is None:
            pc = gc = np.zeros((1,) * p.ndim, dtype=bool)
        else:  # all voxels of either mask lie inside the box: counts and surfaces are exact there
            pc, gc = p[box] == c, g[box] == c
        counts = confusion(pc, gc)
        counts["tn"] += int(p.size - pc.size)
        n_pred, n_ref = counts["tp"] + counts["fp"], counts["tp"] + counts["fn"]
        row: dict[str, Any] = {"class": c, "name": class_names[c - 1] if class_names else f"class{c}"}
        tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]
        zd = pol.zero_division
        if n_pred and n_ref:
            empty = "none"
            d, j = 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)
            h = HD_FUNCTIONS[pol.hd_definition](pc, gc, sp) if pol.hd_definition else NAN
        else:
            empty = "both" if not (n_pred or n_ref) else ("ref_only" if n_ref else "pred_only")
            d, h = {"both": pol.both_empty, "ref_only": pol.ref_only, "pred_only": pol.pred_only}[empty]
            j = d
            if h == PENALTY:
                h = penalty(p.shape, sp)
            if pol.pooled:  # per-image values by VM-UNet's zero-denominator rule; pooled numbers come later
                d = _ratio(2 * tp, 2 * tp + fp + fn, zd)
                j = _ratio(tp, tp + fp + fn, zd)
        row.update(
            dice=d, iou=j, hd95=h,
            acc=(tp + tn) / (tp + fp + fn + tn), spe=_ratio(tn, tn + fp, zd), sen=_ratio(tp, tp + fn, zd),
            tp=tp, fp=fp, fn=fn, tn=tn, n_pred=n_pred, n_ref=n_ref, empty=empty,
        )
        rows.append(row)
    return rows


# -------------------------------------------------------------------------------------- aggregation


class PooledConfusion:
    """legacy-isic's accumulator: one confusion matrix over every pixel of every test image."""

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        self.tp = self.fp = self.fn = self.tn = 0

    def update(self, pred: Any, gt: Any) -> None:
        """``pred``: probabilities or a 0/1 mask (>= threshold is foreground); ``gt``: mask (>= 0.5)."""
        c = confusion(np.asarray(pred) >= self.threshold, np.asarray(gt) >= 0.5)
        self.tp += c["tp"]
        self.fp += c["fp"]
        self.fn += c["fn"]
        self.tn += c["tn"]

    def compute(self) -> dict[str, float]:
        return pooled_metrics(self.tp, self.fp, self.fn, self.tn)


def pooled_metrics(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """VM-UNet's metrics from one confusion matrix; a ratio with a zero denominator is 0."""
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, 0.0),
        "iou": _ratio(tp, tp + fp + fn, 0.0),
        "acc": _ratio(tp + tn, tp + fp + fn + tn, 0.0),
        "spe": _ratio(tn, tn + fp, 0.0),
        "sen": _ratio(tp, tp + fn, 0.0),
    }


def pooled_from_counts(rows: Iterable[Mapping[str, Any]] | Any) -> dict[str, float]:
    """Recompute the pooled metrics from per-case rows' raw counts (records keep them)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    return pooled_metrics(*(int(df[k].sum()) for k in ("tp", "fp", "fn", "tn")))


_METRICS = ("dice", "iou", "hd95", "acc", "spe", "sen")


def _frame(rows: Any):
    import pandas as pd

    df = pd.DataFrame(rows)
    if df.empty:
        raise BenchError("no scored cases to aggregate")
    return df


def aggregate_per_class(rows: Any, policy: str | Policy) -> list[dict[str, Any]]:
    """Per-class numbers over cases: mean (NaN-skipping, with ``n`` and ``n_nan`` shown) or pooled."""
    pol = get_policy(policy)
    df = _frame(rows)
    out = []
    for (c, name), grp in df.groupby(["class", "name"], sort=True):
        row: dict[str, Any] = {"class": int(c), "name": str(name), "n": int(len(grp)),
                               "n_nan": int(grp["dice"].isna().sum())}
        if pol.pooled:
            row.update(pooled_from_counts(grp), hd95=None)
        else:
            for m in _METRICS:
                vals = grp[m].astype(float)
                row[m] = float(vals.mean()) if vals.notna().any() else NAN
                if vals.isna().any():
                    row[f"n_nan_{m}"] = int(vals.isna().sum())
        out.append(row)
    return out


def aggregate(rows: Any, policy: str | Policy) -> dict[str, Any]:
    """The dataset-level numbers the paper reports under ``policy``.

    Per-case policies: mean over cases per class, then mean over classes (TransUNet's order), NaN
    entries skipped and counted in ``n_nan_<metric>``. legacy-isic: pooled over all pixels.
    """
    pol = get_policy(policy)
    df = _frame(rows)
    n_cases = int(df["case"].nunique()) if "case" in df else int(len(df))
    if pol.pooled:
        return {**pooled_from_counts(df), "hd95": None, "n_cases": n_cases}
    per_class = aggregate_per_class(df, pol)
    out: dict[str, Any] = {}
    for m in _METRICS:
        vals = np.array([r[m] for r in per_class], dtype=float)
        out[m] = float(np.nanmean(vals)) if np.isfinite(vals).any() else NAN
        n_nan = int(df[m].astype(float).isna().sum())
        if n_nan:
            out[f"n_nan_{m}"] = n_nan
    out["n_cases"] = n_cases
    out["n_valid"] = int(df["dice"].notna().sum())
    return out
