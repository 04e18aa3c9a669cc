"""nnU-Net's preprocessing of a 3-D case, for patch protocols (``patch_size``): the whole volume is
normalised (``normalize``, with the training foreground's statistics for ``ct_foreground``), then
resampled to the protocol's ``target_spacing`` (nnU-Net v2's DefaultPreprocessor order: normalise,
then resample; ``bench.data.resample``). Training patches are cut from volumes preprocessed once
(kept under ``<results>/cache``); a test case is preprocessed the same way, predicted by the sliding
window, and its logits resampled back to the case's own grid, where it is scored (nnU-Net's export).

Not reproduced: the crop to the non-zero region before both steps (for CT, whose air is far from
0, the whole volume) and the axis transposition nnU-Net plans so that the coarsest axis comes first
(the (z, y, x) order the NIfTI reader gives already has it first where z is the coarsest).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.data.intensity import intensity_stats
from bench.data.resample import new_shape, nnunet_target_spacing, resample
from bench.errors import BenchError
from bench.transforms import normalize_image, volume_chw


@dataclass(frozen=True)
class VolumePrep:
    """How a volume reaches the network: ``normalize`` (with ``stats``), then ``spacing`` (mm per axis,
    (z, y, x)), or the native grid when None."""

    normalize: str
    stats: list[dict[str, float]] | None = None
    spacing: tuple[float, ...] | None = None

    def _native(self, spacing: Sequence[float] | None, what: str) -> tuple[float, ...]:
        if spacing is None:
            raise BenchError(f"{what}: no voxel spacing, so it cannot be resampled to the target spacing "
                             f"{list(self.spacing)} mm")
        return tuple(float(s) for s in spacing)

    def grid(self, shape: Sequence[int], spacing: Sequence[float] | None, what: str = "the volume") -> tuple[int, ...]:
        """The spatial shape a volume of ``shape`` at ``spacing`` has once preprocessed."""
        if self.spacing is None:
            return tuple(int(s) for s in shape)
        return new_shape(shape, self._native(spacing, what), self.spacing)

    def image(self, image: np.ndarray, spacing: Sequence[float] | None, what: str = "the volume") -> np.ndarray:
        """(D, H, W) or channels-last (D, H, W, C) -> float32 (C, *grid)."""
        x = volume_chw(normalize_image(image, self.normalize, spatial_dims=3, stats=self.stats))
        if self.spacing is None:
            return x
        native = self._native(spacing, what)
        return resample(x, self.grid(x.shape[1:], native), native, self.spacing, order=3)

    def label(self, label: np.ndarray, spacing: Sequence[float] | None, what: str = "the volume") -> np.ndarray:
        """Class ids (D, H, W) -> the same type on the preprocessed grid."""
        if self.spacing is None:
            return label
        native = self._native(spacing, what)
        return resample(label[None], self.grid(label.shape, native), native, self.spacing, order=1, labels=True)[0]

    def logits_back(self, logits: np.ndarray, shape: Sequence[int], spacing: Sequence[float] | None,
                    what: str = "the volume") -> np.ndarray:
        """Logits (K, *grid) -> (K, *shape) on the case's own grid (nnU-Net resamples logits, order 1)."""
        if self.spacing is None:
            return logits
        return resample(logits, shape, self.spacing, self._native(spacing, what), order=1)

    @property
    def key(self) -> str:
        """A short signature of everything that changes a preprocessed volume (cache file names)."""
        text = json.dumps([self.normalize, self.stats, self.spacing], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def target_spacing(dataset, protocol) -> tuple[float, ...] | None:
    """The spacing ``protocol.target_spacing`` names for ``dataset``: None for "native", the given
    (z, y, x), or for "nnunet" the 3d_fullres rule over the training cases' spacings and shapes, from
    ``dataset.target_spacing`` where a run's record set it, else computed once and kept there."""
    spec = protocol.target_spacing
    if spec == "native":
        return None
    if spec != "nnunet":
        return tuple(float(v) for v in spec)
    if dataset.target_spacing is None:
        shapes, spacings = zip(*dataset.train_geometry())
        dataset.target_spacing = nnunet_target_spacing(spacings, shapes)
    return tuple(float(v) for v in dataset.target_spacing)


def volume_prep(dataset, protocol) -> VolumePrep:
    """The preprocessing of ``dataset``'s volumes under a 3-D ``protocol``."""
    return VolumePrep(protocol.normalize, intensity_stats(dataset, protocol), target_spacing(dataset, protocol))
