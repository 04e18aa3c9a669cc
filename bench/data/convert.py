"""Converters from the data as its owners distribute it to the layouts the readers expect.

``btcv_to_synapse``: the BTCV abdomen training set (Synapse syn3193805, ``RawData/Training/img/
imgXXXX.nii.gz`` and ``label/labelXXXX.nii.gz``, 30 CT volumes, 13 organ ids) to TransUNet's
Synapse layout (``bench.data.synapse``). TransUNet never released its preprocessing (its issue
#10), so the files in circulation cannot be rebuilt bit for bit; this follows what its
datasets/README states and what public re-creations do (spec/baselines.md 4.2):

- HU clipped to [-125, 275] and scaled to [0, 1] as (x + 125) / 400 (equal to the README's
  per-volume min-max wherever a volume reaches both ends of the window, as abdominal CT does);
  no resampling; float32.
- Axes: nibabel's (x, y, z) transposed to (z, y, x) = (D, H, W), as the nnU-Net reader does.
- Labels: the 8 evaluated organs get this project's class ids (``synapse.CLASS_NAMES``, the
  papers' column order), mapped by organ name from BTCV's ids, so the converted ids are known,
  unlike those of the circulating files (spec/baselines.md 4.4); the other five structures
  (oesophagus, veins, adrenal glands) become background.
- Split: TransUNet's 12 test volumes (``TRANSUNET_TEST_CASES``, as h5 volumes, in its list
  order) and every slice of the other 18 as training npz slices; ``spacing.csv`` from the NIfTI
  headers, so ``strict`` HD95 is in mm.

The output is written to a temporary folder and renamed when complete (nothing half-written).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from bench.data import synapse as syn
from bench.data.base import reading
from bench.errors import BenchError

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
            raise BenchError(f"{img}: case {case} is there as .nii and .nii.gz; keep one")
        labels = [p for p in (base / "label" / f"label{m.group(1)}{e}" for e in (".nii.gz", ".nii")) if p.is_file()]
        if not labels:
            expected = base / "label" / f"label{m.group(1)}.nii.gz"
            raise BenchError(f"{expected}: missing (the label volume of {img.name})")
        files[case] = (img, labels[0])
    missing = [c for c in BTCV_CASES if c not in files]
    if missing:
        listed = ", ".join(missing[:6]) + ("..." if len(missing) > 6 else "")
        raise BenchError(f"{base / 'img'}: {len(missing)} of BTCV's 30 training volumes missing ({listed}); "
                         "TransUNet's split needs all 30")
    return {c: files[c] for c in BTCV_CASES}


def _read(img_path: Path, label_path: Path, table: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Image float32 (D, H, W) in [0, 1], label uint8 class ids, spacing (d, h, w) in mm."""
    import nibabel as nib

    with reading(img_path, "a NIfTI volume"):
        img = nib.load(str(img_path))
        hu = np.asarray(img.get_fdata(dtype=np.float32))
        zooms = tuple(float(f"{float(z):.7g}") for z in img.header.get_zooms()[:3])
    with reading(label_path, "a NIfTI volume"):
        raw = np.asarray(nib.load(str(label_path)).dataobj)
    if raw.dtype.kind == "f":  # ids stored as floats: whole numbers expected
        raw = np.rint(raw)
    raw = raw.astype(np.int16, copy=False)  # ids 0..13; 2 bytes a voxel, not 8 (volumes are ~40 M voxels)
    if hu.ndim != 3 or raw.shape != hu.shape:
        raise BenchError(f"{label_path}: shape {raw.shape} differs from its image {img_path} {hu.shape}; "
                         f"expected two 3-D volumes of one shape")
    if raw.min() < 0 or raw.max() >= len(table):
        raise BenchError(f"{label_path}: label ids {int(raw.min())}..{int(raw.max())}; BTCV's are 0..13")
    lo, hi = HU_WINDOW
    np.clip(hu, lo, hi, out=hu)  # in place: no full-size temporaries
    hu -= lo
    hu /= hi - lo
    return hu.transpose(2, 1, 0), table[raw].transpose(2, 1, 0), zooms[::-1]


def btcv_to_synapse(raw: str | Path, out: str | Path) -> Path:
    """Convert BTCV's raw training volumes under ``raw`` to the Synapse layout at ``out`` (created;
    must not exist or be empty); return ``out``. BenchError naming the file for anything unreadable."""
    from bench.data.synth import write_atomically

    files = _btcv_files(Path(raw))
    table = btcv_label_map()

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
        (lists / syn.TRAIN_LIST).write_text("\n".join(slices) + "\n")
        (lists / syn.TEST_LIST).write_text("\n".join(syn.TRANSUNET_TEST_CASES) + "\n")
        (lists / "all.lst").write_text("\n".join(f"{c}{syn.H5_SUFFIX}" for c in BTCV_CASES) + "\n")
        rows = [f"{c},{d:g},{h:g},{w:g}" for c, (d, h, w) in sorted(spacing)]
        (root / syn.SPACING_FILE).write_text("case,d,h,w\n" + "\n".join(rows) + "\n")

    return write_atomically(Path(out), write)
