"""Dataset readers, the synthetic generator, ``verify_dataset`` and the nnU-Net split."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from bench.data import DATASETS, list_datasets, open_dataset, synthetic_root
from bench.data.nnunet import fixed_split
from bench.data.synth import GENERATOR_VERSION, synthesize
from bench.data.verify import Problem, verify_dataset
from bench.errors import BenchError
from bench.organs import SYNAPSE_ORGANS

SYN = dict(n_train=2, n_test=2, depth=8, size=48)
ISIC = dict(n_train=4, n_val=3, min_size=40, max_size=60)
POLYP = dict(n_train=3, n_test=2, min_size=40, max_size=60)
ISIC_ALL = dict(n_train=3, n_test=2, min_size=40, max_size=60)
NN3 = dict(n_cases=5, depth=6, size=32)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("synth")
    return {
        "synapse": synthesize("synapse", base / "synapse", **SYN),
        "isic": synthesize("isic", base / "isic", **ISIC),
        "polyp": synthesize("polyp", base / "polyp", **POLYP),
        "isic_all": synthesize("isic_all", base / "isic_all", **ISIC_ALL),
        "nnunet": synthesize("nnunet", base / "nnunet", **NN3),
        "nnunet2d": synthesize("nnunet", base / "nnunet2d", dims=2, n_cases=5, size=32),
    }


def _copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / root.name))


def _paths(problems: list[Problem], level: str = "error") -> list[str]:
    return [p.path for p in problems if p.level == level]


# --- registry and errors ---------------------------------------------------------------------


def test_registry_lists_the_five_formats():
    assert list_datasets() == ["isic17", "isic18", "isic_all", "nnunet", "polyp", "synapse"]
    assert {DATASETS[n].name for n in DATASETS} == set(DATASETS)


def test_unknown_dataset_name_suggests_the_closest(tmp_path):
    with pytest.raises(BenchError, match=r"did you mean 'synapse'\?.*isic17, isic18, isic_all, nnunet, polyp, synapse"):
        open_dataset("synapce", tmp_path)
    with pytest.raises(BenchError, match="unknown dataset"):
        synthetic_root("brats", tmp_path)


def test_missing_root_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(BenchError, match=f"^--data-root {missing}: dataset root not found \\(expected .*train_npz"):
        open_dataset("synapse", missing)


@pytest.mark.parametrize(
    "name, expected",
    [("synapse", "train_npz"), ("isic17", r"train/images"), ("polyp", "TrainDataset"), ("isic_all", r"train/images"),
     ("nnunet", "dataset.json")],
)
def test_wrong_layout_names_path_and_expectation(tmp_path, name, expected):
    (tmp_path / "stray.txt").write_text("x", encoding="utf-8")
    with pytest.raises(BenchError, match=expected) as info:
        open_dataset(name, tmp_path)
    assert str(tmp_path) in str(info.value)


# --- Synapse ---------------------------------------------------------------------------------


def test_synapse_reader(roots):
    ds = open_dataset("synapse", roots["synapse"])
    assert (ds.num_classes, ds.in_chans, ds.binary, ds.default_policy) == (9, 1, False, "legacy-synapse")
    assert ds.class_names[0] == "aorta" and list(ds.class_names) == list(SYNAPSE_ORGANS) and len(ds.class_names) == 8
    ids = ds.train_ids()
    assert len(ids) == 2 * 8 and ids[0] == "case0005_slice000" and ids[-1] == "case0006_slice007"
    assert ds.test_ids() == ["case0008", "case0022"]
    s = ds.load_train(ids[3])
    assert s.image.shape == s.label.shape == (48, 48)
    assert (s.image.dtype, s.label.dtype) == (np.float32, np.int64)
    case = ds.load_test("case0022")
    assert case.is_volume and case.image.shape == case.label.shape == (8, 48, 48)
    assert case.spacing == (2.5, 0.8, 0.8)
    assert set(np.unique(case.label)) == set(range(9))  # every organ in every volume
    assert 0.0 <= case.image.min() and case.image.max() <= 1.0
    assert ds.notes == []


def test_synapse_slices_hold_the_training_volume(roots):
    # the npz slices of a case are exactly the volume's slices, including organ-free end slices
    ds = open_dataset("synapse", roots["synapse"])
    labels = np.stack([ds.load_train(f"case0005_slice{z:03d}").label for z in range(8)])
    assert set(np.unique(labels)) == set(range(9))
    assert labels[0].max() == 0 and labels[-1].max() == 0


def test_synapse_without_lists_falls_back_and_says_so(roots, tmp_path):
    root = _copy(roots["synapse"], tmp_path)
    shutil.rmtree(root / "lists")
    ds = open_dataset("synapse", root)
    assert ds.train_ids() == sorted(open_dataset("synapse", roots["synapse"]).train_ids())
    assert ds.test_ids() == ["case0008", "case0022"]
    assert len(ds.notes) == 2 and "sorted contents" in ds.notes[0]


@pytest.mark.parametrize("where", ["lists_Synapse", "lists/list_Synapse"])  # VM-UNet's README spellings
def test_synapse_accepts_the_other_list_folders(roots, tmp_path, where):
    root = _copy(roots["synapse"], tmp_path)
    (root / "lists" / "lists_Synapse").rename(root / where)
    (root / where / "test_vol.txt").write_text("case0022\n", encoding="utf-8")
    ds = open_dataset("synapse", root)
    assert ds.test_ids() == ["case0022"] and ds.notes == []


@pytest.mark.parametrize("bad", ["/abs/path/victim", "../../x", "sub/case0008", "..\\x", "C:x", "..", "."])
def test_synapse_list_ids_that_are_paths_are_refused(roots, tmp_path, bad):
    # joined to test_vol_h5/ to read and to --out to predict: a path would reach files outside both
    root = _copy(roots["synapse"], tmp_path)
    listed = root / "lists" / "lists_Synapse" / "test_vol.txt"
    listed.write_text(f"case0008\n\n{bad}.npy.h5\n", encoding="utf-8")
    with pytest.raises(BenchError, match=rf"{re.escape(str(listed))}: line 3 {re.escape(repr(bad))} is not a plain "
                                         r"file name; expected a case or slice name like case0008"):
        open_dataset("synapse", root)


def _h5_reading_elsewhere(path: Path, how: str, victim: Path, key: str = "image") -> None:
    """Rewrite the test volume at ``path`` with its ``key`` (image or label) read from ``victim`` (a raw
    file, or an h5 holding ``key``), as ``how`` stores it; the other array stays in the file."""
    with h5py.File(path, "r") as f:
        arrays = {k: f[k][()] for k in ("image", "label")}
    path.unlink()
    array = arrays.pop(key)
    with h5py.File(path, "w") as f:
        for other, kept in arrays.items():
            f[other] = kept
        if how == "external storage":
            array.tofile(victim)
            f.create_dataset(key, array.shape, array.dtype, external=[(str(victim), 0, h5py.h5f.UNLIMITED)])
            return
        with h5py.File(victim, "w") as v:
            v[key] = array
        if how == "virtual dataset":
            layout = h5py.VirtualLayout(array.shape, array.dtype)
            layout[...] = h5py.VirtualSource(str(victim), key, shape=array.shape)
            f.create_virtual_dataset(key, layout)
        elif how == "external link":
            f[key] = h5py.ExternalLink(str(victim), "/" + key)
        else:  # a soft link, here to a dataset of its own; it could as well lead to an external one
            f["stored"] = array
            f[key] = h5py.SoftLink("/stored")


@pytest.mark.parametrize("how, said", [("external storage", "stored in other files"),
                                       ("virtual dataset", "a virtual dataset"),
                                       ("external link", "a link to .*victim"), ("soft link", "a link to /stored")])
@pytest.mark.parametrize("key", ["image", "label"])  # the label as much as the image: both are read
def test_synapse_h5_data_kept_in_other_files_is_refused(roots, tmp_path, how, said, key):
    # otherwise bench would read any local file this user can read as a CT volume (and predict it)
    from bench.data import synapse as syn

    root = _copy(roots["synapse"], tmp_path)
    path = root / "test_vol_h5" / "case0008.npy.h5"
    _h5_reading_elsewhere(path, how, tmp_path / "victim", key)
    ds = open_dataset("synapse", root)
    for read in (lambda: ds.load_test("case0008"), lambda: syn.volume_header(path),
                 lambda: syn.volume_labels(path), lambda: syn.volume_spacing(path)):
        with pytest.raises(BenchError, match=rf"{re.escape(str(path))}: '{key}' is {said}[^;]*; expected 'image' and "
                                             "'label' stored in the file itself"):
            read()


def test_synapse_without_spacing_attribute(roots, tmp_path):
    root = _copy(roots["synapse"], tmp_path)
    with h5py.File(root / "test_vol_h5" / "case0008.npy.h5", "a") as f:
        del f.attrs["spacing"]  # the real files have none
    assert open_dataset("synapse", root).load_test("case0008").spacing is None


# --- ISIC / polyp ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["isic17", "isic18"])
def test_isic_reader(roots, name):
    ds = open_dataset(name, roots["isic"])
    assert ds.name == name and (ds.num_classes, ds.in_chans, ds.binary) == (1, 3, True)
    assert ds.class_names == ("lesion",) and ds.default_policy == "legacy-isic"
    assert ds.train_ids() == [f"ISIC_{i:07d}" for i in range(4)]
    assert ds.test_ids() == [f"ISIC_{i:07d}" for i in range(4, 7)]  # test = val/, as the authors
    shapes = set()
    for item in ds.train_ids():
        s = ds.load_train(item)
        assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.image.shape[2] == 3
        assert s.label.dtype == np.float32 and s.label.shape == s.image.shape[:2]
        assert set(np.unique(s.label)) == {0.0, 1.0}
        assert s.image.shape[0] != s.image.shape[1]
        shapes.add(s.image.shape)
        # the lesion is darker than the skin: the data is learnable
        gray = s.image.mean(axis=2)
        assert gray[s.label > 0.5].mean() < gray[s.label < 0.5].mean() - 40
    assert len(shapes) > 1
    case = ds.load_test(ds.test_ids()[0])
    assert not case.is_volume and case.spacing is None


def test_isic_missing_mask_is_a_clear_error(roots, tmp_path):
    root = _copy(roots["isic"], tmp_path)
    (root / "train" / "masks" / "ISIC_0000002_segmentation.png").unlink()
    with pytest.raises(BenchError, match=r"ISIC_0000002\.png: no mask with a matching name in .*train/masks"):
        open_dataset("isic17", root)


def test_isic_size_mismatch_names_both_files(roots, tmp_path):
    root = _copy(roots["isic"], tmp_path)
    mask = root / "val" / "masks" / "ISIC_0000005_segmentation.png"
    Image.open(mask).resize((10, 12)).save(mask)
    ds = open_dataset("isic17", root)
    with pytest.raises(BenchError, match=r"ISIC_0000005_segmentation\.png: mask size 10x12 .*ISIC_0000005\.png"):
        ds.load_test("ISIC_0000005")


def _write_pair(folder: Path, image: str, mask: str, size: int) -> None:
    for sub, name, arr in (("images", image, np.full((size, size, 3), 90, np.uint8)),
                           ("masks", mask, np.full((size, size), 255, np.uint8))):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(folder / sub / name)


def test_isic_pairs_masks_by_name_where_the_names_correspond(tmp_path):
    """Sorted order puts img10 before img2 and img10_mask before img1_mask: pairing by sorted name
    would give img1 the mask of img10. Names that correspond pair by name; another naming scheme
    pairs by sorted name, as the authors' loaders; names that half correspond are refused."""
    from bench.data.image_folders import pair_files

    root = tmp_path / "isic"
    for split in ("train", "val"):
        for i, size in ((1, 10), (10, 12), (2, 14)):
            _write_pair(root / split, f"img{i}.png", f"img{i}_mask.png", size)
    ds = open_dataset("isic17", root)
    assert ds.train_ids() == ["img1", "img10", "img2"]
    assert [ds.load_test(c).label.shape for c in ds.test_ids()] == [(10, 10), (12, 12), (14, 14)]  # no size error

    other = tmp_path / "other"
    for i in range(3):
        _write_pair(other, f"scan_{i}.png", f"label_{i}.png", 10 + i)
    pairs, problems = pair_files(other / "images", other / "masks")
    assert problems == [] and [(a.name, b.name) for a, b in pairs] == [(f"scan_{i}.png", f"label_{i}.png")
                                                                       for i in range(3)]

    # sorted order pairs 001.jpg with 10_mask.png ("10_" sorts before "1_"): the numbers in the names
    # disagree, so the pairs are refused (they were read as they sorted, unsaid)
    shifted = tmp_path / "shifted"
    for i in (1, 2, 10):
        _write_pair(shifted, f"{i:03d}.png", f"{i}_mask_v2.png", 8)  # "_v2": a number both need not share
    pairs, problems = pair_files(shifted / "images", shifted / "masks")
    assert pairs == [] and [(p.name, m) for p, m in problems] == [(
        "10_mask_v2.png", "paired by sorted file name with 001.png (no mask is named after its image), but the numbers "
        "in the names differ (and in 1 more pairs); expected masks named after their images (ISIC_0000000.jpg ↔ "
        "ISIC_0000000_segmentation.png) or names that sort alike")]
    for i in (1, 2, 10):
        (shifted / "masks" / f"{i}_mask_v2.png").rename(shifted / "masks" / f"{i:03d}_mask_v2.png")
    pairs, problems = pair_files(shifted / "images", shifted / "masks")
    assert problems == [] and [(a.name, b.name) for a, b in pairs][2] == ("010.png", "010_mask_v2.png")

    # two images of one name would share one mask
    (root / "val" / "images" / "img2.jpg").write_bytes((root / "val" / "images" / "img2.png").read_bytes())
    pairs, problems = pair_files(root / "val" / "images", root / "val" / "masks")
    assert pairs == [] and [(p.name, m) for p, m in problems] == [
        ("img2.png", "a second image named 'img2' beside img2.jpg; expected one per name")]

    half = tmp_path / "half"
    for image, mask in (("a.png", "a_seg.png"), ("b.png", "c_seg.png"), ("c.png", "d_seg.png")):
        _write_pair(half, image, mask, 8)
    pairs, problems = pair_files(half / "images", half / "masks")
    assert sorted((p.name, m.split(" in ")[0]) for p, m in problems) == [
        ("b.png", "no mask with a matching name"), ("d_seg.png", "no image with a matching name")]
    # the pairs that could be made all the same: verify reads them too (readers refuse the folder)
    assert [(a.name, b.name) for a, b in pairs] == [("a.png", "a_seg.png"), ("c.png", "c_seg.png")]

    # a mask belongs to the longest image name it starts with, cut at "_" or "-": a_b_seg is a_b's, not a's
    nested = tmp_path / "nested"
    for image, mask in (("a.png", "a_seg.png"), ("a_b.png", "a_b_seg.png"), ("c.png", "c-gt.png")):
        _write_pair(nested, image, mask, 8)
    pairs, problems = pair_files(nested / "images", nested / "masks")
    assert problems == [] and [(a.name, b.name) for a, b in pairs] == [
        ("a.png", "a_seg.png"), ("a_b.png", "a_b_seg.png"), ("c.png", "c-gt.png")]

    # BUSI's second lesion, a mask of its own: named, and what to do said
    busi = tmp_path / "busi"
    _write_pair(busi, "benign (1).png", "benign (1)_mask.png", 8)
    _write_pair(busi, "benign (2).png", "benign (2)_mask.png", 8)
    (busi / "masks" / "benign (1)_mask_1.png").write_bytes((busi / "masks" / "benign (1)_mask.png").read_bytes())
    pairs, problems = pair_files(busi / "images", busi / "masks")
    assert [(a.name, b.name) for a, b in pairs] == [("benign (2).png", "benign (2)_mask.png")]  # the other
    assert [(p.name, m) for p, m in problems] == [(
        "benign (1).png", "2 masks match its name: benign (1)_mask.png, benign (1)_mask_1.png; one mask per image: "
        "merge them (their pixel-wise maximum; `bench data convert --source pairs` does, into the nnU-Net layout), or "
        "move the others away")]


