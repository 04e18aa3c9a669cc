"""``bench data verify``: check a dataset folder file by file and report every problem.

``verify_dataset(name, root)`` walks the layout of the named reader, opens every file, and returns
one ``Problem(path, message, level)`` per finding; it never stops at the first and never raises
on a corrupt file (a truncated npz/h5/png/nii is reported as unreadable). An empty list means
the readers will load everything.

What is checked, per format:

- synapse: list files (``train.txt``/``test_vol.txt``; absent lists are a warning), an optional
  ``spacing.csv`` that parses and covers the test volumes without a spacing, every listed
  id has its file, every npz has ``image``/``label`` 2-D of one shape, every h5 ``image``/``label``
  3-D of one shape, float images, integral labels in 0..8. Files present but not listed are
  *warnings*: the real data keeps only listed files, but a shortened list for a quick experiment is
  legitimate, so they are worth a line, not a failure.
- isic / polyp / isic_all: the folders exist, every image has its mask (unpaired names are pointed out),
  every test-set subfolder has ``images/``,
  every file decodes, mask size == image size. Any 0..255 grayscale mask is accepted (it is divided
  by 255, as the authors do) unless no pixel reaches 128: a 0/1 class-id mask would be all background.
- nnunet: dataset.json fields, ``numTraining`` == number of label files, every channel file exists
  for every label, shapes (and NIfTI spacing) agree, images are finite, label values are declared
  labels, image files without a label are reported; NIfTI affines that differ between an image and
  its label are a warning (the arrays are used as stored).

``level`` is "error" (the data will not load or will train on wrong values) or "warning".
``dataset_notes`` says, for data that loads, how it compares with the papers (Synapse: the split
and the label order; ISIC, polyp and merged ISIC: whether the image counts are the authors' split;
nnU-Net volumes: their voxel spacings and the 3d_fullres target spacing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.data import image_folders as folders
from bench.data import isic as isic_io
from bench.data import nnunet as nn_io
from bench.data import synapse as syn_io
from bench.data.base import describe, label_id_problem, mask_hint, root_is_file, split_problems
from bench.errors import BenchError
from bench.fileio import absent


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    level: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        return f"{self.level}: {self.path}: {self.message}"


class _Report:
    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, path: Path | str, message: str, level: str = "error") -> None:
        self.problems.append(Problem(str(path), message, level))


def verify_dataset(name: str, root: str | Path) -> list[Problem]:
    """All problems found in the dataset ``name`` (a registry name) at ``root``; [] when clean.

    Example::

        for p in verify_dataset("synapse", "data/Synapse"):
            print(p)   # error: data/Synapse/train_npz/case0005_slice003.npz: cannot read (...)
    """
    from bench.data import get_reader  # late import: bench.data imports this module's siblings

    reader = get_reader(name)
    root = Path(root)
    report = _Report()
    if not root.is_dir():
        found = root_is_file(root) if root.is_file() else "dataset root not found"
        report.add(root, str(absent(root, f"{found}; expected {reader.layout}")))
        return report.problems
    _CHECKS[reader.kind](root, report, reader)
    return report.problems


def _unreadable(exc: BaseException, path: Path) -> str:
    if isinstance(exc, BenchError):  # the readers' own message; the report line names the path
        return str(exc).removeprefix(f"{path}: ")
    return f"cannot read ({describe(exc)})"


def _check_labels(path: Path, label: np.ndarray, num_classes: int, report: _Report) -> None:
    problem = label_id_problem(label, num_classes)  # the readers' rule, reported instead of raised
    if problem:
        report.add(path, problem)


# --- Synapse ---------------------------------------------------------------------------------


def _check_synapse(root: Path, report: _Report, reader) -> None:
    train_dir, test_dir = root / syn_io.TRAIN_DIR, root / syn_io.TEST_DIR
    if not train_dir.is_dir() and not test_dir.is_dir():
        report.add(root, f"no {syn_io.TRAIN_DIR}/ or {syn_io.TEST_DIR}/; expected {reader.layout}")
        return
    list_dir = syn_io.find_list_dir(root)
    lists = {}  # list name -> its ids, for the split's own checks
    for list_name, folder, suffix, check in (
        (syn_io.TRAIN_LIST, train_dir, ".npz", _check_npz),
        (syn_io.TEST_LIST, test_dir, syn_io.H5_SUFFIX, _check_h5),
    ):
        present = {p.name[: -len(suffix)]: p for p in syn_io.data_files(folder, suffix)} if folder.is_dir() else {}
        list_path = list_dir / list_name if list_dir is not None else None
        if list_path is not None and list_path.is_file():
            try:
                listed = syn_io.read_list(list_path, suffix)
            except BenchError as exc:  # unreadable or empty
                report.add(list_path, _unreadable(exc, list_path))
                continue
            lists[list_name] = listed
            for item in dict.fromkeys(listed):
                if item not in present:
                    report.add(folder / f"{item}{suffix}", f"listed in {list_path} but missing")
            for item in sorted(set(present) - set(listed)):
                report.add(present[item], f"not listed in {list_path}; the readers ignore it", "warning")
            targets = [present[i] for i in listed if i in present]
        else:
            report.add(
                root / syn_io.LIST_DIRS[0] / list_name,
                f"list file missing (also looked in {', '.join(str(root / d) for d in syn_io.LIST_DIRS[1:])}); "
                f"the sorted contents of {folder} are used",
                "warning",
            )
            targets = [present[k] for k in sorted(present)]
            lists[list_name] = sorted(present)
        if folder.is_dir() and not present:
            report.add(folder, f"no '*{suffix}' files")
        for path in dict.fromkeys(targets):
            check(path, report)
    if len(lists) == 2:  # an id twice, a test case's slices in train.txt: the reader's rule
        names = tuple(syn_io.list_source(root, name, folder)
                      for name, folder in ((syn_io.TRAIN_LIST, train_dir), (syn_io.TEST_LIST, test_dir)))
        for problem in split_problems(lists[syn_io.TRAIN_LIST], lists[syn_io.TEST_LIST], syn_io.slice_case, names):
            report.add(root, problem)
    _check_spacing_table(root, test_dir, report)


def _check_spacing_table(root: Path, test_dir: Path, report: _Report) -> None:
    """``spacing.csv`` parses, and names every test volume without a spacing of its own."""
    table_path = root / syn_io.SPACING_FILE
    if not table_path.is_file():
        return
    try:
        table = syn_io.read_spacing_table(table_path)
    except BenchError as exc:
        report.add(table_path, _unreadable(exc, table_path))
        return
    volumes = sorted(syn_io.data_files(test_dir, syn_io.H5_SUFFIX)) if test_dir.is_dir() else []
    test = {path.name[: -len(syn_io.H5_SUFFIX)]: path for path in volumes}
    train_dir = root / syn_io.TRAIN_DIR
    slices = syn_io.data_files(train_dir, ".npz") if train_dir.is_dir() else []
    try:
        problem = syn_io.spacing_table_problem(table, test, {syn_io.slice_case(p.stem) for p in slices})
    except BenchError:
        return  # a volume that does not read: reported with the file
    if problem:  # bench run refuses it under the policies that score in mm (strict), warns of nothing otherwise
        report.add(table_path, f"{problem} (under policies scoring HD95 in mm)", "warning")


def _check_npz(path: Path, report: _Report) -> None:
    try:
        image, label = syn_io.raw_slice(path)  # the reader's decoding and key check
    except BenchError as exc:
        report.add(path, _unreadable(exc, path))
        return
    _check_pair_arrays(path, image, label, 2, report)


def _check_h5(path: Path, report: _Report) -> None:
    try:
        image, label, spacing = syn_io.raw_volume(path)
    except BenchError as exc:
        report.add(path, _unreadable(exc, path))
        return
    problem = syn_io.spacing_problem(spacing) if spacing is not None else None
    if problem:
        report.add(path, problem)
    if note := syn_io.slices_last_note(image.shape):
        report.add(path, note, "warning")
    _check_pair_arrays(path, image, label, 3, report)


def _check_pair_arrays(path: Path, image: np.ndarray, label: np.ndarray, ndim: int, report: _Report) -> None:
    if image.ndim != ndim or label.ndim != ndim:
        report.add(path, f"expected {ndim}-D image and label, got {image.shape} and {label.shape}")
        return
    if image.shape != label.shape:
        report.add(path, f"image shape {image.shape} != label shape {label.shape}")
    if image.dtype.kind != "f":
        report.add(path, f"image dtype {image.dtype}; expected float (CT scaled to [0, 1])")
    problem = syn_io.image_problem(image) if image.dtype.kind in "fiub" else None  # the readers' rule
    if problem:
        report.add(path, problem)
    if label.dtype.kind not in "fiub":
        report.add(path, f"label dtype {label.dtype}; expected integer class ids")
        return
    _check_labels(path, label, syn_io.NUM_CLASSES, report)


# --- ISIC / polyp / isic_all ----------------------------------------------------------------


def _check_pairs(images_dir: Path, masks_dir: Path, report: _Report) -> None:
    pairs, problems = folders.pair_files(images_dir, masks_dir)
    for path, message in problems:
        report.add(path, message)
    for image_path, mask_path in pairs:
        try:
            image_hw = folders.image_size(image_path)
            folders.read_rgb(image_path)  # decode fully: a truncated file often has a valid header
        except Exception as exc:  # noqa: BLE001
            report.add(image_path, _unreadable(exc, image_path))
            image_hw = None
        try:
            mask = folders.read_mask(mask_path)
        except Exception as exc:  # noqa: BLE001
            report.add(mask_path, _unreadable(exc, mask_path))
            continue
        if image_hw is not None and mask.shape != image_hw:
            report.add(mask_path, folders.size_mismatch(image_path, image_hw, mask.shape))
        if mask.max() == 0:
            report.add(mask_path, "mask is empty (all 0)", "warning")
        elif note := folders.mask_levels_note(mask):
            report.add(mask_path, note, "warning")


def _check_isic(root: Path, report: _Report, reader) -> None:
    for split in ("train", "val"):
        _check_pairs(root / split / "images", root / split / "masks", report)
    # each name once: one listed twice is pair_files' problem, reported above
    stems = {split: sorted({p.stem for p in folders.list_images(root / split / "images")}) for split in ("train", "val")}
    for problem in split_problems(stems["train"], stems["val"], names=("train/images", "val/images")):
        report.add(root, problem)  # bench run refuses it: a test image trained on


def _check_test_sets(root: Path, report: _Report, reader) -> None:
    """A ``MultiSetDataset`` (polyp, isic_all): its training folder and each of its test sets."""
    train = root / reader.train_dir
    _check_pairs(train / "images", train / "masks", report)
    sets, problems = isic_io.test_set_folders(root / reader.test_dir)
    for path, message in problems if sets else ():  # with no set at all, the folder is not this layout's
        report.add(path, message)
    if not sets:
        report.add(root / reader.test_dir, "no test set folders with images/ and masks/")
    test: dict[str, list[str]] = {}
    for name in sets:
        folder = root / reader.test_dir / name
        _check_pairs(folder / "images", folder / "masks", report)
        test[name] = [p.stem for p in folders.list_images(folder / "images")]
    if reader.unique_names:  # warned by bench run, as the authors' merged data may hold such images
        train_ids = [p.stem for p in folders.list_images(train / "images")]
        if shared := isic_io.shared_images(train_ids, [f"{n}/{s}" for n, ids in test.items() for s in ids]):
            report.add(root, isic_io.shared_images_note(shared, {n: len(ids) for n, ids in test.items()}), "warning")


# --- nnU-Net ---------------------------------------------------------------------------------


def _check_nnunet(root: Path, report: _Report, reader) -> None:
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        report.add(meta_path, f"not found; expected {reader.layout}")
        return
    try:
        meta = nn_io.parse_dataset_json(meta_path)
    except BenchError as exc:
        report.add(meta_path, str(exc).removeprefix(f"{meta_path}: "))
        return
    missing_dirs = [root / d for d in ("imagesTr", "labelsTr") if not (root / d).is_dir()]
    for d in missing_dirs:
        report.add(d, "folder missing")
    if missing_dirs:
        return
    ending, n_ch = meta["file_ending"], len(meta["channel_names"])
    cases = nn_io.list_cases(root, ending)
    if len(cases) != meta["numTraining"]:
        report.add(meta_path, f"numTraining is {meta['numTraining']} but labelsTr holds {len(cases)} '*{ending}' files"
                              f"{nn_io.other_endings_hint(root, ending)}")
    valid = set(meta["labels"].values())
    for case in cases:
        _check_nnunet_case(root, case, ending, n_ch, valid, report)
    for path, problem in nn_io.image_file_problems(root, ending, cases, n_ch):  # the reader's rule
        report.add(path, problem)
    splits = root / "splits_final.json"
    if splits.is_file():
        try:
            folds = nn_io.read_splits(splits)
        except BenchError as exc:
            report.add(splits, _unreadable(exc, splits))
        else:
            for problem in nn_io.fold_problems(folds, cases):  # the reader's rules
                report.add(splits, problem)


def _check_nnunet_case(root: Path, case: str, ending: str, n_ch: int, valid: set[int], report: _Report) -> None:
    lab_path = nn_io.label_path(root, case, ending)
    volume = nn_io.is_volume_ending(ending)
    try:
        if volume:
            label, spacing = nn_io.read_nifti(lab_path, label=True)
        else:
            label, spacing = nn_io.read_png(lab_path, label=True), None
    except Exception as exc:  # noqa: BLE001
        report.add(lab_path, _unreadable(exc, lab_path))
        label = spacing = None
    if label is not None:
        found = set(np.unique(label).tolist())
        bad = sorted(found - valid)
        if bad:
            report.add(lab_path, f"label values {bad[:10]} not declared in dataset.json labels {sorted(valid)}"
                                 f"{mask_hint(bad, found)}")
    channels = 0
    c = 0
    while channels < n_ch:
        path = nn_io.channel_path(root, case, c, ending)
        c += 1
        if not path.is_file():
            where, why = nn_io.missing_channel(root, case, c - 1, ending, n_ch, channels)
            report.add(where, why)
            if where != path or (not volume and c == 1 and not any(nn_io.channel_path(root, case, k, ending).is_file()
                                                                   for k in range(c, n_ch))):
                return  # an RGB PNG holds its 3 channels in _0000: without it, the others are not missing too
            channels += 1
            continue
        try:
            if volume:
                image, img_spacing = nn_io.read_nifti(path)
                channels += 1
            else:
                image, img_spacing = nn_io.read_png(path), None
                channels += 1 if image.ndim == 2 else image.shape[-1]
                image = image if image.ndim == 2 else image[..., 0]
        except Exception as exc:  # noqa: BLE001
            report.add(path, _unreadable(exc, path))
            channels += 1
            continue
        if not np.isfinite(image).all():
            report.add(path, "image contains NaN/inf")
        why = label is not None and nn_io.grid_mismatch(path, image.shape, img_spacing, lab_path, label.shape, spacing)
        if why:
            report.add(path, why)
        elif volume and label is not None and not nn_io.same_geometry(path, lab_path):
            # the arrays are read as stored: a label stored flipped (its affine flipped too) lies on the
            # image mirrored. nnU-Net's dataset check warns on this too
            report.add(path, f"origin or orientation differs from label {lab_path.name} (NIfTI affines); the "
                             "arrays are used as stored, so image and label may not overlay", "warning")
    if not volume and channels != n_ch:
        report.add(nn_io.channel_path(root, case, 0, ending), nn_io.channel_count_problem(channels, n_ch))


# --- conventions (notes, not problems) ------------------------------------------------------


def dataset_notes(name: str, root: str | Path) -> list[str]:
    """``_comparison_notes``, after a note that the data is synthetic where ``bench`` wrote it."""
    from bench.data import synthetic_identity

    synthetic = ["synthetic data, written by bench data synth or --synthetic: runs on it check the pipeline, "
                 "and published numbers do not compare with them"] if synthetic_identity(root) else []
    return synthetic + _comparison_notes(name, root)


def _comparison_notes(name: str, root: str | Path) -> list[str]:
    """What a well-formed dataset means for comparing with papers: for Synapse, whether the split
    is TransUNet's and which organ order the label ids follow (from their voxel counts); for ISIC
    and polyp, whether the image counts per split are the authors' (VM-UNet's, PraNet's; merged
    ISIC: VM-UNet-V2's, VM-UNet's two ISIC splits with their training images together). Never
    problems: a custom split or another order is legitimate, but the published tables assume
    the canonical ones. For nnU-Net volumes: the training cases' voxel spacings and the target
    spacing patch protocols resample them to (headers only)."""
    from bench.data import get_reader, open_dataset

    reader = get_reader(name)
    if reader.kind == "nnunet":
        ds = open_dataset(name, root)  # its notes: which split (splits_final.json's fold 0, or the rule without one)
        return ds.notes + ([spacing_note(list(ds.train_geometry()))] if ds.volumes else [])
    if reader.kind not in ("synapse", "isic", "polyp", "isic_all"):
        return []
    ds = open_dataset(name, root)  # lists and pairs file names; no image is decoded
    if reader.kind == "isic":
        return [isic_split_note(len(ds.train_ids()), len(ds.test_ids()), reader.name)]
    if reader.kind in ("polyp", "isic_all"):
        per_set = {s: sum(i.startswith(f"{s}/") for i in ds.test_ids()) for s in ds.sets}
        note = polyp_split_note if reader.kind == "polyp" else isic_all_split_note
        return [note(len(ds.train_ids()), per_set)]
    notes = list(ds.notes)  # list files missing: the folders' sorted contents were used
    test, n_train = set(ds.test_ids()), len(ds.train_ids())
    canonical = set(syn_io.TRANSUNET_TEST_CASES)
    if test == canonical and n_train == syn_io.TRANSUNET_TRAIN_SLICES:
        notes.append(f"the split is TransUNet's ({len(canonical)} test volumes, {n_train} training slices), "
                     "the one every published Synapse table uses")
    else:
        notes.append(f"the split is not TransUNet's ({len(test)} test volumes, {len(test & canonical)} of its 12; "
                     f"{n_train} training slices, not {syn_io.TRANSUNET_TRAIN_SLICES}): "
                     "published Synapse numbers are not comparable with runs on it")
    counts = np.zeros(syn_io.NUM_CLASSES, dtype=np.int64)
    for case in sorted(test):  # every 4th slice: the organs' size order needs no more
        path = ds.test_file(case)
        if path.is_file():
            label = syn_io.volume_labels(path, step=4)
            counts += np.bincount(np.asarray(label, dtype=np.int64).clip(0, 8).ravel(), minlength=9)[:9]
    notes.append(organ_order_note(counts))
    return notes


def spacing_note(geometry: list[tuple[tuple[int, ...], tuple[float, ...]]]) -> str:
    """The spacings of volumes given as (shape, spacing) pairs and nnU-Net's 3d_fullres target for them."""
    from bench.data.resample import nnunet_target_spacing

    shapes, spacings = zip(*geometry)
    arr = np.array(spacings)

    def mm(values) -> str:
        return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"

    target = nnunet_target_spacing(spacings, shapes)
    return (f"voxel spacing of the {len(arr)} training volumes (z, y, x) in mm: median {mm(np.median(arr, 0))}, "
            f"from {mm(arr.min(0))} to {mm(arr.max(0))}; target_spacing = \"nnunet\" (lightm_unet_3d) resamples "
            f"them to {mm(target)} (nnU-Net's 3d_fullres rule on the whole volumes; lightm_unet_2d resamples them "
            f"in-plane to {mm(target[1:])}, each keeping its slice spacing; a run applies the rule to the volumes "
            "cropped to their non-zero region, the same unless the images have a zero background, and records "
            "the value it used; under --folds each fold plans from its own training cases, so no held-out case "
            "informs it, where nnU-Net plans once from all of imagesTr)")


