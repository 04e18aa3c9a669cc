"""nnU-Net v2 raw datasets (MIC-DKFZ/nnUNet documentation/reference/dataset-format.md).

On disk::

    <root>/dataset.json                     channel_names, labels (name -> int, background 0),
                                            numTraining, file_ending
    <root>/imagesTr/{CASE}_{XXXX}{ending}   XXXX = 4-digit channel index
    <root>/labelsTr/{CASE}{ending}
    <root>/splits_final.json                optional: [{"train": [...], "val": [...]}, ...] per fold
                                            (nnU-Net keeps its own in nnUNet_preprocessed/<Dataset>/;
                                            copy it here to use exactly those folds)

File endings: ``.png`` -> 2-D cases (an RGB PNG supplies three channels from one ``_0000`` file,
as nnU-Net's NaturalImage2DIO reads it); ``.nii.gz`` / ``.nii`` -> 3-D volumes read with nibabel (one
stored with trailing axes of size 1, (x, y, z, 1) as 3D Slicer and ITK write it, as its (x, y, z) volume).
Volumes are returned as (D, H, W) = (z, y, x), the axis order SimpleITK (and so nnU-Net) uses,
with ``spacing`` the header zooms reordered the same way (mm). Multi-channel images are
channels-last: (H, W, C) or (D, H, W, C). Images are float32 as stored; the protocol's
``normalize`` (``zscore``, ``ct_window``, ``ct_foreground``) prepares them, one mode for all channels, and
a run whose mode is not what nnU-Net would apply to some channel by its name is warned (``normalize_hint``);
labels are int64 ids. The whole
training cases of patch protocols (``load_train_volume``) are preprocessed instead
(``bench.data.preprocess.VolumePrep``): image float32 (C, *grid), label in a compact signed type,
-1 outside the non-zero region; a 2-D case becomes a volume of one slice there, as nnU-Net reads it.

Training items: a 2-D case is one item (id ``CASE``); a volume contributes each axial slice
(id ``"CASE:z"``), or, under a patch protocol, is one item from which patches are cut. Test cases are
whole cases, scored per volume or image.

Split: fold 0 of ``splits_final.json`` when present (train = its "train", test = its "val").
Otherwise a fixed split of this project's own (not nnU-Net's, which has no held-out test split):
the sorted case ids permuted by ``numpy.random.default_rng(12345)``;
the last ``max(1, n // 5)`` (20 %, at least one) are the test cases, the rest train; both lists
are returned sorted. The split therefore depends only on the set of case ids.

Cross-validation (``fold=k``, ``bench run --folds``): fold k of ``splits_final.json`` when present,
else fold k of the split nnU-Net v2 writes when it has none (``crossval_splits``: sklearn's
``KFold(5, shuffle=True, random_state=12345)`` over the sorted case ids, reproduced with numpy),
so fold k validates on the cases an nnU-Net-trained model's fold k does. ``fold="all"`` (``ALL_FOLDS``,
``bench score --fold all``): every fold's validation cases, each once, are the test cases (``fold_cases``
lists each fold's), as a 5-fold cross-validation's predictions of every case hold them. Nothing is
written next to the data.

Task: softmax over ``len(labels)`` classes incl. background; labels must be 0..K-1.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import re
import shlex
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from bench.data.base import (Case, Sample, SegDataset, check_whole_ids, class_ids, describe, found_instead, hidden,
                              id_dtype, reading, split_problems, write_nifti_labels)
from bench.errors import BenchError, few
from bench.fileio import atomic_write, atomic_write_text, cache_dir, file_sha256, read_text, remove_orphans

if TYPE_CHECKING:
    from bench.data.preprocess import VolumePrep

SPLIT_SEED = 12345
# part of the cached volumes' names: a change in how they are written renames them (3: a case's spacing
# is its image's, no longer its label's)
VOLUME_CACHE_FORMAT = 3
_FOLD_LISTS = ('"train"', '"val"')  # a splits_final.json fold's lists, as errors name them
N_FOLDS = 5  # nnU-Net's default cross-validation
ALL_FOLDS = "all"  # fold=ALL_FOLDS: every fold's validation cases at once (bench score --fold all)
NNUNET_FOLD_ALL = "fold_all"  # nnU-Net's folder of its fold "all": not ALL_FOLDS (trained_on_every_case)
NNUNET_DATASET_NAME = re.compile(r"Dataset(\d{3})_(.+)")  # nnU-Net's DatasetNNN_Name: its id, then its Name
TEST_FRACTION_DENOM = 5  # 1/5 = 20 % of the cases are test cases
VOLUME_ENDINGS = (".nii.gz", ".nii")
# a cached volume: <case>.<sources' signature>[.<preprocessing key>; absent in format 1].<part>.npy
_CACHED = re.compile(r"(?P<case>[^.].*?)\.(?P<sig>[0-9a-f]{16})(?:\.[0-9a-f]{16})?\.(?:image|label)\.npy")
IMAGE_ENDINGS = (".png", ".bmp", ".tif", ".tiff")
# nnU-Net normalises each channel by its name in channel_names (casefolded): the scheme it applies,
# and the protocol modes here that do it or suit it (bench.transforms.normalize_image)
CHANNEL_SCHEMES = {
    "ct": ("CT normalisation", ("ct_foreground", "ct_window")),
    "nonorm": ("none", ("none",)),
    "rescale_to_0_1": ("a per-image min-max", ("minmax255",)),  # the same min-max, to [0, 255]
    "rgb_to_0_1": ("/255", ("none", "minmax255")),  # a fixed 0..255 scale, as stored or stretched to it
}
_ZSCORE = ("z-scoring", ("zscore",))  # any other name
REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")


# --- dataset.json ---------------------------------------------------------------------------


def parse_dataset_json(path: Path) -> dict[str, Any]:
    """Read and check ``dataset.json``; return it with ``labels`` normalised to ``{name: int}``.

    Accepts nnU-Net v1's ``modality`` / ``{"0": "background"}`` spellings too, and its lack of
    ``file_ending`` (v1 read ``.nii.gz`` only). BenchError (naming the file and the field) on anything
    the readers cannot use.
    """
    return check_dataset_meta(read_json(path), path)


def read_json(path: Path) -> Any:
    """The JSON in ``path``; BenchError naming it when it cannot be read or parsed."""
    text = read_text(path, "JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path}: not readable JSON ({exc})") from exc


def check_dataset_meta(data: Any, path: Path) -> dict[str, Any]:
    """``parse_dataset_json``'s checks on an already loaded ``data``; errors name ``path``."""
    if not isinstance(data, dict):
        raise BenchError(f"{path}: expected a JSON object")
    data = dict(data)
    if "channel_names" not in data and "modality" in data:  # nnU-Net v1 spelling
        data["channel_names"] = data["modality"]
    if "file_ending" not in data and "modality" in data:  # nnU-Net v1 read NIfTI only, and wrote no file_ending
        data["file_ending"] = ".nii.gz"
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise BenchError(f"{path}: missing field(s) {', '.join(missing)}; nnU-Net v2 needs {', '.join(REQUIRED_KEYS)}")
    channels = data["channel_names"]
    if not isinstance(channels, dict) or not channels:
        raise BenchError(f"{path}: channel_names must be a non-empty object like {{\"0\": \"CT\"}}")
    if not all(str(k).isdecimal() for k in channels) or sorted(int(k) for k in channels) != list(range(len(channels))):
        raise BenchError(f"{path}: channel_names keys must be 0..{len(channels) - 1}, got {sorted(channels)}")
    data["labels"] = _label_map(data["labels"], path)
    if not isinstance(data["numTraining"], int) or data["numTraining"] < 0:
        raise BenchError(f"{path}: numTraining must be a non-negative integer, got {data['numTraining']!r}")
    ending = data["file_ending"]
    if not isinstance(ending, str) or ending not in VOLUME_ENDINGS + IMAGE_ENDINGS:
        raise BenchError(
            f"{path}: file_ending {ending!r} not supported; expected one of {', '.join(VOLUME_ENDINGS + IMAGE_ENDINGS)}"
        )
    return data


def printable_name(name: object) -> bool:
    """Whether a class name is printable text on one line: a line break split a Markdown board's header
    in two, a tab its columns."""
    text = str(name)
    return bool(text.strip()) and all(c == " " or (c.isprintable() and not c.isspace()) for c in text)


