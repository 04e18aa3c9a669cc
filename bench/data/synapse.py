"""Synapse multi-organ CT in the TransUNet layout (Beckschen/TransUNet datasets/dataset_synapse.py).

On disk::

    <root>/train_npz/caseXXXX_sliceYYY.npz     keys image (H, W) float in ~[0, 1], label (H, W) ids 0..8
    <root>/test_vol_h5/caseXXXX.npy.h5         datasets image, label: (D, H, W)
    <root>/lists/lists_Synapse/train.txt       one slice id per line (no extension)
    <root>/lists/lists_Synapse/test_vol.txt    one case id per line

``<root>/lists/list_Synapse/`` (the VM-UNet README's spelling; its config says ``lists_Synapse``)
and ``<root>/lists_Synapse/`` are accepted too. Without list files the sorted directory contents are used and ``notes`` says so.

Units: CT intensities were clipped to [-125, 275] HU and scaled per volume to [0, 1] by the
dataset's distributors (values slightly outside [0, 1] occur in the real files, TransUNet #64).
The real h5 files carry no spacing; our synthesizer writes an optional ``spacing`` attribute
(mm per (D, H, W) axis), returned as ``Case.spacing``. For real data an optional
``<root>/spacing.csv`` (header ``case,d,h,w``, mm per h5 axis, e.g. from the BTCV NIfTI headers)
supplies it, so ``strict`` HD95 is in mm; a file's own attribute wins.
"""

from __future__ import annotations

import contextlib
import math
import re
import shlex
import warnings
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from bench.data.base import Case, Sample, SegDataset, class_ids, found_instead, hidden, reading
from bench.errors import BenchError, few
from bench.fileio import is_plain_name, read_text
from bench.organs import SYNAPSE_ORGANS

CLASS_NAMES = tuple(SYNAPSE_ORGANS)  # class ids 1..8 (bench.organs says which order and why)
NUM_CLASSES = 9  # background + 8 organs

# TransUNet's split (Beckschen/TransUNet lists/lists_Synapse): every published Synapse number
# is on these 12 test volumes, trained on 2,211 slices of the other 18 cases.
TRANSUNET_TEST_CASES = ("case0008", "case0022", "case0038", "case0036", "case0032", "case0002",
                        "case0029", "case0003", "case0001", "case0004", "case0025", "case0035")
TRANSUNET_TRAIN_SLICES = 2211
# The other id order in circulation (BTCV's ids 1,2,3,4,6,7,8,11 kept in order; SAMed's
# re-creation of the files): the same ids would name other organs.
BTCV_ORDER_NAMES = ("spleen", "kidney_r", "kidney_l", "gallbladder", "liver", "stomach", "aorta", "pancreas")

SPACING_FILE = "spacing.csv"
TRAIN_DIR = "train_npz"
TEST_DIR = "test_vol_h5"
LIST_DIRS = ("lists/lists_Synapse", "lists/list_Synapse", "lists_Synapse")
TRAIN_LIST = "train.txt"
TEST_LIST = "test_vol.txt"
H5_SUFFIX = ".npy.h5"
# TransUNet's test script (utils.py test_single_volume, which Swin-Unet, VM-UNet and VM-UNet-V2 reuse), given a save
# path, writes each test case's prediction, image and labels with SimpleITK: case0008_pred.nii.gz, case0008_img.nii.gz,
# case0008_gt.nii.gz (float32, spacing (1, 1, z_spacing=1)); bench score reads such a folder as it is
TEST_SCRIPT_PRED, TEST_SCRIPT_IMG, TEST_SCRIPT_GT = "_pred", "_img", "_gt"
# its files' endings: SimpleITK writes a plain .nii where the path says so, and nibabel reads both (renamed .nii.gz,
# a .nii would be no gzip file): bench score takes either, for predictions and labels alike
NIFTI_ENDINGS = (".nii.gz", ".nii")
# what a scaled image may span: the real files' -0.15..1.19 with a margin; raw HU or 0..255 is far outside
IMAGE_RANGE = (-1.0, 2.0)


