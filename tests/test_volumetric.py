"""3-D protocols (lightm_unet_3d): patch sampling, 3-D augmentation, CT normalisation from the training
foreground, sliding-window prediction, and a run end to end on NIfTI volumes in nnU-Net format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench import records
from bench import transforms as T
from bench.data import open_dataset, synthesize, synthetic_identity
from bench.data.intensity import foreground_statistics
from bench.data.preprocess import VolumePrep, volume_prep
from bench.data.resample import new_shape
from bench.errors import BenchError
from bench.evaluate import gaussian_importance, sliding_window_logits, tile_starts
from bench.protocol import load_protocol
from bench.registry import list_models
from tests.fixtures import Scripted, run_bench

PROTOCOLS = Path(__file__).parents[1] / "bench" / "protocols"
_bench = run_bench


# --- the protocol ------------------------------------------------------------------------------


def test_lightm_unet_3d_protocol_is_the_authors_trainer_on_patches():
    p = load_protocol("lightm_unet_3d")
    t = p.train
    assert (p.patch_size, p.spatial_dims, p.img_size, p.model_size) == ((128, 128, 128), 3, 0, 128)
    assert (t.optimizer, t.lr, t.weight_decay, t.eps, t.scheduler, t.epochs, t.iterations_per_epoch) == \
        ("adam", 1e-4, 1e-5, 1e-5, "poly_epoch", 100, 250)
    assert (t.batch_size, t.dice_loss, t.augment, t.oversample_foreground, t.grad_clip, t.amp, t.select) == \
        (2, "nnunet", "nnunet", 0.33, 12.0, False, "final")
    assert (p.normalize, p.metric_policy, p.eval.tile_step, p.datasets) == ("ct_foreground", "strict", 0.5, ("nnunet",))
    assert p.target_spacing == "nnunet" and load_protocol("smoke").target_spacing == "native"
    assert load_protocol("smoke").spatial_dims == 2


@pytest.mark.parametrize("lines, phrase", [
    ('patch_size = [16]', "patch_size: expected whole numbers >= 1, [D, H, W] (3-D patches) or [H, W]"),
    ('patch_size = [8, 8, 16, 16]', "patch_size: expected whole numbers >= 1"),
    ('patch_size = [0, 16, 16]', "patch_size: expected whole numbers >= 1"),
    ('patch_size = [8, 16, 16]\nimg_size = 64', "img_size: a patch protocol sizes its input with patch_size"),
    ('patch_size = [8, 16, 16]\n[eval]\ntile_step = 0', "eval.tile_step: expected a fraction"),
    ('patch_size = [8, 16, 16]\ntarget_spacing = "median"', "target_spacing: expected 'native', 'nnunet'"),
    ('patch_size = [8, 16, 16]\ntarget_spacing = [1.0, 0, 1.0]', "target_spacing: expected 3 spacings in mm > 0, [z, y, x]"),
    ('patch_size = [16, 16]\ntarget_spacing = [3.0, 1.0, 1.0]', "target_spacing: expected 2 spacings in mm > 0, [y, x]"),
    ('img_size = 64\ntarget_spacing = "nnunet"', "target_spacing: resampling to a spacing belongs to patch protocols"),
    ('img_size = 64\ntarget_spacing = [1.0, 1.0]', "target_spacing: resampling to a spacing belongs to patch protocols"),
])
def test_bad_3d_protocol_fields_name_the_file_and_field(tmp_path, lines, phrase):
    text = (PROTOCOLS / "lightm_unet_3d.toml").read_text(encoding="utf-8")
    text = text.replace("patch_size = [128, 128, 128]\n", "").replace('target_spacing = "nnunet"', "")
    text = text[:text.index("[eval]")]  # the test writes its own
    head, _, tail = text.partition("[train]")
    path = tmp_path / "bad.toml"
    if "[eval]" in lines:
        first, _, ev = lines.partition("\n[eval]\n")
        path.write_text(head + first + "\n[train]" + tail + "\n[eval]\n" + ev + "\n", encoding="utf-8")
    else:
        path.write_text(head + lines + "\n[train]" + tail, encoding="utf-8")
    with pytest.raises(BenchError) as err:
        load_protocol(path)
    assert str(path) in str(err.value) and phrase in str(err.value)


def test_patch_size_not_a_list_is_one_clear_error(tmp_path):
    path = tmp_path / "scalar.toml"
    path.write_text((PROTOCOLS / "lightm_unet_3d.toml").read_text(encoding="utf-8")
                    .replace("patch_size = [128, 128, 128]", "patch_size = 128"), encoding="utf-8")
    with pytest.raises(BenchError, match=r"patch_size: expected whole numbers >= 1, \[D, H, W\].*got 128"):
        load_protocol(path)


def test_oversample_share_is_checked(tmp_path):
    path = tmp_path / "over.toml"
    path.write_text((PROTOCOLS / "lightm_unet_3d.toml").read_text(encoding="utf-8")
                    .replace("oversample_foreground = 0.33", "oversample_foreground = 1.5"), encoding="utf-8")
    with pytest.raises(BenchError, match="train.oversample_foreground: expected a share between 0 and 1"):
        load_protocol(path)


def test_patch_override_is_off_protocol_and_img_size_is_refused():
    p = load_protocol("lightm_unet_3d")
    q = p.with_overrides(patch_size=[8, 16, 16])
    assert q.patch_size == (8, 16, 16) and q.off_protocol and q.hash == p.hash
    for size in (64, 0):  # even 0, the value a 3-D protocol holds: no img_size override on 3-D protocols
        with pytest.raises(BenchError, match=r"--img-size.*change that with --patch-size"):
            p.with_overrides(img_size=size)
    with pytest.raises(BenchError, match=r"patch_size \(--patch-size\): protocol 'lightm_unet_3d' trains 3-D "
                                         r"patches \[128, 128, 128\]; give 3 sides, got \[8, 16\]"):
        p.with_overrides(patch_size=[8, 16])
    with pytest.raises(BenchError, match=r"patch_size \(--patch-size\): protocol 'smoke' zooms whole images"):
        load_protocol("smoke").with_overrides(patch_size=[16, 16])


# --- patches: region, foreground forcing, crop --------------------------------------------------


def test_initial_patch_is_nnunets_get_patch_size():
    # 128 rotated by 30° about one axis reaches 128·(cos 30° + sin 30°) = 174.85 on the others; / 0.85 = 205.7
    assert T.nnunet_initial_patch((128, 128, 128)) == (205, 205, 205)
    # (8, 16, 16): about x the extents are (8, 21.86, 5.86), about y (1.07, 16, 17.86), about z
    # (14.93, 9.86, 16); the largest per axis, / 0.85 -> (17.56, 25.72, 21.01)
    assert T.nnunet_initial_patch((8, 16, 16)) == (17, 25, 21)


def test_rotation_3d_turns_a_volume_like_rot90():
    rng = np.random.default_rng(0)
    x, label = rng.normal(size=(2, 5, 5, 5)), rng.integers(0, 3, (5, 5, 5))
    for angles, axes in (((np.pi / 2, 0, 0), (1, 2)), ((0, np.pi / 2, 0), (2, 0)), ((0, 0, np.pi / 2), (0, 1))):
        m = T.rotation_3d(*angles)
        assert np.allclose(m @ m.T, np.eye(3)) and np.isclose(np.linalg.det(m), 1.0)
        out_x, out = T._nnunet_spatial(x, label, m, 1.0)
        np.testing.assert_allclose(out_x, np.rot90(x, 1, axes=(axes[0] + 1, axes[1] + 1)), atol=1e-9)
        assert np.array_equal(out, np.rot90(label, 1, axes=axes))


def test_crop_padded_fills_outside_the_array():
    arr = np.arange(24).reshape(2, 3, 4)
    out = T.crop_padded(arr, np.array([-1, 1]), (3, 4), fill=-7)  # last two axes: rows -1..1, cols 1..4
    expected = np.full((2, 3, 4), -7)
    expected[:, 1:, :3] = arr[:, :2, 1:]
    assert np.array_equal(out, expected)
    assert (T.crop_padded(arr, np.array([5, 9]), (2, 2), 0) == 0).all()  # wholly outside


def test_patch_corners_span_nnunets_range_and_forced_ones_hold_foreground():
    shape, patch = (10, 20, 20), (8, 8, 8)
    initial = T.nnunet_initial_patch(patch)
    pad = np.maximum(np.array(initial) - patch, np.array(initial) - shape)
    lo, hi = -pad // 2, np.array(shape) + pad // 2 + pad % 2 - np.array(initial)
    corners = np.array([T.nnunet_patch_corner(shape, patch, initial, np.random.default_rng(i)) for i in range(400)])
    assert (corners.min(0) == lo).all() and (corners.max(0) == hi).all()  # both ends reached, never passed
    label = np.zeros(shape, np.int64)
    label[2, 3, 15] = 1  # one voxel of class 1, a block of class 2
    label[6:9, 14:18, 2:6] = 2
    locations = T.foreground_locations(label)
    seen = set()
    for i in range(200):
        rng = np.random.default_rng(i)
        cls = T.nnunet_class(locations, rng)
        corner = T.nnunet_patch_corner(shape, patch, initial, rng, locations[cls])
        region = T.crop_padded(label, corner, initial, -1)
        centre = T.crop_padded(region, (np.array(initial) - patch) // 2, patch, -1)  # the unrotated patch
        assert (centre == cls).any()
        seen.add(cls)
    assert seen == {1, 2}  # a class is drawn first: the one-voxel class is not starved by the block
    empty = T.foreground_locations(np.zeros(shape, np.int64))  # no foreground: nnU-Net falls back to a random corner
    assert empty == {} and T.nnunet_class(empty, np.random.default_rng(0)) is None


def test_the_last_third_of_every_batch_is_forced_onto_foreground():
    tf = T.TrainTransform(load_protocol("lightm_unet_3d"), binary=False, run_seed=0)
    assert [tf.forced_foreground(d, None) for d in range(6)] == [False, True] * 3  # round(2 · 0.67) = 1
    tf12 = T.TrainTransform(load_protocol("lightm_unet_3d").with_overrides(batch_size=12), binary=False, run_seed=0)
    assert [tf12.forced_foreground(d, None) for d in range(12)] == [False] * 8 + [True] * 4
    # an item not drawn in an epoch of batches (iterations_per_epoch 0) is forced with p 0.33: over
    # n = 3000 items the share's sigma is sqrt(0.33 · 0.67 / n) = 0.0086, the bound 4 sigma
    share = np.mean([tf.forced_foreground(None, np.random.default_rng([1, i])) for i in range(3000)])
    assert abs(share - 0.33) < 0.035


def test_augment_3d_without_a_spatial_draw_cuts_the_centre_and_clears_the_padding():
    class NoDraw:  # every probability test fails: the patch is the region's centre, untouched
        def random(self):
            return 0.99

    x = np.arange(2 * 9 * 9 * 9, dtype=np.float64).reshape(2, 9, 9, 9)
    label = np.full((9, 9, 9), -1)
    label[3:6, 3:6, 3:6] = 2
    out_x, out = T.nnunet_augment_patch(x, label, NoDraw(), (5, 5, 5))
    np.testing.assert_array_equal(out_x, x[:, 2:7, 2:7, 2:7].astype(np.float32))
    assert out.dtype == np.int64 and set(np.unique(out)) == {0, 2} and (out[1:4, 1:4, 1:4] == 2).all()


def test_dummy_2d_patches_are_nnunets_flat_ones():
    # longest side over 3 times the depth: 160 / 56 = 2.9 no, 160 / 48 = 3.3 yes
    assert [T.dummy_2d(p) for p in ((128, 128, 128), (56, 160, 160), (48, 160, 160), (20, 256, 224))] == \
        [False, False, True, True]
    assert T.nnunet_initial_patch((40, 160, 160)) == (40, 188, 188)  # 90° about axis 0, / 0.85, depth kept
    assert T.nnunet_initial_patch((20, 256, 224)) == (20, 301, 301)


def test_dummy_2d_augmentation_turns_every_slice_alike_in_plane():
    # a rotation and a scale drawn (u = 0.1 twice), nothing else: each slice is the 2-D spatial
    # transform of its own slice, with the 2-D angle and one scale for the two in-plane axes
    rng = np.random.default_rng(8)
    patch = (4, 16, 16)
    initial = T.nnunet_initial_patch(patch)
    assert initial == (4, 18, 18)
    x = rng.normal(size=(1, *initial))
    label = (rng.random(initial) < 0.3).astype(np.int64) * 2
    angle = 1.1
    out_x, out = T.nnunet_augment_patch(x, label, Scripted([0.1, 0.1, 0.2], [angle, 1.2]), patch)
    scale = 1.2  # the scale's split draw (u = 0.2) takes the second scripted uniform
    for k in range(patch[0]):
        ref_x, ref = T._nnunet_spatial(x[:, k], label[k], T._rotation_2d(angle), scale, patch[1:])
        np.testing.assert_allclose(out_x[0, k], ref_x[0], atol=1e-9)
        np.testing.assert_array_equal(out[k], ref)


def test_low_resolution_leaves_axis_0_alone_for_dummy_2d_patches():
    ch = np.repeat(np.arange(6, dtype=np.float64)[:, None, None] * 10, 12, axis=1).repeat(12, axis=2)
    kept = T._nnunet_lowres(ch, 0.5, keep_axis0=True)
    np.testing.assert_allclose(kept, ch, atol=1e-9)  # constant slices stay themselves
    assert not np.allclose(T._nnunet_lowres(ch, 0.5), ch)  # 3-D: slices are merged and re-interpolated


def test_training_patches_are_reproducible_and_shaped(tmp_path):
    root = synthesize("nnunet", tmp_path / "vol", dims=3, n_cases=4, depth=8, size=24)
    ds = open_dataset("nnunet", root)
    proto = load_protocol("lightm_unet_3d").with_overrides(patch_size=[8, 16, 16])
    from bench.data.torch_dataset import TrainDataset

    data = TrainDataset(ds, proto, seed=5)
    assert data.ids == ds.train_volume_ids() and not any(":" in i for i in data.ids)  # cases, not slices
    # whole volumes wait in the cache with 8-bit labels (-1 outside the non-zero region); the loaders hand out int64
    assert ds.load_train_volume(data.ids[0], volume_prep(ds, proto)).label.dtype == np.int8
    assert ds.load_test(ds.test_ids()[0]).label.dtype == ds.load_train(ds.train_ids()[0]).label.dtype == np.int64
    image, label = data[(0, 1)]
    assert image.shape == (1, 8, 16, 16) and image.dtype == torch.float32
    assert label.shape == (8, 16, 16) and label.dtype == torch.int64 and set(label.unique().tolist()) <= {0, 1, 2}
    again = TrainDataset(ds, proto, seed=5)[(0, 1)]
    assert torch.equal(image, again[0]) and torch.equal(label, again[1])
    assert not torch.equal(image, data[(0, 3)][0])  # another draw of the same case: another patch
    # normalised with the training foreground's statistics, not the volume's own
    st = data.transform.stats[0]
    assert [st] == foreground_statistics(ds.train_cases(), ds.n_train_cases) and st["std"] > 0
    forced = [data[(i % len(data), 2 * i + 1)][1] for i in range(6)]  # odd draws: the batch's forced item
    assert all((lab > 0).any() for lab in forced)


def test_mapped_training_volumes_give_the_same_patches_and_follow_the_source_files(tmp_path):
    import os

    root = synthesize("nnunet", tmp_path / "vol", dims=3, n_cases=4, depth=8, size=24)
    proto = load_protocol("lightm_unet_3d").with_overrides(patch_size=[8, 16, 16])
    from bench.data.torch_dataset import TrainDataset

    plain, mapped = open_dataset("nnunet", root), open_dataset("nnunet", root)
    mapped.volume_cache = tmp_path / "cache"
    a, b = TrainDataset(plain, proto, seed=2), TrainDataset(mapped, proto, seed=2)
    for key in [(0, 0), (1, 1), (2, 5), (0, 3)]:
        assert all(torch.equal(x, y) for x, y in zip(a[key], b[key]))
    case = mapped.train_volume_ids()[0]
    prep = volume_prep(mapped, proto)
    sample = mapped.load_train_volume(case, prep)
    assert isinstance(sample.image, np.memmap) and not sample.image.flags.writeable
    assert sample.image.shape == (1, 8, 24, 24) and sample.image.dtype == np.float32  # preprocessed: (C, *grid)
    assert np.array_equal(sample.image, plain.load_train_volume(case, prep).image)
    folder = mapped.volume_folder
    assert folder.parent == tmp_path / "cache" / "volumes"  # a folder per dataset
    files = sorted(p.name for p in folder.iterdir() if not p.name.startswith("fingerprint."))
    assert len(files) == 2 * 3 and not [f for f in files if f.startswith(".")]  # 3 cases drawn, no temp left
    # preprocessed otherwise (another spacing): its own files, next to the first ones
    other = VolumePrep(prep.normalize, prep.stats, (3.0, 1.6, 1.6))
    assert mapped.load_train_volume(case, other).image.shape == (1, 8, 12, 12)
    before = sorted(folder.glob(f"{case}.*.npy"))
    assert len(before) == 4
    label = root / "labelsTr" / f"{case}.nii.gz"  # an edited source file is decoded again, the old files go
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    mapped.load_train_volume(case, prep)
    after = sorted(folder.glob(f"{case}.*.npy"))
    assert len(after) == 2 and not set(after) & set(before)
    after[0].write_bytes(after[0].read_bytes()[:200])  # truncated by a crash: decoded and written again
    assert np.array_equal(mapped.load_train_volume(case, prep).image, plain.load_train_volume(case, prep).image)


def test_training_cases_preprocessed_in_several_processes_are_the_same_files(tmp_path):
    """nnU-Net preprocesses in several processes; the cache holds the same files whatever the number,
    and a case that cannot be read stops the run with its error, naming the file."""
    from bench.data.preprocess import cache_training_volumes, preprocess_processes

    root = synthesize("nnunet", tmp_path / "vol", dims=3, n_cases=5, depth=8, size=24)
    proto = load_protocol("drift_3d")
    folders = []
    for processes, cache in ((1, "one"), (2, "two")):
        ds = open_dataset("nnunet", root)
        ds.volume_cache = tmp_path / cache
        prep = volume_prep(ds, proto)
        assert sorted(cache_training_volumes(ds, prep, processes)) == sorted(ds.train_volume_ids())
        folders.append(ds.volume_folder)
    files = [sorted(p.name for p in f.iterdir()) for f in folders]
    assert files[0] == files[1] and len(files[0]) == 2 * 4 + 1  # image and label of the 4 training cases, fingerprint
    assert all((folders[0] / n).read_bytes() == (folders[1] / n).read_bytes() for n in files[0])
    assert [preprocess_processes(n, d, t) for n, d, t in ((105, 3, 16), (105, 2, 16), (3, 2, 16), (105, 3, 1))] \
        == [4, 8, 3, 1]

    ds = open_dataset("nnunet", root)
    ds.volume_cache = tmp_path / "broken"
    prep = volume_prep(ds, proto)
    bad = root / "labelsTr" / f"{ds.train_volume_ids()[2]}.nii.gz"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(BenchError, match=str(bad)):
        list(cache_training_volumes(ds, prep, 2))


def test_the_fingerprint_is_computed_once_per_training_set(tmp_path, monkeypatch):
    """The other runs of a grid (seeds, models) on the same training cases read the fingerprint kept
    beside the cached volumes instead of decoding every case again; an edited case is read again."""
    import os

    root = synthesize("nnunet", tmp_path / "vol", dims=3, n_cases=4, depth=8, size=24)
    proto = load_protocol("drift_3d")

    def fresh():
        ds = open_dataset("nnunet", root)
        ds.volume_cache = tmp_path / "cache"
        return ds

    first = volume_prep(fresh(), proto)
    assert len(list(fresh().volume_folder.glob("fingerprint.*.json"))) == 1
    reads = []
    monkeypatch.setattr(type(fresh()), "train_case", lambda self, case: reads.append(case) or 1 / 0)
    assert volume_prep(fresh(), proto) == first and reads == []  # read from the file: no case decoded
    monkeypatch.undo()
    ds = fresh()
    label = root / "labelsTr" / f"{ds.train_volume_ids()[0]}.nii.gz"
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    assert volume_prep(ds, proto) == first  # the same data, computed again under another name
    assert len(list(ds.volume_folder.glob("fingerprint.*.json"))) == 2
    plain = open_dataset("nnunet", root)  # no volume cache: computed, nothing kept
    assert volume_prep(plain, proto) == first


def test_rank_0_of_a_torchrun_preprocesses_on_the_cores_the_other_ranks_leave(monkeypatch):
    """torchrun gives each process one thread; while rank 0 preprocesses, the others only wait."""
    import os

    from bench.data.preprocess import cpu_budget, preprocess_processes

    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert cpu_budget() == 1 and preprocess_processes(105, 3) == 1  # one process: --threads decides
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert cpu_budget() == 16 and preprocess_processes(105, 3) == 4


@pytest.mark.parametrize("name", ["drift_3d", "drift_2d"])
def test_pipelined_evaluation_scores_as_one_case_after_another(tmp_path, name):
    """On a GPU, threads load and preprocess the next test cases and resample and score the predicted
    ones while the model predicts (as nnU-Net does): the same rows, in the same order, in eval mode
    even for a model handed over in train mode; an unreadable case stops the evaluation with its error."""
    from bench.evaluate import evaluate
    from bench.registry import create_model, get_entry

    root = synthesize("nnunet", tmp_path / "vol", dims=3, n_cases=15, depth=8, size=24)
    ds = open_dataset("nnunet", root)
    proto = load_protocol(name).with_overrides(max_cases=0)  # all 3 test cases
    torch.manual_seed(0)
    model = create_model("lightm_unet", num_classes=ds.num_classes, in_chans=1, spatial_dims=len(proto.patch_size),
                         **get_entry("lightm_unet").tiny)
    cpu = torch.device("cpu")
    one = evaluate(model, ds, proto, "strict", device=cpu, workers=0)
    seen, modes = [], []
    model.train().register_forward_pre_hook(lambda module, args: modes.append(module.training))  # as after training
    piped = evaluate(model, ds, proto, "strict", device=cpu, workers=2, progress=lambda i, n: seen.append((i, n)))
    assert modes and not any(modes)  # neither dropout nor batch statistics
    assert len({r["case"] for r in one.per_case}) == 3 and json.dumps(piped.per_case) == json.dumps(one.per_case)
    assert json.dumps(piped.metrics) == json.dumps(one.metrics) and piped.hd95_unit == one.hd95_unit
    assert seen[-1] == (3, 3) and [i for i, _ in seen] == sorted(i for i, _ in seen)
    bad = root / "labelsTr" / f"{ds.test_ids()[1]}.nii.gz"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(BenchError, match=str(bad)):
        evaluate(model, ds, proto, "strict", device=cpu, workers=2)


def test_a_case_that_fails_to_finish_stops_the_pipeline_early():
    """A scoring error on the first case is raised before the model has predicted every other one."""
    import time
    from types import SimpleNamespace

    from bench.evaluate import _pipelined

    dataset = SimpleNamespace(load_test=lambda c: SimpleNamespace(case_id=c, image=np.zeros((2, 2, 2)),
                                                                   label=np.zeros((2, 2, 2)), spacing=None))
    prep = SimpleNamespace(image=lambda image, spacing, what: (image, None))
    predicted = []

    def predict(x):
        predicted.append(1)
        time.sleep(0.05)  # the first case's finish has failed by the time the next one is predicted
        return x

    def finish(logits, box, case):
        raise BenchError(f"{case.case_id}: cannot be scored")

    with pytest.raises(BenchError, match="c0: cannot be scored"):
        _pipelined([f"c{i}" for i in range(20)], dataset, prep, predict, finish, 2, None)
    assert len(predicted) <= 3


def test_an_unwritable_volume_cache_is_one_clear_error(tmp_path):
    ds = open_dataset("nnunet", synthesize("nnunet", tmp_path / "vol", dims=3, n_cases=3, depth=8, size=16))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "volumes").write_text("a file where the folder should be", encoding="utf-8")
    ds.volume_cache = tmp_path / "cache"
    case = ds.train_volume_ids()[0]
    with pytest.raises(BenchError, match=rf"cache/volumes/[0-9a-f]{{12}}: cannot keep the preprocessed training "
                                         rf"volume '{case}' there"):
        ds.load_train_volume(case, VolumePrep("zscore"))



def test_temp_files_killed_writers_left_in_the_volume_cache_go_when_old(tmp_path):
    """A process killed while writing a volume leaves a volume-sized temp file; the next write to the
    folder removes those older than a day (a live writer's is minutes old) and leaves none of its own."""
    import os
    import time

    from bench.fileio import TEMP_MARK

    ds = open_dataset("nnunet", synthesize("nnunet", tmp_path / "vol", dims=3, n_cases=3, depth=8, size=16))
    ds.volume_cache = tmp_path / "cache"
    first, second = ds.train_volume_ids()[:2]
    ds.load_train_volume(first, VolumePrep("zscore"))
    folder = ds.volume_folder
    old = folder / f".{first}.image.npy.{TEMP_MARK}k1ll3d.tmp.npy"
    older = folder / f".{first}.label.npy.k1ll3d00.tmp.npy"  # an older version's name: mkstemp's, no TEMP_MARK
    oldest = folder / f".{first}.label.1234567.tmp.npy"  # the first versions': "<pid>.tmp.npy"
    young = folder / f".{first}.label.npy.{TEMP_MARK}wr1t1ng.tmp.npy"
    for path in (old, older, oldest, young):
        path.write_bytes(b"the first half of a volume")
    for path in (old, older, oldest):
        os.utime(path, (time.time() - 2 * 86400,) * 2)
    ds.load_train_volume(second, VolumePrep("zscore"))
    assert not old.exists() and not older.exists() and not oldest.exists() and young.exists()
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == [young.name]

def test_slice_protocols_still_train_on_slices(tmp_path):
    root = synthesize("nnunet", tmp_path / "vol", dims=3, n_cases=4, depth=8, size=24)
    ds = open_dataset("nnunet", root)
    from bench.data.torch_dataset import TrainDataset

    data = TrainDataset(ds, load_protocol("acdc").with_overrides(img_size=32), seed=0)
    assert all(":" in i for i in data.ids) and data[0][0].shape == (1, 32, 32)


def test_2d_cases_are_volumes_of_one_slice_to_patch_protocols(tmp_path):
    png = open_dataset("nnunet", synthesize("nnunet", tmp_path / "png", dims=2, n_cases=4, size=24))
    assert png.train_volume_ids() == png.train_ids()
    case = png.train_ids()[0]
    image, label, _ = png._case_arrays(case)
    vol = png.load_train_volume(case, VolumePrep("none"))
    assert vol.image.shape == (1, 1, *label.shape) and vol.label.shape == (1, *label.shape)
    np.testing.assert_array_equal(vol.image[0, 0], image)  # nothing to crop here
    outside = vol.label[0] < 0  # zero pixels connected to the border: outside the non-zero region
    assert outside.any() and np.all(image[outside] == 0) and np.all(label[outside] == 0)
    np.testing.assert_array_equal(np.where(outside, 0, vol.label[0]), label)
    from bench.data import synthetic_root

    with pytest.raises(BenchError, match=r"patch protocols \(patch_size\) train on whole cases in nnU-Net format"):
        open_dataset("synapse", synthetic_root("synapse", tmp_path)).train_volume_ids()


# --- CT normalisation from the training foreground ---------------------------------------------


def _nnunet_fingerprint(cases, total):
    """nnU-Net v2's intensity fingerprint, written out from its description: per case RandomState(1234),
    int(total // n_cases) draws with replacement from each channel's foreground in turn, then the
    mean, std and 0.5/99.5 percentiles of all draws of a channel."""
    per_case = int(total // len(cases))
    draws = []
    for image, label in cases:
        rs = np.random.RandomState(1234)
        chans = image if image.ndim > label.ndim else image[..., None]
        draws.append([rs.choice(chans[..., c][label > 0], per_case, replace=True) if (label > 0).any() else []
                      for c in range(chans.shape[-1])])
    out = []
    for c in range(len(draws[0])):
        x = np.concatenate([d[c] for d in draws])
        out.append({"mean": float(np.mean(x)), "std": float(np.std(x)),
                    "percentile_00_5": float(np.percentile(x, 0.5)), "percentile_99_5": float(np.percentile(x, 99.5))})
    return out


def _cases(rng, sizes, channels=2):
    cases = []
    for n in sizes:
        image = rng.normal(n / 100, 1 + n / 1000, size=(40, 50, channels)).astype(np.float32)
        label = np.zeros((40, 50), np.int64)
        label.reshape(-1)[rng.choice(2000, n, replace=False)] = rng.integers(1, 3, n)
        cases.append((image, label))
    return cases


def test_foreground_statistics_are_nnunets_fingerprint():
    cases = _cases(np.random.default_rng(0), (50, 400, 0, 1500))  # one case without foreground
    assert foreground_statistics(iter(cases), len(cases), 8000) == _nnunet_fingerprint(cases, 8000)
    with pytest.raises(BenchError, match="none has any"):
        foreground_statistics([cases[2]], 1)


def test_foreground_statistics_weigh_cases_equally():
    # many draws: each case's foreground weighs 1/3 whatever its size (a voxel-weighted mean would be
    # dominated by the 1500-voxel case)
    cases = _cases(np.random.default_rng(1), (50, 400, 1500), channels=1)
    (st,) = foreground_statistics(cases, 3, 3_000_000)
    case_means = [img[..., 0][lab > 0].astype(np.float64).mean() for img, lab in cases]
    assert st["mean"] == pytest.approx(np.mean(case_means), abs=0.01)
    assert st["percentile_00_5"] < min(case_means) < max(case_means) < st["percentile_99_5"]


def test_ct_foreground_normalisation_clips_then_standardises():
    stats = [{"mean": 10.0, "std": 4.0, "percentile_00_5": 0.0, "percentile_99_5": 30.0}]
    img = np.array([[[-100.0, 10.0], [30.0, 1000.0]]])  # (D, H, W)
    out = T.normalize_image(img, "ct_foreground", spatial_dims=3, stats=stats)
    assert out.dtype == np.float32 and out.tolist() == [[[-2.5, 0.0], [5.0, 5.0]]]
    with pytest.raises(BenchError, match="needs the training foreground's statistics"):
        T.normalize_image(img, "ct_foreground", spatial_dims=3)


def test_volume_zscore_uses_the_whole_volume():
    vol = np.stack([np.full((4, 4), 1.0), np.full((4, 4), 3.0)])  # each slice constant
    assert np.allclose(T.normalize_image(vol, "zscore", spatial_dims=3), vol - 2.0)  # mean 2, std 1


# --- sliding window -----------------------------------------------------------------------------


def test_tile_starts_are_nnunets_steps():
    assert tile_starts(10, 4, 0.5) == [0, 2, 4, 6]
    assert tile_starts(8, 8, 0.5) == [0]
    assert tile_starts(48, 16, 0.5) == [0, 8, 16, 24, 32]
    # ceil(34 / 8) + 1 = 6 tiles, 34 / 5 = 6.8 apart, rounded: 0, 6.8, 13.6, 20.4, 27.2, 34
    assert tile_starts(50, 16, 0.5) == [0, 7, 14, 20, 27, 34]
    assert tile_starts(50, 16, 1.0) == [0, 11, 23, 34]


def test_gaussian_weights_are_a_sampled_gaussian_of_sigma_an_eighth():
    g = gaussian_importance((16, 16, 8))
    assert g.shape == (16, 16, 8) and g.max() == 1.0 and g[8, 8, 4] == 1.0 and (g > 0).all()
    k = np.arange(-4, 5)  # sigma 2 along the first axes: exp(-k² / 8) about the centre
    np.testing.assert_allclose(g[8 + k, 8, 4], np.exp(-k**2 / 8.0), rtol=1e-5)
    np.testing.assert_allclose(g[8, 8, 4 + np.arange(-3, 4)], np.exp(-np.arange(-3, 4) ** 2 / 2.0), rtol=1e-5)


class _PlusTileMean(nn.Module):
    """Logits that depend on the tile, for 2 classes: x, and the tile's mean plus each voxel's index along
    the first axis inside the tile (which sees where padding went, as the separable weights do not)."""

    num_classes = 2

    def forward(self, x):
        index = torch.arange(x.shape[2], dtype=x.dtype).view(1, 1, -1, 1, 1)
        return torch.cat([x, x * 0 + x.mean(dim=(2, 3, 4), keepdim=True) + index], dim=1)


def scipy_gaussian(patch):
    """nnU-Net's tile weights built here from scipy's blurred impulse (sigma patch/8, max 1, zeros
    raised to the smallest weight), independent of the code under test."""
    from scipy import ndimage

    impulse = np.zeros(patch)
    impulse[tuple(p // 2 for p in patch)] = 1
    w = ndimage.gaussian_filter(impulse, [p / 8 for p in patch], 0, mode="constant")
    w /= w.max()
    w[w == 0] = w[w > 0].min()
    return w


def _windowed(vol, patch, step):
    """The sliding window written out: pad as pad_nd_image (the odd voxel above), loop over the tiles
    with the Gaussian weights of scipy's blurred impulse, crop the padding off."""
    need = np.maximum(np.array(patch) - vol.shape[1:], 0)
    x = np.pad(vol[0], [(n // 2, n - n // 2) for n in need])
    w = scipy_gaussian(patch)
    acc, norm = np.zeros((2, *x.shape)), np.zeros(x.shape)
    for z in tile_starts(x.shape[0], patch[0], step):
        for y in tile_starts(x.shape[1], patch[1], step):
            for xx in tile_starts(x.shape[2], patch[2], step):
                box = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(xx, xx + patch[2]))
                acc[0][box] += w * x[box]
                acc[1][box] += w * (x[box].mean() + np.arange(patch[0])[:, None, None])
                norm[box] += w
    crop = tuple(slice(n // 2, n // 2 + s) for n, s in zip(need, vol.shape[1:]))
    return (acc / norm)[(slice(None),) + crop]


@pytest.mark.parametrize("shape, patch", [((5, 9, 7), (4, 6, 4)), ((3, 5, 20), (8, 8, 8))])
def test_sliding_window_is_the_gaussian_weighted_mean_of_the_tiles(shape, patch):
    # the second volume is smaller than the patch on two axes, by odd amounts: padded, then cut back
    # (pad_nd_image's 5 slices along the first axis: 2 below, 3 above, so its 3 sit at tile indices 2-4)
    vol = np.random.default_rng(1).normal(size=(1, *shape)).astype(np.float32)
    out = sliding_window_logits(_PlusTileMean(), vol, patch, 0.5, device=torch.device("cpu"),
                                dtype=torch.float32, batch_size=3).numpy()
    np.testing.assert_allclose(out, _windowed(vol, patch, 0.5), rtol=1e-5, atol=1e-6)


def test_test_time_mirroring_averages_the_flipped_predictions():
    torch.manual_seed(0)
    conv = nn.Conv3d(1, 2, 3, padding=1)  # a random kernel: not symmetric under any flip
    conv.num_classes = 2
    vol = np.random.default_rng(5).normal(size=(1, 4, 6, 8)).astype(np.float32)
    x = torch.from_numpy(vol)[None]
    with torch.no_grad():  # one tile covers the volume: the weights cancel, the mean of 8 stays
        flips = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
        expected = sum(conv(x.flip(a)).flip(a) if a else conv(x) for a in flips)[0] / 8
        plain = conv(x)[0]
    got = sliding_window_logits(conv, vol, (4, 6, 8), 0.5, device=torch.device("cpu"), dtype=torch.float32,
                                mirror=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, plain, atol=1e-3)  # it did change the prediction
    proto = load_protocol("lightm_unet_3d")
    assert proto.eval.mirror is False and proto.with_overrides(mirror=True).eval.mirror is True
    with pytest.raises(BenchError, match="eval.mirror: test-time mirroring belongs to the sliding window of patch"):
        load_protocol("smoke").with_overrides(mirror=True)



class _AutocastProbe(nn.Module):
    """Logits of zeros; records, at each call, whether float16 autocast is on for CUDA; counts the tiles."""

    num_classes = 2

    def __init__(self):
        super().__init__()
        self.seen, self.tiles = [], 0

    def forward(self, x):
        self.seen.append(torch.is_autocast_enabled("cuda"))
        self.tiles += x.shape[0]
        return x.new_zeros((x.shape[0], 2, *x.shape[2:]))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_eval_autocast_runs_the_model_under_float16_autocast_on_cuda_only(device):
    """LightM-UNet's protocols predict as nnU-Net's predictor: under autocast on CUDA, in the
    protocol's dtype on a CPU; prediction stays unchanged where eval.autocast is off."""
    proto = load_protocol("lightm_unet_3d")
    assert proto.eval.autocast is True and load_protocol("drift_3d").eval.autocast is False
    vol = np.zeros((1, 4, 6, 8), np.float32)
    for on in (True, False):
        probe = _AutocastProbe().to(device)
        sliding_window_logits(probe, vol, (4, 6, 8), 0.5, device=torch.device(device), dtype=torch.float32,
                              mirror=True, autocast=on)
        assert probe.seen == [on and device == "cuda"] * 8  # the tile and its 7 flips
    with pytest.raises(BenchError, match="eval.autocast: expected true or false; got 'yes'"):
        proto.with_overrides(autocast="yes")


def test_a_patch_protocols_tile_step_and_mirroring_reach_the_sliding_window():
    """eval.tile_step and eval.mirror decide how a whole case is tiled: 16 voxels, tiles of 8 at step 0.5
    are ceil(8 / 4) + 1 = 3 starts per axis, 27 tiles; mirrored, each also predicted in its 7 flips."""
    from bench.evaluate import _window_logits  # the protocol-to-sliding-window step alone, without a prep

    proto = load_protocol("drift_3d").with_overrides(patch_size=(8, 8, 8))
    assert proto.eval.tile_step == 0.5 and proto.eval.mirror is False
    for mirror, tiles in ((False, 27), (True, 27 * 8)):
        probe = _AutocastProbe()
        out = _window_logits(probe, np.zeros((1, 16, 16, 16), np.float32), proto.with_overrides(mirror=mirror),
                             torch.device("cpu"))
        assert out.shape == (2, 16, 16, 16) and probe.tiles == tiles, (mirror, probe.tiles)

# --- end to end -----------------------------------------------------------------------------------


SPACINGS = [(3.0, 0.8, 0.8), (2.0, 0.8, 0.8), (3.0, 1.0, 1.0), (4.0, 0.7, 0.7), (2.5, 0.9, 0.9)]  # (z, y, x)


def respace(path: Path, spacing) -> None:
    """Rewrite a NIfTI file's voxel size, (z, y, x) in mm, keeping its voxels."""
    import nibabel as nib

    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), np.diag([*spacing[::-1], 1.0])), str(path))


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """Five CT-like cases in nnU-Net format, each with its own spacing (SPACINGS), so runs resample."""
    root = synthesize("nnunet", tmp_path_factory.mktemp("vol") / "data", dims=3, n_cases=5, depth=8, size=24)
    for case, spacing in zip(sorted(p.name[:-7] for p in (root / "labelsTr").glob("*.nii.gz")), SPACINGS):
        respace(root / "labelsTr" / f"{case}.nii.gz", spacing)
        respace(root / "imagesTr" / f"{case}_0000.nii.gz", spacing)
    return root


FAST3D = ["--tiny", "--max-iterations", "2", "--patch-size", "8,16,16", "--threads", "1", "--no-progress"]


def _without(args: list[str], option: str) -> list[str]:
    """``args`` without ``option`` and its value: given again after them (bench refuses an option twice)."""
    i = args.index(option)
    return args[:i] + args[i + 2:]


def test_lightm_unet_3d_run_trains_on_patches_and_scores_whole_volumes(volumes, tmp_path):
    res = tmp_path / "res"
    _bench("run", "--models", "lightm_unet", "--dataset", "nnunet", "--data-root", volumes, "--protocol",
           "lightm_unet_3d", "--results", res, *_without(FAST3D, "--max-iterations"), "--max-iterations", "1")
    # 2 of the 4 volumes drawn
    (path,) = sorted((res / "records").glob("*.json"))
    rec = json.loads(path.read_text(encoding="utf-8"))
    assert rec["model_config"]["spatial_dims"] == 3 and rec["cost"]["input_shape"] == "1x1x8x16x16"
    assert rec["cost"]["scan_macs"] > 0 and rec["train"]["iterations"] == 1
    # every training volume preprocessed into the cache before training, not only those drawn
    n_train = len(open_dataset("nnunet", volumes).train_volume_ids())
    assert len(list((res / "cache" / "volumes").rglob("*.image.npy"))) == n_train > 2
    assert rec["n_train"] == n_train  # whole cases, not their slices
    assert rec["protocol"]["overrides"]["patch_size"] == [8, 16, 16]
    ds = open_dataset("nnunet", volumes)
    assert rec["intensity_stats"] == foreground_statistics(ds.train_cases(), ds.n_train_cases)
    # resampled to the median spacing of the training cases (8 slices of 2-4 mm: no axis with few voxels)
    train = [SPACINGS[ds.cases.index(c)] for c in ds.train_volume_ids()]
    assert rec["target_spacing"] == pytest.approx(list(np.median(train, axis=0)))
    cached = [np.load(p, mmap_mode="r").shape for p in sorted((res / "cache" / "volumes").rglob("*.image.npy"))]
    assert {tuple(shape[1:]) for shape in cached} != {(8, 24, 24)}  # training grids changed
    (case,) = ds.test_ids()
    native = ds.load_test(case).label.shape
    assert new_shape(native, ds.load_test(case).spacing, rec["target_spacing"]) != native  # predicted resampled
    assert {c["case"] for c in rec["per_case"]} == {case}
    assert {c["tp"] + c["fp"] + c["fn"] + c["tn"] for c in rec["per_case"]} == {int(np.prod(native))}
    # the written prediction is the scored one, with the label file's geometry
    out = tmp_path / "pred"
    _bench("predict", "--results", res, "--out", out)
    import nibabel as nib

    (written,) = sorted(out.rglob(f"{case}.nii.gz"))
    pred = np.asarray(nib.load(str(written)).dataobj).transpose(2, 1, 0)
    gt = ds.load_test(case).label
    organ = [c for c in rec["per_case"] if c["class"] == 1][0]
    assert pred.shape == native and int(((pred == 1) & (gt == 1)).sum()) == organ["tp"]
    # a rescore normalises with the statistics the run trained with, not ones drawn from the data now
    from bench.rescore import run_model

    altered = {**rec, "intensity_stats": [{**rec["intensity_stats"][0], "mean": 123.0}]}
    assert run_model(altered, res)[1].foreground_stats[0]["mean"] == 123.0
    assert run_model({**rec, "target_spacing": [9.0, 9.0, 9.0]}, res)[1].target_spacing == [9.0, 9.0, 9.0]
    # rescoring rebuilds the 3-D model from the record and predicts the same volume again
    _bench("rescore", "--results", res, "--policy", "legacy-synapse")
    twin = json.loads((res / "records" / f"{rec['run_id']}.legacy-synapse.json").read_text(encoding="utf-8"))
    assert [c["tp"] for c in twin["per_case"]] == [c["tp"] for c in rec["per_case"]]
    assert records.load(res)["dice"].notna().all()


@pytest.mark.parametrize("args, phrase", [
    (["--models", "unet"], "unet is a 2-D model; protocol 'lightm_unet_3d' trains 3-D patches"),
    (["--models", "all"], f"{', '.join(m for m in list_models() if m != 'lightm_unet')} are 2-D models; protocol "
                          "'lightm_unet_3d' trains 3-D patches (patch_size [8, 16, 16]). Models with a 3-D variant: "
                          "lightm_unet"),
    (["--models", "lightm_unet", "--patch-size", "8,12,16"], "not multiples of 8"),
    (["--models", "lightm_unet", "--patch-size", "8,16,20"], "use e.g. [8, 16, 24]"),
    (["--models", "lightm_unet", "--img-size", "32"], "sizes its input with patch_size [128, 128, 128]; change that with --patch-size"),
    (["--models", "lightm_unet", "--set", "spatial_dims=2"], "spatial_dims=2 does not fit"),
    (["--models", "lightm_unet", "--target-spacing", "1,2"], "target_spacing (--target-spacing): expected 3 spacings"),
    (["--models", "lightm_unet", "--patch-size", "16,16"], "trains 3-D patches [128, 128, 128]; give 3 sides"),
    (["--models", "lightm_unet", "--target-spacing", "1,x,2"], "--target-spacing must be 'native', 'nnunet' or"),
])
def test_3d_runs_refuse_what_cannot_work_before_training(volumes, tmp_path, args, phrase, bench_here):
    res = tmp_path / "res"
    base = ["run", "--dataset", "nnunet", "--data-root", volumes, "--protocol", "lightm_unet_3d", "--results", res,
            "--tiny", "--max-iterations", "1", "--no-progress"]
    if "--patch-size" not in args and "--img-size" not in args:
        base += ["--patch-size", "8,16,16"]
    proc = bench_here(*base, *args, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and phrase in proc.stderr, proc.stderr
    assert not (res / "runs").exists()


def test_weights_a_3d_protocol_cannot_evaluate_are_refused_in_an_evaluations_words(volumes, tmp_path, bench_here):
    """--weights trains nothing: a 2-D model's weights, or 2-D data, under a 3-D protocol are refused for
    what the protocol evaluates, not for the patches it would train on."""
    given = tmp_path / "w.pth"
    torch.save({}, given)
    base = ["run", "--dataset", "nnunet", "--protocol", "lightm_unet_3d", "--results", tmp_path / "r", "--tiny",
            "--weights", given, "--no-progress"]
    proc = bench_here(*base, "--models", "unet", "--data-root", volumes, check=False)
    assert proc.returncode == 2 and "unet is a 2-D model; protocol 'lightm_unet_3d' evaluates a 3-D model over 3-D " \
        "patches (patch_size [128, 128, 128]), which 2-D weights do not fit; a 2-D protocol" in proc.stderr, proc.stderr
    png = synthesize("nnunet", tmp_path / "png", dims=2, n_cases=4, size=24)
    proc = bench_here(*base, "--models", "lightm_unet", "--data-root", png, check=False)
    assert proc.returncode == 2 and "'lightm_unet_3d' evaluates 3-D volumes, and this data holds 2-D" in proc.stderr
    assert "trains" not in proc.stderr and not (tmp_path / "r" / "runs").exists()


def test_ct_foreground_on_a_reader_without_training_cases_fails_at_planning(tmp_path):
    from bench.data import synthetic_root
    from bench.run import plan_grid

    proto = load_protocol("smoke").with_overrides(normalize="ct_foreground")
    with pytest.raises(BenchError, match="takes its statistics from whole training cases in nnU-Net format"):
        plan_grid(models=["unet"], dataset="synapse", protocol=proto, seeds=[0],
                  data_root=synthetic_root("synapse", tmp_path), synthetic=False, results_dir=tmp_path / "r")
    assert not (tmp_path / "r" / "runs").exists()


def test_3d_protocol_refuses_slice_data_and_2d_protocol_refuses_a_patch(tmp_path, bench_here):
    png = synthesize("nnunet", tmp_path / "png", dims=2, n_cases=4, size=24)
    proc = bench_here("run", "--models", "lightm_unet", "--dataset", "nnunet", "--data-root", png, "--protocol",
                      "lightm_unet_3d", "--results", tmp_path / "r", "--tiny", "--patch-size", "8,16,16", check=False)
    assert proc.returncode == 2 and "trains 3-D patches, and this data holds 2-D images" in proc.stderr
    proc = bench_here("run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--protocol", "smoke",
                      "--results", tmp_path / "r", "--patch-size", "8,16,16", check=False)
    assert proc.returncode == 2 and "protocol 'smoke' zooms whole images to img_size (--img-size)" in proc.stderr
    proc = bench_here("run", "--models", "unet", "--dataset", "synapse", "--synthetic", "--protocol", "smoke",
                      "--results", tmp_path / "r", "--target-spacing", "nnunet", check=False)
    assert proc.returncode == 2 and "resampling to a spacing belongs to patch protocols" in proc.stderr


def test_3d_zscore_on_volumes_with_zero_background_normalises_inside_the_non_zero_region(tmp_path):
    # MRI-like: each case's head sits in a zero background that cropping removes (over a quarter of
    # the volume), so nnU-Net z-scores inside the non-zero region; the run records that, its rescore
    # preprocesses the same way, and the target spacing's voxel rule sees the cropped shapes
    import nibabel as nib

    from bench.data.preprocess import nonzero_box
    from bench.data.resample import nnunet_target_spacing

    root = synthesize("nnunet", tmp_path / "mri", dims=3, n_cases=5, depth=8, size=24)
    for path in sorted((root / "imagesTr").glob("*.nii.gz")):
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)  # (x, y, z)
        head = np.zeros_like(data)
        head[3:21, 2:22, 1:7] = data[3:21, 2:22, 1:7] + 2000.0  # positive inside, 0 around
        nib.save(nib.Nifti1Image(head, img.affine), str(path))
    ds = open_dataset("nnunet", root)
    proto = load_protocol("lightm_unet_3d").with_overrides(normalize="zscore", patch_size=[8, 16, 16])
    prep = volume_prep(ds, proto)
    assert prep.mask_norm and ds.mask_norm is True and prep.stats is None
    from bench.data.torch_dataset import TrainDataset

    assert TrainDataset(ds, proto, seed=0).transform.mask_outside  # nnU-Net's MaskTransform after augmentation
    cropped = [nonzero_box(image)[0] for image, _ in ds.train_cases()]
    assert {tuple(s.stop - s.start for s in box) for box in cropped} == {(6, 20, 18)}
    spacings = [g[1] for g in ds.train_geometry()]
    assert ds.target_spacing == nnunet_target_spacing(spacings, [(6, 20, 18)] * len(spacings))
    ct = open_dataset("nnunet", synthesize("nnunet", tmp_path / "ct", dims=3, n_cases=5, depth=8, size=24))
    assert not volume_prep(ct, proto).mask_norm  # CT-like air is not 0: nothing cropped away
    path = tmp_path / "zscore3d.toml"
    text = (PROTOCOLS / "lightm_unet_3d.toml").read_text(encoding="utf-8")
    path.write_text(text.replace('name = "lightm_unet_3d"', 'name = "zscore3d"')
                    .replace('normalize = "ct_foreground"', 'normalize = "zscore"'), encoding="utf-8")
    res = tmp_path / "res"
    _bench("run", "--models", "lightm_unet", "--dataset", "nnunet", "--data-root", root, "--protocol", path,
           "--results", res, *FAST3D)
    (rec_path,) = sorted((res / "records").glob("*.json"))
    rec = json.loads(rec_path.read_text(encoding="utf-8"))
    assert rec["mask_norm"] is True and rec["intensity_stats"] is None
    from bench.rescore import run_model

    assert run_model({**rec, "mask_norm": False}, res, path)[1].mask_norm is False  # the record's, not redrawn
    assert {c["tp"] + c["fp"] + c["fn"] + c["tn"] for c in rec["per_case"]} == {8 * 24 * 24}
    _bench("rescore", "--results", res, "--policy", "legacy-synapse", "--protocol", path)
    twin = json.loads((res / "records" / f"{rec['run_id']}.legacy-synapse.json").read_text(encoding="utf-8"))
    assert [c["tp"] for c in twin["per_case"]] == [c["tp"] for c in rec["per_case"]]


def test_verify_notes_the_spacings_and_the_target_spacing(volumes):
    from bench.data.verify import dataset_notes

    ds = open_dataset("nnunet", volumes)
    train = np.array([SPACINGS[ds.cases.index(c)] for c in ds.train_volume_ids()])
    notes = dataset_notes("nnunet", volumes)
    note = notes[-1]
    # the synthetic data says so first, then which split the reader made (the runs print it too)
    assert len(notes) == 2 + bool(synthetic_identity(volumes))
    assert notes[-2] == ds.notes[0]

    def mm(values) -> str:
        return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"

    median = mm(np.median(train, 0))
    assert f"voxel spacing of the {len(train)} training volumes (z, y, x) in mm: median {median}" in note
    assert f"resamples them to {median} (nnU-Net's 3d_fullres rule" in note  # no axis much coarser here
    in_plane = mm(np.median(train, 0)[1:])
    assert f"lightm_unet_2d resamples them in-plane to {in_plane}, each keeping its slice spacing" in note
    assert f"from {mm(train.min(0))} to {mm(train.max(0))}" in note
    png = synthesize("nnunet", volumes.parent / "png", dims=2, n_cases=4, size=16)
    # 2-D: no spacing note; no split file: the rule that drew the split
    assert [n.split(" ")[:2] for n in dataset_notes("nnunet", png)] == [["synthetic", "data,"], ["no", "splits_final.json"]]


def test_datasets_with_the_same_case_names_keep_their_own_cached_cases(tmp_path):
    # two datasets whose cases share names (synth_000, ...) in one results folder: neither takes the
    # other's files for stale ones, so neither preprocesses again; files of the older layout (directly
    # in volumes/) of a case are removed when it is cached anew
    first = open_dataset("nnunet", synthesize("nnunet", tmp_path / "a", dims=3, n_cases=3, depth=8, size=16))
    second = open_dataset("nnunet", synthesize("nnunet", tmp_path / "b", dims=3, n_cases=3, depth=8, size=16, seed=1))
    for ds in (first, second):
        ds.volume_cache = tmp_path / "cache"
    prep = VolumePrep("zscore")
    case = first.train_volume_ids()[0]
    assert case in second.train_volume_ids() and first.volume_folder != second.volume_folder
    old = tmp_path / "cache" / "volumes" / f"{case}.{'0' * 16}.{prep.key}.image.npy"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"")
    a = first.load_train_volume(case, prep).image
    written = {p: p.stat().st_mtime_ns for p in first.volume_folder.iterdir()}
    assert not old.exists() and len(written) == 2
    b = second.load_train_volume(case, prep).image
    assert not np.array_equal(a, b)  # other data, other files
    assert first.load_train_volume(case, prep).image.filename == a.filename
    assert {p: p.stat().st_mtime_ns for p in first.volume_folder.iterdir()} == written  # still there, untouched
