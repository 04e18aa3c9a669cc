"""nnU-Net v2's preprocessing of a case, for patch protocols (``patch_size``), in its
DefaultPreprocessor's order:

1. crop to the non-zero region: the bounding box of the voxels non-zero in any channel, holes
   filled; label voxels of background outside that region become -1 (``nonzero_box``);
2. normalise (``normalize``, with the training foreground's statistics for ``ct_foreground``); a
   z-scored channel takes its mean and std inside the non-zero region only, and leaves the outside
   at 0, where nnU-Net's planner says so (``mask_norm``: cropping took away over a quarter of the
   median training case);
3. resample to the protocol's ``target_spacing`` (``bench.data.resample``); under a 2-D patch
   protocol (nnU-Net's 2d configuration) in-plane only, each volume keeping its slice spacing.

A case is a volume (D, H, W); a 2-D case (a PNG) is a volume of one slice with no spacing, which no
target spacing resamples (nnU-Net gives natural images spacing 1 everywhere).

Training patches are cut from cases preprocessed once (kept under ``<results>/cache``); a test
case is preprocessed the same way, predicted by the sliding window (2-D: slice by slice), its logits resampled back to
the cropped grid, and the argmax pasted into background of the case's own shape, where it is
scored (nnU-Net's export). The dataset-level inputs (foreground statistics, the target spacing's
cropped shapes, the median share cropping keeps) come from one pass over the training cases, as
nnU-Net's fingerprint does; what they decide (``intensity_stats``, ``target_spacing``,
``mask_norm``) goes into the run's record.

Not reproduced: the axis transposition nnU-Net plans so that the coarsest axis comes first (the
(z, y, x) order the NIfTI reader gives already has it first where z is the coarsest). In 3-D it only
orders the axes; under 2-D patches it picks the axis slices are cut across, so ``bench run`` warns
where another axis is the coarsest (``slicing_note``).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from bench.data.intensity import case_draws, samples_per_case, statistics_of
from bench.data.resample import new_shape, nnunet_target_spacing, resample
from bench.errors import BenchError
from bench.transforms import normalize_image, volume_chw

MASK_NORM_BELOW = 0.75  # nnU-Net: z-score inside the non-zero region when cropping keeps less (median)
PREPROCESS_PROCESSES = {2: 8, 3: 4}  # nnU-Net's default -np for its 2d and 3d_fullres configurations


def as_volume(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D case (image (H, W) or (H, W, C), label (H, W)) as a volume of one slice, as nnU-Net reads
    PNGs ((C, 1, H, W)); a volume as it is."""
    return (image[None], label[None]) if np.ndim(label) == 2 else (image, label)


def nonzero_box(image: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
    """nnU-Net's ``crop_to_nonzero`` for a (D, H, W) or channels-last volume: the bounding box of the voxels
    non-zero in any channel with holes filled (the whole volume when none is), and that mask inside it."""
    chans = image[..., None] if image.ndim == 3 else image
    mask = ndimage.binary_fill_holes(np.any(chans != 0, axis=-1))
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape), mask
    box = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box), mask[tuple(box)]


