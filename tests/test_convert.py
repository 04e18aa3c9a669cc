"""`bench data convert`: BTCV's raw volumes become TransUNet's Synapse layout with known organ ids,
its split, the HU window and the headers' spacing; a Medical Segmentation Decathlon task becomes
nnU-Net v2's raw layout; bad raw data is named."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bench.data import open_dataset
from bench.data.convert import BTCV_CASES, btcv_to_synapse, msd_to_nnunet
from bench.data.synapse import CLASS_NAMES, TRANSUNET_TEST_CASES
from bench.data.verify import dataset_notes, verify_dataset
from bench.errors import BenchError

SHAPE = (12, 10, 3)  # (x, y, z): three different sizes, so a wrong transpose shows
ZOOMS = (0.7, 0.8, 2.5)


def _write_btcv(base, cases=BTCV_CASES):
    (base / "img").mkdir(parents=True)
    (base / "label").mkdir()
    rng = np.random.default_rng(0)
    for i, case in enumerate(cases):
        n = case[4:]
        hu = rng.uniform(-1000, 1200, SHAPE).astype(np.float32)
        label = rng.integers(0, 14, SHAPE).astype(np.uint8)
        label[0, 0, :] = [8, 5, 11]  # aorta, oesophagus (not scored), pancreas
        affine = np.diag([*ZOOMS, 1.0])
        nib.save(nib.Nifti1Image(hu, affine), base / "img" / f"img{n}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), base / "label" / f"label{n}.nii.gz")


@pytest.fixture(scope="module")
def btcv(tmp_path_factory):
    raw = tmp_path_factory.mktemp("btcv") / "RawData"
    _write_btcv(raw / "Training")
    return raw


def test_btcv_becomes_transunets_synapse_layout(btcv, tmp_path):
    out = btcv_to_synapse(btcv, tmp_path / "Synapse")  # RawData/ is found as well as RawData/Training/
    ds = open_dataset("synapse", out)
    assert ds.test_ids() == list(TRANSUNET_TEST_CASES)
    train_cases = sorted({i.split("_slice")[0] for i in ds.train_ids()})
    assert train_cases == sorted(set(BTCV_CASES) - set(TRANSUNET_TEST_CASES)) and len(train_cases) == 18
    assert len(ds.train_ids()) == 18 * SHAPE[2]  # every slice of every training volume

    case = ds.load_test("case0008")
    src = btcv / "Training"
    hu = np.asarray(nib.load(src / "img" / "img0008.nii.gz").dataobj)
    raw = np.asarray(nib.load(src / "label" / "label0008.nii.gz").dataobj)
    assert case.image.shape == (SHAPE[2], SHAPE[1], SHAPE[0])  # (D, H, W) = (z, y, x)
    for x, y, z in [(0, 0, 0), (11, 9, 2), (5, 3, 1)]:
        assert case.image[z, y, x] == pytest.approx((min(max(hu[x, y, z], -125), 275) + 125) / 400, abs=1e-6)
    names = ["background", *CLASS_NAMES]
    btcv_names = {1: "spleen", 2: "kidney_r", 3: "kidney_l", 4: "gallbladder", 6: "liver", 7: "stomach",
                  8: "aorta", 11: "pancreas"}
    for x, y, z in np.ndindex(*SHAPE):  # each voxel's organ keeps its name; the five others are background
        assert names[case.label[z, y, x]] == btcv_names.get(int(raw[x, y, z]), "background")
    assert case.label[:, 0, 0].tolist() == [names.index("aorta"), 0, names.index("pancreas")]
    assert case.spacing == pytest.approx(ZOOMS[::-1])  # spacing.csv, from the header: strict HD95 in mm
    # a training slice: the volume's z-th axial slice, as (H, W) = (y, x), windowed and relabelled alike
    hu1 = np.asarray(nib.load(src / "img" / "img0005.nii.gz").dataobj)
    raw1 = np.asarray(nib.load(src / "label" / "label0005.nii.gz").dataobj)
    sl = ds.load_train("case0005_slice001")
    assert sl.image.shape == (SHAPE[1], SHAPE[0])
    np.testing.assert_allclose(sl.image, (np.clip(hu1[:, :, 1].T, -125, 275) + 125) / 400, atol=1e-6)
    expected = [btcv_names.get(int(v), "background") for v in raw1[:, :, 1].T.ravel()]
    assert [names[v] for v in sl.label.ravel()] == expected
    assert not [p for p in verify_dataset("synapse", out) if p.level == "error"]
    notes = " ".join(dataset_notes("synapse", out))
    assert "12 of its 12" in notes  # TransUNet's test volumes (these tiny volumes have fewer slices than its 2,211)
    assert "the label ids fit the order the tables use" in notes


def test_convert_names_what_is_wrong(btcv, tmp_path):
    with pytest.raises(BenchError, match="no img/ and label/ folders"):
        btcv_to_synapse(tmp_path, tmp_path / "out")
    with pytest.raises(BenchError, match=r"RawDta: not found; expected BTCV's RawData"):
        btcv_to_synapse(tmp_path / "RawDta", tmp_path / "out")
    partial = tmp_path / "partial"
    shutil.copytree(btcv / "Training", partial)
    (partial / "img" / "img0040.nii.gz").unlink()
    (partial / "label" / "label0040.nii.gz").unlink()
    with pytest.raises(BenchError, match=r"1 of BTCV's 30 training volumes missing \(img0040.nii.gz\)"):
        btcv_to_synapse(partial, tmp_path / "out")
    shutil.copy(btcv / "Training" / "img" / "img0040.nii.gz", partial / "img")
    with pytest.raises(BenchError, match=r"label0040\.nii\.gz: missing"):
        btcv_to_synapse(partial, tmp_path / "out")
    bad = nib.Nifti1Image(np.zeros((4, 4, 3), np.uint8), np.eye(4))
    nib.save(bad, partial / "label" / "label0040.nii.gz")
    with pytest.raises(BenchError, match=r"img0040\.nii\.gz: shape \(z, y, x\) \(3, 10, 12\) differs from label "
                                         r"label0040\.nii\.gz \(3, 4, 4\)"):
        btcv_to_synapse(partial, tmp_path / "out")
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), np.diag([0.7, 0.8, 5.0, 1])),
             partial / "label" / "label0040.nii.gz")  # 5 mm slices, its image 2.5 mm: not one grid
    with pytest.raises(BenchError, match=r"img0040\.nii\.gz: spacing \(z, y, x\) \(2\.5, 0\.8, 0\.7\) mm differs from "
                                         r"label label0040\.nii\.gz \(5\.0, 0\.8, 0\.7\) mm"):
        btcv_to_synapse(partial, tmp_path / "out")
    shutil.copy(btcv / "Training" / "label" / "label0040.nii.gz", partial / "label")
    nib.save(nib.Nifti1Image(np.zeros((*SHAPE, 2), np.float32), np.diag([*ZOOMS, 1])), partial / "img" / "img0040.nii.gz")
    with pytest.raises(BenchError, match=r"img0040\.nii\.gz: expected a 3-D NIfTI volume, got shape \(12, 10, 3, 2\)"):
        btcv_to_synapse(partial, tmp_path / "out")
    (partial / "img" / "img0040.nii.gz").write_bytes(b"not a volume")  # its header is read before the volumes
    with pytest.raises(BenchError, match=r"img0040\.nii\.gz: cannot read it as a NIfTI volume"):
        btcv_to_synapse(partial, tmp_path / "out")
    shutil.copy(btcv / "Training" / "img" / "img0040.nii.gz", partial / "img")
    # a header whose affine holds a NaN (nibabel will not write one: the bytes by hand): no orientation
    label = np.asarray(nib.load(partial / "label" / "label0040.nii.gz").dataobj)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(label.shape)
    hdr.set_data_dtype(label.dtype)
    hdr["sform_code"], hdr["vox_offset"] = 1, 352
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = [np.nan, 0, 0, 0], [0, ZOOMS[1], 0, 0], [0, 0, ZOOMS[2], 0]
    hdr["pixdim"][1:4] = ZOOMS
    raw_bytes = hdr.binaryblock + b"\0" * 4 + label.tobytes(order="F")
    (partial / "label" / "label0040.nii.gz").write_bytes(gzip.compress(raw_bytes))
    with pytest.raises(BenchError, match=r"label0040\.nii\.gz: cannot read it as a NIfTI volume"):
        btcv_to_synapse(partial, tmp_path / "out")
    shutil.copy(btcv / "Training" / "label" / "label0040.nii.gz", partial / "label")
    assert not (tmp_path / "out").exists()  # nothing half-written
    nib.save(nib.load(btcv / "Training" / "label" / "label0040.nii.gz"), partial / "label" / "label0040.nii")
    (partial / "label" / "label0040.nii.gz").unlink()
    assert btcv_to_synapse(partial, tmp_path / "mixed").is_dir()  # an image .nii.gz may have a label .nii
    shutil.copy(partial / "img" / "img0040.nii.gz", partial / "img" / "img0040.nii")
    with pytest.raises(BenchError, match="volume 0040 is there as .nii and .nii.gz"):
        btcv_to_synapse(partial, tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("", encoding="utf-8")
    with pytest.raises(BenchError, match="already exists and is not empty"):
        btcv_to_synapse(btcv, tmp_path / "full")



def _add_trailing_axis(path: Path) -> None:
    """Store a NIfTI volume as 3D Slicer, ITK exports and MRI converters often do: shape (x, y, z, 1)."""
    vol = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(vol.dataobj)[..., None], vol.affine, vol.header), path)
    assert nib.load(path).shape == (*SHAPE, 1)


def test_btcv_volumes_stored_with_a_trailing_axis_of_1_convert_as_their_volumes(btcv, tmp_path):
    """An (x, y, z, 1) image or label was refused ("expected a 3-D NIfTI volume"); it converts as its volume."""
    raw = tmp_path / "raw"
    shutil.copytree(btcv / "Training", raw)
    for path in (raw / "img" / "img0008.nii.gz", raw / "label" / "label0008.nii.gz",  # a test volume
                 raw / "label" / "label0005.nii.gz"):  # a training one's label
        _add_trailing_axis(path)
    got, ref = (open_dataset("synapse", btcv_to_synapse(r, tmp_path / name))
                for r, name in ((raw, "got"), (btcv, "ref")))
    case, was = got.load_test("case0008"), ref.load_test("case0008")
    assert np.array_equal(case.image, was.image) and np.array_equal(case.label, was.label)
    assert case.spacing == pytest.approx(ZOOMS[::-1]) and case.spacing == was.spacing
    assert got.train_ids() == ref.train_ids()
    sl, was_sl = got.load_train("case0005_slice001"), ref.load_train("case0005_slice001")
    assert np.array_equal(sl.image, was_sl.image) and np.array_equal(sl.label, was_sl.label)


def test_labels_placed_apart_from_their_images_are_warned_about(btcv, tmp_path):
    # nnU-Net warns when a label's affine differs from its image's: the arrays are converted as
    # stored, and a label saved flipped with a flipped affine would lie mirrored on its image
    raw = tmp_path / "raw"
    shutil.copytree(btcv / "Training", raw)
    label = nib.load(raw / "label" / "label0008.nii.gz")
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = SHAPE[0] - 1
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj)[::-1], label.affine @ flip), raw / "label" / "label0008.nii.gz")
    shifted = label.affine.copy()
    shifted[:3, 3] = 40.0
    lab21 = nib.load(raw / "label" / "label0021.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(lab21.dataobj), shifted), raw / "label" / "label0021.nii.gz")
    with pytest.warns(UserWarning) as said:
        btcv_to_synapse(raw, tmp_path / "out")
    (message,) = [str(w.message) for w in said]
    assert message.startswith(f"{raw / 'label' / 'label0008.nii.gz'}: 2 of 30 labels differ from their image")
    assert "this one: orientation LAS, its image's RAS; cases: case0008, case0021)" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        btcv_to_synapse(btcv, tmp_path / "clean")  # labels on their images' grids: not a word
    shutil.rmtree(raw)
    shutil.copytree(btcv / "Training", raw)
    for kind in ("img", "label"):  # one case stored flipped, image and label alike
        path = raw / kind / f"{kind}0021.nii.gz"
        vol = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(vol.dataobj)[::-1], vol.affine @ flip), path)
    sheared = np.diag([*ZOOMS, 1.0])
    sheared[:, 1] = 0.0  # a degenerate affine: its y axis has no direction
    for kind in ("img", "label"):
        path = raw / kind / f"{kind}0040.nii.gz"
        degenerate = nib.Nifti1Image(np.asarray(nib.load(path).dataobj), None)
        degenerate.set_sform(sheared, code=1)  # the header's matrix as given (no qform can express it)
        nib.save(degenerate, path)
    with pytest.warns(UserWarning) as said:
        btcv_to_synapse(raw, tmp_path / "turned")
    (message,) = [str(w.message) for w in said]
    assert message == (f"{raw / 'img' / 'img0021.nii.gz'}: orientation LAS, most images' RAS (2 of 30 differ: "
                       "img0021.nii.gz, img0040.nii.gz); converted as stored, so their anatomy lies mirrored or "
                       "turned against the other cases'")

# --- Medical Segmentation Decathlon -------------------------------------------------------------


def _write_msd(root, *, channels=1, cases=("liver_0", "liver_3", "liver_10")):
    """An MSD task as its archives unpack: dataset.json in the v1 spelling, NIfTI volumes (4-D with
    several modalities), and the macOS ``._`` files the archives carry, which are not NIfTI at all."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(1)
    affine = np.diag([*ZOOMS, 1.0])
    for case in cases:
        shape = SHAPE + ((channels,) if channels > 1 else ())
        nib.save(nib.Nifti1Image(rng.normal(0, 100, shape).astype(np.float32), affine),
                 root / "imagesTr" / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(rng.integers(0, 3, SHAPE).astype(np.uint8), affine),
                 root / "labelsTr" / f"{case}.nii.gz")
        for folder in ("imagesTr", "labelsTr"):
            (root / folder / f"._{case}.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    modality = {"0": "CT"} if channels == 1 else {str(c): f"MR{c}" for c in range(channels)}
    meta = {"name": "LiTS", "description": "Liver and Liver Tumor Segmentation", "tensorImageSize": "3D",
            "modality": modality, "labels": {"0": "background", "1": "liver", "2": "cancer"},
            "numTraining": len(cases), "numTest": 0,
            "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases],
            "test": []}
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    return root


def test_an_msd_task_becomes_nnunet_v2_raw(tmp_path):
    raw = _write_msd(tmp_path / "Task03_Liver")
    out = msd_to_nnunet(raw, tmp_path / "Dataset003_Liver")
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert meta["channel_names"] == {"0": "CT"} and meta["labels"] == {"background": 0, "liver": 1, "cancer": 2}
    assert (meta["numTraining"], meta["file_ending"], meta["name"]) == (3, ".nii.gz", "LiTS")
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["liver_0_0000.nii.gz", "liver_10_0000.nii.gz",
                                                                      "liver_3_0000.nii.gz"]
    # 3-D images are copied byte for byte, as nnUNetv2_convert_MSD_dataset copies them
    assert (out / "imagesTr" / "liver_3_0000.nii.gz").read_bytes() == (raw / "imagesTr" / "liver_3.nii.gz").read_bytes()
    assert (out / "labelsTr" / "liver_3.nii.gz").read_bytes() == (raw / "labelsTr" / "liver_3.nii.gz").read_bytes()
    ds = open_dataset("nnunet", out)
    assert ds.dataset_name == "nnunet:LiTS" and ds.class_names == ("liver", "cancer")
    case = ds.load_test(ds.test_ids()[0])
    assert case.spacing == (ZOOMS[2], ZOOMS[1], ZOOMS[0]) and case.image.shape == SHAPE[::-1]
    assert verify_dataset("nnunet", out) == []


def test_msd_modalities_are_split_into_channel_files(tmp_path):
    raw = _write_msd(tmp_path / "Task01_BrainTumour", channels=2, cases=("BRATS_001", "BRATS_002"))
    out = msd_to_nnunet(raw, tmp_path / "out")
    src = np.asarray(nib.load(raw / "imagesTr" / "BRATS_002.nii.gz").dataobj)
    for c in range(2):
        part = nib.load(out / "imagesTr" / f"BRATS_002_{c:04d}.nii.gz")
        assert np.array_equal(np.asarray(part.dataobj), src[..., c])
        assert np.allclose(part.affine, np.diag([*ZOOMS, 1.0]))
    ds = open_dataset("nnunet", out)
    assert ds.in_chans == 2 and ds.load_test("BRATS_002").image.shape == (*SHAPE[::-1], 2)


def test_msd_volumes_stored_with_a_trailing_axis_of_1_become_plain_files(tmp_path):
    """An (x, y, z, 1) image or label (one modality) was refused; each becomes the plain (x, y, z) file nnU-Net
    writes, voxels and geometry kept; a 4-D one of several modalities with a trailing axis of 1 still splits."""
    raw = _write_msd(tmp_path / "Task03_Liver")
    paths = (raw / "imagesTr" / "liver_3.nii.gz", raw / "labelsTr" / "liver_3.nii.gz")
    stored = [(np.asarray(v.dataobj), v.affine) for v in map(nib.load, paths)]
    for path in paths:
        _add_trailing_axis(path)
    out = msd_to_nnunet(raw, tmp_path / "out")
    for (data, affine), written in zip(stored, (out / "imagesTr" / "liver_3_0000.nii.gz",
                                                out / "labelsTr" / "liver_3.nii.gz")):
        vol = nib.load(written)
        assert vol.shape == SHAPE and vol.header.get_zooms() == pytest.approx(ZOOMS)
        assert np.allclose(vol.affine, affine) and np.array_equal(np.asarray(vol.dataobj), data)
        assert vol.get_data_dtype() == data.dtype
    assert verify_dataset("nnunet", out) == []
    ds = open_dataset("nnunet", out)
    assert ds.load_test("liver_3").image.shape == SHAPE[::-1]
    raw = _write_msd(tmp_path / "Task01_BrainTumour", channels=2, cases=("BRATS_001", "BRATS_002"))
    path = raw / "imagesTr" / "BRATS_002.nii.gz"
    src = nib.load(path)
    data = np.asarray(src.dataobj)
    nib.save(nib.Nifti1Image(data[..., None], src.affine, src.header), path)  # (x, y, z, 2, 1)
    out = msd_to_nnunet(raw, tmp_path / "brats")
    for c in range(2):
        part = nib.load(out / "imagesTr" / f"BRATS_002_{c:04d}.nii.gz")
        assert part.shape == SHAPE and np.array_equal(np.asarray(part.dataobj), data[..., c])


def test_msd_conversion_names_what_is_wrong(tmp_path):
    with pytest.raises(BenchError, match="dataset.json: not found; expected an MSD task folder"):
        msd_to_nnunet(tmp_path, tmp_path / "a")
    raw = _write_msd(tmp_path / "Task03_Liver")
    (raw / "labelsTr" / "liver_10.nii.gz").unlink()
    with pytest.raises(BenchError, match=r"labelsTr/liver_10.nii.gz: missing \(listed in .*dataset.json\)"):
        msd_to_nnunet(raw, tmp_path / "b")
    meta = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))
    (raw / "dataset.json").write_text(json.dumps({**meta, "labels": {"background": 0, "liver": 1}}), encoding="utf-8")
    with pytest.raises(BenchError, match=r"labels must map ids to names, like"):
        msd_to_nnunet(raw, tmp_path / "b")
    raw = _write_msd(tmp_path / "T2", channels=2)
    meta = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))
    (raw / "dataset.json").write_text(json.dumps({**meta, "modality": {"0": "CT"}}), encoding="utf-8")
    with pytest.raises(BenchError, match=r"liver_0.nii.gz: shape \(12, 10, 3, 2\); dataset.json names 1 modality"):
        msd_to_nnunet(raw, tmp_path / "c")
    assert not (tmp_path / "c").exists()  # refused while writing: no output folder,
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # and no temporary one left


