"""`bench data convert --source btcv`: BTCV's raw volumes become TransUNet's Synapse layout with
known organ ids, its split, the HU window and the headers' spacing; bad raw data is named."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from bench.data import open_dataset
from bench.data.convert import BTCV_CASES, btcv_to_synapse
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
    assert not [p for p in verify_dataset("synapse", out) if p.level == "error"]
    notes = " ".join(dataset_notes("synapse", out))
    assert "12 of its 12" in notes  # TransUNet's test volumes (these tiny volumes have fewer slices than its 2,211)
    assert "the label ids fit the order the tables use" in notes


def test_convert_names_what_is_wrong(btcv, tmp_path):
    with pytest.raises(BenchError, match="no img/ and label/ folders"):
        btcv_to_synapse(tmp_path, tmp_path / "out")
    partial = tmp_path / "partial"
    shutil.copytree(btcv / "Training", partial)
    (partial / "img" / "img0040.nii.gz").unlink()
    (partial / "label" / "label0040.nii.gz").unlink()
    with pytest.raises(BenchError, match=r"1 of BTCV's 30 training volumes missing \(case0040\)"):
        btcv_to_synapse(partial, tmp_path / "out")
    shutil.copy(btcv / "Training" / "img" / "img0040.nii.gz", partial / "img")
    with pytest.raises(BenchError, match=r"label0040\.nii\.gz: missing"):
        btcv_to_synapse(partial, tmp_path / "out")
    bad = nib.Nifti1Image(np.zeros((4, 4, 3), np.uint8), np.eye(4))
    nib.save(bad, partial / "label" / "label0040.nii.gz")
    with pytest.raises(BenchError, match=r"label0040\.nii\.gz: shape \(4, 4, 3\) differs from its image"):
        btcv_to_synapse(partial, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    nib.save(nib.load(btcv / "Training" / "label" / "label0040.nii.gz"), partial / "label" / "label0040.nii")
    (partial / "label" / "label0040.nii.gz").unlink()
    assert btcv_to_synapse(partial, tmp_path / "mixed").is_dir()  # an image .nii.gz may have a label .nii
    shutil.copy(partial / "img" / "img0040.nii.gz", partial / "img" / "img0040.nii")
    with pytest.raises(BenchError, match="case0040 is there as .nii and .nii.gz"):
        btcv_to_synapse(partial, tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(BenchError, match="already exists and is not empty"):
        btcv_to_synapse(btcv, tmp_path / "full")
