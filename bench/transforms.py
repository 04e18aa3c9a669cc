"""Protocol-driven preprocessing and augmentation, shared by training and evaluation.

Everything here is a pure function of arrays (plus an explicit ``numpy.random.Generator``), so
a training item is reproducible from ``(seed, epoch, index)`` alone. Arrays are channels-last
numpy: images (H, W) or (H, W, C); outputs become channels-first tensors (C, S, S).

Pipelines (``protocol.train.augment``):

- ``"transunet"``: TransUNet's ``RandomGenerator`` (Beckschen/TransUNet
  datasets/dataset_synapse.py): p 0.5 rot90 + flip, else p 0.5 rotation by an integer angle in
  [-20, 19] with order-0 interpolation for image AND label; then ``scipy.ndimage.zoom`` to
  ``img_size`` (image order 3, label order 0). Shared by Swin-Unet and VM-UNet's Synapse code.
- ``"vmunet_isic"``: VM-UNet's ISIC train transform (JCruan519/VM-UNet configs/config_setting.py,
  utils.py): ``myNormalize`` -> hflip p 0.5 -> vflip p 0.5 -> rotation p 0.5 by ONE angle drawn
  once per run -> bilinear resize of image and mask (the mask becomes soft at edges).
- ``"none"``: resize only.

Resizing conventions: ``resize_image`` is ``scipy.ndimage.zoom`` with the factors TransUNet uses
(``size / H``, ``size / W``); ``resize_bilinear`` reproduces ``torchvision.transforms.functional
.resize`` on tensors with antialias off (half-pixel centres, edge clamping; torchvision 0.14 of
the VM-UNet environment), i.e. ``F.interpolate(..., "bilinear", align_corners=False)``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from bench.data.base import Sample
from bench.errors import BenchError
from bench.protocol import CHOICES

NORMALIZE_MODES = CHOICES[("", "normalize")]
CT_WINDOW = (-125.0, 275.0)  # HU; the abdominal window of the Synapse files (spec/baselines.md)


# --- pure array functions --------------------------------------------------------------------


def normalize_image(img: np.ndarray, mode: str) -> np.ndarray:
    """float32 image normalised by ``mode``; shape unchanged.

    - ``"none"``: values as stored (CT in [0, 1]; RGB in 0..255), cast to float32.
    - ``"minmax255"``: VM-UNet's ``myNormalize``: (x - mean) / std then min-max over the whole
      image (all channels) to [0, 255]; the mean/std cancel, so only the min-max is computed.
      A constant image (max == min), where the authors' code divides by zero, becomes all 0.
    - ``"zscore"``: per channel, (x - mean) / std over the image (nnU-Net's default for non-CT
      channels, here per 2-D image or slice); a constant channel becomes 0.
    - ``"ct_window"``: CT in HU clipped to [-125, 275] and scaled to [0, 1], the preparation the
      Synapse files were distributed with (TransUNet lineage), for CT in nnU-Net format.
    """
    img = np.asarray(img, dtype=np.float32)
    if mode == "none":
        return img
    if mode == "minmax255":
        lo, hi = float(img.min()), float(img.max())
        if hi <= lo:
            return np.zeros_like(img)
        return ((img - lo) * (255.0 / (hi - lo))).astype(np.float32)
    if mode == "zscore":
        axes = (0, 1)  # (H, W) or channels-last (H, W, C)
        x = img.astype(np.float64)
        mean, std = x.mean(axis=axes, keepdims=True), x.std(axis=axes, keepdims=True)
        return np.where(std > 0, (x - mean) / np.where(std > 0, std, 1.0), 0.0).astype(np.float32)
    if mode == "ct_window":
        lo, hi = CT_WINDOW
        return ((np.clip(img, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    raise BenchError(f"unknown normalize mode {mode!r}; expected one of {', '.join(NORMALIZE_MODES)}")


def to_chw(img: np.ndarray) -> np.ndarray:
    """(H, W) -> (1, H, W); (H, W, C) -> (C, H, W) (contiguous copy)."""
    if img.ndim == 2:
        return np.ascontiguousarray(img[None])
    if img.ndim == 3:
        return np.ascontiguousarray(img.transpose(2, 0, 1))
    raise BenchError(f"expected an (H, W) or (H, W, C) image, got shape {img.shape}")


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def resize_image(img: np.ndarray, size: int | tuple[int, int], order: int) -> np.ndarray:
    """``scipy.ndimage.zoom`` of the spatial axes of (H, W) or (H, W, C) to ``size``.

    Zoom factors are ``(S / H, S / W)`` as in TransUNet's ``RandomGenerator`` and
    ``test_single_volume``; an array already at ``size`` is returned unchanged (they skip it
    too). Integer arrays keep their dtype with ``order=0`` (labels); for ``order > 0`` the input
    is cast to float32 first so cubic overshoot is not wrapped into an integer type.
    """
    h, w = _hw(size)
    if img.shape[:2] == (h, w):
        return img
    if order > 0 and img.dtype.kind != "f":
        img = img.astype(np.float32)
    factors = (h / img.shape[0], w / img.shape[1]) + (1.0,) * (img.ndim - 2)
    out = ndimage.zoom(img, factors, order=order)
    return _fit(out, (h, w))


def _fit(arr: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    # scipy rounds the output shape; guard the (theoretical) off-by-one with edge padding/cropping
    if arr.shape[:2] == hw:
        return arr
    arr = arr[: hw[0], : hw[1]]
    pad = [(0, hw[0] - arr.shape[0]), (0, hw[1] - arr.shape[1])] + [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, pad, mode="edge")


def resize_bilinear(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (H, W) or (H, W, C) to float32, torchvision-style (half-pixel centres,
    edges clamped, no antialiasing); equals ``F.interpolate(mode="bilinear", align_corners=False)``."""
    h, w = _hw(size)
    img = np.asarray(img, dtype=np.float32)
    if img.shape[:2] == (h, w):
        return img
    factors = (h / img.shape[0], w / img.shape[1]) + (1.0,) * (img.ndim - 2)
    out = ndimage.zoom(img, factors, order=1, grid_mode=True, mode="nearest")
    return _fit(out, (h, w))