def read_slice(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One training slice: image float32 (H, W), label int64 (H, W). BenchError on a bad file."""
    return _checked_pair(path, *raw_slice(path), 2)


def read_volume(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...] | None]:
    """One test volume: image float32 (D, H, W), label int64 (D, H, W), spacing (mm) or None."""
    image, label, spacing = raw_volume(path)
    if spacing is not None:
        problem = spacing_problem(spacing)
        if problem:
            raise BenchError(f"{path}: {problem}")
        spacing = tuple(float(s) for s in np.asarray(spacing).ravel())
    image, label = _checked_pair(path, image, label, 3)
    return image, label, spacing


def spacing_problem(spacing: object) -> str | None:
    """What keeps an h5's ``spacing`` attribute from being 3 finite mm > 0 (D, H, W), or None."""
    try:
        values = np.asarray(spacing, dtype=float).ravel()
    except (TypeError, ValueError):
        values = np.array([])
    if values.size != 3 or not np.all(np.isfinite(values) & (values > 0)):
        return f"spacing attribute {spacing!r}: expected 3 finite numbers > 0 (mm per D, H, W)"
    return None


def image_problem(image: np.ndarray) -> str | None:
    """What keeps ``image`` from being CT scaled as the Synapse files are, or None: NaN/inf, or values
    far outside [0, 1] (raw HU, 0..255): under the Synapse protocols they reach the networks as they are."""
    if image.dtype.kind not in "fiub":
        return f"image dtype {image.dtype}; expected float (CT scaled to [0, 1])"
    if not image.size:
        return None
    if not np.all(np.isfinite(image)):
        return "image contains NaN/inf"
    lo, hi = float(image.min()), float(image.max())
    if lo < IMAGE_RANGE[0] or hi > IMAGE_RANGE[1]:
        return (f"image values {lo:g}..{hi:g}; expected CT clipped to [-125, 275] HU and scaled to [0, 1] "
                f"(real files reach about -0.15..1.19): raw HU? `bench data convert --source btcv` writes this layout")
    return None


def raw_slice(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The npz's ``image`` and ``label`` as stored; BenchError when the file does not decode or
    lacks one. ``read_slice`` checks and converts them; ``bench data verify`` inspects them."""
    # the file opened here: np.load leaves its own open where the zip does not decode (a ResourceWarning)
    with reading(path, "a TransUNet npz slice"), open(path, "rb") as fh:
        with np.load(fh, allow_pickle=False) as data:
            return _arrays(path, data, data.files, "array")


@contextlib.contextmanager
def _open_h5(path: Path) -> Iterator[h5py.File]:
    """The h5 file open for reading, every failure a BenchError naming it, its ``image`` and ``label``
    refused unless stored in the file itself: external storage, a virtual dataset or a link would have
    bench read another file on this machine as image data. Every h5 read goes through here."""
    with reading(path, "a TransUNet h5 volume"), h5py.File(path, "r") as f:
        for key in ("image", "label"):
            link = f.get(key, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                elsewhere = f"a link to {link.filename}:{link.path}"
            elif isinstance(link, h5py.SoftLink):
                elsewhere = f"a link to {link.path}"
            else:
                dset = f.get(key) if link is not None else None
                if not isinstance(dset, h5py.Dataset):
                    continue  # absent or a group: the readers say what they expected
                elsewhere = ("a virtual dataset (its data in other files)" if dset.is_virtual else
                             f"stored in other files ({', '.join(str(e[0]) for e in dset.external)})"
                             if dset.external else None)
            if elsewhere:
                raise BenchError(f"{path}: {key!r} is {elsewhere}; expected 'image' and 'label' stored in the "
                                 "file itself (bench reads no other file through an h5)")
        yield f


def raw_volume(path: Path) -> tuple[np.ndarray, np.ndarray, object]:
    """The h5's ``image``, ``label`` and ``spacing`` attribute (None if absent) as stored."""
    with _open_h5(path) as f:
        return (*_arrays(path, f, list(f.keys()), "dataset"), f.attrs.get("spacing"))


def volume_header(path: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shapes of the h5's ``image`` and ``label`` (BenchError naming what is missing), without
    reading their arrays."""
    with _open_h5(path) as f:
        _check_keys(path, list(f.keys()), "dataset")
        return tuple(f["image"].shape), tuple(f["label"].shape)


def slices_last_note(shape: tuple[int, ...]) -> str | None:
    """A 3-D test volume whose square slices seem to lie on its first two axes ((H, W, D), as a NIfTI's
    get_fdata() gives it, where TransUNet's files are (D, H, W)), or None. A hint, not a certainty."""
    if len(shape) == 3 and shape[0] == shape[1] != shape[2]:
        return (f"shape {shape} looks like (H, W, D), slices last (as a NIfTI's get_fdata() gives them); expected "
                f"(D, H, W), slices first: np.transpose(volume, (2, 0, 1)) before saving")
    return None


def volume_spacing(path: Path) -> object:
    """The h5's ``spacing`` attribute (None if absent), without reading its arrays."""
    with _open_h5(path) as f:
        return f.attrs.get("spacing")


def volume_labels(path: Path, step: int = 1) -> np.ndarray:
    """Every ``step``-th slice of the h5's ``label``, as stored; the image is not read."""
    with _open_h5(path) as f:
        return np.asarray(f["label"][::step])


def _check_keys(path: Path, keys: list[str], kind: str) -> None:
    """BenchError naming what the file lacks of its ``image`` and ``label``."""
    missing = [k for k in ("image", "label") if k not in keys]
    if missing:
        raise BenchError(f"{path}: no {kind} {', '.join(repr(k) for k in missing)}; has {sorted(keys)}, "
                         "expected 'image' and 'label'")


def _arrays(path: Path, container, keys: list[str], kind: str) -> tuple[np.ndarray, np.ndarray]:
    _check_keys(path, keys, kind)
    return np.asarray(container["image"][()]), np.asarray(container["label"][()])


def _checked_pair(path: Path, image: np.ndarray, label: np.ndarray, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    # A mismatch would otherwise surface as a shape error deep in augmentation or scoring.
    if image.ndim != ndim or image.shape != label.shape:
        raise BenchError(f"{path}: image shape {image.shape} and label shape {label.shape}; "
                         f"expected one {ndim}-D shape for both")
    problem = image_problem(image)
    if problem:
        raise BenchError(f"{path}: {problem}")
    return np.asarray(image, dtype=np.float32), class_ids(path, label, NUM_CLASSES)


def slice_case(slice_id: str) -> str:
    """The case of a training slice id: case0005_slice012 -> case0005."""
    return slice_id.split("_slice", 1)[0]


def list_source(root: Path, list_name: str, folder: Path) -> str:
    """What a split's ids come from, as errors about the split name it: its list file (below
    ``root``), else the folder whose sorted contents stand in for it."""
    list_dir = find_list_dir(root)
    if list_dir is not None and (list_dir / list_name).is_file():
        return str((list_dir / list_name).relative_to(root))
    return f"{folder.name}/ (no {list_name})"


def find_list_dir(root: Path) -> Path | None:
    """The first list folder that exists, or None."""
    for rel in LIST_DIRS:
        if (root / rel).is_dir():
            return root / rel
    return None


def data_files(folder: Path, suffix: str) -> list[Path]:
    """``folder``'s ``*<suffix>`` files, hidden ones left out."""
    return [p for p in folder.glob("*" + suffix) if not hidden(p)]


def read_list(path: Path, suffix: str = "") -> list[str]:
    """Ids from a list file, one per line; blank lines skipped, a trailing ``suffix`` stripped.
    BenchError when it cannot be read, lists nothing (an empty split trains or tests nothing) or lists
    anything but a plain file name."""
    text = read_text(path, "a text list of ids")
    ids = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if suffix and line.endswith(suffix):
            line = line[: -len(suffix)]
        # an id is joined to a data folder and names a prediction: a path would reach files elsewhere
        if not is_plain_name(line):
            raise BenchError(f"{path}: line {n} {line!r} is not a plain file name; expected a case or slice "
                             "name like case0008 or case0005_slice000, without a folder")
        ids.append(line)
    if not ids:
        raise BenchError(f"{path}: lists no ids; expected one id per line")
    return ids


def read_spacing_table(path: Path) -> dict[str, tuple[float, float, float]]:
    """``spacing.csv``: a ``case,d,h,w`` header, then one case per line with three positive mm
    values; BenchError naming the file and line otherwise."""
    import csv

    rows = list(csv.reader(read_text(path, "a CSV of case spacings").splitlines()))
    expected = "a header case,d,h,w and lines like case0001,3.0,0.76,0.76 (mm per h5 axis D, H, W)"
    if not rows or [c.strip() for c in rows[0]] != ["case", "d", "h", "w"]:
        raise BenchError(f"{path}: expected {expected}")
    table = {}
    for n, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        try:
            case, values = row[0].strip(), tuple(float(v) for v in row[1:])
        except ValueError:
            values = ()
        if len(row) != 4 or len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
            raise BenchError(f"{path}: line {n} {','.join(row)!r}: expected {expected}")
        if case in table:
            raise BenchError(f"{path}: line {n}: {case} listed twice")
        table[case] = values
    return table


def spacing_table_problem(table: dict[str, tuple[float, float, float]], test: dict[str, Path],
                          train_cases: set[str]) -> str | None:
    """What keeps a spacing table from giving every test volume (``test``: case -> h5 file) its HD95 in
    mm, or None: a line naming no case (a typo, "case0001.npy.h5"), or test volumes without a line and
    without a spacing of their own (their HD95 in voxels beside the others' in mm: a mean of no unit)."""
    problems = []  # both, where both are there: one fix at a time would find the second after the first
    unknown = sorted(set(table) - set(test) - train_cases)
    if unknown:
        problems.append(f"{few(unknown)} {'is not a case' if len(unknown) == 1 else 'are not cases'} of this "
                        "data; expected case ids such as case0001")
    missing = [c for c, path in test.items() if c not in table and path.is_file() and volume_spacing(path) is None]
    if missing:
        has, its = ("has", "its") if len(missing) == 1 else ("have", "their")
        problems.append(f"no line for {few(missing)}, which {has} no spacing of {its} own: {its} HD95 "
                        "would be in voxels and the others' in mm; give every test case a line (or remove the file: "
                        "HD95 in voxels for all)")
    return "; ".join(problems) or None


class SynapseDataset(SegDataset):
    kind = "synapse"
    name = "synapse"
    num_classes = NUM_CLASSES
    class_names = CLASS_NAMES
    in_chans = 1
    default_policy = "legacy-synapse"
    volumes = True
    layout = (
        "<root>/train_npz/caseXXXX_sliceYYY.npz and/or <root>/test_vol_h5/caseXXXX.npy.h5, "
        "lists in <root>/lists/lists_Synapse/{train.txt,test_vol.txt} (TransUNet layout)"
    )
    mask_suffix = TEST_SCRIPT_PRED
    mask_suffix_by = "TransUNet's test script (utils.py test_single_volume) names its predictions"
    not_predictions = tuple(f"{kind}{ending}" for kind in (TEST_SCRIPT_IMG, TEST_SCRIPT_GT) for ending in NIFTI_ENDINGS)

    def __init__(self, root: str | Path):
        super().__init__(root)
        self.train_dir = self.root / TRAIN_DIR
        self.test_dir = self.root / TEST_DIR
        if not self.train_dir.is_dir() and not self.test_dir.is_dir():
            raise BenchError(f"{self.root}: no {TRAIN_DIR}/ or {TEST_DIR}/ folder; expected {self.layout}"
                             + found_instead(self.root, (TEST_DIR,)))
        self.list_dir = find_list_dir(self.root)
        self._train = self._ids(TRAIN_LIST, self.train_dir, ".npz")
        self._test = self._ids(TEST_LIST, self.test_dir, H5_SUFFIX)
        table = self.root / SPACING_FILE
        self._spacing = read_spacing_table(table) if table.is_file() else {}

    def _ids(self, list_name: str, folder: Path, suffix: str) -> list[str]:
        if self.list_dir is not None and (self.list_dir / list_name).is_file():
            return read_list(self.list_dir / list_name, suffix)
        if not folder.is_dir():
            return []
        self.notes.append(
            f"no {list_name} under {self.root}/lists/lists_Synapse/ or {self.root}/lists_Synapse/; "
            f"using the sorted contents of {folder}"
        )
        ids = sorted(p.name[: -len(suffix)] for p in data_files(folder, suffix))
        if not ids:
            raise BenchError(f"{folder}: no '*{suffix}' files (and no {list_name}); expected {self.layout}")
        # a browser's second download ("case0005_slice000 (1).npz") would count as one more item
        odd = [i for i in ids if not re.fullmatch(r"case\d+(_slice\d+)?", i)]
        if odd:
            warnings.warn(f"{folder}: {len(odd)} file(s) named otherwise than TransUNet's caseNNNN[_sliceNNN] "
                          f"({few(odd, 3)}), each taken as one more item: a "
                          f"download's duplicate? Without {list_name}, every file there is used", stacklevel=3)
        return ids

    @property
    def split_names(self) -> tuple[str, str]:
        return (list_source(self.root, TRAIN_LIST, self.train_dir), list_source(self.root, TEST_LIST, self.test_dir))

    def case_of(self, item_id: str) -> str:
        return slice_case(item_id)

    def train_ids(self) -> list[str]:
        return list(self._train)

    def test_ids(self) -> list[str]:
        return list(self._test)

    def train_file(self, item_id: str) -> Path:
        """The file a training slice is read from (by loading and content_id alike)."""
        return self.train_dir / f"{item_id}.npz"

    def test_file(self, case_id: str) -> Path:
        """The file a test volume is read from (by loading, content_id and verify alike)."""
        return self.test_dir / f"{case_id}{H5_SUFFIX}"

    def load_train(self, item_id: str) -> Sample:
        image, label = read_slice(_existing(self.train_file(item_id)))
        return Sample(image=image, label=label, name=item_id)

    def load_test(self, case_id: str) -> Case:
        image, label, spacing = read_volume(_existing(self.test_file(case_id)))
        return Case(case_id=case_id, image=image, label=label, spacing=spacing or self._spacing.get(case_id))

    def prediction_names(self, case_id: str) -> tuple[str, ...]:
        names = super().prediction_names(case_id)
        return names + tuple(name.removesuffix(".gz") for name in names)  # NIFTI_ENDINGS

    def labels_beside(self, case_id: str) -> tuple[str, ...]:
        return tuple(f"{case_id}{TEST_SCRIPT_GT}{ending}" for ending in NIFTI_ENDINGS)

    def spacing_unknown(self, case_ids: list[str]) -> list[str]:
        return [c for c in case_ids if c not in self._spacing and volume_spacing(_existing(self.test_file(c))) is None]

    def check_geometry(self) -> str | None:
        # the test volumes' headers: a missing key or a transposed volume surfaced after the whole training
        turned = []
        for case in self._test:
            path = _existing(self.test_file(case))
            image, label = volume_header(path)
            if len(image) != 3 or image != label:
                raise BenchError(f"{path}: image shape {image} and label shape {label}; expected one 3-D shape "
                                 "(D, H, W) for both")
            turned += [f"{path}: {note}"] if (note := slices_last_note(image)) else []
        return few(turned, 1) if turned else None

    def check_spacing(self) -> None:
        if self._spacing:
            problem = spacing_table_problem(self._spacing, {c: self.test_file(c) for c in self._test},
                                            {slice_case(i) for i in self._train})
            if problem:
                raise BenchError(f"{self.root / SPACING_FILE}: {problem}")

    def scored_files(self) -> list[Path]:
        return [self.test_file(i) for i in self._test] + self.spacing_files()

    def spacing_files(self) -> list[Path]:
        table = self.root / SPACING_FILE  # HD95 in mm reads it
        return [table] if table.is_file() else []

    def source_files(self) -> list[Path]:
        return [self.train_file(i) for i in self._train] + self.scored_files()


def _existing(path: Path) -> Path:
    """``path`` (a slice's npz or a volume's h5, listed in lists/), or BenchError with the command that checks
    the whole dataset (the root is the folder above train_npz/ and test_vol_h5/)."""
    if not path.is_file():
        raise BenchError(f"{path}: listed but missing (check with `bench data verify --dataset synapse "
                         f"--data-root {shlex.quote(str(path.parent.parent))}`)")
    return path