def test_verify_warns_of_a_multi_class_mask_in_a_binary_dataset(roots, tmp_path):
    """A mask holding a second class as grey 128 (or 127) passed: values >= 128 train as lesion, the
    rest as background, unsaid. Soft or JPEG-noisy edges are no such thing."""
    import io as _io

    from PIL import ImageFilter

    root = _copy(roots["isic"], tmp_path)
    masks = sorted((root / "train" / "masks").iterdir())
    for path, value in zip(masks[:2], (128, 127)):
        arr = np.zeros((40, 40), np.uint8)
        arr[5:20, 5:35], arr[20:35, 5:35] = 255, value
        h, w = np.asarray(Image.open(path)).shape[:2]
        Image.fromarray(arr).resize((w, h), Image.NEAREST).save(path)
    soft = Image.fromarray(np.pad(np.full((20, 20), 255, np.uint8), 10)).filter(ImageFilter.GaussianBlur(2))
    h, w = np.asarray(Image.open(masks[2])).shape[:2]
    soft.resize((w, h)).save(masks[2])
    buf = _io.BytesIO()
    soft.resize((w, h)).save(buf, "JPEG", quality=60)  # Kvasir's masks are JPEGs
    Image.open(buf).save(masks[3])
    warned = {p.path: p.message for p in verify_dataset("isic17", root) if p.level == "warning"}
    assert sorted(warned) == sorted(str(m) for m in masks[:2])
    assert "grey value 128 beside 0/255: several classes in one mask? The binary task counts values >= 128 as " \
           "foreground, so they become foreground" in warned[str(masks[0])]
    assert "so they become background" in warned[str(masks[1])]


def test_a_test_set_folder_without_images_is_an_error_not_a_set_left_out(roots, tmp_path):
    root = _copy(roots["polyp"], tmp_path)
    (root / "TestDataset" / "__MACOSX").mkdir()  # what unzipping on a Mac leaves: no test set
    (root / "TestDataset" / ".cache").mkdir()
    assert open_dataset("polyp", root).sets == ["CVC-ClinicDB", "Kvasir"]
    kvasir = root / "TestDataset" / "Kvasir"
    (kvasir / "images").rename(kvasir / "Images")
    with pytest.raises(BenchError, match=r"Kvasir: a test set needs images/ and masks/ folders \(found Images/, masks/\)"):
        open_dataset("polyp", root)
    assert _paths(verify_dataset("polyp", root)) == [str(kvasir)]


def test_polyp_reader(roots):
    ds = open_dataset("polyp", roots["polyp"])
    assert ds.sets == ["CVC-ClinicDB", "Kvasir"] and ds.class_names == ("polyp",) and ds.binary
    assert len(ds.train_ids()) == 3
    assert ds.test_ids() == ["CVC-ClinicDB/1", "CVC-ClinicDB/2", "Kvasir/1", "Kvasir/2"]
    assert (roots["polyp"] / "TestDataset" / "Kvasir" / "images" / "1.jpg").is_file()
    case = ds.load_test("Kvasir/2")  # a JPEG image with a PNG mask
    assert case.image.dtype == np.uint8 and case.image.shape[:2] == case.label.shape
    assert set(np.unique(case.label)) == {0.0, 1.0}


def test_isic_all_reader(roots):
    """VM-UNet-V2's Isic_datasets: train/ holds both years' training images, val/<year>/ each
    year's test images; read by the polyp reader's logic with ISIC's folder names."""
    from bench.data.isic import IsicAllDataset, MultiSetDataset
    from bench.data.polyp import PolypDataset

    root = roots["isic_all"]
    ds = open_dataset("isic_all", root)
    assert ds.name == "isic_all" and (ds.num_classes, ds.in_chans, ds.binary) == (1, 3, True)
    assert ds.class_names == ("lesion",) and ds.default_policy == "legacy-isic"
    assert ds.sets == ["isic17", "isic18"]
    assert ds.train_ids() == [f"ISIC_{i:07d}" for i in range(3)]
    assert ds.test_ids() == ["isic17/ISIC_0000003", "isic17/ISIC_0000004", "isic18/ISIC_0000005", "isic18/ISIC_0000006"]
    assert (root / "val" / "isic18" / "masks" / "ISIC_0000005_segmentation.png").is_file()
    case = ds.load_test("isic18/ISIC_0000005")
    assert case.image.dtype == np.uint8 and case.image.shape[:2] == case.label.shape
    assert set(np.unique(case.label)) == {0.0, 1.0}
    gray = case.image.mean(axis=2)
    assert gray[case.label > 0.5].mean() < gray[case.label < 0.5].mean() - 40  # isic's dark lesion
    # one reader, two folder namings: neither subclass has loading code of its own
    for reader in (IsicAllDataset, PolypDataset):
        assert issubclass(reader, MultiSetDataset) and "__init__" not in vars(reader)


def test_isic_all_refuses_a_single_year_folder(roots):
    # a VM-UNet isic17/isic18 folder has val/images/, not val/<set>/images/
    with pytest.raises(BenchError, match=r"/val: no test set folders with images/; expected .*val/<set>"):
        open_dataset("isic_all", roots["isic"])
    with pytest.raises(BenchError, match=r"val/images"):  # and the other way round
        open_dataset("isic17", roots["isic_all"])


# --- nnU-Net ---------------------------------------------------------------------------------


def test_nnunet_volumes(roots):
    ds = open_dataset("nnunet", roots["nnunet"])
    assert (ds.num_classes, ds.in_chans, ds.binary, ds.default_policy) == (3, 1, False, "strict")
    assert ds.class_names == ("organ", "lesion")
    train, test = fixed_split([f"synth_{i:03d}" for i in range(5)])
    assert ds.test_ids() == test and len(test) == 1
    ids = ds.train_ids()
    assert len(ids) == 4 * 6 and ids[0] == f"{train[0]}:0" and ids[5] == f"{train[0]}:5"
    case = ds.load_test(test[0])
    assert case.image.shape == case.label.shape == (6, 32, 32) and case.image.dtype == np.float32
    assert case.label.dtype == np.int64 and set(np.unique(case.label)) == {0, 1, 2}
    assert case.spacing == (3.0, 0.8, 0.8)  # (z, y, x) from the header zooms (0.8, 0.8, 3.0)
    vol = ds.load_test(train[0])
    s = ds.load_train(f"{train[0]}:4")
    np.testing.assert_array_equal(s.image, vol.image[4])
    np.testing.assert_array_equal(s.label, vol.label[4])


def test_nnunet_axes_and_spacing_follow_the_header(tmp_path):
    # an asymmetric (x, y, z) volume must come back as (z, y, x) with zooms reordered: the image's, as nnU-Net
    # takes them, where the label's header differs within the tolerance of one grid
    root = tmp_path / "Dataset001_Axes"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    xyz = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    affine, label_affine = np.diag([0.5, 0.7, 2.0, 1.0]), np.diag([0.50002, 0.7, 2.0, 1.0])
    for case in ("a", "b"):
        nib.save(nib.Nifti1Image(xyz, affine), str(root / "imagesTr" / f"{case}_0000.nii.gz"))
        nib.save(nib.Nifti1Image((xyz % 2).astype(np.uint8), label_affine), str(root / "labelsTr" / f"{case}.nii.gz"))
    meta = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "odd": 1}, "numTraining": 2,
            "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    ds = open_dataset("nnunet", root)
    case = ds.load_test(ds.test_ids()[0])
    assert case.image.shape == (3, 5, 4) and case.spacing == (2.0, 0.7, 0.5)
    np.testing.assert_array_equal(case.image, xyz.transpose(2, 1, 0))
    assert ds.train_ids() == [f"{ds.train_ids()[0].split(':')[0]}:{z}" for z in range(3)]


def test_nnunet_png(roots):
    ds = open_dataset("nnunet", roots["nnunet2d"])
    assert ds.num_classes == 3 and ds.train_ids() == fixed_split([f"synth_{i:03d}" for i in range(5)])[0]
    s = ds.load_train(ds.train_ids()[0])
    assert s.image.ndim == 2 and s.image.dtype == np.float32 and s.label.dtype == np.int64
    assert s.image.shape == s.label.shape and s.image.shape[0] != s.image.shape[1]
    case = ds.load_test(ds.test_ids()[0])
    assert not case.is_volume and case.spacing is None


def test_nnunet_refuses_what_it_would_read_wrong(roots, tmp_path):
    """A multi-page TIFF (Pillow reads its first page), a palette image (its pixels are indices),
    channel_names keys that are no channel indices, an image holding NaN: each one clear error."""
    from bench.data.nnunet import parse_dataset_json, read_png

    pages = [Image.fromarray(np.full((6, 7), v, np.uint8)) for v in (0, 50, 100, 150)]
    pages[0].save(tmp_path / "a_0000.tiff", save_all=True, append_images=pages[1:])
    with pytest.raises(BenchError, match=r"a_0000\.tiff: 4 pages; expected a 2-D image"):
        read_png(tmp_path / "a_0000.tiff")
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    palette.putpalette([10, 10, 10, 250, 250, 250] + [0] * 762)
    palette.save(tmp_path / "p.png")
    with pytest.raises(BenchError, match=r"p\.png: a palette image"):
        read_png(tmp_path / "p.png")
    assert read_png(tmp_path / "p.png", label=True).tolist() == [[0, 1], [1, 0]]  # a label's palette holds ids

    meta = json.loads((roots["nnunet2d"] / "dataset.json").read_text(encoding="utf-8"))
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, "channel_names": {"R": "R", "G": "G"}}),
                                           encoding="utf-8")
    with pytest.raises(BenchError, match=r"channel_names keys must be 0\.\.1, got \['G', 'R'\]"):
        parse_dataset_json(tmp_path / "dataset.json")
    # a quoted id, nnU-Net's region lists: each named as what it is (both were "no regions")
    for value, said in (("1", "not a whole number (write 1 without quotes)"),
                        ([1, 2], "a list of ids: region-based training, which is not supported")):
        (tmp_path / "dataset.json").write_text(json.dumps({**meta, "labels": {"background": 0, "lesion": value}}),
                                               encoding="utf-8")
        with pytest.raises(BenchError, match=rf"label 'lesion' = {re.escape(repr(value))}: {re.escape(said)}"):
            parse_dataset_json(tmp_path / "dataset.json")
    # a line break in a class name split a Markdown board's header row in two (verify called it OK)
    for name in ("Leber\nNeu", "a\tb", " "):
        (tmp_path / "dataset.json").write_text(json.dumps({**meta, "labels": {"background": 0, name: 1}}),
                                               encoding="utf-8")
        with pytest.raises(BenchError, match=rf"label name {re.escape(repr(name))}: expected printable text on one line"):
            parse_dataset_json(tmp_path / "dataset.json")
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, "labels": {"background": 0, "Läsion 肝臓 & $5": 1}}),
                                           encoding="utf-8")
    assert parse_dataset_json(tmp_path / "dataset.json")["labels"] == {"background": 0, "Läsion 肝臓 & $5": 1}

    root = _copy(roots["nnunet"], tmp_path)
    ds = open_dataset("nnunet", root)
    path = root / "imagesTr" / f"{ds.train_volume_ids()[0]}_0000.nii.gz"
    img = nib.load(str(path))
    arr = np.asarray(img.dataobj).astype(np.float32)
    arr[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(arr, img.affine), str(path))
    with pytest.raises(BenchError, match=rf"{path.name}: image holds NaN or infinite values"):
        open_dataset("nnunet", root).load_train(ds.train_ids()[0])  # a slice of that case
    assert _paths(verify_dataset("nnunet", root)) == [str(path)]


def test_synapse_ignores_hidden_files_and_a_byte_order_mark(roots, tmp_path):
    """macOS leaves ._ copies beside the files (read without lists they were cases); a list saved by
    a Windows editor starts with a byte-order mark."""
    root = _copy(roots["synapse"], tmp_path)
    shutil.rmtree(root / "lists")
    (root / "train_npz" / "._case0005_slice000.npz").write_bytes(b"\x00\x05\x16\x07")
    (root / "test_vol_h5" / "._case0008.npy.h5").write_bytes(b"\x00\x05\x16\x07")
    ds = open_dataset("synapse", root)
    assert ds.train_ids() == open_dataset("synapse", roots["synapse"]).train_ids()
    assert ds.test_ids() == ["case0008", "case0022"]
    assert _paths(verify_dataset("synapse", root)) == []
    (root / "lists" / "lists_Synapse").mkdir(parents=True)
    (root / "lists" / "lists_Synapse" / "test_vol.txt").write_text("case0022\r\ncase0008\r\n", encoding="utf-8-sig")
    assert open_dataset("synapse", root).test_ids() == ["case0022", "case0008"]


