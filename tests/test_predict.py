"""`bench predict`: the written label maps are what each run was scored on (re-scoring the files
gives the record's per-case numbers), in the data's own format, and a killed predict resumes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from bench import metrics, records
from bench.data import open_dataset, synthesize
from bench.errors import BenchError
from bench.predict import MANIFEST, plan_predict, predict_run
from bench.protocol import load_protocol
from bench.registry import get_entry
from bench.rescore import rescore_record
from bench.run import plan_grid, run_one
from tests.fixtures import make_record

CPU = torch.device("cpu")


def _train(dataset, root, results, policy=None):
    proto = load_protocol("smoke").with_overrides(img_size=32, max_iterations=3, max_cases=2)
    (spec,) = plan_grid(models=["unet"], dataset=dataset, protocol=proto, seeds=[0], data_root=root,
                        synthetic=False, results_dir=results, policy=policy,
                        model_overrides=dict(get_entry("unet").tiny))
    return run_one(spec, results_dir=results, device=CPU)


def _rescored(rec, preds, dataset):
    """The record's per-case rows recomputed from the written predictions."""
    rows = []
    for case_id in sorted({r["case"] for r in rec["per_case"]}):
        case = dataset.load_test(case_id)
        gt = (case.label >= 0.5).astype(np.uint8) if dataset.binary else case.label
        spacing = None if dataset.binary else case.spacing
        rows += [{"case": case_id, **r} for r in metrics.score_case(preds[case_id], gt, dataset.num_classes,
                                                                     rec["policy"], spacing=spacing,
                                                                     class_names=dataset.class_names)]
    return rows