def _label_map(labels: Any, path: Path) -> dict[str, int]:
    if not isinstance(labels, dict) or not labels:
        raise BenchError(f"{path}: labels must be a non-empty object {{name: id}}")
    if all(isinstance(v, str) for v in labels.values()) and all(str(k).isdigit() for k in labels):
        twice = sorted({v for v in labels.values() if list(labels.values()).count(v) > 1})
        if twice:
            raise BenchError(f"{path}: label name(s) {', '.join(map(repr, twice))} given to more than one id")
        labels = {v: int(k) for k, v in labels.items()}  # nnU-Net v1: {"0": "background", ...}
    out: dict[str, int] = {}
    for name, value in labels.items():
        if not printable_name(name):
            raise BenchError(f"{path}: label name {name!r}: expected printable text on one line")
        if isinstance(value, bool) or not isinstance(value, int):
            # nnU-Net's region-based labels are lists of ids; a quoted number is a slip of the JSON
            what = ("a list of ids: region-based training, which is not supported" if isinstance(value, list) else
                    f"not a whole number (write {value} without quotes)" if isinstance(value, str) and value.isdigit()
                    else "not a whole number")
            raise BenchError(f"{path}: label {name!r} = {value!r}: {what}; labels must be {{name: integer id}}")
        out[name] = value
    values = sorted(out.values())
    if 0 not in values:  # "0..1" would have read as the ids' count being wrong
        raise BenchError(f"{path}: no label has id 0; nnU-Net's labels start with the background, "
                         f"e.g. \"background\": 0, then the classes 1..{len(values)}; got ids {values}")
    if values != list(range(len(values))):
        raise BenchError(f"{path}: label ids must be 0..{len(values) - 1} with background 0, got {values}")
    if "ignore" in out:  # nnU-Net's unannotated pixels, left out of its loss: bench's losses count every pixel
        raise BenchError(f"{path}: the 'ignore' label (nnU-Net's unannotated pixels) is not supported: bench trains "
                         "and scores every pixel; give those pixels a class, or use fully annotated cases only")
    return out


def is_volume_ending(ending: str) -> bool:
    return ending in VOLUME_ENDINGS


# --- file readers ---------------------------------------------------------------------------


def load_nifti(path: Path):
    """``path`` opened with nibabel: its header read, its voxels not yet (nibabel reads them on demand), so
    one open gives a prediction's geometry and its voxels (``read_nifti(path, img=...)``)."""
    import nibabel as nib  # imported here: only volumes need it

    with reading(path, "a NIfTI volume"):
        return nib.load(str(path))