def test_nnunet_ignores_the_macos_copies_beside_its_cases(roots, tmp_path):
    """A folder zipped on macOS (MSD's archives too) unpacks with a ``._`` AppleDouble file beside each file: in
    labelsTr and imagesTr they are no cases (numTraining would not match, a case would not decode)."""
    root = _copy(roots["nnunet2d"], tmp_path)
    cases = open_dataset("nnunet", root).cases
    (root / "labelsTr" / f"._{cases[0]}.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    (root / "imagesTr" / f"._{cases[0]}_0000.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    assert open_dataset("nnunet", root).cases == cases and verify_dataset("nnunet", root) == []


def test_nnunet_fixed_split_is_deterministic():
    ids = [f"c{i:02d}" for i in range(12)]
    train, test = fixed_split(ids)
    assert fixed_split(list(reversed(ids))) == (train, test)  # depends only on the set of ids
    assert len(test) == 2 and sorted(train + test) == ids and not set(train) & set(test)
    assert test == sorted(test) and train == sorted(train)
    # pinned: a change in numpy's generator or in our rule would silently move cases between splits
    perm = np.random.default_rng(12345).permutation(12)
    assert test == sorted(ids[i] for i in perm[-2:])
    assert len(fixed_split(ids[:3])[1]) == 1  # at least one test case
    with pytest.raises(BenchError, match="at least 2 cases"):
        fixed_split(ids[:1])


def test_nnunet_uses_splits_final_fold0(roots, tmp_path):
    root = _copy(roots["nnunet2d"], tmp_path)
    cases = [f"synth_{i:03d}" for i in range(5)]
    folds = [{"train": cases[:3], "val": cases[3:]}, {"train": cases[2:], "val": cases[:2]}]
    (root / "splits_final.json").write_text(json.dumps(folds), encoding="utf-8")
    ds = open_dataset("nnunet", root)
    assert ds.train_ids() == cases[:3] and ds.test_ids() == cases[3:]
    (root / "splits_final.json").write_text(json.dumps([{"train": ["ghost"], "val": []}]), encoding="utf-8")
    with pytest.raises(BenchError, match="splits_final.json.*ghost"):
        open_dataset("nnunet", root)
    # ids written with their file ending: five named, the rest counted
    (root / "splits_final.json").write_text(json.dumps([{"train": [f"{c}.png" for c in cases[:3]] + ["a", "b"],
                                                         "val": [f"{c}.png" for c in cases[3:]]}]), encoding="utf-8")
    with pytest.raises(BenchError, match=r"fold 0 names cases without a label file: a, b, synth_000\.png, "
                                         r"synth_001\.png, synth_002\.png \(and 2 more\)"):
        open_dataset("nnunet", root)


@pytest.mark.parametrize("splits, why", [
    ([], "no folds; expected a non-empty list of {\"train\": [...], \"val\": [...]} folds"),
    ([{"train": ["synth_000"]}], "expected a non-empty list of {\"train\": [...], \"val\": [...]} folds "
                                 "(KeyError: 'val')"),
    ({"train": [], "val": []}, "(TypeError: string indices must be integers, not 'str')"),
    # a nested list failed unhashable (a traceback), a string was read as its letters
    ([{"train": [["synth_000"]], "val": ["synth_001"]}], "folds: fold 0's \"train\" list holds [['synth_000']], "
                                                         "not a list of case ids (strings)"),
    ([{"train": ["synth_000"], "val": "synth_001"}], "fold 0's \"val\" list holds synth_001, not a list of case ids "
                                                     "(strings)"),
])
def test_verify_lists_a_split_the_reader_refuses_beside_the_other_problems(roots, tmp_path, splits, why):
    # an empty split was no listed problem: verify stopped at its notes with the reader's bare error (exit 2);
    # a misshapen one lost its exception's type, which bench run names
    root = _copy(roots["nnunet2d"], tmp_path)
    (root / "splits_final.json").write_text(json.dumps(splits), encoding="utf-8")
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": 11}), encoding="utf-8")
    errors = {p.path: p.message for p in verify_dataset("nnunet", root) if p.level == "error"}
    assert errors[str(root / "splits_final.json")].endswith(why) and "numTraining is 11" in errors[
        str(root / "dataset.json")]
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(BenchError) as alone:
        open_dataset("nnunet", root)
    assert str(alone.value) == f"{root / 'splits_final.json'}: {errors[str(root / 'splits_final.json')]}"


def test_nnunet_num_training_must_match(roots, tmp_path):
    root = _copy(roots["nnunet2d"], tmp_path)
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": 7}), encoding="utf-8")
    with pytest.raises(BenchError, match=r"dataset.json: numTraining is 7 but .*labelsTr holds 5 '\*\.png' label files$"):
        open_dataset("nnunet", root)
    # a wrong file_ending reads as a wrong count: the ending the files have is named
    (root / "dataset.json").write_text(json.dumps({**meta, "file_ending": ".bmp"}), encoding="utf-8")
    why = "holds 0 '*.bmp' label files; and 5 '*.png' files: is file_ending '.png'?"
    with pytest.raises(BenchError, match=re.escape(why)):
        open_dataset("nnunet", root)
    assert any(p.message.endswith(why.replace("label files", "files")) for p in verify_dataset("nnunet", root))
    # labels saved as JPEG: not "is file_ending '.jpg'?", which the next run refuses, but what to save them as
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    for label in (root / "labelsTr").glob("*.png"):
        label.rename(label.with_suffix(".jpg"))
    with pytest.raises(BenchError, match=re.escape("holds 0 '*.png' label files; and 5 '*.jpg' files, which bench does "
                                                   "not read as labels (JPEG's compression changes the ids at edges): "
                                                   "save them in a lossless format bench reads (.nii.gz")):
        open_dataset("nnunet", root)
    # an ending in capitals, or dots in the case ids: the ending is the file's last known one
    for i, label in enumerate(sorted((root / "labelsTr").glob("*.jpg"))):
        label.rename(label.with_name(f"case.v{i}.PNG"))
    with pytest.raises(BenchError, match=re.escape("and 5 '*.PNG' files: rename them to end in '.png'")):
        open_dataset("nnunet", root)


# --- synthetic generator ---------------------------------------------------------------------


def _arrays(root: Path) -> dict[str, np.ndarray]:
    """Every array in a dataset folder, keyed by relative path (+ key)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.suffix == ".npz":
            with np.load(p) as d:
                out.update({f"{rel}:{k}": d[k] for k in d.files})
        elif p.name.endswith(".h5"):
            with h5py.File(p) as f:
                out.update({f"{rel}:{k}": f[k][:] for k in f})
        elif p.suffix in (".png", ".jpg"):
            out[rel] = np.asarray(Image.open(p))
        elif p.name.endswith(".nii.gz"):
            out[rel] = np.asarray(nib.load(str(p)).dataobj)
    return out


@pytest.mark.parametrize(
    "kind, opts",
    [("synapse", SYN), ("isic", ISIC), ("polyp", POLYP), ("nnunet", NN3), ("nnunet", dict(dims=2, n_cases=3, size=32)),
     ("isic_all", ISIC_ALL)],
)
def test_synth_is_deterministic(tmp_path, kind, opts):
    a = _arrays(synthesize(kind, tmp_path / "a", seed=3, **opts))
    b = _arrays(synthesize(kind, tmp_path / "b", seed=3, **opts))
    c = _arrays(synthesize(kind, tmp_path / "c", seed=4, **opts))
    assert a and a.keys() == b.keys() == c.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert any(not np.array_equal(a[k], c[k]) for k in a)  # the seed matters


def test_synth_formats_match_the_real_files(roots):
    root = roots["synapse"]
    with np.load(root / "train_npz" / "case0005_slice000.npz") as d:
        assert sorted(d.files) == ["image", "label"] and d["image"].dtype == np.float32
        assert d["label"].dtype.kind in "iu"
    train = (root / "lists" / "lists_Synapse" / "train.txt").read_text(encoding="utf-8")
    assert train.splitlines()[0] == "case0005_slice000"
    assert "case0008.npy.h5" in (root / "lists" / "lists_Synapse" / "all.lst").read_text(encoding="utf-8")
    with Image.open(roots["isic"] / "train" / "masks" / "ISIC_0000000_segmentation.png") as m:
        assert m.mode == "L" and set(np.unique(np.asarray(m))) == {0, 255}
    meta = json.loads((roots["nnunet"] / "dataset.json").read_text(encoding="utf-8"))
    assert meta["numTraining"] == 5 and meta["file_ending"] == ".nii.gz" and meta["labels"]["background"] == 0
    img = nib.load(str(roots["nnunet"] / "imagesTr" / "synth_000_0000.nii.gz"))
    assert img.shape == (32, 32, 6) and np.allclose(img.header.get_zooms(), (0.8, 0.8, 3.0))


def test_synth_organs_have_distinct_intensities(roots):
    case = open_dataset("synapse", roots["synapse"]).load_test("case0008")
    means = sorted(float(case.image[case.label == k].mean()) for k in range(1, 9))
    assert min(np.diff(means)) > 0.02


def test_synth_refuses_to_overwrite_and_leaves_no_temp(tmp_path):
    import os
    import time

    from bench.fileio import TEMP_MARK

    # writers of the same folder killed a day ago left their temp folders (one under an older version's
    # name): this write removes them
    killed, older = tmp_path / f".isic.{TEMP_MARK}999@elsewhere~k1ll3d00", tmp_path / ".isic.tmp-999-k1ll3d00"
    for path in (killed, older):
        (path / "train").mkdir(parents=True)
        os.utime(path, (time.time() - 2 * 86400,) * 2)
    live = tmp_path / f".isic.{TEMP_MARK}998@elsewhere~wr1t1ng0"  # minutes old: may be a live writer's
    live.mkdir()
    out = synthesize("isic", tmp_path / "isic", n_train=1, n_val=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "isic"]  # own temp folder renamed away
    with pytest.raises(BenchError, match="already exists"):
        synthesize("isic", out, n_train=1, n_val=1)
    with pytest.raises(BenchError, match="synthetic isic data has no setting n_test; its settings"):
        synthesize("isic", tmp_path / "other", n_test=3)


def test_atomic_write_dir_temp_folder_carries_the_mark(tmp_path):
    """The folder being written is named as every temp file is, so the one sweep finds it."""
    from bench.fileio import TEMP_MARK, atomic_write_dir

    seen = []
    atomic_write_dir(tmp_path / "out",
                     lambda tmp: seen.append(tmp.name) or (tmp / "a").write_text("x", encoding="utf-8"))
    assert seen[0].startswith(f".out.{TEMP_MARK}") and (tmp_path / "out" / "a").read_text(encoding="utf-8") == "x"


def test_synthetic_root_is_generated_once(tmp_path):
    root = synthetic_root("nnunet", tmp_path)
    assert root == tmp_path / f"nnunet-synth-v{GENERATOR_VERSION}"
    stamp = (root / "dataset.json").stat().st_mtime_ns
    # a run killed while writing another dataset's synthetic data, then never repeated: its temp folder
    # goes at a later call, once a day old, also where nothing is written then
    import os
    import time

    from bench.fileio import TEMP_MARK

    killed = tmp_path / f".synapse-synth-v{GENERATOR_VERSION}.{TEMP_MARK}999@elsewhere~k1ll3d00"
    older = tmp_path / f".isic-synth-v{GENERATOR_VERSION}.tmp-999-k1ll3d00"  # an older version's name
    for path in (killed, older):
        path.mkdir()
        os.utime(path, (time.time() - 2 * 86400,) * 2)
    assert synthetic_root("nnunet", tmp_path) == root
    assert (root / "dataset.json").stat().st_mtime_ns == stamp and not killed.exists() and not older.exists()
    assert open_dataset("nnunet", root).num_classes == 3


# --- verify ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, key", [("synapse", "synapse"), ("isic18", "isic"), ("polyp", "polyp"),
                                       ("isic_all", "isic_all"), ("nnunet", "nnunet"), ("nnunet", "nnunet2d")])
def test_verify_clean_data(roots, name, key):
    assert verify_dataset(name, roots[key]) == []


def test_verify_synapse_reports_every_problem(roots, tmp_path):
    root = _copy(roots["synapse"], tmp_path)
    npz = root / "train_npz"
    (npz / "case0005_slice001.npz").unlink()  # listed id without file
    data = (npz / "case0005_slice002.npz").read_bytes()
    (npz / "case0005_slice002.npz").write_bytes(data[: len(data) // 2])  # truncated
    with np.load(npz / "case0005_slice003.npz") as d:
        image, label = d["image"], d["label"].copy()
    np.savez(npz / "case0005_slice004.npz", image=image, label=label[:-1])  # shape mismatch
    np.savez(npz / "case0099_slice000.npz", image=image, label=label)  # not listed
    label[0, 0] = 12
    np.savez(npz / "case0005_slice003.npz", image=image, label=label)  # label out of range
    h5 = root / "test_vol_h5" / "case0022.npy.h5"
    h5.write_bytes(h5.read_bytes()[:1000])  # corrupt volume

    problems = verify_dataset("synapse", root)
    by_path = {p.path: p for p in problems}
    assert len(by_path) == len(problems) == 6  # one finding per broken file, nothing else flagged
    assert "listed in" in by_path[str(npz / "case0005_slice001.npz")].message
    assert "cannot read" in by_path[str(npz / "case0005_slice002.npz")].message
    assert "[12]" in by_path[str(npz / "case0005_slice003.npz")].message
    assert "shape" in by_path[str(npz / "case0005_slice004.npz")].message
    assert by_path[str(npz / "case0099_slice000.npz")].level == "warning"
    assert "cannot read" in by_path[str(h5)].message
    assert len(_paths(problems)) == 5


def test_verify_says_synapse_slices_that_cannot_train_are_errors(tmp_path):
    """train_npz/ present but empty is an error, not only the missing lists' warnings; a slice whose image
    is int16 (raw CT, not scaled to [0, 1] floats) is an error naming the dtype: neither can train."""
    npz = tmp_path / "train_npz"
    npz.mkdir()
    assert _paths(verify_dataset("synapse", tmp_path)) == [str(npz)]
    path = npz / "case0001_slice000.npz"
    np.savez(path, image=np.zeros((8, 8), np.int16), label=np.zeros((8, 8), np.uint8))
    errors = [p for p in verify_dataset("synapse", tmp_path) if p.level == "error"]
    assert [p.path for p in errors] == [str(path)] and "image dtype int16" in errors[0].message


def test_verify_isic_reports_missing_mask_size_and_corruption(roots, tmp_path):
    root = _copy(roots["isic"], tmp_path)
    (root / "train" / "masks" / "ISIC_0000001_segmentation.png").unlink()
    mask = root / "val" / "masks" / "ISIC_0000004_segmentation.png"
    Image.open(mask).resize((7, 9)).save(mask)
    image = root / "val" / "images" / "ISIC_0000006.png"
    image.write_bytes(image.read_bytes()[:200])
    errors = _paths(verify_dataset("isic17", root))
    assert str(root / "train" / "images" / "ISIC_0000001.png") in errors  # the image without a mask
    assert str(mask) in errors and str(image) in errors


def test_verify_warns_of_a_mask_without_lesion(tmp_path):
    """An ISIC mask with no lesion pixel (a mask exported blank) trains the model on background only: a
    warning on that mask."""
    root = synthesize("isic", tmp_path / "isic", n_train=2, n_val=2, min_size=40, max_size=60)
    mask = sorted((root / "train" / "masks").iterdir())[0]
    Image.new("L", Image.open(mask).size, 0).save(mask)
    warned = {p.path: p.message for p in verify_dataset("isic17", root) if p.level == "warning"}
    assert warned.get(str(mask)) == "mask is empty (all 0)"
    # and where another image of its folder lacks its mask: every problem at once, not one per run of verify
    missing = sorted((root / "train" / "masks").iterdir())[1]
    missing.unlink()
    found = [p.message.split(" in ")[0] if p.path != str(mask) else "blank" for p in verify_dataset("isic17", root)]
    assert sorted(found) == ["blank", "no mask with a matching name"]


def test_verify_polyp_missing_folder(roots, tmp_path):
    root = _copy(roots["polyp"], tmp_path)
    shutil.rmtree(root / "TestDataset" / "Kvasir" / "masks")
    assert _paths(verify_dataset("polyp", root)) == [str(root / "TestDataset" / "Kvasir" / "masks")]


def test_verify_isic_all_checks_train_and_each_test_set(roots, tmp_path):
    root = _copy(roots["isic_all"], tmp_path)
    shutil.rmtree(root / "val" / "isic18" / "masks")
    (root / "train" / "masks" / "ISIC_0000001_segmentation.png").unlink()
    errors = _paths(verify_dataset("isic_all", root))
    assert str(root / "val" / "isic18" / "masks") in errors
    assert str(root / "train" / "images" / "ISIC_0000001.png") in errors
    shutil.rmtree(root / "val")
    assert str(root / "val") in _paths(verify_dataset("isic_all", root))  # no test set at all


def test_verify_nnunet_problems(roots, tmp_path):
    root = _copy(roots["nnunet"], tmp_path)
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": 6}), encoding="utf-8")
    broken = root / "labelsTr" / "synth_001.nii.gz"
    broken.write_bytes(broken.read_bytes()[:-40])  # truncated: the gzip stream ends early
    lab = root / "labelsTr" / "synth_002.nii.gz"
    arr = np.asarray(nib.load(str(lab)).dataobj).copy()
    arr[0, 0, 0] = 5
    nib.save(nib.Nifti1Image(arr, nib.load(str(lab)).affine), str(lab))
    (root / "imagesTr" / "synth_003_0000.nii.gz").unlink()
    errors = _paths(verify_dataset("nnunet", root))
    assert str(root / "dataset.json") in errors
    assert str(broken) in errors and str(lab) in errors
    assert str(root / "imagesTr" / "synth_003_0000.nii.gz") in errors
    assert len(errors) == 4



def test_verify_warns_where_image_and_label_affines_differ(roots, tmp_path):
    """A label stored flipped, with its affine flipped too, is the same anatomy in the world but
    lies mirrored on the image array; nnU-Net's dataset check warns, and so does verify."""
    root = _copy(roots["nnunet"], tmp_path)
    lab = root / "labelsTr" / "synth_001.nii.gz"
    img = nib.load(str(lab))
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = img.shape[0] - 1
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1], img.affine @ flip), str(lab))
    problems = verify_dataset("nnunet", root)
    assert _paths(problems) == [] and _paths(problems, "warning") == [str(root / "imagesTr" / "synth_001_0000.nii.gz")]
    assert "origin or orientation differs from label synth_001.nii.gz" in problems[0].message
    # bench run says so too, once, before anything trains (it used to say nothing)
    from bench.protocol import load_protocol
    from bench.run import plan_grid

    with pytest.warns(UserWarning, match=rf"{re.escape(str(root))}: 1 of \d+ cases' image and label differ in origin or "
                                         r"orientation \(NIfTI affines; first: synth_001\)"):
        plan_grid(models=["unet"], dataset="nnunet", protocol=load_protocol("smoke"), seeds=[0], data_root=root,
                  synthetic=False, results_dir=tmp_path / "res")

