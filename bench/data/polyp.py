"""Colonoscopy polyps in the PraNet split layout (DengPingFan/PraNet; reused by VM-UNet-V2's
``Polyp_datasets`` in its datasets/dataset.py).

On disk::

    <root>/TrainDataset/images/*.png|jpg     <root>/TrainDataset/masks/*.png
    <root>/TestDataset/<set>/images/*        <root>/TestDataset/<set>/masks/*

Test sets are the subfolders of ``TestDataset/``, each with ``images/`` and ``masks/`` (the standard
ones are CVC-300, CVC-ClinicDB, Kvasir, CVC-ColonDB, ETIS-LaribPolypDB; one without ``images/`` is an
error, so no set is left out unseen). Test ids are
``"<set>/<stem>"``, so per-set tables can split on the ``/``.

Same conventions as ISIC (``bench.data.image_folders``): pairing by name (else sorted name), image uint8 RGB
(H, W, 3), mask grayscale / 255 -> float32 (H, W) in [0, 1], one sigmoid output. The reading is
``bench.data.isic.MultiSetDataset``'s, shared with VM-UNet-V2's merged ISIC reader (``isic_all``).
"""

from __future__ import annotations

from bench.data.isic import MultiSetDataset

TRAIN_DIR = "TrainDataset"
TEST_DIR = "TestDataset"


class PolypDataset(MultiSetDataset):
    kind = "polyp"
    name = "polyp"
    class_names = ("polyp",)
    train_dir = TRAIN_DIR
    test_dir = TEST_DIR
    layout = (
        "<root>/TrainDataset/{images,masks}/ and <root>/TestDataset/<set>/{images,masks}/ "
        "(PraNet polyp layout)"
    )