# VM-UNet's 7:3 splits, (train, test = val/) images (VM-UNet's README and paper): the author's
# pre-split files, the same as in MALUNet and EGE-UNet.
VMUNET_ISIC_SPLITS = {"isic17": (1500, 650), "isic18": (1886, 808)}
# PraNet's polyp split, used by VM-UNet-V2 (its datasets/dataset.py): Kvasir 900 + ClinicDB 550 training images.
PRANET_TRAIN_IMAGES = 1450
# a folder only tells counts: another 7:3 draw of the same challenge images has them too
_COUNTS_ONLY = "; only the counts are compared, and another 7:3 draw of the same images has them too"
PRANET_TEST_SETS = {"CVC-300": 60, "CVC-ClinicDB": 62, "Kvasir": 100, "CVC-ColonDB": 380, "ETIS-LaribPolypDB": 196}


def isic_split_note(n_train: int, n_test: int, name: str | None = None) -> str:
    """Whether the train / test (val/) image counts are VM-UNet's split for ``name`` (isic17 or
    isic18); without a known name, which published split they fit, if any. Counts of the other
    split are pointed out: both years share one layout, so data opened as the wrong one loads."""
    def split(n: str) -> str:
        return f"VM-UNet's {n} split ({VMUNET_ISIC_SPLITS[n][0]} train / {VMUNET_ISIC_SPLITS[n][1]} test images)"

    fits = next((n for n, counts in VMUNET_ISIC_SPLITS.items() if counts == (n_train, n_test)), None)
    if fits is not None and name in VMUNET_ISIC_SPLITS and fits != name:
        return f"the counts are those of {split(fits)}, not of {split(name)}: check that this is {name} data"
    if fits is not None:
        return f"the split matches {split(fits)}, the one its published tables use{_COUNTS_ONLY}"
    found = f"{n_train} train / {n_test} test images"
    if name in VMUNET_ISIC_SPLITS:
        tr, te = VMUNET_ISIC_SPLITS[name]
        return (f"the split is not VM-UNet's {name} split ({found}, not {tr} / {te}): "
                f"published {name} numbers are not comparable with runs on it")
    expected = " or ".join(f"{n}'s {tr} / {te}" for n, (tr, te) in VMUNET_ISIC_SPLITS.items())
    return (f"the split is neither of VM-UNet's ({found}, not {expected}): "
            "published ISIC numbers are not comparable with runs on it")