def test_an_image_and_label_on_other_grids_are_refused_before_training(roots, tmp_path):
    """A test case's label written with other zooms (or another shape) than its image: nnU-Net's
    integrity check refuses it. bench run took the image's spacing for the scores and wrote the
    predictions with the label's geometry, so a tool scoring them got other HD95s; a test case of
    another shape failed after the whole training. Both are refused when the run is planned."""
    from bench.protocol import load_protocol
    from bench.run import plan_grid

    root = _copy(roots["nnunet"], tmp_path)
    ds = open_dataset("nnunet", root)
    case = ds.test_ids()[0]
    image_path = root / "imagesTr" / f"{case}_0000.nii.gz"
    zx, zy, zz = (float(f"{z:.7g}") for z in nib.load(str(image_path)).header.get_zooms()[:3])  # float32 zooms
    lab = root / "labelsTr" / f"{case}.nii.gz"
    arr = np.asarray(nib.load(str(lab)).dataobj)
    nib.save(nib.Nifti1Image(arr, np.diag([zx, zy, zz * 2, 1.0])), str(lab))
    why = re.escape(f"{image_path}: spacing (z, y, x) {(zz, zy, zx)} mm differs from label {case}.nii.gz "
                    f"{(2 * zz, zy, zx)} mm; expected image and label on one grid")
    with pytest.raises(BenchError, match=why):
        open_dataset("nnunet", root).load_test(case)
    with pytest.raises(BenchError, match=why):
        plan_grid(models=["unet"], dataset="nnunet", protocol=load_protocol("smoke"), seeds=[0], data_root=root,
                  synthetic=False, results_dir=tmp_path / "res")
    (problem,) = [p for p in verify_dataset("nnunet", root) if p.level == "error"]  # one rule, one message
    assert re.match(why, f"{problem.path}: {problem.message}")
    nib.save(nib.Nifti1Image(arr[:, :, 1:], np.diag([zx, zy, zz, 1.0])), str(lab))  # one slice fewer
    with pytest.raises(BenchError, match=rf"{re.escape(str(image_path))}: shape \(z, y, x\) .* differs from label"):
        plan_grid(models=["unet"], dataset="nnunet", protocol=load_protocol("smoke"), seeds=[0], data_root=root,
                  synthetic=False, results_dir=tmp_path / "res2")


def test_split_problems_map_training_items_to_cases_and_take_test_ids_as_cases():
    from bench.data.base import split_problems

    slices = lambda item: item.rsplit(":", 1)[0]  # noqa: E731 (nnU-Net volumes' slice ids "case:z")
    assert split_problems(["p:0", "p:1", "q:0"], ["p:1"], slices) == []  # a case named "p:1" is not case "p"
    assert split_problems(["p:0", "q:0"], ["p", "r", "r"], slices) == [
        "the test split lists r twice", "p in both the training split and the test split; a test case is never trained on"]


def test_verify_missing_root_and_bad_json(tmp_path):
    assert _paths(verify_dataset("isic17", tmp_path / "none")) == [str(tmp_path / "none")]
    (tmp_path / "dataset.json").write_text("{not json", encoding="utf-8")
    problems = verify_dataset("nnunet", tmp_path)
    assert [p.path for p in problems] == [str(tmp_path / "dataset.json")] and "JSON" in problems[0].message