def _same_rows(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in ("case", "class", "tp", "fp", "fn", "tn", "dice", "hd95"):
            assert x[key] == y[key] or (x[key] != x[key] and y[key] != y[key]), (key, x, y)


def test_nnunet_volumes_are_written_as_nnunet_does(tmp_path):
    root = synthesize("nnunet", tmp_path / "data", n_cases=5, depth=6, size=24)
    rec = _train("nnunet", root, tmp_path / "res")
    folder, written = predict_run(rec, tmp_path / "res", tmp_path / "out", CPU)
    ds = open_dataset("nnunet", root)
    files = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
    assert written == len(files) == len(ds.test_ids()) and set(files.values()) == {f"{c}.nii.gz" for c in files}
    preds = {}
    for case_id, name in files.items():
        img, ref = nib.load(folder / name), nib.load(root / "labelsTr" / f"{case_id}.nii.gz")
        assert np.allclose(img.affine, ref.affine) and img.shape == ref.shape  # the label file's geometry
        assert img.get_data_dtype() == np.uint8
        preds[case_id] = np.asarray(img.dataobj).transpose(2, 1, 0).astype(np.int64)  # (x, y, z) -> (D, H, W)
    _same_rows(_rescored(rec, preds, ds), rec["per_case"])

    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(folder / name).st_mode & 0o777 == 0o666 & ~umask  # readable as any written file, not 0600

    # a killed predict resumes: files already there are kept, a missing one is written again, and
    # the temp file it was writing (named with the real ending, which other tools would pick up) goes
    # (its name says which process wrote it: one still running, a second predict into the same folder,
    # keeps its file; the first predict deleted it under the other's feet)
    import subprocess
    import sys
    import time

    from bench.fileio import TEMP_MARK, writer_tag

    first = sorted(files.values())[0]
    stamp = {n: os.stat(folder / n).st_mtime_ns for n in files.values()}
    (folder / first).unlink()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          encoding="utf-8")
    (folder / f".{first}.{TEMP_MARK}{writer_tag(int(gone.stdout))}k1ll3d.tmp.nii.gz").write_bytes(b"half")
    live = folder / f".{first}.{TEMP_MARK}{writer_tag()}wr1t1ng.tmp.nii.gz"
    live.write_bytes(b"being written")
    older = folder / f".{first}.k1ll3d00.tmp.nii.gz"  # an older version's name (no TEMP_MARK), a day old: goes
    theirs = folder / ".notes.tmp"  # not a name bench writes, as old: stays
    for path in (older, theirs):
        path.write_bytes(b"x")
        os.utime(path, (time.time() - 2 * 86400,) * 2)
    assert predict_run(rec, tmp_path / "res", tmp_path / "out", CPU)[1] == 1
    assert all(os.stat(folder / n).st_mtime_ns == stamp[n] for n in files.values() if n != first)
    assert sorted(p for p in folder.iterdir() if p.name.startswith(".")) == sorted([live, theirs])  # dead writers' went
    live.unlink()
    theirs.unlink()
    assert json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["complete"] is True
    text = (folder / MANIFEST).read_text(encoding="utf-8")
    (folder / MANIFEST).write_text(text[: len(text) // 2], encoding="utf-8")  # cut short
    with pytest.raises(BenchError, match=rf"{MANIFEST}: not readable JSON \(cut short\?\); delete .* and predict again"):
        predict_run(rec, tmp_path / "res", tmp_path / "out", CPU)
    (folder / MANIFEST).write_text(text, encoding="utf-8")

    # files of other weights are never mixed in: the manifest names the weights they came from
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    (folder / MANIFEST).write_text(json.dumps({**manifest, "weights_sha256": "0" * 64}), encoding="utf-8")
    with pytest.raises(BenchError, match="holds predictions of other weights .* delete it or choose another --out"):
        predict_run(rec, tmp_path / "res", tmp_path / "out", CPU)
    (folder / MANIFEST).unlink()
    with pytest.raises(BenchError, match=f"holds files but no {MANIFEST}"):
        predict_run(rec, tmp_path / "res", tmp_path / "out", CPU)


def test_2d_nnunet_cases_become_pngs_of_class_ids(tmp_path):
    root = synthesize("nnunet", tmp_path / "data", dims=2, n_cases=5, size=32)
    rec = _train("nnunet", root, tmp_path / "res")
    folder, _ = predict_run(rec, tmp_path / "res", tmp_path / "out", CPU)
    ds = open_dataset("nnunet", root)
    preds = {c: np.asarray(Image.open(folder / f"{c}.png")).astype(np.int64) for c in ds.test_ids()}
    _same_rows(_rescored(rec, preds, ds), rec["per_case"])
    # --native-size concerns masks scored at model resolution: here it is said to change nothing
    with pytest.warns(UserWarning, match="--native-size changes nothing here: nnunet predictions are on each case's"):
        predict_run(rec, tmp_path / "res", tmp_path / "native", CPU, native_size=True)


def test_synapse_volumes_become_nifti_with_their_spacing(tmp_path):
    root = synthesize("synapse", tmp_path / "data", n_train=2, n_test=2, depth=4, size=32)
    rec = _train("synapse", root, tmp_path / "res", policy="strict")
    folder, _ = predict_run(rec, tmp_path / "res", tmp_path / "out", CPU)
    ds = open_dataset("synapse", root)
    preds = {}
    for case_id in ds.test_ids()[:2]:
        img = nib.load(folder / f"{case_id}.nii.gz")
        spacing = ds.load_test(case_id).spacing or (1.0, 1.0, 1.0)
        assert np.allclose(img.header.get_zooms(), spacing[::-1])
        preds[case_id] = np.asarray(img.dataobj).transpose(2, 1, 0).astype(np.int64)
    _same_rows(_rescored(rec, preds, ds), rec["per_case"])
    assert "spacing_unknown" not in json.loads((folder / MANIFEST).read_text(encoding="utf-8"))


def test_a_case_name_that_leaves_the_output_folder_is_refused_before_any_file_is_written(tmp_path, monkeypatch):
    # the readers refuse such ids; this guard holds for any dataset whose case ids would name a path
    from bench.data.synapse import SynapseDataset

    root = synthesize("synapse", tmp_path / "data", n_train=2, n_test=2, depth=4, size=32)
    rec = _train("synapse", root, tmp_path / "res")
    monkeypatch.setattr(SynapseDataset, "prediction_name", lambda self, case_id: f"../{case_id}.nii.gz")
    with pytest.raises(BenchError, match=r"would be written outside .*out.*; expected case ids that are plain"):
        predict_run(rec, tmp_path / "res", tmp_path / "out", CPU)
    assert not list((tmp_path / "out").glob("*.nii.gz")) and not (tmp_path / "out" / rec["run_id"]).exists()


def test_volumes_without_a_known_spacing_are_written_in_voxels_and_said_so(tmp_path):
    import h5py

    root = synthesize("synapse", tmp_path / "data", n_train=2, n_test=2, depth=4, size=32)
    ids = open_dataset("synapse", root).test_ids()
    for case_id in ids[:1]:  # as the real files: no spacing attribute; the second keeps its own
        with h5py.File(root / "test_vol_h5" / f"{case_id}.npy.h5", "r+") as f:
            del f.attrs["spacing"]
    rec = _train("synapse", root, tmp_path / "res")
    said = rf"{rec['run_id']}: 1 of 2 predicted volumes have no known spacing \(first: {ids[0]}; all named in"
    with pytest.warns(UserWarning, match=said + r" prediction.json\); written with 1 mm voxels"):
        folder, _ = predict_run(rec, tmp_path / "res", tmp_path / "out", CPU)
    zooms = {f.name: nib.load(f).header.get_zooms() for f in folder.glob("*.nii.gz")}
    assert [n for n, z in sorted(zooms.items()) if z == (1.0, 1.0, 1.0)] == [f"{ids[0]}.nii.gz"]
    assert json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["spacing_unknown"] == ids[:1]
    # a resume that writes only the second volume still names the first, in its warning and its manifest
    (folder / f"{ids[1]}.nii.gz").unlink()
    with pytest.warns(UserWarning, match=said):
        assert predict_run(rec, tmp_path / "res", tmp_path / "out", CPU)[1] == 1
    assert json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["spacing_unknown"] == ids[:1]


def test_binary_masks_are_0_255_pngs_at_model_resolution_in_test_set_folders(tmp_path):
    root = synthesize("polyp", tmp_path / "data")
    rec = _train("polyp", root, tmp_path / "res")
    folder, _ = predict_run(rec, tmp_path / "res", tmp_path / "out", CPU)
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["grid"] == "model input 32x32" and manifest["classes"]["255"]
    ds = open_dataset("polyp", root)
    preds = {}
    for case_id in ds.test_ids()[:2]:
        assert "/" in case_id  # <test set>/<image>: a subfolder per test set
        mask = np.asarray(Image.open(folder / f"{case_id}.png"))
        assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255}
        preds[case_id] = (mask // 255).astype(np.uint8)
    # a case file emptied since (0 bytes) is written again, not kept as done
    first = folder / f"{ds.test_ids()[0]}.png"
    whole = first.read_bytes()
    first.write_bytes(b"")
    assert predict_run(rec, tmp_path / "res", tmp_path / "out", CPU)[1] == 1 and first.read_bytes() == whole
    # scored at model resolution: the ground truth is the resized mask, as in evaluation
    from bench.transforms import prepare_binary_pair

    proto = load_protocol("smoke").with_overrides(img_size=32)
    for row, case_id in zip(rec["per_case"], sorted(preds)):
        case = ds.load_test(case_id)
        gt = prepare_binary_pair(case.image, case.label, proto)[1] >= 0.5
        p = preds[case_id].astype(bool)
        assert (row["tp"], row["fp"], row["fn"]) == (int((p & gt).sum()), int((p & ~gt).sum()), int((~p & gt).sum()))
    # --native-size: each image's own size, from the probabilities resized with torch's bilinear (half-pixel
    # centres), then thresholded: what ISIC's challenge and the polyp toolboxes take
    from bench.rescore import run_model

    with pytest.raises(BenchError, match=r"holds predictions on another grid \(model input 32x32; asked: native"):
        predict_run(rec, tmp_path / "res", tmp_path / "out", CPU, native_size=True)  # never two sizes in one folder
    # two predicts into one folder at once (a concurrency journey: one with --native-size left 27 of 300 masks
    # at the other size in a folder its manifest called complete): the second is refused while the first writes
    from bench.claim import claim_folder

    with claim_folder(tmp_path / "native" / rec["run_id"]):
        with pytest.raises(BenchError, match=rf"{rec['run_id']}: being written by pid {os.getpid()} on .*; wait for it, "
                                             "or choose another --out"):
            predict_run(rec, tmp_path / "res", tmp_path / "native", CPU, native_size=True)
    native, _ = predict_run(rec, tmp_path / "res", tmp_path / "native", CPU, native_size=True)
    assert json.loads((native / MANIFEST).read_text(encoding="utf-8"))["grid"].startswith(
        "native (probabilities resized bilinearly")
    assert not (native / ".claim").exists()
    model = run_model(rec, tmp_path / "res")[0].eval()
    for case_id in ds.test_ids()[:2]:
        case = ds.load_test(case_id)
        x = prepare_binary_pair(case.image, case.label, proto)[0]
        with torch.no_grad():
            prob = torch.nn.functional.interpolate(model(x[None]).sigmoid(), size=case.label.shape, mode="bilinear",
                                                   align_corners=False)[0, 0].numpy()
        mask = np.asarray(Image.open(native / f"{case_id}.png"))
        assert mask.shape == case.label.shape == case.image.shape[:2] != (32, 32)
        assert np.array_equal(mask == 255, prob >= 0.5)


class _Constant(torch.nn.Module):
    """One-class logits of a constant ``value`` everywhere: a foreground probability of sigmoid(value)."""

    num_classes = 1

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full((x.shape[0], 1, *x.shape[2:]), self.value, dtype=x.dtype)


def test_a_binary_ground_truth_or_probability_of_exactly_half_is_foreground():
    """Guards against > 0.5: the resized mask's 0.5 pixels lost from the lesion, and predictions of exactly
    the threshold lost from the prediction (VM-UNet: gts >= 0.5, preds >= threshold)."""
    from bench.data.base import Case
    from bench.evaluate import predict_case

    proto = load_protocol("isic17")  # 256²
    mask = np.zeros((512, 512), np.float32)
    mask[:, 0::2] = 1.0  # 512 -> 256 bilinear reads midway between a 1 and a 0 column: every pixel 0.5
    image = np.random.default_rng(0).integers(0, 256, (512, 512, 3)).astype(np.uint8)
    pred, gt = predict_case(_Constant(0.0), Case("img", image, mask), proto, binary=True, device=CPU)
    # VM-UNet's test transform: torch's bilinear resize (half-pixel centres), then gts >= 0.5
    ref = torch.nn.functional.interpolate(torch.from_numpy(mask)[None, None], size=(256, 256), mode="bilinear",
                                          align_corners=False)[0, 0].numpy()
    assert (ref == 0.5).all()
    np.testing.assert_array_equal(gt, (ref >= 0.5).astype(np.uint8))
    assert pred.shape == (256, 256) and (pred == 1).all()  # a logit of 0: a probability of exactly 0.5
    # --native-size: the mask as it is, foreground where >= 0.5 too
    small = Case("img", image[:2, :2], np.array([[0.0, 0.5], [0.49, 1.0]], np.float32))
    _, gt = predict_case(_Constant(0.0), small, proto, binary=True, device=CPU, native=True)
    np.testing.assert_array_equal(gt, [[0, 1], [0, 1]])


def test_the_protocols_threshold_decides_foreground():
    """eval.threshold (a protocol of one's own may set 0.7): a probability of 0.6 is background at 0.7 and
    foreground at the default 0.5, at model resolution and at native size alike."""
    from bench.data.base import Case
    from bench.evaluate import predict_case

    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3)).astype(np.uint8)
    case = Case("img", image, np.zeros((40, 60), np.float32))
    for threshold, want in ((0.7, 0), (0.5, 1)):
        proto = load_protocol("isic17").with_overrides(threshold=threshold)
        for native, shape in ((False, (256, 256)), (True, (40, 60))):
            pred, _ = predict_case(_Constant(np.log(0.6 / 0.4)), case, proto, binary=True, device=CPU, native=native)
            assert pred.shape == shape and (pred == want).all(), (threshold, native)


