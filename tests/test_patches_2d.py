"""2-D patch protocols (nnU-Net's 2d configuration, lightm_unet_2d): a slice, then a region in it;
nnU-Net's 2-D get_patch_size and augmentation; in-plane resampling; per-slice sliding window; runs
end to end on PNG cases and on volumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from bench import transforms as T
from bench.data import open_dataset, synthesize
from bench.data.preprocess import VolumePrep, target_spacing, volume_prep
from bench.data.resample import resample
from bench.evaluate import sliding_window_logits, tile_starts
from bench.protocol import load_protocol
from tests.fixtures import Scripted, run_bench
from tests.test_volumetric import scipy_gaussian


# --- region and rotation ---------------------------------------------------------------------------


def test_initial_patch_is_nnunets_2d_get_patch_size():
    # ±180° is capped at 90°: a square keeps its side, / 0.85 (512 / 0.85 = 602.35)
    assert T.nnunet_initial_patch((512, 512)) == (602, 602)
    # nnU-Net's own example (data_loader_2d.py): (56, 40) turned by 90° -> (56, 56), / 0.85 -> 65
    assert T.nnunet_initial_patch((56, 40)) == (65, 65)
    # 160 / 64 = 2.5 > 1.5: ±15° only. (64, 160) turned by 15° (cos 0.96593, sin 0.25882):
    # (64 cos + 160 sin, -64 sin + 160 cos) = (103.23, 137.98); the larger of that and the patch per
    # axis, / 0.85 -> (121.45, 188.24)
    assert T.nnunet_initial_patch((64, 160)) == (121, 188)


def test_2d_rotation_range_is_nnunets():
    assert T.nnunet_rotation_2d((512, 512)) == pytest.approx(np.pi)
    assert T.nnunet_rotation_2d((256, 384)) == pytest.approx(np.pi)  # 1.5: not over
    assert T.nnunet_rotation_2d((256, 400)) == pytest.approx(np.pi / 12)


def _sampled_locations(seg, classes, seed=1234):
    """nnU-Net's ``_sample_foreground_locations`` written out from its source's description: on a
    (1, *spatial) seg, per class in order, argwhere, min(10000, n) but at least ceil(1 % of n), one
    RandomState(seed) for the case, without replacement; the channel column dropped here."""
    rs = np.random.RandomState(seed)
    out = {}
    for c in classes:
        all_locs = np.argwhere(seg == c)
        if len(all_locs) == 0:
            continue
        n = max(min(10000, len(all_locs)), int(np.ceil(len(all_locs) * 0.01)))
        out[c] = all_locs[rs.choice(len(all_locs), n, replace=False)][:, 1:]
    return out


def test_foreground_locations_are_nnunets_samples():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, (10, 60, 100)).astype(np.int8)  # about 20,000 voxels of classes 1 and 2 each
    label[0, :2] = -1
    got = T.foreground_locations(label)
    want = _sampled_locations(label[None], [1, 2, 3])  # class 3 absent: no draw, no entry
    assert sorted(got) == [1, 2] and all(len(got[c]) == 10000 for c in got)
    for c in want:
        np.testing.assert_array_equal(got[c], want[c])
    big = np.ones((101, 100, 100), np.uint8)  # 1,010,000 voxels: 1 % of them is more than 10,000
    assert len(T.foreground_locations(big)[1]) == 10100


def test_forced_slices_hold_the_drawn_class_in_proportion_to_its_voxels():
    label = np.zeros((4, 6, 6), np.int8)
    label[0, :3, :3] = 1  # class 1: 9 voxels in slice 0, 3 in slice 2
    label[2, 0, :3] = 1
    label[3, 5, 5] = 2  # class 2: one voxel, slice 3
    label[1, 0, 0] = -1  # outside the non-zero region: no class
    locations = T.foreground_locations(label)  # few voxels: all of them
    draws = [T.nnunet_slice(locations, 4, np.random.default_rng(i)) for i in range(3000)]
    zs = np.array([z for z, _ in draws])
    in_plane = [v for _, v in draws]
    twos = np.array([len(v) == 1 and tuple(v[0]) == (5, 5) for v in in_plane])
    assert abs(twos.mean() - 0.5) < 0.04 and (zs[twos] == 3).all()  # a class first, then its slice
    ones = zs[~twos]
    assert set(ones.tolist()) == {0, 2} and abs((ones == 0).mean() - 0.75) < 0.04  # 9 : 3
    for z, v in draws:  # the class's locations in the slice drawn, nothing else
        assert (label[z][tuple(v.T)] > 0).all() and len(v) == (label[z] == label[z][tuple(v[0])]).sum()
    unforced = [T.nnunet_slice(None, 4, np.random.default_rng(i)) for i in range(2000)]
    assert {v is None for _, v in unforced} == {True} and sorted({z for z, _ in unforced}) == [0, 1, 2, 3]
    assert T.nnunet_slice({}, 3, np.random.default_rng(0))[1] is None  # no foreground: uniform


def test_a_forced_2d_region_is_centred_on_the_drawn_class():
    label = np.zeros((1, 30, 30), np.int64)
    label[0, 2, 27] = 1
    label[0, 20:25, 3:8] = 2
    patch = (8, 8)
    initial = T.nnunet_initial_patch(patch)
    locations = T.foreground_locations(label)
    for i in range(50):
        rng = np.random.default_rng(i)
        z, voxels = T.nnunet_slice(locations, 1, rng)
        cls = int(label[0][tuple(voxels[0])])
        corner = T.nnunet_patch_corner(label.shape[1:], patch, initial, rng, voxels)
        region = T.crop_padded(label[0], corner, initial, -1)
        centre = T.crop_padded(region, (np.array(initial) - patch) // 2, patch, -1)
        assert z == 0 and (centre == cls).any()  # the class drawn with the slice
    # nnU-Net's get_bbox: the corner of a 12x12 region is the voxel less half the region, clamped below only (corners
    # range from -pad // 2 = -2 up to 40 + 2 - 12 = 30 here; a forced voxel near the far border goes past 30)
    rng = np.random.default_rng(0)
    for voxel, corner in (([20, 20], [14, 14]), ([1, 21], [-2, 15]), ([39, 39], [33, 33])):
        assert T.nnunet_patch_corner((40, 40), patch, (12, 12), rng, np.array([voxel])).tolist() == corner


# --- augmentation ----------------------------------------------------------------------------------


def test_2d_augmentation_without_a_spatial_draw_cuts_the_centre_and_clears_the_padding():
    x = np.arange(2 * 9 * 9, dtype=np.float64).reshape(2, 9, 9)
    label = np.full((9, 9), -1)
    label[3:6, 3:6] = 1
    out_x, out = T.nnunet_augment_patch(x, label, Scripted([]), (5, 5))
    np.testing.assert_array_equal(out_x, x[:, 2:7, 2:7].astype(np.float32))
    assert out.dtype == np.int64 and set(np.unique(out)) == {0, 1} and (out[1:4, 1:4] == 1).all()


class _Bounds(Scripted):
    """Records the range of every ``uniform`` draw."""

    def __init__(self, randoms, uniforms):
        super().__init__(randoms, uniforms)
        self.ranges = []

    def uniform(self, lo, hi, size=None):
        self.ranges.append((lo, hi))
        return super().uniform(lo, hi, size)


@pytest.mark.parametrize("patch, limit", [((8, 8), np.pi), ((8, 16), np.pi / 12)])
def test_2d_augmentation_draws_its_angle_within_nnunets_range(patch, limit):
    rng = _Bounds([0.1], [0.3])  # a rotation drawn, nothing else
    region = T.nnunet_initial_patch(patch)
    T.nnunet_augment_patch(np.zeros((1, *region)), np.zeros(region, np.int64), rng, patch)
    assert rng.ranges == [pytest.approx((-limit, limit))]


def test_2d_augmentation_rotates_a_fifth_of_the_patches_and_scales_a_fifth(monkeypatch):
    """nnU-Net rotates with p 0.2 and scales with p 0.2, independently: more often resamples (and
    smooths) most patches, less often leaves the model unused to turned or resized anatomy."""
    drawn = []  # (rotated, scaled) per resampled patch

    def spy(x, label, rot, scale, out_shape):
        drawn.append((not np.array_equal(rot, np.eye(2)), scale != 1.0))
        return np.zeros((1, *out_shape)), np.zeros(out_shape, np.int64)

    monkeypatch.setattr(T, "_nnunet_spatial", spy)
    patch = (8, 8)
    region = T.nnunet_initial_patch(patch)
    n = 2000
    for i in range(n):
        T.nnunet_augment_patch(np.zeros((1, *region)), np.zeros(region, np.int64), np.random.default_rng([3, i]), patch)
    rotated, scaled = np.sum(drawn, axis=0)
    # sigma of a share 0.2 over n = 2000: sqrt(0.2 · 0.8 / n) = 0.0089; of 1 - 0.8² = 0.36: 0.0107
    # (bounds >= 4.2 sigma)
    assert abs(rotated / n - 0.2) < 0.04 and abs(scaled / n - 0.2) < 0.04
    assert abs(len(drawn) / n - (1 - 0.8 * 0.8)) < 0.045


def test_2d_augmentation_turns_the_region_by_a_quarter_like_rot90():
    # a rotation drawn (u = 0.1) by 90°, no scale: the centre of the turned region is rot90 of the
    # centre of the region (the cubic spline passes through the samples), then the mirror draws (none)
    rng = np.random.default_rng(2)
    x, label = rng.normal(size=(1, 11, 11)), rng.integers(0, 3, (11, 11))
    out_x, out = T.nnunet_augment_patch(x, label, Scripted([0.1], [np.pi / 2]), (7, 7))
    turned = np.rot90(x[0])[2:9, 2:9]  # out[i, j] = x[j + 2, 8 - i]
    lab = np.rot90(label)[2:9, 2:9]
    np.testing.assert_allclose(out_x[0], turned, atol=1e-6)
    np.testing.assert_array_equal(out, lab)


def test_2d_training_items_are_patches_of_one_slice(tmp_path):
    from bench.data.torch_dataset import TrainDataset

    root = synthesize("nnunet", tmp_path / "vol", dims=3, n_cases=4, depth=6, size=24)
    ds = open_dataset("nnunet", root)
    proto = load_protocol("lightm_unet_2d").with_overrides(patch_size=[16, 16], batch_size=3)
    data = TrainDataset(ds, proto, seed=4)
    assert data.ids == ds.train_volume_ids()  # whole cases, cut here
    image, label = data[(1, 0)]
    assert image.shape == (1, 16, 16) and image.dtype == torch.float32
    assert label.shape == (16, 16) and label.dtype == torch.int64 and set(label.unique().tolist()) <= {0, 1, 2}
    again = TrainDataset(ds, proto, seed=4)[(1, 0)]
    assert torch.equal(image, again[0]) and torch.equal(label, again[1])
    # round(3 · 0.67) = 2: the third item of every batch is centred on foreground
    forced = [data[(i % len(data), 3 * i + 2)][1] for i in range(8)]
    assert all((lab > 0).any() for lab in forced)


def test_a_patch_protocol_without_augmentation_trains_on_plain_windows():
    """augment "none" on a patch protocol trains on the windows nnU-Net's loader cuts, as they are (its
    validation transforms): no rotation, mirroring or intensity change reaches them."""
    from bench.data.base import Sample

    rng = np.random.default_rng(0)
    image, label = rng.normal(size=(1, 3, 12, 12)).astype(np.float32), rng.integers(0, 3, (3, 12, 12))
    proto = load_protocol("lightm_unet_2d").with_overrides(patch_size=[8, 8], augment="none")
    tf = T.TrainTransform(proto, binary=False, run_seed=0)
    # every 8 x 8 window of every slice, the case padded by a patch each side (image 0, label background)
    padded_x, padded_label = np.pad(image, ((0, 0), (0, 0), (8, 8), (8, 8))), np.pad(label, ((0, 0), (8, 8), (8, 8)))
    windows = [(padded_x[:, z, a:a + 8, b:b + 8], padded_label[z, a:a + 8, b:b + 8])
               for z in range(3) for a in range(21) for b in range(21)]
    for seed in range(5):
        x, lab = tf(Sample(image, label, "case"), np.random.default_rng(seed), 0)
        assert any(np.array_equal(x.numpy(), wx) and np.array_equal(lab.numpy(), wl) for wx, wl in windows)


def test_a_small_2d_case_pads_outside_and_a_case_without_foreground_falls_back(tmp_path):
    from bench.data.base import Sample

    tf = T.TrainTransform(load_protocol("lightm_unet_2d").with_overrides(patch_size=[16, 16], batch_size=3),
                          binary=False, run_seed=0, mask_outside=True)
    image = np.full((1, 1, 6, 9), 5.0, np.float32)  # one slice, smaller than the patch
    label = np.zeros((1, 6, 9), np.uint8)
    label[0, 2:4, 3:6] = 1
    for draw in range(6):  # draws 2 and 5 are forced
        x, lab = tf(Sample(image, label, "small"), np.random.default_rng(draw), draw)
        assert x.shape == (1, 16, 16) and lab.shape == (16, 16)
        assert set(lab.unique().tolist()) <= {0, 1}  # the -1 padding became background
        assert (lab == 1).any() or draw % 3 != 2  # a forced item holds the foreground
        assert (x == 0).any()  # MaskTransform: where the case is not, the image is 0, whatever was augmented
    none = Sample(image, np.zeros((1, 6, 9), np.uint8), "empty")  # forced, but nothing to centre on
    x, lab = tf(none, np.random.default_rng(0), 2)
    assert x.shape == (1, 16, 16) and not (lab > 0).any()


# --- preprocessing ---------------------------------------------------------------------------------


def test_2d_target_spacing_resamples_in_plane_and_keeps_each_slice_spacing():
    rng = np.random.default_rng(0)
    image, label = rng.normal(size=(5, 12, 16)) + 3, rng.integers(0, 3, (5, 12, 16))
    prep = VolumePrep("none", spacing=(1.0, 1.0))
    x, lab = prep.case(image, label, (4.0, 0.5, 0.5))
    full = VolumePrep("none", spacing=(4.0, 1.0, 1.0))  # the same as a 3-D target with the case's own z
    fx, flab = full.case(image, label, (4.0, 0.5, 0.5))
    assert x.shape == (1, 5, 6, 8) and lab.shape == (5, 6, 8)
    np.testing.assert_array_equal(x, fx)
    np.testing.assert_array_equal(lab, flab)
    np.testing.assert_array_equal(x, resample(image[None].astype(np.float32), (5, 6, 8), (4.0, 0.5, 0.5),
                                              (4.0, 1.0, 1.0), order=3))
    logits = rng.normal(size=(3, 5, 6, 8))
    back = prep.labels_back(logits, (slice(0, 5), slice(0, 12), slice(0, 16)), (5, 12, 16), (4.0, 0.5, 0.5))
    assert back.shape == (5, 12, 16)
    assert prep.key != full.key  # two preprocessings, two sets of cache files


def test_2d_nnunet_spacing_is_the_in_plane_part_and_pngs_have_none(tmp_path):
    from bench.data.resample import nnunet_target_spacing

    vol = open_dataset("nnunet", synthesize("nnunet", tmp_path / "vol", dims=3, n_cases=4, depth=6, size=24,
                                            spacing=(3.0, 0.7, 0.7)))
    proto = load_protocol("lightm_unet_2d").with_overrides(patch_size=[16, 16])
    geometry = list(vol.train_geometry())
    full = nnunet_target_spacing([s for _, s in geometry], [g for g, _ in geometry])
    assert full[1:] == pytest.approx((0.7, 0.7)) and target_spacing(vol, proto) == pytest.approx(full[1:])
    png = open_dataset("nnunet", synthesize("nnunet", tmp_path / "png", dims=2, n_cases=4, size=24))
    assert target_spacing(png, proto) is None and volume_prep(png, proto).spacing is None


# --- sliding window --------------------------------------------------------------------------------


class _PlusTileMean2d(nn.Module):
    """2-D logits that depend on the tile: x + the tile's mean, for 2 classes."""

    num_classes = 2

    def forward(self, x):
        assert x.ndim == 4  # (B, C, H, W): slices, never volumes
        return torch.cat([x, x * 0 + x.mean(dim=(2, 3), keepdim=True)], dim=1)