def _sklearn_kfold(ids, n_splits=5, seed=12345):
    """nnU-Net v2's generate_crossval_split(sorted ids, 12345, 5), restated from sklearn's source
    (KFold._iter_test_indices + BaseCrossValidator.split) so the test does not use the code under
    test: arange(n) shuffled by check_random_state(seed) == RandomState(seed); consecutive test
    chunks of n // k, the first n % k one larger; train and test indices from a boolean mask."""
    ids = sorted(ids)
    n = len(ids)
    indices = np.arange(n)
    np.random.RandomState(seed).shuffle(indices)
    fold_sizes = np.full(n_splits, n // n_splits, dtype=int)
    fold_sizes[: n % n_splits] += 1
    out, current = [], 0
    for fold_size in fold_sizes:
        mask = np.zeros(n, dtype=bool)
        mask[indices[current:current + fold_size]] = True
        current += fold_size
        out.append({"train": list(np.array(ids)[np.arange(n)[~mask]]), "val": list(np.array(ids)[np.arange(n)[mask]])})
    return out


# The splits_final.json nnU-Net v2 wrote for a 20-case dataset (github.com/atOliverParkerMorgan/
# Bachelor-Thesis, splits_final.json at 0fdd6a19): the "val" lists of its 5 folds, in its order.
NNUNET_20_CASES = sorted(f"dub_{a}_part{p}" for a in (1, 5, 11, 37) for p in range(5))
NNUNET_20_VAL = [
    ["dub_11_part3", "dub_1_part3", "dub_37_part3", "dub_5_part1"],
    ["dub_11_part0", "dub_37_part0", "dub_37_part2", "dub_5_part0"],
    ["dub_1_part1", "dub_1_part2", "dub_37_part1", "dub_5_part2"],
    ["dub_1_part4", "dub_37_part4", "dub_5_part3", "dub_5_part4"],
    ["dub_11_part1", "dub_11_part2", "dub_11_part4", "dub_1_part0"],
]


def test_crossval_splits_are_nnunets():
    from bench.data.nnunet import crossval_splits, kfold_split

    # hand-computed: RandomState(12345).shuffle(arange(7)) == [6, 3, 4, 0, 1, 5, 2], sizes 2,2,1,1,1
    ids7 = [f"c{i}" for i in range(7)]
    assert np.random.RandomState(12345).permutation(7).tolist() == [6, 3, 4, 0, 1, 5, 2]
    assert [f["val"] for f in crossval_splits(ids7)] == [["c3", "c6"], ["c0", "c4"], ["c1"], ["c5"], ["c2"]]
    assert crossval_splits(ids7)[0]["train"] == ["c0", "c1", "c2", "c4", "c5"]
    # RandomState(12345).shuffle(arange(10)) == [0, 7, 3, 9, 6, 4, 1, 8, 5, 2], five parts of 2
    ids10 = [f"c{i}" for i in range(10)]
    assert [f["val"] for f in crossval_splits(ids10)] == [["c0", "c7"], ["c3", "c9"], ["c4", "c6"],
                                                          ["c1", "c8"], ["c2", "c5"]]
    # what nnU-Net itself wrote (real sklearn), train lists included
    splits = crossval_splits(list(reversed(NNUNET_20_CASES)))  # input order does not matter
    assert [f["val"] for f in splits] == NNUNET_20_VAL
    assert [f["train"] for f in splits] == [[c for c in NNUNET_20_CASES if c not in v] for v in NNUNET_20_VAL]
    for n in range(5, 41):
        ids = [f"case_{i:03d}" for i in range(n)]
        splits = crossval_splits(ids)
        assert splits == _sklearn_kfold(ids)
        vals = [c for f in splits for c in f["val"]]
        assert sorted(vals) == ids  # every case is validated exactly once
        for k, f in enumerate(splits):
            assert f["train"] == sorted(f["train"]) and f["val"] == sorted(f["val"])  # nnU-Net's order
            assert not set(f["train"]) & set(f["val"]) and sorted(f["train"] + f["val"]) == ids
            assert len(f["val"]) == n // 5 + (k < n % 5)
            assert kfold_split(ids, k) == (f["train"], f["val"])
    with pytest.raises(BenchError, match="needs at least 5 cases"):
        crossval_splits(ids7[:4])


def test_nnunet_folds_without_splits_file_are_nnunets(roots, tmp_path):
    from bench.data.nnunet import crossval_splits

    cases = [f"synth_{i:03d}" for i in range(5)]
    expected = crossval_splits(cases)
    root = _copy(roots["nnunet2d"], tmp_path)
    for k in range(5):
        ds = open_dataset("nnunet", root, fold=k)
        assert (ds.train_ids(), ds.test_ids()) == (expected[k]["train"], expected[k]["val"])
        assert "nnU-Net v2" in ds.notes[-1]
    assert not (root / "splits_final.json").exists()  # nothing written next to the data
    # a provided splits_final.json is used as it is, order included, even where it differs
    mine = [{"train": cases[1:][::-1], "val": cases[:1]}] + expected[1:]
    (root / "splits_final.json").write_text(json.dumps(mine), encoding="utf-8")
    ds = open_dataset("nnunet", root, fold=0)
    assert (ds.train_ids(), ds.test_ids()) == (cases[1:][::-1], cases[:1]) != (expected[0]["train"], expected[0]["val"])
    assert "splits_final.json" in ds.notes[-1]


def test_fold_runs_are_identified_by_their_cases(roots, tmp_path):
    """A fold's run id follows the cases it tests: the same split written out as splits_final.json
    keeps the ids, a different one gives new runs instead of reusing records of other cases."""
    from bench.data.nnunet import crossval_splits
    from bench.protocol import load_protocol
    from bench.run import plan_grid

    from bench.data.synth import MARKER, WRITTEN

    root = _copy(roots["nnunet2d"], tmp_path)
    # its marker taken at its word (as bench wrote it before it kept the files' ids): a split file written
    # into the data leaves the data's id, so the ids follow what the folds' cases do alone
    marker = json.loads((root / MARKER).read_text(encoding="utf-8"))
    (root / MARKER).write_text(json.dumps({k: v for k, v in marker.items() if k != WRITTEN}, sort_keys=True) + "\n",
                               encoding="utf-8")

    def keys():
        specs = plan_grid(models=["unet"], dataset="nnunet", protocol=load_protocol("smoke"), seeds=[0],
                          data_root=root, synthetic=False, results_dir=tmp_path / "res", folds="all")
        return [s.key for s in specs]

    generated = keys()
    assert len(set(generated)) == 5
    splits = crossval_splits([f"synth_{i:03d}" for i in range(5)])
    (root / "splits_final.json").write_text(json.dumps(splits), encoding="utf-8")
    assert keys() == generated  # the same folds, written out
    splits[0], splits[1] = splits[1], splits[0]
    (root / "splits_final.json").write_text(json.dumps(splits), encoding="utf-8")
    now = keys()
    assert now[0] != generated[0] and now[1] != generated[1] and now[2:] == generated[2:]


def test_data_written_on_windows_keeps_its_id(tmp_path, monkeypatch):
    """Windows writes text with CRLF in the local code page unless told otherwise: dataset.json came out
    larger there, so the same data had another id (and another run id)."""
    here = open_dataset("nnunet", synthesize("nnunet", tmp_path / "linux", dims=2, n_cases=2, size=32)).content_id()
    write_text = Path.write_text

    def windows_default(self, data, encoding=None, errors=None, newline=None):
        return write_text(self, data, encoding=encoding or "cp1252", errors=errors,
                          newline="\r\n" if newline is None else newline)

    monkeypatch.setattr(Path, "write_text", windows_default)
    there = synthesize("nnunet", tmp_path / "windows", dims=2, n_cases=2, size=32)
    assert open_dataset("nnunet", there).content_id() == here
    from bench.fileio import portable_write_text

    portable_write_text(tmp_path / "labels.txt", "±\n")  # non-ASCII text: UTF-8, not the code page
    assert (tmp_path / "labels.txt").read_bytes() == "±\n".encode("utf-8")


@pytest.mark.parametrize("kind", ["synapse", "isic", "polyp", "isic_all", "nnunet", "nnunet2d"])
def test_data_is_identified_by_its_files_wherever_it_lies(roots, tmp_path, kind, monkeypatch):
    """content_id: the same files under another root are the same data; a file of another size or
    other bytes, a missing one or a changed split file make other data."""
    dataset = {"isic": "isic17", "nnunet2d": "nnunet"}.get(kind, kind)
    (tmp_path / "a").mkdir()
    a = _copy(roots[kind], tmp_path / "a")
    b = Path(shutil.copytree(a, tmp_path / "b" / "copy"))
    ident = lambda root: open_dataset(dataset, root).content_id()  # noqa: E731
    assert ident(a) == ident(b) and ident(a).startswith("files:")
    files = open_dataset(dataset, b).source_files()
    assert files and all(f.is_file() for f in files)
    stored = {p for p in b.rglob("*") if p.is_file() and not p.name.startswith(".") and "lists" not in p.parts}
    assert set(files) == stored  # every file but Synapse's lists (the files they name stand for them)
    # data made otherwise whose files keep their sizes (uncompressed slices do): the bytes sampled differ
    from bench.data import base
    from bench.data.base import CONTENT_SAMPLES

    files_a = open_dataset(dataset, a).source_files()
    sampled = files_a[max(1, len(files_a) // CONTENT_SAMPLES)]  # the second file read (the first: dataset.json)
    before, data = ident(a), bytearray(sampled.read_bytes())
    data[len(data) // 2] ^= 0xFF
    sampled.write_bytes(bytes(data))
    assert ident(a) != before
    # from here one file is sampled (the first): what follows is seen by the sizes or the scored files alone
    monkeypatch.setattr(base, "CONTENT_SAMPLES", 1)
    # a file neither sampled nor scored (a training slice, image or mask) of another size: data made otherwise
    scored, before = open_dataset(dataset, b).scored_files(), ident(b)
    with next(f for f in files[1:] if f not in scored).open("ab") as f:
        f.write(b"\0")
    grown = ident(b)
    assert grown != before
    # a test label changed in place, its size kept (an organ relabelled in a test volume), in a file the sample
    # does not read: every byte of the files test labels come from is read (the last test case's label, found
    # by its folder: a reader naming other files as scored would pass with scored_files()[0])
    ds = open_dataset(dataset, a)
    label = [f for f in ds.source_files() if f.parent.name in ("masks", "labelsTr", "test_vol_h5")][-1]
    before, legacy = ident(a), ds.content_id(scored=False)
    data = bytearray(label.read_bytes())
    data[len(data) // 2] ^= 0xFF
    label.write_bytes(bytes(data))
    assert ident(a) != before and open_dataset(dataset, a).content_id(scored=False) == legacy
    if kind == "synapse":  # a listed file gone (elsewhere a file gone is an unpaired item or a case gone)
        files[0].unlink()
        assert ident(b) not in (grown, ident(a))
    if kind == "nnunet2d":  # a splits file added, then changed, nothing else: other test cases, other scores
        from bench.data.nnunet import crossval_splits

        cases = [f"synth_{i:03d}" for i in range(5)]
        folds = crossval_splits(cases)
        drawn = ident(a)
        (a / "splits_final.json").write_text(json.dumps(folds), encoding="utf-8")
        written = ident(a)
        # fold 0 leaving a case out (a file of another size: one of the same size is seen where it is sampled)
        (a / "splits_final.json").write_text(json.dumps([{"train": cases[2:], "val": cases[:1]}, *folds[1:]]),
                                             encoding="utf-8")
        assert written != drawn and ident(a) not in (drawn, written)


def test_acdc_protocol_needs_the_split_file(roots, tmp_path):
    from bench.data.nnunet import crossval_splits
    from bench.protocol import load_protocol
    from bench.run import plan_grid

    root = _copy(roots["nnunet2d"], tmp_path)
    plan = lambda: plan_grid(models=["unet"], dataset="nnunet", protocol=load_protocol("acdc"), seeds=[0],  # noqa: E731
                             data_root=root, synthetic=False, results_dir=tmp_path / "res")
    with pytest.raises(BenchError, match=r"needs the split as .*splits_final\.json .* one subject on both sides"):
        plan()
    (root / "splits_final.json").write_text(json.dumps(crossval_splits([f"synth_{i:03d}" for i in range(5)])),
                                            encoding="utf-8")
    assert len(plan()) == 1


def test_nnunet_style_training_refuses_binary_data(roots, tmp_path):
    import dataclasses

    from bench.protocol import load_protocol
    from bench.run import plan_grid

    anywhere = dataclasses.replace(load_protocol("lightm_unet_2d"), datasets=())  # a copy without its dataset list
    with pytest.raises(BenchError, match=r"train\.dice_loss = \"nnunet\" and train\.augment = \"nnunet\".*binary"):
        plan_grid(models=["unet"], dataset="isic17", protocol=anywhere, seeds=[0], data_root=roots["isic"],
                  synthetic=False, results_dir=tmp_path / "res")
    assert len(plan_grid(models=["unet"], dataset="nnunet", protocol=anywhere, seeds=[0], data_root=roots["nnunet2d"],
                         synthetic=False, results_dir=tmp_path / "res")) == 1


def test_nnunet_kfold_tests_every_case_once(roots, tmp_path):
    from bench.data.nnunet import kfold_split

    cases = [f"synth_{i:03d}" for i in range(5)]
    tested = []
    for k in range(5):
        ds = open_dataset("nnunet", roots["nnunet2d"], fold=k)
        assert sorted(ds.train_ids() + ds.test_ids()) == cases and not set(ds.train_ids()) & set(ds.test_ids())
        tested += ds.test_ids()
    assert sorted(tested) == cases  # each case is a test case in exactly one fold
    ids = [f"c{i:02d}" for i in range(12)]
    assert [kfold_split(ids, k) for k in range(5)] == [(f["train"], f["val"]) for f in _sklearn_kfold(ids)]
    with pytest.raises(BenchError, match="fold 5 does not exist"):
        open_dataset("nnunet", roots["nnunet2d"], fold=5)
    with pytest.raises(BenchError, match="needs at least 5 cases"):
        kfold_split(ids[:4], 0)
    with pytest.raises(BenchError, match="fixed test split"):
        open_dataset("synapse", roots["synapse"], fold=0)
    # splits_final.json folds win over the generated ones
    root = _copy(roots["nnunet2d"], tmp_path)
    (root / "splits_final.json").write_text(json.dumps([{"train": cases[:3], "val": cases[3:]},
                                                        {"train": cases[2:], "val": cases[:2]}]), encoding="utf-8")
    ds = open_dataset("nnunet", root, fold=1)
    assert ds.n_folds == 2 and ds.test_ids() == cases[:2]


def test_dataset_name_tells_nnunet_datasets_apart(roots, tmp_path):
    assert open_dataset("synapse", roots["synapse"]).dataset_name == "synapse"
    ds = open_dataset("nnunet", roots["nnunet"])
    assert ds.dataset_name == f"nnunet:{ds.meta['name']}"  # the synthesizer names its dataset.json
    root = Path(shutil.copytree(roots["nnunet2d"], tmp_path / "Dataset027_ACDC"))
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    meta.pop("name", None)  # optional in nnU-Net v2: the folder names the dataset then
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    assert open_dataset("nnunet", root).dataset_name == "nnunet:Dataset027_ACDC"


def test_nnunet_warns_where_the_protocols_mode_is_not_what_a_channels_name_asks_for(roots, tmp_path):
    """nnU-Net normalises each channel by its channel_names entry; a protocol here has one mode for all.
    The warning fired only for normalize = 'none'; now for any mode other than what a channel asks for."""
    ds = open_dataset("nnunet", roots["nnunet"])  # the synthesizer's 3-D data says CT
    assert ds.normalize_hint("ct_window") is None and ds.normalize_hint("ct_foreground") is None
    assert ("the protocol's normalize = 'zscore' is not what channel_names ask nnU-Net for ('CT': CT normalisation "
            "('ct_foreground' or 'ct_window')); set the top-level key normalize in a protocol file of your own"
            in ds.normalize_hint("zscore"))
    root = Path(shutil.copytree(roots["nnunet2d"], tmp_path / "mri"))
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    for kind, mode, suits in (("T2", "none", "'zscore'"), ("T2", "ct_foreground", "'zscore'"), ("T2", "zscore", None),
                              ("noNorm", "none", None), ("nonorm", "zscore", "'none'"),
                              ("rgb_to_0_1", "none", None), ("rgb_to_0_1", "ct_window", "'none' or 'minmax255'"),
                              ("rescale_to_0_1", "minmax255", None), ("ct", "none", "'ct_foreground' or 'ct_window'")):
        (root / "dataset.json").write_text(json.dumps({**meta, "channel_names": {"0": kind}}), encoding="utf-8")
        got = open_dataset("nnunet", root).normalize_hint(mode)
        assert (got is None) if suits is None else (f"normalize = '{mode}' is not" in got and f"'{kind}': " in got
                                                    and f"({suits})" in got and "\n" not in got), (kind, mode, got)
    # channels asking for different modes: each named once with what suits it
    (root / "dataset.json").write_text(json.dumps({**meta, "channel_names": {"0": "CT", "1": "T2", "2": "T2"}}),
                                       encoding="utf-8")
    got = open_dataset("nnunet", root).normalize_hint("ct_window")
    assert "ask nnU-Net for ('T2': z-scoring ('zscore'))" in got and "'CT'" not in got
    assert open_dataset("synapse", roots["synapse"]).normalize_hint("none") is None


def test_built_in_recipes_on_synthetic_data_plan_without_the_normalize_warning(tmp_path):
    """bench's synthetic volumes name their channel CT for show; CI's drift grid runs drift_2d (z-score)
    on them, and every `make check` warned the user to write a protocol of their own."""
    import warnings

    from bench.run import plan_grid

    for protocol in ("drift_2d", "drift_3d"):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            plan_grid(models=["lightm_unet"], dataset="nnunet", protocol=protocol, seeds=[0], data_root=None,
                      synthetic=True, results_dir=tmp_path, tiny=True)
        assert not [w for w in seen if "channel_names" in str(w.message)], protocol


def test_organ_order_note_reads_the_label_order_from_organ_sizes():
    from bench.data.verify import organ_order_note

    # typical abdominal volumes (ml): liver 1500, stomach 400, spleen 200, kidneys 150, aorta 80,
    # pancreas 70, gallbladder 40, in the tables' order and in BTCV's
    ours = np.array([0, 80, 40, 150, 150, 1500, 70, 200, 400])
    btcv = np.array([0, 200, 150, 150, 40, 1500, 400, 80, 70])
    assert organ_order_note(ours).startswith("the label ids fit the order the tables use")
    assert "look like BTCV's order (1 spleen, 2 kidney_r" in organ_order_note(btcv)
    assert "fit neither" in organ_order_note(np.array([0, 80, 40, 150, 150, 1500, 400, 200, 70]))
    assert "Class 5 is not the largest" in organ_order_note(np.array([0, 80, 40, 150, 150, 100, 70, 200, 400]))
    assert "cannot be checked" in organ_order_note(np.zeros(9, dtype=int))


def test_notes_say_whether_the_split_is_transunets(roots, tmp_path):
    from bench.data import synapse as syn
    from bench.data.verify import dataset_notes

    synthetic, split, order = dataset_notes("synapse", roots["synapse"])  # the synthesizer's small split
    assert synthetic.startswith("synthetic data, written by bench data synth or --synthetic")
    assert split.startswith("the split is not TransUNet's") and "not comparable" in split
    assert "Voxels per class (every 4th test slice): 1 aorta: " in order  # tiny random organs: no order
    lists = tmp_path / "lists" / "lists_Synapse"
    lists.mkdir(parents=True)
    (tmp_path / "train_npz").mkdir()
    (tmp_path / "test_vol_h5").mkdir()
    (lists / "test_vol.txt").write_text("\n".join(syn.TRANSUNET_TEST_CASES[::-1]) + "\n",
                                        encoding="utf-8")  # order is free
    (lists / "train.txt").write_text("".join(f"case0005_slice{i:04d}\n" for i in range(2211)), encoding="utf-8")
    split, order = dataset_notes("synapse", tmp_path)
    assert split.startswith("the split is TransUNet's (12 test volumes, 2211 training slices)")
    assert "cannot be checked" in order
    # the reader's notes come first: which split (nnU-Net: the rule without splits_final.json)
    _, split, note = dataset_notes("nnunet", roots["nnunet"])  # volumes: their spacing (tests/test_volumetric.py)
    assert split.startswith(f"no splits_final.json in {roots['nnunet']}; fixed split: default_rng(")
    assert note.startswith("voxel spacing of the")
    volume = next((roots["synapse"] / "test_vol_h5").glob("*.npy.h5"))
    (tmp_path / "test_vol_h5" / "case0001.npy.h5").write_bytes(volume.read_bytes())
    (lists / "test_vol.txt").unlink()  # Synapse without a list: the folder's contents are the split
    assert dataset_notes("synapse", tmp_path)[0] == (
        f"no test_vol.txt under {tmp_path}/lists/lists_Synapse/ or {tmp_path}/lists_Synapse/; "
        f"using the sorted contents of {tmp_path / 'test_vol_h5'}")


def test_isic_notes_compare_the_counts_with_vmunets_split(roots, monkeypatch):
    from bench.data import verify
    from bench.data.verify import dataset_notes, isic_split_note

    # the published counts: only the counts are passed, no 2,150 images are written
    assert isic_split_note(1500, 650, "isic17").startswith(
        "the split matches VM-UNet's isic17 split (1500 train / 650 test images), the one its published tables use")
    assert isic_split_note(1886, 808, "isic18").startswith("the split matches VM-UNet's isic18 split (1886 train")
    assert isic_split_note(1886, 808).startswith("the split matches VM-UNet's isic18 split")  # name unknown
    assert isic_split_note(1500, 649) == (
        "the split is neither of VM-UNet's (1500 train / 649 test images, not isic17's 1500 / 650 or isic18's "
        "1886 / 808): published ISIC numbers are not comparable with runs on it")
    # on disk (train/ 4 and val/ 3 images), counted through the reader's file listing
    assert dataset_notes("isic17", roots["isic"])[1:] == [
        "the split is not VM-UNet's isic17 split (4 train / 3 test images, not 1500 / 650): "
        "published isic17 numbers are not comparable with runs on it"]
    monkeypatch.setitem(verify.VMUNET_ISIC_SPLITS, "isic18", (4, 3))
    (_, note) = dataset_notes("isic18", roots["isic"])
    assert note.startswith("the split matches VM-UNet's isic18 split (4 train / 3 test images)")
    assert dataset_notes("isic17", roots["isic"])[1:] == [  # ISIC 2018 data opened as isic17
        "the counts are those of VM-UNet's isic18 split (4 train / 3 test images), not of VM-UNet's isic17 split "
        "(1500 train / 650 test images): check that this is isic17 data"]


def test_polyp_notes_compare_the_counts_with_pranets_split(roots, monkeypatch):
    from bench.data import verify
    from bench.data.verify import dataset_notes, polyp_split_note

    pranet = {"CVC-300": 60, "CVC-ClinicDB": 62, "Kvasir": 100, "CVC-ColonDB": 380, "ETIS-LaribPolypDB": 196}
    assert polyp_split_note(1450, pranet) == (
        "the split is PraNet's, as VM-UNet-V2 uses (1450 training images; test sets CVC-300 60, CVC-ClinicDB 62, "
        "Kvasir 100, CVC-ColonDB 380, ETIS-LaribPolypDB 196)")
    assert "(CVC-ColonDB 379 images, not 380)" in polyp_split_note(1450, {**pranet, "CVC-ColonDB": 379})
    lower = {k.lower(): v for k, v in pranet.items()}  # folder names in another case are the same sets
    assert polyp_split_note(1450, lower) == polyp_split_note(1450, pranet)
    # and in another spelling: underscores, the datasets' own names (they lost their published columns)
    spelt = {"CVC_300": 60, "CVC-612": 62, "Kvasir-SEG": 100, "CVC_ColonDB": 380, "ETIS-Larib": 196}
    assert polyp_split_note(1450, spelt) == polyp_split_note(1450, pranet)
    # a set not in the split is named where the counts differ too
    assert polyp_split_note(1450, {**pranet, "Kvasir": 99, "HyperKvasir": 5}).endswith(
        "not comparable with runs on it; not in its split: HyperKvasir (5 images)")
    # on disk: TrainDataset 3 images, TestDataset/CVC-ClinicDB 2 and Kvasir 2
    assert dataset_notes("polyp", roots["polyp"])[1:] == [
        "the split is not PraNet's, which VM-UNet-V2 uses (3 training images, not 1450; CVC-ClinicDB 2 images, "
        "not 62; Kvasir 2 images, not 100): published polyp numbers are not comparable with runs on it"]
    monkeypatch.setattr(verify, "PRANET_TRAIN_IMAGES", 3)
    monkeypatch.setattr(verify, "PRANET_TEST_SETS", {"CVC-ClinicDB": 2, "Kvasir": 2})
    assert dataset_notes("polyp", roots["polyp"])[1:] == [
        "the split is PraNet's, as VM-UNet-V2 uses (3 training images; test sets CVC-ClinicDB 2, Kvasir 2)"]
    monkeypatch.setattr(verify, "PRANET_TEST_SETS", {"CVC-300": 60, "Kvasir": 2})  # a set not downloaded
    (_, note) = dataset_notes("polyp", roots["polyp"])
    assert note == ("the split is PraNet's, as VM-UNet-V2 uses (3 training images; test sets Kvasir 2); absent here: "
                    "CVC-300 (60 images), whose published columns have no counterpart; "
                    "not in its split: CVC-ClinicDB (2 images)")


def test_isic_all_notes_compare_the_counts_with_v2s_merged_split(roots, monkeypatch):
    from bench.data import verify
    from bench.data.verify import dataset_notes, isic_all_split_note

    # VM-UNet-V2's train_isic_all.py: VM-UNet's isic17 (1500 / 650) and isic18 (1886 / 808) splits,
    # their training images together
    assert isic_all_split_note(3386, {"isic17": 650, "isic18": 808}) == (
        "the counts fit VM-UNet-V2's merged ISIC split as assumed here (VM-UNet's isic17 1500 + isic18 1886 "
        "training images together; V2 does not state its counts) (3386 training images; test sets isic17 650, "
        "isic18 808); only the counts are compared, and another 7:3 draw of the same images has them too")
    assert "(1500 training images, not 3386): published VM-UNet-V2 isic17/isic18 numbers are not comparable" in \
        isic_all_split_note(1500, {"isic17": 650, "isic18": 808})  # ISIC17's training images only
    assert "; absent here: isic18 (808 images)" in isic_all_split_note(3386, {"isic17": 650})
    # on disk: train/ 3 images, val/isic17 2 and val/isic18 2
    assert dataset_notes("isic_all", roots["isic_all"])[1:] == [
        "the counts do not fit VM-UNet-V2's merged ISIC split as assumed here (VM-UNet's isic17 1500 + isic18 "
        "1886 training images together; V2 does not state its counts) (3 training images, not 3386; isic17 2 images, not 650; isic18 2 images, not 808): "
        "published VM-UNet-V2 isic17/isic18 numbers are not comparable with runs on it"]
    monkeypatch.setattr(verify, "VMUNET_ISIC_SPLITS", {"isic17": (1, 2), "isic18": (2, 2)})
    (_, note) = dataset_notes("isic_all", roots["isic_all"])
    assert note.startswith("the counts fit VM-UNet-V2's merged ISIC split as assumed here (VM-UNet's isic17 1 + "
                           "isic18 2 training images together; V2 does not state its counts) (3 training images; "
                           "test sets isic17 2, isic18 2)")


def test_synapse_spacing_table_fills_what_the_h5_files_lack(roots, tmp_path):
    import h5py

    root = Path(synthesize("synapse", tmp_path / "syn", **{**SYN, "n_test": 3}))
    ds = open_dataset("synapse", root)
    first, second, third = ds.test_ids()
    for case in (first, second):  # as the real files: no spacing attribute
        with h5py.File(root / "test_vol_h5" / f"{case}.npy.h5", "r+") as f:
            del f.attrs["spacing"]
    assert open_dataset("synapse", root).load_test(first).spacing is None
    (root / "spacing.csv").write_text(f"case,d,h,w\n{first},3.0,0.7,0.7\n{third},3.0,0.7,0.7\n\n", encoding="utf-8")
    ds = open_dataset("synapse", root)
    assert ds.load_test(first).spacing == (3.0, 0.7, 0.7)
    assert ds.load_test(third).spacing == (2.5, 0.8, 0.8)  # the file's own attribute wins over its line
    # the second volume has no spacing anywhere: its HD95 would be in voxels beside the others' mm, averaged
    # into a number of no unit (a data journey's partial table did that unsaid); refused under a policy
    # scoring in mm, warned by verify (legacy-synapse, the papers', scores in voxels and reads no spacing)
    (problem,) = verify_dataset("synapse", root)
    assert problem.level == "warning" and problem.path == str(root / "spacing.csv") and second in problem.message
    with pytest.raises(BenchError, match=rf"spacing\.csv: no line for {second}, which has no spacing of its own: its "
                                         "HD95 would be in voxels"):
        ds.check_spacing()
    from bench.protocol import load_protocol
    from bench.run import plan_grid

    proto = load_protocol("smoke")
    plan = lambda policy: plan_grid(models=["unet"], dataset="synapse", protocol=proto, seeds=[0],  # noqa: E731
                                    data_root=root, synthetic=False, results_dir=tmp_path / "res", policy=policy)
    assert plan("legacy-synapse")  # voxels for all: nothing read from the table
    with pytest.raises(BenchError, match="no line for"):
        plan("strict")
    (root / "spacing.csv").write_text(f"case,d,h,w\n{first},3.0,0.7,0.7\n{second}.npy.h5,3.0,0.7,0.7\n",
                                      encoding="utf-8")
    with pytest.raises(BenchError, match=rf"spacing\.csv: {second}\.npy\.h5 is not a case of this data; expected "
                                         rf"case ids such as case0001; no line for {second}, which has"):
        open_dataset("synapse", root).check_spacing()  # both problems at once: the misnamed line is the missing one
    (said,) = verify_dataset("synapse", root)
    assert "is not a case of this data" in said.message and f"no line for {second}" in said.message
    # a line for every test case, and for training cases too (what bench data convert writes): fine
    train_case = ds.train_ids()[0].split("_slice")[0]
    (root / "spacing.csv").write_text(f"case,d,h,w\n{first},3.0,0.7,0.7\n{second},3.0,0.7,0.7\n"
                                      f"{train_case},3.0,0.7,0.7\n", encoding="utf-8")
    assert open_dataset("synapse", root).check_spacing() is None and not verify_dataset("synapse", root)
    (root / "spacing.csv").write_text(f"case,d,h,w\n{first},3.0,0.7,0.7\n\n", encoding="utf-8")
    (root / "spacing.csv").write_text(f"\ufeffcase,d,h,w\n{first},3.0,0.7,0.7\n", encoding="utf-8")  # Excel's BOM
    assert open_dataset("synapse", root).load_test(first).spacing == (3.0, 0.7, 0.7)
    for bad, where in (("case,z,y,x\n", "expected a header case,d,h,w"), (f"case,d,h,w\n{first},3,0.7\n", "line 2"),
                       (f"case,d,h,w\n{first},3,inf,0.7\n", "line 2"),
                       (f"case,d,h,w\n{first},3,-1,0.7\n", "line 2"), (f"case,d,h,w\n{first},3,1,1\n{first},3,1,1\n",
                                                                       "listed twice")):
        (root / "spacing.csv").write_text(bad, encoding="utf-8")
        with pytest.raises(BenchError, match=where):
            open_dataset("synapse", root)
        assert [p.path for p in verify_dataset("synapse", root) if p.level == "error"] == [str(root / "spacing.csv")]


def test_verify_nnunet_rgb_png_case_missing_its_file_is_one_problem(tmp_path):
    """nnU-Net keeps an RGB image in one ``_0000.png`` (three channels declared): a case without it
    is one missing file, not three (``_0001``/``_0002`` were reported missing as well)."""
    root = tmp_path / "Dataset900_Rgb"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for case in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "imagesTr" / f"{case}_0000.png")
        Image.fromarray((rng.random((16, 16)) > 0.5).astype(np.uint8)).save(root / "labelsTr" / f"{case}.png")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "road": 1},
        "numTraining": 2, "file_ending": ".png"}), encoding="utf-8")
    assert verify_dataset("nnunet", root) == []
    (root / "imagesTr" / "b_0000.png").unlink()
    problems = verify_dataset("nnunet", root)
    assert [(p.path, p.message) for p in problems if p.level == "error"] == [
        (str(root / "imagesTr" / "b_0000.png"), "missing (channel 0 of case 'b'; dataset.json declares 3)")]
    # a grayscale image among RGB ones: that image is named, not a _0001 file the dataset never has
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / "imagesTr" / "b_0000.png")
    said = ("1 channel (a grayscale image), where dataset.json declares 3 (channel_names) held as one RGB file per "
            "case (no case has a _0001 file); save it as RGB")
    assert [(p.path, p.message) for p in verify_dataset("nnunet", root) if p.level == "error"] == [
        (str(root / "imagesTr" / "b_0000.png"), said)]
    with pytest.raises(BenchError, match=f"^{re.escape(str(root / 'imagesTr' / 'b_0000.png'))}: {re.escape(said)}$"):
        open_dataset("nnunet", root).load_test("b")
    # grey channels in files of their own: each missing one is named
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "a", "1": "b", "2": "c"}, "labels": {"background": 0, "road": 1},
        "numTraining": 2, "file_ending": ".png"}), encoding="utf-8")
    for case in ("a", "b"):
        for c in range(3):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / "imagesTr" / f"{case}_000{c}.png")
    # one case without its _0001: that file is missing (another case has one), not a grey image to save as RGB
    (root / "imagesTr" / "b_0001.png").unlink()
    said = "missing (channel 1 of case 'b'; dataset.json declares 3)"
    with pytest.raises(BenchError, match=f"^{re.escape(str(root / 'imagesTr' / 'b_0001.png'))}: {re.escape(said)}$"):
        open_dataset("nnunet", root).load_test("b")
    assert [(p.path, p.message) for p in verify_dataset("nnunet", root) if p.level == "error"] == [
        (str(root / "imagesTr" / "b_0001.png"), said)]
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / "imagesTr" / "b_0001.png")
    (root / "imagesTr" / "b_0000.png").unlink()
    (root / "imagesTr" / "b_0002.png").unlink()
    assert _paths(verify_dataset("nnunet", root)) == [str(root / "imagesTr" / "b_0000.png"),
                                                      str(root / "imagesTr" / "b_0002.png")]


