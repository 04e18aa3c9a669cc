"""The one case type every on-disk format is read into.

Readers (one per real format: Synapse npz/h5, ISIC folders, PraNet polyp, nnU-Net raw) subclass
``SegDataset``; training, evaluation and ``bench data verify`` only see this interface.

Arrays keep the data's own units: images float32 (CT already in [0, 1] for Synapse) or uint8 RGB,
labels int64 class ids. Binary datasets (ISIC, polyp) keep the mask as float32 in [0, 1] (the PNG
divided by 255), because VM-UNet trains on the soft, resized mask; thresholding happens at scoring.

Bad input (a truncated or corrupt file, label ids outside the classes) is one BenchError naming the
file, raised as each item is loaded: ``reading`` and ``class_ids`` below (table: docs/bad_input.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.errors import BenchError, DataError, few
from bench.fileio import file_sha256, read_denied


@dataclass
class Sample:
    """One training item: a 2-D image or slice, or a whole case (patch protocols)."""

    image: np.ndarray  # (H, W) or (H, W, C) channels-last; patch protocols' preprocessed cases (C, D, H, W)
    label: np.ndarray  # spatial shape: int64 class ids (a whole volume: signed, -1 outside its non-zero region), or float32 in [0, 1] (binary)
    name: str = ""


@dataclass
class Case:
    """One evaluation unit: a 3-D volume (scored per volume) or a 2-D image."""

    case_id: str
    image: np.ndarray  # volume (D, H, W); 2-D image (H, W) or (H, W, C)
    label: np.ndarray  # spatial shape of image; int64 ids, or float32 [0, 1] for binary datasets
    spacing: tuple[float, ...] | None = None  # mm per axis of ``label``, None where unknown

    @property
    def is_volume(self) -> bool:
        return self.label.ndim == 3


CONTENT_SAMPLES = 16  # files whose bytes content_id reads
_MIB = 1 << 20


class SegDataset:
    """A dataset on disk. Subclasses set the class attributes and implement the four methods.

    Loading is lazy (ids first, arrays on demand), so a DataLoader worker can load items itself.
    """

    kind: str = ""  # "synapse" | "isic" | "polyp" | "isic_all" | "nnunet"
    name: str = ""  # registry name, e.g. "synapse", "isic17"
    num_classes: int = 2  # model output channels: 1 for binary sigmoid tasks, else incl. background
    class_names: tuple[str, ...] = ()  # foreground names, index 0 = class id 1
    in_chans: int = 1  # channels of the stored images
    default_policy: str = "strict"
    volumes: bool = False  # test cases are 3-D volumes (scored per volume), not 2-D images
    layout: str = ""  # one line describing the expected on-disk layout, used in error messages
    # what the data's own tools add to a case id in a label map's name (ISIC's challenge: "_segmentation", as in
    # ISIC_0000000_segmentation.png; Synapse's TransUNet test script: "_pred"): bench score takes a prediction so
    # named too (prediction_names), and says who names it so (mask_suffix_by)
    mask_suffix: str = ""
    mask_suffix_by: str = "the data's challenge names its masks"
    # endings of the files those tools write beside their predictions that are no prediction (Synapse's test
    # script: each case's image and labels): bench score passes over them, as over score.NOT_PREDICTIONS
    not_predictions: tuple[str, ...] = ()

    def __init__(self, root: str | Path):
        self.root = Path(root)
        # normalize = "ct_foreground": the training foreground's statistics (bench.data.intensity),
        # computed on first use, or set from a run's record to score it as it was trained
        self.foreground_stats: list[dict[str, float]] | None = None
        # target_spacing = "nnunet": the (z, y, x) spacing volumes are resampled to ((y, x) in-plane under
        # 2-D patches; bench.data.preprocess), computed on first use or set from a run's record
        self.target_spacing: tuple[float, ...] | None = None
        # normalize = "zscore" in patch protocols: whether cases are z-scored inside their non-zero region
        # (nnU-Net's use_mask_for_norm, bench.data.preprocess), decided once or set from a record
        self.mask_norm: bool | None = None
        # patch protocols: a folder where preprocessed training cases are kept as .npy and memory-mapped,
        # so a patch reads its region only (bench run sets <results>/cache); None: preprocess each time
        self.volume_cache: Path | None = None
        # Human-readable remarks about how the data was read (e.g. a fallback that was taken);
        # worth printing once and recording with a run.
        self.notes: list[str] = []
        # how the test split was made where the data does not fix it, as the Methods text says it (no
        # paths); None: the layout's own split (its folders or lists)
        self.split_rule: str | None = None

    @property
    def dataset_name(self) -> str:
        """Which data this is, for records and boards: the registry name, except where one reader
        serves many datasets (nnunet), whose runs must not share a board."""
        return self.name

    def check_geometry(self) -> str | None:
        """Headers only, before anything trains: BenchError where an image and its label are not on
        one grid (shape, spacing); a warning where they may not overlay (their headers place the
        voxels differently), or None."""
        return None

    def check_labels(self) -> None:
        """BenchError, before anything trains, where label files this reader can check cheaply hold ids
        outside the classes (else found at evaluation, after a whole grid trained)."""

    def check_spacing(self) -> None:
        """BenchError where the voxel spacings a policy scoring in mm reads are incomplete (Synapse's
        spacing table); called only for such policies."""

    def normalize_hint(self, normalize: str) -> str | None:
        """A warning when a protocol's ``normalize`` is not what this data's channels ask for (raw HU,
        raw MRI, HU rules on photos), or None."""
        return None

    @property
    def binary(self) -> bool:
        """True for one-channel sigmoid tasks (ISIC, polyp): labels are float32 masks in [0, 1]."""
        return self.num_classes == 1

    def train_ids(self) -> list[str]:
        raise NotImplementedError

    @property
    def has_split_file(self) -> bool:
        """Whether the split comes from a file shipped with the data (fixed-split formats: always)."""
        return True

    @property
    def split_source(self) -> Path:
        """Where the split is read from (a splits file, else the root), for errors about it."""
        return self.root

    @property
    def split_names(self) -> tuple[str, str]:
        """What the training and the test list are called in errors about them."""
        return SPLIT_NAMES

    def case_of(self, item_id: str) -> str:
        """The case a training item belongs to (a slice's volume): no case may be on both sides."""
        return item_id

    def check_splits(self) -> None:
        """BenchError unless both splits hold items (``bench run`` trains, then evaluates), none twice
        and no case in both, and every listed file exists: found before training, not after it."""
        train, test = self.train_ids(), self.test_ids()
        for split, ids in (("training", train), ("test", test)):
            if not ids:
                raise BenchError(f"{self.root}: the {split} split is empty; expected {self.layout}")
        problems = split_problems(train, test, self.case_of, self.split_names)
        if problems:
            raise BenchError(f"{self.split_source}: {'; '.join(problems)}")
        missing = [path for path in self.required_files() if not path.is_file()]
        if missing:
            # "listed" only where a list names them (Synapse's); nnU-Net's come from dataset.json's channels
            raise BenchError(f"{few([str(p) for p in missing], 1)}: missing; "
                             f"check with `bench data verify --dataset {self.name} --data-root {shlex.quote(str(self.root))}`")

    def load_train(self, item_id: str) -> Sample:
        raise NotImplementedError

    def train_volume_ids(self) -> list[str]:
        """The training cases as whole volumes, for patch protocols (which cut patches from them)."""
        raise BenchError(f"{self.root}: patch protocols (patch_size) train on whole cases in nnU-Net format "
                         f"(--dataset nnunet); this {self.dataset_name!r} data holds prepared training slices or images")

    def load_train_volume(self, case_id: str, prep) -> Sample:
        """The case preprocessed by ``prep`` (``bench.data.preprocess.VolumePrep``)."""
        raise NotImplementedError

    def train_geometry(self) -> Iterator[tuple[tuple[int, ...], tuple[float, ...]]]:
        """(shape, spacing) of each training volume, for a target spacing."""
        raise BenchError(f"{self.root}: a target spacing needs volumes with a voxel spacing in nnU-Net format "
                         f"(--dataset nnunet, NIfTI files); this {self.dataset_name!r} data has none")

    @property
    def n_train_cases(self) -> int:
        """How many cases ``train_cases`` yields."""
        raise NotImplementedError

    def train_cases(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(image, label) of each whole training case, for dataset statistics (``ct_foreground``)."""
        raise BenchError(f"{self.root}: normalize 'ct_foreground' takes its statistics from whole training cases "
                         f"in nnU-Net format (--dataset nnunet); the {self.dataset_name!r} reader has none")

    def train_case(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(image, label) of one of ``train_volume_ids``' cases, as ``train_cases`` yields it."""
        raise NotImplementedError

    def test_ids(self) -> list[str]:
        raise NotImplementedError

    def load_test(self, case_id: str) -> Case:
        raise NotImplementedError

    def source_files(self) -> list[Path]:
        """The files the items and the split are read from, in a fixed order (``content_id``)."""
        raise NotImplementedError

    def required_files(self) -> list[Path]:
        """The files that must exist, checked before training (``check_splits``): ``source_files``."""
        return self.source_files()

    def scored_files(self) -> list[Path]:
        """The files the test labels are read from (``content_id`` reads every byte of them); none
        named by a reader that does not say."""
        return []

    def spacing_files(self) -> list[Path]:
        """Files that give test volumes their spacing and nothing else (Synapse's ``spacing.csv``): they
        change scores only under policies that score HD95 in mm (``content_id(spacing=False)``)."""
        return []

    def spacing_unknown(self, case_ids: list[str]) -> list[str]:
        """The test volumes among ``case_ids`` whose voxel spacing the data does not give (their HD95 is
        in voxels, their predictions written with 1 mm voxels); read without loading the volumes."""
        return []

    def content_id(self, *, scored: bool = True, spacing: bool = True, labels: bool = True) -> str:
        """``files:<sha256[:16]>``: what identifies data of one's own in run ids, wherever it lies.
        Every source file's path below the root and size, the contents of ``CONTENT_SAMPLES`` files
        spread over the list (their first and last MiB) and every byte of the files the test labels
        are read from (``scored_files``: test masks, Synapse's test volumes, nnU-Net's label files):
        a copy or another mount of the same files keeps the id (a grid over node-local copies, a
        moved disk: finished runs stay finished); data preprocessed otherwise gets another where a
        file's size or a sampled file's bytes differ (uncompressed training slices keep their sizes:
        an edit in place to an unsampled one is not seen), test labels changed in any way get
        another. ``scored=False``: the id without the last part, as runs begun before it have it.
        ``spacing=False``: without ``spacing_files``, the id a run scored without them has, where a
        spacing table added since changes none of its scores. ``labels=False``: the id of the rest, without
        the ``scored_files`` at all, which weights' checkpoints keep (``bench run --weights`` tells data that
        differs in its test labels alone from other data)."""
        left_out = (set() if spacing else set(self.spacing_files())) | (set() if labels else set(self.scored_files()))
        files = [f for f in self.source_files() if f not in left_out]
        entries = []
        for path in files:
            try:
                size = path.stat().st_size
            except OSError:
                size = None  # listed but missing: reading it fails later, with its name
            entries.append((os.path.relpath(path, self.root).replace(os.sep, "/"), size))
        digest = hashlib.sha256(json.dumps([self.name, self.num_classes, entries]).encode())
        step = max(1, len(files) // CONTENT_SAMPLES)
        for path in files[::step][:CONTENT_SAMPLES]:
            try:
                with path.open("rb") as fh:
                    digest.update(fh.read(_MIB))
                    if fh.seek(0, os.SEEK_END) > 2 * _MIB:
                        fh.seek(-_MIB, os.SEEK_END)
                        digest.update(fh.read(_MIB))
            except OSError:
                digest.update(b"unreadable")
        for path in [f for f in self.scored_files() if f not in left_out] if scored else ():
            try:
                digest.update(file_sha256(path).encode())
            except OSError:
                digest.update(b"unreadable")
        return "files:" + digest.hexdigest()[:16]

    # --- predictions (bench predict) ----------------------------------------------------------

    def prediction_name(self, case_id: str) -> str:
        """The file a predicted label map of ``case_id`` is written to, relative to the run's
        prediction folder (a test-set prefix such as ``Kvasir/`` becomes a subfolder)."""
        return f"{case_id}{'.nii.gz' if self.volumes else '.png'}"

    def write_prediction(self, case: Case, pred: np.ndarray, path: Path) -> None:
        """Write ``pred`` (on the grid it was scored on) to ``path``: a PNG of class ids (0/255 for a
        binary mask) or a NIfTI volume, (D, H, W) stored as (x, y, z) = (W, H, D) with the case's
        spacing where known."""
        if pred.ndim == 2:
            write_png_labels(pred * 255 if self.binary else pred, path, self.num_classes)
        else:
            zooms = case.spacing[::-1] if case.spacing else (1.0, 1.0, 1.0)
            write_nifti_labels(pred, path, self.num_classes, np.diag([*zooms, 1.0]))

    def prediction_names(self, case_id: str) -> tuple[str, ...]:
        """The names ``bench score`` takes a prediction of ``case_id`` by: ``prediction_name``, then, where the
        data's challenge names its masks with a ``mask_suffix``, that name with the suffix after the case id."""
        name = self.prediction_name(case_id)
        return (name, f"{case_id}{self.mask_suffix}{name[len(case_id):]}") if self.mask_suffix else (name,)

    def labels_beside(self, case_id: str) -> tuple[str, ...]:
        """The names of the file the data's own tools write ``case_id``'s labels to beside its prediction
        (TransUNet's test script: ``<case>_gt.nii.gz`` or ``.nii``), which ``bench score`` compares with the ground
        truth it scores against (the first there); () where they write none."""
        return ()

    def unscored_hint(self, extra: list[str], held: list[str]) -> str:
        """Whose files ``extra`` (names in a prediction folder that are no test case scored here,
        beside the files of the scored cases ``held``) are, in the words of the data's own tools, with the
        remedy; "" where the reader knows no more (``bench score``; the nnU-Net reader names folds, imagesTs)."""
        return ""

    def prediction_folder_notes(self, folder: Path) -> list[str]:
        """BenchError where the files another tool wrote beside its predictions in ``folder`` say they are
        of other data than this (``bench score``); what they say otherwise worth a note ([] for nothing)."""
        return []

    def check_prediction_header(self, path: Path, img) -> None:
        """BenchError where a prediction volume's NIfTI header (``img``: ``path`` opened, ``load_nifti``) places
        its voxels elsewhere than its case's (``bench score``; its spacing is compared there, with the case's).
        Nothing here: volumes read from arrays without a header (Synapse's h5) have no orientation to compare
        with, and headers written for them differ with the tool (bench predict's are RAS, SimpleITK's from
        TransUNet's test script LPS) over the same voxels."""

    def read_prediction(self, path: Path, greyed: list[Path] | None = None) -> tuple[np.ndarray, tuple | None]:
        """A label map as ``write_prediction`` writes one (``bench score`` reads those made elsewhere) and the
        spacing its header gives, in mm per array axis (None for a PNG): class ids from a NIfTI volume
        (D, H, W), its header read once and checked first (``check_prediction_header``), or a PNG; a binary
        task's 0/255 mask as 0/1. A PNG stored in colour that holds one grey (``_colour_as_grey``) is read as
        that grey, its path appended to ``greyed`` where given. BenchError naming ``path`` for an unreadable
        file, a colour PNG, or values that are no class of this data."""
        from bench.data.nnunet import VOLUME_ENDINGS, load_nifti, png_array, png_pixels, read_nifti

        volume = path.name.lower().endswith(VOLUME_ENDINGS)
        pixels, mode = (None, None) if volume else png_pixels(path, "a PNG image")  # one open: mode and pixels
        spacing = None
        if volume:
            img = load_nifti(path)  # one open: its header here, its voxels below
            _refuse_channels(path, img.shape, len(self.class_names) + 1)
            self.check_prediction_header(path, img)
            pred, spacing = read_nifti(path, label=True, img=img)
        elif mode in _COLOUR_MODES:
            pred = _colour_as_grey(path, pixels, mode, f"a single-channel PNG of 0 (background) and 255 "
                                               f"({self.class_names[0]}), or a 1-bit one" if self.binary else
                                               f"a single-channel PNG of class ids 0..{self.num_classes - 1}")
            if greyed is not None:
                greyed.append(path)
        else:
            pred = png_array(path, pixels, mode, label=True)
        if not self.binary:
            return class_ids(path, pred, self.num_classes), spacing
        if mode == "1":  # a 1-bit PNG, foreground and background: it cannot store 255
            return (pred > 0).astype(np.uint8), spacing
        values = np.unique(pred)
        bad = [int(v) for v in values if v not in (0, 255)]
        if bad:
            hint = ("; a 0/1 mask? store the foreground as 255" if set(values.tolist()) <= {0, 1} else
                    "; grey levels: a probability map (or a JPEG's noise)? threshold it into a 0/255 PNG, e.g. "
                    "foreground where >= 128 (the harness thresholds probabilities at 0.5)")
            raise BenchError(f"{path}: mask values {bad[:10]}; expected 0 (background) and 255 "
                             f"({self.class_names[0]}), as the dataset's masks{hint}")
        return (pred // 255).astype(np.uint8), spacing


_COLOUR_MODES = ("RGB", "RGBA", "LA")  # PIL modes of several channels; "LA" is grey and alpha


def _colour_as_grey(path: Path, pixels: np.ndarray, mode: str, expected: str) -> np.ndarray:
    """The label map stored in colour at ``path`` (its ``pixels``, (H, W, C), of PIL ``mode``) as its grey,
    where that is all it holds: its colour channels equal and any alpha opaque everywhere (a grey map saved
    by a tool that writes RGB or RGBA). BenchError naming ``path`` and what was ``expected`` otherwise: which channel is the label is
    unknown."""
    colour, alpha = (pixels[..., :-1], pixels[..., -1]) if mode in ("RGBA", "LA") else (pixels, None)
    if alpha is not None and (alpha != 255).any():
        why = "an alpha channel that is not opaque everywhere"
    elif (colour != colour[..., :1]).any():
        why = "colour channels that differ"
    else:
        return colour[..., 0].astype(np.int64)
    raise BenchError(f"{path}: a colour PNG (mode {mode}) with {why}; expected {expected}")


def _refuse_channels(path: Path, stored: tuple[int, ...], classes: int) -> None:
    """A prediction volume (``path``, its header's shape ``stored``) of several values per voxel
    (``channel_count``) refused by name, with the remedy for a prediction: the reader's own advice is for
    input images (one file per channel). Per-class channels (probabilities, one-hot) only where there
    is one per class of the data (``classes``, background included); otherwise a series of volumes."""
    from bench.data.nnunet import channel_count

    n = channel_count(stored)
    if n == classes:
        raise BenchError(f"{path}: shape {tuple(stored)}; expected a label map of class ids, (x, y, z), not one "
                         "channel per class: save the argmax over the channel axis")
    if n:
        raise BenchError(f"{path}: shape {tuple(stored)}; expected a label map of class ids, (x, y, z): it holds "
                         f"{n} volumes (frames), not one channel per class ({classes} classes), and a label map is "
                         "one 3-D volume: save the one to score")


SPLIT_NAMES = ("the training split", "the test split")


def split_problems(train: list[str], test: list[str], case_of=lambda item: item,
                   names: tuple[str, str] = SPLIT_NAMES) -> list[str]:
    """Why ``train``/``test`` are no split, or []: an id listed twice (it would count twice), a test
    case with training items (its score would be of data trained on). ``case_of``: a training item's
    case (test ids are cases); ``names``: what the two lists are called (their files, where known).
    Shared by the readers (which raise) and ``bench data verify`` (which reports)."""
    problems = []
    for name, ids in zip(names, (train, test)):
        twice = sorted(item for item, n in Counter(ids).items() if n > 1)
        if twice:
            problems.append(f"{name} lists {few(twice)} twice")
    both = sorted({case_of(item) for item in train} & set(test))
    if both:
        problems.append(f"{few(both)} in both {names[0]} and {names[1]}; a test case is never trained on")
    return problems


def found_instead(root: Path, expected: tuple[str, ...]) -> str:
    """For an error about a layout missing at ``root``: the folder one level down that holds it
    (a zip extracted into a folder of its own), else what ``root`` holds; ``expected``: paths
    relative to the layout's root that identify it."""
    subs = subfolders(root)
    for sub in subs:
        if all((sub / e).exists() for e in expected):
            return f"; {sub.name}/ holds it: pass --data-root {shlex.quote(str(sub))}"
    return f" (found {few([p.name + '/' for p in subs], 6)})" if subs else \
        " (the folder holds no folders)"


def hidden(path: Path) -> bool:
    """Dot files (macOS's ``._`` AppleDouble copies, ``.DS_Store``): never data, in every reader."""
    return path.name.startswith(".")


def subfolders(folder: Path) -> list[Path]:
    """``folder``'s subfolders that may hold data, sorted: hidden ones and the ``__MACOSX`` folder a
    macOS zip extracts beside its content left out; none when ``folder`` is missing."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not hidden(p) and p.name != "__MACOSX")


def id_dtype(num_classes: int) -> type:
    """The unsigned type of a written label map: one per dataset, whatever ids a case holds."""
    return np.uint8 if num_classes <= 256 else np.uint16


def write_png_labels(labels: np.ndarray, path: Path, num_classes: int) -> None:
    """Class ids (H, W) as an 8-bit image (16-bit for more than 256 classes); PIL picks the format
    from ``path``'s suffix (.png, .bmp, .tif), so a temporary name must end in it too."""
    from PIL import Image

    dtype = id_dtype(num_classes)
    if dtype != np.uint8 and Path(path).suffix.lower() == ".bmp":
        raise BenchError(f"{path}: BMP holds no 16-bit label maps, needed for {num_classes} classes; "
                         "convert the dataset to .png")
    Image.fromarray(np.ascontiguousarray(labels, dtype=dtype)).save(path)


def write_nifti_labels(labels: np.ndarray, path: Path, num_classes: int, affine: np.ndarray, header=None) -> None:
    """A (D, H, W) label volume as a NIfTI of unsigned integer ids stored (W, H, D) = (x, y, z), the
    axis order the readers transpose from; ``header`` (e.g. the source image's) keeps its geometry."""
    import nibabel as nib

    dtype = id_dtype(num_classes)
    img = nib.Nifti1Image(np.ascontiguousarray(labels.transpose(2, 1, 0), dtype=dtype), affine, header)
    img.set_data_dtype(dtype)  # a copied image header would otherwise keep its float type and scaling
    img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, str(path))


# --- bad input: the one place where raw read failures and bad label ids become BenchErrors --


def describe(exc: BaseException) -> str:
    """``"Type: first line of the message"``, short enough for a one-line error."""
    text = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def reading(path: Path, what: str) -> Iterator[None]:
    """Turn any failure inside the block into one BenchError naming ``path``.

    Each reader wraps its raw decode (np.load, h5py, PIL, nibabel) in this: those libraries raise
    their own exception types for a truncated or corrupt file (BadZipFile, OSError, EOFError,
    UnidentifiedImageError, ImageFileError, zlib.error, ...). BenchErrors pass through unchanged.
    Text files: ``bench.fileio.read_text``.
    """
    try:
        yield
    except BenchError:
        raise
    except PermissionError as exc:
        raise read_denied(path, what) from exc
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise _damaged(path, what, exc) from exc
        raise BenchError(f"{path}: cannot read it as {what}: it holds Python objects (an object array), which "
                         "bench does not unpickle; save plain numeric arrays") from exc
    except Exception as exc:  # noqa: BLE001 - whatever the decoder raises, the file is bad
        raise _damaged(path, what, exc) from exc


def _damaged(path: Path, what: str, exc: Exception) -> BenchError:
    return BenchError(f"{path}: cannot read it as {what}, the file is truncated or corrupt ({describe(exc)})")


def label_id_problem(label: np.ndarray, num_classes: int) -> str | None:
    """What keeps ``label`` from being class ids 0..num_classes-1, or None when it is fine.

    Shared by the readers (which raise) and ``bench data verify`` (which reports)."""
    if label.dtype.kind == "f":  # the real Synapse files store ids as float32
        problem = float_id_problem(label)
        if problem:
            return problem
    elif label.dtype.kind not in "iub":
        return f"label dtype {label.dtype}; expected integer class ids"
    if label.size and (label.min() < 0 or label.max() >= num_classes):
        values = np.unique(label)
        bad = [int(v) for v in values[(values < 0) | (values >= num_classes)][:10]]
        return f"label values {bad} outside 0..{num_classes - 1}{mask_hint(bad, values.tolist())}"
    return None


def root_is_file(root: Path) -> str:
    """What to do where a dataset's root is a file: a download not yet unpacked, or a file of the dataset."""
    archive = root.name.lower().endswith((".zip", ".tar", ".gz", ".tgz", ".xz", ".bz2", ".7z", ".rar"))
    return "a file, not a folder: " + ("extract it, and give the folder" if archive else "give the dataset's folder")


def mask_hint(bad: list[int], values: Iterable[int]) -> str:
    """The likeliest cause of the ids ``bad`` out of range among a label's ``values``, where nnU-Net-format
    labels hold class ids: a binary mask saved as 0/255 (the usual PNG mask), an unlabelled border of
    255 beside class ids (Pascal VOC's "void"), classes drawn as grey levels (REFUGE's 0/128/255)."""
    convert = "; bench data convert --source pairs --label NAME=VALUE,… converts masks as drawn"
    if bad == [255] and set(values) <= {0, 255}:
        return "; a 0/255 mask? store the foreground as 1 (mask // 255), as class ids"
    if bad == [255]:  # nnU-Net's "ignore" label is refused (bench trains and scores every pixel)
        return ("; 255 beside class ids: an unlabelled border (Pascal VOC's void)? store it as background (0) or "
                "its class" + convert)
    if bad and bad[-1] in (127, 128, 255):  # 0/128/255: classes drawn as grey levels
        return ("; grey levels standing for classes? store each as its class id (where 0 is the background: "
                "values 0, 128, 255 as 0, 1, 2, numpy.searchsorted([0, 128, 255], label); REFUGE's background "
                "is 255)" + convert)
    return ""


def float_id_problem(label: np.ndarray) -> str | None:
    """What keeps a float label map from holding class ids (NaN/inf, fractions), or None."""
    if not np.all(np.isfinite(label)):
        return "label contains NaN/inf"
    if not np.array_equal(label, np.round(label)):
        return "label holds non-integer values; expected class ids"
    return None


def check_whole_ids(path: Path, label: np.ndarray) -> None:
    """BenchError naming ``path`` where a label map stored as floats holds no class ids (NaN/inf,
    fractions): rounding them would invent labels."""
    problem = float_id_problem(label) if label.dtype.kind == "f" else None
    if problem:
        raise BenchError(f"{path}: {problem}")


def class_ids(path: Path, label: np.ndarray, num_classes: int) -> np.ndarray:
    """``label`` as int64 ids, or BenchError naming ``path`` when it holds ids outside the task's
    classes (they would index past the model's outputs in the loss, or be scored as nothing)."""
    problem = label_id_problem(np.asarray(label), num_classes)
    if problem:
        raise DataError(f"{path}: {problem}; this dataset has {num_classes} classes (0 = background)")
    return np.asarray(label).astype(np.int64)
