"""Preprocessing and augmentation: TransUNet / VM-UNet pipelines, zoom orders, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

import bench.transforms as T
from bench.data import open_dataset
from bench.data.base import Sample
from bench.data.synth import synthesize
from bench.data.torch_dataset import TrainDataset
from bench.errors import BenchError
from bench.protocol import load_protocol
from tests.fixtures import Scripted


def _proto(name: str, **overrides):
    return load_protocol(name).with_overrides(**overrides)


def _ct_sample(h: int = 40, w: int = 52) -> Sample:
    """A slice whose image encodes its label: label == round(image * 8) everywhere."""
    yy, xx = np.mgrid[0:h, 0:w]
    label = ((yy // 5 + 2 * (xx // 7)) % 9).astype(np.int64)
    return Sample(image=(label / 8.0).astype(np.float32), label=label)


def _rgb_sample(h: int = 44, w: int = 60) -> Sample:
    rng = np.random.default_rng(0)
    image = rng.integers(150, 255, (h, w, 3)).astype(np.uint8)
    mask = np.zeros((h, w), np.float32)
    mask[10:30, 15:40] = 1.0
    image[mask > 0] = 30  # dark lesion exactly under the mask
    return Sample(image=image, label=mask)


# --- pure functions --------------------------------------------------------------------------


def test_minmax255_range_and_constant_image():
    img = np.random.default_rng(1).normal(100, 30, (20, 30, 3))
    out = T.normalize_image(img, "minmax255")
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == pytest.approx(255.0)
    # VM-UNet's myNormalize: (x - mean) / std then min-max; mean/std cancel
    ref = (img - 157.561) / 26.706
    ref = (ref - ref.min()) / (ref.max() - ref.min()) * 255.0
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-3)
    assert not T.normalize_image(np.full((4, 4), 7.0), "minmax255").any()  # no division by zero
    raw = np.arange(6, dtype=np.uint8).reshape(2, 3)
    np.testing.assert_array_equal(T.normalize_image(raw, "none"), raw.astype(np.float32))
    with pytest.raises(BenchError, match="minmax"):
        T.normalize_image(raw, "robust")


def test_zscore_per_channel_and_ct_window_hand_computed():
    img = np.stack([np.array([[1.0, 3.0], [5.0, 7.0]]), np.full((2, 2), 9.0)], axis=-1)  # (H, W, C)
    out = T.normalize_image(img, "zscore")
    std = np.sqrt(((np.array([1, 3, 5, 7]) - 4.0) ** 2).mean())  # population std, as nnU-Net
    np.testing.assert_allclose(out[..., 0], (np.array([[1, 3], [5, 7]]) - 4.0) / std, rtol=1e-6)
    assert out.dtype == np.float32 and not out[..., 1].any()  # a constant channel becomes 0
    hu = np.array([[-1000.0, -125.0], [75.0, 3000.0]])  # air, window floor, mid-window, bone
    np.testing.assert_allclose(T.normalize_image(hu, "ct_window"), [[0.0, 0.0], [0.5, 1.0]])


def test_to_chw():
    assert T.to_chw(np.zeros((5, 6))).shape == (1, 5, 6)
    x = np.arange(5 * 6 * 3).reshape(5, 6, 3)
    assert T.to_chw(x).shape == (3, 5, 6) and T.to_chw(x)[2, 4, 5] == x[4, 5, 2]


def test_resize_image_zoom_orders():
    label = _ct_sample().label
    small = T.resize_image(label, 24, 0)
    assert small.shape == (24, 24) and small.dtype == np.int64
    assert set(np.unique(small)) <= set(np.unique(label))  # order 0 never invents labels
    up = T.resize_image(label, 97, 0)
    assert up.shape == (97, 97) and set(np.unique(up)) <= set(np.unique(label))
    rgb = np.random.default_rng(0).random((30, 41, 3)).astype(np.float32)
    out = T.resize_image(rgb, 32, 3)
    assert out.shape == (32, 32, 3)
    np.testing.assert_allclose(out[..., 1], T.resize_image(rgb[..., 1], 32, 3), atol=1e-6)  # channels kept apart
    same = label[:24, :24]
    assert T.resize_image(same, 24, 0) is same  # no zoom when already at size (as TransUNet)


def test_resize_bilinear_matches_torch_interpolate():
    x = np.random.default_rng(3).random((37, 53, 2)).astype(np.float32)
    for size in (64, 20):
        ours = T.resize_bilinear(x, size)
        ref = F.interpolate(torch.from_numpy(x).permute(2, 0, 1)[None], size=(size, size), mode="bilinear",
                            align_corners=False)[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-5)
    mask = np.zeros((37, 53), np.float32)
    mask[10:20, 10:30] = 1
    soft = T.resize_mask_bilinear(mask, 24)
    assert soft.min() >= 0 and soft.max() <= 1 and ((soft > 0) & (soft < 1)).any()


def test_zoom_labels_back():
    pred = T.resize_image(_ct_sample().label, 32, 0)
    back = T.zoom_labels_back(pred, (40, 52), 0)
    assert back.shape == (40, 52) and set(np.unique(back)) <= set(np.unique(pred))


def test_zoom_labels_back_is_nearest_neighbour_like_test_single_volume():
    """Guards against a linear zoom back, which invents labels 2..7 where 1 touches 8."""
    pred = np.zeros((8, 8), np.int64)
    pred[2:6, 1:4], pred[2:6, 4:7] = 1, 8  # 1 and 8 side by side, both on 0
    back = T.zoom_labels_back(pred, (40, 52))
    # TransUNet's test_single_volume: zoom(out, (x / S, y / S), order=0)
    np.testing.assert_array_equal(back, ndimage.zoom(pred, (40 / 8, 52 / 8), order=0))
    assert set(np.unique(back)) == {0, 1, 8}


# --- TransUNet -------------------------------------------------------------------------------


def test_transunet_augment_keeps_image_and_label_aligned():
    s = _ct_sample()
    for i in range(60):
        image, label = T.transunet_augment(s.image, s.label, np.random.default_rng(i))
        assert image.shape == label.shape == s.label.shape or image.shape == label.shape == s.label.shape[::-1]
        np.testing.assert_array_equal(np.rint(image * 8).astype(np.int64), label)


def test_transunet_branch_probabilities():
    # rot90+flip (p 0.5) permutes the pixels and never returns the input; rotation (p 0.25)
    # resamples with zero fill; no augmentation (p 0.25) returns the input unchanged
    base = np.arange(16 * 16, dtype=np.float32).reshape(16, 16) + 1
    counts = {"identity": 0, "rotflip": 0, "rotate": 0}
    for i in range(800):
        out, _ = T.transunet_augment(base, base.astype(np.int64), np.random.default_rng([7, i]))
        if np.array_equal(out, base):
            counts["identity"] += 1
        elif np.array_equal(np.sort(out.ravel()), np.sort(base.ravel())):
            counts["rotflip"] += 1
        else:
            counts["rotate"] += 1
    assert abs(counts["rotflip"] / 800 - 0.5) < 0.06
    assert abs(counts["identity"] / 800 - 0.25 * 41 / 40) < 0.05  # angle 0 is 1 of 40 angles
    assert abs(counts["rotate"] / 800 - 0.25 * 39 / 40) < 0.05


def test_transunet_rotation_angles_are_integers_in_range(monkeypatch):
    seen = []
    real = T._rotate
    monkeypatch.setattr(T, "_rotate", lambda arr, angle, *mode: (seen.append(angle), real(arr, angle, *mode))[1])
    s = _ct_sample()
    for i in range(400):
        T.transunet_augment(s.image, s.label, np.random.default_rng(i))
    assert seen and all(isinstance(a, int) and -20 <= a <= 19 for a in seen)
    assert min(seen) == -20 and max(seen) == 19


def _multiclass_item(tf, sample, size, seed):
    """One training item of a 9-class CT sample: shapes, dtypes, classes, and the same item again."""
    image, label = tf(sample, np.random.default_rng(seed))
    assert image.shape == (1, size, size) and image.dtype == torch.float32
    assert label.shape == (size, size) and label.dtype == torch.int64
    assert set(label.unique().tolist()) <= set(range(9))
    again = tf(sample, np.random.default_rng(seed))
    assert torch.equal(image, again[0]) and torch.equal(label, again[1])
    return image, label


def test_train_transform_multiclass_shapes_and_determinism():
    tf = T.TrainTransform(_proto("synapse", img_size=32), binary=False, run_seed=0)
    s = _ct_sample()
    image, label = _multiclass_item(tf, s, 32, seed=5)
    others = [tf(s, np.random.default_rng(k))[1] for k in range(6, 12)]
    assert any(not torch.equal(label, o) for o in others)


def test_transunet_pipeline_zooms_images_cubic_and_labels_nearest():
    """TransUNet's RandomGenerator zooms the augmented image with order 3 and the label with order 0: a
    linear label zoom invents in-between classes at organ borders, a linear image zoom blurs the input."""
    tf = T.TrainTransform(_proto("synapse", img_size=32), binary=False, run_seed=0)
    s = _ct_sample()  # 40 x 52: zoom factors 0.8 and 0.615, so neither order is a no-op
    for seed in range(6):
        image, label = tf(s, np.random.default_rng(seed))
        aug_image, aug_label = T.transunet_augment(s.image, s.label, np.random.default_rng(seed))
        factors = (32 / aug_label.shape[0], 32 / aug_label.shape[1])  # TransUNet's (S / H, S / W)
        np.testing.assert_array_equal(label.numpy(), ndimage.zoom(aug_label, factors, order=0))
        np.testing.assert_allclose(image[0].numpy(), ndimage.zoom(aug_image, factors, order=3), atol=1e-6)


def test_none_augment_is_resize_only():
    tf = T.TrainTransform(_proto("smoke", img_size=32), binary=False, run_seed=0)
    s = _ct_sample()
    image, label = tf(s, np.random.default_rng(0))
    np.testing.assert_array_equal(label.numpy(), T.resize_image(s.label, 32, 0))
    np.testing.assert_allclose(image[0].numpy(), T.resize_image(s.image, 32, 3))
    tfb = T.TrainTransform(_proto("smoke", img_size=32), binary=True, run_seed=0)
    rgb = _rgb_sample()
    image, mask = tfb(rgb, np.random.default_rng(0))
    assert image.shape == (3, 32, 32) and mask.shape == (1, 32, 32) and mask.dtype == torch.float32
    np.testing.assert_allclose(mask[0].numpy(), T.resize_mask_bilinear(rgb.label, 32))


def test_unknown_augment_is_rejected():
    with pytest.raises(BenchError, match=r"override train\.augment: unknown 'mixup'"):
        _proto("smoke", augment="mixup")


# --- VM-UNet ISIC ----------------------------------------------------------------------------


def test_vmunet_isic_angle_is_drawn_once_per_run(monkeypatch):
    proto = _proto("isic17", img_size=32)
    tf = T.TrainTransform(proto, binary=True, run_seed=42)
    assert tf.angle == T.run_rotation_angle(42) and 0 <= tf.angle < 360
    assert T.TrainTransform(proto, binary=True, run_seed=42).angle == tf.angle
    assert T.TrainTransform(proto, binary=True, run_seed=43).angle != tf.angle
    # the authors' random.uniform(0, 360): over 200 runs the angles come within 20° of both ends
    # (each end missed with chance (340 / 360) ** 200 < 1e-4); half the turn would never pass 180°
    angles = [T.run_rotation_angle(seed) for seed in range(200)]
    assert min(angles) < 20 and max(angles) > 340
    seen = []
    real = T._rotate
    monkeypatch.setattr(T, "_rotate", lambda arr, angle, *mode: (seen.append(angle), real(arr, angle, *mode))[1])
    s = _rgb_sample()
    for i in range(20):
        tf(s, np.random.default_rng(i))
    assert 10 <= len(seen) <= 30 and set(seen) == {tf.angle}  # image and mask, ~half the samples


def test_vmunet_isic_output_soft_and_aligned():
    tf = T.TrainTransform(_proto("isic17", img_size=48), binary=True, run_seed=1)
    s = _rgb_sample()
    for i in range(8):
        image, mask = tf(s, np.random.default_rng(i))
        assert image.shape == (3, 48, 48) and image.dtype == torch.float32
        assert mask.shape == (1, 48, 48) and mask.dtype == torch.float32
        assert 0 <= float(image.min()) and float(image.max()) <= 255.0 + 1e-3  # minmax255
        m = mask[0].numpy()
        assert 0 <= m.min() and m.max() <= 1 and ((m > 0.01) & (m < 0.99)).any()  # soft edges kept
        inside = m > 0.99
        dark = image.numpy().mean(axis=0) < 60  # after min-max the lesion is near 0
        assert inside.any() and dark[inside].mean() > 0.95  # the mask still sits on the lesion


def test_vmunet_flips_and_rotation_follow_the_rng():
    """Horizontal flip, vertical flip, rotation: one draw each, p 0.5, image and mask alike; seeds
    until all 8 outcomes have run (the rotation itself equals torchvision's: tests below)."""
    s = _rgb_sample()
    seen = set()
    for seed in range(64):
        img, mask = T.vmunet_isic_augment(s.image, s.label, np.random.default_rng(seed), angle=30.0)
        hflip, vflip, rotate = (np.random.default_rng(seed).random(3) < 0.5).tolist()
        seen.add((hflip, vflip, rotate))
        expect_img, expect_mask = s.image, s.label
        if hflip:
            expect_img, expect_mask = np.fliplr(expect_img), np.fliplr(expect_mask)
        if vflip:
            expect_img, expect_mask = np.flipud(expect_img), np.flipud(expect_mask)
        if rotate:
            expect_img, expect_mask = (T._rotate(np.ascontiguousarray(a), 30.0, "grid-constant")
                                       for a in (expect_img, expect_mask))
        np.testing.assert_array_equal(img, expect_img)
        np.testing.assert_array_equal(mask, expect_mask)
    assert len(seen) == 8


def test_vmunet_isic_on_class_labels_zooms_them_nearest():
    """A multi-class dataset under the ISIC pipeline (VM-UNet's Synapse set-up) resizes its labels by
    nearest neighbour: the bilinear resize binary masks get would invent classes between neighbours."""
    tf = T.TrainTransform(_proto("synapse", img_size=32, augment="vmunet_isic"), binary=False, run_seed=5)
    s = _ct_sample()
    for seed in range(6):
        _, label = tf(s, np.random.default_rng(seed))
        _, aug = T.vmunet_isic_augment(s.image, s.label, np.random.default_rng(seed), T.run_rotation_angle(5))
        np.testing.assert_array_equal(label.numpy(), ndimage.zoom(aug, (32 / aug.shape[0], 32 / aug.shape[1]), order=0))


@pytest.mark.parametrize("angle", [1.0, 17.3, 200.0, 359.0])
@pytest.mark.parametrize("shape", [(37, 53), (64, 96)])
def test_vmunet_rotation_equals_torchvisions(angle, shape):
    """VM-UNet rotates with torchvision's TF.rotate (nearest, fill 0): the same pixels, the outer
    ring included (scipy's "constant" mode blanked it: 1-4 % of a small image)."""
    from bench._tv_compat import ensure_torchvision

    ensure_torchvision()
    import torchvision.transforms.functional as TF

    index = np.arange(1, shape[0] * shape[1] + 1, dtype=np.float64).reshape(shape)  # every pixel its own value
    ours = T._rotate(index, angle, "grid-constant")
    theirs = TF.rotate(torch.from_numpy(index)[None], angle)[0].numpy()
    np.testing.assert_array_equal(ours, theirs)


# --- nnU-Net (batchgenerators) ---------------------------------------------------------------


def _nnunet_proto(img_size: int = 32):
    p = load_protocol("synapse")
    return dataclasses.replace(p, img_size=img_size, train=dataclasses.replace(p.train, augment="nnunet"))


@pytest.mark.parametrize("n", [7, 8])
def test_nnunet_spatial_identity_and_rot90_about_the_centre(n):
    rng = np.random.default_rng(n)
    x, label = rng.random((2, n, n)), rng.integers(0, 5, (n, n))
    same_x, same_label = T._nnunet_spatial(x, label, T._rotation_2d(0.0), 1.0)
    np.testing.assert_allclose(same_x, x, atol=1e-9)
    np.testing.assert_array_equal(same_label, label)
    # about the exact centre ((n - 1) / 2), a quarter turn maps the pixel grid onto itself: np.rot90
    rot_x, rot_label = T._nnunet_spatial(x, label, T._rotation_2d(np.pi / 2), 1.0)
    np.testing.assert_allclose(rot_x, np.rot90(x, 1, axes=(1, 2)), atol=1e-9)
    np.testing.assert_array_equal(rot_label, np.rot90(label))
    assert rot_label.dtype == np.int64


def test_nnunet_spatial_scale_multiplies_the_sampling_coordinates():
    # 41 x 41, centre 20, a square of class 2 over [10, 30]; output i reads input 20 + (i - 20) * scale
    label = np.zeros((41, 41), np.int64)
    label[10:31, 10:31] = 2
    x = (label / 2.0)[None]
    small_x, small = T._nnunet_spatial(x, label, T._rotation_2d(0.0), 2.0)
    expect = np.zeros_like(label)
    expect[15:26, 15:26] = 2  # |2 (i - 20)| <= 10: scale 2 halves the square
    np.testing.assert_array_equal(small, expect)
    assert abs(small_x[0, 20, 20] - 1.0) < 1e-9 and small_x[0, 0, 0] == 0.0  # outside the input: zero fill
    _, big = T._nnunet_spatial(x, label, T._rotation_2d(0.0), 0.5)
    assert (big == 2).all()  # |(i - 20) / 2| <= 10 everywhere: scale 0.5 doubles it


def test_nnunet_spatial_interpolation_orders_at_half_pixels():
    # scale 0.5 about centre 20: output 21 reads input 20.5, midway between pixels 20 and 21
    label = np.full((41, 41), 5, np.int64)
    label[20:22, 20:22] = [[1, 2], [3, 4]]
    t = np.arange(41) - 20.0
    x = np.add.outer(t**2, 0.5 * t)[None] / 40.0  # quadratic: cubic splines reproduce it, linear would not
    out_x, out = T._nnunet_spatial(x, label, T._rotation_2d(0.0), 0.5)
    assert out[20, 20] == 1
    assert out[21, 21] == 0  # four labels at 0.25 each: none reaches 0.5, the pixel stays 0
    assert out[21, 20] == 3 and out[20, 21] == 2  # 1 and 3 tie at 0.5: the higher label is written last
    inner = slice(10, 31)
    ref = np.add.outer((t / 2) ** 2, 0.5 * t / 2) / 40.0
    np.testing.assert_allclose(out_x[0, inner, inner], ref[inner, inner], atol=1e-6)


def test_nnunet_spatial_labels_are_linear_indicators_at_the_rotated_coordinates():
    """Guards against the label indicators sampled with another spline order (cubic moves thin structures)."""
    rng = np.random.default_rng(7)
    label = rng.integers(0, 4, (15, 17))  # random labels: every structure is 1 pixel thin
    x = rng.random((1, 15, 17))
    angle, scale = 0.4, 1.1
    _, out = T._nnunet_spatial(x, label, T._rotation_2d(angle), scale)
    # batchgenerators: output p reads the input at rot.T @ (p - c_out) * scale + c_in, c = (n - 1) / 2
    grid = np.stack(np.mgrid[0:15, 0:17]).reshape(2, -1).astype(np.float64)
    ctr = np.array([[7.0], [8.0]])
    coords = (T._rotation_2d(angle).T @ (grid - ctr) * scale + ctr).reshape(2, 15, 17)
    expect = np.zeros_like(label)
    for c in range(4):  # each label's indicator, linear, -1 outside, written where >= 0.5 in ascending order
        hit = ndimage.map_coordinates((label == c).astype(np.float64), coords, order=1, mode="constant", cval=-1.0)
        expect[hit >= 0.5] = c
    np.testing.assert_array_equal(out, expect)


def test_nnunet_spatial_labels_stay_in_the_class_set():
    label = _ct_sample(33, 33).label
    x = _ct_sample(33, 33).image[None].astype(np.float64)
    for angle, scale in ((0.3, 1.0), (-2.5, 1.3), (1.1, 0.75)):
        _, out = T._nnunet_spatial(x, label, T._rotation_2d(angle), scale)
        assert out.dtype == np.int64 and set(np.unique(out)) <= set(np.unique(label)) | {0}
    _, out = T._nnunet_spatial(x, label + 1, T._rotation_2d(np.pi / 4), 1.0)  # no class 0 in the input: corners become 0
    assert out[0, 0] == 0 and out[16, 16] == label[16, 16] + 1


def test_nnunet_draw_probabilities_and_ranges(monkeypatch):
    # a single-channel item, n times; the helpers are spied on (and skipped) to count what was drawn
    calls = {"spatial": [], "contrast": [], "lowres": [], "gamma": [], "blur": []}

    def spy(name):
        def record(first, *params):  # keep the parameters drawn, return the array(s) unchanged
            calls[name].append(params)
            return (first, params[0]) if name == "spatial" else first
        return record

    monkeypatch.setattr(T, "_nnunet_spatial", spy("spatial"))
    monkeypatch.setattr(T, "_nnunet_contrast", spy("contrast"))
    monkeypatch.setattr(T, "_nnunet_lowres", spy("lowres"))
    monkeypatch.setattr(T, "_nnunet_gamma", spy("gamma"))
    monkeypatch.setattr(T.ndimage, "gaussian_filter", spy("blur"))
    # a constant image: noise alone gives it a spread; brightness alone scales it by its factor
    image, label = np.ones((6, 6), np.float32), np.zeros((6, 6), np.int64)
    n, noisy, brightness = 3000, 0, []
    for i in range(n):
        out = T.nnunet_augment(image, label, np.random.default_rng([11, i]))[0]
        noisy += bool(np.ptp(out) > 0)
        if np.ptp(out) == 0 and out[0, 0] != 1.0:
            brightness.append(float(out[0, 0]))
    # SpatialTransform: rotation p 0.2, U(-pi, pi); scaling p 0.2, one factor split around 1
    assert abs(len(calls["spatial"]) / n - (1 - 0.8 * 0.8)) < 0.03
    angles = [np.arctan2(rot[1, 0], rot[0, 0]) for _, rot, _ in calls["spatial"]]  # the matrix's angle
    angles = [a for a in angles if a != 0.0]
    scales = [sc for _, _, sc in calls["spatial"] if sc != 1.0]
    assert abs(len(angles) / n - 0.2) < 0.02 and abs(len(scales) / n - 0.2) < 0.02
    assert all(-np.pi <= a < np.pi for a in angles) and min(angles) < -3.0 and max(angles) > 3.0
    assert all(0.7 <= sc <= 1.4 for sc in scales)
    assert abs(np.mean([sc < 1 for sc in scales]) - 0.5) < 0.04  # U(0.7, 1.4) would give 0.43
    assert abs(noisy / n - 0.1) < 0.02
    # brightness p 0.15 (seen without noise: p 0.9), U(0.75, 1.25); sigma of the share sqrt(0.135 · 0.865 / n)
    # = 0.0062, the bound 4 sigma. That none of ~400 factors comes within 0.03 of an end: chance 0.94 ** 400 < 1e-10
    assert abs(len(brightness) / n - 0.15 * 0.9) < 0.025
    assert 0.75 <= min(brightness) < 0.78 and 1.22 < max(brightness) <= 1.25
    blur = [sig for (sig,) in calls["blur"]]
    assert abs(len(blur) / n - 0.2 * 0.5) < 0.02 and all(0.5 <= sig <= 1.0 for sig in blur)
    factors = [f for (f,) in calls["contrast"]]
    assert abs(len(factors) / n - 0.15) < 0.02 and all(0.75 <= f <= 1.25 for f in factors)
    assert abs(np.mean([f < 1 for f in factors]) - 0.5) < 0.08
    zooms = [z for (z, *_) in calls["lowres"]]
    assert abs(len(zooms) / n - 0.25 * 0.5) < 0.02 and all(0.5 <= z <= 1.0 for z in zooms)
    inverted = [g for g, inv in calls["gamma"] if inv]
    plain = [g for g, inv in calls["gamma"] if not inv]
    assert abs(len(inverted) / n - 0.1) < 0.02 and abs(len(plain) / n - 0.3) < 0.025
    assert all(0.7 <= g <= 1.5 for g in inverted + plain)
    assert abs(np.mean([g < 1 for g in plain]) - 0.5) < 0.06


def test_nnunet_contrast_preserve_range_hand_computed():
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0])  # mean 2
    np.testing.assert_allclose(T._nnunet_contrast(x, 1.25), [0.0, 0.75, 2.0, 3.25, 4.0])  # clipped to [0, 4]
    lower = T._nnunet_contrast(np.random.default_rng(0).normal(3, 2, (20, 20)), 0.8)
    ref = np.random.default_rng(0).normal(3, 2, (20, 20))
    assert abs(lower.mean() - ref.mean()) < 1e-12 and lower.min() >= ref.min() and lower.max() <= ref.max()
    np.testing.assert_allclose(lower.std(), 0.8 * ref.std(), rtol=1e-12)  # nothing to clip below 1


