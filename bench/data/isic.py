"""ISIC 2017 / 2018 skin lesions in the VM-UNet layout (JCruan519/VM-UNet datasets/dataset.py).

On disk::

    <root>/train/images/*.png   <root>/train/masks/*.png
    <root>/val/images/*.png     <root>/val/masks/*.png

Images and masks are paired by **sorted filename order**, exactly as the authors'
``NPY_datasets`` does (mask names differ from image names in the official data, e.g.
``ISIC_0000000_segmentation.png``). The authors' test set *is* ``val/`` (spec/ssm_models.md 1.4),
so ``test_ids()`` are the ``val`` images.

Arrays: image uint8 RGB (H, W, 3) (``Image.convert("RGB")``); mask read as grayscale ("L") and
divided by 255 -> float32 (H, W) in [0, 1], kept soft because VM-UNet trains on the resized soft
mask and thresholds only at scoring. Binary task: one sigmoid output channel.

VM-UNet-V2's merged ISIC data (``Isic_datasets``, its train_isic_all.py; spec/ssm_models.md 2.6)
is read by ``IsicAllDataset`` (registry name ``isic_all``)::

    <root>/train/images/*.png         <root>/train/masks/*.png        (ISIC17 + ISIC18 training images)
    <root>/val/<set>/images/*.png     <root>/val/<set>/masks/*.png    (set: isic17, isic18)

It and the PraNet polyp reader are ``MultiSetDataset``: one training folder, several test sets,
test ids ``"<set>/<stem>"``. The image helpers here are shared with the polyp reader (same
conventions).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bench.data.base import Case, Sample, SegDataset, reading
from bench.errors import BenchError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


# --- file helpers (shared with bench.data.polyp and bench.data.verify) -----------------------


def list_images(folder: Path) -> list[Path]:
    """Image files of ``folder`` sorted by file name (hidden files and other extensions skipped)."""
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS),
        key=lambda p: p.name,
    )


def _decode(path: Path, mode: str) -> np.ndarray:
    # Image.open only parses the header: convert() decodes, where a truncated file fails.
    with reading(path, "an image"):
        with Image.open(path) as im:
            return np.asarray(im.convert(mode), dtype=np.uint8).copy()


def read_rgb(path: Path) -> np.ndarray:
    """uint8 (H, W, 3). BenchError naming the file when it does not decode."""
    return _decode(path, "RGB")


def read_mask(path: Path) -> np.ndarray:
    """float32 (H, W) in [0, 1]: the grayscale PNG divided by 255 (VM-UNet, PraNet).

    BenchError when no pixel reaches 128 (0.5 after /255) although some are set: such a mask
    stores class ids (0/1) instead of 0/255, and would train and score as all background."""
    raw = _decode(path, "L")
    top = int(raw.max(initial=0))
    if 0 < top < 128:
        raise BenchError(
            f"{path}: mask values reach only {top}, so after /255 no pixel counts as foreground (>= 0.5); "
            "expected a 0/255 mask (a 0/1 class-id mask must be multiplied by 255)"
        )
    return raw.astype(np.float32) / np.float32(255.0)


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file header, without decoding the pixels."""
    with reading(path, "an image"):
        with Image.open(path) as im:
            w, h = im.size
    return h, w


def _stem_keys(stem: str) -> set[str]:
    # "ISIC_0000000_segmentation" -> also "ISIC_0000000": a heuristic used only to name the
    # unpaired files in an error message; pairing itself is by sorted order like the authors'.
    return {stem, stem.rsplit("_", 1)[0]}


def pair_files(images_dir: Path, masks_dir: Path) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """Pair images with masks by sorted file name.

    Returns ``(pairs, problems)``; ``problems`` is a list of ``(path, message)`` and is non-empty
    (with ``pairs`` empty) when a folder is missing or the counts differ.
    """
    problems: list[tuple[Path, str]] = []
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            problems.append((folder, "folder missing"))
    if problems:
        return [], problems
    images, masks = list_images(images_dir), list_images(masks_dir)
    if len(images) == len(masks):
        if not images:
            return [], [(images_dir, "no image files")]
        return list(zip(images, masks)), []
    problems.append(
        (masks_dir, f"{len(images)} images in {images_dir} but {len(masks)} masks here; they are paired by sorted name")
    )
    mask_keys = set().union(*(_stem_keys(m.stem) for m in masks)) if masks else set()
    image_stems = {p.stem for p in images}
    for p in images:
        if p.stem not in mask_keys:
            problems.append((p, "no mask with a matching name"))
    for m in masks:
        if not (_stem_keys(m.stem) & image_stems):
            problems.append((m, "no image with a matching name"))
    return [], problems