@dataclass(frozen=True)
class VolumePrep:
    """How a volume reaches the network: cropped, normalised by ``normalize`` (with ``stats``; z-scores
    inside the non-zero region when ``mask_norm``), then resampled to ``spacing`` (mm per axis, (z, y,
    x); (y, x): in-plane only, the volume keeping its slice spacing, nnU-Net's 2d configuration), or
    kept on its grid when None."""

    normalize: str
    stats: list[dict[str, float]] | None = None
    spacing: tuple[float, ...] | None = None
    mask_norm: bool = False

    def _native(self, spacing: Sequence[float] | None, what: str) -> tuple[float, ...]:
        if spacing is None:
            raise BenchError(f"{what}: no voxel spacing, so it cannot be resampled to the target spacing "
                             f"{list(self.spacing)} mm")
        return tuple(float(s) for s in spacing)

    def _target(self, native: tuple[float, ...]) -> tuple[float, ...]:
        return native[:len(native) - len(self.spacing)] + tuple(self.spacing)

    def image(self, image: np.ndarray, spacing: Sequence[float] | None,
              what: str = "the volume") -> tuple[np.ndarray, tuple[slice, ...]]:
        """(D, H, W) or channels-last (D, H, W, C) -> float32 (C, *grid) and the crop box it came from."""
        box, mask = nonzero_box(image)
        return self._image(image[box], mask, spacing, what), box

    def _image(self, cropped: np.ndarray, mask: np.ndarray, spacing, what: str) -> np.ndarray:
        if self.mask_norm and self.normalize == "zscore":  # nnU-Net's ZScoreNormalization, use_mask_for_norm
            x = volume_chw(np.asarray(cropped, dtype=np.float32)).copy()
            for ch in x:
                inside = ch[mask].astype(np.float64)
                if inside.size:
                    ch[mask] = (inside - inside.mean()) / max(inside.std(), 1e-8)
        else:
            x = volume_chw(normalize_image(cropped, self.normalize, spatial_dims=3, stats=self.stats))
        if self.spacing is None:
            return x
        native = self._native(spacing, what)
        target = self._target(native)
        return resample(x, new_shape(x.shape[1:], native, target), native, target, order=3)

    def case(self, image: np.ndarray, label: np.ndarray, spacing: Sequence[float] | None,
             what: str = "the volume") -> tuple[np.ndarray, np.ndarray]:
        """A training case: image float32 (C, *grid), label (*grid) in a signed type, -1 outside the
        non-zero region (where nnU-Net's sampling and augmentation treat it as padding). A masked z-score
        here covers the labelled voxels too (nnU-Net's mask: seg >= 0)."""
        box, mask = nonzero_box(image)
        lab = np.asarray(label[box]).astype(np.min_scalar_type(-int(label.max(initial=0)) - 1))
        lab[(lab == 0) & ~mask] = -1
        x = self._image(image[box], lab >= 0, spacing, what)
        if self.spacing is not None:
            native = self._native(spacing, what)
            lab = resample(lab[None], x.shape[1:], native, self._target(native), order=1, labels=True)[0]
        return x, lab

    def labels_back(self, logits: np.ndarray, box: tuple[slice, ...], shape: Sequence[int],
                    spacing: Sequence[float] | None, what: str = "the volume") -> np.ndarray:
        """Logits (K, *grid) of ``image``'s output -> int64 class ids of the case's ``shape``: the logits
        resampled back to the crop box (nnU-Net resamples logits, order 1), their argmax pasted into
        background."""
        if self.spacing is not None:
            crop = tuple(s.stop - s.start for s in box)
            native = self._native(spacing, what)
            logits = resample(logits, crop, self._target(native), native, order=1)
        out = np.zeros(tuple(shape), dtype=np.int64)
        out[box] = np.argmax(logits, axis=0)
        return out

    @property
    def key(self) -> str:
        """A short signature of everything that changes a preprocessed volume (cache file names)."""
        text = json.dumps([self.normalize, self.stats, self.spacing, self.mask_norm], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


FINGERPRINT_FORMAT = 1  # bump when what a cached fingerprint holds or means changes


def _case_fingerprint(dataset, per_case: int | None, case: str):
    """One training case's part of the fingerprint: its shape after cropping, the share of its voxels
    cropping keeps, and (``per_case``) its foreground draws (nnU-Net samples the cropped case)."""
    image, label = as_volume(*dataset.train_case(case))
    box, _ = nonzero_box(image)
    shape = [s.stop - s.start for s in box]
    kept = float(np.prod(shape) / np.prod(label.shape))
    return shape, kept, None if per_case is None else case_draws(image[box], label[box], per_case)


def _fingerprint(dataset, protocol) -> None:
    """Fill what ``protocol`` needs and ``dataset`` lacks (``foreground_stats``, ``target_spacing``,
    ``mask_norm``) from one pass over the training cases, as nnU-Net's fingerprint: the statistics of
    the foreground, each case's spacing (its header) and shape after cropping, the share cropping keeps.
    The pass runs in several processes, as nnU-Net's does (``preprocess_processes``), and what it
    found is kept beside the dataset's cached volumes (``volume_folder``), so that the other runs of a
    grid on the same training cases (seeds, models) read it instead of decoding every case again."""
    need_stats = protocol.normalize == "ct_foreground" and dataset.foreground_stats is None
    # 2-D cases (PNG) have no spacing: nnU-Net gives them 1 everywhere, which resamples nothing
    need_spacing = protocol.target_spacing == "nnunet" and dataset.target_spacing is None and dataset.volumes
    need_mask = protocol.normalize == "zscore" and dataset.mask_norm is None
    if not (need_stats or need_spacing or need_mask):
        return
    ids = dataset.train_volume_ids()
    path = _fingerprint_path(dataset, ids)
    found = _read_fingerprint(path)
    if found is None or (need_stats and found["stats"] is None):
        per_case = samples_per_case(len(ids)) if need_stats else None
        processes = preprocess_processes(len(ids), len(protocol.patch_size))
        parts = list(_over_cases(_case_fingerprint, (dataset, per_case), ids, processes, ordered=True))
        found = {"format": FINGERPRINT_FORMAT, "cases": ids, "shapes": [p[0] for p in parts],
                 "kept": [p[1] for p in parts], "stats": statistics_of([p[2] for p in parts], f"the {len(ids)} training cases of {dataset.root}")
                 if need_stats else None}
        if path is not None:
            _write_fingerprint(path, found)
    if need_stats:
        dataset.foreground_stats = found["stats"]
    if need_spacing:
        spacings = [spacing for _, spacing in dataset.train_geometry()]
        # nnU-Net's 2d configuration takes the in-plane part of the 3d_fullres spacing
        dataset.target_spacing = nnunet_target_spacing(spacings, found["shapes"])[-len(protocol.patch_size):]
    if dataset.mask_norm is None:
        dataset.mask_norm = bool(np.median(found["kept"]) < MASK_NORM_BELOW)


def _fingerprint_path(dataset, ids: Sequence[str]) -> Path | None:
    """Where the fingerprint of these training cases is kept: named by their files' stamps (an edited
    file, another split or another label set makes another one); None without a volume cache."""
    folder = getattr(dataset, "volume_folder", None)
    if folder is None:
        return None
    key = json.dumps([FINGERPRINT_FORMAT, [dataset.source_stamp(c) for c in ids], dataset.num_classes])
    return folder / f"fingerprint.{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _read_fingerprint(path: Path | None) -> dict | None:
    try:
        found = json.loads(path.read_text(encoding="utf-8")) if path is not None else None
    except (OSError, ValueError):  # none yet, or unreadable: computed again
        return None
    return found if isinstance(found, dict) and found.get("format") == FINGERPRINT_FORMAT else None


def _write_fingerprint(path: Path, found: dict) -> None:
    from bench.fileio import atomic_write_text

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(found))
    except OSError as exc:  # the volumes will need the folder too: their error names it
        warnings.warn(f"{path.parent}: cannot keep the dataset fingerprint there ({exc.strerror or exc})")