@pytest.mark.parametrize("gamma,invert", [(0.7, False), (1.5, False), (0.8, True), (1.4, True)])
def test_nnunet_gamma_retains_stats(gamma, invert):
    x = np.random.default_rng(2).normal(0.5, 2.0, (24, 24))
    out = T._nnunet_gamma(x, gamma, invert)
    np.testing.assert_allclose([out.mean(), out.std()], [x.mean(), x.std()], rtol=1e-5)
    # shape of the curve, independently: standardised ((x - min) / range) ** gamma, or its mirror image
    lo, hi = x.min(), x.max()
    curve = -(((hi - x) / (hi - lo)) ** gamma) if invert else ((x - lo) / (hi - lo)) ** gamma

    def z(a):
        return (a - a.mean()) / a.std()

    np.testing.assert_allclose(z(out), z(curve), atol=1e-5)
    assert not np.allclose(out, x)


def test_nnunet_lowres_nearest_down_cubic_up():
    x = np.random.default_rng(4).random((37, 29))
    out = T._nnunet_lowres(x, 0.6)
    assert out.shape == x.shape and x.min() <= out.min() and out.max() <= x.max()
    np.testing.assert_allclose(T._nnunet_lowres(x, 1.0), x, atol=1e-9)  # same size: nothing lost
    # a one-pixel checkerboard halved by nearest neighbour samples one parity only: a constant image
    board = (np.add.outer(np.arange(16), np.arange(16)) % 2).astype(np.float64)
    flat = T._nnunet_lowres(board, 0.5)
    assert flat.shape == (16, 16) and np.ptp(flat) == 0 and flat[0, 0] in (0.0, 1.0)


