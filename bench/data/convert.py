"""Converters from the data as its owners distribute it to the layouts the readers expect.

``btcv_to_synapse``: the BTCV abdomen training set (Synapse syn3193805, ``RawData/Training/img/
imgXXXX.nii.gz`` and ``label/labelXXXX.nii.gz``, 30 CT volumes, 13 organ ids) to TransUNet's
Synapse layout (``bench.data.synapse``). TransUNet never released its preprocessing (its issue
#10), so the files in circulation cannot be rebuilt bit for bit; this follows what its
datasets/README states and what public re-creations (SAMed's preprocess_data.py) do:

- HU clipped to [-125, 275] and scaled to [0, 1] as (x + 125) / 400 (equal to the README's
  per-volume min-max wherever a volume reaches both ends of the window, as abdominal CT does);
  no resampling; float32.
- Axes: nibabel's (x, y, z) transposed to (z, y, x) = (D, H, W), as the nnU-Net reader does.
- Labels: the 8 evaluated organs get this project's class ids (``synapse.CLASS_NAMES``, the
  papers' column order), mapped by organ name from BTCV's ids, so the converted ids are known,
  unlike those of the circulating files, which nobody documented; the other five structures
  (oesophagus, veins, adrenal glands) become background.
- Geometry: the arrays are converted as stored, so a label must have its image's shape and
  spacing (refused otherwise); labels whose NIfTI affine differs from their image's, and images in
  another orientation than most, are warned about (nnU-Net's integrity check warns on both).
- Split: TransUNet's 12 test volumes (``TRANSUNET_TEST_CASES``, as h5 volumes, in its list
  order) and every slice of the other 18 as training npz slices; ``spacing.csv`` from the NIfTI
  headers, so ``strict`` HD95 is in mm.

``msd_to_nnunet``: a Medical Segmentation Decathlon task (``TaskXX_Name``, e.g. Task03_Liver,
which is LiTS) to nnU-Net v2's raw layout (``bench.data.nnunet``), as nnU-Net's own
``nnUNetv2_convert_MSD_dataset`` converts it.

``pairs_to_nnunet``: 2-D images with binary masks of one's own (a BUSI-like folder, ISIC-layout data
of another source) to that layout, which names its boards and carries a split of one's own.

The output is written to a temporary folder and renamed when complete (nothing half-written).
"""

from __future__ import annotations

import collections
import json
import re
import unicodedata
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bench.data import synapse as syn
from bench.data.base import reading, root_is_file
from bench.data.nnunet import printable_name
from bench.errors import BenchError, few
from bench.fileio import absent, atomic_write_dir, is_within, portable_write_text

HU_WINDOW = (-125.0, 275.0)
# BTCV label ids (the challenge's label list) of the organs the Synapse tables score
BTCV_IDS = {"spleen": 1, "kidney_r": 2, "kidney_l": 3, "gallbladder": 4, "liver": 6, "stomach": 7, "aorta": 8,
            "pancreas": 11}
BTCV_CASES = tuple(f"case{i:04d}" for i in (*range(1, 11), *range(21, 41)))  # the 30 training volumes


def btcv_label_map() -> np.ndarray:
    """Lookup table BTCV id (0..13) -> Synapse class id (``synapse.CLASS_NAMES`` order, 0 elsewhere)."""
    table = np.zeros(14, dtype=np.uint8)
    for cls, name in enumerate(syn.CLASS_NAMES, start=1):
        table[BTCV_IDS[name]] = cls
    return table


def _btcv_files(raw: Path) -> dict[str, tuple[Path, Path]]:
    """{case id: (image, label)} from ``raw`` = RawData, RawData/Training or the folder with img/, label/."""
    if not raw.is_dir():
        raise BenchError(f"{raw}: {'not a folder' if raw.exists() else 'not found'}; expected BTCV's RawData (or "
                         "RawData/Training, with img/ and label/)")
    for base in (raw, raw / "Training", raw / "RawData" / "Training"):
        if (base / "img").is_dir() and (base / "label").is_dir():
            break
    else:
        raise BenchError(f"{raw}: no img/ and label/ folders (expected BTCV's RawData/Training/img/imgXXXX.nii.gz "
                         f"and label/labelXXXX.nii.gz)")
    files = {}
    for img in sorted((base / "img").glob("img*.nii*")):
        m = re.fullmatch(r"img(\d{4})\.nii(\.gz)?", img.name)
        if not m:
            continue
        case = f"case{m.group(1)}"
        if case in files:
            raise BenchError(f"{img}: volume {m.group(1)} is there as .nii and .nii.gz; keep one")
        labels = [p for p in (base / "label" / f"label{m.group(1)}{e}" for e in (".nii.gz", ".nii")) if p.is_file()]
        if not labels:
            expected = base / "label" / f"label{m.group(1)}.nii.gz"
            raise BenchError(f"{expected}: missing (the label volume of {img.name})")
        files[case] = (img, labels[0])
    missing = [c for c in BTCV_CASES if c not in files]
    if missing:
        listed = few([f"img{c[4:]}.nii.gz" for c in missing], 6)  # as the files are named
        raise BenchError(f"{base / 'img'}: {len(missing)} of BTCV's 30 training volumes missing ({listed}); "
                         "TransUNet's split needs all 30")
    return {c: files[c] for c in BTCV_CASES}


