"""Predict test cases the way each protocol's authors did, then score them with bench.metrics.

- Volumes (Synapse, nnU-Net NIfTI): slice by slice, each slice zoomed to ``img_size`` with
  ``eval.image_order`` (TransUNet: cubic), softmax + argmax, the label map zoomed back to the
  slice's native size with ``eval.label_order`` (nearest); scored per volume at native resolution.
- 2-D images with integer labels (nnU-Net PNG): the same, per image.
- 2-D binary images (ISIC, polyp): image and mask resized to ``img_size`` (bilinear), sigmoid,
  ``>= eval.threshold``; ground truth ``mask >= 0.5``; scored at ``img_size`` (VM-UNet engine.py).

Nothing here imports the training loop: evaluation works on any model that follows the forward
contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from bench import metrics
from bench.data.base import Case, SegDataset
from bench.protocol import Protocol
from bench.transforms import prepare_binary_pair, prepare_slice, zoom_labels_back


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


@torch.no_grad()
def _predict(model: nn.Module, inputs: list[torch.Tensor], protocol: Protocol, device: torch.device,
             binary: bool, batch_size: int) -> np.ndarray:
    """Model-resolution label maps (N, S, S) for prepared inputs (C, S, S)."""
    out = []
    for i in range(0, len(inputs), batch_size):
        batch = torch.stack(inputs[i:i + batch_size]).to(device, dtype=protocol.torch_dtype)
        logits = model(batch).float()
        if binary:
            pred = (logits.sigmoid()[:, 0] >= protocol.eval.threshold).to(torch.uint8)
        else:
            pred = logits.softmax(dim=1).argmax(dim=1)
        out.append(pred.cpu().numpy())
    return np.concatenate(out)


def predict_case(model: nn.Module, case: Case, protocol: Protocol, *, binary: bool,
                 device: torch.device, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Return (prediction, ground truth) as integer label maps on the grid they are scored on."""
    model.eval()
    images = list(case.image) if case.is_volume else [case.image]
    if binary:  # VM-UNet: image and mask resized bilinearly, scored at model resolution
        labels = list(case.label) if case.is_volume else [case.label]
        pairs = [prepare_binary_pair(img, lab, protocol) for img, lab in zip(images, labels)]
        pred = _predict(model, [x for x, _ in pairs], protocol, device, True, batch_size)
        gt = np.stack([m >= 0.5 for _, m in pairs]).astype(np.uint8)
    else:  # TransUNet: slice zoom in, argmax, nearest zoom back, scored at native resolution
        small = _predict(model, [prepare_slice(img, protocol) for img in images], protocol, device, False, batch_size)
        native = case.label.shape[-2:]
        pred = np.stack([zoom_labels_back(p, native, protocol.eval.label_order) for p in small])
        gt = case.label.astype(np.int64)
    return (pred, gt) if case.is_volume else (pred[0], gt if gt.ndim == 2 else gt[0])


def scored_ids(dataset: SegDataset, protocol: Protocol) -> list[str]:
    """The test cases a run under ``protocol`` scores: all, or the first ``eval.max_cases``."""
    ids = dataset.test_ids()
    return ids[: protocol.eval.max_cases] if protocol.eval.max_cases > 0 else ids


def evaluate(model: nn.Module, dataset: SegDataset, protocol: Protocol, policy: str, *, device: torch.device,
             progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """Score every test case of ``dataset`` under ``policy``; rows keep raw counts for re-aggregation."""
    binary = dataset.binary
    model.to(device=device, dtype=protocol.torch_dtype)
    ids = scored_ids(dataset, protocol)
    rows: list[dict[str, Any]] = []
    nsd_tolerance = resolve_nsd_tolerance(protocol, dataset, policy)  # before any case is predicted
    spacings: list[tuple[float, ...] | None] = []
    volumes = False
    for i, case_id in enumerate(ids):
        case = dataset.load_test(case_id)
        pred, gt = predict_case(model, case, protocol, binary=binary, device=device)
        # binary tasks are scored at model resolution, where the native spacing no longer holds
        spacing = None if binary else case.spacing
        spacings.append(spacing)
        volumes = volumes or case.is_volume
        for row in metrics.score_case(pred, gt, dataset.num_classes, policy, spacing=spacing,
                                      class_names=dataset.class_names, nsd_tolerance=nsd_tolerance):
            rows.append({"case": case_id, **row})
        if progress is not None:
            progress(i + 1, len(ids))
    scores = metrics.aggregate(rows, policy)
    if isinstance(nsd_tolerance, dict):  # records.load shows it as the text "liver 5, spleen 3"
        scores["nsd_tolerances"] = nsd_tolerance
    elif nsd_tolerance is not None:
        scores["nsd_tolerance"] = nsd_tolerance  # a run column, so boards can say it
    return EvalResult(
        per_case=rows,
        per_class=metrics.aggregate_per_class(rows, policy),
        metrics=scores,
        hd95_unit=hd95_unit(policy, spacings, volumes),
    )