def test_nnunet_augment_shapes_labels_and_determinism():
    s = _ct_sample(32, 32)
    rgb = np.random.default_rng(1).random((32, 32, 3)).astype(np.float32)
    classes = set(np.unique(s.label))
    outs = []
    for i in range(40):
        image, label = T.nnunet_augment(s.image, s.label, np.random.default_rng([5, i]))
        assert image.shape == (32, 32) and image.dtype == np.float32 and np.isfinite(image).all()
        assert label.shape == (32, 32) and label.dtype == np.int64 and set(np.unique(label)) <= classes
        outs.append((image, label))
    again = T.nnunet_augment(s.image, s.label, np.random.default_rng([5, 0]))
    np.testing.assert_array_equal(again[0], outs[0][0])
    np.testing.assert_array_equal(again[1], outs[0][1])
    assert len({o[0].tobytes() for o in outs}) > 30  # different seeds, different items
    assert sum(not np.array_equal(o[1], s.label) for o in outs) > 20  # flips alone move labels 3/4 of the time
    image, label = T.nnunet_augment(rgb, s.label, np.random.default_rng(3))
    assert image.shape == (32, 32, 3) and label.shape == (32, 32)


def test_nnunet_mirroring_flips_image_and_label_along_the_same_axis():
    """MirrorTransform flips an image and its label together: a label flipped along another axis than
    its image trains the model on organs where the image has none."""
    rng = np.random.default_rng(0)
    for shape in ((12, 14), (6, 8, 10)):
        x, label = rng.normal(size=(1, *shape)), rng.integers(0, 4, shape)
        for axis in range(len(shape)):
            # 9 draws that do not fire (rotation, scale, noise, blur, brightness, contrast, low
            # resolution, two gammas), then one mirror draw per axis: this axis's alone fires
            draws = [0.9] * 9 + [0.1 if a == axis else 0.9 for a in range(len(shape))]
            out_x, out = T.nnunet_augment_patch(x, label, Scripted(draws), shape)
            np.testing.assert_array_equal(out, np.flip(label, axis))
            np.testing.assert_allclose(out_x[0], np.flip(x[0], axis), rtol=1e-6)
            if len(shape) == 2:  # and the whole-image pipeline
                image, out = T.nnunet_augment(x[0], label, Scripted(draws))
                np.testing.assert_array_equal(out, np.flip(label, axis))
                np.testing.assert_allclose(image, np.flip(x[0], axis), rtol=1e-6)