def test_nnunet_volumes_missing_their_other_channels_name_the_files(roots, tmp_path):
    """An RGB image is a 2-D file: a volume where dataset.json declares 3 channels and no case has a _0001
    file lacks two channel files (named), it is no grey image to save as RGB."""
    root = _copy(roots["nnunet"], tmp_path)
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    (root / "dataset.json").write_text(json.dumps({**meta, "channel_names": {"0": "T1", "1": "T2", "2": "FLAIR"}}),
                                       encoding="utf-8")
    ds = open_dataset("nnunet", root)
    case = ds.test_ids()[0]
    said = f"missing (channel 1 of case {case!r}; dataset.json declares 3)"
    missing = root / "imagesTr" / f"{case}_0001.nii.gz"
    with pytest.raises(BenchError, match=f"^{re.escape(str(missing))}: {re.escape(said)}$"):
        ds.load_test(case)
    assert (str(missing), said) in [(p.path, p.message) for p in verify_dataset("nnunet", root)]


def test_test_images_that_are_training_images_are_found(roots, tmp_path):
    """From a data journey: a test image copied into train/ passed `bench data verify` (which bench
    run then refused), and merged ISIC data trained on its test images unsaid (DSC 9 -> 64). ISIC ids
    name one image: isic17 refuses it, both verify it, isic_all warns (the authors' merged data may
    hold such images), polyp, whose names repeat across sources, is not checked."""
    from bench.data.verify import verify_dataset

    isic = _copy(roots["isic"], tmp_path / "a")
    for sub, name in (("images", "ISIC_0000004.png"), ("masks", "ISIC_0000004_segmentation.png")):
        shutil.copy(isic / "val" / sub / name, isic / "train" / sub / name)
    with pytest.raises(BenchError, match="ISIC_0000004 in both the training split and the test split"):
        open_dataset("isic17", isic).check_splits()
    assert [p.message for p in verify_dataset("isic17", isic) if p.level == "error"] == [
        "ISIC_0000004 in both train/images and val/images; a test case is never trained on"]
    merged = _copy(roots["isic_all"], tmp_path / "b")
    for sub, name in (("images", "ISIC_0000005.png"), ("masks", "ISIC_0000005_segmentation.png")):
        shutil.copy(merged / "val" / "isic18" / sub / name, merged / "train" / sub / name)
    said = ("test images that are training images too (the same ISIC id) — isic18: 1 of 2 (ISIC_0000005): their "
            "scores are of images the model trained on")
    with pytest.warns(UserWarning, match=re.escape(said)):
        open_dataset("isic_all", merged)
    assert [(p.level, p.message) for p in verify_dataset("isic_all", merged)] == [("warning", said)]
    polyp = _copy(roots["polyp"], tmp_path / "c")
    test = sorted((polyp / "TestDataset").iterdir())[0]
    for sub in ("images", "masks"):
        image = sorted((test / sub).iterdir())[0]
        shutil.copy(image, polyp / "TrainDataset" / sub / image.name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_dataset("polyp", polyp)


def test_16_bit_images_are_scaled_to_8_bits(roots, tmp_path):
    """From a data journey: a 16-bit grayscale image read as all white (convert("RGB") clips), and
    verify said OK."""
    from bench.data.image_folders import read_rgb

    wide = (np.arange(48 * 40, dtype=np.uint32).reshape(48, 40) * 34).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    rgb = read_rgb(tmp_path / "wide.png")
    assert rgb.shape == (48, 40, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 1], np.rint(wide / 257).astype(np.uint8)) and len(np.unique(rgb)) > 200
    Image.fromarray(wide.astype(np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(BenchError, match=r"float\.tif: a float image \(mode F\), which has no fixed range"):
        read_rgb(tmp_path / "float.tif")
    # 32-bit integers (mode I) that fit in 16 bits scale as 16-bit ones; one value past 65535 has no range
    Image.fromarray(np.array([[0, 65535]], np.int32)).save(tmp_path / "fits.tif")
    assert read_rgb(tmp_path / "fits.tif")[..., 0].tolist() == [[0, 255]]
    Image.fromarray(np.array([[0, 65536]], np.int32)).save(tmp_path / "wider.tif")
    with pytest.raises(BenchError, match=r"wider\.tif: a 32-bit integer image \(mode I\), which has no fixed range"):
        read_rgb(tmp_path / "wider.tif")


def test_a_zip_given_as_the_data_root_and_paths_with_spaces(roots, tmp_path):
    """From a data journey: a download given before it was extracted read "dataset root not found";
    commands suggested in errors broke on paths with spaces when pasted."""
    archive = tmp_path / "ISIC2017.zip"
    archive.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    said = "a file, not a folder: extract it, and give the folder"
    with pytest.raises(BenchError, match=rf"^--data-root .*ISIC2017\.zip: {said} \(expected <root>/"):
        open_dataset("isic17", archive)
    assert [p.message.split(";")[0] for p in verify_dataset("isic17", archive)] == [said]
    image = tmp_path / "ISIC_0000000.png"  # a file of the dataset: nothing to extract
    image.write_bytes(b"")
    with pytest.raises(BenchError, match=r"ISIC_0000000\.png: a file, not a folder: give the dataset's folder \("):
        open_dataset("isic17", image)
    spaced = _copy(roots["synapse"], tmp_path / "my data")
    next((spaced / "test_vol_h5").iterdir()).unlink()
    with pytest.raises(BenchError, match=re.escape(f"--data-root '{spaced}'`")):
        open_dataset("synapse", spaced).check_splits()


@pytest.mark.parametrize("kind", ["synapse", "isic", "isic_all", "polyp", "nnunet"])
def test_a_layout_one_folder_down_is_named(roots, tmp_path, kind):
    """From a data journey: a download extracted into a folder of its own (ISIC2017/train/...) read
    "missing .../train/images" without a word of what was there."""
    dataset = {"isic": "isic17"}.get(kind, kind)
    outer = tmp_path / "download"
    shutil.copytree(roots[kind], outer / "Unpacked")
    with pytest.raises(BenchError, match=rf"; Unpacked/ holds it: pass --data-root {re.escape(str(outer / 'Unpacked'))}$"):
        open_dataset(dataset, outer)
    (outer / "Other").mkdir()
    (outer / "__MACOSX").mkdir()  # a macOS zip's metadata and a hidden folder are not named as content
    (outer / ".cache").mkdir()
    shutil.rmtree(outer / "Unpacked")
    with pytest.raises(BenchError, match=r" \(found Other/\)$"):
        open_dataset(dataset, outer)


def test_test_volumes_are_checked_before_training(roots, tmp_path):
    """From a data journey: a test h5 with other key names, or saved slices last (H, W, D) as
    nibabel's get_fdata() gives it, trained fully, then failed or was scored on 64 slices of 64x6; a label of
    another shape than its image is refused before training too (it would fail only when scored)."""
    import h5py

    root = _copy(roots["synapse"], tmp_path)
    ds = open_dataset("synapse", root)
    path = ds.test_file(ds.test_ids()[0])
    with h5py.File(path, "r+") as f:
        image, label = f["image"][()], f["label"][()]
        del f["label"]
        f["label"] = label[:, :-1]  # one row short: it failed when scored, after the training
    with pytest.raises(BenchError, match=r"image shape \(8, 48, 48\) and label shape \(8, 47, 48\); expected one"):
        ds.check_geometry()
    with h5py.File(path, "r+") as f:
        del f["image"], f["label"]
        f["image"], f["label"] = image.transpose(1, 2, 0), label.transpose(1, 2, 0)
    assert re.search(r"looks like \(H, W, D\), slices last .*np\.transpose\(volume, \(2, 0, 1\)\)", ds.check_geometry())
    assert any("looks like (H, W, D)" in p.message and p.level == "warning" for p in verify_dataset("synapse", root))
    with h5py.File(path, "r+") as f:
        f["img"] = f["image"][()]
        del f["image"]
    with pytest.raises(BenchError, match=r"no dataset 'image'; has \['img', 'label'\], expected 'image' and 'label'"):
        ds.check_geometry()


def test_masks_saved_in_colour_read_as_their_shape(tmp_path):
    """From a data journey: a lesion drawn in a mask's alpha channel read as an empty mask, and a green
    mask (gray value 150) trained as 0.59 instead of 1; both read as 0/255 now, a gray mask as before."""
    from bench.data.image_folders import mask_pixels, read_mask

    shape = np.zeros((20, 30), bool)
    shape[5:15, 8:20] = True
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 3] = shape * 255
    green = np.zeros((20, 30, 3), np.uint8)
    green[shape, 1] = 255
    for name, array in (("alpha.png", rgba), ("green.png", green)):
        Image.fromarray(array).save(tmp_path / name)
        assert np.array_equal(read_mask(tmp_path / name), shape.astype(np.float32)), name
    soft = np.stack([np.linspace(0, 255, 30, dtype=np.uint8)] * 20)  # several grays: its gray values, as before
    Image.fromarray(np.stack([soft] * 3, axis=-1)).save(tmp_path / "gray_rgb.png")
    assert np.allclose(read_mask(tmp_path / "gray_rgb.png"), soft / 255)
    # two colours, neither black, are not "one colour on black": their gray values too, not all foreground
    red_on_white = np.full((20, 30, 3), 255, np.uint8)
    red_on_white[shape] = (255, 0, 0)
    Image.fromarray(red_on_white).save(tmp_path / "red_on_white.png")
    red = round(255 * 299 / 1000)  # ITU-R 601-2 luma of pure red: 76
    assert np.array_equal(mask_pixels(tmp_path / "red_on_white.png"), np.where(shape, red, 255))


def test_a_mask_whose_values_stay_below_128_is_refused(tmp_path):
    """After /255 foreground is >= 0.5: a mask reaching 127 at most would train as all background
    (class ids, or a faint drawing), while one reaching 128 has foreground."""
    from bench.data.image_folders import read_mask

    Image.fromarray(np.array([[0, 127]], np.uint8)).save(tmp_path / "faint.png")
    with pytest.raises(BenchError, match=r"faint\.png: mask values reach only 127 in grayscale"):
        read_mask(tmp_path / "faint.png")
    Image.fromarray(np.array([[0, 128]], np.uint8)).save(tmp_path / "half.png")
    assert read_mask(tmp_path / "half.png").tolist() == [[0.0, np.float32(128) / np.float32(255)]]


def test_verify_lists_the_first_problems_and_counts_the_rest(tmp_path, bench_here):
    """From a data journey: every 0/1 mask of a real ISIC17 folder is one line, about 2,150 of them."""
    from bench.cli import VERIFY_SHOWN

    root = synthesize("isic", tmp_path / "isic", n_train=VERIFY_SHOWN, n_val=4, min_size=20, max_size=24)
    for mask in root.glob("*/masks/*.png"):
        Image.fromarray((np.asarray(Image.open(mask).convert("L")) > 127).astype(np.uint8)).save(mask)
    shown = bench_here("data", "verify", "--dataset", "isic17", "--data-root", root, check=False)
    lines = shown.stderr.strip().splitlines()
    assert shown.returncode == 1 and len(lines) == VERIFY_SHOWN + 2, shown.stderr  # then the count, then the total
    assert lines[-2].startswith("... and 4 more (--all lists them): 4 × error: mask values reach only N in grayscale")
    assert lines[-1] == f"{VERIFY_SHOWN + 4} error(s) in {root}"
    every = bench_here("data", "verify", "--dataset", "isic17", "--data-root", root, "--all", check=False)
    assert len(every.stderr.strip().splitlines()) == VERIFY_SHOWN + 5


def test_synapse_files_named_otherwise_are_warned_without_list_files(roots, tmp_path):
    """From a data journey: without list files, a browser's second download of a slice trained as
    one more slice, unsaid."""
    root = _copy(roots["synapse"], tmp_path)
    shutil.rmtree(root / "lists")
    first = sorted((root / "train_npz").iterdir())[0]
    shutil.copy(first, first.with_name(f"{first.stem} (1).npz"))
    with pytest.warns(UserWarning, match=re.escape(f"1 file(s) named otherwise than TransUNet's caseNNNN[_sliceNNN] "
                                                   f"({first.stem} (1)), each taken as one more item")):
        ds = open_dataset("synapse", root)
    assert f"{first.stem} (1)" in ds.train_ids()


def test_label_ids_outside_the_classes_stop_a_grid_before_it_trains(roots, tmp_path, monkeypatch):
    """A test label saved 0/127/254 was found at evaluation, after every model of a grid had trained:
    plan_grid names the file and its values now; 2-D training labels are checked too (cheap)."""
    from bench.protocol import load_protocol
    from bench.run import plan_grid

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = _copy(roots["nnunet2d"], tmp_path)
    ds = open_dataset("nnunet", root)
    plan = lambda: plan_grid(models=["unet"], dataset="nnunet", protocol=load_protocol("smoke"),  # noqa: E731
                             seeds=[0], data_root=root, synthetic=False, results_dir=tmp_path / "res")
    plan()
    for case in (ds.test_ids()[0], ds.train_ids()[0]):
        path = root / "labelsTr" / f"{case}.png"
        original = path.read_bytes()
        Image.fromarray((np.asarray(Image.open(path)) * 127).astype(np.uint8)).save(path)
        with pytest.raises(BenchError, match=rf"^{re.escape(str(path))}: label values \[127, 254\] outside 0\.\.2; "
                                             r"this dataset has 3 classes \(0 = background\)$"):
            plan()
        path.write_bytes(original)


def test_label_ids_of_volumes_are_decoded_once_per_content(roots, tmp_path, monkeypatch):
    """Decoding every label of a 3-D dataset takes minutes: the ids a label file holds are kept by its
    sha256, so another process (or a copy of the data) reads them back; an edited file is decoded again.
    Training volumes are not decoded before training (they fail as they are first read)."""
    from bench.data import nnunet

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = _copy(roots["nnunet"], tmp_path)
    ds = open_dataset("nnunet", root)
    decoded = []
    real = nnunet.read_nifti
    monkeypatch.setattr(nnunet, "read_nifti", lambda path, **kw: decoded.append(path.name) or real(path, **kw))
    ds.check_labels()
    assert decoded == [f"{case}.nii.gz" for case in ds.test_ids()]
    nnunet._label_values.cache_clear()  # as a new process
    ds.check_labels()
    assert len(decoded) == len(ds.test_ids())
    test, train = (root / "labelsTr" / f"{ds.test_ids()[0]}.nii.gz", root / "labelsTr" / f"{ds._train_cases[0]}.nii.gz")
    for path in (train, test):
        img = nib.load(str(path))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 3, img.affine, img.header), str(path))
    with pytest.raises(BenchError, match=rf"^{re.escape(str(test))}: label values \[3, 6\] outside 0\.\.2"):
        open_dataset("nnunet", root).check_labels()
    assert decoded[-1] == test.name and train.name not in decoded
    img = nib.load(str(test))
    negative = np.asarray(img.dataobj).astype(np.int16) // 3 - 1  # {-1, 0, 1}: ids that cannot be counted
    nib.save(nib.Nifti1Image(negative, img.affine), str(test))
    with pytest.raises(BenchError, match=rf"^{re.escape(str(test))}: label values \[-1\] outside 0\.\.2"):
        open_dataset("nnunet", root).check_labels()