def slicing_note(root, spacings: Sequence[Sequence[float]]) -> str | None:
    """Where a 2-D patch protocol's slices are not nnU-Net's, given the training volumes' spacings (z, y, x):
    its 2d configuration slices along the axis of the coarsest median spacing (the planner's transposition
    puts it first), this project along axis 0. A line naming both and the data at ``root``, or None where
    they agree."""
    median = np.median(np.asarray(spacings, dtype=np.float64), axis=0)
    coarsest = int(np.argmax(median))
    if coarsest == 0:
        return None
    return (f"{root}: the training volumes' coarsest axis is axis {coarsest} (median spacing "
            f"(z, y, x) ({', '.join(f'{v:.4g}' for v in median)}) mm); nnU-Net's 2d "
            "configuration slices along it, 2-D patch protocols here along axis 0")


def patch_fit_note(patch: Sequence[int], shapes: Sequence[Sequence[int]]) -> str | None:
    """A line where ``patch`` is larger than every preprocessed training case (``shapes``, the grids
    patches are cut from; 2-D patches: their in-plane part) along some axis, else None. Every patch is
    then mostly padding, computed at the patch's full cost: a recipe's patch copied onto smaller data.
    nnU-Net's planner keeps a patch within the median case."""
    grids = np.asarray([tuple(s)[-len(patch):] for s in shapes])
    largest = grids.max(axis=0)
    over = [i for i, (p, n) in enumerate(zip(patch, largest)) if p > n]
    if not over:
        return None
    median = [int(v) for v in np.median(grids, axis=0)]
    share = float(np.prod(np.minimum(patch, largest)) / np.prod(patch))
    return (f"patch_size {list(patch)} is larger than every training case along axis {', '.join(map(str, over))} "
            f"(largest case {[int(v) for v in largest]}, median {median} after preprocessing): at most "
            f"{share:.0%} of a patch is data, the rest padding computed at full cost; nnU-Net plans patches within "
            f"the median case: give the protocol a patch_size that fits this data (--patch-size tries one)")


