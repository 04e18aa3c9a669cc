"""Colonoscopy polyps in the PraNet split layout (DengPingFan/PraNet; reused by VM-UNet-V2's
``Polyp_datasets``, spec/ssm_models.md 2.6).

On disk::

    <root>/TrainDataset/images/*.png|jpg     <root>/TrainDataset/masks/*.png
    <root>/TestDataset/<set>/images/*        <root>/TestDataset/<set>/masks/*

Test sets are whatever subfolders of ``TestDataset/`` hold an ``images/`` folder (the standard
ones are CVC-300, CVC-ClinicDB, Kvasir, CVC-ColonDB, ETIS-LaribPolypDB). Test ids are
``"<set>/<stem>"``, so per-set tables can split on the ``/``.

Same conventions as ISIC (``bench.data.isic``): pairing by sorted name, image uint8 RGB
(H, W, 3), mask grayscale / 255 -> float32 (H, W) in [0, 1], one sigmoid output.
"""

from __future__ import annotations

from pathlib import Path

from bench.data.isic import BinaryFolderDataset, index_pairs
from bench.errors import BenchError

TRAIN_DIR = "TrainDataset"
TEST_DIR = "TestDataset"


def find_test_sets(root: Path) -> list[str]:
    """Names of the test sets under ``<root>/TestDataset`` (sorted)."""
    folder = root / TEST_DIR
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / "images").is_dir())


class PolypDataset(BinaryFolderDataset):
    kind = "polyp"
    name = "polyp"
    class_names = ("polyp",)
    layout = (
        "<root>/TrainDataset/{images,masks}/ and <root>/TestDataset/<set>/{images,masks}/ "
        "(PraNet polyp layout)"
    )

    def __init__(self, root: str | Path):
        super().__init__(root)
        train = self.root / TRAIN_DIR
        if not (train / "images").is_dir() or not (train / "masks").is_dir():
            raise BenchError(f"{self.root}: missing {train}/images or {train}/masks; expected {self.layout}")
        self.sets = find_test_sets(self.root)
        if not self.sets:
            raise BenchError(f"{self.root / TEST_DIR}: no test set folders with images/; expected {self.layout}")
        self._train = index_pairs(train / "images", train / "masks")
        self._test = {}
        for name in self.sets:
            folder = self.root / TEST_DIR / name
            self._test.update(index_pairs(folder / "images", folder / "masks", prefix=f"{name}/"))