def test_train_transform_nnunet():
    tf = T.TrainTransform(_nnunet_proto(24), binary=False, run_seed=0)
    s = _ct_sample()
    image, label = _multiclass_item(tf, s, 24, seed=9)
    # the resize comes first: the augmentation sees the S x S arrays
    small = T.resize_image(s.image, 24, 3), T.resize_image(s.label, 24, 0)  # synapse: normalize "none"
    for i in range(8):
        image, label = tf(s, np.random.default_rng([9, i]))
        ref = T.nnunet_augment(*small, np.random.default_rng([9, i]))
        np.testing.assert_array_equal(image[0].numpy(), ref[0])
        np.testing.assert_array_equal(label.numpy(), ref[1])
    with pytest.raises(BenchError, match="integer class labels"):
        T.TrainTransform(_nnunet_proto(), binary=True, run_seed=0)


# --- evaluation helpers ----------------------------------------------------------------------


def test_prepare_slice_and_binary_pair():
    proto = _proto("synapse", img_size=32)
    s = _ct_sample()
    x = T.prepare_slice(s.image, proto)
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32
    np.testing.assert_allclose(x[0].numpy(), T.resize_image(s.image, 32, 3))
    iso = _proto("isic17", img_size=40)
    rgb = _rgb_sample()
    x = T.prepare_slice(rgb.image, iso)
    assert x.shape == (3, 40, 40) and float(x.max()) > 200  # minmax255 applied
    img, mask = T.prepare_binary_pair(rgb.image, rgb.label, iso)
    assert img.shape == (3, 40, 40) and mask.shape == (40, 40) and mask.dtype == np.float32