def target_spacing(dataset, protocol) -> tuple[float, ...] | None:
    """The spacing ``protocol.target_spacing`` names for ``dataset``: None for "native", the given
    (z, y, x) (2-D patches: (y, x)), or for "nnunet" the 3d_fullres rule over the training cases'
    spacings and cropped shapes (2-D: its in-plane part; 2-D cases without spacings: None), from
    ``dataset.target_spacing`` where a run's record set it, else computed once and kept there."""
    spec = protocol.target_spacing
    if spec == "native":
        return None
    if spec != "nnunet":
        return tuple(float(v) for v in spec)
    _fingerprint(dataset, protocol)
    return None if dataset.target_spacing is None else tuple(float(v) for v in dataset.target_spacing)


def volume_prep(dataset, protocol) -> VolumePrep:
    """The preprocessing of ``dataset``'s cases under a patch ``protocol``."""
    _fingerprint(dataset, protocol)
    stats = dataset.foreground_stats if protocol.normalize == "ct_foreground" else None
    mask_norm = protocol.normalize == "zscore" and bool(dataset.mask_norm)
    return VolumePrep(protocol.normalize, stats, target_spacing(dataset, protocol), mask_norm)


def preprocess_processes(n_cases: int, patch_dims: int, threads: int | None = None) -> int:
    """How many processes preprocess training cases at once: nnU-Net's default for the configuration
    (4 in 3-D, where a large CT volume's resampling holds a few GB, 8 in 2-D), at most the CPU
    threads the run may use (``cpu_budget``) and the number of cases."""
    threads = cpu_budget() if threads is None else threads
    return max(1, min(n_cases, threads, PREPROCESS_PROCESSES[patch_dims]))


def cpu_budget() -> int:
    """The run's CPU threads (torch's: ``--threads``). In one of several processes torchrun started
    (WORLD_SIZE > 1), which it gives one thread each unless told otherwise, the cores this process may
    run on: only rank 0 preprocesses, while the others wait for it."""
    import os

    import torch

    from bench.env import usable_cores

    threads = torch.get_num_threads()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        threads = max(threads, usable_cores())
    return threads


_job: tuple = ()  # what a preprocessing process works with: (dataset, ...) after _start_job


def _start_job(*job) -> None:
    global _job
    import torch

    torch.set_num_threads(1)  # the work is numpy/scipy; the processes share the cores
    _job = job


def _run_job(fn, case: str):
    return fn(*_job, case)


def _over_cases(fn, job: tuple, ids: Sequence[str], processes: int, *, ordered: bool) -> Iterator:
    """``fn(*job, case)`` for each case id, in ``processes`` processes (``job`` is sent to each once) or in
    this one; results in ``ids``' order where ``ordered``, else as they finish. An error stops the
    pending cases and is raised here."""
    if processes <= 1:
        for case in ids:
            yield fn(*job, case)
        return
    # spawned, not forked: a fork copies the locks that the progress display's and other threads may
    # hold at that moment, and a child that then writes (a warning) could wait on them forever
    with cancelling(ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_start_job, initargs=job)) as pool:
        futures = [pool.submit(_run_job, fn, case) for case in ids]
        for done in futures if ordered else as_completed(futures):
            yield done.result()


@contextmanager
def cancelling(pool: Executor) -> Iterator[Executor]:
    """``pool`` for the block, then shut down waiting for its running work; when the block raises (a
    case's error, Ctrl-C, a consumer that stops early), the work not yet started is cancelled first
    rather than run to the end (what ``with pool:`` would do)."""
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _cache_case(dataset, prep: VolumePrep, case: str) -> str:
    dataset.load_train_volume(case, prep)
    return case


def cache_training_volumes(dataset, prep: VolumePrep, processes: int = 1) -> Iterator[str]:
    """Preprocess every training case of ``dataset`` into its volume cache (``load_train_volume``),
    yielding each case id when it is there: in ``processes`` processes, as nnU-Net preprocesses, or
    in this one. The files do not depend on the number."""
    yield from _over_cases(_cache_case, (dataset, prep), dataset.train_volume_ids(), processes, ordered=False)
