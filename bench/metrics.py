"""One metrics core: per-case functions on numpy masks, three named policies, aggregation on rows.

Definitions (each named, because the same name means different numbers elsewhere):

- ``dice`` = 2TP / (2TP + FP + FN), ``iou`` = TP / (TP + FP + FN), on binary masks of any ndim;
  NaN when both masks are empty (the policy decides what that case scores).
- ``hd95``: medpy's definition (loli/medpy medpy/metric/binary.py ``hd95``, v0.5.2): a surface is
  ``mask XOR binary_erosion(mask)`` with face connectivity (voxels on the array border are surface:
  scipy's erosion uses ``border_value=0``), distances come from the Euclidean distance transform,
  and the result is the 95th percentile (numpy, linear) of the distances of BOTH directions
  POOLED. Voxel units unless ``spacing`` (mm per axis, in array-axis order) is given.
- ``hd95_max_directed``: MONAI's ``HausdorffDistanceMetric(percentile=95)``: the larger of the two
  directed 95th percentiles. Usually equal to the pooled value or a little larger; with
  interpolated percentiles of few distances it can also come out a little smaller.

Speed: erosion and distance transforms run only inside the bounding box of the two masks' union
plus a one-voxel margin, clipped to the array (MONAI crops the same way). This is exact: every
surface voxel lies inside the box, the EDT gives true Euclidean distances to the feature voxels
wherever its grid ends, and the erosion sees the same neighbourhoods, because everything outside
the union's box is background and scipy treats outside-the-array as background too
(``border_value=0``), so a mask touching the array border keeps its surface there. (The margin is
therefore not even needed for exactness; tests compare with medpy on border-touching masks.)
Values equal medpy's, 20-50x faster on 512x512 CT volumes (benchmarks/hd95_bench.py).

Policies (``POLICIES``; contract 6) turn per-case values into the numbers a paper reports:
``legacy-synapse`` (TransUNet utils.py ``calculate_metric_percase``), ``legacy-isic`` (VM-UNet
engine.py, one pooled confusion matrix), ``strict`` (mm, explicit empty rules, NaN counted) and
``strict-monai`` (strict with MONAI's max-of-directed HD95).
Each policy's ``__doc__`` holds its four-row table of empty-mask rules.

Rows: ``score_case`` returns one dict per foreground class of one case; ``aggregate`` and
``aggregate_per_class`` take a list of such rows (or a DataFrame, each row tagged with ``case``)
and recompute everything from them, so stored per-case rows are enough to re-derive any table.

Example::

    rows = []
    for case_id, (pred, gt, spacing) in cases.items():
        rows += [{"case": case_id, **r} for r in score_case(pred, gt, 9, "legacy-synapse", spacing)]
    aggregate(rows, "legacy-synapse")  # {"dice": ..., "hd95": ..., "n_cases": 12, ...}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
from scipy import ndimage

from bench.errors import BenchError, did_you_mean, unknown_name

__all__ = [
    "EmptyMaskError", "HD_DEFINITIONS", "PENALTY", "POLICIES", "Outcome", "Policy", "PooledConfusion", "aggregate",
    "aggregate_per_class", "class_tolerances", "confusion", "count_scores", "dice", "get_policy", "hd95",
    "hd95_max_directed", "hd95_penalty", "iou", "nsd", "policy_fields", "policy_misfit", "pooled_from_counts",
    "pooled_metrics", "score_case", "surface_distances",
]

NAN = float("nan")
# the standard metrics: score_case's per-row keys and aggregate's, in the order reports print them
METRICS = ("dice", "hd95", "iou", "acc", "spe", "sen")
OPTIONAL_METRICS = ("nsd",)  # in rows only when asked for (score_case's nsd_tolerance)
COUNTS = ("tp", "fp", "fn", "tn")


# ----------------------------------------------------------------------------------- mask metrics


class EmptyMaskError(BenchError, ValueError):
    """A surface distance asked of an empty mask: what that scores is a policy's decision."""


def _bool(mask: Any, what: str) -> np.ndarray:
    """``mask`` as bool: any array whose non-zero values are one value (0/1, 0/255, bool). BenchError
    for more: a probability map or a label map would be scored as their union, unsaid."""
    a = _array(mask)
    if a.dtype == bool:
        return a
    if not np.issubdtype(a.dtype, np.number):
        raise BenchError(f"{what} must be a binary mask (a numeric or bool array); got dtype {a.dtype}")
    b = a != 0
    if b.any():
        one = a.flat[int(np.argmax(b))]  # the first non-zero value: every other one must equal it
        if one != one or np.count_nonzero(a == one) != np.count_nonzero(b):
            values = np.unique(a[b & (a != one)])[:3] if one == one else [one]
            shown = ", ".join(f"{v:.3g}" for v in values)
            raise BenchError(
                f"{what} must be a binary mask (bool, or 0 and one other value); got {shown} beside {one:.3g}: "
                "threshold a probability map (e.g. > 0.5), compare a label map with one class id, or score a "
                "label map with score_case" if one == one else
                f"{what} must be a binary mask (bool, or 0 and one other value); it holds NaN")
    return b