def polyp_split_note(n_train: int, test_counts: dict[str, int]) -> str:
    """Whether the training count and the images per test set (set name -> count) are PraNet's
    split, the one VM-UNet-V2 and the PraNet-lineage tables use. Test sets left out (often only
    some are downloaded) do not make the others incomparable; a different training set does."""
    return _test_sets_split_note(
        n_train, test_counts, PRANET_TRAIN_IMAGES, PRANET_TEST_SETS,
        fits="the split is PraNet's, as VM-UNet-V2 uses", differs="the split is not PraNet's, which VM-UNet-V2 uses",
        published="polyp",
    )


def isic_all_split_note(n_train: int, test_counts: dict[str, int]) -> str:
    """Whether the merged training folder and the images per test set are VM-UNet-V2's merged
    ISIC split (train_isic_all.py): the training images of VM-UNet's isic17 and isic18 splits
    together (1500 + 1886), each year's test images on their own (650, 808)."""
    train = sum(tr for tr, _ in VMUNET_ISIC_SPLITS.values())
    parts = " + ".join(f"{n} {tr}" for n, (tr, _) in VMUNET_ISIC_SPLITS.items())
    # V2 publishes no counts for its merged folder: VM-UNet's two 7:3 splits together are assumed
    assumed = (f"VM-UNet-V2's merged ISIC split as assumed here (VM-UNet's {parts} training images together; "
               "V2 does not state its counts)")
    return _test_sets_split_note(
        n_train, test_counts, train, {n: te for n, (_, te) in VMUNET_ISIC_SPLITS.items()},
        fits=f"the counts fit {assumed}", differs=f"the counts do not fit {assumed}",
        published="VM-UNet-V2 isic17/isic18", caveat=_COUNTS_ONLY,
    )


