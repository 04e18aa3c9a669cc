"""Predict test cases the way each protocol's authors did, then score them with bench.metrics.

- Volumes (Synapse, nnU-Net NIfTI): slice by slice, each slice zoomed to ``img_size`` with
  ``eval.image_order`` (TransUNet: cubic), softmax + argmax, the label map zoomed back to the
  slice's native size with ``eval.label_order`` (nearest); scored per volume at native resolution.
- 2-D images with integer labels (nnU-Net PNG): the same, per image.
- 2-D binary images (ISIC, polyp): image and mask resized to ``img_size`` (bilinear), sigmoid,
  ``>= eval.threshold``; ground truth ``mask >= 0.5``; scored at ``img_size`` (VM-UNet engine.py).
- Cases under a patch protocol (``patch_size``): nnU-Net v2's prediction. The case is
  preprocessed as the training cases were (``bench.data.preprocess``: cropped to its non-zero
  region, normalised, resampled to ``target_spacing``), covered by the sliding window
  (``sliding_window_logits``; a 2-D patch covers each slice): tiles of the patch size overlapping by
  ``1 - eval.tile_step``, each tile's logits weighted by a Gaussian; with ``eval.mirror`` each tile
  is also predicted flipped along every combination of axes (nnU-Net's test-time mirroring, off in
  LightM-UNet's ``--disable_tta``). The logits are resampled back to the cropped grid (linear), and
  their argmax, pasted into background of the case's own shape, is scored.

Nothing here imports the training loop: evaluation works on any model that follows the forward
contract.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from bench import metrics
from bench.data.base import Case, SegDataset
from bench.data.intensity import intensity_stats
from bench.data.preprocess import VolumePrep, as_volume, cancelling, volume_prep
from bench.protocol import Protocol
from bench.transforms import (prepare_binary_image, prepare_slice, resize_bilinear, resize_mask_bilinear,
                              zoom_labels_back)


@dataclass
class EvalResult:
    per_case: list[dict[str, Any]]
    per_class: list[dict[str, Any]]
    metrics: dict[str, Any]
    hd95_unit: str | None = None  # "mm", "voxels", "pixels", "mixed" (see hd95_unit); None: no HD95


def hd95_unit(policy: str, spacings: list[tuple[float, ...] | None], volumes: bool) -> str | None:
    """The unit the run's HD95 values are in: mm only where the policy uses spacing and every case
    has one (the real Synapse h5 files have none, so strict HD95 there is in voxels); "mixed"
    when some cases had a spacing and some did not, so the mean adds mm to voxels."""
    pol = metrics.get_policy(policy)
    if pol.hd_definition is None:
        return None
    grid = "voxels" if volumes else "pixels"
    if not pol.use_spacing:
        return grid
    known = {s is not None for s in spacings}
    return "mixed" if len(known) > 1 else ("mm" if known == {True} else grid)


def scoring_policy(policy: str | None, protocol: Protocol, dataset: SegDataset) -> str:
    """The policy test cases are scored under: ``policy`` where given, else the protocol's
    ``metric_policy``, else the dataset's default (``bench run`` and ``bench score`` alike)."""
    return policy or protocol.metric_policy or dataset.default_policy


def resolve_nsd_tolerance(protocol: Protocol, dataset: SegDataset, policy: str) -> float | dict[str, float] | None:
    """eval.nsd_tolerance for this dataset and policy: None when no NSD is computed (0, or a pooled
    policy: legacy-isic scores from counts alone, without surfaces), the number when one holds for
    every class, else {class name: tolerance} in class order. A table that misses a class or names
    one the dataset lacks is a BenchError; `bench run` calls this while planning, before training."""
    tol = protocol.eval.nsd_tolerance
    if not tol or metrics.get_policy(policy).pooled:
        return None
    if not isinstance(tol, tuple):
        return tol
    what = f"protocol {protocol.name!r} eval.nsd_tolerance on dataset {dataset.dataset_name!r}"
    return metrics.class_tolerances(dict(tol), dataset.num_classes, dataset.class_names, what=what)


def _autocast(enabled: bool, device: torch.device):
    """float16 autocast where a protocol's ``eval.autocast`` asks and the model runs on CUDA (nnU-Net's
    predictor: ``autocast`` on CUDA, nothing on a CPU); otherwise no change."""
    return torch.autocast("cuda", dtype=torch.float16, enabled=enabled and device.type == "cuda")