# --- torch dataset ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synapse_ds(tmp_path_factory):
    root = synthesize("synapse", tmp_path_factory.mktemp("tf") / "syn", n_train=1, n_test=1, depth=8, size=48)
    return open_dataset("synapse", root)


def test_train_dataset_items_depend_only_on_seed_epoch_index(synapse_ds):
    proto = _proto("synapse", img_size=32)
    data = TrainDataset(synapse_ds, proto, seed=3)
    assert len(data) == 8
    image, label = data[5]
    assert image.shape == (1, 32, 32) and label.shape == (32, 32) and label.dtype == torch.int64
    fresh = TrainDataset(synapse_ds, proto, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(fresh[5], data[5]))
    epochs = []
    for e in range(4):
        data.set_epoch(e)
        epochs.append(data[5][1])
    assert any(not torch.equal(epochs[0], x) for x in epochs[1:])  # augmentation changes per epoch
    data.set_epoch(0)
    assert torch.equal(data[5][1], epochs[0])


def test_train_dataset_gives_each_item_its_own_stream(synapse_ds):
    """Item i of epoch e draws from default_rng([seed, e, i]) (and a drawn item from [seed, e, i, draw]):
    a stream shared by the items of an epoch would give every slice of a batch the same augmentation."""
    data = TrainDataset(synapse_ds, _proto("synapse", img_size=32), seed=3,
                        transform=lambda sample, rng, draw: rng.random())  # the first number of the item's stream
    data.set_epoch(2)
    n = len(data)
    assert [data[i] for i in range(n)] == [np.random.default_rng([3, 2, i]).random() for i in range(n)]
    assert data[(1, 5)] == np.random.default_rng([3, 2, 1, 5]).random()


