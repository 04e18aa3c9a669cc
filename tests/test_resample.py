"""nnU-Net's spacing rules (bench.data.resample, bench.data.preprocess): the 3d_fullres target spacing
against hand-computed cases, and the resampling against scikit-image's resize driven the literal
way nnU-Net v2 drives it (a full coordinate map for the coarse axis), in float64."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.transform import resize as sk_resize

from bench.data.preprocess import VolumePrep, nonzero_box
from bench.data.resample import new_shape, nnunet_target_spacing, resample, resize, separate_axis
from bench.errors import BenchError
from bench.transforms import normalize_image, volume_chw


def _sk(arr, shape, order):
    return sk_resize(arr.astype(float), shape, order, mode="edge", anti_aliasing=False)


def _sk_labels(arr, shape, order):  # batchgenerators' resize_segmentation, order > 0
    out = np.zeros(shape, dtype=arr.dtype)
    for c in np.unique(arr):
        out[_sk((arr == c).astype(float), shape, order) >= 0.5] = c
    return out


def _reference(data, shape, current, target, *, labels, order):
    """nnU-Net's resample_data_or_seg for one (C, X, Y, Z) array: the anisotropy rule, then per channel
    either a 3-D resize, or 2-D resizes of the slices across the coarse axis followed by
    map_coordinates(order 0) over a (3, *shape) coordinate map."""
    fn = _sk_labels if labels else _sk
    current, target = np.array(current), np.array(target)
    axis = None
    for sp in (current, target):
        if sp.max() / sp.min() > 3:
            found = np.where(sp.max() / sp == 1)[0]
            axis = int(found[0]) if len(found) == 1 else None
            break
    if tuple(data.shape[1:]) == tuple(shape):
        return data
    out = []
    for ch in data.astype(float):
        if axis is None:
            out.append(fn(ch, shape, order))
            continue
        plane = [s for i, s in enumerate(shape) if i != axis]
        stack = np.stack([fn(np.take(ch, i, axis), plane, order) for i in range(ch.shape[axis])], axis)
        if stack.shape[axis] == shape[axis]:
            out.append(stack)
            continue
        grids = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(float)
        coords = np.array([stack.shape[d] / shape[d] * (grids[d] + 0.5) - 0.5 for d in range(3)])
        out.append(ndimage.map_coordinates(stack, coords, order=0, mode="nearest"))
    return np.stack(out).astype(data.dtype)


# --- target spacing ----------------------------------------------------------------------------


def test_target_spacing_is_the_median_when_no_axis_is_much_coarser():
    spacings = [(1.0, 0.7, 0.7), (2.5, 0.8, 0.8), (1.5, 0.6, 0.6), (0.8, 0.9, 0.9)]
    shapes = [(400, 512, 512)] * 4
    assert nnunet_target_spacing(spacings, shapes) == pytest.approx((1.25, 0.75, 0.75))


def test_a_much_coarser_axis_with_few_voxels_takes_its_10th_percentile():
    # median 5 mm vs 0.75 (ratio > 3) and 40 slices * 3 < 512: the coarse axis gets percentile 10 of
    # (2, 3, 5, 5, 6) = 2.4 (linear interpolation between 2 and 3)
    spacings = [(2.0, 0.7, 0.7), (3.0, 0.8, 0.8), (5.0, 0.75, 0.75), (5.0, 0.75, 0.75), (6.0, 0.75, 0.75)]
    shapes = [(40, 512, 512)] * 5
    assert nnunet_target_spacing(spacings, shapes) == pytest.approx((2.4, 0.75, 0.75))
    # as many voxels along it as in-plane: the median stays
    assert nnunet_target_spacing(spacings, [(300, 512, 512)] * 5)[0] == pytest.approx(5.0)
    # exactly 3x coarser is not over 3x (nnU-Net's strict ">"): the median 3.0 stays, not percentile 10's 2.4
    spacings = [(2.0, 1.0, 1.0), (3.0, 1.0, 1.0), (3.0, 1.0, 1.0), (3.0, 1.0, 1.0), (4.0, 1.0, 1.0)]
    assert nnunet_target_spacing(spacings, [(40, 512, 512)] * 5) == pytest.approx((3.0, 1.0, 1.0))


def test_the_coarse_axis_never_gets_finer_than_the_others():
    # percentile 10 of the coarse axis (0.5) is below the other axes' 0.8: it becomes 0.8 + 1e-5
    spacings = [(0.5, 0.8, 0.8)] * 2 + [(5.0, 0.8, 0.8)] * 4
    shapes = [(30, 256, 256)] * 6
    target = nnunet_target_spacing(spacings, shapes)
    assert target[0] == pytest.approx(0.8 + 1e-5, abs=1e-12) and target[1:] == pytest.approx((0.8, 0.8))


def test_new_shape_rounds_each_side():
    assert new_shape((40, 512, 512), (5.0, 0.7, 0.7), (2.4, 0.75, 0.75)) == (83, 478, 478)
    assert new_shape((10, 10, 10), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)) == (10, 10, 10)


def test_the_separate_axis_is_the_coarsest_of_an_anisotropic_spacing():
    assert separate_axis((5.0, 0.8, 0.8), (1.0, 0.8, 0.8)) == 0  # the current spacing decides first
    assert separate_axis((1.0, 0.8, 0.8), (0.8, 4.0, 0.8)) == 1  # else the target's
    assert separate_axis((5.0, 1.0, 1.0), (1.0, 1.0, 5.0)) == 0  # both anisotropic: still the current's axis
    assert separate_axis((3.0, 1.0, 1.0), (3.0, 1.0, 1.0)) is None  # exactly 3x: not over 3x, a 3-D resize
    assert separate_axis((3.01, 1.0, 1.0), (3.01, 1.0, 1.0)) == 0
    assert separate_axis((1.0, 0.8, 0.8), (1.0, 0.9, 0.8)) is None  # neither anisotropic
    assert separate_axis((0.2, 1.0, 1.0), (0.2, 1.0, 1.0)) is None  # two coarsest axes: 3-D resize


# --- resampling --------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("shape, out", [((7, 9), (13, 5)), ((5, 6, 7), (9, 4, 11)), ((6, 5, 4), (3, 10, 4))])
def test_resize_is_scikit_images_resize(order, shape, out):
    arr = np.random.default_rng(0).normal(size=shape)
    np.testing.assert_array_equal(resize(arr, out, order), _sk(arr, out, order))


CASES = [  # (shape, current spacing, target spacing)
    ((6, 16, 14), (5.0, 0.8, 0.8), (2.0, 1.0, 1.0)),  # anisotropic source: slices 2-D, then nearest along z
    ((12, 10, 11), (1.0, 0.8, 0.8), (4.0, 1.1, 0.9)),  # anisotropic target: slices 2-D, fewer slices
    ((8, 9, 10), (1.5, 1.0, 1.2), (1.0, 1.3, 0.8)),  # isotropic enough: one 3-D resize
    ((7, 8, 9), (0.2, 1.0, 1.0), (0.3, 0.5, 0.5)),  # two coarsest axes: one 3-D resize
    ((5, 20, 18), (4.0, 0.8, 0.8), (4.0, 1.2, 1.0)),  # slice count kept: in-plane only
]


@pytest.mark.parametrize("shape, current, target", CASES)
def test_images_and_logits_resample_as_nnunet_does(shape, current, target):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, *shape)).astype(np.float32)
    grid = new_shape(shape, current, target)
    for order in (3, 1):  # images, logits
        ours = resample(x, grid, current, target, order=order)
        assert ours.dtype == np.float32 and ours.shape == (2, *grid)
        np.testing.assert_array_equal(ours, _reference(x, grid, current, target, labels=False, order=order))


@pytest.mark.parametrize("shape, current, target", CASES)
def test_labels_resample_as_nnunet_does(shape, current, target):
    rng = np.random.default_rng(2)
    label = ndimage.zoom(rng.integers(0, 3, (3, 4, 4)), np.array(shape) / (3, 4, 4), order=0).astype(np.uint8)
    grid = new_shape(shape, current, target)
    ours = resample(label[None], grid, current, target, order=1, labels=True)
    assert ours.dtype == np.uint8 and ours.shape == (1, *grid)
    np.testing.assert_array_equal(ours, _reference(label[None], grid, current, target, labels=True, order=1))
    assert set(np.unique(ours)) <= set(np.unique(label))


def test_the_same_grid_is_no_work():
    x = np.ones((1, 4, 5, 6), dtype=np.float32)
    assert resample(x, (4, 5, 6), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), order=3) is x


# --- preprocessing -----------------------------------------------------------------------------

STATS = [{"mean": 40.0, "std": 90.0, "percentile_00_5": -200.0, "percentile_99_5": 250.0},
         {"mean": -10.0, "std": 50.0, "percentile_00_5": -100.0, "percentile_99_5": 90.0}]


@pytest.mark.parametrize("mode", ["none", "ct_window", "ct_foreground", "zscore"])
@pytest.mark.parametrize("channels", [1, 2])
def test_the_native_grid_is_the_normalised_volume_channels_first(mode, channels):
    image = np.random.default_rng(4).normal(0, 300, (6, 10, 9) + ((channels,) if channels > 1 else ())).astype(np.float32)
    prep = VolumePrep(mode, STATS[:channels])
    out, box = prep.image(image, (2.0, 0.8, 0.8))
    np.testing.assert_array_equal(out, volume_chw(normalize_image(image, mode, 3, STATS[:channels])))
    assert out.shape == (channels, 6, 10, 9) and box == (slice(0, 6), slice(0, 10), slice(0, 9))


def test_volumes_are_normalised_before_they_are_resampled():
    # nnU-Net's order: clipped to the foreground percentiles first, so the cubic resampling stays in
    # the normalised range; resampling raw HU first would carry the -1000 air into the tissue
    rng = np.random.default_rng(5)
    image = np.where(rng.random((6, 12, 12)) < 0.3, -1000.0, rng.normal(60, 40, (6, 12, 12))).astype(np.float32)
    label = (image > 0).astype(np.uint8)
    prep = VolumePrep("ct_foreground", STATS[:1], (1.5, 1.0, 1.0))
    spacing = (4.0, 0.7, 0.7)
    grid = (16, 8, 8)
    out, box = prep.image(image, spacing)
    assert out.shape == (1, *grid) and box == (slice(0, 6), slice(0, 12), slice(0, 12))  # nothing is 0 here
    expected = resample(volume_chw(normalize_image(image, "ct_foreground", 3, STATS[:1])), grid, spacing,
                        (1.5, 1.0, 1.0), order=3)
    np.testing.assert_array_equal(out, expected)
    lo, hi = [(STATS[0][k] - STATS[0]["mean"]) / STATS[0]["std"] for k in ("percentile_00_5", "percentile_99_5")]
    assert out.min() >= lo - 1e-6 and out.max() <= hi + 1e-6
    x, lab = prep.case(image, label, spacing)
    np.testing.assert_array_equal(x, out)
    assert lab.shape == grid and lab.dtype == np.int8 and set(np.unique(lab)) == {0, 1}
    logits = np.stack([out[0], -out[0]])
    back = prep.labels_back(logits, box, image.shape, spacing)
    expected = resample(logits, image.shape, (1.5, 1.0, 1.0), spacing, order=1).argmax(0)
    assert back.dtype == np.int64
    np.testing.assert_array_equal(back, expected)


def test_training_labels_resample_as_nnunets_one_hot_linear_interpolation():
    """nnU-Net resamples a training label one class at a time, linearly (order 1), not by nearest
    neighbour: the two disagree on tens of boundary voxels here, which the model would learn."""
    img = np.random.default_rng(0).normal(size=(6, 10, 10)).astype(np.float32) + 5  # no zeros: nothing cropped
    label = np.zeros(img.shape, np.uint8)
    label[1:5, 2:7, 3:8] = 1
    label[2:4, 4:6, 4:9] = 2
    spacing, target = (1.5, 1.0, 1.0), (1.0, 0.7, 0.7)
    x, lab = VolumePrep("zscore", spacing=target).case(img, label, spacing)
    grid = new_shape(img.shape, spacing, target)
    assert x.shape == (1, *grid) == (1, 9, 14, 14)
    expected = _reference(label[None], grid, spacing, target, labels=True, order=1)[0]
    np.testing.assert_array_equal(lab, expected)
    nearest = _reference(label[None], grid, spacing, target, labels=True, order=0)[0]
    assert (nearest != expected).sum() > 20


def test_a_volume_without_spacing_cannot_be_resampled():
    with pytest.raises(BenchError, match=r"case 'a': no voxel spacing, so it cannot be resampled to the target "
                                         r"spacing \[1.0, 1.0, 1.0\] mm"):
        VolumePrep("none", None, (1.0, 1.0, 1.0)).image(np.ones((2, 3, 4), np.float32), None, "case 'a'")


def test_the_key_changes_with_anything_that_changes_the_volume():
    keys = {VolumePrep("ct_foreground", STATS[:1]).key, VolumePrep("ct_foreground", STATS[1:]).key,
            VolumePrep("ct_foreground", STATS[:1], (1.0, 1.0, 1.0)).key, VolumePrep("zscore").key,
            VolumePrep("zscore", mask_norm=True).key}
    assert len(keys) == 5 and VolumePrep("zscore").key == VolumePrep("zscore", None, None, False).key


# --- the non-zero region -----------------------------------------------------------------------


def _mri_like(shape=(8, 14, 12), box=(slice(2, 7), slice(3, 12), slice(1, 10)), channels=1, seed=6):
    """Positive intensities inside ``box`` with a zero hole in the middle, 0 around it (an MRI's air)."""
    rng = np.random.default_rng(seed)
    image = np.zeros(shape + ((channels,) if channels > 1 else ()), np.float32)
    image[box] = rng.uniform(50, 400, image[box].shape)
    image[4, 7, 5] = 0.0  # a hole: inside the filled mask, still cropped in
    return image


def test_the_non_zero_box_is_nnunets_crop_with_holes_filled():
    image = _mri_like()
    box, mask = nonzero_box(image)
    assert box == (slice(2, 7), slice(3, 12), slice(1, 10)) and mask.shape == (5, 9, 9) and mask.all()
    two = _mri_like(channels=2)
    two[..., 0] = 0
    two[0, 0, 0, 0] = 1.0  # any channel counts
    assert nonzero_box(two)[0] == (slice(0, 7), slice(0, 12), slice(0, 10))
    empty = np.zeros((3, 4, 5), np.float32)  # nothing non-zero: the whole volume (acvl's get_bbox_from_mask)
    assert nonzero_box(empty)[0] == (slice(0, 3), slice(0, 4), slice(0, 5))


def test_mask_norm_z_scores_inside_the_non_zero_region_and_keeps_the_outside_at_zero():
    image = _mri_like((8, 14, 12), (slice(1, 8), slice(0, 14), slice(0, 12)))
    image[1:8, 0, 0] = 0.0  # an edge of the crop box outside the mask
    (x,), box = VolumePrep("zscore", mask_norm=True).image(image, None)
    _, mask = nonzero_box(image)
    inside = image[box][mask].astype(np.float64)
    np.testing.assert_allclose(x[mask], (inside - inside.mean()) / inside.std(), rtol=1e-5, atol=1e-5)
    assert (~mask).any() and (x[~mask] == 0).all()
    (plain,), _ = VolumePrep("zscore").image(image, None)  # whole-box statistics: the zeros count
    assert not np.allclose(plain[mask], x[mask])


def test_training_labels_are_minus_one_outside_and_predictions_background_there():
    image = _mri_like()
    label = np.zeros(image.shape, np.uint8)
    label[3:5, 5:9, 3:7] = 2
    image[0, 0, 0] = 0.0
    prep = VolumePrep("zscore", mask_norm=True)
    x, lab = prep.case(image, label, None)
    box, mask = nonzero_box(image)
    assert x.shape == (1, 5, 9, 9) and lab.shape == (5, 9, 9) and lab.dtype == np.int8
    np.testing.assert_array_equal(lab[mask], label[box][mask])
    logits = np.stack([np.zeros(lab.shape), (lab == 2).astype(float), np.zeros(lab.shape)]) + 0.1
    pred = prep.labels_back(logits.astype(np.float32), box, image.shape, None)
    assert pred.shape == image.shape and (pred[box] == (lab == 2)).all() and pred.sum() == (lab == 2).sum()


def test_mask_outside_zeroes_the_image_where_the_label_is_minus_one():
    from bench.transforms import clear_outside

    x = np.full((2, 3, 3, 3), 5.0)
    label = np.zeros((3, 3, 3), np.int64)
    label[0] = -1
    label[1, 1, 1] = 2
    out, lab = clear_outside(x, label, True)
    assert (out[:, 0] == 0).all() and (out[:, 1:] == 5).all() and (x == 5).all()  # the input untouched
    assert lab.dtype == np.int64 and lab.min() == 0 and lab[1, 1, 1] == 2
    assert (clear_outside(x, label, False)[0] == 5).all()


def test_a_masked_z_score_covers_labelled_voxels_outside_the_non_zero_region():
    # nnU-Net z-scores training cases inside seg >= 0: the non-zero region and any labelled voxel
    image = _mri_like()
    image[2, 3, 1] = 0.0  # a box corner open to the background: outside the non-zero region
    label = np.zeros(image.shape, np.uint8)
    label[2, 3, 1] = 1
    box, mask = nonzero_box(image)
    assert box == (slice(2, 7), slice(3, 12), slice(1, 10)) and not mask[0, 0, 0]
    x, lab = VolumePrep("zscore", mask_norm=True).case(image, label, None)
    region = mask.copy()
    region[0, 0, 0] = True
    inside = image[box][region].astype(np.float64)
    np.testing.assert_allclose(x[0][region], (inside - inside.mean()) / inside.std(), rtol=1e-5, atol=1e-5)
    assert x[0, 0, 0, 0] < 0 and lab[0, 0, 0] == 1 and (lab[~region] == -1).all()


def test_the_fingerprint_samples_the_foreground_of_the_cropped_cases():
    from types import SimpleNamespace

    from bench.data.intensity import foreground_statistics
    from bench.data.preprocess import _fingerprint

    image = _mri_like()
    label = np.zeros(image.shape, np.uint8)
    label[3:5, 5:9, 3:7] = 1
    label[0, 0, 0] = 1  # labelled, yet outside the non-zero box: nnU-Net's crop drops it
    box, _ = nonzero_box(image)
    ds = SimpleNamespace(root="data", foreground_stats=None, target_spacing=None, mask_norm=None, n_train_cases=1,
                         train_volume_ids=lambda: ["case"], train_case=lambda case: (image, label))
    _fingerprint(ds, SimpleNamespace(normalize="ct_foreground", target_spacing="native", patch_size=[8, 8, 8]))
    assert ds.foreground_stats == foreground_statistics([(image[box], label[box])], 1)
    assert ds.foreground_stats != foreground_statistics([(image, label)], 1)
    assert ds.mask_norm is True  # 5 x 9 x 9 of 8 x 14 x 12 kept
    # asked for the statistics first, a 3-D protocol still gets those of the cropped cases
    from bench.data.intensity import intensity_stats

    fresh = SimpleNamespace(**{**vars(ds), "foreground_stats": None, "mask_norm": None})
    proto = SimpleNamespace(normalize="ct_foreground", target_spacing="native", patches=True, patch_size=[8, 8, 8])
    assert intensity_stats(fresh, proto) == ds.foreground_stats and fresh.mask_norm is True


@pytest.mark.parametrize("slices, mask_norm", [  # of 20: each case keeps slices / 20
    ((14, 14, 14), True),  # 0.7 of every case kept: over a quarter cropped away
    ((15, 15, 15), False),  # exactly 0.75: not below it
    ((16, 16, 16), False),
    ((2, 16, 17), False),  # median 0.8, though the mean (0.58) is below 0.75
    ((14, 14, 20), True),  # median 0.7, though the mean (0.8) is not
])
def test_mask_norm_is_nnunets_rule_the_median_case_keeps_under_three_quarters(monkeypatch, slices, mask_norm):
    """nnU-Net z-scores inside the non-zero region only where cropping keeps less than 0.75 of the
    median training case's voxels; one odd case must not decide it for the dataset."""
    from types import SimpleNamespace

    from bench.data import preprocess

    monkeypatch.setattr(preprocess, "cpu_budget", lambda: 1)  # in this process: the lambdas do not pickle
    cases = {}
    for i, n in enumerate(slices):  # 20 slices of 2 x 2, the first n non-zero: cropping keeps n / 20
        image = np.zeros((20, 2, 2), np.float32)
        image[:n] = 1.0
        cases[f"case{i}"] = (image, np.zeros(image.shape, np.uint8))
    ds = SimpleNamespace(root="data", foreground_stats=None, target_spacing=None, mask_norm=None, volumes=True,
                         train_volume_ids=lambda: list(cases), train_case=cases.__getitem__)
    preprocess._fingerprint(ds, SimpleNamespace(normalize="zscore", target_spacing="native", patch_size=[8, 8, 8]))
    assert ds.mask_norm is mask_norm