def resize_mask_bilinear(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Soft binary mask (H, W) in [0, 1] -> float32 (S, S) in [0, 1], bilinear like VM-UNet's
    ``myResize`` (the loss then trains against the soft edges)."""
    return np.clip(resize_bilinear(mask, size), 0.0, 1.0)


def zoom_labels_back(label_map: np.ndarray, shape: tuple[int, ...], order: int = 0) -> np.ndarray:
    """Predicted label map (S, S) -> native (H, W), as ``test_single_volume`` does
    (``zoom(out, (H / S, W / S), order=0)``)."""
    label_map = np.asarray(label_map)
    h, w = int(shape[0]), int(shape[1])
    if label_map.shape == (h, w):
        return label_map
    out = ndimage.zoom(label_map, (h / label_map.shape[0], w / label_map.shape[1]), order=order)
    return _fit(out, (h, w))


def run_rotation_angle(run_seed: int) -> float:
    """The one rotation angle (degrees, [0, 360)) of a VM-UNet ISIC run.

    The authors build ``myRandomRotation`` at config import with ``random.uniform(0, 360)`` and
    reuse its angle for every sample of the run, unseeded; we keep the once-per-run behaviour and
    seed it so a run can be repeated.
    """
    return float(np.random.default_rng(run_seed).uniform(0.0, 360.0))


def _rotate(arr: np.ndarray, angle: float) -> np.ndarray:
    # order 0, same size, zero fill: TransUNet's ndimage.rotate call; also matches torchvision's
    # TF.rotate default (nearest, expand=False, fill 0). Positive = counter-clockwise in both.
    return ndimage.rotate(arr, angle, axes=(1, 0), order=0, reshape=False, mode="constant", cval=0.0)


def transunet_augment(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """TransUNet ``RandomGenerator``'s random part (before the zoom), drawing from ``rng``.

    ``random.random() > 0.5`` -> ``random_rot_flip`` (k = randint(0, 4), axis = randint(0, 2));
    elif another ``random.random() > 0.5`` -> ``random_rotate`` (angle = randint(-20, 20)).
    Image (H, W) or (H, W, C) and label (H, W) get the same geometry.
    """
    if rng.random() > 0.5:
        k = int(rng.integers(0, 4))
        image, label = np.rot90(image, k), np.rot90(label, k)
        axis = int(rng.integers(0, 2))
        image, label = np.flip(image, axis=axis).copy(), np.flip(label, axis=axis).copy()
    elif rng.random() > 0.5:
        angle = int(rng.integers(-20, 20))
        image, label = _rotate(image, angle), _rotate(label, angle)
    return image, label


def vmunet_isic_augment(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """VM-UNet ISIC flips and rotation (before the resize): hflip, vflip, rotate by ``angle``,
    each with p 0.5 (``random.random() < p`` in the authors' ``myRandom*`` classes)."""
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        image, mask = image[::-1], mask[::-1]
    if rng.random() < 0.5:
        image, mask = _rotate(np.ascontiguousarray(image), angle), _rotate(np.ascontiguousarray(mask), angle)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


# --- protocol-level objects ------------------------------------------------------------------


class TrainTransform:
    """``(sample, rng) -> (image, label)`` tensors for one training item.

    Output: image float32 (C, S, S) with S = ``protocol.img_size``; label int64 (S, S) class ids
    for multi-class datasets, float32 (1, S, S) soft mask in [0, 1] for binary ones.
    ``run_seed`` fixes the once-per-run rotation angle of ``vmunet_isic`` (``self.angle``).

    Example::

        tf = TrainTransform(load_protocol("synapse"), binary=False, run_seed=1234)
        image, label = tf(ds.load_train(ids[0]), np.random.default_rng([1234, 0, 0]))
    """

    def __init__(self, protocol, binary: bool, run_seed: int):
        self.size = int(protocol.img_size)
        self.normalize = protocol.normalize
        self.augment = protocol.train.augment
        self.binary = bool(binary)  # augment and normalize names are checked when the protocol loads
        self.angle = run_rotation_angle(run_seed) if self.augment == "vmunet_isic" else None

    def __call__(self, sample: Sample, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        image = normalize_image(sample.image, self.normalize)
        label = np.asarray(sample.label, dtype=np.float32 if self.binary else np.int64)
        if self.augment == "transunet":
            image, label = transunet_augment(image, label, rng)
            image, label = resize_image(image, self.size, 3), resize_image(label, self.size, 0)
        elif self.augment == "vmunet_isic":
            image, label = vmunet_isic_augment(image, label, rng, self.angle)
            image = resize_bilinear(image, self.size)
            label = resize_mask_bilinear(label, self.size) if self.binary else resize_image(label, self.size, 0)
        elif self.binary:  # "none", binary: VM-UNet's test-style resize of both
            image, label = resize_bilinear(image, self.size), resize_mask_bilinear(label, self.size)
        else:  # "none", multi-class: TransUNet's zoom orders
            image, label = resize_image(image, self.size, 3), resize_image(label, self.size, 0)
        return _to_tensors(image, label, self.binary)


def _to_tensors(image: np.ndarray, label: np.ndarray, binary: bool) -> tuple[torch.Tensor, torch.Tensor]:
    image_t = torch.from_numpy(to_chw(image.astype(np.float32, copy=False)))
    if binary:
        return image_t, torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32)[None])
    return image_t, torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))