def _windowed_slice(sl, patch, step):
    """One slice's sliding window written out (nnU-Net's 2-D predictor): pad the in-plane axes to the
    patch (the odd pixel above), 2-D Gaussian-weighted mean over the tiles, crop."""
    need = np.maximum(np.array(patch) - sl.shape, 0)
    x = np.pad(sl, [(n // 2, n - n // 2) for n in need])
    w = scipy_gaussian(patch)  # built apart from gaussian_importance, the code under test
    acc, norm = np.zeros((2, *x.shape)), np.zeros(x.shape)
    for y in tile_starts(x.shape[0], patch[0], step):
        for xx in tile_starts(x.shape[1], patch[1], step):
            box = (slice(y, y + patch[0]), slice(xx, xx + patch[1]))
            acc[0][box] += w * x[box]
            acc[1][box] += w * x[box].mean()
            norm[box] += w
    crop = tuple(slice(n // 2, n // 2 + s) for n, s in zip(need, sl.shape))
    return (acc / norm)[(slice(None),) + crop]


@pytest.mark.parametrize("shape, patch", [((3, 9, 13), (4, 6)), ((2, 5, 20), (8, 8))])
def test_2d_sliding_window_covers_each_slice_on_its_own(shape, patch):
    vol = np.random.default_rng(3).normal(size=(1, *shape)).astype(np.float32)
    out = sliding_window_logits(_PlusTileMean2d(), vol, patch, 0.5, device=torch.device("cpu"),
                                dtype=torch.float32, batch_size=5).numpy()
    assert out.shape == (2, *shape)
    for z in range(shape[0]):
        np.testing.assert_allclose(out[:, z], _windowed_slice(vol[0, z].astype(np.float64), patch, 0.5),
                                   rtol=1e-5, atol=1e-6)
    flat = sliding_window_logits(_PlusTileMean2d(), vol[:, 0], patch, 0.5, device=torch.device("cpu"),
                                 dtype=torch.float32).numpy()  # a 2-D case as it is
    np.testing.assert_allclose(flat, out[:, 0], rtol=1e-6, atol=1e-6)


def test_2d_mirroring_averages_the_four_flips():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, 3, padding=1)
    conv.num_classes = 2
    vol = np.random.default_rng(5).normal(size=(1, 2, 6, 8)).astype(np.float32)
    got = sliding_window_logits(conv, vol, (6, 8), 0.5, device=torch.device("cpu"), dtype=torch.float32,
                                mirror=True)
    with torch.no_grad():
        for z in range(2):
            x = torch.from_numpy(vol[:, z])[None]
            flips = [(), (2,), (3,), (2, 3)]
            expected = sum(conv(x.flip(a)).flip(a) if a else conv(x) for a in flips)[0] / 4
            torch.testing.assert_close(got[:, z], expected, rtol=1e-5, atol=1e-6)


def test_a_patch_larger_than_every_case_is_named(tmp_path):
    """A recipe's patch copied onto smaller data (LightM-UNet's 512² on 64² images) trained on padding
    at 64 times the cost, unsaid."""
    from bench.data.preprocess import patch_fit_note
    from bench.run import _preprocess_volumes

    cases = [(1, 24, 20), (1, 16, 30)]  # 2-D patches: the in-plane part of each grid
    assert patch_fit_note((16, 16), cases) is None and patch_fit_note((24, 30), cases) is None
    note = patch_fit_note((32, 16), cases)
    assert note.startswith("patch_size [32, 16] is larger than every training case along axis 0 (largest case "
                           "[24, 30], median [20, 25] after preprocessing): at most 75% of a patch is data")
    assert "along axis 1, 2 (largest case [12, 40, 40], median [11, 36, 36]" in patch_fit_note((8, 64, 64), [(10, 32, 32), (12, 40, 40)])
    assert "at most 39% of a patch is data" in patch_fit_note((8, 64, 64), [(10, 32, 32), (12, 40, 40)])
    # a run warns once the cases are preprocessed (their grids after cropping and resampling)
    root = synthesize("nnunet", tmp_path / "png", dims=2, n_cases=4, size=16)
    ds = open_dataset("nnunet", root)
    ds.volume_cache = tmp_path / "cache"
    protocol = load_protocol("drift_2d").with_overrides(patch_size=(32, 16), target_spacing="native")
    with pytest.warns(UserWarning, match=r"patch_size \[32, 16\] is larger than every training case along axis 0 "
                                         r"\(largest case \[2\d, \d+\]"):
        _preprocess_volumes(ds, protocol, None, True)


# --- end to end --------------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing, recorded", [(None, [0.8, 0.8]), ("1.2,1.2", [1.2, 1.2])])
def test_lightm_unet_2d_run_on_volumes_trains_on_slice_patches_and_scores_whole_volumes(tmp_path, spacing, recorded):
    root = synthesize("nnunet", tmp_path / "vol", dims=3, n_cases=5, depth=6, size=24, spacing=(3.0, 0.8, 0.8))
    res = tmp_path / "res"
    run_bench("run", "--models", "lightm_unet", "--dataset", "nnunet", "--data-root", root, "--protocol",
              "lightm_unet_2d", "--patch-size", "16,16", "--batch-size", "3", "--max-iterations", "2", "--tiny",
              "--threads", "1", "--no-progress", "--results", res, *(["--target-spacing", spacing] if spacing else []))
    (path,) = (res / "records").glob("*.json")
    rec = json.loads(path.read_text(encoding="utf-8"))
    assert rec["model_config"].get("spatial_dims", 2) == 2 and rec["target_spacing"] == pytest.approx(recorded)
    assert rec["mask_norm"] is False  # nothing to crop in these volumes
    ds = open_dataset("nnunet", root)
    (case,) = ds.test_ids()
    native = ds.load_test(case).label.shape
    assert {c["tp"] + c["fp"] + c["fn"] + c["tn"] for c in rec["per_case"]} == {int(np.prod(native))}
    cached = list((res / "cache" / "volumes").rglob("*.label.npy"))
    assert len(cached) == len(ds.train_volume_ids())  # preprocessed once, before training
    grid = (6, *(round(24 * 0.8 / s) for s in recorded))  # z kept, in-plane resampled
    assert {np.load(p, mmap_mode="r").shape for p in cached} == {grid}
    # a rescore reads the 2-entry spacing back and predicts the same slices again
    run_bench("rescore", "--results", res, "--policy", "legacy-synapse")
    twin = json.loads((res / "records" / f"{rec['run_id']}.legacy-synapse.json").read_text(encoding="utf-8"))
    assert [c["tp"] for c in twin["per_case"]] == [c["tp"] for c in rec["per_case"]]


def test_a_non_square_patch_is_refused_for_square_only_models(tmp_path):
    from bench.errors import BenchError
    from bench.run import plan_grid

    root = synthesize("nnunet", tmp_path / "png", dims=2, n_cases=4, size=24)
    wide = load_protocol("lightm_unet_2d").with_overrides(patch_size=[32, 64])
    with pytest.raises(BenchError, match=r"transunet: takes square inputs only; patch_size \[32, 64\] is not square"):
        plan_grid(models=["lightm_unet", "transunet"], dataset="nnunet", protocol=wide, seeds=[0], data_root=root,
                  synthetic=False, results_dir=tmp_path / "r")
    assert not (tmp_path / "r" / "runs").exists()
    assert len(plan_grid(models=["lightm_unet", "unet"], dataset="nnunet", protocol=wide, seeds=[0], data_root=root,
                         synthetic=False, results_dir=tmp_path / "r")) == 2  # fully convolutional: any shape


def test_planning_warns_where_nnunet_would_slice_along_another_axis(tmp_path):
    import warnings

    from bench.run import plan_grid

    proto = load_protocol("lightm_unet_2d").with_overrides(patch_size=[16, 16])
    wide = synthesize("nnunet", tmp_path / "wide", dims=3, n_cases=4, depth=6, size=24, spacing=(1.0, 1.0, 3.0))
    with pytest.warns(UserWarning, match=r"coarsest axis is axis 2 \(median spacing \(z, y, x\) \(1, 1, 3\) mm.*slices along it, "
                                         r"2-D patch protocols here along axis 0"):
        plan_grid(models=["lightm_unet"], dataset="nnunet", protocol=proto, seeds=[0], data_root=wide,
                  synthetic=False, results_dir=tmp_path / "r")
    usual = synthesize("nnunet", tmp_path / "usual", dims=3, n_cases=4, depth=6, size=24, spacing=(3.0, 1.0, 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # z is the coarsest: nnU-Net slices as we do
        warnings.filterwarnings("ignore", "(?s).*normalize = 'zscore' is not what channel_names ask")  # CT data
        plan_grid(models=["lightm_unet"], dataset="nnunet", protocol=proto, seeds=[0], data_root=usual,
                  synthetic=False, results_dir=tmp_path / "r")