@torch.no_grad()
def _predict(model: nn.Module, inputs: list[torch.Tensor], protocol: Protocol, device: torch.device,
             binary: bool, batch_size: int, probabilities: bool = False) -> np.ndarray:
    """Model-resolution label maps (N, S, S) for prepared inputs (C, S, S); ``probabilities`` (binary):
    the foreground probabilities (float32) instead of the thresholded masks."""
    out = []
    for i in range(0, len(inputs), batch_size):
        batch = torch.stack(inputs[i:i + batch_size]).to(device, dtype=protocol.torch_dtype)
        with _autocast(protocol.eval.autocast, device):
            logits = model(batch).float()
        if binary:
            prob = logits.sigmoid()[:, 0]
            pred = prob if probabilities else (prob >= protocol.eval.threshold).to(torch.uint8)
        else:
            pred = logits.softmax(dim=1).argmax(dim=1)
        out.append(pred.cpu().numpy())
    return np.concatenate(out)


def tile_starts(size: int, tile: int, step: float) -> list[int]:
    """Where the tiles of one axis start (nnU-Net's ``compute_steps_for_sliding_window``, size >= tile):
    as few tiles as keep starts at most ``tile * step`` apart, spread evenly from 0 to size - tile."""
    n = int(np.ceil((size - tile) / (tile * step))) + 1
    if n == 1:
        return [0]
    return [int(np.round((size - tile) / (n - 1) * i)) for i in range(n)]


