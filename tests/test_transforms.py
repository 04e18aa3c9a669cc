"""Preprocessing and augmentation: TransUNet / VM-UNet pipelines, zoom orders, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bench.transforms as T
from bench.data import open_dataset
from bench.data.base import Sample
from bench.data.synth import synthesize
from bench.data.torch_dataset import TrainDataset
from bench.errors import BenchError
from bench.protocol import load_protocol


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
    monkeypatch.setattr(T, "_rotate", lambda arr, angle: (seen.append(angle), real(arr, angle))[1])
    s = _ct_sample()
    for i in range(400):
        T.transunet_augment(s.image, s.label, np.random.default_rng(i))
    assert seen and all(isinstance(a, int) and -20 <= a <= 19 for a in seen)
    assert min(seen) == -20 and max(seen) == 19


def test_train_transform_multiclass_shapes_and_determinism():
    tf = T.TrainTransform(_proto("synapse", img_size=32), binary=False, run_seed=0)
    s = _ct_sample()
    image, label = tf(s, np.random.default_rng(5))
    assert image.shape == (1, 32, 32) and image.dtype == torch.float32
    assert label.shape == (32, 32) and label.dtype == torch.int64
    assert set(label.unique().tolist()) <= set(range(9))
    again = tf(s, np.random.default_rng(5))
    assert torch.equal(image, again[0]) and torch.equal(label, again[1])
    others = [tf(s, np.random.default_rng(k))[1] for k in range(6, 12)]
    assert any(not torch.equal(label, o) for o in others)


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
    seen = []
    real = T._rotate
    monkeypatch.setattr(T, "_rotate", lambda arr, angle: (seen.append(angle), real(arr, angle))[1])
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


def test_vmunet_flips_follow_the_rng():
    s = _rgb_sample()
    img, mask = T.vmunet_isic_augment(s.image, s.label, np.random.default_rng(0), angle=30.0)
    draws = np.random.default_rng(0).random(3) < 0.5
    expect_img, expect_mask = s.image, s.label
    if draws[0]:
        expect_img, expect_mask = expect_img[:, ::-1], expect_mask[:, ::-1]
    if draws[1]:
        expect_img, expect_mask = expect_img[::-1], expect_mask[::-1]
    if not draws[2]:
        np.testing.assert_array_equal(img, expect_img)
        np.testing.assert_array_equal(mask, expect_mask)
    else:
        np.testing.assert_array_equal(mask, T._rotate(np.ascontiguousarray(expect_mask), 30.0))


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
