"""ISIC 2017 / 2018 skin lesions in the VM-UNet layout (JCruan519/VM-UNet datasets/dataset.py).

On disk::

    <root>/train/images/*.png   <root>/train/masks/*.png
    <root>/val/images/*.png     <root>/val/masks/*.png

Images and masks are paired by name where the names correspond (a mask named as its image, or as
its image plus ``_...`` or ``-...``: ``ISIC_0000000_segmentation.png``), else by **sorted
filename order**, as the authors' ``NPY_datasets`` does; on their data the two agree, and pairing by name keeps a
renamed or missing file from shifting every later mask onto the wrong image. The authors' test
set *is* ``val/`` (its configs train on ``train/`` and test on ``val/``), so ``test_ids()`` are the ``val`` images.

Arrays: image uint8 RGB (H, W, 3) (``Image.convert("RGB")``; 16-bit grayscale scaled to 8 bits); mask read as grayscale ("L") and
divided by 255 -> float32 (H, W) in [0, 1], kept soft because VM-UNet trains on the resized soft
mask and thresholds only at scoring. Binary task: one sigmoid output channel.

VM-UNet-V2's merged ISIC data (``Isic_datasets``, its train_isic_all.py and datasets/dataset.py)
is read by ``IsicAllDataset`` (registry name ``isic_all``)::

    <root>/train/images/*.png         <root>/train/masks/*.png        (ISIC17 + ISIC18 training images)
    <root>/val/<set>/images/*.png     <root>/val/<set>/masks/*.png    (set: isic17, isic18)

It and the PraNet polyp reader are ``MultiSetDataset``: one training folder, several test sets,
test ids ``"<set>/<stem>"``; a subfolder of the test folder without ``images/`` is an error, not a
test set left out. Images and masks are read and paired by ``bench.data.image_folders``, as for the
polyp reader (same conventions).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from bench.data.base import Case, Sample, SegDataset, found_instead, subfolders
from bench.data.image_folders import image_size, index_pairs, load_pair, size_mismatch
from bench.errors import BenchError, few

# Test-set folder names, lower case and letters and digits only (CVC-ClinicDB, CVC_ClinicDB), -> the ids
# of results/published.csv (bench.report) and the split notes (bench.data.verify): PraNet's names, the
# datasets' own (CVC-612, Kvasir-SEG, ETIS-Larib) and VM-UNet-V2's ISIC years spelt out (ISIC2017)
_TEST_SETS = {"cvc300": "cvc300", "cvcclinicdb": "clinicdb", "clinicdb": "clinicdb", "cvc612": "clinicdb",
              "kvasir": "kvasir", "kvasirseg": "kvasir", "cvccolondb": "colondb", "colondb": "colondb",
              "etislaribpolypdb": "etis", "etislarib": "etis", "etis": "etis",
              "isic17": "isic17", "isic2017": "isic17", "isic18": "isic18", "isic2018": "isic18"}


def test_set_id(name: str) -> str:
    """A test-set folder's published id ("CVC_ClinicDB" -> "clinicdb"), else its name in lower case."""
    return _TEST_SETS.get(re.sub(r"[^a-z0-9]", "", name.lower()), name.lower())


# ISIC's challenge names a lesion mask after its image with this suffix (ISIC_0000000_segmentation.png)
ISIC_MASK_SUFFIX = "_segmentation"


class BinaryFolderDataset(SegDataset):
    """Image/mask folder pairs, binary (sigmoid) task. Subclasses fill ``_train`` / ``_test``."""

    num_classes = 1
    in_chans = 3
    default_policy = "legacy-isic"
    _train: dict[str, tuple[Path, Path]]
    _test: dict[str, tuple[Path, Path]]

    def train_ids(self) -> list[str]:
        return list(self._train)

    def test_ids(self) -> list[str]:
        return list(self._test)

    def load_train(self, item_id: str) -> Sample:
        image, mask = load_pair(*self._lookup(self._train, item_id, "train"))
        return Sample(image=image, label=mask, name=item_id)

    def load_test(self, case_id: str) -> Case:
        image, mask = load_pair(*self._lookup(self._test, case_id, "test"))
        return Case(case_id=case_id, image=image, label=mask, spacing=None)

    def source_files(self) -> list[Path]:
        return [path for index in (self._train, self._test) for pair in index.values() for path in pair]

    def scored_files(self) -> list[Path]:
        return [mask for _, mask in self._test.values()]

    def check_geometry(self) -> str | None:
        # headers only, every pair: a test mask of another size failed after the whole training
        bad = [(image, mask, hw, mask_hw) for index in (self._train, self._test) for image, mask in index.values()
               if (hw := image_size(image)) != (mask_hw := image_size(mask))]
        if bad:
            raise BenchError(few([f"{mask}: {size_mismatch(image, hw, mask_hw)}" for image, mask, hw, mask_hw in bad], 1)
                             + ("; `bench data verify` lists them" if len(bad) > 1 else ""))
        return None

    def _lookup(self, index: dict[str, tuple[Path, Path]], item_id: str, split: str) -> tuple[Path, Path]:
        try:
            return index[item_id]
        except KeyError:
            raise BenchError(f"{self.root}: no {split} item {item_id!r}") from None


