"""The one case type every on-disk format is read into.

Readers (one per real format: Synapse npz/h5, ISIC folders, PraNet polyp, nnU-Net raw) subclass
``SegDataset``; training, evaluation and ``bench data verify`` only see this interface.

Arrays keep the data's own units: images float32 (CT already in [0, 1] for Synapse) or uint8 RGB,
labels int64 class ids. Binary datasets (ISIC, polyp) keep the mask as float32 in [0, 1] (the PNG
divided by 255), because VM-UNet trains on the soft, resized mask; thresholding happens at scoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Sample:
    """One 2-D training item."""

    image: np.ndarray  # (H, W) or (H, W, C) channels-last
    label: np.ndarray  # (H, W): int64 class ids, or float32 in [0, 1] for binary datasets
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


class SegDataset:
    """A dataset on disk. Subclasses set the class attributes and implement the four methods.

    Loading is lazy (ids first, arrays on demand), so a DataLoader worker can load items itself.
    """

    kind: str = ""  # "synapse" | "isic" | "polyp" | "nnunet"
    name: str = ""  # registry name, e.g. "synapse", "isic17"
    num_classes: int = 2  # model output channels: 1 for binary sigmoid tasks, else incl. background
    class_names: tuple[str, ...] = ()  # foreground names, index 0 = class id 1
    in_chans: int = 1  # channels of the stored images
    default_policy: str = "strict"
    layout: str = ""  # one line describing the expected on-disk layout, used in error messages

    def __init__(self, root: str | Path):
        self.root = Path(root)
        # Human-readable remarks about how the data was read (e.g. a fallback that was taken);
        # worth printing once and recording with a run.
        self.notes: list[str] = []

    @property
    def binary(self) -> bool:
        """True for one-channel sigmoid tasks (ISIC, polyp): labels are float32 masks in [0, 1]."""
        return self.num_classes == 1

    def train_ids(self) -> list[str]:
        raise NotImplementedError

    def load_train(self, item_id: str) -> Sample:
        raise NotImplementedError

    def test_ids(self) -> list[str]:
        raise NotImplementedError

    def load_test(self, case_id: str) -> Case:
        raise NotImplementedError