def _sign_model():
    """Three classes: 0 where the input is negative, 2 where positive, 1 nowhere (its logit -10)."""
    from bench.modeling import SegmentationModel

    class Sign(SegmentationModel):
        num_classes, in_chans = 3, 1

        def forward_logits(self, x):
            return torch.cat([-x, torch.full_like(x, -10.0), x], dim=1)

    return Sign()


def test_label_maps_go_back_to_non_square_slices_by_nearest_neighbour():
    """TransUNet's test_single_volume: each slice's label map zoomed back to its (H, W) with order 0, so
    no class appears that the model did not predict (an interpolating zoom puts 1 between 0 and 2)."""
    from bench.data.base import Case
    from bench.evaluate import predict_case

    proto = load_protocol("smoke").with_overrides(img_size=32)  # no normalisation
    image = np.ones((2, 40, 64), np.float32)
    image[:, :, :32] = -1.0
    pred, gt = predict_case(_sign_model(), Case("c", image, np.zeros((2, 40, 64), np.int64)), proto, binary=False,
                            device=CPU)
    assert pred.shape == gt.shape == (2, 40, 64) and set(np.unique(pred)) == {0, 2}
    assert (pred[:, :, :30] == 0).all() and (pred[:, :, 34:] == 2).all()


def test_whole_slices_are_normalised_with_the_training_foregrounds_statistics():
    """normalize = "ct_foreground" on slices: each slice clipped and standardised with the statistics of
    the training foreground, (clip(x, 0, 10) - 5) / 1 here, so 2 is negative and 8 positive."""
    from bench.data.base import Case
    from bench.evaluate import predict_case

    proto = load_protocol("smoke").with_overrides(img_size=32, normalize="ct_foreground")
    stats = [{"percentile_00_5": 0.0, "percentile_99_5": 10.0, "mean": 5.0, "std": 1.0}]
    image = np.full((2, 32, 32), 8.0, np.float32)
    image[:, :, :16] = 2.0
    pred, _ = predict_case(_sign_model(), Case("c", image, np.zeros((2, 32, 32), np.int64)), proto, binary=False,
                           device=CPU, stats=stats)
    assert (pred[:, :, :16] == 0).all() and (pred[:, :, 16:] == 2).all()