def gaussian_importance(tile: tuple[int, ...], sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """nnU-Net's tile weights: a unit impulse at the tile's centre (``tile // 2``) blurred with sigma
    ``tile * sigma_scale`` per axis (zero outside), scaled to a maximum of 1 (nnU-Net scales to 10;
    the weighted mean does not depend on it), zeros raised to the smallest positive weight."""
    impulse = np.zeros(tile, dtype=np.float64)
    impulse[tuple(t // 2 for t in tile)] = 1.0
    g = ndimage.gaussian_filter(impulse, [t * sigma_scale for t in tile], 0, mode="constant", cval=0.0)
    g /= g.max()
    g[g == 0] = g[g > 0].min()
    return g.astype(np.float32)


@torch.no_grad()
def sliding_window_logits(model: nn.Module, x: np.ndarray, patch: tuple[int, ...], step: float, *,
                          device: torch.device, dtype: torch.dtype, batch_size: int = 2,
                          mirror: bool = False, autocast: bool = False) -> torch.Tensor:
    """Logits (K, *spatial) of a whole case x (C, *spatial), float32 on ``device``: the case is padded
    with 0 to at least the patch in the patch's axes (nnU-Net's ``pad_nd_image``: the extra split
    below/above, one more above), covered by tiles (``tile_starts``), and each voxel gets the
    Gaussian-weighted mean of the logits of the tiles covering it; the padding is cut off again. A 2-D
    patch on a volume (nnU-Net's 2d configuration) tiles each slice on its own. ``mirror``: a tile's
    logits are the mean over it and its flips along every non-empty combination of the patch's axes,
    each flipped back. ``autocast``: the model runs under ``_autocast``; the weighted sum stays float32."""
    lead = x.ndim - 1 - len(patch)  # 1: 2-D tiles on the slices of a volume
    spatial = np.array(x.shape[1 + lead:])
    need = np.maximum(np.array(patch) - spatial, 0)
    below = need // 2
    x = np.pad(x, [(0, 0)] * (1 + lead) + [(int(b), int(n - b)) for b, n in zip(below, need)], constant_values=0.0)
    padded = x.shape[1:]
    starts = np.stack(np.meshgrid(*[tile_starts(s, t, step) for s, t in zip(padded[lead:], patch)],
                                  indexing="ij")).reshape(len(patch), -1).T
    weight = torch.from_numpy(gaussian_importance(tuple(patch))).to(device)
    volume = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    acc = torch.zeros((model.num_classes, *padded), dtype=torch.float32, device=device)
    norm = torch.zeros(padded, dtype=torch.float32, device=device)
    tiles = [tuple(slice(int(a), int(a) + t) for a, t in zip(start, patch)) for start in starts]
    boxes = [(z,) * lead + tile for z in range(padded[0] if lead else 1) for tile in tiles]
    spatial_axes = range(2, 2 + len(patch))
    flips = [c for n in range(1, len(patch) + 1) for c in itertools.combinations(spatial_axes, n)]
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i:i + batch_size]
        batch = torch.stack([volume[(slice(None),) + box] for box in chunk]).to(device, dtype=dtype)
        with _autocast(autocast, device):
            logits = model(batch).float()
            if mirror:
                for axes in flips:
                    logits += model(batch.flip(axes)).float().flip(axes)
                logits /= len(flips) + 1
        for box, out in zip(chunk, logits):
            acc[(slice(None),) + box] += out * weight
            norm[box] += weight
    crop = (slice(None),) * lead + tuple(slice(int(b), int(b) + int(s)) for b, s in zip(below, spatial))
    return (acc / norm)[(slice(None),) + crop]


# slices (or images) per forward pass when predicting whole images: enough to keep a GPU busy while a
# volume's hundreds of slices never sit on it at once; eval-mode outputs do not depend on it
PREDICT_BATCH = 8


def predict_case(model: nn.Module, case: Case, protocol: Protocol, *, binary: bool, device: torch.device,
                 batch_size: int = PREDICT_BATCH, stats: list[dict[str, float]] | None = None,
                 prep: VolumePrep | None = None, native: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Return (prediction, ground truth) as integer label maps on the grid they are scored on.
    ``stats``: the training foreground's statistics, for ``normalize = "ct_foreground"`` (whole images);
    ``prep``: how a patch protocol's cases are preprocessed (``volume_prep``), required there.
    ``native`` (binary data, scored at model resolution): both at each image's own size instead, the
    foreground probabilities resized bilinearly and then thresholded (what ISIC's challenge scorer
    takes); the other data is predicted on its own grid already."""
    model.eval()
    if protocol.patches:  # nnU-Net: preprocess, sliding window, logits back to the case's grid
        if prep is None:
            raise TypeError("predict_case: a patch protocol needs prep (bench.data.preprocess.volume_prep)")
        x, box = _patch_input(case, prep)
        return _patch_output(_window_logits(model, x, protocol, device), box, case, prep, protocol)
    images = list(case.image) if case.is_volume else [case.image]
    if binary:  # VM-UNet: image and mask resized bilinearly, scored at model resolution
        inputs = [prepare_binary_image(img, protocol) for img in images]  # the mask: ground_truth's
        if native:
            prob = _predict(model, inputs, protocol, device, True, batch_size, probabilities=True)
            labels = list(case.label) if case.is_volume else [case.label]
            pred = np.stack([resize_bilinear(p, lab.shape) >= protocol.eval.threshold
                             for p, lab in zip(prob, labels)]).astype(np.uint8)
        else:
            pred = _predict(model, inputs, protocol, device, True, batch_size)
    else:  # TransUNet: slice zoom in, argmax, nearest zoom back, scored at native resolution
        small = _predict(model, [prepare_slice(img, protocol, stats) for img in images], protocol, device, False, batch_size)
        pred = np.stack([zoom_labels_back(p, case.label.shape[-2:], protocol.eval.label_order) for p in small])
    return (pred if case.is_volume else pred[0]), ground_truth(case, protocol, binary, native=native)


def _patch_input(case: Case, prep: VolumePrep) -> tuple[np.ndarray, tuple[slice, ...]]:
    """A patch protocol's network input for ``case`` (C, *grid) and the crop box it came from."""
    image, _ = as_volume(case.image, case.label)  # a 2-D case: a volume of one slice
    return prep.image(image, case.spacing, f"test case {case.case_id!r}")


def _window_logits(model: nn.Module, x: np.ndarray, protocol: Protocol, device: torch.device) -> np.ndarray:
    logits = sliding_window_logits(model, x, protocol.patch_size, protocol.eval.tile_step, device=device,
                                   dtype=protocol.torch_dtype, batch_size=protocol.train.batch_size,
                                   mirror=protocol.eval.mirror, autocast=protocol.eval.autocast)
    return logits.cpu().numpy()


def _patch_output(logits: np.ndarray, box: tuple[slice, ...], case: Case, prep: VolumePrep,
                  protocol: Protocol) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, ground truth) of a patch protocol's ``case`` from its logits on the resampled grid."""
    _, label = as_volume(case.image, case.label)
    pred = prep.labels_back(logits, box, label.shape, case.spacing, f"test case {case.case_id!r}")
    return pred.reshape(case.label.shape), ground_truth(case, protocol, binary=False)


EVAL_WORKERS = 3  # nnU-Net's default preprocessing and export processes beside the GPU's prediction


def scored_ids(dataset: SegDataset, protocol: Protocol) -> list[str]:
    """The test cases a run under ``protocol`` scores: all, or the first ``eval.max_cases``. Every fold's
    validation cases at once (nnU-Net's ``fold_cases``, bench score --fold all): each fold's first
    ``eval.max_cases``, the cases each fold's own run scores, not the first folds' alone."""
    ids, cap = dataset.test_ids(), protocol.eval.max_cases
    if cap <= 0:
        return ids
    if folds := getattr(dataset, "fold_cases", None):
        kept = {case for val in folds for case in val[:cap]}
        return [case for case in ids if case in kept]
    return ids[:cap]


def ground_truth(case: Case, protocol: Protocol, binary: bool, *, native: bool = False) -> np.ndarray:
    """The label map ``case``'s prediction is scored against: its labels as int64 ids, or a binary
    mask as 0/1 on the grid it is scored on (``scored_mask``; ``native``: at its own size)."""
    if not binary:
        return case.label.astype(np.int64, copy=False)
    labels = list(case.label) if case.is_volume else [case.label]
    gt = np.stack([np.asarray(lab) >= 0.5 if native else scored_mask(lab, protocol) for lab in labels]).astype(np.uint8)
    return gt if case.is_volume else gt[0]


def scored_mask(mask: np.ndarray, protocol: Protocol) -> np.ndarray:
    """A binary mask (H, W) in [0, 1] on the grid it is scored on: resized bilinearly to ``img_size``
    (VM-UNet's test transform), foreground where >= 0.5 (VM-UNet's ``gts >= 0.5``)."""
    return resize_mask_bilinear(mask, protocol.img_size) >= 0.5


@dataclass
class ScoredCase:
    rows: list[dict[str, Any]]  # score_case's rows, each tagged with ``case``
    spacing: tuple[float, ...] | None  # the spacing its HD95 was computed with (None: voxels or pixels)
    is_volume: bool


@dataclass
class Scoring:
    """How test cases are scored under ``policy``: one per evaluation (``bench run``, ``bench rescore``)
    and per ``bench score`` of predictions made elsewhere, so both compute the same numbers.
    ``case`` scores one (case, prediction, ground truth); ``result`` aggregates the scored cases."""

    dataset: SegDataset
    policy: str
    nsd_tolerance: float | dict[str, float] | None

    @classmethod
    def of(cls, dataset: SegDataset, protocol: Protocol, policy: str) -> "Scoring":
        return cls(dataset, policy, resolve_nsd_tolerance(protocol, dataset, policy))

    def case(self, case: Case, pred: np.ndarray, gt: np.ndarray) -> ScoredCase:
        """The rows of a predicted case (its arrays are not kept)."""
        # binary tasks are scored at model resolution, where the native spacing no longer holds
        spacing = None if self.dataset.binary else case.spacing
        rows = metrics.score_case(pred, gt, self.dataset.num_classes, self.policy, spacing=spacing,
                                  class_names=self.dataset.class_names, nsd_tolerance=self.nsd_tolerance)
        return ScoredCase([{"case": case.case_id, **row} for row in rows], spacing, case.is_volume)

    def result(self, scored: list[ScoredCase]) -> EvalResult:
        rows = [row for case in scored for row in case.rows]
        scores = metrics.aggregate(rows, self.policy)
        if isinstance(self.nsd_tolerance, dict):  # records.load shows it as the text "liver 5, spleen 3"
            scores["nsd_tolerances"] = self.nsd_tolerance
        elif self.nsd_tolerance is not None:
            scores["nsd_tolerance"] = self.nsd_tolerance  # a run column, so boards can say it
        return EvalResult(
            per_case=rows,
            per_class=metrics.aggregate_per_class(rows, self.policy),
            metrics=scores,
            hd95_unit=hd95_unit(self.policy, [c.spacing for c in scored], any(c.is_volume for c in scored)),
        )


def evaluate(model: nn.Module, dataset: SegDataset, protocol: Protocol, policy: str, *, device: torch.device,
             progress: Callable[[int, int], None] | None = None, workers: int | None = None) -> EvalResult:
    """Score every test case of ``dataset`` under ``policy``; rows keep raw counts for re-aggregation.

    ``workers``: as ``predict_cases``; the rows do not depend on it."""
    model.to(device=device, dtype=protocol.torch_dtype)
    ids = scored_ids(dataset, protocol)
    scoring = Scoring.of(dataset, protocol, policy)  # before any case is predicted
    prep = volume_prep(dataset, protocol) if protocol.patches else None  # one fingerprint pass
    stats = intensity_stats(dataset, protocol)
    scored = predict_cases(model, dataset, ids, protocol, scoring.case, device=device, stats=stats, prep=prep,
                           workers=workers, progress=progress)
    return scoring.result(scored)


def predict_cases(model: nn.Module, dataset: SegDataset, ids: list[str], protocol: Protocol,
                  finish: Callable[[Case, np.ndarray, np.ndarray], Any], *, device: torch.device,
                  stats: list[dict[str, float]] | None = None, prep: VolumePrep | None = None,
                  workers: int | None = None, progress: Callable[[int, int], None] | None = None,
                  native: bool = False) -> list:
    """``finish(case, prediction, ground truth)`` of each test case in ``ids``, in that order, each
    case predicted as ``predict_case`` does; what evaluation scores and ``bench predict`` writes.

    ``workers``: threads that, under a patch protocol, load and preprocess the next cases and
    resample and finish the predicted ones while the model predicts (nnU-Net's pipeline; scipy and
    numpy work outside the GIL), 0 for one case after another; default ``EVAL_WORKERS`` on CUDA, 0 on
    CPU, where the model's own threads take the cores. The results do not depend on it."""
    if workers is None:
        workers = EVAL_WORKERS if device.type == "cuda" else 0
    if protocol.patches and workers > 0:
        model.eval()
        return _pipelined(ids, dataset, prep, lambda x: _window_logits(model, x, protocol, device),
                          lambda logits, box, case: finish(case, *_patch_output(logits, box, case, prep, protocol)),
                          workers, progress)
    out = []
    for i, case_id in enumerate(ids):
        case = dataset.load_test(case_id)
        out.append(finish(case, *predict_case(model, case, protocol, binary=dataset.binary, device=device,
                                              stats=stats, prep=prep, native=native)))
        if progress is not None:
            progress(i + 1, len(ids))
    return out


def _pipelined(ids: list[str], dataset: SegDataset, prep: VolumePrep, predict, finish, workers: int,
               progress: Callable[[int, int], None] | None) -> list:
    """``finish(logits, box, case)`` of each case, in ``ids``' order: ``workers`` threads load and
    preprocess up to ``workers`` cases ahead of ``predict`` (in this thread) and finish the predicted
    ones, at most ``workers`` at a time (each holds a case's logits); an error, in loading, predicting or
    finishing, stops the rest."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor, wait

    def prepare(case_id: str):
        case = dataset.load_test(case_id)
        return (case, *_patch_input(case, prep))

    with cancelling(ThreadPoolExecutor(workers, thread_name_prefix="bench-eval")) as pool:
        ahead = deque(pool.submit(prepare, c) for c in ids[:workers])
        finishing: list = []
        for i in range(len(ids)):
            case, x, box = ahead.popleft().result()
            if i + workers < len(ids):
                ahead.append(pool.submit(prepare, ids[i + workers]))
            logits = predict(x)
            del x
            busy = [f for f in finishing if not f.done()]
            if len(busy) >= workers:  # memory: no more than ``workers`` cases' logits waiting
                wait(busy, return_when="FIRST_COMPLETED")
            for f in finishing:  # a case that failed to finish stops the rest now, not after all are predicted
                if f.done() and f.exception() is not None:
                    raise f.exception()
            finishing.append(pool.submit(finish, logits, box, case))
            del logits
            if progress is not None:
                progress(sum(f.done() for f in finishing), len(ids))
        out = [f.result() for f in finishing]
    if progress is not None:
        progress(len(ids), len(ids))
    return out