def test_a_class_no_test_case_holds_is_warned_of_at_planning(roots, tmp_path):
    """A 12-case set of one's own, 2 test cases without its rare class: the run's DSC was nan, unexplained."""
    root = _copy(roots["nnunet2d"], tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_dataset("nnunet", root).check_labels()  # every class in a test case: nothing said
    labels = json.loads((root / "dataset.json").read_text(encoding="utf-8"))["labels"]
    (rare,) = [name for name, i in labels.items() if i == 2]
    ds = open_dataset("nnunet", root)
    for case in ds.test_ids():  # the training cases keep it: only the test cases count
        path = root / "labelsTr" / f"{case}.png"
        arr = np.asarray(Image.open(path)).copy()
        Image.fromarray(np.where(arr == 2, 0, arr).astype(arr.dtype)).save(path)
    assert any(2 in np.asarray(Image.open(root / "labelsTr" / f"{c}.png")) for c in ds._train_cases)
    n = len(ds.test_ids())
    with pytest.warns(UserWarning, match=rf"^{re.escape(str(root))}: class '{rare}' in none of the {n} test cases: "
                                         r"only false positives score it; .* a DSC, mIoU and HD95 of nan"):
        open_dataset("nnunet", root).check_labels()
    fold1 = open_dataset("nnunet", root, fold=1)
    for case in fold1.test_ids():
        path = root / "labelsTr" / f"{case}.png"
        arr = np.asarray(Image.open(path)).copy()
        Image.fromarray(np.where(arr == 2, 0, arr).astype(arr.dtype)).save(path)
    with pytest.warns(UserWarning, match=r"in none of the \d+ test cases of fold 1: "):
        open_dataset("nnunet", root, fold=1).check_labels()


def test_ct_foreground_without_foreground_names_the_data_and_what_to_do(roots, tmp_path):
    """It said "needs foreground (label > 0) in the training cases; none has any": which data, and then what?"""
    from bench.data.intensity import intensity_stats
    from bench.protocol import load_protocol

    root = _copy(roots["nnunet2d"], tmp_path)
    for path in (root / "labelsTr").glob("*.png"):
        Image.fromarray(np.zeros_like(np.asarray(Image.open(path)))).save(path)
    ds = open_dataset("nnunet", root)
    with pytest.raises(BenchError, match=rf"^normalize 'ct_foreground' needs foreground \(label > 0\) in the "
                                         rf"{len(ds.train_ids())} training cases of {re.escape(str(root))}; none has "
                                         r"any, .*check the labels \(bench data verify\), or set normalize otherwise"):
        intensity_stats(ds, load_protocol("smoke").with_overrides(normalize="ct_foreground"))


def test_synthetic_volumes_too_small_for_the_organs_say_which_options_to_raise(tmp_path):
    with pytest.raises(BenchError, match=r"organs \[.*\] do not fit at depth=1, size=8; give larger ones \(--option "
                                         r"depth=N --option size=N; the defaults: depth=16, size=96\)"):
        synthesize("synapse", tmp_path / "s", depth=1, size=8)


def test_a_folds_test_labels_are_checked_at_planning(roots, tmp_path):
    """--folds scores each fold's own test cases: a bad label among them (a training case of the default
    split, whose volume labels are not decoded before training) fails the grid at planning, not after a fold
    trained."""
    from bench.protocol import load_protocol
    from bench.run import plan_grid

    root = _copy(roots["nnunet"], tmp_path)
    default_test = set(open_dataset("nnunet", root).test_ids())
    case = next(c for c in open_dataset("nnunet", root, fold=1).test_ids() if c not in default_test)
    path = root / "labelsTr" / f"{case}.nii.gz"
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 3, img.affine, img.header), str(path))
    with pytest.raises(BenchError, match=rf"^{re.escape(str(path))}: label values \[3, 6\] outside 0\.\.2"):
        plan_grid(models=["unet"], dataset="nnunet", protocol=load_protocol("smoke"), seeds=[0], data_root=root,
                  synthetic=False, results_dir=tmp_path / "res", folds=[1])