def test_set_folders(folder: Path) -> tuple[list[str], list[tuple[Path, str]]]:
    """The names of ``folder``'s subfolders that hold an ``images/`` folder (sorted; none when
    ``folder`` is missing), and ``(subfolder, problem)`` for each other one: a test set left out
    unseen (``Images/``, ``image/``). Hidden folders and macOS's ``__MACOSX`` are no test sets."""
    sets, problems = [], []
    for p in subfolders(folder):
        if (p / "images").is_dir():
            sets.append(p.name)
        else:
            found = ", ".join(sorted(q.name + "/" for q in p.iterdir() if q.is_dir())) or "no folders"
            problems.append((p, f"a test set needs images/ and masks/ folders (found {found})"))
    return sets, problems


class MultiSetDataset(BinaryFolderDataset):
    """One training folder and several test sets, each scored on its own (VM-UNet-V2's polyp and
    merged-ISIC data)::

        <root>/<train_dir>/{images,masks}/     <root>/<test_dir>/<set>/{images,masks}/

    The test sets are the subfolders of ``<test_dir>`` (``sets``, sorted; ``test_set_folders``). Test
    ids are ``"<set>/<stem>"``, so per-set tables split on the ``/`` (``bench.report.split_test_sets``).
    Subclasses name the two folders."""

    train_dir: str = ""
    test_dir: str = ""
    unique_names = False  # a file name names one image across the data (ISIC ids): test images trained on are warned

    def __init__(self, root: str | Path):
        super().__init__(root)
        train = self.root / self.train_dir
        if not (train / "images").is_dir() or not (train / "masks").is_dir():
            raise BenchError(f"{self.root}: missing {train}/images or {train}/masks; expected {self.layout}"
                             + found_instead(self.root, (f"{self.train_dir}/images", self.test_dir)))
        self.sets = self.find_test_sets(self.root)
        if not self.sets:
            raise BenchError(
                f"{self.root / self.test_dir}: no test set folders with images/; expected {self.layout}"
            )
        self._train = index_pairs(train / "images", train / "masks")
        self._test = {}
        for name in self.sets:
            folder = self.root / self.test_dir / name
            self._test.update(index_pairs(folder / "images", folder / "masks", prefix=f"{name}/"))
        if self.unique_names and (shared := shared_images(self.train_ids(), self.test_ids())):
            counts = {name: sum(i.startswith(f"{name}/") for i in self._test) for name in self.sets}
            warnings.warn(f"{self.root}: {shared_images_note(shared, counts)}", stacklevel=2)

    @classmethod
    def find_test_sets(cls, root: str | Path) -> list[str]:
        """Names of the test sets under ``<root>/<test_dir>`` (sorted); BenchError naming a subfolder
        there that is no test set beside ones that are (with none, the folder is not this layout's)."""
        sets, problems = test_set_folders(Path(root) / cls.test_dir)
        if problems and sets:
            raise BenchError("; ".join(f"{p}: {msg}" for p, msg in problems))
        return sets


class IsicDataset(BinaryFolderDataset):
    kind = "isic"
    name = "isic"
    class_names = ("lesion",)
    mask_suffix = ISIC_MASK_SUFFIX
    layout = "<root>/{train,val}/{images,masks}/*.png (VM-UNet ISIC layout; val/ is the test set)"

    def __init__(self, root: str | Path):
        super().__init__(root)
        missing = [
            str(self.root / split / sub)
            for split in ("train", "val")
            for sub in ("images", "masks")
            if not (self.root / split / sub).is_dir()
        ]
        if missing:
            raise BenchError(f"{self.root}: missing {', '.join(missing)}; expected {self.layout}"
                             + found_instead(self.root, ("train/images", "val/images")))
        self._train = index_pairs(self.root / "train" / "images", self.root / "train" / "masks")
        self._test = index_pairs(self.root / "val" / "images", self.root / "val" / "masks")


class Isic17Dataset(IsicDataset):
    name = "isic17"


class Isic18Dataset(IsicDataset):
    name = "isic18"


def shared_images(train_ids: list[str], test_ids: list[str]) -> dict[str, list[str]]:
    """Per test set ("" for a single test folder), the test images whose ISIC id is a training
    image's too (test ids "<set>/<stem>" or "<stem>"). ISIC ids name one image across the archive's
    years, so a shared id is the same image, scored after training on it; polyp images are named by
    number within each source, so polyp data is not checked this way."""
    train, shared = set(train_ids), {}
    for item in test_ids:
        name, _, stem = item.rpartition("/")
        if stem in train:
            shared.setdefault(name, []).append(stem)
    return shared


def shared_images_note(shared: dict[str, list[str]], counts: dict[str, int]) -> str:
    """The warning for ``shared_images``' findings."""
    parts = [f"{name or 'the test set'}: {len(ids)} of {counts[name]} ({few(sorted(ids), 3)})"
             for name, ids in sorted(shared.items())]
    return (f"test images that are training images too (the same ISIC id) — {'; '.join(parts)}: their scores are "
            "of images the model trained on")


class IsicAllDataset(MultiSetDataset):
    """VM-UNet-V2's merged ISIC data: one model trains on the ISIC 2017 and 2018 training images
    together and is tested on each year's test images on its own (train_isic_all.py). A test image
    that is also a training image (merged years can share images) is warned, not refused: it may be
    the authors' own data, which a reproduction must be able to run."""

    kind = "isic_all"
    name = "isic_all"
    class_names = ("lesion",)
    mask_suffix = ISIC_MASK_SUFFIX
    train_dir = "train"
    test_dir = "val"
    layout = (
        "<root>/train/{images,masks}/ and <root>/val/<set>/{images,masks}/ "
        "(VM-UNet-V2 Isic_datasets layout; sets isic17, isic18)"
    )
    unique_names = True
