"""bench.metrics against independent references (medpy, MONAI, TransUNet's rule, a numpy confusion
matrix) and against hand-computed tables, one row per edge case."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from medpy.metric import binary as medpy

from bench import metrics as M
from bench.errors import BenchError

torch.set_num_threads(1)  # MONAI imports torch; the CI machine has 2 shared cores

NAN = math.nan


# ------------------------------------------------------------------------ random mask pairs


def _blob(shape, rng):
    grid = np.indices(shape)
    c = [rng.uniform(0, s) for s in shape]
    r = [rng.uniform(1.5, max(2.0, s / 2)) for s in shape]
    return sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r)) <= 1


def _mask(kind, shape, rng):
    m = np.zeros(shape, bool)
    if kind == "blob":
        m = _blob(shape, rng)
    elif kind == "noise":
        m = rng.random(shape) > rng.uniform(0.6, 0.97)
    elif kind == "border":  # touches the array border on several faces
        m = _blob(shape, rng)
        m[(0,) * len(shape)] = True
        m[tuple(slice(0, 3) for _ in shape)] = True
        m[(slice(None),) + (-1,) * (len(shape) - 1)] = True
    elif kind == "single":
        m[tuple(int(rng.integers(0, s)) for s in shape)] = True
    elif kind == "thin":  # one-voxel-thick sheet / line
        m[..., int(rng.integers(0, shape[-1]))] = True
    elif kind == "full":  # every voxel: the whole surface is the array border
        m[:] = True
    if not m.any():
        m[tuple(s // 2 for s in shape)] = True
    return m


_KINDS = ["blob", "noise", "border", "single", "thin", "full"]


def _pairs(seed, n):
    """Deterministic (a, b, spacing) triples: 2-D and 3-D, every kind against every other."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        shape = (14, 17, 12) if i % 2 else (33, 27)
        ka, kb = _KINDS[i % len(_KINDS)], _KINDS[(i // len(_KINDS) + i) % len(_KINDS)]
        spacing = None if i % 3 == 0 else tuple(float(s) for s in rng.uniform(0.4, 3.5, len(shape)))
        out.append(pytest.param(_mask(ka, shape, rng), _mask(kb, shape, rng), spacing,
                                id=f"{len(shape)}d-{ka}-{kb}-{'sp' if spacing else 'vox'}-{i}"))
    return out


PAIRS = _pairs(0, 72)


@pytest.mark.parametrize("a, b, spacing", PAIRS)
def test_hd95_dice_iou_equal_medpy(a, b, spacing):
    assert M.hd95(a, b, spacing) == pytest.approx(medpy.hd95(a, b, voxelspacing=spacing), abs=1e-6)
    d_ab, d_ba = M.surface_distances(a, b, spacing)
    assert np.max(np.hstack((d_ab, d_ba))) == pytest.approx(medpy.hd(a, b, voxelspacing=spacing), abs=1e-6)
    assert M.dice(a, b) == pytest.approx(medpy.dc(a, b), abs=1e-12)
    assert M.iou(a, b) == pytest.approx(medpy.jc(a, b), abs=1e-12)


def test_hd95_connectivity_2_equals_medpy():
    for param in PAIRS[:12]:
        a, b, spacing = param.values
        want = medpy.hd95(a, b, voxelspacing=spacing, connectivity=2)
        assert M.hd95(a, b, spacing, connectivity=2) == pytest.approx(want, abs=1e-6)


def test_hd95_max_directed_equals_monai():
    from monai.metrics import compute_hausdorff_distance

    def onehot(m):  # (B=1, C=2: background, foreground, *spatial); MONAI skips channel 0 below
        t = torch.from_numpy(m.astype(np.float32))[None, None]
        return torch.cat([1 - t, t], dim=1)

    for param in PAIRS[:36]:
        a, b, spacing = param.values
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI's own deprecation notice inside get_mask_edges
            ref = compute_hausdorff_distance(onehot(a), onehot(b), include_background=False, percentile=95,
                                             spacing=list(spacing) if spacing else None)
        assert ref.shape == (1, 1)
        # MONAI's distances and torch.quantile run in float32
        assert M.hd95_max_directed(a, b, spacing) == pytest.approx(float(ref[0, 0]), rel=1e-5, abs=1e-5), param.id
        assert M.hd95_max_directed(a, b, spacing) >= M.hd95(a, b, spacing) - 1e-9
        # the public map by definition name takes masks, as these functions do (uint8 masks too)
        assert M.HD_DEFINITIONS["max_directed"](a, b, spacing) == M.hd95_max_directed(a, b, spacing)
        assert M.HD_DEFINITIONS["pooled"](a.astype(np.uint8), b.astype(np.uint8), spacing) == M.hd95(a, b, spacing)


def test_strict_monai_scores_hd95_as_monai_and_the_rest_as_strict():
    from monai.metrics import compute_hausdorff_distance

    rng = np.random.default_rng(4)
    gt, pred = np.zeros((12, 20, 18), int), np.zeros((12, 20, 18), int)
    gt[2:9, 3:12, 2:10], pred[3:10, 4:13, 2:9] = 1, 1  # class 1: shifted box
    gt[5:8, 14:18, 11:16] = 2
    pred[5:8, 13:18, 11:17] = 2
    pred[10, 2, 2] = 2  # a stray voxel: the two percentile definitions disagree
    gt[0:2, 0:3, 15:18] = 3  # class 3: missed -> penalty, as under strict
    spacing = tuple(float(v) for v in rng.uniform(0.6, 2.5, 3))
    onehot = lambda m: torch.from_numpy(np.eye(4, dtype=np.float32)[m]).permute(3, 0, 1, 2)[None]  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = compute_hausdorff_distance(onehot(pred), onehot(gt), include_background=False, percentile=95,
                                         spacing=list(spacing))[0]
    monai_rows = M.score_case(pred, gt, 4, "strict-monai", spacing)
    strict_rows = M.score_case(pred, gt, 4, "strict", spacing)
    for c in (0, 1):
        assert monai_rows[c]["hd95"] == pytest.approx(float(ref[c]), rel=1e-5, abs=1e-5)
    assert monai_rows[1]["hd95"] > strict_rows[1]["hd95"]  # this case tells the definitions apart
    assert monai_rows[2]["hd95"] == strict_rows[2]["hd95"] == M.hd95_penalty(gt.shape, spacing)
    for a, b in zip(monai_rows, strict_rows):
        assert {k: v for k, v in a.items() if k != "hd95"} == {k: v for k, v in b.items() if k != "hd95"}


def test_nsd_equals_monai_surface_dice():
    from monai.metrics import compute_surface_dice

    def onehot(m):
        t = torch.from_numpy(m.astype(np.float32))[None, None]
        return torch.cat([1 - t, t], dim=1)

    for param in PAIRS[:36]:
        a, b, spacing = param.values
        for tol in (0.5, 1.0, 2.5):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = compute_surface_dice(onehot(a), onehot(b), class_thresholds=[tol], include_background=False,
                                           spacing=list(spacing) if spacing else None)
            assert M.nsd(a, b, tol, spacing) == pytest.approx(float(ref[0, 0]), abs=1e-6), (param.id, tol)


def test_nsd_hand_computed_and_in_score_case():
    a = np.zeros((6, 6), bool)
    a[1:4, 1:4] = True  # 3x3 square: 8 surface pixels (all but the centre)
    b = np.roll(a, 1, axis=1)  # shifted right by one
    # 4 of a's 8 surface pixels lie on b's surface (top and bottom rows, columns 2-3); the left
    # column and the middle of the right one are 1 pixel away; b likewise
    assert M.nsd(a, b, 0.0) == pytest.approx(8 / 16)
    assert M.nsd(a, b, 1.0) == 1.0 and M.nsd(a, a, 0.0) == 1.0
    # columns 2 mm apart: only the middle pixels (1 mm above/below the other surface) join
    assert M.nsd(a, b, 1.0, spacing=(1.0, 2.0)) == pytest.approx(10 / 16)
    gt = np.zeros((6, 6), int)
    gt[a] = 1
    pred = np.zeros((6, 6), int)
    pred[b] = 1
    pred[5, 5] = 2  # class 2 only predicted
    rows = M.score_case(pred, gt, 4, "strict", nsd_tolerance=0.0)
    assert [r["nsd"] for r in rows][:2] == [pytest.approx(8 / 16), 0.0] and math.isnan(rows[2]["nsd"])
    assert "nsd" not in M.score_case(pred, gt, 4, "strict")[0]  # only when asked for
    agg = M.aggregate([{"case": "c", **r} for r in rows], "strict")
    assert math.isnan(agg["nsd"]) and agg["n_nan_nsd"] == 1  # class 3 has no valid case: no mean over classes
    agg = M.aggregate([{"case": "c", **r} for r in rows[:2]], "strict")
    assert agg["nsd"] == pytest.approx((8 / 16 + 0.0) / 2) and agg["n_nan_nsd"] == 0
    assert "nsd" not in M.aggregate([{"case": "c", **r} for r in M.score_case(pred, gt, 4, "strict")], "strict")


def test_per_class_nsd_tolerances_equal_monai_class_thresholds():
    from monai.metrics import compute_surface_dice

    rng = np.random.default_rng(7)
    gt = np.zeros((20, 24), int)
    pred = np.zeros((20, 24), int)
    for c, (r, col) in enumerate([(5, 5), (5, 16), (14, 10)], start=1):
        gt[r - 3:r + 3, col - 3:col + 4] = c
        pred[r - 3 + rng.integers(-1, 2):r + 2, col - 2:col + 4 + rng.integers(0, 2)] = c
    spacing, tols = (1.0, 0.8), [0.5, 1.0, 2.5]
    rows = M.score_case(pred, gt, 4, "strict", spacing=spacing, class_names=["liver", "spleen", "kidney"],
                        nsd_tolerance={"kidney": 2.5, "liver": 0.5, "spleen": 1.0})  # any order
    assert [r["nsd_tolerance"] for r in rows] == tols
    by_hand = [M.nsd(pred == c, gt == c, t, spacing) for c, t in zip((1, 2, 3), tols)]
    assert [r["nsd"] for r in rows] == by_hand
    assert [r["nsd"] for r in M.score_case(pred, gt, 4, "strict", spacing=spacing, nsd_tolerance=tols)] == by_hand
    one = [r["nsd"] for r in M.score_case(pred, gt, 4, "strict", spacing=spacing, nsd_tolerance=1.0)]
    assert one[1] == by_hand[1] and one[0] != by_hand[0] and one[2] != by_hand[2]  # each class its own

    def onehot(m):
        return torch.nn.functional.one_hot(torch.from_numpy(m), 4).permute(2, 0, 1)[None].float()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = compute_surface_dice(onehot(pred), onehot(gt), class_thresholds=tols, include_background=False,
                                   spacing=list(spacing))
    assert [r["nsd"] for r in rows] == pytest.approx(ref[0].tolist(), abs=1e-6)


def test_per_class_nsd_tolerances_name_missing_and_unknown_classes():
    gt = np.zeros((6, 6), int)
    gt[1:3, 1:3], gt[4:6, 4:6] = 1, 2
    with pytest.raises(BenchError, match=r"^nsd_tolerance: no tolerance for liver; 'livr' is not a class "
                                         r"\(did you mean 'liver'\?\); 'lung' is not a class\. Classes: liver, spleen$"):
        M.score_case(gt, gt, 3, "strict", class_names=["liver", "spleen"], nsd_tolerance={"livr": 1, "spleen": 2, "lung": 3})
    with pytest.raises(BenchError, match=r"3 values; expected one per foreground class \(class1, class2\)"):
        M.score_case(gt, gt, 3, "strict", nsd_tolerance=[1, 2, 3])
    assert M.class_tolerances(2, 3, ["liver", "spleen"]) == {"liver": 2.0, "spleen": 2.0}


def test_hd95_definitions_hand_computed():
    # a: one voxel at x=0; b: voxels at x=0 and x=4 (1x5 grid, all voxels are surface)
    a = np.array([[1, 0, 0, 0, 0]], bool)
    b = np.array([[1, 0, 0, 0, 1]], bool)
    # a->b: [0]; b->a: [0, 4]. pooled [0, 0, 4]: 95th pct at 1.9 -> 0.9 * 4 = 3.6
    assert M.hd95(a, b) == pytest.approx(3.6)
    # max of directed: pct([0]) = 0, pct([0, 4]) at 0.95 -> 3.8
    assert M.hd95_max_directed(a, b) == pytest.approx(3.8)
    assert M.hd95(a, b, spacing=(1.0, 2.0)) == pytest.approx(7.2)
    assert M.hd95(a, b, spacing=2.0) == pytest.approx(7.2)
    assert M.hd95(a, a) == 0.0


def test_surface_distances_empty_and_bad_spacing():
    a = np.zeros((6, 6), bool)
    a[2, 2] = True
    with pytest.raises(ValueError, match="non-empty"):
        M.hd95(a, np.zeros_like(a))
    with pytest.raises(ValueError, match="non-empty"):
        M.surface_distances(np.zeros_like(a), a)
    with pytest.raises(BenchError, match="spacing must be 2 positive"):
        M.hd95(a, a, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(BenchError, match=r"spacing must be 2 positive numbers .*got '0.8,0.7'"):
        M.hd95(a, a, spacing="0.8,0.7")  # a string, as a notebook may pass a spacing read from text
    with pytest.raises(M.EmptyMaskError) as empty:  # one exception a caller of the API can catch as BenchError
        M.hd95(a, np.zeros_like(a))
    assert isinstance(empty.value, BenchError)


@pytest.mark.parametrize("a, b, spacing", PAIRS[::3])
def test_the_nearest_point_path_gives_the_distance_transforms_values(monkeypatch, a, b, spacing):
    """Surface distances by a k-d tree (taken where the masks' box dwarfs their surfaces) are those of
    the distance transforms, voxel for voxel, in the same order."""
    if not a.any() or not b.any():
        return
    monkeypatch.setattr(M, "KDTREE_MIN_BOX", 1 << 62)
    by_transform = M.surface_distances(a, b, spacing)
    monkeypatch.setattr(M, "KDTREE_MIN_BOX", 0)
    monkeypatch.setattr(M, "KDTREE_RATIO", 0)
    by_tree = M.surface_distances(a, b, spacing)
    for want, got in zip(by_transform, by_tree):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def test_a_stray_voxel_far_from_the_organ_is_scored_without_transforming_the_volume(monkeypatch):
    """A metrics fuzz: one false-positive voxel in a far corner made the box of a class the whole CT
    (10 s and 1.3 GB per class at 100x512x512); the values stay medpy's."""
    gt = np.zeros((40, 96, 96), bool)
    gt[15:25, 30:50, 40:60] = True
    pred = np.roll(gt, 2, axis=2)
    pred[0, 0, 0] = pred[39, 95, 95] = True
    trees = []
    nearest = M._nearest_distances
    monkeypatch.setattr(M, "_nearest_distances", lambda *a: trees.append(1) or nearest(*a))
    for spacing in (None, (2.5, 0.7, 0.7)):
        assert M.hd95(pred, gt, spacing) == pytest.approx(medpy.hd95(pred, gt, voxelspacing=spacing), abs=1e-9)
        d_pg, d_gp = M.surface_distances(pred, gt, spacing)
        assert max(d_pg.max(), d_gp.max()) == pytest.approx(medpy.hd(pred, gt, voxelspacing=spacing), abs=1e-9)
    assert len(trees) == 4
    compact = np.roll(gt, 1, axis=1)  # its box is its surface's size: the transforms, bit for bit medpy's
    assert M.hd95(compact, gt) == medpy.hd95(compact, gt) and len(trees) == 4


def test_score_case_finds_the_surfaces_once_for_hd95_and_nsd(monkeypatch):
    gt = np.zeros((20, 20), np.uint8)
    gt[4:12, 4:12], gt[14:18, 2:9] = 1, 2
    pred = np.roll(gt, 1, axis=0)
    calls = []
    surfaces = M.surface_distances
    monkeypatch.setattr(M, "surface_distances", lambda *a, **k: calls.append(1) or surfaces(*a, **k))
    rows = M.score_case(pred, gt, 3, "strict", spacing=(0.8, 1.2), nsd_tolerance=1.0)
    assert len(calls) == 2  # one per class
    for row, c in zip(rows, (1, 2)):
        assert row["hd95"] == M.hd95(pred == c, gt == c, (0.8, 1.2))
        assert row["nsd"] == M.nsd(pred == c, gt == c, 1.0, (0.8, 1.2))


def test_odd_label_maps_and_class_names():
    """A metrics fuzz: a float map holding 1e20 was reported as labels -9223372036854775808..0 (cast
    before the check); empty and 0-D maps failed deep inside (ZeroDivisionError, IndexError); a
    background name was dropped for 2 classes but refused for a 1-class sigmoid task."""
    with pytest.raises(BenchError, match=r"prediction holds labels 0\.\.100000000000000000000; expected 0\.\.1"):
        M.score_case(np.array([[0, 1e20]]), np.array([[0, 1.0]]), 2, "strict")
    for bad in (np.zeros((0, 3), int), np.array(1)):
        with pytest.raises(BenchError, match=rf"prediction must be a label map with at least one pixel; got shape "
                                             rf"{re.escape(str(bad.shape))}"):
            M.score_case(bad, bad, 2, "strict")
    with pytest.raises(BenchError, match="prediction must be a mask of at least one dimension"):
        M.hd95(np.array(1), np.array(1))
    m = np.zeros((8, 8), np.uint8)
    m[2:5, 2:5] = 1
    for n in (1, 2):
        (row,) = M.score_case(m, m, n, "strict", class_names=["background", "lesion"])
        assert row["name"] == "lesion" and row["dice"] == 1.0
    assert M.nsd(m, np.roll(m, 1, 0), "1") == M.nsd(m, np.roll(m, 1, 0), 1.0)  # checked, then used as that float


def test_binary_metrics_refuse_what_is_no_binary_mask():
    """From a notebook journey: a probability map (or a label map of 3 classes) given to dice, hd95 or
    confusion was scored as its non-zero union (dice 0.316 for a map of 0.01..0.2) without a word."""
    rng = np.random.default_rng(0)
    gt = np.zeros((16, 16), np.uint8)
    gt[4:10, 4:10] = 1
    probs = rng.uniform(0.01, 0.2, gt.shape)
    labels = np.where(gt == 1, 2, 0) + (np.arange(16)[:, None] > 12)
    for fn in (M.dice, M.iou, M.confusion, M.hd95, lambda p, g: M.nsd(p, g, 1.0)):
        with pytest.raises(BenchError, match=rf"prediction must be a binary mask .*got (0\.0\d+, ){{2}}0\.0\d+ beside "
                                             rf"{probs.flat[0]:.3g}: threshold a probability map"):
            fn(probs, gt)
        with pytest.raises(BenchError, match=r"reference must be a binary mask .*got 1 beside 2: .*compare a label map"):
            fn(gt, labels)
        nan = gt.astype(float)
        nan[0, 0] = np.nan  # NaN != 0: it was counted as foreground
        with pytest.raises(BenchError, match=r"reference must be a binary mask \(bool, or 0 and one other value\); it "
                                             "holds NaN"):
            fn(gt, nan)
        nan[0, 0], nan[15, 15] = 0, np.nan
        with pytest.raises(BenchError, match=r"got nan beside 1"):
            fn(gt, nan)
    # one non-zero value of any kind is a mask: 0/255 and 0/1 floats score as bool masks do
    pred = np.zeros_like(gt)
    pred[5:11, 4:9] = 1
    for as_given in (pred * 255, pred.astype(np.float32), pred.astype(bool)):
        assert M.dice(as_given, gt) == pytest.approx(medpy.dc(pred, gt))
        assert M.hd95(as_given, gt * 255) == pytest.approx(medpy.hd95(pred, gt))
    with pytest.raises(BenchError, match="must be a binary mask .*dtype <U1"):
        M.dice(np.array(["a", "b"]), np.array([0, 1]))


def test_nsd_tolerance_must_be_a_distance():
    """A negative or NaN tolerance scored NSD 0 for every case (the protocol refused it; the API did not)."""
    a = np.zeros((8, 8), bool)
    a[2:5, 2:5] = True
    b = np.roll(a, 1, axis=0)
    for bad in (-1.0, float("nan"), float("inf"), "one"):
        with pytest.raises(BenchError, match=r"tolerance must be a distance >= 0"):
            M.nsd(a, b, bad)
        with pytest.raises(BenchError, match=r"nsd_tolerance must be a distance >= 0"):
            M.score_case(a.astype(int), b.astype(int), 2, "strict", nsd_tolerance=bad)
    with pytest.raises(BenchError, match=r"nsd_tolerance of liver must be a distance >= 0 .*got -2"):
        M.class_tolerances({"liver": -2, "kidney": 1.0}, 3, ["liver", "kidney"])
    assert M.score_case(a.astype(int), b.astype(int), 2, "strict", nsd_tolerance=0)[0]["nsd"] == M.nsd(a, b, 0.0)


@pytest.mark.parametrize("bad", ["3", 2.0, True, 0])
def test_score_case_num_classes_is_a_positive_integer(bad):
    a = np.zeros((4, 4), int)
    with pytest.raises(BenchError, match=rf"num_classes must be an integer >= 1 \(background included\); got {bad!r}"):
        M.score_case(a, a, bad, "strict")


def test_dice_iou_confusion_hand_computed():
    p = np.array([[1, 1], [0, 0]])
    g = np.array([[1, 1], [1, 1]])
    assert M.confusion(p, g) == {"tp": 2, "fp": 0, "fn": 2, "tn": 0}
    assert M.dice(p, g) == pytest.approx(4 / 6)
    assert M.iou(p, g) == pytest.approx(0.5)
    assert math.isnan(M.dice(np.zeros(3), np.zeros(3))) and math.isnan(M.iou(np.zeros(3), np.zeros(3)))
    assert M.dice(np.ones(3), np.zeros(3)) == 0.0


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(BenchError, match=r"\(2, 3\).*\(3, 2\)"):
        M.dice(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(BenchError, match=r"\(2, 3\).*\(3, 2\)"):
        M.score_case(np.ones((2, 3), int), np.ones((3, 2), int), 2, "strict")


# --------------------------------------------------------------------- per-policy edge tables

# 5x5 image, class 1. P: 2x2 square; G: the 2x3 rectangle containing it; Z: nothing.
Z = np.zeros((5, 5), np.uint8)
P = Z.copy()
P[1:3, 1:3] = 1
G = Z.copy()
G[1:3, 1:4] = 1
# P vs G: tp 4, fp 0, fn 2, tn 19; Dice 8/10, IoU 4/6; surfaces are whole masks (2-thick),
# distances P->G all 0, G->P [0,0,0,0,1,1] -> pooled 95th pct 1 voxel (3 mm with spacing (2, 3)).
SP = (2.0, 3.0)
DIAG_MM = math.sqrt((5 * 2.0) ** 2 + (5 * 3.0) ** 2)  # strict's penalty with spacing SP

KEYS = ("empty", "dice", "iou", "hd95", "acc", "spe", "sen", "tp", "fp", "fn", "tn", "n_pred", "n_ref")
TABLE = {  # policy -> [(pred, gt, expected row)], rows: both empty / only ref / only pred / both present
    "legacy-synapse": [  # TransUNet calculate_metric_percase; spacing ignored
        (Z, Z, ("both", 0, 0, 0, 1, 1, 0, 0, 0, 0, 25, 0, 0)),
        (Z, G, ("ref_only", 0, 0, 0, 19 / 25, 1, 0, 0, 0, 6, 19, 0, 6)),  # missed organ: best HD95
        (P, Z, ("pred_only", 1, 1, 0, 21 / 25, 21 / 25, 0, 0, 4, 0, 21, 4, 0)),  # FP: Dice 1
        (P, G, ("none", 0.8, 4 / 6, 1.0, 23 / 25, 1, 4 / 6, 4, 0, 2, 19, 4, 6)),
    ],
    "strict": [  # HD95 in mm with SP; penalty = the image diagonal in mm
        (Z, Z, ("both", NAN, NAN, NAN, 1, 1, NAN, 0, 0, 0, 25, 0, 0)),
        (Z, G, ("ref_only", 0, 0, DIAG_MM, 19 / 25, 1, 0, 0, 0, 6, 19, 0, 6)),
        (P, Z, ("pred_only", 0, 0, DIAG_MM, 21 / 25, 21 / 25, NAN, 0, 4, 0, 21, 4, 0)),
        (P, G, ("none", 0.8, 4 / 6, 3.0, 23 / 25, 1, 4 / 6, 4, 0, 2, 19, 4, 6)),
    ],
    "legacy-isic": [  # per-image rows: ratios with zero denominators are 0, no HD95
        (Z, Z, ("both", 0, 0, NAN, 1, 1, 0, 0, 0, 0, 25, 0, 0)),
        (Z, G, ("ref_only", 0, 0, NAN, 19 / 25, 1, 0, 0, 0, 6, 19, 0, 6)),
        (P, Z, ("pred_only", 0, 0, NAN, 21 / 25, 21 / 25, 0, 0, 4, 0, 21, 4, 0)),
        (P, G, ("none", 0.8, 4 / 6, NAN, 23 / 25, 1, 4 / 6, 4, 0, 2, 19, 4, 6)),
    ],
}
TABLE_PARAMS = [pytest.param(pol, p, g, exp, id=f"{pol}-{exp[0]}") for pol, rows in TABLE.items()
                for p, g, exp in rows]


def _check_row(row, expected):
    for key, want in zip(KEYS, expected):
        got = row[key]
        if isinstance(want, float) and math.isnan(want):
            assert isinstance(got, float) and math.isnan(got), key
        elif isinstance(want, str):
            assert got == want, key
        else:
            assert got == pytest.approx(want, abs=1e-12), key
            assert type(got) is (int if key in M.COUNTS + ("n_pred", "n_ref") else float), key


@pytest.mark.parametrize("policy, pred, gt, expected", TABLE_PARAMS)
def test_policy_edge_table(policy, pred, gt, expected):
    (row,) = M.score_case(pred, gt, 2, policy, spacing=SP, class_names=["organ"])
    assert row["class"] == 1 and row["name"] == "organ"
    _check_row(row, expected)
    # the same case as a binary task: num_classes 1, bool masks
    (row1,) = M.score_case(pred.astype(bool), gt.astype(bool), 1, M.get_policy(policy), spacing=SP)
    assert row1["name"] == "class1"
    _check_row(row1, expected)


def test_strict_without_spacing_is_in_voxels():
    (miss,) = M.score_case(Z, G, 2, "strict")
    assert miss["hd95"] == pytest.approx(math.sqrt(50))
    assert M.hd95_penalty((5, 5), SP) == pytest.approx(DIAG_MM)
    (row,) = M.score_case(P, G, 2, "strict")
    assert row["hd95"] == 1.0


def _transunet_percase(pred, gt):
    """TransUNet utils.py calculate_metric_percase, restated as the reference rule."""
    pred = (pred > 0).astype(np.uint8)
    gt = (gt > 0).astype(np.uint8)
    if pred.sum() > 0 and gt.sum() > 0:
        return medpy.dc(pred, gt), medpy.hd95(pred, gt)
    if pred.sum() > 0 and gt.sum() == 0:
        return 1, 0
    return 0, 0


def test_legacy_synapse_bit_compatible_with_transunet_rule():
    rng = np.random.default_rng(7)
    for case in range(4):
        shape = (8, 24, 26)
        gt = np.zeros(shape, np.int64)
        pred = np.zeros(shape, np.int64)
        for c in range(1, 9):
            if c != 2 + case:  # one organ absent from the reference
                gt[_blob(shape, rng)] = c
            if c != 5 - case:  # one organ missed by the prediction
                pred[_blob(shape, rng)] = c
        pred[0, :3, :3] = 7  # touches the volume border
        rows = M.score_case(pred, gt, 9, "legacy-synapse", spacing=(3.0, 0.7, 0.7))
        assert [r["class"] for r in rows] == list(range(1, 9))
        for r in rows:
            want = _transunet_percase(pred == r["class"], gt == r["class"])
            assert (r["dice"], r["hd95"]) == want, r  # exactly, not approximately


def test_score_case_multiclass_counts_names_and_border():
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 4, (6, 20, 20))
    gt = rng.integers(0, 4, (6, 20, 20))
    names = ["background", "a", "b", "c"]  # a leading background name is dropped
    rows = M.score_case(pred, gt, 4, "strict", spacing=(2.5, 0.8, 0.8), class_names=names)
    assert [(r["class"], r["name"]) for r in rows] == [(1, "a"), (2, "b"), (3, "c")]
    for r in rows:
        p, g = pred == r["class"], gt == r["class"]
        assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (
            np.sum(p & g), np.sum(p & ~g), np.sum(~p & g), np.sum(~p & ~g))
        assert r["dice"] == pytest.approx(medpy.dc(p, g))
        assert r["iou"] == pytest.approx(medpy.jc(p, g))
        assert r["hd95"] == pytest.approx(medpy.hd95(p, g, voxelspacing=(2.5, 0.8, 0.8)), abs=1e-6)


def test_score_case_rejects_bad_inputs():
    bad = np.zeros((4, 4), int)
    bad[0, 0] = 5
    with pytest.raises(BenchError, match=r"prediction holds labels 0\.\.5; expected 0\.\.3"):
        M.score_case(bad, np.zeros((4, 4), int), 4, "strict")
    with pytest.raises(BenchError, match="integer label map"):
        M.score_case(np.full((4, 4), 0.7), np.zeros((4, 4), int), 2, "strict")
    with pytest.raises(BenchError, match="class_names: 1 given; expected 2"):
        M.score_case(np.zeros((4, 4), int), np.zeros((4, 4), int), 3, "strict", class_names=["x"])
    with pytest.raises(BenchError, match="spacing must be 2"):
        M.score_case(P, G, 2, "strict", spacing=(1.0,))


def test_policy_docstrings_have_the_four_row_table():
    assert list(M.POLICIES) == ["legacy-synapse", "legacy-isic", "strict", "strict-monai"]
    for pol in M.POLICIES.values():
        doc = pol.__doc__
        assert doc.startswith(pol.name)
        for case in ("both empty", "only reference", "only prediction", "both present"):
            assert sum(line.strip().startswith(f"| {case}") for line in doc.splitlines()) == 1, (pol.name, case)
    strict = M.get_policy("strict")
    assert (strict.use_spacing, strict.hd_definition, strict.penalty) == (True, "pooled", "diagonal")
    assert M.get_policy("strict-monai").hd_definition == "max_directed"
    assert M.get_policy("legacy-isic").pooled and not M.get_policy("legacy-synapse").use_spacing


def test_unknown_policy_lists_valid_names():
    with pytest.raises(BenchError, match=r"did you mean 'strict'\?.*legacy-synapse, legacy-isic, strict"):
        M.get_policy("strickt")
    with pytest.raises(BenchError, match=r"'nope'\. Known policies: legacy-synapse, legacy-isic, strict"):
        M.score_case(Z, Z, 2, "nope")


# ---------------------------------------------------------------------- legacy-isic (pooled)


def test_legacy_isic_pooled_hand_computed():
    probs = [np.array([[0.9, 0.6], [0.2, 0.1]]), np.array([[0.0, 0.4], [0.3, 0.5]]), np.zeros((2, 2))]
    gts = [np.array([[1, 0], [0, 0]]), np.array([[0, 0], [1, 1]]), np.zeros((2, 2))]
    # pred >= 0.5: image 1 -> tp 1, fp 1, tn 2; image 2 -> tp 1 (0.5 counts), fn 1, tn 2; image 3 -> tn 4
    tp, fp, fn, tn = 2, 1, 1, 8
    want = {"dice": 2 * tp / (2 * tp + fp + fn), "iou": tp / (tp + fp + fn), "acc": (tp + tn) / 12,
            "spe": tn / (tn + fp), "sen": tp / (tp + fn)}
    assert want == pytest.approx({"dice": 4 / 6, "iou": 0.5, "acc": 10 / 12, "spe": 8 / 9, "sen": 2 / 3})
    acc = M.PooledConfusion()
    rows = []
    for i, (pr, g) in enumerate(zip(probs, gts)):
        acc.update(pr, g)
        rows += [{"case": f"img{i}", **r} for r in M.score_case((pr >= 0.5).astype(np.uint8), g, 1, "legacy-isic")]
    assert acc.counts() == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    assert acc.compute() == pytest.approx(want)
    assert M.pooled_from_counts(rows) == pytest.approx(want)
    agg = M.aggregate(pd.DataFrame(rows), "legacy-isic")
    assert {k: agg[k] for k in want} == pytest.approx(want)
    assert math.isnan(agg["hd95"]) and agg["n_cases"] == 3
    (pc,) = M.aggregate_per_class(rows, "legacy-isic")
    assert pc["dice"] == pytest.approx(want["dice"]) and pc["n"] == 3 and pc["n_nan"] == 0
    # a micro average: the per-image Dice values (2/3, 2/3, 0 for the empty image) average to 4/9
    assert [r["dice"] for r in rows] == pytest.approx([2 / 3, 2 / 3, 0.0])
    # zero denominators give 0, VM-UNet's rule
    assert M.pooled_metrics(0, 0, 0, 5) == {"dice": 0.0, "iou": 0.0, "acc": 1.0, "spe": 1.0, "sen": 0.0}


def test_pooled_confusion_counts_a_ground_truth_of_exactly_half_as_foreground():
    """Guards against gt > 0.5: a resized mask's 0.5 edge pixels dropped from the lesion (VM-UNet: >= 0.5)."""
    acc = M.PooledConfusion()
    acc.update(np.array([[0.9, 0.9], [0.1, 0.1]]), np.array([[0.5, 1.0], [0.5, 0.0]], np.float32))
    # gt foreground: 0.5, 1.0, 0.5; pred foreground: the top row
    assert acc.counts() == {"tp": 2, "fp": 0, "fn": 1, "tn": 1}


def test_legacy_isic_matches_numpy_confusion_matrix():
    rng = np.random.default_rng(11)
    probs = [rng.random((16, 16)) for _ in range(5)]
    gts = [(rng.random((16, 16)) > 0.6).astype(np.float32) for _ in range(5)]
    gts[2][:] = 0  # an image without lesion
    # reference: flatten everything, one 2x2 matrix by bincount (what sklearn's confusion_matrix gives)
    y_pred = np.concatenate([p.ravel() for p in probs]) >= 0.5
    y_true = np.concatenate([g.ravel() for g in gts]) >= 0.5
    tn, fp, fn, tp = np.bincount(2 * y_true.astype(int) + y_pred.astype(int), minlength=4)
    ref = {"acc": (tp + tn) / (tp + tn + fp + fn), "sen": tp / (tp + fn), "spe": tn / (tn + fp),
           "dice": 2 * tp / (2 * tp + fp + fn), "iou": tp / (tp + fp + fn)}
    acc = M.PooledConfusion(threshold=0.5)
    rows = []
    for i, (pr, g) in enumerate(zip(probs, gts)):
        acc.update(pr, g)
        rows += [{"case": str(i), **r} for r in M.score_case((pr >= 0.5).astype(np.uint8), g >= 0.5, 2, "legacy-isic")]
    assert acc.compute() == pytest.approx(ref, abs=1e-12)
    assert {k: v for k, v in M.aggregate(rows, "legacy-isic").items() if k in ref} == pytest.approx(ref, abs=1e-12)


# --------------------------------------------------------------------------------- aggregate


def _two_cases(policy):
    """Case a: class 1 both present (P vs G), class 2 missed. Case b: class 1 false positive,
    class 2 absent from both. 5x5 label maps, no spacing (voxel units)."""
    gt_a = G.copy()
    gt_a[4, 0:2] = 2
    pred_b, gt_b = P.copy(), Z.copy()
    rows = []
    for case, pred, gt in (("a", P, gt_a), ("b", pred_b, gt_b)):
        rows += [{"case": case, **r} for r in M.score_case(pred, gt, 3, policy, class_names=["x", "y"])]
    return rows


def test_aggregate_legacy_synapse_hand_computed():
    rows = _two_cases("legacy-synapse")
    assert [(r["case"], r["class"], r["dice"], r["hd95"]) for r in rows] == [
        ("a", 1, 0.8, 1.0), ("a", 2, 0.0, 0.0), ("b", 1, 1.0, 0.0), ("b", 2, 0.0, 0.0)]
    agg = M.aggregate(rows, "legacy-synapse")
    # per class over cases: dice x (0.8+1)/2 = 0.9, y 0; hd95 x 0.5, y 0; then over classes
    assert agg["dice"] == pytest.approx(0.45)
    assert agg["hd95"] == pytest.approx(0.25)
    assert (agg["n_cases"], agg["n_classes"], agg["n_nan_dice"], agg["n_valid_dice"]) == (2, 2, 0, 4)
    per = M.aggregate_per_class(rows, "legacy-synapse")
    assert [(r["class"], r["name"], r["n"], r["n_nan"]) for r in per] == [(1, "x", 2, 0), (2, "y", 2, 0)]
    assert [r["dice"] for r in per] == pytest.approx([0.9, 0.0])


def test_aggregate_strict_counts_nan():
    rows = _two_cases("strict")
    pen = math.sqrt(50)  # 5x5 diagonal in voxels
    got = [(r["case"], r["class"], r["empty"], r["dice"], r["hd95"]) for r in rows]
    assert got[:3] == [("a", 1, "none", 0.8, 1.0), ("a", 2, "ref_only", 0.0, pytest.approx(pen)),
                       ("b", 1, "pred_only", 0.0, pytest.approx(pen))]
    assert got[3][:3] == ("b", 2, "both") and math.isnan(got[3][3]) and math.isnan(got[3][4])
    for frame in (rows, pd.DataFrame(rows)):
        agg = M.aggregate(frame, "strict")
        # dice: x (0.8+0)/2 = 0.4, y 0 (the NaN case skipped) -> 0.2
        assert agg["dice"] == pytest.approx(0.2)
        assert agg["hd95"] == pytest.approx(((1 + pen) / 2 + pen) / 2)
        assert (agg["n_cases"], agg["n_valid_dice"], agg["n_nan_dice"], agg["n_nan_hd95"]) == (2, 3, 1, 1)
        per = M.aggregate_per_class(frame, "strict")
        assert [(r["class"], r["n"], r["n_nan"], r["n_nan_hd95"]) for r in per] == [(1, 2, 0, 0), (2, 2, 1, 1)]
        assert [r["dice"] for r in per] == pytest.approx([0.4, 0.0])


def test_aggregate_all_nan_class_and_errors():
    rows = M.score_case(Z, Z, 2, "strict")
    agg = M.aggregate(rows, "strict")
    assert math.isnan(agg["dice"]) and agg["n_nan_dice"] == 1 and agg["n_valid_dice"] == 0
    assert agg["n_cases"] == 1
    # a class valid in no case (absent from reference and prediction alike): nnU-Net's foreground
    # mean is NaN; the mean over the classes left (1.0 here) would drop it silently
    gt = np.zeros((6, 6), int)
    gt[1:4, 1:4] = 1
    two = [{"case": c, **r} for c in ("a", "b") for r in M.score_case(gt, gt, 3, "strict")]
    agg = M.aggregate(two, "strict")
    assert math.isnan(agg["dice"]) and agg["n_valid_dice"] == 2 and agg["n_nan_dice"] == 2
    assert [r["dice"] for r in M.aggregate_per_class(two, "strict")][0] == 1.0
    with pytest.raises(BenchError, match="no scored rows"):
        M.aggregate([], "strict")
    with pytest.raises(BenchError, match="lack column"):
        M.aggregate([{"class": 1, "dice": 0.5}], "strict")


def test_pooled_policy_refuses_several_classes():
    """One confusion matrix over two organs would weight them by pixel count (a 40² square scored
    1.0 and a 4² one 0.25 pool to ~0.99): legacy-isic is VM-UNet's binary convention only."""
    gt = np.zeros((48, 48), np.uint8)
    gt[2:42, 2:42], gt[44:48, 44:48] = 1, 2
    pred = gt.copy()
    pred[44:48, 44:48], pred[44:48, 42:46] = 0, 2
    rows = M.score_case(pred, gt, 3, "legacy-isic")
    with pytest.raises(BenchError, match="'legacy-isic' pools .* this data has 2 foreground classes"):
        M.aggregate(rows, "legacy-isic")
    assert M.aggregate(rows[:1], "legacy-isic")["dice"] == 1.0
    assert M.policy_misfit("strict", 8, "x") is None and M.policy_misfit("legacy-isic", 1, "x") is None
