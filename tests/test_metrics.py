"""Metrics against independent references (medpy, MONAI) and hand-computed tables per policy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from medpy.metric import binary as medpy

from bench import metrics as M
from bench.errors import BenchError


def _random_pairs(seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(60):
        shape = (18, 21, 16) if i % 2 else (37, 29)
        a = rng.random(shape) > rng.uniform(0.6, 0.98)
        b = _blob(shape, rng) if i % 3 == 0 else rng.random(shape) > rng.uniform(0.6, 0.98)
        if i % 5 == 0:  # touches the array border
            a[(0,) * len(shape)] = True
            a[tuple(slice(0, 3) for _ in shape)] = True
        if i % 7 == 0:  # single voxel
            b = np.zeros(shape, bool)
            b[tuple(s // 2 for s in shape)] = True
        if i % 11 == 0:  # thin structure
            a = np.zeros(shape, bool)
            a[..., 4] = True
        spacing = None if i % 4 else tuple(rng.uniform(0.4, 3.5, len(shape)))
        if a.any() and b.any():
            yield a, b, spacing


def _blob(shape, rng):
    grid = np.indices(shape)
    c = [rng.uniform(0, s) for s in shape]
    r = [rng.uniform(2, s / 2) for s in shape]
    return sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r)) <= 1


@pytest.mark.parametrize("a, b, spacing", list(_random_pairs()))
def test_hd95_and_dice_equal_medpy(a, b, spacing):
    assert M.hd95(a, b, spacing) == pytest.approx(medpy.hd95(a, b, voxelspacing=spacing), abs=1e-6)
    assert M.dice(a, b) == pytest.approx(medpy.dc(a, b), abs=1e-12)
    assert M.iou(a, b) == pytest.approx(medpy.jc(a, b), abs=1e-12)


def test_hd95_max_directed_equals_monai():
    import torch
    from monai.metrics import compute_hausdorff_distance

    for a, b, spacing in list(_random_pairs(1))[:20]:
        def onehot(m):
            t = torch.from_numpy(m.astype(np.float32))[None, None]
            return torch.cat([1 - t, t], dim=1)

        kw = {"spacing": list(spacing)} if spacing is not None else {}
        ref = compute_hausdorff_distance(onehot(a), onehot(b), include_background=False, percentile=95, **kw)
        assert M.hd95_max_directed(a, b, spacing) == pytest.approx(float(ref[0, 0]), abs=1e-4)


def test_hd95_hand_computed_and_empty_raises():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[2, 2] = True
    b[2, 5] = True
    assert M.hd95(a, b) == 3.0
    assert M.hd95(a, b, spacing=(1.0, 0.5)) == 1.5
    with pytest.raises(ValueError):
        M.hd95(a, np.zeros_like(a))


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(BenchError, match=r"\(2, 3\).*\(3, 2\)"):
        M.dice(np.ones((2, 3)), np.ones((3, 2)))


# one table per policy: (pred, gt) for class 1 on a 1-D-like 2-D grid -> expected (dice, hd95)
P = np.array([[1, 1, 0, 0]])
G = np.array([[0, 1, 1, 0]])
Z = np.zeros((1, 4), int)
BOTH = (P, G)


@pytest.mark.parametrize(
    "policy, pred, gt, dice, hd, empty",
    [
        ("legacy-synapse", Z, Z, 0.0, 0.0, "both"),
        ("legacy-synapse", Z, G, 0.0, 0.0, "ref_only"),  # a missed organ scores the best HD95
        ("legacy-synapse", P, Z, 1.0, 0.0, "pred_only"),  # a false positive scores Dice 1
        ("legacy-synapse", P, G, 0.5, 1.0, "none"),
        ("strict", Z, Z, math.nan, math.nan, "both"),
        ("strict", Z, G, 0.0, math.sqrt(1 + 16), "ref_only"),  # penalty: the grid's diagonal
        ("strict", P, Z, 0.0, math.sqrt(1 + 16), "pred_only"),
        ("strict", P, G, 0.5, 1.0, "none"),
        ("legacy-isic", Z, Z, 0.0, math.nan, "both"),
        ("legacy-isic", Z, G, 0.0, math.nan, "ref_only"),
        ("legacy-isic", P, Z, 0.0, math.nan, "pred_only"),
        ("legacy-isic", P, G, 0.5, math.nan, "none"),
    ],
)
def test_policy_edge_cases(policy, pred, gt, dice, hd, empty):
    (row,) = M.score_case(pred, gt, 2, policy)
    assert row["empty"] == empty
    for key, want in (("dice", dice), ("hd95", hd)):
        if math.isnan(want):
            assert math.isnan(row[key]), key
        else:
            assert row[key] == pytest.approx(want), key


def test_strict_penalty_uses_spacing():
    (row,) = M.score_case(Z, G, 2, "strict", spacing=(2.0, 3.0))
    assert row["hd95"] == pytest.approx(math.sqrt(2.0**2 + 12.0**2))
    # legacy-synapse ignores spacing: voxel units
    (row,) = M.score_case(P, G, 2, "legacy-synapse", spacing=(2.0, 3.0))
    assert row["hd95"] == 1.0


def test_score_case_multiclass_counts_and_names():
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 4, (6, 20, 20))
    gt = rng.integers(0, 4, (6, 20, 20))
    rows = M.score_case(pred, gt, 4, "legacy-synapse", class_names=["a", "b", "c"])
    assert [r["name"] for r in rows] == ["a", "b", "c"]
    for r in rows:
        c = r["class"]
        assert r["tp"] == np.sum((pred == c) & (gt == c))
        assert r["fp"] == np.sum((pred == c) & (gt != c))
        assert r["tn"] == np.sum((pred != c) & (gt != c))
        assert r["dice"] == pytest.approx(medpy.dc(pred == c, gt == c))
        assert r["hd95"] == pytest.approx(medpy.hd95(pred == c, gt == c))


def test_legacy_isic_pooled_hand_computed():
    pred = [np.array([[1, 1], [0, 0]]), np.array([[0, 0], [0, 1]])]
    gt = [np.array([[1, 0], [0, 0]]), np.array([[0, 0], [1, 1]])]
    rows = [r | {"case": str(i)} for i, (p, g) in enumerate(zip(pred, gt)) for r in M.score_case(p, g, 1, "legacy-isic")]
    # pooled: tp 2, fp 1, fn 1, tn 4
    agg = M.aggregate(rows, "legacy-isic")
    assert agg["dice"] == pytest.approx(4 / 6)
    assert agg["iou"] == pytest.approx(2 / 4)
    assert agg["acc"] == pytest.approx(6 / 8)
    assert agg["spe"] == pytest.approx(4 / 5)
    assert agg["sen"] == pytest.approx(2 / 3)
    assert agg["hd95"] is None and agg["n_cases"] == 2
    acc = M.PooledConfusion()
    for p, g in zip(pred, gt):
        acc.update(p.astype(float) * 0.7, g)
    assert acc.compute() == pytest.approx({k: agg[k] for k in ("dice", "iou", "acc", "spe", "sen")})
    # zero denominators give 0, VM-UNet's rule
    assert M.pooled_metrics(0, 0, 0, 5)["dice"] == 0.0


def test_aggregate_mean_over_cases_then_classes():
    rows = [
        {"case": "a", "class": 1, "name": "x", "dice": 0.8, "iou": 0.6, "hd95": 2.0, "acc": 1, "spe": 1, "sen": 1},
        {"case": "a", "class": 2, "name": "y", "dice": 0.4, "iou": 0.2, "hd95": 6.0, "acc": 1, "spe": 1, "sen": 1},
        {"case": "b", "class": 1, "name": "x", "dice": 0.6, "iou": 0.4, "hd95": 4.0, "acc": 1, "spe": 1, "sen": 1},
        {"case": "b", "class": 2, "name": "y", "dice": math.nan, "iou": math.nan, "hd95": math.nan,
         "acc": 1, "spe": 1, "sen": 1},
    ]
    agg = M.aggregate(rows, "strict")
    assert agg["dice"] == pytest.approx((0.7 + 0.4) / 2)
    assert agg["hd95"] == pytest.approx((3.0 + 6.0) / 2)
    assert agg["n_nan_dice"] == 1 and agg["n_valid"] == 3 and agg["n_cases"] == 2
    per = M.aggregate_per_class(rows, "strict")
    assert [(r["class"], r["n"], r["n_nan"]) for r in per] == [(1, 2, 0), (2, 2, 1)]


def test_unknown_policy_lists_valid_names():
    with pytest.raises(BenchError, match=r"did you mean 'strict'.*legacy-synapse, legacy-isic, strict"):
        M.get_policy("strickt")
