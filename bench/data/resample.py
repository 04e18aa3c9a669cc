"""nnU-Net v2's spacing rules: the 3d_fullres target spacing and the resampling to and from it.

- ``nnunet_target_spacing``: the planner's ``determine_fullres_target_spacing``: the per-axis
  median of the training cases' spacings, except that an axis much coarser than the others (over
  3x their spacing, under 1/3 of their voxels) takes the 10th percentile of its spacings, kept
  above the other axes' spacing.
- ``resample``: ``resample_data_or_seg_to_shape`` with the 3d_fullres plan's arguments: images
  cubic (order 3), labels as one-hot masks with order 1 (a class wins where its mask is >= 0.5,
  later classes over earlier ones), logits linear (order 1); each a scikit-image ``resize`` with
  edge padding, no anti-aliasing, clipped to the input's range. Where either spacing is anisotropic
  (largest / smallest > 3) and one axis alone is the coarsest, slices across that axis are resized
  in 2-D and the axis is then resampled by nearest neighbour (order_z 0), as nnU-Net does.
- ``new_shape``: ``compute_new_shape``: each side scaled by spacing / target spacing, rounded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

ANISO_THRESHOLD = 3.0  # nnU-Net's ANISO_THRESHOLD


def nnunet_target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]]) -> tuple[float, ...]:
    """The 3d_fullres target spacing of cases with these spacings and (cropped) shapes, axis order as given."""
    spacings = np.asarray(spacings, dtype=np.float64)
    target = np.percentile(spacings, 50, axis=0)
    target_size = np.percentile(np.asarray(shapes, dtype=np.float64), 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    other_spacing = max(target[i] for i in others)
    aniso_spacing = target[worst] > ANISO_THRESHOLD * other_spacing
    aniso_voxels = target_size[worst] * ANISO_THRESHOLD < min(target_size[i] for i in others)
    if aniso_spacing and aniso_voxels:
        coarse = np.percentile(spacings[:, worst], 10)
        if coarse < other_spacing:  # never finer than the other axes
            coarse = max(other_spacing, coarse) + 1e-5
        target[worst] = coarse
    return tuple(float(v) for v in target)


def new_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """The grid a volume of ``shape`` at ``spacing`` has at ``target`` spacing."""
    return tuple(int(round(s / t * n)) for s, t, n in zip(spacing, target, shape))


def resize(arr: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """scikit-image's ``resize(arr, shape, order, mode="edge", anti_aliasing=False)`` (clip=True) in float64:
    a spline zoom over the pixel grid (``grid_mode``), values clipped to the input's range."""
    arr = np.asarray(arr, dtype=np.float64)
    zoom = [1.0 / (i / o) for i, o in zip(arr.shape, shape)]  # skimage's factors, inverted as it does
    out = ndimage.zoom(arr, zoom, order=order, mode="nearest", grid_mode=True)
    if order > 0:
        np.clip(out, arr.min(), arr.max(), out=out)
    return out


def _resize_labels(arr: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """batchgenerators' ``resize_segmentation``: each present label's mask resized, >= 0.5 wins, in order."""
    out = np.zeros(tuple(shape), dtype=arr.dtype)
    for c in np.unique(arr):
        out[resize((arr == c).astype(np.float64), shape, order) >= 0.5] = c
    return out


def separate_axis(current: Sequence[float], target: Sequence[float]) -> int | None:
    """The axis resampled on its own (nearest neighbour) after 2-D resizing across it, or None:
    the coarsest axis of the current spacing if that is anisotropic, else of the target's; None
    when neither is, or when two or three axes share the coarsest spacing."""
    for spacing in (current, target):
        spacing = np.asarray(spacing, dtype=np.float64)
        if spacing.max() / spacing.min() > ANISO_THRESHOLD:
            axes = np.flatnonzero(spacing.max() / spacing == 1)
            return int(axes[0]) if len(axes) == 1 else None
    return None


def resample(x: np.ndarray, shape: Sequence[int], current: Sequence[float], target: Sequence[float], *,
             order: int, labels: bool = False) -> np.ndarray:
    """x (C, *spatial) from ``current`` to ``target`` spacing on the grid ``shape``, in x's dtype. ``order``:
    3 for images, 1 for logits; ``labels``: x holds class ids (one-hot resizing at ``order``, 1 in nnU-Net).
    x itself when the grid does not change."""
    shape = tuple(int(s) for s in shape)
    if tuple(x.shape[1:]) == shape:
        return x
    axis = separate_axis(current, target)
    out = np.empty((x.shape[0], *shape), dtype=x.dtype)
    for c, channel in enumerate(x):  # one channel at a time: the float64 work stays one volume's size
        if labels:
            channel = channel.astype(np.float64)  # nnU-Net resizes labels as floats
        if axis is None:
            out[c] = _resize_labels(channel, shape, order) if labels else resize(channel, shape, order)
            continue
        plane = tuple(s for i, s in enumerate(shape) if i != axis)
        slices = [np.take(channel, i, axis=axis) for i in range(channel.shape[axis])]
        stack = np.stack([_resize_labels(s, plane, order) if labels else resize(s, plane, order)
                          for s in slices], axis=axis)
        out[c] = np.take(stack, _nearest_indices(channel.shape[axis], shape[axis]), axis=axis)
    return out


def _nearest_indices(n: int, m: int) -> np.ndarray:
    """Which of n slices each of m output slices takes: nnU-Net maps output slice j to input
    coordinate (j + 0.5) * n / m - 0.5 and reads it with ``map_coordinates(order=0, mode="nearest")``;
    applied to the indices themselves, that gives the index it picks."""
    coords = float(n) / m * (np.arange(m, dtype=np.float64) + 0.5) - 0.5
    return ndimage.map_coordinates(np.arange(n, dtype=np.float64), coords[None], order=0,
                                   mode="nearest").astype(np.int64)