def _pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    p, g = _bool(pred, "prediction"), _bool(gt, "reference")
    if p.ndim == 0:
        raise BenchError(f"prediction must be a mask of at least one dimension; got a {p.dtype} scalar")
    if p.shape != g.shape:
        raise BenchError(f"prediction shape {p.shape} does not match reference (ground-truth) shape {g.shape}")
    return p, g


def confusion(pred: Any, gt: Any) -> dict[str, int]:
    """Pixel counts ``{"tp", "fp", "fn", "tn"}`` (Python ints) of two binary masks of one shape."""
    p, g = _pair(pred, gt)
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(g)) - tp
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(p.size) - tp - fp - fn}


def _ratio(num: Any, den: Any, zero_division: float) -> Any:
    """num / den, ``zero_division`` where den is 0; elementwise for arrays (bench.stats resamples)."""
    if np.ndim(num) or np.ndim(den):
        num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
        return np.where(den != 0, num / np.where(den != 0, den, 1.0), zero_division)
    return num / den if den else zero_division


def dice(pred: Any, gt: Any) -> float:
    """Dice 2TP / (2TP + FP + FN) of two binary masks (any ndim); NaN when both are empty.

    Equals medpy ``dc`` wherever a mask is non-empty (medpy's both-empty value depends on the
    NumPy version: 1.0 where ``count_nonzero``
    returns a Python int, NaN and a warning where it returns a NumPy integer; ours is always NaN).
    """
    c = confusion(pred, gt)
    return _ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"], NAN)


def iou(pred: Any, gt: Any) -> float:
    """Jaccard TP / (TP + FP + FN) of two binary masks (any ndim); NaN when both are empty."""
    c = confusion(pred, gt)
    return _ratio(c["tp"], c["tp"] + c["fp"] + c["fn"], NAN)


# ------------------------------------------------------------------------------- surface distances


