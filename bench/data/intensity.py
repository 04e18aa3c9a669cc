"""Intensity statistics of the training foreground, for ``normalize = "ct_foreground"``.

nnU-Net's CTNormalization clips each CT channel to the 0.5th-99.5th percentile of the foreground
intensities of the training cases and z-scores it with their mean and standard deviation. Its
dataset fingerprint (nnU-Net v2 ``DatasetFingerprintExtractor``) estimates them from 10^8 voxels:
``int(10e7 // n_cases)`` drawn with replacement from each case's labelled (label > 0) voxels by
``RandomState(1234).choice``, one generator per case shared by its channels in order, then
``np.mean``, ``np.std`` and ``np.percentile`` over all draws. Done here the same way, over the cases
of the run's training split (nnU-Net fingerprints every case in imagesTr: the same cases where, as
in LightM-UNet's datasets, imagesTr holds the training cases only; here the test cases never
inform the normalisation). About 400 MB of float32 draws per channel whatever the data's size,
twice that while they are joined (float64 where a case has no foreground, as in nnU-Net).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from bench.errors import BenchError

NNUNET_SAMPLES = 10e7  # num_foreground_voxels_for_intensitystats: all cases together
NNUNET_SEED = 1234


def foreground_statistics(cases: Iterable[tuple[np.ndarray, np.ndarray]], n_cases: int,
                          total_samples: float = NNUNET_SAMPLES, where: str = "the training cases") -> list[dict[str, float]]:
    """Per channel {mean, std, percentile_00_5, percentile_99_5} (nnU-Net's names) of the foreground of
    ``cases``: ``n_cases`` (image, label) pairs, image spatial or channels-last (spatial + C); ``where``
    names them in the error where none holds foreground."""
    per_case = samples_per_case(n_cases, total_samples)
    return statistics_of([case_draws(image, label, per_case) for image, label in cases], where)


def samples_per_case(n_cases: int, total_samples: float = NNUNET_SAMPLES) -> int:
    return int(total_samples // n_cases)


def case_draws(image: np.ndarray, label: np.ndarray, per_case: int) -> list[np.ndarray]:
    """One case's share of the samples, per channel: ``per_case`` foreground intensities drawn with
    replacement by one ``RandomState(1234)`` for the case, channel after channel."""
    mask = np.asarray(label) > 0
    image = np.asarray(image)
    chans = image[..., None] if image.ndim == mask.ndim else image
    rs = np.random.RandomState(NNUNET_SEED)
    # a case without foreground gives nothing: nnU-Net's empty list, whose float64 turns the
    # concatenation (and so the mean and std) into float64 too
    return [rs.choice(chans[..., c][mask], per_case, replace=True) if mask.any() else np.array([])
            for c in range(chans.shape[-1])]


def statistics_of(draws: list[list[np.ndarray]], where: str = "the training cases") -> list[dict[str, float]]:
    """The statistics of every case's draws (``case_draws``, in case order), per channel; ``where``: the cases,
    for the error where none holds foreground."""
    if not any(len(case[0]) for case in draws):
        raise BenchError(f"normalize 'ct_foreground' needs foreground (label > 0) in {where}; none has any, so "
                         "there are no intensities to take its window from: check the labels (bench data verify), "
                         "or set normalize otherwise in a protocol file of your own")
    out = []
    for c in range(len(draws[0])):
        x = np.concatenate([case[c] for case in draws])
        lo, hi = np.percentile(x, [0.5, 99.5])
        out.append({"mean": float(np.mean(x)), "std": float(np.std(x)),
                    "percentile_00_5": float(lo), "percentile_99_5": float(hi)})
    return out


def intensity_stats(dataset, protocol) -> list[dict[str, float]] | None:
    """The statistics ``protocol.normalize`` needs from ``dataset``'s training cases: its
    ``foreground_stats`` (set from a run's record when the run is rescored or predicted), else
    computed once and kept there; None for the modes that need none."""
    if protocol.normalize != "ct_foreground":
        return None
    if dataset.foreground_stats is None:
        if protocol.patches:  # from the cropped cases, in nnU-Net's one fingerprint pass
            from bench.data.preprocess import volume_prep  # imported here: preprocess builds on this module

            volume_prep(dataset, protocol)
        else:
            dataset.foreground_stats = foreground_statistics(
                dataset.train_cases(), dataset.n_train_cases,
                where=f"the {dataset.n_train_cases} training cases of {dataset.root}")
    return dataset.foreground_stats