# --- evaluation helpers ----------------------------------------------------------------------


def prepare_slice(img2d: np.ndarray, protocol) -> torch.Tensor:
    """One 2-D slice/image (H, W) or (H, W, C) -> float32 tensor (C, S, S) for the model:
    normalise, then ``zoom`` to ``img_size`` with ``protocol.eval.image_order`` (TransUNet's
    ``test_single_volume``: order 3). Map the prediction back with ``zoom_labels_back``."""
    image = normalize_image(img2d, protocol.normalize)
    image = resize_image(image, protocol.img_size, protocol.eval.image_order)
    return torch.from_numpy(to_chw(image.astype(np.float32, copy=False)))


def prepare_binary_pair(image: np.ndarray, mask: np.ndarray, protocol) -> tuple[torch.Tensor, np.ndarray]:
    """Binary 2-D test item the VM-UNet way (engine.py test transform: normalise, tensor, bilinear
    resize of image AND mask): image float32 tensor (C, S, S), mask float32 (S, S) in [0, 1].
    Scoring then happens at S x S (threshold the mask at ``protocol.eval.threshold``)."""
    img = resize_bilinear(normalize_image(image, protocol.normalize), protocol.img_size)
    return torch.from_numpy(to_chw(img)), resize_mask_bilinear(mask, protocol.img_size)