@pytest.mark.parametrize("where", ["../secret.nii.gz", "ABSOLUTE", "./imagesTr/../../secret.nii.gz"])
def test_msd_entries_outside_the_task_folder_are_refused(tmp_path, where):
    # the converter copies what dataset.json names: a path outside --raw would copy any readable file
    raw = _write_msd(tmp_path / "Task03_Liver")
    shutil.copy(raw / "labelsTr" / "liver_0.nii.gz", tmp_path / "secret.nii.gz")
    entry = str(tmp_path / "secret.nii.gz") if where == "ABSOLUTE" else where
    meta = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))
    meta["training"][1]["label"] = entry
    (raw / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(BenchError, match=rf"dataset.json: training entry label {re.escape(repr(entry))} lies outside "
                                         rf"{re.escape(str(raw))}; expected a path inside the task folder"):
        msd_to_nnunet(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_msd_entries_outside_a_task_folder_given_relative_are_refused(tmp_path, monkeypatch):
    """`--raw Task03_Liver` from its parent folder: joining the entry to the folder a second time put
    ../ back inside it, and the entry outside was copied."""
    raw = _write_msd(tmp_path / "Task03_Liver")
    shutil.copy(raw / "labelsTr" / "liver_0.nii.gz", tmp_path / "secret.nii.gz")
    meta = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))
    meta["training"][1]["label"] = "../secret.nii.gz"
    (raw / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BenchError, match="training entry label '../secret.nii.gz' lies outside Task03_Liver"):
        msd_to_nnunet(Path("Task03_Liver"), Path("out"))
    assert not (tmp_path / "out").exists()