def load_pair(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Image uint8 (H, W, 3) and mask float32 (H, W); a size mismatch is a BenchError naming both."""
    image, mask = read_rgb(image_path), read_mask(mask_path)
    if image.shape[:2] != mask.shape:
        raise BenchError(
            f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from image {image_path} "
            f"({image.shape[1]}x{image.shape[0]}); expected equal sizes (W x H)"
        )
    return image, mask


def index_pairs(images_dir: Path, masks_dir: Path, prefix: str = "") -> dict[str, tuple[Path, Path]]:
    """``{id: (image, mask)}`` with id = ``prefix + image stem``; BenchError on any pairing problem."""
    pairs, problems = pair_files(images_dir, masks_dir)
    if problems:
        shown = "; ".join(f"{p}: {msg}" for p, msg in problems[:6])
        more = f" (+{len(problems) - 6} more)" if len(problems) > 6 else ""
        raise BenchError(f"cannot pair images with masks: {shown}{more}")
    index: dict[str, tuple[Path, Path]] = {}
    for image, mask in pairs:
        key = prefix + image.stem
        if key in index:
            raise BenchError(f"{image}: two images share the name {image.stem!r} in {images_dir}")
        index[key] = (image, mask)
    return index


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

    def _lookup(self, index: dict[str, tuple[Path, Path]], item_id: str, split: str) -> tuple[Path, Path]:
        try:
            return index[item_id]
        except KeyError:
            raise BenchError(f"{self.root}: no {split} item {item_id!r}") from None


def _subfolders_with_images(folder: Path) -> list[str]:
    """Names of the subfolders of ``folder`` that hold an ``images/`` folder (sorted); [] if none."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / "images").is_dir())


class MultiSetDataset(BinaryFolderDataset):
    """One training folder and several test sets, each scored on its own (VM-UNet-V2's polyp and
    merged-ISIC data)::

        <root>/<train_dir>/{images,masks}/     <root>/<test_dir>/<set>/{images,masks}/

    The test sets are the subfolders of ``<test_dir>`` that hold an ``images/`` folder (``sets``,
    sorted). Test ids are ``"<set>/<stem>"``, so per-set tables split on the ``/``
    (``bench.report.split_test_sets``). Subclasses name the two folders."""

    train_dir: str = ""
    test_dir: str = ""

    def __init__(self, root: str | Path):
        super().__init__(root)
        train = self.root / self.train_dir
        if not (train / "images").is_dir() or not (train / "masks").is_dir():
            raise BenchError(f"{self.root}: missing {train}/images or {train}/masks; expected {self.layout}")
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

    @classmethod
    def find_test_sets(cls, root: str | Path) -> list[str]:
        """Names of the test sets under ``<root>/<test_dir>`` (sorted)."""
        return _subfolders_with_images(Path(root) / cls.test_dir)


class IsicDataset(BinaryFolderDataset):
    kind = "isic"
    name = "isic"
    class_names = ("lesion",)
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
            raise BenchError(f"{self.root}: missing {', '.join(missing)}; expected {self.layout}")
        self._train = index_pairs(self.root / "train" / "images", self.root / "train" / "masks")
        self._test = index_pairs(self.root / "val" / "images", self.root / "val" / "masks")


class Isic17Dataset(IsicDataset):
    name = "isic17"


class Isic18Dataset(IsicDataset):
    name = "isic18"


class IsicAllDataset(MultiSetDataset):
    """VM-UNet-V2's merged ISIC data: one model trains on the ISIC 2017 and 2018 training images
    together and is tested on each year's test images on its own (train_isic_all.py)."""

    kind = "isic_all"
    name = "isic_all"
    class_names = ("lesion",)
    train_dir = "train"
    test_dir = "val"
    layout = (
        "<root>/train/{images,masks}/ and <root>/val/<set>/{images,masks}/ "
        "(VM-UNet-V2 Isic_datasets layout; sets isic17, isic18)"
    )