def test_train_dataset_rotates_isic_items_by_its_run_seeds_angle(synapse_ds):
    """VM-UNet's ISIC rotation angle is drawn once per run: from the run's seed, so each seed of a sweep
    rotates by its own angle (one angle for every seed would leave the angle's effect out of the spread
    over seeds)."""
    proto = _proto("synapse", img_size=32, augment="vmunet_isic")
    angles = [TrainDataset(synapse_ds, proto, seed=seed).transform.angle for seed in (3, 4)]
    assert angles == [T.run_rotation_angle(3), T.run_rotation_angle(4)] and angles[0] != angles[1]


def test_train_dataset_same_batches_with_workers(synapse_ds):
    proto = _proto("synapse", img_size=24)
    data = TrainDataset(synapse_ds, proto, seed=1)
    data.set_epoch(2)

    def batches(workers):
        loader = torch.utils.data.DataLoader(data, batch_size=3, shuffle=False, num_workers=workers)
        return [b for b in loader]

    for (i0, l0), (i2, l2) in zip(batches(0), batches(2)):
        assert torch.equal(i0, i2) and torch.equal(l0, l2)


def test_persistent_workers_see_the_epoch(synapse_ds):
    data = TrainDataset(synapse_ds, _proto("synapse", img_size=24), seed=1)
    loader = torch.utils.data.DataLoader(data, batch_size=8, num_workers=1, persistent_workers=True)
    seen = []
    for epoch in range(3):
        data.set_epoch(epoch)
        seen.append(next(iter(loader))[1])
        data.set_epoch(epoch)
        assert torch.equal(seen[-1], torch.stack([data[i][1] for i in range(8)]))
    assert not torch.equal(seen[0], seen[1])


def test_nnunet_noise_is_one_field_per_channel():
    # batchgenerators (since its issue #86 fix) adds one N(0, std) field to each channel. A scripted
    # generator draws only the noise step, at the top of its range (std 0.1): every channel of a zero
    # RGB image then has spread 0.1 (C fields per channel, the old bug, would give 0.1 * sqrt(3))
    class Scripted:
        def __init__(self):
            self.u = iter([0.9, 0.9, 0.0] + [0.9] * 8)  # no rotation, no scaling, noise, nothing after
            self.real = np.random.default_rng(0)

        def random(self):
            return next(self.u)

        def uniform(self, lo, hi):
            return hi

        def normal(self, *args):
            return self.real.normal(*args)

    image, label = np.zeros((64, 64, 3), np.float32), np.zeros((64, 64), np.int64)
    out, _ = T.nnunet_augment(image, label, Scripted())
    assert np.allclose(out.std(axis=(0, 1)), 0.1, rtol=0.04)
    assert not np.allclose(out[..., 0], out[..., 1])  # each channel its own field