def _test_sets_split_note(n_train: int, test_counts: dict[str, int], train: int, sets: dict[str, int], *,
                          fits: str, differs: str, published: str, caveat: str = "") -> str:
    """The note of ``polyp_split_note`` and ``isic_all_split_note``: ``train`` training images and
    the test sets ``sets`` (name -> images) expected; ``fits`` / ``differs`` open the sentence.
    Folder names match the expected sets as the report's do (``isic_io.test_set_id``: "kvasir" and
    "CVC_ClinicDB" are Kvasir and CVC-ClinicDB)."""
    canonical = {isic_io.test_set_id(s): s for s in sets}
    test_counts = {canonical.get(isic_io.test_set_id(s), s): n for s, n in test_counts.items()}
    missing = [f"{s} ({n} images)" for s, n in sets.items() if s not in test_counts]
    extra = [f"{s} ({n} images)" for s, n in test_counts.items() if s not in sets]
    diffs = [f"{n_train} training images, not {train}"] if n_train != train else []
    diffs += [f"{s} {test_counts[s]} images, not {n}" for s, n in sets.items()
              if s in test_counts and test_counts[s] != n]
    if diffs:
        return (f"{differs} ({'; '.join(diffs)}): published {published} numbers are not comparable with runs on it"
                + (f"; not in its split: {', '.join(extra)}" if extra else ""))
    kept = ", ".join(f"{s} {n}" for s, n in sets.items() if s in test_counts)
    note = f"{fits} ({n_train} training images; test sets {kept or 'none'}){caveat}"
    if missing:
        note += f"; absent here: {', '.join(missing)}, whose published columns have no counterpart"
    if extra:
        note += f"; not in its split: {', '.join(extra)}"
    return note