def test_an_msd_task_whose_folders_are_links_elsewhere_converts(tmp_path):
    """imagesTr/labelsTr linked onto another disk (or a git-annex/DVC checkout's files, links into a
    cache): the entries name files inside the task as written, and were refused once links were followed."""
    raw = _write_msd(tmp_path / "Task03_Liver")
    for sub in ("imagesTr", "labelsTr"):
        shutil.move(raw / sub, tmp_path / f"disk_{sub}")
        (raw / sub).symlink_to(tmp_path / f"disk_{sub}", target_is_directory=True)
    out = msd_to_nnunet(raw, tmp_path / "out")
    assert (out / "labelsTr" / "liver_3.nii.gz").read_bytes() == (tmp_path / "disk_labelsTr" / "liver_3.nii.gz").read_bytes()


@pytest.mark.parametrize("labels, phrase", [
    ({"0": "background", "2": "liver"}, "label ids must be 0..1"),
    ({"1": "lesion", "2": "cyst"}, 'no label has id 0; nnU-Net\'s labels start with the background, e.g. "background": 0'),
    ({"0": "background", "1": "liver", "2": "liver"}, "label name(s) 'liver' given to more than one id"),
])
def test_msd_labels_are_checked_before_anything_is_copied(tmp_path, labels, phrase, monkeypatch):
    raw = _write_msd(tmp_path / "Task03_Liver")
    meta = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))
    (raw / "dataset.json").write_text(json.dumps({**meta, "labels": labels}), encoding="utf-8")
    monkeypatch.setattr(shutil, "copyfile", lambda *a: pytest.fail("copied before checking dataset.json"))
    with pytest.raises(BenchError) as err:
        msd_to_nnunet(raw, tmp_path / "out")
    assert str(raw / "dataset.json") in str(err.value) and phrase in str(err.value)