def _read(img_path: Path, label_path: Path, table: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Image float32 (D, H, W) in [0, 1], label uint8 class ids, spacing (d, h, w) in mm."""
    import nibabel as nib

    from bench.data.nnunet import grid_mismatch, nifti_geometry, nifti_voxels

    # headers first (cheap), by the rule the nnU-Net reader uses: one shape and one spacing
    shape, spacing = nifti_geometry(img_path)
    why = grid_mismatch(img_path, shape, spacing, label_path, *nifti_geometry(label_path))
    if why:
        raise BenchError(f"{img_path}: {why}")
    with reading(img_path, "a NIfTI volume"):
        hu = nifti_voxels(img_path, nib.load(str(img_path)))
    with reading(label_path, "a NIfTI volume"):
        raw = nifti_voxels(label_path, nib.load(str(label_path)), label=True)
    raw = raw.astype(np.int16, copy=False)  # ids 0..13; 2 bytes a voxel, not 8 (volumes are ~40 M voxels)
    if raw.min() < 0 or raw.max() >= len(table):
        raise BenchError(f"{label_path}: label ids {int(raw.min())}..{int(raw.max())}; BTCV's are 0..13")
    lo, hi = HU_WINDOW
    np.clip(hu, lo, hi, out=hu)  # in place: no full-size temporaries
    hu -= lo
    hu /= hi - lo
    return hu.transpose(2, 1, 0), table[raw].transpose(2, 1, 0), spacing


def _placement(img_path: Path, label_path: Path) -> str | None:
    """How a label's NIfTI affine places its voxels differently from its image's ("orientation LPS,
    its image's RPS", or "origin"), or None. The arrays are converted as stored, so a label stored
    flipped (its affine flipped too) would lie mirrored on its image; nnU-Net warns on both."""
    from bench.data.nnunet import same_geometry

    if same_geometry(img_path, label_path):
        return None
    codes = [_axcodes(p) for p in (label_path, img_path)]
    return f"orientation {codes[0]}, its image's {codes[1]}" if codes[0] != codes[1] else "origin or direction"


def _axcodes(path: Path) -> str:
    """"LPS" and the like from a NIfTI header (``axcodes``)."""
    from bench.data.nnunet import axcodes, load_nifti

    affine = load_nifti(path).affine
    with reading(path, "a NIfTI volume"):  # a NaN in the affine fails in aff2axcodes: a corrupt header too
        return axcodes(affine)


def btcv_to_synapse(raw: str | Path, out: str | Path) -> Path:
    """Convert BTCV's raw training volumes under ``raw`` to the Synapse layout at ``out`` (created;
    must not exist or be empty); return ``out``. BenchError naming the file for anything unreadable."""
    files = _btcv_files(Path(raw))
    table = btcv_label_map()
    placed = {c: why for c, (img, lab) in files.items() if (why := _placement(img, lab))}
    odd = _odd_orientations([img for img, _ in files.values()])

    def write(root: Path) -> None:
        import h5py

        (root / syn.TRAIN_DIR).mkdir()
        (root / syn.TEST_DIR).mkdir()
        lists = root / syn.LIST_DIRS[0]
        lists.mkdir(parents=True)
        slices, spacing = [], []
        for case in sorted(set(BTCV_CASES) - set(syn.TRANSUNET_TEST_CASES)):
            image, label, zooms = _read(*files[case], table)
            spacing.append((case, zooms))
            for z in range(len(image)):  # every slice, with or without organs, as TransUNet's list
                name = f"{case}_slice{z:03d}"
                np.savez(root / syn.TRAIN_DIR / f"{name}.npz", image=image[z], label=label[z].astype(np.float32))
                slices.append(name)
            del image, label  # one volume in memory at a time
        for case in syn.TRANSUNET_TEST_CASES:
            image, label, zooms = _read(*files[case], table)
            spacing.append((case, zooms))
            with h5py.File(root / syn.TEST_DIR / f"{case}{syn.H5_SUFFIX}", "w") as f:
                f.create_dataset("image", data=image)
                f.create_dataset("label", data=label.astype(np.float32))  # ids stored as float, as in the real files
            del image, label
        portable_write_text(lists / syn.TRAIN_LIST, "\n".join(slices) + "\n")
        portable_write_text(lists / syn.TEST_LIST, "\n".join(syn.TRANSUNET_TEST_CASES) + "\n")
        portable_write_text(lists / "all.lst", "\n".join(f"{c}{syn.H5_SUFFIX}" for c in BTCV_CASES) + "\n")
        rows = [f"{c},{d:g},{h:g},{w:g}" for c, (d, h, w) in sorted(spacing)]
        portable_write_text(root / syn.SPACING_FILE, "case,d,h,w\n" + "\n".join(rows) + "\n")

    path = atomic_write_dir(Path(out), write)
    if placed:
        first = next(iter(placed))
        warnings.warn(f"{files[first][1]}: {len(placed)} of {len(files)} labels differ from their image in where "
                      f"their voxels lie (NIfTI affines; this one: {placed[first]}; cases: {', '.join(placed)}); "
                      "converted as stored, so those labels may not overlay their images: look at one in a viewer")
    if odd:
        warnings.warn(odd)
    return path


def _odd_orientations(images: list[Path]) -> str | None:
    """A note naming the images stored in another orientation than most (nnU-Net v1 checked this
    too): converted as stored, their anatomy is mirrored or turned against the other cases'."""
    codes = {p: _axcodes(p) for p in images}
    common, _ = collections.Counter(codes.values()).most_common(1)[0]
    odd = [p for p, c in codes.items() if c != common]
    if not odd:
        return None
    return (f"{odd[0]}: orientation {codes[odd[0]]}, most images' {common} ({len(odd)} of {len(images)} differ: "
            f"{', '.join(p.name for p in odd)}); converted as stored, so their anatomy lies mirrored or turned "
            "against the other cases'")


# --- Medical Segmentation Decathlon -> nnU-Net v2 raw ---------------------------------------------


def _msd_meta(raw: Path) -> dict:
    """The task's dataset.json (MSD / nnU-Net v1 spelling), checked for what the conversion needs."""
    path = raw / "dataset.json"
    if not path.is_file():
        raise BenchError(f"{path}: not found; expected an MSD task folder (TaskXX_Name with dataset.json, "
                         "imagesTr/ and labelsTr/)")
    from bench.data.nnunet import read_json

    meta = read_json(path)
    missing = [k for k in ("modality", "labels", "training") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise BenchError(f"{path}: missing field(s) {', '.join(missing)}; an MSD dataset.json has modality, "
                         "labels and training")
    if not isinstance(meta["training"], list) or not meta["training"]:
        raise BenchError(f"{path}: 'training' lists no cases; expected [{{\"image\": ..., \"label\": ...}}, ...]")
    for key, example in (("modality", '{"0": "CT"}'), ("labels", '{"0": "background", "1": "liver"}')):
        value = meta[key]
        if not isinstance(value, dict) or not value or not all(str(k).isdigit() for k in value):
            raise BenchError(f"{path}: {key} must map ids to names, like {example}; got {value!r}")
    return meta


def _msd_case(raw: Path, entry: Any, meta_path: Path) -> tuple[str, Path, Path]:
    """(case id, image, label) of one ``training`` entry; the id is the file name without .nii.gz."""
    try:
        image, label = (raw / str(entry[k]).removeprefix("./") for k in ("image", "label"))
    except (TypeError, KeyError):
        raise BenchError(f"{meta_path}: training entry {entry!r} is not {{\"image\": ..., \"label\": ...}}") from None
    for key, path in (("image", image), ("label", label)):
        # copied into the output: an absolute or ../ entry would copy any file this user can read
        if not is_within(path, raw):
            raise BenchError(f"{meta_path}: training entry {key} {entry[key]!r} lies outside {raw}; expected a "
                             "path inside the task folder, like ./imagesTr/liver_0.nii.gz")
        if not path.is_file():
            raise BenchError(f"{path}: missing (listed in {meta_path})")
    case = image.name.removesuffix(".gz").removesuffix(".nii")
    return case, image, label


def _write_volume(vol, src: Path, c: int, dest: Path) -> None:
    """Channel ``c`` (the 4th axis) of ``vol`` (``src`` loaded) as a plain 3-D file with the volume's affine
    and header: an MSD modality, or the one volume of an (x, y, z, 1) file. Values as the source stores them
    scaled (``dataobj`` applies scl_slope/scl_inter), written without rescaling."""
    import nibabel as nib

    from bench.data.nnunet import volume_shape

    with reading(src, "a NIfTI volume"):
        data = np.asanyarray(vol.dataobj[:, :, :, c])
    data = data.reshape(volume_shape(data.shape))  # (x, y, z, 1) of an (x, y, z, C, 1) file
    header = vol.header.copy()
    header.set_data_dtype(data.dtype)
    part = nib.Nifti1Image(data, vol.affine, header)
    part.header.set_slope_inter(1.0, 0.0)
    nib.save(part, str(dest))


def _copy_volume(vol, src: Path, dest: Path) -> None:
    """``src`` (loaded as ``vol``) copied byte for byte, as nnU-Net's converter copies it; one stored with
    trailing axes of size 1, (x, y, z, 1), written as its plain 3-D volume."""
    import shutil

    if vol.ndim == 3:
        shutil.copyfile(src, dest)
    else:
        _write_volume(vol, src, 0, dest)


def msd_to_nnunet(raw: str | Path, out: str | Path) -> Path:
    """Convert a Medical Segmentation Decathlon task (``TaskXX_Name``: dataset.json, imagesTr/,
    labelsTr/; e.g. Task03_Liver, which is LiTS) to nnU-Net v2's raw layout at ``out``, as
    ``nnUNetv2_convert_MSD_dataset`` does: every case of dataset.json's ``training`` list, a 3-D image
    copied byte for byte as ``<case>_0000<ending>``, a 4-D one (several modalities) split along its
    last axis into ``<case>_0000``, ``_0001``, ... with the volume's affine, labels copied (a file
    stored with trailing axes of size 1, (x, y, z, 1), is written as its plain 3-D volume instead);
    dataset.json rewritten in v2 form (channel_names from modality, labels name -> id), checked
    before any file is copied. The macOS ``._*`` files the MSD archives carry are never read: cases
    come from the list. Written to a temporary folder and renamed when complete."""

    import nibabel as nib

    from bench.data.nnunet import VOLUME_ENDINGS, check_dataset_meta, volume_shape

    raw = Path(raw)
    meta = _msd_meta(raw)
    meta_path = raw / "dataset.json"
    cases = [_msd_case(raw, e, meta_path) for e in meta["training"]]
    endings = {next((e for e in VOLUME_ENDINGS if p.name.endswith(e)), None) for _, img, lab in cases for p in (img, lab)}
    if len(endings) != 1 or None in endings:
        raise BenchError(f"{meta_path}: the training files must all end in one of {', '.join(VOLUME_ENDINGS)}; "
                         f"got {sorted(str(e) for e in endings)}")
    (ending,) = endings
    seen = {}
    for case, img, _ in cases:
        if case in seen:
            raise BenchError(f"{meta_path}: case {case!r} listed twice ({seen[case]} and {img})")
        seen[case] = img
    # the v2 file, checked as the nnU-Net reader will check it (errors name the task's dataset.json)
    checked = check_dataset_meta({**meta, "numTraining": len(cases), "file_ending": ending}, meta_path)
    v2 = {"name": meta.get("name") or raw.name, "description": meta.get("description", ""),
          "reference": meta.get("reference", ""), "licence": meta.get("licence", ""),
          "channel_names": {str(k): v for k, v in checked["channel_names"].items()}, "labels": checked["labels"],
          "numTraining": len(cases), "file_ending": ending}
    n_channels = len(v2["channel_names"])

    def write(root: Path) -> None:
        (root / "imagesTr").mkdir()
        (root / "labelsTr").mkdir()
        for case, img, lab in cases:
            with reading(img, "a NIfTI volume"):
                vol = nib.load(str(img))  # the headers only, until a volume is written
            with reading(lab, "a NIfTI volume"):
                lab_vol = nib.load(str(lab))
            # (x, y, z) and (x, y, z, C) as stored, less trailing axes of size 1, as the nnU-Net reader takes them
            shape, lab_shape = volume_shape(vol.shape), volume_shape(lab_vol.shape)
            if shape[:3] != lab_shape:
                raise BenchError(f"{lab}: shape {lab_shape} differs from its image's {shape[:3]}")
            try:
                if len(shape) == 3 and n_channels == 1:
                    _copy_volume(vol, img, root / "imagesTr" / f"{case}_0000{ending}")
                elif len(shape) == 4 and shape[3] == n_channels:
                    for c in range(n_channels):
                        _write_volume(vol, img, c, root / "imagesTr" / f"{case}_{c:04d}{ending}")
                else:
                    raise BenchError(f"{img}: shape {tuple(vol.shape)}; dataset.json names {n_channels} modality(ies), "
                                     f"so expected a 3-D volume{' with them on a 4th axis' if n_channels > 1 else ''}")
                _copy_volume(lab_vol, lab, root / "labelsTr" / f"{case}{ending}")
            except OSError as exc:  # a full disk, an unreadable file
                raise BenchError(f"{img}: could not be converted into {out} ({exc.strerror or exc})") from exc
        portable_write_text(root / "dataset.json", json.dumps(v2, indent=2) + "\n")

    return atomic_write_dir(Path(out), write)


# --- image and mask pairs of one's own -> nnU-Net v2 raw ------------------------------------------


def _case_id(stem: str) -> str:
    """An image's name as a case id nnU-Net's file names and shells take ("benign (1)" -> "benign_1"; letters
    of any script kept, "Müller", "患者甲", "रोगी", in their composed form as macOS names decompose them; none
    starting with "-", which tools read as an option)."""
    kept = "".join(c if c in "._-" or unicodedata.category(c)[0] in "LMN" else "\0"  # letters, marks, digits
                   for c in unicodedata.normalize("NFC", stem))
    return re.sub("\0+", "_", kept).strip("_.-") or "case"


def _pair_folders(raw: Path) -> list[tuple[str, Path]]:
    """(part, folder holding images/ and masks/): ``raw`` itself as the one pool of cases, or its train/ and
    test/ (or val/, the ISIC layout's test set) as a split of one's own."""
    if (raw / "images").is_dir():
        return [("", raw)]
    tests = [d for d in ("test", "val") if (raw / d / "images").is_dir()]
    if (raw / "train" / "images").is_dir() and len(tests) == 1:
        return [("train", raw / "train"), ("test", raw / tests[0])]
    if not raw.is_dir():
        raise absent(raw, f"--raw {raw}: no such folder")
    folders = sorted(p for p in raw.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = ", ".join(p.name + "/" for p in folders) or "no folders"
    if len(tests) == 2:  # train/val/test: bench keeps no validation set (its protocols choose no checkpoint on one)
        why = ("; bench trains on one set and tests on the other, with no validation set: move val/'s pairs into "
               "train/ (or test/) first")
    elif any("_mask" in f.name for d in folders for f in d.iterdir()):  # BUSI as downloaded: pairs per class folder
        why = ("; images and masks side by side in class folders (BUSI as downloaded)? gather them first: "
               "images/NAME.png and masks/NAME_mask*.png")
    else:
        why = ""
    raise BenchError(f"--raw {raw}: expected images/ and masks/ (one pool of cases, split by bench), or train/ and test/ "
                     f"(or val/) each holding them (your own split); found {found}{why}")


_COLOUR = 1 << 24  # a colour mask's pixel 0xRRGGBB, marked apart from grey values and palette indices


class _Classes:
    """``--label``: one name (binary masks: pixels >= 128, or 1, are the class), several names (masks of class
    ids: 1, 2, … in the names' order; palette masks by their indices) or NAME=VALUE pairs (each class's grey
    value, palette index or #rrggbb colour; background=VALUE for more values of background; the values not
    named are background, and said)."""

    def __init__(self, text: str):
        items = [part.strip() for part in text.split(",")]
        if not all(items):
            raise BenchError(f"--label {text!r}: expected a class name, several (disc,cup: masks of class ids 1, "
                             "2, …) or NAME=VALUE pairs (disc=128,cup=255; #rrggbb for colours)")
        pairs = [item.partition("=") for item in items]
        given = {sep for _, sep, _ in pairs}
        if len(given) > 1:
            raise BenchError(f"--label {text!r}: give every class a value (NAME=VALUE) or none (class ids in order)")
        self.by_value = given == {"="}
        self.background: list[int] = []  # the values named background (by_value only)
        self.values: list[int] = []  # one per class (by_value), in the names' order
        self.names: list[str] = []
        seen: dict[int, str] = {}
        for name, _, value in pairs:
            name = name.strip()
            if name.lower() == "ignore" or (name.lower() == "background" and not self.by_value):
                raise BenchError(f"--label {text!r}: {name!r} is a name nnU-Net gives another meaning; name the "
                                 "masks' classes, e.g. lesion" + ("" if name.lower() == "ignore" else
                                                                  " (background=VALUE names background's values)"))
            if not self.by_value:
                self.names.append(name)
                continue
            v = _label_value(text, value.strip())
            if v in seen:
                raise BenchError(f"--label {text!r}: value {value.strip()} given to {seen[v]!r} and {name!r}")
            seen[v] = name
            if name.lower() == "background":
                self.background.append(v)
            else:
                self.names.append(name)
                self.values.append(v)
        if len(set(map(str.lower, self.names))) != len(self.names) or not self.names:
            raise BenchError(f"--label {text!r}: expected class names, each once")
        if bad := [n for n in self.names if not printable_name(n)]:
            raise BenchError(f"--label {text!r}: class name {bad[0]!r}: expected printable text on one line")
        if self.by_value and 0 not in seen:
            self.background.append(0)  # black, or id 0, unless a class takes it (REFUGE: the cup is 0)

    @property
    def binary(self) -> bool:
        return len(self.names) == 1 and not self.by_value

    def ids(self, path: Path, mask: np.ndarray, colour: bool, unnamed: collections.Counter) -> np.ndarray:
        """Class ids (uint8) of one mask (``_mask_values``), counting the values that became background."""
        if not self.by_value:  # class ids as they are
            found = np.unique(mask)
            if colour or found[-1] > len(self.names):
                shown = [_value_text(int(v), colour) for v in found]
                ids = not colour and found[-1] <= 32 and found.tolist() == list(range(found[-1] + 1))
                nonzero = [v for v in shown if v not in ("0", "#000000")]
                named = ",".join(f"{n}={v}" for n, v in zip(self.names, nonzero))
                fix = (f"one name per id 1..{found[-1]}, in order" if ids else
                       f"each class's value, e.g. --label {named} (values not named become background)")
                raise BenchError(f"{path}: mask values {few(shown, 6)}; --label {','.join(self.names)} reads class "
                                 f"ids 0..{len(self.names)}: give {fix}" + _jpeg_note(path))
            return mask.astype(np.uint8)
        out = np.zeros(mask.shape, np.uint8)
        known = np.zeros(mask.shape, bool)
        for i, value in enumerate(self.values, 1):
            hit = mask == (_as_colour(value) if colour else value)
            out[hit] = i
            known |= hit
        for value in self.background:
            known |= mask == (_as_colour(value) if colour else value)
        values, counts = np.unique(mask[~known], return_counts=True)
        unnamed.update({_value_text(int(v), colour): int(c) for v, c in zip(values, counts)})
        return out


def _label_value(text: str, value: str) -> int:
    """A --label value: a grey value or palette index (0..65535), or #rrggbb (a colour, marked _COLOUR)."""
    if re.fullmatch(r"#[0-9a-fA-F]{6}", value):
        return _COLOUR | int(value[1:], 16)
    if re.fullmatch(r"[0-9]+", value) and int(value) <= 65535:  # not str.isdigit: "²" and "１２８" are digits
        return int(value)
    raise BenchError(f"--label {text!r}: value {value!r}: expected a grey value or palette index (0..65535) or a "
                     "colour #rrggbb")


def _as_colour(value: int) -> int:
    """A value as a colour mask's pixel: a grey value v is the colour (v, v, v)."""
    return value if value & _COLOUR else _COLOUR | (min(value, 255) * 0x010101)


def _rgb(values: np.ndarray) -> np.ndarray:
    """Colour pixels (0xRRGGBB, marked _COLOUR) as their channels, a last axis of 3."""
    return np.stack([(values >> shift) & 255 for shift in (16, 8, 0)], axis=-1)


def _value_text(value: int, colour: bool) -> str:
    return f"#{value & 0xFFFFFF:06x}" if colour else str(value)


def _jpeg_note(path: Path) -> str:
    return "; and save masks as PNG, not JPEG (its noise adds values)" if path.suffix.lower() in (".jpg", ".jpeg") \
        else ""


def _mask_values(path: Path) -> tuple[np.ndarray, str]:
    """A mask's pixels as stored (int64 (H, W)) and their kind: "palette" (indices), "grey" (values; RGB
    of equal channels too) or "colour" (0xRRGGBB marked _COLOUR, where an RGB mask's channels differ);
    an alpha channel dropped."""
    from PIL import Image

    with reading(path, "a mask"), Image.open(path) as im:
        kind = "palette" if im.mode in ("P", "PA") else "grey"
        arr = np.asarray(im.convert("RGB") if im.mode in ("CMYK", "YCbCr", "LAB", "HSV") else im)
    if arr.ndim == 3:  # LA/PA: the value; RGB(A): the colour
        arr = arr[..., :1] if arr.shape[-1] == 2 else arr[..., :3]
    arr = arr.astype(np.int64)
    if arr.ndim == 3 and not (arr[..., :1] == arr).all():
        return _COLOUR | (arr[..., 0] << 16) | (arr[..., 1] << 8) | arr[..., 2], "colour"
    return (arr[..., 0] if arr.ndim == 3 else arr), kind


def _several_classes(values: np.ndarray, kind: str, pixels: np.ndarray, label: str) -> str | None:
    """Why a mask (``_mask_values``; ``pixels``: its binary reading, ``_binary_pixels``) that the binary
    reading (>= 128 is the class) would misread holds several classes: more than one grey level (where
    ``mask_levels_note`` finds one beside 0/255), palette index or colour (black aside) covering a region;
    else None."""
    from bench.data.image_folders import mask_levels_note

    if kind == "grey" and not mask_levels_note(pixels.astype(np.float32) / np.float32(255.0)):
        return None  # 0/255 (soft or JPEG-noisy edges spread over many levels, on boundaries)
    if kind == "colour":
        regions = _colour_regions(values)
    else:
        found, counts = np.unique(values, return_counts=True)
        regions = [int(v) for v, c in zip(found, counts)  # exact values: a palette's indices, grey levels
                   if c >= max(4, 0.005 * values.size) and v != 0]
    if len(regions) < 2:
        return None
    shown = [_value_text(v, kind == "colour") for v in regions]
    what = {"palette": "palette indices", "colour": "colours", "grey": "grey values"}[kind]
    return (f"{what} {few(shown, 6)} each cover a region: several classes in one mask? name each class's value, "
            f"e.g. --label {label}={shown[0]},other={shown[1]} (values not named become background)")


def _binary_pixels(path: Path, values: np.ndarray, kind: str) -> np.ndarray:
    """A binary mask's pixels (uint8; ``values``, ``kind``: its ``_mask_values``), >= 128 the class: as the
    ISIC reader reads them, but a mask of one colour on black by its brightest channel (a red lesion saved
    as JPEG is 76 in gray, all background), and one drawn in the alpha channel over any one colour by its
    alpha."""
    from bench.data.image_folders import mask_pixels

    if (alpha := _drawn_alpha(path)) is not None:  # a shape drawn in the alpha channel, over one colour
        return alpha
    if kind != "colour":
        return mask_pixels(path)
    return _rgb(values).max(axis=-1).astype(np.uint8)


def _drawn_alpha(path: Path) -> np.ndarray | None:
    """A mask's alpha channel (uint8) where its shape is drawn there, over one colour; else None."""
    from PIL import Image

    with reading(path, "a mask"), Image.open(path) as im:
        if "A" not in im.getbands() or len(im.convert("RGB").getcolors(2) or ()) != 1:
            return None
        alpha = np.asarray(im.getchannel("A"), dtype=np.uint8)
    return alpha.copy() if alpha.min() != alpha.max() else None


def _colour_regions(values: np.ndarray) -> list[int]:
    """A colour mask's classes: the colours covering a region, each with the colours near it (within 48
    of 255 per channel: JPEG's noise around one colour, a hue's two roundings) and the lit pixels nearer
    it than any other; a region is 1% of the mask and a tenth of the largest. Dark red beside red, pink
    beside white: two. Near-black pixels (the background's noise) count for none."""
    flat = values.reshape(-1)
    found, counts = np.unique(flat, return_counts=True)
    rgb = _rgb(found).astype(np.float64)
    lit = rgb.max(axis=1) >= 64
    found, counts, rgb = found[lit], counts[lit], rgb[lit]
    seeds: list[int] = []  # the commonest colours first, each far from those kept before it
    for k in np.argsort(-counts, kind="stable"):
        if counts[k] < max(4, 0.005 * flat.size):
            break
        if all(np.abs(rgb[k] - rgb[s]).max() > 48 for s in seeds):
            seeds.append(k)
    if len(seeds) < 2:
        return [int(found[s]) for s in seeds]
    nearest = np.abs(rgb[:, None, :] - rgb[None, seeds, :]).max(axis=2).argmin(axis=1)  # per distinct colour
    size = np.bincount(nearest, weights=counts, minlength=len(seeds))
    keep = (size >= max(4, 0.01 * flat.size)) & (size >= 0.1 * size.max())
    return sorted(int(found[s]) for s, k in zip(seeds, keep) if k)


def pairs_to_nnunet(raw: str | Path, out: str | Path, *, name: str | None = None, label: str = "foreground") -> Path:
    """Convert 2-D images with masks of one's own (a BUSI-like folder, an ISIC-layout copy, fundus images
    with disc and cup) to nnU-Net v2's raw layout at ``out``, the layout bench reads any dataset in, named
    ``name`` (boards: ``nnunet:<name>``; default the folder's name) with the classes ``label`` names
    (``_Classes``: one name for binary masks, several for masks of class ids, NAME=VALUE for classes drawn
    as grey values, palette indices or colours).

    ``raw`` holds ``images/`` and ``masks/`` (bench splits the cases, as for any nnU-Net dataset without a
    ``splits_final.json``), or ``train/`` and ``test/`` (or ``val/``) each holding them: that split is kept
    as ``splits_final.json``'s fold 0. Images and masks pair as the ISIC reader pairs them (by name, else by
    sorted order); the parts of one image's mask (BUSI's ``x_mask.png``, ``x_mask_1.png``: the first
    mask's name plus ``_<number>``) merge into one (their pixel-wise maximum). Binary masks read as the ISIC
    reader reads them (0/255, colour on black, JPEG; 0/1 too): pixels >= 128 (or 1) are the class, id 1;
    a mask with several grey levels, palette indices or colours over regions is refused (they would split
    at 128 unsaid: REFUGE's 0/128/255 lost its cup), and a class covering most of every mask (a mask whose
    background is white) is warned of. Masks of several classes: their values not named become background,
    said with their share; a class in none of them is refused. Images become PNGs:
    grayscale where every image is gray (RGB files of equal channels included; 16-bit ones kept 16-bit
    where every image is), else 8-bit RGB (gray images repeated, 16-bit scaled). Case ids: the image names
    with other characters than letters, digits, ``.``, ``-`` and ``_`` as ``_``. Everything is checked
    before the folder is renamed into place (nothing half-written)."""
    from PIL import Image

    from bench.data.image_folders import mask_groups, read_rgb, size_mismatch

    raw = Path(raw).expanduser()
    if raw.is_file():
        raise BenchError(f"--raw {raw}: {root_is_file(raw)} (expected images/ and masks/)")
    name_given, name = name is not None, name if name is not None else raw.resolve().name
    for what, value in (("--name", name), ("--label", label)):
        if not isinstance(value, str) or not value.strip() or "\n" in value:
            raise BenchError(f"{what}: expected a name; got {value!r}")
    classes = _Classes(label)
    if re.search(r"[,:/\\]", name):  # boards are `nnunet:<name>`, chosen with --dataset's comma list
        given = "--name" if name_given else "the folder's name (the default --name)"
        raise BenchError(f"{given} {name!r}: no ',', ':', '/' or '\\' (--dataset nnunet:NAME chooses its board); "
                         "pass --name")
    cases: list[tuple[str, str, Path, list[Path]]] = []  # (part, case id, image, masks)
    seen: dict[str, Path] = {}
    for part, folder in _pair_folders(raw):
        groups, problems = mask_groups(folder / "images", folder / "masks")
        if problems:
            raise BenchError(few([f"{path}: {why}" for path, why in problems], 1))
        for image, masks in groups:
            # one mask's parts share a name but for a number (BUSI's x_mask, x_mask_1; a_lesion_1, a_lesion_2)
            if len({re.sub(r"_\d+$", "", m.stem) for m in masks}) > 1:
                raise BenchError(f"{image}: masks {', '.join(sorted(m.name for m in masks))} match its name but are "
                                 "not one mask's parts (names alike but for a final _<number>, as BUSI's x_mask.png, "
                                 "x_mask_1.png): another image's? rename or move them")
            masks = sorted(masks, key=lambda m: (len(m.stem), m.stem))
            case = _case_id(image.stem)
            if case.lower() in seen:  # in any case: a macOS or Windows disk holds one of two such files
                raise BenchError(f"{image}: its case id {case!r} is {seen[case.lower()]}'s too; rename one of them")
            seen[case.lower()] = image
            cases.append((part, case, image, masks))
    if len(cases) < 2:  # else the dataset written is refused by every command (no train/test split)
        raise BenchError(f"--raw {raw}: {len(cases)} image(s) with masks; a dataset needs at least 2 (a training and "
                         "a test case)")
    gray = all(_is_gray(read_rgb(image)) for _, _, image, _ in cases)  # one pass to choose, one to write
    # 16-bit gray kept as it is where every image is (12-bit data scaled to 8 bits keeps 17 grey levels)
    modes = [_mode(image) in _WIDE for _, _, image, _ in cases]
    wide = gray and all(modes)
    if any(modes) and not wide:  # some 16-bit beside 8-bit (or colour): scaled, 65535 -> 255, and said
        named = [image.name for (_, _, image, _), w in zip(cases, modes) if w]
        warnings.warn(f"{len(named)} 16-bit image(s) beside 8-bit ones scaled to 8 bits (65535 -> 255; a 12-bit "
                      f"image keeps 17 grey levels): {few(named, 3)}; save "
                      "them all in one depth", stacklevel=2)
    merged = [m.name for _, _, _, masks in cases for m in masks[1:]]
    unnamed: collections.Counter = collections.Counter()  # pixels of values no class names (by value)
    area = [0]  # the pixels of every mask read by value
    present: set[int] = set()  # the class ids found
    shares: list[float] = []  # each mask's share of the class (binary)
    meta = {"name": name, "description": f"converted by bench data convert --source pairs from {raw.name}",
            "channel_names": {"0": "gray"} if gray else {"0": "R", "1": "G", "2": "B"},
            "labels": {"background": 0, **{n: i for i, n in enumerate(classes.names, 1)}},
            "numTraining": len(cases), "file_ending": ".png"}

    def write(root: Path) -> None:
        (root / "imagesTr").mkdir()
        (root / "labelsTr").mkdir()
        for _, case, image, masks in cases:
            pixels = _wide(image) if wide else read_rgb(image)
            ids = np.zeros(pixels.shape[:2], np.uint8)
            for mask in masks:
                values, kind = _mask_values(mask)  # read once: the binary reading and its checks take it
                m = _binary_pixels(mask, values, kind) if classes.binary else values
                if m.shape != ids.shape:
                    raise BenchError(f"{mask}: {size_mismatch(image, pixels.shape[:2], m.shape)}")
                if not classes.binary:
                    ids = np.maximum(ids, classes.ids(mask, m, kind == "colour", unnamed))
                    area[0] += m.size
                    continue
                top = int(m.max(initial=0))
                if 1 < top < 128:  # ids 0/1/2 (or a 0/1 mask's JPEG noise): >= 128 would read as nothing
                    raise BenchError(f"{mask}: mask values reach only {top}: class ids? give --label one name "
                                     f"per id 1..{top}, in order (e.g. --label {label},other)" + _jpeg_note(mask))
                if top > 1 and (note := _several_classes(values, kind, m, label)):
                    raise BenchError(f"{mask}: {note}")
                ids |= (m == 1) if top == 1 else (m >= 128)  # class ids 0/1: one class, unambiguous
            present.update(np.unique(ids).tolist())
            shares.append(float(ids.astype(bool).mean()))
            Image.fromarray(pixels if wide else pixels[..., 0] if gray else pixels).save(
                root / "imagesTr" / f"{case}_0000.png")
            Image.fromarray(ids).save(root / "labelsTr" / f"{case}.png")
        if absent_classes := [n for i, n in enumerate(classes.names, 1) if i not in present]:
            values = f" (values {few(list(unnamed), 8)} are in them, unnamed)" if unnamed else ""
            raise BenchError(f"--label {label}: {', '.join(absent_classes)} in none of the masks{values}")
        if any(part for part, *_ in cases):  # the user's own split, as nnU-Net keeps one
            fold = {key: [c for part, c, *_ in cases if part == part_name]
                    for key, part_name in (("train", "train"), ("val", "test"))}
            portable_write_text(root / "splits_final.json", json.dumps([fold], indent=2) + "\n")
        portable_write_text(root / "dataset.json", json.dumps(meta, indent=2) + "\n")

    path = atomic_write_dir(Path(out).expanduser(), write)
    if unnamed:
        said = [f"{v} ({n / area[0]:.1%} of the pixels)" for v, n in unnamed.most_common()]
        warnings.warn(f"values --label does not name became background: {few(said, 6)}; name "
                      "them (NAME=VALUE, or background=VALUE) to say what they are", stacklevel=2)
    if classes.binary and min(shares) > 0.5:  # a lesion larger than the rest of every image: inverted
        warnings.warn(f"{label!r} covers more than half of every mask (from {min(shares):.0%}): masks whose "
                      f"background is white? then --label {label}=0,background=255", stacklevel=2)
    if merged:
        warnings.warn(f"{len(merged)} mask(s) merged into their image's first (the pixel-wise maximum): "
                      f"{few(merged, 3)}", stacklevel=2)
    return path


_WIDE = ("I;16", "I;16B", "I;16L", "I")  # Pillow's modes of 16-bit grayscale files


def _mode(image: Path) -> str:
    from PIL import Image

    with reading(image, "an image"), Image.open(image) as im:  # the header only
        return im.mode


def _wide(image: Path) -> np.ndarray:
    """A 16-bit grayscale image's pixels as they are (uint16; values beyond 16 bits refused, as read_rgb does)."""
    from PIL import Image

    from bench.data.image_folders import read_rgb

    with reading(image, "an image"), Image.open(image) as im:
        pixels = np.asarray(im)
    if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
        read_rgb(image)  # its error: no fixed range
    return pixels.astype(np.uint16)


def _is_gray(rgb: np.ndarray) -> bool:
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))