def organ_order_note(counts: np.ndarray) -> str:
    """Which id -> organ order the voxel counts (index = class id) fit. Ours: 1 aorta ... 8 stomach
    (the papers' column order). The BTCV order differs where sizes tell: there class 2 is a kidney
    and 4 the gallbladder (ours: the reverse), 6 the stomach and 8 the pancreas (ours: the
    reverse); the liver is 5 in both and by far the largest organ."""
    c = [int(v) for v in counts]
    sizes = ", ".join(f"{i} {syn_io.CLASS_NAMES[i - 1]}: {c[i]}" for i in range(1, 9))
    if not any(c[1:]):
        return "no organ voxels in the test volumes: the label order cannot be checked"
    ours = c[2] < c[4] and c[6] < c[8]
    btcv = c[2] > c[4] and c[6] > c[8]
    liver = "" if c[5] == max(c[1:]) else " Class 5 is not the largest, which fits neither order: check the labels."
    if ours:
        verdict = ("the label ids fit the order the tables use and this harness names (1 aorta, 2 gallbladder, "
                   "3 kidney L, 4 kidney R, 5 liver, 6 pancreas, 7 spleen, 8 stomach)")
    elif btcv:
        verdict = ("the label ids look like BTCV's order (" + ", ".join(
            f"{i} {n}" for i, n in enumerate(syn_io.BTCV_ORDER_NAMES, 1)) + "), not the tables' order: "
            "this harness would name the per-organ columns wrongly")
    else:
        verdict = "the voxel counts fit neither known label order: check which organ each id is"
    return f"{verdict}.{liver} Voxels per class (every 4th test slice): {sizes}"


_CHECKS = {"synapse": _check_synapse, "isic": _check_isic, "polyp": _check_test_sets, "isic_all": _check_test_sets,
           "nnunet": _check_nnunet}