def _box(mask: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of ``mask`` (non-empty) plus one voxel each side, clipped to the array.

    Never padded beyond the array: outside the array, erosion already sees background."""
    box, part = [], mask
    for axis in range(mask.ndim):
        # reduce the already-cropped mask, so later axes scan a smaller array
        hit = np.flatnonzero(part.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        lo, hi = max(int(hit[0]) - 1, 0), min(int(hit[-1]) + 2, mask.shape[axis])
        box.append(slice(lo, hi))
        part = part[(slice(None),) * axis + (slice(int(hit[0]), int(hit[-1]) + 1),)]
    return tuple(box)


def _sampling(spacing: Any, ndim: int) -> np.ndarray | None:
    if spacing is None:
        return None
    try:
        sp = np.asarray(spacing, dtype=np.float64)
    except (TypeError, ValueError):  # "0.8,0.7": a string, not numbers
        sp = np.full(ndim + 1, np.nan)
    if sp.ndim == 0:
        sp = np.full(ndim, float(sp))
    if sp.shape != (ndim,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise BenchError(f"spacing must be {ndim} positive numbers (mm per array axis); got {spacing!r}")
    return sp


# A union box this many times the surfaces' voxels or more (a false positive far from the object: the
# box spans the volume) is scored by nearest surface points, not by distance transforms of the box
KDTREE_RATIO = 32
KDTREE_MIN_BOX = 1 << 18


def surface_distances(pred: Any, gt: Any, spacing: Sequence[float] | float | None = None,
                      connectivity: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Distances from every surface voxel of ``pred`` to the surface of ``gt``, and back.

    pred, gt: binary masks of one shape (any ndim). spacing: mm per array axis (or one number for
    all axes); None = voxel units. connectivity: of the erosion footprint
    (``generate_binary_structure(ndim, connectivity)``; 1 = face neighbours, medpy's default).
    Returns ``(d_pred_to_gt, d_gt_to_pred)``, 1-D float64 arrays, as medpy's
    ``__surface_distances(pred, gt)`` and ``__surface_distances(gt, pred)``, in the same order.
    Raises EmptyMaskError (a BenchError and a ValueError) if either mask is empty (a policy decides
    what an empty mask scores).

    Each surface is taken inside its mask's box plus one voxel (beyond it, erosion only sees
    background, as on the whole array), and the distances inside the union of those boxes, by
    distance transforms. Where that box dwarfs the surfaces (a false positive in a far corner of a
    CT: the box is the volume, seconds and gigabytes per class), each surface voxel's nearest voxel of
    the other surface comes from a k-d tree instead, its distance computed as scipy's transform
    computes it: equal to medpy's to the last bit, or within 1e-12 where two voxels are equally near.
    """
    p, g = _pair(pred, gt)
    sampling = _sampling(spacing, p.ndim)
    if not p.any() or not g.any():
        raise EmptyMaskError(f"surface distances need two non-empty masks; got {np.count_nonzero(p)} prediction "
                         f"and {np.count_nonzero(g)} reference voxels")
    footprint = ndimage.generate_binary_structure(p.ndim, connectivity)
    p_pts, g_pts = _surface_points(p, footprint), _surface_points(g, footprint)
    lo = np.maximum(np.minimum(p_pts.min(0), g_pts.min(0)) - 1, 0)
    hi = np.minimum(np.maximum(p_pts.max(0), g_pts.max(0)) + 2, p.shape)
    if math.prod(hi - lo) >= max(KDTREE_MIN_BOX, KDTREE_RATIO * (len(p_pts) + len(g_pts))):
        return _nearest_distances(p_pts, g_pts, sampling)
    p_surf, g_surf = np.zeros(tuple(hi - lo), bool), np.zeros(tuple(hi - lo), bool)
    p_surf[tuple((p_pts - lo).T)] = g_surf[tuple((g_pts - lo).T)] = True
    d_pg = ndimage.distance_transform_edt(~g_surf, sampling=sampling)[p_surf]
    d_gp = ndimage.distance_transform_edt(~p_surf, sampling=sampling)[g_surf]
    return d_pg, d_gp


def _surface_points(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """(n, ndim) indices of ``mask``'s (non-empty) surface voxels in C order, eroded inside its own box
    plus one voxel; border_value=0 (scipy's default, as medpy): a mask voxel on the array border is surface."""
    box = _box(mask)  # not the whole array: a copy of it per surface
    m = mask[box]
    return np.argwhere(m ^ ndimage.binary_erosion(m, structure=footprint, iterations=1)) + [s.start for s in box]


def _nearest_distances(p_pts: np.ndarray, g_pts: np.ndarray,
                       sampling: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Each point set's distances to the nearest point of the other, in mm with ``sampling``."""
    from scipy.spatial import cKDTree

    scale = np.ones(p_pts.shape[1]) if sampling is None else sampling

    def directed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        _, nearest = cKDTree(b * scale).query(a * scale)
        step = (b[nearest] - a).T.astype(np.float64)  # as distance_transform_edt: (feature - voxel) per axis,
        if sampling is not None:  # times the spacing, squared, summed in axis order, square root
            step *= sampling[:, None]
        return np.sqrt(np.add.reduce(step * step, axis=0))

    return directed(p_pts, g_pts), directed(g_pts, p_pts)


def _pooled95(d_pg: np.ndarray, d_gp: np.ndarray) -> float:
    return float(np.percentile(np.hstack((d_pg, d_gp)), 95))


def _max_directed95(d_pg: np.ndarray, d_gp: np.ndarray) -> float:
    return float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))


def _within(d_pg: np.ndarray, d_gp: np.ndarray, tolerance: float) -> float:
    return float((np.count_nonzero(d_pg <= tolerance) + np.count_nonzero(d_gp <= tolerance))
                 / (d_pg.size + d_gp.size))


def hd95(pred: Any, gt: Any, spacing: Sequence[float] | float | None = None, *, connectivity: int = 1) -> float:
    """HD95, medpy's pooled definition: 95th percentile of both directions' surface distances pooled.

    Face connectivity, voxel units unless ``spacing`` (mm per axis) is given. Equals
    ``medpy.metric.binary.hd95(pred, gt, voxelspacing=spacing)``. Raises EmptyMaskError on an empty mask.
    """
    return _pooled95(*surface_distances(pred, gt, spacing, connectivity))


def hd95_max_directed(pred: Any, gt: Any, spacing: Sequence[float] | float | None = None, *,
                      connectivity: int = 1) -> float:
    """HD95, MONAI's definition: max of the two directed 95th percentiles (linear interpolation).

    Equals ``monai.metrics.compute_hausdorff_distance(..., percentile=95)`` on non-empty masks
    (MONAI's quantile runs in float32, so agreement is to ~1e-5 relative). Raises EmptyMaskError on an
    empty mask (MONAI returns NaN there, which its mean then drops: Project-MONAI/MONAI#9095).
    """
    return _max_directed95(*surface_distances(pred, gt, spacing, connectivity))


HD_DEFINITIONS = {"pooled": hd95, "max_directed": hd95_max_directed}  # of two masks (public)
# the same definitions of the two directed distance arrays: score_case finds the surfaces once for HD95 and NSD
_HD_OF_DISTANCES = {"pooled": _pooled95, "max_directed": _max_directed95}


def nsd(pred: Any, gt: Any, tolerance: float, spacing: Sequence[float] | float | None = None, *,
        connectivity: int = 1) -> float:
    """Normalised surface distance (surface Dice) at ``tolerance``: the share of both surfaces'
    voxels that lie within ``tolerance`` of the other surface, (|{d_pg <= tol}| + |{d_gp <= tol}|)
    / (|S_pred| + |S_ref|), on the same face-connected surfaces as ``hd95``; mm with ``spacing``,
    else voxels. MONAI's ``compute_surface_dice`` without subvoxels; Metrics Reloaded pairs it with
    Dice. ``tolerance`` >= 0 (0: the share of surface voxels on the other surface). Raises
    EmptyMaskError on an empty mask (a policy decides what that scores)."""
    tol = _check_tolerance(tolerance, "tolerance")
    return _within(*surface_distances(pred, gt, spacing, connectivity), tol)


def _check_tolerance(value: Any, what: str) -> float:
    try:
        tol = float(value)
    except (TypeError, ValueError):
        tol = math.nan
    if not math.isfinite(tol) or tol < 0:  # a negative or NaN tolerance scores every case 0
        raise BenchError(f"{what} must be a distance >= 0 (mm, or voxels without spacing); got {value!r}")
    return tol


def hd95_penalty(shape: Sequence[int], spacing: Sequence[float] | float | None = None) -> float:
    """The diagonal of the volume's physical extent, ``sqrt(sum((shape_i * spacing_i) ** 2))``.

    The largest distance possible inside the volume: strict's HD95 for a missed structure or a
    false positive on an absent one (the BraTS-style fixed penalty, e.g. 373.13 mm in
    jianpengz/DoDNet#7). Voxel units when spacing is None.
    """
    sp = _sampling(spacing, len(shape))
    sp = np.ones(len(shape)) if sp is None else sp
    return float(math.sqrt(float(np.sum((np.asarray(shape, dtype=np.float64) * sp) ** 2))))


# ------------------------------------------------------------------------------------------ policies

PENALTY = "penalty"  # an Outcome.hd95 marker: the policy's penalty (hd95_penalty) for this case


class Outcome(NamedTuple):
    """What a case scores when a mask is empty. ``dice`` also applies to IoU; ``hd95`` is a
    number, NaN (not applicable, counted) or ``PENALTY``."""

    dice: float
    hd95: float | str


@dataclass(frozen=True)
class Policy:
    """The conventions behind a reported number. Instances are in ``POLICIES``.

    Fields: ``pooled`` (one confusion matrix over all test pixels vs per case), ``use_spacing``
    (HD95 in mm from the case spacing, or voxels), ``hd_definition`` ("pooled" = medpy,
    "max_directed" = MONAI, None = not computed), the empty-mask ``Outcome``s (``both_empty``,
    ``ref_only`` = a missed structure, ``pred_only`` = a false positive on an absent structure),
    ``penalty`` (how a ``PENALTY`` HD95 is computed: "diagonal" = ``hd95_penalty``),
    ``zero_division`` (Acc/Spe/Sen, and legacy-isic's per-image Dice/IoU, when a denominator is 0)
    and ``table``, the four-row rule table that also becomes the instance's ``__doc__``. (The
    foreground threshold of binary predictions is the protocol's ``eval.threshold``.)
    """

    name: str
    pooled: bool
    use_spacing: bool
    hd_definition: str | None
    both_empty: Outcome
    ref_only: Outcome
    pred_only: Outcome
    penalty: str | None
    zero_division: float
    table: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if self.hd_definition not in (*HD_DEFINITIONS, None):
            raise ValueError(f"hd_definition must be one of {list(HD_DEFINITIONS)} or None; got {self.hd_definition!r}")
        uses_penalty = PENALTY in (self.both_empty.hd95, self.ref_only.hd95, self.pred_only.hd95)
        if uses_penalty and self.penalty != "diagonal":
            raise ValueError(f"policy {self.name!r} scores a PENALTY but names no penalty rule (penalty='diagonal')")
        object.__setattr__(self, "__doc__", self.table or Policy.__doc__)

    @property
    def misses_score_zero(self) -> bool:
        """Whether a structure predicted nowhere scores HD95 0, the best value (legacy-synapse): boards and
        `bench score` say how many were missed."""
        return self.ref_only.hd95 == 0

    def outcome(self, empty: str) -> Outcome:
        """The rule for ``empty`` in {"both", "ref_only", "pred_only"}."""
        return {"both": self.both_empty, "ref_only": self.ref_only, "pred_only": self.pred_only}[empty]


_LEGACY_SYNAPSE = Policy(
    name="legacy-synapse",
    pooled=False, use_spacing=False, hd_definition="pooled",
    both_empty=Outcome(0.0, 0.0), ref_only=Outcome(0.0, 0.0), pred_only=Outcome(1.0, 0.0),
    penalty=None, zero_division=0.0,
    table="""legacy-synapse: TransUNet utils.py ``calculate_metric_percase``, copied by Swin-Unet, VM-UNet,
    VM-UNet-V2 (bit-compatible on the same predictions). Per volume and class, whole 3-D volume,
    spacing ignored (HD95 in voxels, although papers label it "mm"); mean over cases per class, then
    over classes.

    | case                              | Dice      | HD95                     |
    |-----------------------------------|-----------|--------------------------|
    | both empty                        | 0         | 0                        |
    | only reference (missed organ)     | 0         | 0 (the best HD95!)       |
    | only prediction (false positive)  | 1         | 0                        |
    | both present                      | medpy dc  | medpy hd95, voxel units  |

    TransUNet's rule is "prediction empty -> (0, 0)" whatever the reference holds (issue
    Beckschen/TransUNet#39). IoU (not computed by TransUNet) follows the Dice rule. Acc/Spe/Sen
    with a zero denominator are 0.""",
)

_LEGACY_ISIC = Policy(
    name="legacy-isic",
    pooled=True, use_spacing=False, hd_definition=None,
    both_empty=Outcome(0.0, NAN), ref_only=Outcome(0.0, NAN), pred_only=Outcome(0.0, NAN),
    penalty=None, zero_division=0.0,
    table="""legacy-isic: VM-UNet engine.py ``test_one_epoch``: one confusion matrix over ALL pixels of ALL test
    images (prediction ``p >= 0.5``, reference ``mask >= 0.5``), so the reported numbers are a micro
    average: Acc = (TP+TN)/all, Sen = TP/(TP+FN), Spe = TN/(TN+FP), DSC = 2TP/(2TP+FP+FN),
    "mIoU" = TP/(TP+FP+FN) (foreground IoU only); a ratio with a zero denominator is 0. No HD95.
    Per-image rows (below) only carry the counts the pooled numbers are made of.

    | case                              | Dice (per image) | HD95               |
    |-----------------------------------|------------------|--------------------|
    | both empty                        | 0 (0/0 -> 0)     | NaN (not computed) |
    | only reference (missed lesion)    | 0                | NaN (not computed) |
    | only prediction (false positive)  | 0                | NaN (not computed) |
    | both present                      | 2TP/(2TP+FP+FN)  | NaN (not computed) |""",
)

_STRICT = Policy(
    name="strict",
    pooled=False, use_spacing=True, hd_definition="pooled",
    both_empty=Outcome(NAN, NAN), ref_only=Outcome(0.0, PENALTY), pred_only=Outcome(0.0, PENALTY),
    penalty="diagonal", zero_division=NAN,
    table="""strict: per case and class; HD95 medpy-pooled in mm with the case's spacing (voxels where the
    spacing is unknown); mean over the valid cases per class, then over classes, with every NaN
    counted (``n_nan_<metric>``, ``n_valid_<metric>``), never dropped silently: a class valid in no
    case makes the mean over classes NaN (nnU-Net's foreground mean), not a mean of the others.

    | case                              | Dice | HD95                                      |
    |-----------------------------------|------|-------------------------------------------|
    | both empty                        | NaN  | NaN (not applicable; counted)             |
    | only reference (missed structure) | 0    | penalty                                   |
    | only prediction (false positive)  | 0    | penalty                                   |
    | both present                      | Dice | medpy hd95 (pooled), mm                   |

    penalty = the diagonal of the volume's physical extent, sqrt(sum((shape_i*spacing_i)^2))
    (``hd95_penalty``; BraTS-style fixed worst case). IoU follows the Dice rule. Acc/Spe/Sen with a
    zero denominator are NaN.""",
)

_STRICT_MONAI = replace(
    _STRICT, name="strict-monai", hd_definition="max_directed",
    table="""strict-monai: strict with MONAI's HD95 (``HausdorffDistanceMetric(percentile=95)``, also
    ``compute_hausdorff_distance``): the larger of the two directed 95th percentiles, in mm with the
    case's spacing, instead of medpy's 95th percentile of the pooled distances (usually equal or a little larger), so
    HD95 compares with MONAI-based papers. Dice, empty-mask rules, penalty and NaN counting as strict.

    | case                              | Dice | HD95                                      |
    |-----------------------------------|------|-------------------------------------------|
    | both empty                        | NaN  | NaN (not applicable; counted)             |
    | only reference (missed structure) | 0    | penalty                                   |
    | only prediction (false positive)  | 0    | penalty                                   |
    | both present                      | Dice | max of directed 95th percentiles, mm      |""",
)

POLICIES: dict[str, Policy] = {p.name: p for p in (_LEGACY_SYNAPSE, _LEGACY_ISIC, _STRICT, _STRICT_MONAI)}


def get_policy(policy: str | Policy) -> Policy:
    """The ``Policy`` named ``policy`` (a Policy passes through); BenchError for unknown names."""
    if isinstance(policy, Policy):
        return policy
    if policy not in POLICIES:
        raise unknown_name("metric policy", policy, list(POLICIES), plural="policies")
    return POLICIES[policy]


def policy_misfit(policy: str | Policy, n_foreground: int, what: str) -> str | None:
    """Why ``policy`` cannot score data with ``n_foreground`` classes (``what`` names it), or None: a
    pooled policy (one confusion matrix, VM-UNet's binary metrics) pooled over several classes would
    weight each by its pixel count and count the background once per class."""
    pol = get_policy(policy)
    if pol.pooled and n_foreground > 1:
        return (f"policy {pol.name!r} pools one confusion matrix of a binary mask (VM-UNet's ISIC metrics); "
                f"{what} has {n_foreground} foreground classes: strict or legacy-synapse score each class")
    return None


# ------------------------------------------------------------------------------------------ scoring


def _array(x: Any) -> np.ndarray:
    """``x`` as a NumPy array; a torch tensor from anywhere (a GPU, one that requires grad) as its values."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # which NumPy has no type for
            x = x.float()
    return np.asarray(x)


def _label_map(x: Any, what: str, n_fg: int) -> np.ndarray:
    a = _array(x)
    if a.ndim == 0 or a.size == 0:
        raise BenchError(f"{what} must be a label map with at least one pixel; got shape {a.shape}")
    if a.dtype == bool:
        return a.view(np.uint8)
    if a.dtype.kind == "f" and not np.array_equal(a, np.round(a)):
        raise BenchError(f"{what} must be an integer label map (or a 0/1 mask); got non-integer {a.dtype} "
                         "values (threshold probabilities first)")
    if a.dtype.kind not in "iuf":
        raise BenchError(f"{what} must be an integer label map; got dtype {a.dtype}")
    lo, hi = a.min(), a.max()  # before a float map becomes int64: 1e20 would wrap around
    if lo < 0 or hi > n_fg:
        raise BenchError(f"{what} holds labels {lo:.0f}..{hi:.0f}; expected 0..{n_fg} "
                         f"(num_classes {n_fg + 1} including background)")
    return a.astype(np.int64) if a.dtype.kind == "f" else a


def _class_names(class_names: Sequence[str] | None, n_fg: int) -> list[str]:
    if not class_names:
        return [f"class{c}" for c in range(1, n_fg + 1)]
    names = [str(n) for n in class_names]
    if len(names) == n_fg + 1:  # background included (also for a 1-class sigmoid task): drop it
        names = names[1:]
    if len(names) != n_fg:
        raise BenchError(f"class_names: {len(names)} given; expected {n_fg} foreground names (classes 1..{n_fg})")
    return names


def class_tolerances(tolerance: float | Sequence[float] | Mapping[str, float], num_classes: int,
                     class_names: Sequence[str] | None = None, what: str = "nsd_tolerance") -> dict[str, float]:
    """NSD tolerance per foreground class, {name: tolerance} in class order (names as ``score_case``
    gives them): one number for all, a sequence in class order, or a mapping by class name.
    BenchError starting with ``what``, naming the classes a mapping misses, the names that are no
    class, and the classes."""
    n_fg = max(int(num_classes) - 1, 1)
    names = _class_names(class_names, n_fg)
    if isinstance(tolerance, Mapping):
        missing = [n for n in names if n not in tolerance]
        problems = [f"no tolerance for {', '.join(missing)}"] if missing else []
        for k in tolerance:
            if k not in names:
                problems.append(f"{k!r} is not a class{did_you_mean(k, missing)}")
        if problems:
            raise BenchError(f"{what}: {'; '.join(problems)}. Classes: {', '.join(names)}")
        return {n: _check_tolerance(tolerance[n], f"{what} of {n}") for n in names}
    tols = [_check_tolerance(t, what) for t in ([tolerance] * n_fg if np.ndim(tolerance) == 0 else tolerance)]
    if len(tols) != n_fg:
        raise BenchError(f"{what}: {len(tols)} values; expected one per foreground class "
                         f"({', '.join(names)})")
    return dict(zip(names, tols))


def score_case(pred: Any, gt: Any, num_classes: int, policy: str | Policy,
               spacing: Sequence[float] | float | None = None,
               class_names: Sequence[str] | None = None,
               nsd_tolerance: float | Sequence[float] | Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """Score one case (2-D image or 3-D volume): one row per foreground class.

    pred, gt: integer label maps of one shape with ids 0..num_classes-1 (0 = background); for a
    binary task (``num_classes`` 1 or 2) 0/1 (or bool) masks, scored as class 1. spacing: mm per
    array axis, used for HD95 (and strict's penalty) only if ``policy.use_spacing``. class_names:
    foreground names (class 1 first; a leading background name is dropped); default "class<c>".

    Each row: ``class`` (int), ``name`` (str), ``dice``, ``iou``, ``hd95``, ``acc``, ``spe``,
    ``sen`` (floats, NaN = not applicable), ``tp``, ``fp``, ``fn``, ``tn``, ``n_pred``, ``n_ref``
    (ints) and ``empty`` in {"both", "ref_only", "pred_only", "none"}. Empty cases follow the
    policy's table (``get_policy(name).__doc__``). With ``nsd_tolerance`` (in the HD95 unit: mm where
    the policy uses the spacing; one for all classes or per class, see ``class_tolerances``), rows add
    ``nsd`` (NaN when both masks are empty, 0 when one is) and the ``nsd_tolerance`` it used.
    """
    pol = get_policy(policy)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise BenchError(f"num_classes must be an integer >= 1 (background included); got {num_classes!r}")
    n_fg = max(int(num_classes) - 1, 1)
    p = _label_map(pred, "prediction", n_fg)
    g = _label_map(gt, "reference", n_fg)
    if p.shape != g.shape:
        raise BenchError(f"prediction shape {p.shape} does not match reference (ground-truth) shape {g.shape}")
    names = _class_names(class_names, n_fg)
    tols = None if nsd_tolerance is None else list(class_tolerances(nsd_tolerance, num_classes, names).values())
    sp = _sampling(spacing, p.ndim) if pol.use_spacing else None
    # bounding boxes of every label in one pass per map: each class is then scored inside its box
    p_boxes = ndimage.find_objects(p, max_label=n_fg)
    g_boxes = ndimage.find_objects(g, max_label=n_fg)
    rows = []
    for c in range(1, n_fg + 1):
        boxes = [b for b in (p_boxes[c - 1], g_boxes[c - 1]) if b is not None]
        if boxes:  # union box + 1-voxel margin (clipped): counts and surfaces are exact inside it
            box = tuple(slice(max(min(b[i].start for b in boxes) - 1, 0),
                              min(max(b[i].stop for b in boxes) + 1, p.shape[i])) for i in range(p.ndim))
            pc, gc = p[box] == c, g[box] == c
        else:
            pc = gc = np.zeros((0,) * p.ndim, dtype=bool)
        k = confusion(pc, gc)
        k["tn"] = int(p.size) - k["tp"] - k["fp"] - k["fn"]
        counted = count_scores(**k, policy=pol)
        if counted["empty"] == "none":
            dists = surface_distances(pc, gc, sp) if pol.hd_definition or tols is not None else None
            h = _HD_OF_DISTANCES[pol.hd_definition](*dists) if pol.hd_definition else NAN
            s = _within(*dists, tols[c - 1]) if tols is not None else NAN
        else:
            h = pol.outcome(counted["empty"]).hd95
            if h == PENALTY:
                h = hd95_penalty(p.shape, sp)
            s = NAN if counted["empty"] == "both" else 0.0
        rows.append({
            "class": c, "name": names[c - 1],
            "dice": counted["dice"], "iou": counted["iou"], "hd95": float(h),
            **({"nsd": s, "nsd_tolerance": tols[c - 1]} if tols is not None else {}),
            **{m: counted[m] for m in ("acc", "spe", "sen")}, **k,
            **{m: counted[m] for m in ("n_pred", "n_ref", "empty")},
        })
    return rows


def count_scores(tp: int, fp: int, fn: int, tn: int, policy: str | Policy) -> dict[str, Any]:
    """What one case x class row's pixel counts give under ``policy``: ``dice`` 2TP/(2TP+FP+FN) and ``iou``
    TP/(TP+FP+FN) where both masks are non-empty, else the policy's outcome for ``empty`` (in {"none", "both",
    "ref_only", "pred_only"}); ``acc``, ``spe``, ``sen`` (``zero_division`` where a denominator is 0);
    ``n_pred``, ``n_ref``. ``score_case`` writes its rows' numbers from here and ``bench.records.restated``
    checks stored rows against it, so the two cannot drift apart."""
    pol = get_policy(policy)
    out = pooled_metrics(tp, fp, fn, tn, pol.zero_division)  # Dice and IoU: medpy dc / jc, same operands
    n_pred, n_ref = tp + fp, tp + fn
    empty = "none" if n_pred and n_ref else "ref_only" if n_ref else "pred_only" if n_pred else "both"
    if empty != "none":
        out["dice"] = out["iou"] = pol.outcome(empty).dice  # IoU follows the Dice rule
    return {**out, "dice": float(out["dice"]), "iou": float(out["iou"]), "n_pred": n_pred, "n_ref": n_ref,
            "empty": empty}


# -------------------------------------------------------------------------------------- aggregation


def pooled_metrics(tp: int, fp: int, fn: int, tn: int, zero_division: float = 0.0) -> dict[str, float]:
    """VM-UNet's metrics from one confusion matrix: dice, iou (foreground), acc, spe, sen;
    a ratio with a zero denominator is ``zero_division`` (0 in engine.py). Arrays of counts give arrays."""
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, zero_division),
        "iou": _ratio(tp, tp + fp + fn, zero_division),
        "acc": _ratio(tp + tn, tp + fp + fn + tn, zero_division),
        "spe": _ratio(tn, tn + fp, zero_division),
        "sen": _ratio(tp, tp + fn, zero_division),
    }


class PooledConfusion:
    """legacy-isic's accumulator: one confusion matrix over every pixel of every test image.

    ``update(pred, gt)`` per image (pred: probabilities, foreground where ``>= threshold``, or a 0/1
    mask; gt: mask, foreground where ``>= 0.5``, VM-UNet engine.py), then ``compute()``.
    """

    def __init__(self, threshold: float = 0.5):
        self.threshold = float(threshold)
        self.reset()

    def reset(self) -> None:
        self.tp = self.fp = self.fn = self.tn = 0

    def update(self, pred: Any, gt: Any) -> None:
        k = confusion(_array(pred) >= self.threshold, _array(gt) >= 0.5)
        self.tp += k["tp"]
        self.fp += k["fp"]
        self.fn += k["fn"]
        self.tn += k["tn"]

    def counts(self) -> dict[str, int]:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn}

    def compute(self) -> dict[str, float]:
        """``pooled_metrics`` of the counts so far: dice, iou, acc, spe, sen."""
        return pooled_metrics(self.tp, self.fp, self.fn, self.tn)


def _frame(rows: Any, need: Iterable[str]):
    import pandas as pd

    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if df.empty:
        raise BenchError("no scored rows to aggregate (score_case returned nothing, or no test cases)")
    missing = [k for k in need if k not in df.columns]
    if missing:
        raise BenchError(f"metric rows lack column(s) {', '.join(missing)}; rows must come from score_case")
    return df


def pooled_from_counts(rows: Any) -> dict[str, float]:
    """legacy-isic's numbers recomputed from per-case rows' ``tp``/``fp``/``fn``/``tn`` (list of
    dicts or DataFrame): the counts are summed, then ``pooled_metrics``."""
    df = _frame(rows, COUNTS)
    return pooled_metrics(*(int(df[k].sum()) for k in COUNTS))


def _mean(values: Any) -> tuple[float, int, int]:
    """(NaN-skipping mean, n_valid, n_nan); the mean is NaN when nothing is valid."""
    v = np.asarray(values, dtype=np.float64)
    valid = ~np.isnan(v)
    n_valid = int(valid.sum())
    return (float(v[valid].mean()) if n_valid else NAN), n_valid, int(v.size - n_valid)


def aggregate_per_class(rows: Any, policy: str | Policy) -> list[dict[str, Any]]:
    """One dict per class, in class order: ``class``, ``name``, ``n`` (rows = cases), ``n_nan``
    (cases whose Dice is NaN, i.e. not applicable), the metrics and ``n_nan_<metric>`` counts.

    Per-case policies: each metric is the mean over the cases where it is not NaN. legacy-isic:
    the class's pooled counts (``pooled_metrics``); hd95 NaN.
    """
    pol = get_policy(policy)
    df = _frame(rows, ("class",) + (COUNTS if pol.pooled else METRICS))
    out = []
    for c, grp in df.groupby("class", sort=True):
        names = grp["name"].dropna() if "name" in grp else []
        row: dict[str, Any] = {"class": int(c), "name": str(names.iloc[0]) if len(names) else f"class{int(c)}",
                               "n": int(len(grp))}
        if pol.pooled:
            row.update(n_nan=0, **pooled_from_counts(grp), hd95=NAN)
        else:
            row["n_nan"] = _mean(grp["dice"])[2]
            for m in _metrics_in(df):
                row[m], _, row[f"n_nan_{m}"] = _mean(grp[m])
        out.append(row)
    return out


def aggregate(rows: Any, policy: str | Policy) -> dict[str, Any]:
    """The dataset-level numbers a paper reports under ``policy`` (rows from ``score_case``, each
    tagged with ``case``; a list of dicts or a DataFrame).

    Per-case policies (TransUNet's order): mean over cases per class, then mean over classes, for
    dice, iou, hd95, acc, spe, sen; NaN entries are skipped and counted: ``n_valid_<metric>`` and
    ``n_nan_<metric>`` count case x class entries. legacy-isic: ``pooled_from_counts`` over all rows,
    hd95 NaN. Always ``n_cases`` (distinct ``case`` values, else rows per class) and ``n_classes``.
    """
    pol = get_policy(policy)
    df = _frame(rows, ("class",) + (COUNTS if pol.pooled else METRICS))
    n_classes = int(df["class"].nunique())
    misfit = policy_misfit(pol, n_classes, "this data")
    if misfit:
        raise BenchError(misfit)
    n_cases = int(df["case"].nunique()) if "case" in df else int(df.groupby("class").size().max())
    if pol.pooled:
        return {**pooled_from_counts(df), "hd95": NAN, "n_cases": n_cases, "n_classes": n_classes}
    per_class = aggregate_per_class(df, pol)
    out: dict[str, Any] = {}
    for m in _metrics_in(df):  # a class with no valid case makes it NaN (nnU-Net's foreground mean), not a
        out[m] = float(np.mean([r[m] for r in per_class]))  # mean over the classes left
    out["n_cases"], out["n_classes"] = n_cases, n_classes
    for m in _metrics_in(df):
        _, out[f"n_valid_{m}"], out[f"n_nan_{m}"] = _mean(df[m])
    return out


def _metrics_in(df) -> tuple[str, ...]:
    """METRICS, then the optional ones the rows carry (all NaN: asked for by none of them)."""
    return METRICS + tuple(m for m in OPTIONAL_METRICS if m in df and df[m].notna().any())


def policy_fields(policy: str | Policy) -> dict[str, Any]:
    """A policy's conventions as a plain dict (for run records), without the prose table."""
    pol = get_policy(policy)
    return {f.name: (list(getattr(pol, f.name)) if isinstance(getattr(pol, f.name), tuple) else getattr(pol, f.name))
            for f in fields(pol) if f.name != "table"}