def test_msd_label_of_another_shape_is_named(tmp_path):
    raw = _write_msd(tmp_path / "Task03_Liver")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.uint8), np.eye(4)), raw / "labelsTr" / "liver_3.nii.gz")
    with pytest.raises(BenchError, match=r"labelsTr/liver_3.nii.gz: shape \(4, 4, 3\) differs from its image's \(12, 10, 3\)"):
        msd_to_nnunet(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_msd_split_keeps_scaled_integer_values(tmp_path):
    # an int16 4-D volume with scl_slope/scl_inter: each modality's file holds the scaled values exactly
    raw = _write_msd(tmp_path / "Task05_Prostate", channels=2, cases=("prostate_00", "prostate_01"))
    src = nib.Nifti1Image(np.random.default_rng(3).integers(-500, 500, (*SHAPE, 2)).astype(np.int16), np.eye(4))
    src.header.set_slope_inter(0.37, 12.5)
    nib.save(src, raw / "imagesTr" / "prostate_01.nii.gz")
    out = msd_to_nnunet(raw, tmp_path / "out")
    stored = nib.load(raw / "imagesTr" / "prostate_01.nii.gz")
    for c in range(2):
        part = nib.load(out / "imagesTr" / f"prostate_01_{c:04d}.nii.gz")
        np.testing.assert_array_equal(part.get_fdata(), stored.get_fdata()[..., c])


def test_convert_msd_from_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from bench.cli import app

    raw = _write_msd(tmp_path / "Task03_Liver")
    res = CliRunner().invoke(app, ["data", "convert", "--source", "msd", "--raw", str(raw), "--out",
                                   str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "nnU-Net v2 raw layout" in res.output and "bench data verify --dataset nnunet" in res.output
    assert open_dataset("nnunet", tmp_path / "out").n_train_cases == 2  # fixed split of 3 cases: 2 + 1


# --- image and mask pairs of one's own ---------------------------------------------------------


def _write_pairs(folder: Path, names: list[str], *, colour: bool = False, size=(20, 24), seed: int = 0) -> dict:
    """images/NAME.png (gray saved as RGB, as BUSI's are; or colour) and masks/NAME_mask.png (0/255); returns
    each name's foreground."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    truth = {}
    for name in names:
        gray = rng.integers(0, 256, size, dtype=np.uint8)
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8) if colour else np.repeat(gray[..., None], 3, -1)
        Image.fromarray(pixels).save(folder / "images" / f"{name}.png")
        fg = np.zeros(size, bool)
        fg[2:8, 3:9] = True
        Image.fromarray(np.where(fg, 255, 0).astype(np.uint8)).save(folder / "masks" / f"{name}_mask.png")
        truth[name] = (pixels, fg)
    return truth


def test_pairs_of_ones_own_become_an_nnunet_dataset_named_as_asked(tmp_path):
    """A BUSI-like set: gray images saved as RGB, a second lesion in a mask of its own, names with spaces.
    It trains under --dataset nnunet, named on boards, its class named (the ISIC layout called it isic17)."""
    from PIL import Image

    from bench.data.convert import pairs_to_nnunet

    names = [f"benign ({i})" for i in range(5)] + ["normal (5)"]
    truth = _write_pairs(tmp_path / "busi", names)
    second = np.zeros((20, 24), bool)
    second[12:15, 15:20] = True
    Image.fromarray(np.where(second, 255, 0).astype(np.uint8)).save(tmp_path / "busi" / "masks" / "benign (1)_mask_1.png")
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(tmp_path / "busi" / "masks" / "normal (5)_mask.png")
    with pytest.warns(UserWarning, match=r"^1 mask\(s\) merged into their image's first \(the pixel-wise maximum\): "
                                         r"benign \(1\)_mask_1\.png$"):
        out = pairs_to_nnunet(tmp_path / "busi", tmp_path / "out", name="BUSI-mini", label="lesion")
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert (meta["name"], meta["channel_names"], meta["labels"], meta["numTraining"], meta["file_ending"]) == (
        "BUSI-mini", {"0": "gray"}, {"background": 0, "lesion": 1}, 6, ".png")
    assert not (out / "splits_final.json").exists()  # bench's split, said when it runs
    ds = open_dataset("nnunet", out)
    assert ds.dataset_name == "nnunet:BUSI-mini" and tuple(ds.class_names) == ("lesion",)
    assert sorted(ds.cases) == ["benign_0", "benign_1", "benign_2", "benign_3", "benign_4", "normal_5"]
    from bench.data.convert import _case_id  # letters of any script kept (患者甲 and 患者乙 were both "case")

    assert [_case_id(n) for n in ("患者甲", "Müller", "-c09", "a b#c")] == ["患者甲", "Müller", "c09", "a_b_c"]
    for name in ("benign (0)", "benign (1)", "normal (5)"):
        case = name.replace(" (", "_").rstrip(")")
        label = np.asarray(Image.open(out / "labelsTr" / f"{case}.png"))
        expected = truth[name][1] | second if name == "benign (1)" else truth[name][1] & (name != "normal (5)")
        assert label.dtype == np.uint8 and np.array_equal(label, expected.astype(np.uint8)), name
        image = np.asarray(Image.open(out / "imagesTr" / f"{case}_0000.png"))
        assert image.ndim == 2 and np.array_equal(image, truth[name][0][..., 0])  # one channel, the pixels as given


def test_pairs_with_a_split_of_ones_own_keep_it_and_colour_stays_rgb(tmp_path):
    from bench.data.convert import pairs_to_nnunet

    train = _write_pairs(tmp_path / "raw" / "train", ["a1", "a2", "a3"], colour=True)
    _write_pairs(tmp_path / "raw" / "val", ["b1", "b2"], colour=True, seed=1)  # the ISIC layout's test set
    out = pairs_to_nnunet(tmp_path / "raw", tmp_path / "out")
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert meta["name"] == "raw" and meta["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert meta["labels"] == {"background": 0, "foreground": 1}
    assert json.loads((out / "splits_final.json").read_text(encoding="utf-8")) == [{"train": ["a1", "a2", "a3"],
                                                                                   "val": ["b1", "b2"]}]
    ds = open_dataset("nnunet", out)
    assert ds.test_ids() == ["b1", "b2"] and not any("no splits_final.json" in n for n in ds.notes)
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(out / "imagesTr" / "a2_0000.png")), train["a2"][0])


def test_pairs_that_cannot_be_converted_are_named_and_nothing_is_written(tmp_path):
    from PIL import Image

    from bench.data.convert import pairs_to_nnunet

    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "benign").mkdir()
    with pytest.raises(BenchError, match=r"flat: expected images/ and masks/ \(one pool of cases, split by bench\), "
                                         r"or train/ and test/ \(or val/\) each holding them \(your own split\); "
                                         r"found benign/"):
        pairs_to_nnunet(tmp_path / "flat", tmp_path / "out")
    _write_pairs(tmp_path / "two", ["a b", "a_b"])  # one case id for both
    with pytest.raises(BenchError, match=r"a_b\.png: its case id 'a_b' is .*a b\.png's too; rename one of them"):
        pairs_to_nnunet(tmp_path / "two", tmp_path / "out")
    _write_pairs(tmp_path / "cased", ["LESION", "Lesion"])  # one file on a macOS or Windows disk
    with pytest.raises(BenchError, match=r"Lesion\.png: its case id 'Lesion' is .*LESION\.png's too"):
        pairs_to_nnunet(tmp_path / "cased", tmp_path / "out")
    _write_pairs(tmp_path / "lone", ["x", "y"])
    (tmp_path / "lone" / "masks" / "y_mask.png").unlink()
    with pytest.raises(BenchError, match=r"y\.png: no mask with a matching name in .*lone/masks"):
        pairs_to_nnunet(tmp_path / "lone", tmp_path / "out")
    _write_pairs(tmp_path / "sizes", ["x", "y"], size=(20, 24))
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "sizes" / "masks" / "x_mask.png")
    with pytest.raises(BenchError, match=r"x_mask\.png: .*"):
        pairs_to_nnunet(tmp_path / "sizes", tmp_path / "out")
    for bad, said in (({"label": "Background"}, "--label 'Background': 'Background' is a name nnU-Net gives "
                                                "another meaning"),
                      ({"label": "ignore"}, "--label 'ignore': 'ignore' is a name nnU-Net gives another meaning"),
                      ({"label": "a=1,b"}, "--label 'a=1,b': give every class a value (NAME=VALUE) or none"),
                      ({"label": "a=1,b=1"}, "--label 'a=1,b=1': value 1 given to 'a' and 'b'"),
                      ({"label": "a=red"}, "--label 'a=red': value 'red': expected a grey value or palette index"),
                      ({"label": "a,A"}, "--label 'a,A': expected class names, each once"),
                      ({"name": " "}, "--name: expected a name"),
                      ({"name": "my,data"}, "--name 'my,data': no ',', ':', '/'")):
        with pytest.raises(BenchError, match=f"^{re.escape(said)}"):
            pairs_to_nnunet(tmp_path / "lone", tmp_path / "out", **bad)
    # a mask named after an image that is not there: not merged into the image its name starts with
    _write_pairs(tmp_path / "stray", ["scan", "other"])
    (tmp_path / "stray" / "masks" / "scan_2_mask.png").write_bytes((tmp_path / "stray" / "masks" / "scan_mask.png").read_bytes())
    with pytest.raises(BenchError, match=r"scan\.png: masks scan_2_mask\.png, scan_mask\.png match its name but are not "
                                         r"one mask's parts"):
        pairs_to_nnunet(tmp_path / "stray", tmp_path / "out")
    # class ids 0/1/2 (or a 0/1 mask's JPEG noise) read as >= 128 were all background, unsaid
    _write_pairs(tmp_path / "ids", ["x", "y"])
    Image.fromarray(np.array([[0, 1], [2, 0]], np.uint8).repeat(10, 0).repeat(12, 1)).save(
        tmp_path / "ids" / "masks" / "y_mask.png")
    with pytest.raises(BenchError, match=r"y_mask\.png: mask values reach only 2: class ids\? give --label one name "
                                         r"per id 1\.\.2, in order \(e\.g\. --label foreground,other\)$"):
        pairs_to_nnunet(tmp_path / "ids", tmp_path / "out")
    (tmp_path / "a,b").mkdir()  # a default name (the folder's) a board could not be chosen by
    _write_pairs(tmp_path / "a,b", ["x", "y"])
    with pytest.raises(BenchError, match=r"^the folder's name \(the default --name\) 'a,b': no ',', ':'"):
        pairs_to_nnunet(tmp_path / "a,b", tmp_path / "out")
    _write_pairs(tmp_path / "one", ["x"])
    with pytest.raises(BenchError, match=r"1 image\(s\) with masks; a dataset needs at least 2"):
        pairs_to_nnunet(tmp_path / "one", tmp_path / "out")
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(BenchError, match=r"^--raw .*data\.zip: a file, not a folder: extract it"):
        pairs_to_nnunet(tmp_path / "data.zip", tmp_path / "out")
    # train/val/test: no validation set here, said; BUSI as downloaded (pairs in class folders): what to do
    for part in ("train", "val", "test"):
        _write_pairs(tmp_path / "tvt" / part, ["a", "b"])
    with pytest.raises(BenchError, match=r"found test/, train/, val/; bench trains on one set and tests on the other, "
                                         r"with no validation set: move val/'s pairs into train/"):
        pairs_to_nnunet(tmp_path / "tvt", tmp_path / "out")
    _write_pairs(tmp_path / "busi_dl" / "benign", ["benign (1)"])
    for f in [*(tmp_path / "busi_dl" / "benign").rglob("*.png")]:
        f.rename(tmp_path / "busi_dl" / "benign" / f.name)
    with pytest.raises(BenchError, match=r"found benign/; images and masks side by side in class folders \(BUSI as "
                                         r"downloaded\)\? gather them first"):
        pairs_to_nnunet(tmp_path / "busi_dl", tmp_path / "out")
    _write_pairs(tmp_path / "ok", ["x", "y"])
    (tmp_path / "taken.txt").write_text("mine", encoding="utf-8")  # it said "already exists and is not empty" of a file
    with pytest.raises(BenchError, match=r"taken\.txt: a file; give a folder to write the data into"):
        pairs_to_nnunet(tmp_path / "ok", tmp_path / "taken.txt")
    assert (tmp_path / "taken.txt").read_text(encoding="utf-8") == "mine"
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_pairs_keep_16_bit_gray_and_read_0_1_masks_and_refuse_grey_classes(tmp_path):
    """12-bit ultrasound in 16-bit files scaled to 8 bits kept 17 grey levels; a 0/1 mask was refused; a
    second class drawn in grey 128 became the class unsaid (bench data verify cannot see it afterwards;
    then it was warned of, and converted: REFUGE's masks, background 255, scored the disc at DSC 98.6)."""
    from PIL import Image

    from bench.data.convert import pairs_to_nnunet

    raw = tmp_path / "us"
    _write_pairs(raw, ["a", "b", "c"])
    rng = np.random.default_rng(3)
    wide = {}
    for name in ("a", "b", "c"):
        wide[name] = rng.integers(0, 4096, (20, 24)).astype(np.uint16)
        Image.fromarray(wide[name]).save(raw / "images" / f"{name}.png")
    ids = np.zeros((20, 24), np.uint8)
    ids[4:9, 4:9] = 1
    Image.fromarray(ids).save(raw / "masks" / "b_mask.png")  # 0/1: one class, unambiguous
    grey = np.zeros((20, 24), np.uint8)
    grey[2:8, 3:9], grey[10:18, 10:20] = 255, 128  # a second class in grey, over a region
    Image.fromarray(grey).save(raw / "masks" / "c_mask.png")
    with pytest.raises(BenchError, match=r"c_mask\.png: grey values 128, 255 each cover a region: several classes in "
                                         r"one mask\? name each class's value, e.g\. --label foreground=128,other=255 "
                                         r"\(values not named become background\)$"):
        pairs_to_nnunet(raw, tmp_path / "out")
    soft = np.where(grey == 255, 255, 0).astype(np.uint8)
    soft[8, 3:9] = 100, 128, 180, 200, 127, 90  # an antialiased edge: levels on a boundary, not a class
    Image.fromarray(soft).save(raw / "masks" / "c_mask.png")
    out = pairs_to_nnunet(raw, tmp_path / "out")
    image = np.asarray(Image.open(out / "imagesTr" / "a_0000.png"))
    assert image.dtype == np.uint16 and np.array_equal(image, wide["a"])  # every grey level kept
    assert np.array_equal(np.asarray(Image.open(out / "labelsTr" / "b.png")), ids)
    # split at 128 as the ISIC reader (and bench score) read a mask, >= 0.5 after /255: 128 foreground, 127 not
    expected = np.zeros((20, 24), np.uint8)
    expected[2:8, 3:9], expected[8, [4, 5, 6]] = 1, 1
    assert np.array_equal(np.asarray(Image.open(out / "labelsTr" / "c.png")), expected)


def _write_masks(folder: Path, masks: dict[str, np.ndarray], mode: str | None = None, palette=None) -> None:
    """images/NAME.png (gray) and masks/NAME.png as given (a PIL mode, e.g. "P" with ``palette``)."""
    from PIL import Image

    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for name, mask in masks.items():
        Image.fromarray(np.full(mask.shape[:2], 7, np.uint8)).save(folder / "images" / f"{name}.png")
        im = Image.fromarray(mask, mode)
        if palette is not None:
            im.putpalette(palette)
        im.save(folder / "masks" / f"{name}.png")


def test_pairs_of_several_classes_convert_by_id_value_or_colour(tmp_path):
    """A multi-class journey: index masks, REFUGE's grey levels (background 255, disc 128, cup 0), Pascal
    VOC's palette masks (a void border 255), colour-coded masks: each converted to class ids as --label
    names them, refused where the binary reading would have split them at 128 (VOC's colours lost every
    class and kept the void border)."""
    import warnings

    from PIL import Image

    from bench.data.convert import pairs_to_nnunet

    ids = np.zeros((20, 24), np.uint8)
    ids[2:12, 2:12], ids[5:9, 5:9], ids[14:18, 14:20] = 1, 2, 3
    cases = {"a": ids, "b": np.flipud(ids).copy()}
    _write_masks(tmp_path / "index", cases)
    out = pairs_to_nnunet(tmp_path / "index", tmp_path / "o1", label="disc,cup,vessel")
    assert json.loads((out / "dataset.json").read_text(encoding="utf-8"))["labels"] == {"background": 0, "disc": 1,
                                                                                         "cup": 2, "vessel": 3}
    assert np.array_equal(np.asarray(Image.open(out / "labelsTr" / "b.png")), cases["b"])
    assert tuple(open_dataset("nnunet", out).class_names) == ("disc", "cup", "vessel")
    with pytest.raises(BenchError, match=r"a\.png: mask values 0, 1, 2, 3; --label disc,cup reads class ids 0\.\.2: "
                                         r"give one name per id 1\.\.3, in order$"):
        pairs_to_nnunet(tmp_path / "index", tmp_path / "o2", label="disc,cup")
    with pytest.raises(BenchError, match=r"^--label disc,cup,vessel,x: x in none of the masks$"):
        pairs_to_nnunet(tmp_path / "index", tmp_path / "o2", label="disc,cup,vessel,x")

    refuge = {k: np.array([255, 128, 0, 255], np.uint8)[v] for k, v in cases.items()}  # vessel as background
    _write_masks(tmp_path / "refuge", refuge)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every value named: nothing said
        out = pairs_to_nnunet(tmp_path / "refuge", tmp_path / "o3", label="disc=128,cup=0,background=255")
    assert np.array_equal(np.asarray(Image.open(out / "labelsTr" / "a.png")), np.where(ids == 3, 0, ids))
    with pytest.warns(UserWarning, match=r"^values --label does not name became background: 255 \(79\.2% of "
                                         r"the pixels\); name them"):
        pairs_to_nnunet(tmp_path / "refuge", tmp_path / "o4", label="disc=128,cup=0")

    voc = {k: np.where(np.arange(24) >= 22, 255, v).astype(np.uint8) for k, v in cases.items()}  # void border
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (3 * 251) + [224, 224, 192]
    _write_masks(tmp_path / "voc", voc, "P", palette)
    with pytest.raises(BenchError, match=r"a\.png: palette indices 1, 2, 3, 255 each cover a region: several classes "
                                         r"in one mask\?"):
        pairs_to_nnunet(tmp_path / "voc", tmp_path / "o5", label="lesion")  # by brightness: void the class
    with pytest.raises(BenchError, match=r"--label a,b,c reads class ids 0\.\.3: give each class's value, e\.g\. "
                                         r"--label a=1,b=2,c=3 \(values not named become background\)$"):
        pairs_to_nnunet(tmp_path / "voc", tmp_path / "o5", label="a,b,c")
    with pytest.warns(UserWarning, match=r"became background: 255 \("):
        out = pairs_to_nnunet(tmp_path / "voc", tmp_path / "o5", label="a=1,b=2,c=3")
    assert np.array_equal(np.asarray(Image.open(out / "labelsTr" / "a.png")), np.where(voc["a"] == 255, 0, ids))

    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    _write_masks(tmp_path / "rgb", {k: colours[v] for k, v in cases.items()})
    with pytest.raises(BenchError, match=r"a\.png: colours #0000ff, #00ff00, #ff0000 each cover a region"):
        pairs_to_nnunet(tmp_path / "rgb", tmp_path / "o6")  # by brightness: green alone became the class
    out = pairs_to_nnunet(tmp_path / "rgb", tmp_path / "o6", label="disc=#FF0000,cup=#00ff00,vessel=#0000ff")
    assert np.array_equal(np.asarray(Image.open(out / "labelsTr" / "b.png")), cases["b"])

    white = {k: np.where(v == 0, 255, 0).astype(np.uint8) for k, v in cases.items()}  # background drawn white
    _write_masks(tmp_path / "inverted", white)
    with pytest.warns(UserWarning, match=r"^'lesion' covers more than half of every mask \(from 74%\): masks whose "
                                         r"background is white\? then --label lesion=0,background=255$"):
        pairs_to_nnunet(tmp_path / "inverted", tmp_path / "o7", label="lesion")

    _write_masks(tmp_path / "perclass", {})
    for k in ("disc", "cup"):
        (tmp_path / "perclass" / "masks" / k).mkdir()
    Image.fromarray(ids).save(tmp_path / "perclass" / "images" / "a.png")
    with pytest.raises(BenchError, match=r"1 images in .* but 0 masks here, .*; it holds folders \(cup/, disc/\), one "
                                         r"per class\? bench reads one mask per image: merge them"):
        pairs_to_nnunet(tmp_path / "perclass", tmp_path / "o8")


def test_convert_options_of_pairs_only_are_refused_for_the_others(tmp_path):
    from typer.testing import CliRunner

    from bench.cli import app

    result = CliRunner().invoke(app, ["data", "convert", "--source", "msd", "--raw", str(tmp_path), "--out",
                                      str(tmp_path / "o"), "--name", "x"])
    assert isinstance(result.exception, BenchError)
    assert str(result.exception) == "--name: for --source pairs (the msd files name their dataset and classes)"


def test_pairs_merge_numbered_parts_and_say_where_16_bit_images_were_scaled(tmp_path):
    from PIL import Image

    from bench.data.convert import pairs_to_nnunet

    raw = tmp_path / "raw"
    _write_pairs(raw, ["a", "b", "c"])
    for part in ("a_lesion_1", "a_lesion_2"):  # numbered parts without an unnumbered first
        (raw / "masks" / f"{part}.png").write_bytes((raw / "masks" / "a_mask.png").read_bytes())
    (raw / "masks" / "a_mask.png").unlink()
    Image.fromarray(np.full((20, 24), 3000, np.uint16)).save(raw / "images" / "b.png")  # 16-bit beside 8-bit
    with pytest.warns(UserWarning) as said:
        out = pairs_to_nnunet(raw, tmp_path / "out")
    texts = [str(w.message) for w in said]
    assert "1 mask(s) merged into their image's first (the pixel-wise maximum): a_lesion_2.png" in texts
    assert any(t.startswith("1 16-bit image(s) beside 8-bit ones scaled to 8 bits (65535 -> 255") and "b.png" in t
               for t in texts), texts
    assert np.asarray(Image.open(out / "imagesTr" / "b_0000.png")).max() == round(3000 / 257)
    # masks of class ids: each part's classes kept where the parts lie apart (a later part does not replace it)
    first, second = np.zeros((20, 24), np.uint8), np.zeros((20, 24), np.uint8)
    first[2:8, 2:8], second[12:18, 12:20] = 1, 2
    _write_pairs(tmp_path / "ids", ["x", "y"])
    Image.fromarray(first).save(tmp_path / "ids" / "masks" / "x_mask.png")
    Image.fromarray(second).save(tmp_path / "ids" / "masks" / "x_mask_1.png")
    Image.fromarray(np.maximum(first, second)).save(tmp_path / "ids" / "masks" / "y_mask.png")  # both in one file
    with pytest.warns(UserWarning, match=r"merged into their image's first \(the pixel-wise maximum\): x_mask_1\.png"):
        out = pairs_to_nnunet(tmp_path / "ids", tmp_path / "out-ids", label="disc,cup")
    assert np.array_equal(np.asarray(Image.open(out / "labelsTr" / "x.png")), np.maximum(first, second))


def test_pairs_of_one_colour_saved_as_jpeg_are_binary(tmp_path):
    """A diff review: a red lesion on black saved as JPEG read as two colours (its noise, #000100 beside
    #fe0000) and was refused with a hint that made the noise a class; as gray it is 76, all background."""
    from PIL import Image

    from bench.data.convert import pairs_to_nnunet

    yy, xx = np.mgrid[:40, :48]
    disc = (yy - 20) ** 2 + (xx - 22) ** 2 < 10 ** 2
    (tmp_path / "jpeg" / "images").mkdir(parents=True)
    (tmp_path / "jpeg" / "masks").mkdir()
    for name, colour in (("a", (255, 0, 0)), ("b", (0, 200, 0)), ("c", (255, 128, 0)), ("d", (0, 128, 255))):
        Image.fromarray(np.full((40, 48), 9, np.uint8)).save(tmp_path / "jpeg" / "images" / f"{name}.png")
        rgb = np.zeros((40, 48, 3), np.uint8)
        rgb[disc] = colour
        Image.fromarray(rgb).save(tmp_path / "jpeg" / "masks" / f"{name}.jpg", quality=75)
    out = pairs_to_nnunet(tmp_path / "jpeg", tmp_path / "out", label="lesion")
    for name in ("a", "b", "c", "d"):  # orange, sky blue: on the edge of a hue's bin, split in two by one
        label = np.asarray(Image.open(out / "labelsTr" / f"{name}.png")).astype(bool)
        assert (label != disc).sum() <= 0.1 * disc.sum(), name  # the lesion, up to JPEG's blur at its edge
    # two classes of one hue (red and dark red, white and pink) are two, and a shape drawn in the alpha
    # channel over one colour is that shape (its colour's brightest channel made all of it the class)
    for name, second in (("a", (128, 0, 0)), ("b", (0, 110, 0)), ("c", (255, 200, 200))):
        rgb = np.zeros((40, 48, 3), np.uint8)
        rgb[disc] = (255, 255, 255) if name == "c" else (255, 0, 0) if name == "a" else (0, 255, 0)
        rgb[32:38, 2:20] = second
        Image.fromarray(rgb).save(tmp_path / "jpeg" / "masks" / f"{name}.png")
        (tmp_path / "jpeg" / "masks" / f"{name}.jpg").unlink(missing_ok=True)
        with pytest.raises(BenchError, match=rf"{name}\.png: colours #\w+, #\w+ each cover a region"):
            pairs_to_nnunet(tmp_path / "jpeg", tmp_path / f"o-{name}", label="lesion")
        (tmp_path / "jpeg" / "masks" / f"{name}.png").unlink()
        Image.fromarray(np.zeros((40, 48), np.uint8)).save(tmp_path / "jpeg" / "masks" / f"{name}.png")
    rgba = np.zeros((40, 48, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, np.where(disc, 255, 0)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "jpeg" / "masks" / "a.png")
    out = pairs_to_nnunet(tmp_path / "jpeg", tmp_path / "alpha", label="lesion")
    assert np.array_equal(np.asarray(Image.open(out / "labelsTr" / "a.png")).astype(bool), disc)


def test_pairs_names_and_values_of_other_scripts(tmp_path):
    """Names as macOS writes them (decomposed: "Mu\u0308ller") kept whole, Devanagari's marks kept; digits
    only ASCII in --label values ("²" crashed int()); a class name on one printable line."""
    import unicodedata

    from bench.data.convert import _case_id, pairs_to_nnunet

    assert _case_id(unicodedata.normalize("NFD", "Müller")) == "Müller" and _case_id("रोगी 1") == "रोगी_1"
    _write_pairs(tmp_path / "raw", ["x", "y"])
    for label, said in (("disc=²", "value '²': expected a grey value"), ("disc=１２８", "value '１２８': expected"),
                        ("disc,", "--label 'disc,': expected a class name, several (disc,cup"),
                        ("disc,,cup", "--label 'disc,,cup': expected a class name"),
                        ("a\tb", "class name 'a\\tb': expected printable text on one line")):
        with pytest.raises(BenchError, match=re.escape(said)):
            pairs_to_nnunet(tmp_path / "raw", tmp_path / "out", label=label)