def test_predict_refuses_what_it_cannot_reproduce(tmp_path):
    root = synthesize("nnunet", tmp_path / "data", dims=2, n_cases=5, size=32)
    rec = _train("nnunet", root, tmp_path / "res")
    assert [r["run_id"] for r in plan_predict(tmp_path / "res")] == [rec["run_id"]]
    with pytest.raises(BenchError, match=r"--models vmunet: no runs of it in .* \(there: unet\)"):
        plan_predict(tmp_path / "res", models=["vmunet"])  # it was an empty plan: "0 run(s)", exit 0
    with pytest.raises(BenchError, match="--run nope: no finished run of that id"):
        plan_predict(tmp_path / "res", run_ids=["nope"])
    other = make_record("vmunet", run_id="other-vmunet-run")  # a record is all planning reads
    records.write_record(other, tmp_path / "res")
    with pytest.raises(BenchError, match=f"--run {rec['run_id']}: no finished run of --models vmunet of that id"):
        plan_predict(tmp_path / "res", models=["vmunet"], run_ids=[rec["run_id"]])
    records.record_path(tmp_path / "res", "other-vmunet-run").unlink()
    rescore_record(rec, "legacy-synapse", tmp_path / "res", CPU)  # same weights: its id stands for the run
    assert [r["run_id"] for r in plan_predict(tmp_path / "res", run_ids=[f"{rec['run_id']}.legacy-synapse"])] == \
        [rec["run_id"]]
    records.record_path(tmp_path / "res", rec["run_id"]).unlink()  # said as bench report says it, not "no run"
    with pytest.raises(BenchError, match=rf"--run {rec['run_id']}\.legacy-synapse: run {rec['run_id']}: its record "
                                         r".* is missing \(deleted\?\); its rescore under legacy-synapse remains"):
        plan_predict(tmp_path / "res", run_ids=[f"{rec['run_id']}.legacy-synapse"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match="empty: no finished runs; pass the --results folder that `bench run` wrote"):
        plan_predict(tmp_path / "empty")
    shutil.rmtree(tmp_path / "res" / "runs" / rec["run_id"] / "checkpoints")
    with pytest.raises(BenchError, match=r"final.pt: not found; run .* can only be predicted from its run directory "
                                         rf"\(its weights were deleted, or not copied with the records; `bench run` of "
                                         rf"its grid trains it again once records/{rec['run_id']}.json is removed\)"):
        predict_run(rec, tmp_path / "res", tmp_path / "out", CPU)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_label_maps_keep_one_integer_type_per_dataset(tmp_path):
    from bench.data.base import write_nifti_labels, write_png_labels
    from bench.data.nnunet import read_nifti, read_png

    many = np.array([[0, 300], [299, 1]])  # a dataset of 301 classes needs 16 bits, in every file
    for ending in (".png", ".tif"):
        write_png_labels(many, tmp_path / f"m{ending}", 301)
        assert np.array_equal(read_png(tmp_path / f"m{ending}", label=True), many)
    write_png_labels(np.array([[0, 1]]), tmp_path / "few.png", 301)
    assert np.asarray(Image.open(tmp_path / "few.png")).dtype == np.uint16  # not 8 bits for a case with low ids
    with pytest.raises(BenchError, match="BMP holds no 16-bit label maps"):
        write_png_labels(many, tmp_path / "m.bmp", 301)
    # a source header with a float type and scaling (CT images often have one) must not rescale the ids
    src = nib.Nifti1Image(np.zeros((4, 3, 2), np.float32), np.diag([0.7, 0.8, 2.5, 1.0]))
    src.header.set_slope_inter(2.0, -1024.0)
    labels = np.arange(24).reshape(2, 3, 4) % 9
    write_nifti_labels(labels, tmp_path / "v.nii.gz", 9, src.affine, src.header.copy())
    back, spacing = read_nifti(tmp_path / "v.nii.gz", label=True)
    assert np.array_equal(back, labels) and spacing == (2.5, 0.8, 0.7)
    assert nib.load(tmp_path / "v.nii.gz").get_data_dtype() == np.uint8


def test_patch_runs_predict_in_the_pipeline_the_same_files(tmp_path, monkeypatch):
    """On a GPU, threads load the next cases and write the predicted ones while the model predicts;
    the files are those of one case after another, and a resumed predict writes only what is missing."""
    import bench.evaluate

    root = synthesize("nnunet", tmp_path / "data", dims=3, n_cases=10, depth=8, size=24)
    proto = load_protocol("drift_3d").with_overrides(max_iterations=2, max_cases=0)
    (spec,) = plan_grid(models=["lightm_unet"], dataset="nnunet", protocol=proto, seeds=[0], data_root=root,
                        synthetic=False, results_dir=tmp_path / "res", model_overrides=dict(get_entry("lightm_unet").tiny))
    rec = run_one(spec, results_dir=tmp_path / "res", device=CPU)
    one, n_one = predict_run(rec, tmp_path / "res", tmp_path / "one", CPU, workers=0)
    piped_cases = []
    pipelined = bench.evaluate._pipelined
    monkeypatch.setattr(bench.evaluate, "_pipelined", lambda ids, *a: piped_cases.extend(ids) or pipelined(ids, *a))
    piped, n_piped = predict_run(rec, tmp_path / "res", tmp_path / "piped", CPU, workers=2)
    files = json.loads((one / MANIFEST).read_text(encoding="utf-8"))["files"]
    assert piped_cases == list(files)  # the pipeline ran, on every case
    assert n_one == n_piped == len(files) == 2
    assert files == json.loads((piped / MANIFEST).read_text(encoding="utf-8"))["files"]
    for name in files.values():
        assert np.array_equal(np.asarray(nib.load(one / name).dataobj), np.asarray(nib.load(piped / name).dataobj))
    (piped / name).unlink()
    assert predict_run(rec, tmp_path / "res", tmp_path / "piped", CPU, workers=2)[1] == 1
    assert np.array_equal(np.asarray(nib.load(one / name).dataobj), np.asarray(nib.load(piped / name).dataobj))


def test_a_moved_results_folder_keeps_its_runs_and_their_synthetic_data(tmp_path):
    """Synthetic data lives in the results folder: a run is identified by how its data was made, not
    where it lies, so `bench run` in the moved folder skips it (it trained it again, and the board
    then counted the seed twice), and predict/rescore find the data there."""
    proto = load_protocol("smoke").with_overrides(img_size=32, max_iterations=2, max_cases=1)
    plan = dict(models=["unet"], dataset="synapse", protocol=proto, seeds=[0], data_root=None, synthetic=True,
                model_overrides=dict(get_entry("unet").tiny))
    (spec,) = plan_grid(**plan, results_dir=tmp_path / "a")
    rec = run_one(spec, results_dir=tmp_path / "a", device=CPU)
    assert rec["data_root"] == str((tmp_path / "a" / "synthetic" / "synapse-synth-v1").resolve())
    shutil.move(tmp_path / "a", tmp_path / "b")
    (again,) = plan_grid(**plan, results_dir=tmp_path / "b")
    assert again.key == spec.key
    assert predict_run(rec, tmp_path / "b", tmp_path / "out", CPU)[1] == 1
    shutil.rmtree(tmp_path / "b" / "synthetic")
    with pytest.raises(BenchError, match=rf"run {rec['run_id']}: its data .*synapse-synth-v1 is not there"):
        predict_run(rec, tmp_path / "b", tmp_path / "out2", CPU)


def test_bench_data_synth_output_is_synthetic_data_wherever_it_lies(tmp_path):
    """Given as --data-root, `bench data synth`'s output is marked synthetic (its boards say so, and
    no paper's number gets a gap there), and is the same data as --synthetic's."""
    root = synthesize("synapse", tmp_path / "mine")  # what `bench data synth --like synapse` writes
    proto = load_protocol("smoke")
    (given,) = plan_grid(models=["unet"], dataset="synapse", protocol=proto, seeds=[0], data_root=root,
                         synthetic=False, results_dir=tmp_path / "r1")
    (built_in,) = plan_grid(models=["unet"], dataset="synapse", protocol=proto, seeds=[0], data_root=None,
                            synthetic=True, results_dir=tmp_path / "r2")
    assert given.synthetic and given.key == built_in.key
    (root / ".bench-synthetic.json").unlink()  # data of one's own: identified by its path, as before
    (real,) = plan_grid(models=["unet"], dataset="synapse", protocol=proto, seeds=[0], data_root=root,
                        synthetic=False, results_dir=tmp_path / "r1")
    assert not real.synthetic and real.key != given.key


def test_a_data_root_given_with_a_tilde_is_recorded_as_its_absolute_path(tmp_path, monkeypatch):
    """"--data-root=~/data" reaches bench with the ~ (the shell expands it only at a word's start)."""
    from bench.rescore import run_data_root

    monkeypatch.setenv("HOME", str(tmp_path))
    synthesize("synapse", tmp_path / "data")
    (spec,) = plan_grid(models=["unet"], dataset="synapse", protocol=load_protocol("smoke"), seeds=[0],
                        data_root=Path("~/data"), synthetic=False, results_dir=tmp_path / "res")
    assert spec.data_root == tmp_path / "data"
    assert run_data_root({"run_id": "r", "data_root": "~/data", "synthetic": False}, tmp_path / "res") == \
        tmp_path / "data"  # a record written before roots were resolved


def test_a_run_that_cannot_be_predicted_or_rescored_does_not_cost_the_others(tmp_path, bench_here):
    """From a plugin journey: predict stopped at the first run whose weights no longer fit, leaving the
    runs after it unwritten; now each such run is one line, the others are done, and the command
    fails naming those left out (a rerun does the rest)."""
    root = synthesize("isic", tmp_path / "data", n_train=4, n_val=2, min_size=32, max_size=40)
    results = tmp_path / "res"
    rec = _train("isic17", root, results)
    twin = {**rec, "run_id": rec["run_id"] + "-twin"}  # the same weights under a second id
    records.write_record(twin, results)
    shutil.copytree(results / "runs" / rec["run_id"], results / "runs" / twin["run_id"])
    final = results / "runs" / rec["run_id"] / "checkpoints" / "final.pt"
    final.write_bytes(final.read_bytes()[:100])  # damaged
    for command, verb in (("predict", "predicted"), ("rescore", "rescored")):
        args = ["--out", tmp_path / "preds"] if command == "predict" else ["--policy", "strict"]
        proc = bench_here(command, "--results", results, *args, check=False)
        assert proc.returncode == 2, proc.stderr
        assert f"  {rec['run_id']}: FAILED: run {rec['run_id']}: " in proc.stderr and "final.pt" in proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == (
            f"error: 1 of 2 run(s) could not be {verb} ({rec['run_id']}), the others were; after fixing the "
            "cause, the same command does the rest")
    assert len(list((tmp_path / "preds" / twin["run_id"]).rglob("*.png"))) == 2
    assert records.record_path(results, twin["run_id"] + ".strict").is_file()
    # the damaged run alone left to do: its own error, one line, with no "1 of 1 run(s)" summary after it
    for command, args in (("predict", ["--out", tmp_path / "preds", "--run", rec["run_id"]]),
                          ("rescore", ["--policy", "strict"])):
        proc = bench_here(command, "--results", results, *args, check=False)
        assert proc.returncode == 2 and proc.stderr.startswith(f"error: run {rec['run_id']}: "), proc.stderr
        assert proc.stderr.count("\n") == 1 and "FAILED" not in proc.stderr, proc.stderr


def test_predict_and_rescore_take_the_runs_of_some_datasets(tmp_path, bench_here):
    """A paper journey: predictions of the ISIC runs alone could not be asked for (no --dataset)."""
    from bench.rescore import plan_rescore

    for dataset in ("synapse", "isic17"):
        records.write_record(make_record("unet", dataset=dataset, seed=0), tmp_path)
    assert [r["dataset"] for r in plan_predict(tmp_path, datasets="isic17")] == ["isic17"]
    assert [r["dataset"] for r in plan_predict(tmp_path, ["unet"], None, ["synapse"])] == ["synapse"]
    assert [r["dataset"] for r in plan_rescore(tmp_path, "strict", None, "isic17")] == ["isic17"]
    assert len(plan_rescore(tmp_path, "strict")) == 2
    with pytest.raises(BenchError, match=r"--dataset isic18: no runs of it in .* \(there: isic17, synapse\)"):
        plan_predict(tmp_path, datasets="isic18")
    with pytest.raises(BenchError, match=r"--dataset isic18: no runs of it"):
        plan_rescore(tmp_path, "strict", None, "isic18")
    # the command's --dataset too (these records have no weights: it stops there, after saying what it took)
    proc = bench_here("rescore", "--policy", "strict", "--results", tmp_path, "--dataset", "isic17", check=False)
    said = proc.stdout + proc.stderr
    assert "bench rescore: 1 run(s) to score under strict" in proc.stdout and "synapse" not in said, said