def test_a_target_spacing_on_png_cases_suggests_native(roots, tmp_path):
    """drift_2d resamples to 1.2 mm; on PNGs the error asked for --dataset nnunet, which was given."""
    from bench.protocol import load_protocol
    from bench.run import plan_grid

    root = roots["nnunet2d"]
    with pytest.raises(BenchError, match=rf"^{re.escape(str(root))}: a target spacing resamples volumes by their voxel "
                                         r"spacing, and these '\*\.png' images have none; --target-spacing native "
                                         "keeps them as they are$"):
        plan_grid(models=["unet"], dataset="nnunet", protocol=load_protocol("drift_2d"), seeds=[0], data_root=root,
                  synthetic=False, results_dir=tmp_path / "r", tiny=True)
    native = load_protocol("drift_2d").with_overrides(target_spacing="native")  # the advice works
    assert plan_grid(models=["unet"], dataset="nnunet", protocol=native, seeds=[0], data_root=root, synthetic=False,
                     results_dir=tmp_path / "r", tiny=True)


def test_nifti_and_png_shapes_bench_refuses_come_with_their_remedy(roots, tmp_path):
    """A 2-D NIfTI, a 4-D one of several channels, an RGBA or LA PNG were refused without a word
    on what to do."""
    from bench.data.nnunet import read_nifti

    for shape, fix in (((6, 5), "save it with a slice axis, shape (x, y, 1)"),
                       ((6, 5, 4, 2), "split the last axis into CASE_0000, CASE_0001"),
                       ((6, 5, 4, 2, 1), "split the last axis into CASE_0000, CASE_0001"),
                       ((6, 5, 4, 1, 2), "split the last axis into CASE_0000, CASE_0001"),  # SimpleITK's vector
                       ((1, 6, 5, 4), "its axes of size 1 dropped it is 3-D, (6, 5, 4): an array with an axis of "
                                      "size 1 too many saved as it is? save the 3-D volume (numpy: volume.squeeze())")):
        path = tmp_path / f"v{len(shape)}{shape[-1]}.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), str(path))
        with pytest.raises(BenchError, match=rf"^{re.escape(str(path))}: expected a 3-D NIfTI volume, got shape "
                                             rf"{re.escape(str(shape))}; .*{re.escape(fix)}"):
            read_nifti(path)
    root = _copy(roots["nnunet2d"], tmp_path)
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    case = open_dataset("nnunet", root).test_ids()[0]
    image = root / "imagesTr" / f"{case}_0000.png"
    for mode, channels, fix in (("LA", {"0": "X-ray"}, "'L'"), ("RGBA", {"0": "R", "1": "G", "2": "B"}, "'RGB'")):
        (root / "dataset.json").write_text(json.dumps({**meta, "channel_names": channels}), encoding="utf-8")
        Image.open(image).convert(mode).save(image)
        said = (f"{len(mode)} channels; dataset.json declares {len(channels)}; an alpha channel? drop it "
                f"(PIL: Image.convert({fix}))")
        with pytest.raises(BenchError, match=rf"^{re.escape(str(image))}: {re.escape(said)}$"):
            open_dataset("nnunet", root).load_test(case)
        assert (str(image), said) in [(p.path, p.message) for p in verify_dataset("nnunet", root)]
    # colour beside grayscale (ultrasound frames saved both ways): what to save them as
    (root / "dataset.json").write_text(json.dumps({**meta, "channel_names": {"0": "US"}}), encoding="utf-8")
    Image.open(image).convert("RGB").save(image)
    said = "3 channels; dataset.json declares 1; colour among grayscale images? save every image as grayscale"
    with pytest.raises(BenchError, match=rf"^{re.escape(str(image))}: {re.escape(said)} \(PIL: Image.convert\('L'\)\), "
                                         r"or, if all are colour, declare three channels"):
        open_dataset("nnunet", root).load_test(case)


def _save_with_trailing_ones(path: Path, axes: int = 1) -> None:
    """Rewrite a NIfTI file as 3D Slicer, ITK exports and MRI converters store one volume: shape (x, y, z, 1)."""
    img = nib.load(path)
    data = np.asarray(img.dataobj).reshape(img.shape + (1,) * axes)
    nib.save(nib.Nifti1Image(data, img.affine, img.header), path)
    assert nib.load(path).shape == data.shape


def test_nifti_volumes_stored_with_a_trailing_axis_of_1_read_as_their_volume(roots, tmp_path):
    """(x, y, z, 1) files were refused ("save it squeezed"), though SimpleITK and so nnU-Net read them as
    the (x, y, z) volume: images and labels read, verify, plan and predict as the squeezed files do."""
    from bench.data.nnunet import nifti_geometry, read_nifti

    plain = roots["nnunet"]
    root = _copy(plain, tmp_path)
    ref = open_dataset("nnunet", plain)
    test_case, train_case = ref.test_ids()[0], ref.train_ids()[0].rpartition(":")[0]
    files = [root / "imagesTr" / f"{test_case}_0000.nii.gz", root / "labelsTr" / f"{test_case}.nii.gz",
             root / "imagesTr" / f"{train_case}_0000.nii.gz", root / "labelsTr" / f"{train_case}.nii.gz"]
    for path, axes in zip(files, [1, 1, 2, 1]):  # one image (x, y, z, 1, 1)
        _save_with_trailing_ones(path, axes)
        label = path.parent.name == "labelsTr"
        got, was = read_nifti(path, label=label), read_nifti(plain / path.relative_to(root), label=label)
        assert got[0].dtype == was[0].dtype and np.array_equal(got[0], was[0]) and got[1] == was[1]
        assert nifti_geometry(path) == nifti_geometry(plain / path.relative_to(root))  # from the header
    ds = open_dataset("nnunet", root)
    case, was = ds.load_test(test_case), ref.load_test(test_case)
    assert np.array_equal(case.image, was.image) and np.array_equal(case.label, was.label)
    assert case.spacing == was.spacing
    item = f"{train_case}:2"
    assert np.array_equal(ds.load_train(item).image, ref.load_train(item).image)
    assert ds.train_ids() == ref.train_ids()  # the slices counted from the (x, y, z, 1) label's header
    assert verify_dataset("nnunet", root) == []
    # a prediction takes its (x, y, z, 1) label's geometry, written as the plain volume nnU-Net writes
    ds.write_prediction(case, case.label, tmp_path / "pred.nii.gz")
    pred, src = nib.load(tmp_path / "pred.nii.gz"), nib.load(files[1])
    assert pred.shape == src.shape[:3] and np.allclose(pred.affine, src.affine)
    assert pred.header.get_zooms() == src.header.get_zooms()[:3]
    assert np.array_equal(np.asarray(pred.dataobj), np.asarray(src.dataobj)[..., 0])
    # one slice stored (x, y, 1, 1) is the slice (x, y, 1); a genuine 2-D file stays refused (the test above)
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(30, dtype=np.float32).reshape(6, 5, 1, 1), np.diag([0.5, 0.6, 3.0, 1.0])),
             flat)
    image, spacing = read_nifti(flat)
    assert image.shape == (1, 5, 6) and spacing == (3.0, 0.6, 0.5) and image[0, 1, 2] == 2 * 5 + 1


def test_nnunet_v1_dataset_json_reads_as_nifti(roots, tmp_path):
    """v1's dataset.json (modality, labels {"0": "background"}, no file_ending) was refused for its missing
    file_ending, though v1 is supported: v1 read .nii.gz only. A Decathlon task as downloaded (the same
    JSON, one 4-D file per case without _0000) is pointed to bench data convert --source msd."""
    root = _copy(roots["nnunet"], tmp_path)
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    v1 = {"modality": meta["channel_names"], "labels": {str(v): k for k, v in meta["labels"].items()},
          "numTraining": meta["numTraining"]}
    (root / "dataset.json").write_text(json.dumps(v1), encoding="utf-8")
    ds = open_dataset("nnunet", root)
    assert ds.file_ending == ".nii.gz" and ds.num_classes == 3 and ds.load_test(ds.test_ids()[0]).is_volume
    for image in (root / "imagesTr").glob("*_0000.nii.gz"):
        image.rename(image.with_name(image.name.replace("_0000", "")))
    with pytest.raises(BenchError, match=r"name does not end in _XXXX\.nii\.gz .*a Medical Segmentation Decathlon "
                                         r"task as downloaded\? `bench data convert --source msd --raw "):
        open_dataset("nnunet", root)
    # the default is v1's alone: v2 (channel_names, no modality) reads PNG and TIFF too, so no ending is assumed
    v2 = {k: v for k, v in meta.items() if k != "file_ending"}
    (root / "dataset.json").write_text(json.dumps(v2), encoding="utf-8")
    with pytest.raises(BenchError, match=rf"^{re.escape(str(root / 'dataset.json'))}: missing field\(s\) file_ending; "):
        open_dataset("nnunet", root)


def test_synthetic_folder_names_stay_inside_out_and_seeds_are_checked(tmp_path):
    """An API fuzz: test_sets=["/abs/x"] (or "../x", from `--option`) wrote images outside --out, a name
    given twice failed with FileExistsError, and a seed of -1 with NumPy's words."""
    import pytest

    from bench.data.synth import synthesize
    from bench.errors import BenchError

    for sets in (["../outside"], [str(tmp_path / "abs")], ["A", "A"], ["A/B"], [["A"]]):
        with pytest.raises(BenchError, match="test_sets takes a list of distinct folder names"):
            synthesize("polyp", tmp_path / "d", test_sets=sets, jpeg_sets=["A"])
    with pytest.raises(BenchError, match=r"^unknown synthetic kind 'isci' \(did you mean 'isic'\?\)"):
        synthesize("isci", tmp_path / "d")
    for seed in (-1, 2**32, 1.5, True):
        with pytest.raises(BenchError, match="seed: expected a whole number from 0 to 4294967295"):
            synthesize("isic", tmp_path / "d", seed=seed)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written anywhere


@pytest.mark.parametrize("kind", ["synapse", "isic", "polyp", "isic_all", "nnunet", "nnunet2d"])
def test_synthetic_data_edited_since_it_was_written_is_identified_by_its_files(roots, tmp_path, kind):
    """A review's find: synthetic data was identified by its marker alone, so a copy whose test labels were
    edited by hand kept the generator's id (and the authors' run ids, other scores under them). As written it
    keeps its synthetic id wherever it lies; edited, it is identified by its files, with a warning; a marker
    written before bench kept the files' ids is taken at its word, as then."""
    from bench.data import data_identity, synthetic_identity
    from bench.data.synth import MARKER, WRITTEN

    dataset = {"isic": "isic17", "nnunet2d": "nnunet"}.get(kind, kind)
    a = _copy(roots[kind], tmp_path)
    made = synthetic_identity(a)
    assert data_identity(open_dataset(dataset, a)) == made == synthetic_identity(roots[kind])
    label = open_dataset(dataset, a).scored_files()[0]
    data = bytearray(label.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a test label changed in place, its size kept
    label.write_bytes(bytes(data))
    ds = open_dataset(dataset, a)
    with pytest.warns(UserWarning, match=rf"{a}: synthetic data edited since it was generated .*: identified by its "
                                         rf"files \({ds.content_id()}\) as data of one's own, not as {made}$"):
        assert data_identity(ds) == ds.content_id() != made
    marker = json.loads((a / MARKER).read_text(encoding="utf-8"))
    (a / MARKER).write_text(json.dumps({**marker, WRITTEN: {"other-reader": "files:0"}}, sort_keys=True) + "\n",
                            encoding="utf-8")
    assert data_identity(ds) == made  # no files' id kept for this reader: taken at its word
    del marker[WRITTEN]  # as bench wrote it before
    (a / MARKER).write_text(json.dumps(marker, sort_keys=True) + "\n", encoding="utf-8")
    assert synthetic_identity(a) == made and data_identity(ds) == made


def test_the_files_ids_kept_in_the_marker_leave_synthetic_ids_as_they_were(roots):
    """Run ids of existing results (and the CI drift baseline) hash synthetic data's id: the ids of the
    files written, now kept in the marker, are no part of it (the id bench gave these settings before)."""
    from bench.data import synthetic_identity
    from bench.data.synth import WRITTEN

    assert WRITTEN in json.loads((roots["synapse"] / ".bench-synthetic.json").read_text(encoding="utf-8"))
    assert synthetic_identity(roots["synapse"]) == "synthetic:d573f8119bcc12d6"


def test_a_truncated_npz_slice_is_refused_with_its_file_closed(roots, tmp_path):
    # np.load leaves the file it opened open where the zip does not decode: a verify of a thousand broken
    # slices would hold a thousand descriptors (and warn of each)
    import gc

    from bench.data.synapse import raw_slice

    path = tmp_path / "case0005_slice002.npz"
    data = next((roots["synapse"] / "train_npz").glob("*.npz")).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(BenchError, match="case0005_slice002.npz"):
            raw_slice(path)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
