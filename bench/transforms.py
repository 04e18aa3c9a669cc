"""Protocol-driven preprocessing and augmentation, shared by training and evaluation.

Everything here is a pure function of arrays (plus an explicit ``numpy.random.Generator``), so
a training item is reproducible from ``(seed, epoch, index)`` alone. Arrays are channels-last
numpy: images (H, W) or (H, W, C); outputs become channels-first tensors (C, S, S). Preprocessed
cases of patch protocols (C, D, H, W) (``bench.data.preprocess``) become patches (C, D, H, W), or
(C, H, W) from one slice under a 2-D patch (``nnunet_augment_patch`` and its helpers).

Pipelines (``protocol.train.augment``):

- ``"transunet"``: TransUNet's ``RandomGenerator`` (Beckschen/TransUNet
  datasets/dataset_synapse.py): p 0.5 rot90 + flip, else p 0.5 rotation by an integer angle in
  [-20, 19] with order-0 interpolation for image AND label; then ``scipy.ndimage.zoom`` to
  ``img_size`` (image order 3, label order 0). Shared by Swin-Unet and VM-UNet's Synapse code.
- ``"vmunet_isic"``: VM-UNet's ISIC train transform (JCruan519/VM-UNet configs/config_setting.py,
  utils.py): ``myNormalize`` -> hflip p 0.5 -> vflip p 0.5 -> rotation p 0.5 by ONE angle drawn
  once per run -> bilinear resize of image and mask (the mask becomes soft at edges).
- ``"nnunet"``: nnU-Net v2.1.1's default training augmentation for a 2-D configuration with a square
  patch, the one LightM-UNet's trainer uses (MrBlankness/LightM-UNet:lightm-unet/nnunetv2/training/nnUNetTrainer/
  nnUNetTrainer.py, ``get_training_transforms``), built from batchgenerators v1 (MIC-DKFZ/batchgenerators:
  batchgenerators/augmentations/{spatial_transformations,utils,noise_augmentations,color_augmentations,
  resample_augmentations}.py). Image and label are first zoomed to ``img_size`` (orders 3 / 0) and that
  S x S array plays nnU-Net's patch: rotation p 0.2 and scaling p 0.2 about its centre, Gaussian noise,
  blur, brightness, contrast, simulated low resolution, inverted and plain gamma, flips (``nnunet_augment``
  lists every draw). Differences from nnU-Net: the whole resized image replaces a patch cut from a larger,
  planned-spacing region (rotated corners get the zero fill, not neighbouring tissue), no foreground
  oversampling, and the draws come from a numpy ``Generator`` instead of batchgenerators' global streams.
  A protocol with a 2-D ``patch_size`` (``lightm_unet_2d``) cuts nnU-Net's patches instead and
  augments them with ``nnunet_augment_patch`` (``TrainTransform.patch_item``); this whole-image
  variant serves protocols that zoom whole images.
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
CT_WINDOW = (-125.0, 275.0)  # HU; the abdominal window of the Synapse files (TransUNet's datasets/README)


# --- pure array functions --------------------------------------------------------------------


def normalize_image(img: np.ndarray, mode: str, spatial_dims: int = 2,
                    stats: list[dict[str, float]] | None = None) -> np.ndarray:
    """float32 image normalised by ``mode``; shape unchanged. ``spatial_dims``: 3 for a volume
    (D, H, W) or (D, H, W, C), whose z-score statistics cover the whole volume. ``stats``: per channel,
    the training foreground's statistics ``ct_foreground`` needs (``bench.data.intensity``).

    - ``"none"``: values as stored (CT in [0, 1]; RGB in 0..255), cast to float32.
    - ``"minmax255"``: VM-UNet's ``myNormalize``: (x - mean) / std then min-max over the whole
      image (all channels) to [0, 255]; the mean/std cancel, so only the min-max is computed.
      A constant image (max == min), where the authors' code divides by zero, becomes all 0.
    - ``"zscore"``: per channel, (x - mean) / std over the image (nnU-Net's default for non-CT
      channels): per 2-D image, per slice of a volume trained slice by slice (nnU-Net would take the
      whole case's statistics; TransUNet's ACDC preprocessing, the protocol using it, is not public), or
      per cropped case in patch protocols (``bench.data.preprocess``); a constant channel becomes 0.
    - ``"ct_window"``: CT in HU clipped to [-125, 275] and scaled to [0, 1], the preparation the
      Synapse files were distributed with (TransUNet lineage), for CT in nnU-Net format.
    - ``"ct_foreground"``: nnU-Net's CTNormalization: per channel, clipped to the 0.5th-99.5th
      percentile of the training foreground's intensities, minus their mean, over their std.
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
        axes = tuple(range(spatial_dims))  # the spatial axes; channels (if any) come last
        x = img.astype(np.float64)
        mean, std = x.mean(axis=axes, keepdims=True), x.std(axis=axes, keepdims=True)
        return np.where(std > 0, (x - mean) / np.where(std > 0, std, 1.0), 0.0).astype(np.float32)
    if mode == "ct_window":
        lo, hi = CT_WINDOW
        return ((np.clip(img, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    if mode == "ct_foreground":
        if stats is None:
            raise BenchError("normalize 'ct_foreground' needs the training foreground's statistics "
                             "(bench.data.intensity.intensity_stats)")
        chans = img[..., None] if img.ndim == spatial_dims else img
        if chans.shape[-1] != len(stats):
            raise BenchError(f"normalize 'ct_foreground': {chans.shape[-1]} channel(s), statistics for {len(stats)}")
        out = np.empty_like(chans)
        for c, st in enumerate(stats):
            clipped = np.clip(chans[..., c], st["percentile_00_5"], st["percentile_99_5"])
            out[..., c] = (clipped - st["mean"]) / max(st["std"], 1e-8)
        return out.reshape(img.shape)
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


def _fit(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    # scipy rounds the output shape; guard the (theoretical) off-by-one with edge padding/cropping
    # of the leading len(shape) axes
    n = len(shape)
    if arr.shape[:n] == tuple(shape):
        return arr
    arr = arr[tuple(slice(0, s) for s in shape)]
    pad = [(0, s - a) for s, a in zip(shape, arr.shape)] + [(0, 0)] * (arr.ndim - n)
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


def _rotate(arr: np.ndarray, angle: float, mode: str = "constant") -> np.ndarray:
    # order 0, same size, zero fill: TransUNet's ndimage.rotate call ("constant"). torchvision's
    # TF.rotate (VM-UNet; nearest, expand=False, fill 0) samples grid_sample with align_corners=False,
    # which keeps the outer half pixel that "constant" blanks: "grid-constant" matches it bit for
    # bit away from exact-90° ties. Positive = counter-clockwise in both.
    return ndimage.rotate(arr, angle, axes=(1, 0), order=0, reshape=False, mode=mode, cval=0.0)


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
        image, mask = (_rotate(np.ascontiguousarray(a), angle, "grid-constant") for a in (image, mask))
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def _split_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    # batchgenerators' draw for a range around 1 (scale, contrast, gamma): half the time below 1, half above
    return float(rng.uniform(lo, 1.0) if rng.random() < 0.5 else rng.uniform(1.0, hi))


def _nnunet_spatial(
    x: np.ndarray, label: np.ndarray, rot: np.ndarray, scale: float | tuple[float, ...],
    out_shape: tuple[int, ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """batchgenerators ``augment_spatial`` without elastic deformation, on x (C, *in) and label (*in), to
    ``out_shape`` (default: the input's): output voxel p reads the input at ``rot.T @ (p - c_out) * scale
    + c_in``, c the centres ((n - 1) / 2 per axis), so a scale > 1 shows more of the image, i.e. shrinks
    the content (``scale``: one factor, or one per axis). The image is cubic with 0 outside; each label's indicator (the -1 padding of a patch
    included) is linear with -1 outside and assigned where >= 0.5, in ascending label order over a zero
    start (voxels no label reaches, e.g. outside, stay 0). scipy's mode "constant" returns the fill for
    any sample beyond [0, n - 1], so rounding can drop an edge row, as there."""
    shape_in = np.array(label.shape, dtype=np.float64)
    out_shape = tuple(label.shape if out_shape is None else out_shape)
    n = len(out_shape)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in out_shape], indexing="ij"))
    ctr_out = ((np.array(out_shape, dtype=np.float64) - 1) / 2.0)[:, None]
    scales = np.broadcast_to(np.asarray(scale, dtype=np.float64), (n,))[:, None]
    coords = ((rot.T @ (grid.reshape(n, -1) - ctr_out)) * scales + ((shape_in - 1) / 2.0)[:, None])
    coords = coords.reshape(n, *out_shape)
    image = np.stack([ndimage.map_coordinates(ch, coords, order=3, mode="constant", cval=0.0) for ch in x])
    out = np.zeros(out_shape, dtype=label.dtype)
    for c in np.unique(label):
        hit = ndimage.map_coordinates((label == c).astype(np.float64), coords, order=1, mode="constant", cval=-1.0)
        out[hit >= 0.5] = c
    return image, out


def _rotation_2d(angle: float) -> np.ndarray:
    cos, sin = np.cos(angle), np.sin(angle)
    return np.array([[cos, -sin], [sin, cos]])


def rotation_3d(ax: float, ay: float, az: float) -> np.ndarray:
    """batchgenerators' ``rotate_coords_3d`` matrix M = Rx(ax) @ Ry(ay) @ Rz(az), which rotates
    coordinates as ``coords @ M`` (axes in array order: x is axis 0)."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rx @ ry @ rz


def _nnunet_contrast(ch: np.ndarray, factor: float) -> np.ndarray:
    # ``augment_contrast`` with preserve_range: stretch about the mean, clip to the channel's old range
    mean = ch.mean()
    return np.clip((ch - mean) * factor + mean, ch.min(), ch.max())


def _nnunet_lowres(ch: np.ndarray, zoom: float, keep_axis0: bool = False) -> np.ndarray:
    """``augment_linear_downsampling_scipy``: nearest-neighbour down to ``round(shape * zoom)``, cubic back up;
    ``keep_axis0``: axis 0 keeps its size (``ignore_axes=(0,)``, nnU-Net's dummy 2-D augmentation).

    batchgenerators calls ``skimage.transform.resize(..., mode="edge", anti_aliasing=False)``; with
    scipy >= 1.6 that is ``ndimage.zoom(grid_mode=True, mode="nearest")`` to the exact target shape, output
    clipped to the input's range (``clip=True``), which is what is written here with scipy alone.
    """
    shape = np.array(ch.shape)
    small = np.round(shape * zoom).astype(int)  # numpy's half-to-even rounding, as batchgenerators
    if keep_axis0:
        small[0] = shape[0]
    down = _fit(ndimage.zoom(ch, small / shape, order=0, mode="nearest", grid_mode=True), tuple(small))
    up = _fit(ndimage.zoom(down, shape / small, order=3, mode="nearest", grid_mode=True), ch.shape)
    return np.clip(up, down.min(), down.max())


def _nnunet_gamma(ch: np.ndarray, gamma: float, invert: bool) -> np.ndarray:
    # ``augment_gamma`` per channel with retain_stats: gamma on the [min, max]-scaled channel (negated first
    # when inverting), then the old mean and std restored
    v = -ch if invert else ch
    mean, std = v.mean(), v.std()
    lo = v.min()
    span = v.max() - lo + 1e-7
    v = ((v - lo) / span) ** gamma * span + lo
    v = (v - v.mean()) / (v.std() + 1e-8) * std + mean
    return -v if invert else v


def nnunet_augment(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """nnU-Net v2.1.1's 2-D training transforms (square patch) on image (H, W) or (H, W, C) and an integer
    label map (H, W); returns float32 and int64 arrays of the same shapes.

    Draws, in order (u = ``rng.random()``; "split" = u < 0.5 picks U(lo, 1), else U(1, hi)):

    1. SpatialTransform: u < 0.2 -> angle U(-pi, pi); u < 0.2 -> scale split(0.7, 1.4), one factor for
       both axes. Only if either was drawn is the array resampled (``_nnunet_spatial``); otherwise
       batchgenerators just center-crops, an identity here.
    2. GaussianNoiseTransform: u < 0.1 -> std U(0, 0.1) (the "variance" range is used as the std), one
       N(0, std) field per channel (batchgenerators after its issue #86 fix; before it, each channel's
       loop step added a field to every channel).
    3. GaussianBlurTransform: u < 0.2 -> per channel u <= 0.5 -> sigma U(0.5, 1), ``gaussian_filter``.
    4. BrightnessMultiplicativeTransform: u < 0.15 -> per channel x *= U(0.75, 1.25).
    5. ContrastAugmentationTransform: u < 0.15 -> per channel factor split(0.75, 1.25), range preserved.
    6. SimulateLowResolutionTransform: u < 0.25 -> per channel u < 0.5 -> zoom U(0.5, 1).
    7. GammaTransform inverted: u < 0.1 -> per channel gamma split(0.7, 1.5), stats retained; then the
       plain GammaTransform: u < 0.3 -> the same without inversion.
    8. MirrorTransform: u < 0.5 flips axis 0, then u < 0.5 flips axis 1 (image and label).

    Draws with probability 1 in batchgenerators (rotation per axis, the unused shared brightness factor,
    noise per channel) are skipped. RemoveLabelTransform(-1, 0) has nothing to do: the -1 border never
    becomes a label (see ``_nnunet_spatial``) and our label maps carry no -1 padding.
    """
    x = to_chw(np.asarray(image, dtype=np.float64))
    label = np.asarray(label, dtype=np.int64)
    angle = rng.uniform(-np.pi, np.pi) if rng.random() < 0.2 else None
    scale = _split_uniform(rng, 0.7, 1.4) if rng.random() < 0.2 else None
    if angle is not None or scale is not None:
        x, label = _nnunet_spatial(x, label, _rotation_2d(0.0 if angle is None else angle),
                                   1.0 if scale is None else scale)
    x, label = _nnunet_intensity_and_mirror(x, label, rng)
    out = x[0] if np.ndim(image) == 2 else x.transpose(1, 2, 0)
    return np.ascontiguousarray(out, dtype=np.float32), np.ascontiguousarray(label)


def _nnunet_intensity_and_mirror(x: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                                 keep_axis0: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Steps 2-8 of ``nnunet_augment`` on x (C, *spatial) float64 and label (*spatial), any dimension
    (``keep_axis0``: the low-resolution step leaves axis 0 alone, as in the dummy 2-D augmentation)."""
    if rng.random() < 0.1:
        std = rng.uniform(0.0, 0.1)
        x = x + rng.normal(0.0, std, x.shape)  # a field per channel, one std for all
    if rng.random() < 0.2:
        for c in range(len(x)):
            if rng.random() <= 0.5:
                x[c] = ndimage.gaussian_filter(x[c], rng.uniform(0.5, 1.0))
    if rng.random() < 0.15:
        for c in range(len(x)):
            x[c] *= rng.uniform(0.75, 1.25)
    if rng.random() < 0.15:
        for c in range(len(x)):
            x[c] = _nnunet_contrast(x[c], _split_uniform(rng, 0.75, 1.25))
    if rng.random() < 0.25:
        for c in range(len(x)):
            if rng.random() < 0.5:
                x[c] = _nnunet_lowres(x[c], rng.uniform(0.5, 1.0), keep_axis0)
    for invert, p in ((True, 0.1), (False, 0.3)):
        if rng.random() < p:
            for c in range(len(x)):
                x[c] = _nnunet_gamma(x[c], _split_uniform(rng, 0.7, 1.5), invert)
    for axis in range(label.ndim):
        if rng.random() < 0.5:
            x, label = np.flip(x, axis + 1), np.flip(label, axis)
    return x, label


# --- nnU-Net patches (3d_fullres and 2d) -------------------------------------------------------

NNUNET_ROTATION_3D = 30.0 / 360 * 2 * np.pi  # 3d_fullres: U(-30°, 30°) about each axis
NNUNET_ROTATION_2D = np.pi  # 2d: U(-180°, 180°) in-plane ...
NNUNET_ROTATION_2D_ELONGATED = 15.0 / 360 * 2 * np.pi  # ... U(-15°, 15°) for a patch over 1.5 times longer than wide
NNUNET_INITIAL_SCALE = 0.85  # the smaller end of the scale range get_patch_size is given
DUMMY_2D_RATIO = 3.0  # nnU-Net's ANISO_THRESHOLD


def dummy_2d(patch: tuple[int, ...]) -> bool:
    """nnU-Net's ``do_dummy_2d_data_aug``: a 3-D patch whose longest side is over 3 times its depth
    (axis 0) is rotated and scaled in-plane only, each slice alike, as 2-D data (angle U(-180°, 180°))."""
    return len(patch) == 3 and max(patch) / patch[0] > DUMMY_2D_RATIO


def nnunet_rotation_2d(patch: tuple[int, ...]) -> float:
    """The largest in-plane angle (radians) nnU-Net draws for a 2-D patch: 180°, or 15° where the
    patch's longer side is over 1.5 times its shorter."""
    return NNUNET_ROTATION_2D_ELONGATED if max(patch) / min(patch) > 1.5 else NNUNET_ROTATION_2D


def nnunet_initial_patch(patch: tuple[int, ...]) -> tuple[int, ...]:
    """nnU-Net's ``get_patch_size`` for a patch with its rotations and scale (0.85, 1.25): the region cut
    from a case so that the rotated, scaled patch stays inside it. The patch rotated by the largest angle
    about each axis in turn (3-D: ±30°; a dummy 2-D patch: about axis 0 only, by its ±180° capped at 90°
    as get_patch_size caps it; 2-D: in-plane by ``nnunet_rotation_2d`` capped at 90°), the largest
    absolute extent per axis, divided by 0.85 and truncated (128³ -> 205³, 512² -> 602²); a dummy 2-D
    patch keeps its depth."""
    vec = np.array(patch, dtype=np.float64)
    extent = vec.copy()
    if len(patch) == 2:
        turns = [_rotation_2d(min(np.pi / 2, nnunet_rotation_2d(patch)))]
    else:
        a = NNUNET_ROTATION_3D
        angles = ((np.pi / 2, 0, 0),) if dummy_2d(patch) else ((a, 0, 0), (0, a, 0), (0, 0, a))
        turns = [rotation_3d(*t) for t in angles]
    for rot in turns:
        extent = np.maximum(extent, np.abs(vec @ rot))
    initial = [int(v) for v in extent / NNUNET_INITIAL_SCALE]
    if dummy_2d(patch):
        initial[0] = patch[0]
    return tuple(initial)


NNUNET_LOCATIONS = 10000  # voxels nnU-Net samples per class and case ...
NNUNET_LOCATIONS_SHARE = 0.01  # ... but at least this share of them
NNUNET_LOCATIONS_SEED = 1234


def foreground_locations(label: np.ndarray) -> dict[int, np.ndarray]:
    """nnU-Net's ``_sample_foreground_locations`` on a preprocessed case's label (-1 outside the non-zero
    region): for each foreground class present, in ascending order, min(10,000, n) of its n voxels but at
    least ceil(n / 100), drawn without replacement by one RandomState(1234) per case; {class: (k, ndim)
    coordinates}. nnU-Net's loaders centre foreground patches on these samples only."""
    rs = np.random.RandomState(NNUNET_LOCATIONS_SEED)
    out = {}
    for c in range(1, int(label.max(initial=0)) + 1):
        locs = np.argwhere(label == c)
        if len(locs):  # an absent class draws nothing, as in nnU-Net
            k = max(min(NNUNET_LOCATIONS, len(locs)), int(np.ceil(len(locs) * NNUNET_LOCATIONS_SHARE)))
            out[c] = locs[rs.choice(len(locs), k, replace=False)].astype(np.int32)  # kept per case: half the memory
    return out


def nnunet_class(locations: dict[int, np.ndarray], rng: np.random.Generator) -> int | None:
    """The class a foreground-forced patch is centred on: uniform among the classes the case holds (so a
    small class is not starved by a large one), None without foreground."""
    classes = sorted(c for c, locs in locations.items() if len(locs))
    return classes[int(rng.integers(len(classes)))] if classes else None


def nnunet_slice(locations: dict[int, np.ndarray] | None, n_slices: int,
                 rng: np.random.Generator) -> tuple[int, np.ndarray | None]:
    """The slice (axis 0) nnU-Net's 2-D loader cuts a patch from, and the in-plane voxels it may centre the
    patch on: a foreground-forced item (``locations``: the case's ``foreground_locations``) draws a class
    (``nnunet_class``), then the slice of one of that class's sampled locations, and keeps that class's
    locations in the slice ("the line of death"); otherwise (None), or in a case without foreground, a
    uniform slice and None."""
    cls = None if locations is None else nnunet_class(locations, rng)
    if cls is None:
        return int(rng.integers(n_slices)), None
    locs = locations[cls]
    z = int(locs[int(rng.integers(len(locs))), 0])
    return z, locs[locs[:, 0] == z][:, 1:]


def nnunet_patch_corner(shape: tuple[int, ...], patch: tuple[int, ...], initial: tuple[int, ...],
                        rng: np.random.Generator, voxels: np.ndarray | None = None) -> np.ndarray:
    """The lower corner (may be negative: the region is padded) of the ``initial`` region cut from a
    case of ``shape``, as nnU-Net's data loader (``get_bbox``) picks it. Corners range so that the
    final ``patch``, centred in the region, can reach the case's border: from ``-pad // 2`` to
    ``shape + pad // 2 + pad % 2 - initial`` with pad = initial - patch (more where the case is
    smaller than the region). With ``voxels`` (a foreground-forced item: the drawn class's sampled
    locations) the region is centred on one of them drawn uniformly, clamped below only; without, or
    with none, a uniform corner."""
    shape, patch, initial = (np.array(v, dtype=np.int64) for v in (shape, patch, initial))
    pad = np.maximum(initial - patch, initial - shape)
    lbs = -pad // 2
    ubs = shape + pad // 2 + pad % 2 - initial
    if voxels is not None and len(voxels):
        voxel = np.asarray(voxels[int(rng.integers(len(voxels)))], dtype=np.int64)
        return np.maximum(lbs, voxel - initial // 2)
    return np.array([int(rng.integers(lo, hi + 1)) for lo, hi in zip(lbs, ubs)])


def crop_padded(arr: np.ndarray, corner: np.ndarray, size: tuple[int, ...], fill: float) -> np.ndarray:
    """The box ``corner .. corner + size`` of ``arr``'s last len(size) axes; what lies outside the
    array is ``fill`` (nnU-Net pads images with 0 and labels with -1)."""
    n = len(size)
    lead = arr.shape[:-n]
    shape = np.array(arr.shape[-n:])
    lo, hi = np.maximum(corner, 0), np.minimum(np.array(corner) + size, shape)
    out = np.full(lead + tuple(size), fill, dtype=np.result_type(arr.dtype, np.min_scalar_type(fill)))
    if np.all(hi > lo):
        src = (...,) + tuple(slice(a, b) for a, b in zip(lo, hi))
        dst = (...,) + tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, corner))
        out[dst] = arr[src]
    return out


def nnunet_augment_patch(x: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                         patch: tuple[int, ...], mask_outside: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """nnU-Net v2.1.1's training transforms (3d_fullres, or 2d for a 2-D ``patch``) on the region cut by
    ``nnunet_patch_corner``: x (C, *initial) and label (*initial, -1 where padded or outside the non-zero
    region) -> float32 (C, *patch) and int64 (*patch).

    Draws as ``nnunet_augment``, except step 1: 3-D: u < 0.2 -> three angles U(-30°, 30°) about axes 0,
    1, 2 (``rotation_3d``); 2-D: u < 0.2 -> one angle within ``nnunet_rotation_2d``; then u < 0.2 ->
    scale split(0.7, 1.4). Either drawn: the patch is resampled about the region's centre; neither: the
    centre patch is cut out (batchgenerators' center crop). Mirroring flips each axis with p 0.5. The -1
    voxels become background at the end (``clear_outside``: RemoveLabelTransform(-1, 0), after
    MaskTransform where ``mask_outside``).

    A ``dummy_2d`` 3-D patch takes the 2-D draws instead: u < 0.2 -> an angle U(-180°, 180°) rotating
    each slice in the plane of axes 1 and 2; u < 0.2 -> scale split(0.7, 1.4) of those two axes; and
    the low-resolution step leaves axis 0 alone (nnU-Net's Convert3DTo2D around the spatial step,
    ignore_axes=(0,))."""
    x = np.asarray(x, dtype=np.float64)
    flat = dummy_2d(patch)
    if len(patch) == 2 or flat:
        limit = nnunet_rotation_2d(patch) if len(patch) == 2 else np.pi
        angle = rng.uniform(-limit, limit) if rng.random() < 0.2 else None
        rot = _rotation_2d(0.0 if angle is None else angle)
        if flat:  # each slice alike: a rotation in the plane of axes 1 and 2
            plane, rot = rot, np.eye(3)
            rot[1:, 1:] = plane
        drawn = angle is not None
    else:
        angles = tuple(rng.uniform(-NNUNET_ROTATION_3D, NNUNET_ROTATION_3D, 3)) if rng.random() < 0.2 else None
        rot = rotation_3d(*(angles or (0.0, 0.0, 0.0)))
        drawn = angles is not None
    scale = _split_uniform(rng, 0.7, 1.4) if rng.random() < 0.2 else None
    if drawn or scale is not None:
        s = 1.0 if scale is None else scale
        x, label = _nnunet_spatial(x, label, rot, (1.0, s, s) if flat else s, tuple(patch))
    else:
        lo = (np.array(label.shape) - np.array(patch)) // 2
        x = crop_padded(x, lo, tuple(patch), 0.0)
        label = crop_padded(label, lo, tuple(patch), -1)
    x, label = _nnunet_intensity_and_mirror(x, label, rng, keep_axis0=flat)
    return clear_outside(x, label, mask_outside)


def clear_outside(x: np.ndarray, label: np.ndarray, mask_outside: bool) -> tuple[np.ndarray, np.ndarray]:
    """The end of nnU-Net's training transforms on patches: with ``mask_outside`` (cases z-scored inside their
    non-zero region, ``VolumePrep.mask_norm``) the image is 0 wherever the label is -1 (MaskTransform,
    undoing what intensity augmentation did there), then -1 becomes background (RemoveLabelTransform):
    float32 (C, *patch) and int64 (*patch)."""
    x = np.array(x, dtype=np.float32, order="C")  # a copy: the caller's region stays as it was
    if mask_outside:
        x[:, label < 0] = 0.0
    return x, np.where(label < 0, 0, label).astype(np.int64)


def volume_chw(image: np.ndarray) -> np.ndarray:
    """(D, H, W) -> (1, D, H, W); channels-last (D, H, W, C) -> (C, D, H, W)."""
    return image[None] if image.ndim == 3 else np.moveaxis(image, -1, 0)


# --- protocol-level objects ------------------------------------------------------------------


class TrainTransform:
    """``(sample, rng, draw) -> (image, label)`` tensors for one training item.

    Output: image float32 (C, S, S) with S = ``protocol.img_size``; label int64 (S, S) class ids
    for multi-class datasets, float32 (1, S, S) soft mask in [0, 1] for binary ones. Under a patch
    protocol the sample is a whole preprocessed case (C, D, H, W) and the output a patch: (C, D, H, W)
    and (D, H, W), or (C, H, W) and (H, W) from one of its slices (``patch_item``). ``run_seed`` fixes the once-per-run rotation angle of ``vmunet_isic``.

    Example::

        tf = TrainTransform(load_protocol("synapse"), binary=False, run_seed=1234)
        image, label = tf(ds.load_train(ids[0]), np.random.default_rng([1234, 0, 0]))
    """

    def __init__(self, protocol, binary: bool, run_seed: int, stats: list[dict[str, float]] | None = None,
                 mask_outside: bool = False):
        self.size = int(protocol.img_size)
        self.mask_outside = mask_outside  # patches: VolumePrep.mask_norm, nnU-Net's MaskTransform (augment "nnunet")
        self.normalize = protocol.normalize
        self.stats = stats  # ct_foreground: the training foreground's statistics
        self.augment = protocol.train.augment
        self.binary = bool(binary)  # augment and normalize names (and a patch protocol's augment) checked at load
        if self.augment == "nnunet" and self.binary:
            raise BenchError("augment 'nnunet' needs integer class labels (nnU-Net datasets); this dataset is binary")
        self.angle = run_rotation_angle(run_seed) if self.augment == "vmunet_isic" else None
        self.patch = tuple(protocol.patch_size)  # patch protocols: items are whole cases, cut here
        self.initial = nnunet_initial_patch(self.patch) if self.patch and self.augment == "nnunet" else self.patch
        self.batch_size = protocol.train.batch_size
        self.oversample = protocol.train.oversample_foreground
        self._sampled: dict[str, dict[int, np.ndarray]] = {}  # foreground_locations per case, kept per worker

    def forced_foreground(self, draw: int | None, rng: np.random.Generator) -> bool:
        """Whether an item's patch is centred on foreground: the last items of each batch (draw =
        position in an epoch of batches, nnU-Net's rule), else with probability ``oversample``."""
        if draw is None:
            return bool(rng.random() < self.oversample)
        return not draw % self.batch_size < round(self.batch_size * (1 - self.oversample))

    def _locations(self, case: str, label: np.ndarray) -> dict[int, np.ndarray]:
        """The case's ``foreground_locations``, sampled on its first forced item (nnU-Net: when it
        preprocesses the case) and kept."""
        if case not in self._sampled:
            self._sampled[case] = foreground_locations(label)
        return self._sampled[case]

    def patch_item(self, sample: Sample, rng: np.random.Generator,
                   draw: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """A training patch from a whole preprocessed case (``bench.data.preprocess``: image
        (C, D, H, W), already normalised; label -1 outside the non-zero region): nnU-Net's region
        choice (a 2-D patch: in a slice ``nnunet_slice`` picks first), then its augmentation. The
        case's ``name`` keys its sampled foreground locations."""
        image = sample.image
        label = np.asarray(sample.label)  # class ids in any integer type: only the patch becomes int64
        force = self.forced_foreground(draw, rng)
        locations = self._locations(sample.name, label) if force else None
        if len(self.patch) == 2:  # nnU-Net's 2-D loader: a slice, then a region in it
            z, voxels = nnunet_slice(locations, len(label), rng)
            image, label = image[:, z], label[z]
        else:
            cls = None if locations is None else nnunet_class(locations, rng)
            voxels = None if cls is None else locations[cls]
        corner = nnunet_patch_corner(label.shape, self.patch, self.initial, rng, voxels)
        # nnU-Net pads normalised images with 0 and labels with -1
        x, label = crop_padded(image, corner, self.initial, 0.0), crop_padded(label, corner, self.initial, -1)
        if self.augment == "nnunet":  # which also turns the -1 voxels into background
            x, label = nnunet_augment_patch(x, label, rng, self.patch, self.mask_outside)
        else:  # nnU-Net without augmentation (its validation transforms): no MaskTransform
            x, label = clear_outside(x, label, False)
        return torch.from_numpy(x), torch.from_numpy(label)

    def __call__(self, sample: Sample, rng: np.random.Generator,
                 draw: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``draw``: the item's position in an epoch drawn with replacement (the patch protocols' foreground rule)."""
        if self.patch:
            return self.patch_item(sample, rng, draw)
        image = normalize_image(sample.image, self.normalize, stats=self.stats)
        label = np.asarray(sample.label, dtype=np.float32 if self.binary else np.int64)
        if self.augment == "transunet":
            image, label = transunet_augment(image, label, rng)
            image, label = resize_image(image, self.size, 3), resize_image(label, self.size, 0)
        elif self.augment == "vmunet_isic":
            image, label = vmunet_isic_augment(image, label, rng, self.angle)
            image = resize_bilinear(image, self.size)
            label = resize_mask_bilinear(label, self.size) if self.binary else resize_image(label, self.size, 0)
        elif self.augment == "nnunet":  # the S x S image stands in for nnU-Net's patch
            image, label = resize_image(image, self.size, 3), resize_image(label, self.size, 0)
            image, label = nnunet_augment(image, label, rng)
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


def prepare_slice(img2d: np.ndarray, protocol, stats: list[dict[str, float]] | None = None) -> torch.Tensor:
    """One 2-D slice/image (H, W) or (H, W, C) -> float32 tensor (C, S, S) for the model:
    normalise, then ``zoom`` to ``img_size`` with ``protocol.eval.image_order`` (TransUNet's
    ``test_single_volume``: order 3). Map the prediction back with ``zoom_labels_back``."""
    image = normalize_image(img2d, protocol.normalize, stats=stats)
    image = resize_image(image, protocol.img_size, protocol.eval.image_order)
    return torch.from_numpy(to_chw(image.astype(np.float32, copy=False)))


def prepare_binary_pair(image: np.ndarray, mask: np.ndarray, protocol) -> tuple[torch.Tensor, np.ndarray]:
    """Binary 2-D test item the VM-UNet way (engine.py test transform: normalise, tensor, bilinear
    resize of image AND mask): image float32 tensor (C, S, S), mask float32 (S, S) in [0, 1].
    Scoring then happens at S x S (the mask is foreground where >= 0.5, as VM-UNet's; the
    prediction's threshold is ``protocol.eval.threshold``)."""
    return prepare_binary_image(image, protocol), resize_mask_bilinear(mask, protocol.img_size)


def prepare_binary_image(image: np.ndarray, protocol) -> torch.Tensor:
    """The image half of ``prepare_binary_pair`` (evaluation takes its mask from
    ``bench.evaluate.scored_mask``, which ``bench score`` shares)."""
    return torch.from_numpy(to_chw(resize_bilinear(normalize_image(image, protocol.normalize), protocol.img_size)))