def read_nifti(path: Path, *, label: bool = False, img=None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A 3-D NIfTI as (D, H, W) = (z, y, x) plus spacing in mm in the same order; ``img``: ``path`` opened
    already (``load_nifti``), its header not read again."""
    with reading(path, "a NIfTI volume"):
        img = load_nifti(path) if img is None else img
        arr = nifti_voxels(path, img, label=label)
    if label:
        arr = arr.astype(np.int64)
    return np.ascontiguousarray(arr.transpose(2, 1, 0)), _spacing_zyx(img)


def nifti_voxels(path: Path, img, *, label: bool = False) -> np.ndarray:
    """The voxels of ``img`` (``path`` loaded with nibabel) as stored, (x, y, z): float32 for an image, the
    stored ids for a label, checked whole. The one place NIfTI voxels are read (the nnU-Net reader, the BTCV
    converter), so an (x, y, z, 1) file reads as its volume everywhere (``volume_shape``)."""
    shape = _check_3d(path, img.shape)
    arr = np.asarray(img.dataobj) if label else img.get_fdata(dtype=np.float32)
    if label:
        check_whole_ids(path, arr)
    return arr.reshape(shape)  # a view: only axes of size 1 go


def _spacing_zyx(img) -> tuple[float, float, float]:
    # zooms are float32 in the header: 0.8 reads back as 0.800000011920929; 7 digits is exact
    zooms = tuple(float(f"{float(z):.7g}") for z in img.header.get_zooms()[:3])
    return zooms[2], zooms[1], zooms[0]


def nifti_geometry(path: Path) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """(D, H, W) and the spacing in mm in the same order, from the header only."""
    img = load_nifti(path)
    shape = _check_3d(path, img.shape)
    return (shape[2], shape[1], shape[0]), _spacing_zyx(img)


def nifti_shape(path: Path) -> tuple[int, int, int]:
    """(D, H, W) from the header only."""
    return nifti_geometry(path)[0]


def volume_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A NIfTI's stored shape as the volume it holds: trailing axes of size 1 beyond the third dropped, as
    SimpleITK (and so nnU-Net) reads them. 3D Slicer, ITK exports and MRI converters write (x, y, z, 1);
    (x, y, 1, 1) is the slice (x, y, 1). A 4th axis of several channels stays."""
    shape = tuple(shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def channel_count(stored: tuple[int, ...]) -> int:
    """How many values per voxel a NIfTI of shape ``stored`` holds beyond one (x, y, z) volume: the size of
    its one axis past the third that is not of size 1, where its first three are all the volume's (an
    (x, y, z, N) series or channels; the (x, y, z, 1, N) vector image SimpleITK's ``GetImageFromArray``
    writes for a (z, y, x, N) array); 0 for any other shape."""
    stored = tuple(stored)
    rest = [n for n in stored[3:] if n != 1]
    return rest[0] if len(rest) == 1 and 1 not in stored[:3] else 0


def _size_one_fix(stored: tuple[int, ...]) -> str:
    """The remedy for a NIfTI of shape ``stored`` that holds 3 axes longer than 1 among axes of size 1
    placed where (x, y, z) cannot be read off (not only trailing ones, which ``volume_shape`` drops)."""
    kept = tuple(n for n in stored if n != 1)
    if len(stored) == 5 and stored[2:4] == (1, 1):  # a vector image of a (1, D, H, W) array, components W
        array = (1, stored[1], stored[0], stored[4])
        return (f"; its axes of size 1 dropped it is 3-D, {kept}, out of x, y, z order: SimpleITK's "
                f"GetImageFromArray stores a 4-D array's last axis as values per voxel, so a (1, D, H, W) array "
                f"saved as it is, here {array}, reads so: save volume[0]")
    return (f"; its axes of size 1 dropped it is 3-D, {kept}: an array with an axis of size 1 too many saved "
            "as it is? save the 3-D volume (numpy: volume.squeeze())")


def _check_3d(path: Path, stored: tuple[int, ...]) -> tuple[int, int, int]:
    """The (x, y, z) volume of a NIfTI of shape ``stored`` (``volume_shape``); BenchError with the remedy
    for any other shape."""
    shape = volume_shape(stored)
    if len(shape) == 3:
        return shape
    if sum(n != 1 for n in stored) == 3:
        fix = _size_one_fix(tuple(stored))
    elif len(shape) == 2:
        fix = "; a 2-D image: save it with a slice axis, shape (x, y, 1), or as a PNG dataset (file_ending '.png')"
    elif channel_count(stored):
        fix = ("; nnU-Net keeps each channel in a file of its own: split the last axis into CASE_0000, CASE_0001, "
               "... and declare them in channel_names")
    else:
        fix = ""
    raise BenchError(f"{path}: expected a 3-D NIfTI volume, got shape {tuple(stored)}{fix}")


def channel_count_problem(found: int, declared: int) -> str:
    """Why a 2-D case's images hold ``found`` channels where dataset.json declares ``declared``, with the
    remedy where the extra one is a PNG's alpha (RGBA for RGB, LA for grayscale). Shared by the reader
    (which raises) and ``bench data verify`` (which reports)."""
    alpha = found == declared + 1 and found in (2, 4)
    fix = (f"; an alpha channel? drop it (PIL: Image.convert('{'RGB' if found == 4 else 'L'}'))" if alpha else
           "; colour among grayscale images? save every image as grayscale (PIL: Image.convert('L')), or, "
           "if all are colour, declare three channels (\"0\": \"R\", \"1\": \"G\", \"2\": \"B\")"
           if (found, declared) == (3, 1) else "")
    return f"{found} channels; dataset.json declares {declared}{fix}"


def read_png(path: Path, *, label: bool = False) -> np.ndarray:
    """(H, W) or (H, W, C) float32 image, or (H, W) int64 label."""
    return png_array(path, *png_pixels(path), label=label)


def png_pixels(path: Path, what: str = "an image") -> tuple[np.ndarray, str]:
    """The pixels of the 2-D image at ``path`` as stored, and its PIL mode ("1" 1-bit, "L" grey, "RGB",
    "P" palette, ...), from one open; BenchError naming ``path`` (as ``what``) for an unreadable file."""
    from PIL import Image

    with reading(path, what):
        with Image.open(path) as im:
            if getattr(im, "n_frames", 1) > 1:  # Pillow would read the first page alone
                raise BenchError(f"{path}: {im.n_frames} pages; expected a 2-D image (nnU-Net reads 3-D TIFFs "
                                 "with its Tiff3DIO and a spacing .json, which this reader does not support)")
            return np.asarray(im), im.mode


def png_array(path: Path, arr: np.ndarray, mode: str, *, label: bool = False) -> np.ndarray:
    """``png_pixels``' ``arr`` (of PIL ``mode``) as ``read_png`` returns it."""
    if mode == "P" and not label:
        raise BenchError(f"{path}: a palette image, whose pixels are palette indices, not intensities; "
                         "expected a grayscale or RGB image")
    if label:
        if arr.ndim != 2:
            raise BenchError(f"{path}: a label image must be single-channel, got shape {arr.shape}")
        return arr.astype(np.int64)
    return arr.astype(np.float32)


def channel_path(root: Path, case: str, channel: int, ending: str) -> Path:
    return root / "imagesTr" / f"{case}_{channel:04d}{ending}"


def _dataset_folder(root: Path) -> str:
    """The folder nnU-Net names a dataset's files by under nnUNet_preprocessed and nnUNet_results: the raw
    folder's own name where it is one of nnU-Net's (``Dataset501_Liver``), else a placeholder for it."""
    name = root.resolve().name
    return name if NNUNET_DATASET_NAME.fullmatch(name) else "DatasetXXX_Name"


def label_path(root: Path, case: str, ending: str) -> Path:
    return root / "labelsTr" / f"{case}{ending}"


def check_same_grid(path: Path, img, image: Path, label: Path) -> None:
    """BenchError unless the NIfTI at ``path`` (``img``: opened, ``load_nifti``), of its ``label``'s shape, places
    its voxels as its case's ``image`` (``_0000``: nnU-Net's writer copies the image's geometry) or its ``label``
    file does (where the two headers differ, the arrays are still used voxel for voxel): the same orientation,
    axis directions and origin (``same_placement``), naming what differs from the image (orientation, e.g. LAS,
    not RAS; axes turned; origin) and how to put it right. The spacing is not compared here: a header of another
    spacing on the case's grid (a tool that writes its own zooms) is scored on the case's and said (``bench
    score``). Of another shape, it returns: the caller's shape check says that (a (D, H, W) array saved as it
    is, with a made-up affine, is a transpose to name first)."""
    refs = [load_nifti(file) for file in (image, label)]
    if volume_shape(img.shape) != volume_shape(refs[1].shape):  # as read: (x, y, z, 1) is (x, y, z)
        return
    mine, theirs = img.affine, refs[0].affine
    if any(same_placement(mine, ref.affine) for ref in refs):
        return
    axes = []
    for file, affine in ((path, mine), (image, theirs)):
        with reading(file, "a NIfTI volume"):  # a NaN in the affine fails in aff2axcodes: a corrupt header
            axes.append(axcodes(affine))
    what = (f"orientation {axes[0]}, not {axes[1]}" if axes[0] != axes[1] else
            f"orientation {axes[0]} as the image's, its axes turned up to {max(_angles(mine, theirs)):.2g} degrees"
            if not _same_directions(mine, theirs) else
            f"origin {tuple(round(float(v), 3) for v in mine[:3, 3])}, "
            f"not {tuple(round(float(v), 3) for v in theirs[:3, 3])}")
    raise BenchError(f"{path}: not on the grid of its image {image} ({what}), nor on its label file's: its voxels "
                     "would be scored against other places; write it on the image's grid, as nnU-Net does (an array "
                     "already on that grid with a wrong header: save it with the image's affine and header)")


def axcodes(affine: np.ndarray) -> str:
    """"RAS", "LPS" and the like: where a NIfTI affine's voxel axes point ("?" for an axis a degenerate affine
    leaves undefined)."""
    import nibabel as nib

    return "".join(c or "?" for c in nib.aff2axcodes(affine))


def _directions(affine: np.ndarray) -> np.ndarray:
    """The unit vectors of a NIfTI affine's voxel axes (its columns without their zooms)."""
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    return affine[:3, :3] / np.where(norms > 0, norms, 1.0)


def _same_directions(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two NIfTI affines' voxel axes point the same ways (to 1e-3), whatever their zooms."""
    return bool(np.allclose(_directions(a), _directions(b), rtol=0, atol=1e-3))


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Degrees between each voxel axis of affine ``a`` and the same axis of ``b``."""
    cosines = np.clip((_directions(a) * _directions(b)).sum(axis=0), -1.0, 1.0)
    return np.degrees(np.arccos(cosines))


def same_placement(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two NIfTI affines put voxel (i, j, k) of one grid at the same place, whatever their zooms say:
    the same axis directions (to 1e-3) and origin (to 1e-3 mm). Zooms are left to the caller: a header of
    other zooms on the same voxels is a header written otherwise, not voxels moved."""
    return _same_directions(a, b) and bool(np.allclose(a[:3, 3], b[:3, 3], rtol=0, atol=1e-3))


def read_case(root: Path, case: str, ending: str, n_channels: int,
              num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray, tuple | None]:
    """Image (spatial + channels-last if >1 channel), label int64, spacing (volumes) or None.

    ``num_classes``: when given, label ids outside 0..num_classes-1 are a BenchError."""
    lab_path = label_path(root, case, ending)
    read = read_nifti if is_volume_ending(ending) else _read_png_pair
    label, label_spacing = read(lab_path, label=True)
    if num_classes is not None:
        label = class_ids(lab_path, label, num_classes)
    chans = []
    c = 0
    while len(chans) < n_channels:  # an RGB PNG supplies 3 channels from one file
        path = channel_path(root, case, c, ending)
        if not path.is_file():
            raise BenchError("{}: {}".format(*missing_channel(root, case, c, ending, n_channels, len(chans))))
        arr, channel_spacing = read(path)
        if c == 0:
            spacing = channel_spacing  # the case's spacing is its image's, as nnU-Net takes it
        if not np.isfinite(arr).all():  # nnU-Net's dataset check refuses them too: they would train as NaN
            raise BenchError(f"{path}: image holds NaN or infinite values; expected finite intensities")
        why = grid_mismatch(path, arr.shape[:label.ndim], channel_spacing, lab_path, label.shape, label_spacing)
        if why:
            raise BenchError(f"{path}: {why}")
        chans.extend([arr] if arr.ndim == label.ndim else [arr[..., i] for i in range(arr.shape[-1])])
        c += 1
    if len(chans) != n_channels:
        first = channel_path(root, case, 0, ending)
        raise BenchError(f"{first}: {channel_count_problem(len(chans), n_channels)}")
    image = chans[0] if n_channels == 1 else np.stack(chans, axis=-1)
    return image, label, spacing


def missing_channel(root: Path, case: str, c: int, ending: str, n_channels: int, found: int) -> tuple[Path, str]:
    """(file, why) for a case without channel ``c``'s file, ``found`` channels read before it. A grayscale
    ``_0000`` of a 2-D case where dataset.json declares 3 channels and no case has a ``_0001`` file is the
    file to name: the dataset holds RGB images, one file each, not separate channel files.
    Shared by the reader (which raises) and ``bench data verify`` (which reports)."""
    if (not is_volume_ending(ending) and c == found == 1 and n_channels == 3
            and not any((root / "imagesTr").glob(f"*_0001{ending}"))):
        return (channel_path(root, case, 0, ending), "1 channel (a grayscale image), where dataset.json declares 3 "
                "(channel_names) held as one RGB file per case (no case has a _0001 file); save it as RGB")
    why = f"missing (channel {c} of case {case!r}; dataset.json declares {n_channels})"
    return channel_path(root, case, c, ending), why


def _read_png_pair(path: Path, *, label: bool = False) -> tuple[np.ndarray, None]:
    return read_png(path, label=label), None  # read_nifti's (array, spacing) shape; PNGs have no spacing


def label_values(path: Path) -> np.ndarray:
    """The distinct ids a label file holds, decoded once per content: kept by the file's sha256
    (``file_sha256``, which ``content_id`` takes of every label file anyway) beside bench's file
    digests, so a grid's later commands and runs on a copy of the data do not decode every volume again."""
    return np.asarray(_label_values(str(path), file_sha256(path)), dtype=np.int64)


@functools.lru_cache(maxsize=None)
def _label_values(path: str, sha: str) -> tuple[int, ...]:
    try:
        kept = cache_dir("digests") / f"{sha}.label-ids.json"
    except OSError:  # no cache folder: decoded every time
        kept = None
    if kept is not None:
        try:
            return tuple(int(v) for v in json.loads(kept.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):  # none yet, or unreadable: decoded again
            pass
    read = read_nifti if any(path.endswith(e) for e in VOLUME_ENDINGS) else _read_png_pair
    label = read(Path(path), label=True)[0]
    if label.size and label.min() >= 0 and label.max() < 1 << 16:  # counting is linear (a LiTS label: 1e8 voxels)
        values = tuple(int(v) for v in np.flatnonzero(np.bincount(label.ravel())))
    else:  # negative or huge ids: sorted
        values = tuple(int(v) for v in np.unique(label))
    if kept is not None:
        try:
            atomic_write_text(kept, json.dumps(values))
        except (OSError, BenchError):  # a full disk: just not kept
            pass
    return values


def _read_compact(root: str | Path, case: str, ending: str, n_channels: int, num_classes: int):
    """``read_case`` with the label in the smallest unsigned type (a 512² x 500 CT label: 131 MB, not
    1 GB as int64), the form cases are kept in; the loaders hand out int64."""
    image, label, spacing = read_case(Path(root), case, ending, n_channels, num_classes)
    return image, label.astype(id_dtype(num_classes)), spacing


# Slices of one volume are usually requested together (a loader worker walks consecutive ids only
# by chance, but evaluation and small datasets do); two entries keep it cheap.
_read_case_cached = functools.lru_cache(maxsize=2)(_read_compact)


SPLITS_EXPECTED = 'a non-empty list of {"train": [...], "val": [...]} folds'  # splits_final.json


def read_splits(path: Path) -> list[tuple[list[str], list[str]]]:
    """The (train, val) folds of a splits_final.json; BenchError naming it where it is no list of such folds.
    Shared by the reader and ``bench data verify``, as ``fold_problems`` is."""
    folds = read_json(path)
    try:
        folds = [(f["train"], f["val"]) for f in folds]
    except (KeyError, TypeError) as exc:
        raise BenchError(f"{path}: expected {SPLITS_EXPECTED} ({describe(exc)})") from exc
    for k, fold in enumerate(folds):  # a string would be read as its letters, a nested list fail unhashable
        for key, ids in zip(_FOLD_LISTS, fold):
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise BenchError(f"{path}: expected {SPLITS_EXPECTED}: fold {k}'s {key} list holds {str(ids)[:60]}, "
                                 "not a list of case ids (strings)")
    return folds


def fold_problems(folds: list[tuple[list[str], list[str]]], cases: list[str]) -> list[str]:
    """What is wrong with each (train, val) fold of a splits_final.json, or []: no fold at all, cases without
    a label file, an empty list (nothing to train on, or to score), an id twice, a case on both sides.
    Shared by the reader (which raises) and ``bench data verify`` (which reports)."""
    if not folds:
        return [f"no folds; expected {SPLITS_EXPECTED}"]
    known, out = set(cases), []
    for k, (train, val) in enumerate(folds):
        unknown = sorted(set(train + val) - known)
        if unknown:
            out.append(f"fold {k} names cases without a label file: {few(unknown)}")
        out += [f"fold {k} has an empty {key!r} list; expected cases in both lists"
                for key, ids in (("train", train), ("val", val)) if not ids]
        out += [f"fold {k}: {problem}" for problem in split_problems(train, val, names=_FOLD_LISTS)]
    return out


def fixed_split(case_ids: list[str]) -> tuple[list[str], list[str]]:
    """(train, test): sorted ids permuted by default_rng(12345); the last max(1, n // 5) are test."""
    ids = sorted(case_ids)
    if len(ids) < 2:
        raise BenchError(f"a train/test split needs at least 2 cases, got {len(ids)}")
    order = [ids[i] for i in np.random.default_rng(SPLIT_SEED).permutation(len(ids))]
    n_test = max(1, len(ids) // TEST_FRACTION_DENOM)
    return sorted(order[:-n_test]), sorted(order[-n_test:])


def crossval_splits(case_ids: list[str], seed: int = SPLIT_SEED,
                    n_folds: int = N_FOLDS) -> list[dict[str, list[str]]]:
    """nnU-Net v2's default cross-validation split: ``[{"train": [...], "val": [...]}, ...]``.

    Equal to ``generate_crossval_split(np.sort(ids), seed, n_folds)`` (sklearn
    ``KFold(shuffle=True, random_state=seed)``), i.e. the ``splits_final.json`` nnU-Net writes
    when it has none, without sklearn: KFold shuffles ``arange(n)`` with ``RandomState(seed)``,
    cuts it into consecutive parts of ``n // n_folds`` (the first ``n % n_folds`` one larger) and
    returns both index sets in ascending order (it builds them from a boolean mask)."""
    ids = sorted(set(case_ids))  # np.sort and sorted order str the same way (by code point)
    n = len(ids)
    if n < n_folds:  # KFold raises ValueError here
        raise BenchError(f"{n_folds}-fold cross-validation needs at least {n_folds} cases, got {n}")
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)  # sklearn's check_random_state(int)
    sizes = np.full(n_folds, n // n_folds)
    sizes[: n % n_folds] += 1
    bounds = np.concatenate(([0], np.cumsum(sizes)))
    folds = []
    for k in range(n_folds):
        test = np.zeros(n, dtype=bool)
        test[order[bounds[k]:bounds[k + 1]]] = True
        folds.append({"train": [ids[i] for i in np.flatnonzero(~test)],
                      "val": [ids[i] for i in np.flatnonzero(test)]})
    return folds


# the rules bench run --folds splits by, as records and bench score name them
_DRAWN_FOLDS = (f"the {N_FOLDS} folds nnU-Net v2 generates, drawn by bench "
                f"(KFold(shuffle=True, random_state={SPLIT_SEED}) over the sorted case ids)")
_FILE_FOLDS = "the data's splits_final.json (each fold's val cases as its test cases)"


def folds_said(n_folds: int, n_cases: int) -> str:
    """What ``fold=ALL_FOLDS`` scores, in words."""
    return f"all {n_folds} folds' validation cases, {n_cases} cases, each once"


def kfold_split(case_ids: list[str], fold: int, n_folds: int = N_FOLDS) -> tuple[list[str], list[str]]:
    """(train, test) of fold ``fold`` of nnU-Net v2's default split (``crossval_splits``)."""
    split = crossval_splits(case_ids, n_folds=n_folds)[fold]
    return split["train"], split["val"]


def grid_mismatch(image: Path, shape: tuple, spacing: tuple | None, label: Path, label_shape: tuple,
                  label_spacing: tuple | None) -> str | None:
    """Why an image file and its label are not on one grid (shape, or a volume's spacing), or None;
    nnU-Net refuses both. Volumes' shapes and spacings are given in (z, y, x), as the arrays are read."""
    axes = " (z, y, x)" if len(shape) == 3 else ""
    if tuple(shape) != tuple(label_shape):
        return (f"shape{axes} {tuple(shape)} differs from label {label.name} {tuple(label_shape)}; expected "
                "image and label of one size")
    if spacing is not None and label_spacing is not None and not np.allclose(spacing, label_spacing, rtol=1e-4):
        return (f"spacing{axes} {tuple(spacing)} mm differs from label {label.name} {tuple(label_spacing)} mm; "
                "expected image and label on one grid (scores and predictions would take the image's)")
    return None


def _header_grid(path: Path, volume: bool) -> tuple[tuple, tuple | None]:
    """(shape, spacing) from a file's header: a NIfTI's (z, y, x) and mm, a PNG's (height, width)."""
    if volume:
        return nifti_geometry(path)
    from PIL import Image

    with reading(path, "a PNG image"), Image.open(path) as img:
        return (img.size[1], img.size[0]), None


@functools.lru_cache(maxsize=8)
def _grid_problems(root: Path, ending: str, cases: tuple[str, ...], n_channels: int,
                   stamp: tuple) -> tuple[tuple, tuple]:
    """Headers only, once per process and state of the files (``stamp``; bench run plans each model of
    a grid apart): image files whose grid differs from their label's, as (path, why) pairs, and the
    cases whose first channel and label differ only in origin or orientation (NIfTI affines)."""
    volume = is_volume_ending(ending)
    errors, turned = [], []
    for case in cases:
        label = label_path(root, case, ending)
        label_shape, label_spacing = _header_grid(label, volume)
        found = 0
        for c in range(n_channels):
            image = channel_path(root, case, c, ending)
            if not image.is_file():  # reading the case names it (an RGB PNG holds 3 channels in _0000)
                continue
            shape, spacing = _header_grid(image, volume)
            why = grid_mismatch(image, shape, spacing, label, label_shape, label_spacing)
            if why:
                errors.append((image, why))
                found += 1
        if volume and not found and not same_geometry(channel_path(root, case, 0, ending), label):
            turned.append(case)
    return tuple(errors), tuple(turned)


def same_geometry(image: Path, label: Path) -> bool:
    """Whether two NIfTI files place their voxels at the same points (affines within 1e-3 mm; headers
    only). Unreadable files count as the same: their reads report them."""
    import nibabel as nib

    try:
        return bool(np.allclose(nib.load(str(image)).affine, nib.load(str(label)).affine, rtol=1e-4, atol=1e-3))
    except Exception:  # noqa: BLE001
        return True


def trained_on_every_case(folder: Path, data: NnUNetDataset) -> tuple[str, str]:
    """Where ``folder``'s path (as given, or resolved) has a ``fold_all`` component, of a model of ``data``'s
    dataset, of one no nnU-Net id tells from it (``_same_dataset``) or of one nothing names (``fold_all_dataset``),
    the words that say what that is: nnU-Net's fold "all" (``nnUNetv2_train DATASET CONFIG all``) trains on every
    case, so its ``validation/`` holds predictions of its own training cases; not ``ALL_FOLDS`` (a cross-validation:
    each case predicted by the fold that did not train on it). Second, where a ``fold_all`` model is of another
    dataset by its name alone (an external test set's predictions, taken as of cases it never trained on), the note
    that says what names it; "" for each otherwise."""
    path = Path(folder).expanduser()
    for parts in (path.parts, path.resolve().parts):
        if NNUNET_FOLD_ALL in parts:
            fold_dir = Path(*parts[:len(parts) - parts[::-1].index(NNUNET_FOLD_ALL)])
            break
    else:
        return "", ""
    name, told = fold_all_dataset(path, fold_dir)
    names = (data.root.name, data.root.resolve().name, data.meta.get("name"))
    ours = list(dict.fromkeys(n for n in names if n and isinstance(n, str)))
    said = ", ".join(ours)
    whose = _same_dataset(name, ours) if name else None
    if whose is False:
        return "", (f"{fold_dir}: nnU-Net's {NNUNET_FOLD_ALL}, whose model trained on every case of its dataset, "
                    f"scored on that dataset's name alone: {told} names it {name}, not this data ({said}), so these "
                    "are taken as predictions of cases it never trained on (an external test set's); of a model of "
                    "this data they would be training scores")
    what = f"of nnU-Net's {NNUNET_FOLD_ALL}, whose model (nnUNetv2_train DATASET CONFIG all) trained on every case"
    if whose:
        return what + (f" of this data ({name}, as {told} names it" + ("" if name in ours else f"; this data: {said}")
                       + "), so its predictions are of cases it was trained on"), ""
    if name:  # no name agrees and none differs: taken as this data's, a training score never passing as a test's
        # renaming helps only where the data's names lack the id (the model's name, where it lacks one, is its own)
        rename = "" if _nnunet_ids(ours) else ", or name this data's folder DatasetNNN_Name by its nnU-Net id"
        return what + (f" of {name}, as {told} names it, taken as this data ({said}): no nnU-Net dataset id tells "
                       "the two apart, so its predictions are taken as of cases it was trained on (if they are another "
                       "dataset's, an external test set's, score them from a folder outside any named "
                       f"{NNUNET_FOLD_ALL}{rename})"), ""
    return what + (", so its predictions are of cases it was trained on (nothing names the model's dataset: no "
                   f"plans.json in {fold_dir.parent} names it; predictions of other cases, as an external test set's, "
                   f"are scored from a folder outside any named {NNUNET_FOLD_ALL})"), ""


def _same_dataset(name: str, ours: list[str]) -> bool | None:
    """Whether nnU-Net's dataset ``name`` (``Dataset900_Synth``) is the one the data's ``ours`` names (its folder's
    names, dataset.json's ``name``): by nnU-Net's id where a name of the data has one (True where one agrees, False
    where none does: another dataset); else by the Name part (MSD-converted data's ``"name": "Synth"``, a copy's
    folder named otherwise): True where it is one of the data's names, None where that says neither."""
    match = NNUNET_DATASET_NAME.fullmatch(name)
    ident, part = match.groups() if match else (None, name)
    ids = _nnunet_ids(ours)
    if ident is not None and ids:
        return ident in ids
    parts = {m[2] if (m := NNUNET_DATASET_NAME.fullmatch(n)) else n for n in ours}
    return True if part in parts else None


def _nnunet_ids(names: list[str]) -> set[str]:
    """The nnU-Net dataset ids (``900`` of ``Dataset900_Synth``) that ``names`` hold."""
    return {m[1] for m in map(NNUNET_DATASET_NAME.fullmatch, names) if m}


def fold_all_dataset(folder: Path, fold_dir: Path) -> tuple[str | None, str]:
    """The dataset a ``fold_all`` model trained on, and what names it: ``plans.json``'s ``dataset_name`` (nnU-Net
    keeps it in the model folder, nnUNet_results/DatasetXXX_Name/<Trainer>__<Plans>__<config>/, above
    ``fold_all``; nnUNetv2_predict copies it beside its predictions), else that results folder's name; (None, "")."""
    for plans in (fold_dir.parent / "plans.json", folder / "plans.json"):
        try:
            name = json.loads(plans.read_text(encoding="utf-8")).get("dataset_name")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(name, str) and name:
            return name, str(plans)
    results = fold_dir.parent.parent
    if "__" in fold_dir.parent.name and NNUNET_DATASET_NAME.fullmatch(results.name):
        return results.name, f"its results folder {results}"
    return None, ""


def other_endings_hint(root: Path, ending: str, folder: str = "labelsTr") -> str:
    """"; and 6 '*.nii.gz' files: is file_ending '.nii.gz'?" where labelsTr holds files of another
    ending than dataset.json's (a wrong ``file_ending`` reads as a wrong ``numTraining``); for
    ``folder="imagesTr"``, the image files of another ending (JPEG images beside PNG labels), which
    nnU-Net reads with the labels' one ``file_ending``; else ""."""
    others = sorted(p.name for p in (root / folder).iterdir()
                    if "." in p.name and not hidden(p) and not p.name.endswith(ending))
    if not others:
        return ""
    known = VOLUME_ENDINGS + IMAGE_ENDINGS

    def ending_of(name: str) -> str:  # "img.v1.png" ends in .png, not .v1.png
        return next((name[-len(e):] for e in known if name.lower().endswith(e)), Path(name).suffix)

    other, n = collections.Counter(ending_of(name) for name in others).most_common(1)[0]
    if folder == "labelsTr":
        if other in known:
            return f"; and {n} '*{other}' files: is file_ending {other!r}?"
        if other.lower() in known:  # .PNG: nnU-Net matches the ending as written
            return f"; and {n} '*{other}' files: rename them to end in {other.lower()!r}"
        lossy = " (JPEG's compression changes the ids at edges)" if other.lower() in (".jpg", ".jpeg") else ""
        return (f"; and {n} '*{other}' files, which bench does not read as labels{lossy}: save them in a "
                f"lossless format bench reads ({', '.join(VOLUME_ENDINGS + IMAGE_ENDINGS)})")
    return (f"; {folder} holds {n} '*{other}' files ({few(others)}): images and labels share dataset.json's "
            f"file_ending {ending!r}: save the images as {ending!r}")


def list_cases(root: Path, ending: str) -> list[str]:
    """Case ids = names of ``labelsTr/*{ending}`` without the ending, sorted."""
    folder = root / "labelsTr"
    names = (p.name for p in folder.iterdir() if not hidden(p))
    return sorted(n[: -len(ending)] for n in names if n.endswith(ending))


def image_file_problems(root: Path, ending: str, cases: list[str], n_channels: int) -> list[tuple[Path, str]]:
    """``imagesTr`` files that belong to no case: a name without the 4-digit channel index, an image
    without a label file, a channel ``dataset.json`` does not declare. nnU-Net refuses each; a reader
    that listed cases by their labels would drop them unsaid."""
    known, out = set(cases), []
    for p in sorted((root / "imagesTr").iterdir()):
        if not p.name.endswith(ending) or hidden(p):
            continue
        case, _, channel = p.name[: -len(ending)].rpartition("_")
        if not (len(channel) == 4 and channel.isdigit()):
            out.append((p, f"name does not end in _XXXX{ending} (4-digit channel index)"))
        elif case not in known:
            out.append((p, f"no label file labelsTr/{case}{ending} (nnU-Net trains on labelled images only; "
                           "unlabelled ones go in imagesTs)"))
        elif int(channel) >= n_channels:
            out.append((p, f"channel {int(channel)}, but dataset.json declares {n_channels} (channel_names)"))
    return out


class NnUNetDataset(SegDataset):
    kind = "nnunet"
    name = "nnunet"
    default_policy = "strict"
    layout = (
        "<root>/dataset.json, <root>/imagesTr/{CASE}_{XXXX}<ending>, <root>/labelsTr/{CASE}<ending> "
        "(nnU-Net v2 raw)"
    )

    def __init__(self, root: str | Path, fold: int | str | None = None):
        super().__init__(root)
        self.fold = fold
        self.fold_cases: list[list[str]] = []  # fold=ALL_FOLDS: each fold's validation cases, in fold order
        meta = self.root / "dataset.json"
        if not meta.is_file():
            raise BenchError(f"{meta}: not found; expected {self.layout}"
                             + found_instead(self.root, ("dataset.json", "labelsTr")))
        for sub in ("imagesTr", "labelsTr"):
            if not (self.root / sub).is_dir():
                raise BenchError(f"{self.root / sub}: folder missing; expected {self.layout}")
        self.meta = parse_dataset_json(meta)
        self.file_ending: str = self.meta["file_ending"]
        self.volumes = is_volume_ending(self.file_ending)
        labels = self.meta["labels"]
        # Instance attributes shadow the class defaults: they depend on dataset.json.
        self.num_classes = len(labels)
        self.class_names = tuple(n for n, v in sorted(labels.items(), key=lambda kv: kv[1]) if v != 0)
        self.in_chans = len(self.meta["channel_names"])
        self.cases = list_cases(self.root, self.file_ending)
        if len(self.cases) != self.meta["numTraining"]:
            raise BenchError(
                f"{meta}: numTraining is {self.meta['numTraining']} but {self.root / 'labelsTr'} holds "
                f"{len(self.cases)} '*{self.file_ending}' label files{other_endings_hint(self.root, self.file_ending)}"
            )
        problems = image_file_problems(self.root, self.file_ending, self.cases, self.in_chans)
        if problems:
            # a Decathlon task as downloaded has v1's dataset.json and one (4-D) file per case, no _0000
            msd = (f"; a Medical Segmentation Decathlon task as downloaded? `bench data convert --source msd --raw "
                   f"{shlex.quote(str(self.root))} --out DIR` writes it in nnU-Net's layout"
                   if "modality" in self.meta else "")
            listed = (f"; `bench data verify --dataset nnunet --data-root {shlex.quote(str(self.root))}` lists them"
                      if len(problems) > 1 else "")
            raise BenchError(few([f"{path}: {why}" for path, why in problems], 1) + listed + msd)
        imageless = [c for c in self.cases if not channel_path(self.root, c, 0, self.file_ending).is_file()]
        if imageless:
            c = imageless[0]
            raise BenchError(f"{label_path(self.root, c, self.file_ending)}: no image {c}_0000{self.file_ending} in "
                             f"imagesTr" + (f" ({len(imageless)} labels lack their image)" if len(imageless) > 1 else "")
                             + other_endings_hint(self.root, self.file_ending, "imagesTr"))
        self._train_cases, self._test_cases = self._split()
        self._slice_ids: list[str] | None = None

    def check_geometry(self) -> str | None:
        files = self.source_files()
        stamp = tuple((s.st_mtime_ns, s.st_size) for s in (f.stat() for f in files if f.is_file()))
        errors, bad = _grid_problems(self.root, self.file_ending, tuple(self.cases), self.in_chans, stamp)
        if errors:  # a test case's would surface after the whole training
            raise BenchError(few([f"{path}: {why}" for path, why in errors], 1) + (
                f"; `bench data verify --dataset nnunet --data-root {shlex.quote(str(self.root))}` lists them"
                if len(errors) > 1 else ""))
        if not bad:
            return None
        return (f"{self.root}: {len(bad)} of {len(self.cases)} cases' image and label differ in origin or orientation "
                f"(NIfTI affines; first: {bad[0]}); the arrays are used as stored, so they may not overlay: "
                f"bench data verify names each")

    def check_labels(self) -> None:
        """BenchError naming the first label file that holds ids outside the classes, before anything
        trains (reading it at evaluation would fail a whole grid after its training). The test cases
        always; the training cases where they are images (volumes take minutes to decode: those of a
        training case fail as the case is first read, at the start of training). Warns of a class that
        none of the test cases holds."""
        test = set(self._test_cases)
        tested: set[int] = set()
        for case in self._test_cases if self.volumes else [*self._test_cases, *self._train_cases]:
            path = label_path(self.root, case, self.file_ending)
            ids = class_ids(path, label_values(path), self.num_classes)  # the message reading it gives
            if case in test:
                tested.update(ids.tolist())
        if absent := [name for name, i in self.meta["labels"].items() if i and i not in tested]:
            # a 12-case set's 2 test cases: a rare class in none of them gave a DSC of nan, unexplained
            fold = "" if self.fold is None else " of all folds" if self.fold == ALL_FOLDS else f" of fold {self.fold}"
            warnings.warn(f"{self.root}: {'class' if len(absent) == 1 else 'classes'} {', '.join(map(repr, absent))}"
                          f" in none of the {len(test)} test cases{fold}: only false positives score it; under strict, "
                          "which leaves out cases with neither, a model that predicts it nowhere has no mean for it, "
                          "and so a DSC, mIoU and HD95 of nan; more cases, or a splits_final.json whose test cases "
                          "hold it, avoid that")

    def normalize_hint(self, normalize: str) -> str | None:
        """One line where the protocol's one ``normalize`` mode is not what some channels' names ask nnU-Net
        for (``CHANNEL_SCHEMES``): the channels, what suits each, and the key to change; else None."""
        wanted: dict[str, list[str]] = {}  # suited modes -> the channels (as dataset.json writes them) asking
        for name in dict.fromkeys(str(v) for v in self.meta["channel_names"].values()):
            scheme, modes = CHANNEL_SCHEMES.get(name.casefold(), _ZSCORE)  # casefolded, as nnU-Net compares
            if normalize not in modes:
                wanted.setdefault(f"{scheme} ({' or '.join(map(repr, modes))})", []).append(repr(name))
        if not wanted:
            return None
        asks = "; ".join(f"{', '.join(names)}: {scheme}" for scheme, names in wanted.items())
        return (f"{self.root / 'dataset.json'}: the protocol's normalize = '{normalize}' is not what channel_names "
                f"ask nnU-Net for ({asks}); set the top-level key normalize in a protocol file of your own "
                "(one mode for all channels)")

    @property
    def dataset_name(self) -> str:
        """``nnunet:<name>``: dataset.json's optional ``name``, else the folder (Dataset027_ACDC)."""
        return f"nnunet:{self.meta.get('name') or self.root.resolve().name}"

    @property
    def has_split_file(self) -> bool:
        return (self.root / "splits_final.json").is_file()

    @property
    def split_source(self) -> Path:
        path = self.root / "splits_final.json"
        return path if path.is_file() else self.root

    def case_of(self, item_id: str) -> str:
        return item_id.rsplit(":", 1)[0] if self.volumes else item_id  # a slice "case:z" of a volume

    @property
    def n_folds(self) -> int:
        folds = self._splits_file()
        return N_FOLDS if folds is None else len(folds)

    def _splits_file(self) -> list[dict[str, list[str]]] | None:
        """The folds of ``splits_final.json`` (checked), or None when there is none."""
        path = self.root / "splits_final.json"
        if not path.is_file():
            return None
        folds = read_splits(path)
        # every fold before any trains: fold 3's leak is found before fold 0 runs
        problems = fold_problems(folds, self.cases)
        if problems:
            raise BenchError(f"{path}: {'; '.join(problems)}")
        return [{"train": train, "val": val} for train, val in folds]

    def _split(self) -> tuple[list[str], list[str]]:
        path = self.root / "splits_final.json"
        k = 0 if self.fold is None else self.fold
        folds = self._splits_file()
        n = N_FOLDS if folds is None else len(folds)
        if self.fold not in (None, ALL_FOLDS) and not (isinstance(self.fold, int) and 0 <= self.fold < n):
            raise BenchError(f"{self.root}: fold {self.fold} does not exist (folds 0..{n - 1}, or {ALL_FOLDS})")
        if self.fold == ALL_FOLDS:
            return self._all_folds(folds)
        if folds is None:
            if self.fold is not None:  # the rule, whichever fold (records name the fold)
                self.split_rule = _DRAWN_FOLDS
                self.notes.append(f"no splits_final.json in {self.root}; split: fold {k} of {self.split_rule}")
            else:
                self.split_rule = (f"a split drawn by bench (numpy's default_rng({SPLIT_SEED}) permutation of the "
                                   "sorted case ids, the last 20% as test cases)")
                self.notes.append(f"no splits_final.json in {self.root}; fixed split: default_rng({SPLIT_SEED}) "
                                  "permutation of the sorted case ids, last 20% test")
            return self._drawn(lambda cases: kfold_split(cases, k)) if self.fold is not None else \
                self._drawn(fixed_split)
        train, test = folds[k]["train"], folds[k]["val"]
        self.split_rule = (_FILE_FOLDS if self.fold is not None else "fold 0 of the data's splits_final.json (its val "
                                                                     "cases as test cases)")
        self.notes.append(f"split: fold {k} of {path} (its val cases are the test set)")
        return train, test

    def _drawn(self, draw: Callable[[list[str]], Any]) -> Any:
        """``draw(self.cases)``, a split drawn by bench; its error for too few cases names where they were counted."""
        try:
            return draw(self.cases)
        except BenchError as exc:
            raise BenchError(f"{self.root / 'labelsTr'}: {exc} ('*{self.file_ending}' label files)") from None

    def _all_folds(self, folds: list[dict[str, list[str]]] | None) -> tuple[list[str], list[str]]:
        """(train, test) of ``fold=ALL_FOLDS``: the test cases are every fold's validation cases (of
        ``folds``, splits_final.json's, else those nnU-Net v2 generates), each once, in fold order, as a
        5-fold cross-validation's predictions hold them; "train" the cases no fold validates."""
        if folds is None:
            self.split_rule = _DRAWN_FOLDS
            folds = self._drawn(crossval_splits)
            where, source = f"no splits_final.json in {self.root}; split: ", self.split_rule
        else:
            self.split_rule, where, source = _FILE_FOLDS, "split: ", self.root / "splits_final.json"
        self.fold_cases = [list(f["val"]) for f in folds]
        test = list(dict.fromkeys(case for val in self.fold_cases for case in val))
        self.notes.append(f"{where}{folds_said(len(folds), len(test))}, of {source}")
        tested = set(test)
        return [case for case in self.cases if case not in tested], test

    # -- SegDataset ---------------------------------------------------------------------------

    def train_ids(self) -> list[str]:
        if not self.volumes:
            return list(self._train_cases)
        if self._slice_ids is None:
            self._slice_ids = [
                f"{case}:{z}"
                for case in self._train_cases
                for z in range(nifti_shape(label_path(self.root, case, self.file_ending))[0])
            ]
        return list(self._slice_ids)

    def train_volume_ids(self) -> list[str]:
        return list(self._train_cases)  # a 2-D case is a volume of one slice (bench.data.preprocess.as_volume)

    def load_train_volume(self, case_id: str, prep: VolumePrep) -> Sample:
        """A whole training volume as ``prep`` makes it (image float32 (C, *grid), label in a compact
        signed type, -1 outside the non-zero region), read-only (patches are cut from it): memory-mapped
        .npy files under ``volume_cache`` when it is set (written on first use), else preprocessed here
        each time."""
        if self.volume_cache is not None:
            image, label = self._mapped_volume(case_id, prep)
        else:
            image, label = self._preprocessed(case_id, prep)
            image.flags.writeable = label.flags.writeable = False
        return Sample(image=image, label=label, name=case_id)

    def _preprocessed(self, case: str, prep: VolumePrep) -> tuple[np.ndarray, np.ndarray]:
        from bench.data.preprocess import as_volume  # imported here: preprocess imports bench.transforms

        image, label, spacing = self._case_arrays(case, cached=False)
        image, label = as_volume(image, label)
        return prep.case(image, label, spacing, str(label_path(self.root, case, self.file_ending)))

    @property
    def volume_folder(self) -> Path | None:
        """Where this dataset's preprocessed training cases are kept: a folder of ``volume_cache`` per
        dataset root, so datasets whose cases share names never take each other's files for stale ones."""
        if self.volume_cache is None:
            return None
        tag = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:12]
        return Path(self.volume_cache) / "volumes" / tag

    def _mapped_volume(self, case: str, prep: VolumePrep) -> tuple[np.ndarray, np.ndarray]:
        """(image, label) of ``case`` preprocessed by ``prep``, as read-only memory maps of .npy files in
        ``volume_folder`` named by the case, a signature of its source files (path, size, mtime) and of
        the cache's format, and ``prep.key``: edited data is preprocessed again (files of its old
        sources are removed), and runs that preprocess differently (another fold's statistics, another
        spacing) keep their own files. Each file is synced and renamed into place, so concurrent loader
        workers never read half of one; a file that still cannot be mapped (truncated by a crash) is
        written again."""
        sig = hashlib.sha256(json.dumps([VOLUME_CACHE_FORMAT, self.source_stamp(case),
                                         self.num_classes]).encode()).hexdigest()[:16]
        folder = self.volume_folder
        paths = [folder / f"{case}.{sig}.{prep.key}.{part}.npy" for part in ("image", "label")]
        if all(p.is_file() for p in paths):
            try:
                return tuple(np.load(p, mmap_mode="r") for p in paths)
            except (OSError, ValueError):  # truncated or deleted meanwhile: written again below
                pass
        arrays = self._preprocessed(case, prep)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # the source files changed, or an older cache format; or the case's files from before the
            # cache had a folder per dataset, directly in volumes/
            for stale in [*folder.glob("*.npy"), *folder.parent.glob("*.npy")]:
                named = _CACHED.fullmatch(stale.name)  # temporary files (".<name>.<random>.tmp.npy") never match
                if named is not None and named["case"] == case and (named["sig"] != sig or stale.parent != folder):
                    stale.unlink(missing_ok=True)
            # other cases' temp files, each as large as a volume: the cache is bench's alone, so every
            # temp name, older versions' (".<stem>.<pid>.tmp.npy") too
            remove_orphans(folder, ".*.tmp.npy")
            for arr, path in zip(arrays, paths):  # a unique temp name: shards on other hosts may share a pid
                atomic_write(path, lambda tmp, arr=arr: np.save(tmp, arr), suffix=".tmp.npy")
            return tuple(np.load(p, mmap_mode="r") for p in paths)
        except OSError as exc:  # a full disk, a folder that cannot be written
            raise BenchError(f"{folder}: cannot keep the preprocessed training volume {case!r} there "
                             f"({exc.strerror or exc}); free space or delete the folder") from exc

    @property
    def n_train_cases(self) -> int:
        return len(self._train_cases)

    def train_cases(self):
        for case in self._train_cases:  # as stored: the statistics preprocessing needs come from these
            yield self.train_case(case)

    def train_case(self, case: str) -> tuple[np.ndarray, np.ndarray]:
        return self._case_arrays(case, cached=False)[:2]

    def source_stamp(self, case: str) -> list[tuple[str, int, int]]:
        """(path, size, mtime) of the case's image and label files: what says they were edited."""
        sources = [channel_path(self.root, case, c, self.file_ending) for c in range(self.in_chans)]
        sources.append(label_path(self.root, case, self.file_ending))
        return [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in sources if p.is_file()]

    def source_files(self) -> list[Path]:
        split = self.root / "splits_final.json"
        cases = [path for case in self.cases for path in (
            *(channel_path(self.root, case, c, self.file_ending) for c in range(self.in_chans)),
            label_path(self.root, case, self.file_ending))]
        return [self.root / "dataset.json", *([split] if split.is_file() else []), *cases]

    def scored_files(self) -> list[Path]:
        # every case's label: each is a test case of some fold
        return [label_path(self.root, case, self.file_ending) for case in self.cases]

    def required_files(self) -> list[Path]:
        # an RGB PNG supplies three channels from its _0000 file: a 2-D case's later channel files
        # need not exist (reading the case says so where they were needed)
        if self.volumes:
            return self.source_files()
        later = {channel_path(self.root, case, c, self.file_ending) for case in self.cases
                 for c in range(1, self.in_chans)}
        return [path for path in self.source_files() if path not in later]

    def train_geometry(self):
        if not self.volumes:  # the base class's advice, --dataset nnunet, was given
            raise BenchError(f"{self.root}: a target spacing resamples volumes by their voxel spacing, and these "
                             f"'*{self.file_ending}' images have none; --target-spacing native keeps them as they are")
        # headers only; nnU-Net's fingerprint takes the spacing of the image
        return (nifti_geometry(channel_path(self.root, case, 0, self.file_ending)) for case in self._train_cases)

    def test_ids(self) -> list[str]:
        return list(self._test_cases)

    def _case_arrays(self, case: str, *, cached: bool = True):
        """(image, label, spacing) of ``case``; ``cached``: through the two-entry cache that slices of one
        volume share. Cases read whole once (preprocessing, the fingerprint, test cases) pass it by: a
        preprocessing process or the evaluation pipeline would otherwise hold two decoded cases it is done with."""
        if case not in self.cases:
            raise BenchError(f"{self.root}: no case {case!r} in labelsTr/")
        read = _read_case_cached if cached else _read_compact
        return read(str(self.root), case, self.file_ending, self.in_chans, self.num_classes)

    def load_train(self, item_id: str) -> Sample:
        if not self.volumes:  # copies: the arrays live in the cache
            image, label, _ = self._case_arrays(item_id)
            return Sample(image=image.copy(), label=label.astype(np.int64), name=item_id)
        case, _, z = item_id.rpartition(":")
        image, label, _ = self._case_arrays(case)
        z = int(z)
        return Sample(image=image[z].copy(), label=label[z].astype(np.int64), name=item_id)

    def load_test(self, case_id: str) -> Case:
        image, label, spacing = self._case_arrays(case_id, cached=False)  # its own arrays: no copy
        return Case(case_id=case_id, image=image, label=label.astype(np.int64), spacing=spacing)

    def prediction_name(self, case_id: str) -> str:
        return f"{case_id}{self.file_ending}"  # nnU-Net's own: nnUNetv2_evaluate_folder pairs it with labelsTr

    def check_prediction_header(self, path: Path, img) -> None:
        """A volume must lie on its image's grid (its affine), as nnU-Net writes it, or on its label file's, as
        bench predict does (``check_same_grid``): the same shape in another orientation (a tool that reoriented
        it to RAS) would be scored voxel by voxel against another place of the body, unsaid."""
        case = path.name[: -len(self.file_ending)]
        check_same_grid(path, img, channel_path(self.root, case, 0, self.file_ending),
                        label_path(self.root, case, self.file_ending))

    def unscored_hint(self, extra: list[str], held: list[str]) -> str:
        """As ``SegDataset.unscored_hint``, where every name in ``extra`` is a case's prediction
        (``<case><ending>``): all the cases found (``held`` too) are in one cross-validation fold's validation
        cases (an nnU-Net fold's ``validation/`` folder: the --fold to pass), or cases of imagesTs/labelsTs
        (which bench does not score), or training cases of the split scored (nnU-Net's
        ``crossval_results_folds_*``, which holds every case: what ``fold=ALL_FOLDS`` scores; bench score refuses
        a folder of nnU-Net's ``fold_all`` before: ``trained_on_every_case``)."""
        n = len(self.file_ending)
        if not extra or not all("/" not in name and name.endswith(self.file_ending) for name in extra):
            return ""
        ids = [name[:-n] for name in extra]
        # no splits_final.json: bench draws nnU-Net's default folds; one of the user's own is elsewhere
        copy = ("" if self.has_split_file else f" (no splits_final.json in {self.root}: nnU-Net keeps its folds in "
                f"nnUNet_preprocessed/{_dataset_folder(self.root)}/splits_final.json; bench reads that file copied "
                "beside dataset.json)")
        try:
            folds = self._splits_file() or crossval_splits(self.cases)
        except BenchError:  # fewer cases than folds: no fold to name
            folds = []
        found = {*ids, *held}
        fold = next((k for k, f in enumerate(folds) if found <= set(f["val"])), None)
        if fold is not None and fold != self.fold:
            source = (str(self.root / "splits_final.json") if self.has_split_file else
                      f"the {N_FOLDS} folds nnU-Net v2 generates")
            return f"; they are validation cases of fold {fold} of {source}: pass --fold {fold}{copy}"
        known = set(self.cases)
        outside = [c for c in ids if c not in known]
        held_out = [c for c in outside if (self.root / "labelsTs" / f"{c}{self.file_ending}").is_file()
                    or (self.root / "imagesTs" / f"{c}_0000{self.file_ending}").is_file()]
        if held_out and len(held_out) == len(outside):
            return (f"; {few(held_out)} {'is a case' if len(held_out) == 1 else 'are cases'} of imagesTs/labelsTs, "
                    "which bench does not score: it scores test cases drawn from labelsTr")
        train = set(self._train_cases)
        trained = [c for c in ids if c in train]
        if trained and len(trained) == len(ids):
            said = "it is a training case" if len(ids) == 1 else f"these {len(ids)} are training cases"
            if {*ids, *held} == known:  # crossval_results_folds_*, cv_niftis_raw: what --fold all scores
                return (f"; {said} of the split scored, and the folder holds every case: --fold all scores a "
                        f"cross-validation's predictions of every case, each against its own fold{copy}")
            return f"; {said} of the split scored: give a folder holding the test cases' predictions only{copy}"
        return ""

    def prediction_folder_notes(self, folder: Path) -> list[str]:
        """Where ``folder`` holds the model's ``dataset.json`` (nnUNetv2_predict copies it beside its
        predictions): BenchError where its ``labels`` hold other ids than this data's, or give a class named
        alike (case, spaces and punctuation aside) another id: the ids would be scored as other classes (a
        swapped liver and tumor read as DSC 1 % for 85 %); a note where they only name the same ids otherwise
        ("Liver" for "liver")."""
        path = folder / "dataset.json"
        try:
            theirs = _label_map(json.loads(path.read_text(encoding="utf-8"))["labels"], path)
        except (OSError, ValueError, KeyError, TypeError, BenchError):  # none, or no labels: nothing to compare
            return []
        ours = self.meta["labels"]
        if theirs == ours:
            return []

        def said(labels: dict[str, int]) -> str:
            return ", ".join(f"{name} {i}" for name, i in sorted(labels.items(), key=lambda kv: kv[1]))

        def alike(name: str) -> str:
            return re.sub(r"[\W_]+", "", name).casefold()

        ids = {alike(name): i for name, i in ours.items()}
        moved = [name for name, i in theirs.items() if ids.get(alike(name), i) != i]
        whose = f"{path} (the model's, as nnUNetv2_predict copies it): its labels ({said(theirs)})"
        data = f"({said(ours)}, {self.root / 'dataset.json'})"
        if sorted(theirs.values()) == sorted(ours.values()) and not moved:
            return [f"{whose} name the data's ids otherwise {data}; scored as the data names them"]
        raise BenchError(f"{whose} are not the data's {data}: its ids would be scored as other classes; score it "
                         "against the data the model was trained on")

    def write_prediction(self, case: Case, pred: np.ndarray, path: Path) -> None:
        """As nnU-Net writes a prediction: the file ending of the data; volumes carry the geometry
        (affine, zooms) of the case's label file, which they are scored against."""
        if not self.volumes:
            return super().write_prediction(case, pred, path)
        import nibabel as nib

        ref = label_path(self.root, case.case_id, self.file_ending)
        with reading(ref, "a NIfTI volume"):
            src = nib.load(str(ref))
        write_nifti_labels(pred, path, self.num_classes, src.affine, src.header.copy())
