"""``torch.utils.data.Dataset`` over a ``SegDataset``'s training items.

Randomness: item ``index`` in epoch ``e`` draws from ``np.random.default_rng([seed, e, index])``
(``[seed, e, index, draw]`` in an epoch of draws with replacement) and nothing else (no global
``random``/``numpy`` state, no worker seeds), so a batch is bit-identical whatever ``num_workers``
is and whichever worker loads it. TransUNet (and Swin-Unet) instead seed Python ``random`` per
worker (``worker_init_fn``) and leave NumPy's global state, which draws k, the flip axis and the
angle, as every worker inherits it: its augmentations depend on the worker count, and each worker
may replay one parameter sequence every epoch. We reproduce the distribution, not that coupling.

Call ``set_epoch(e)`` before creating the epoch's iterator (``for batch in loader``). The epoch
lives in a one-element shared-memory tensor, so workers see it even with
``persistent_workers=True`` (they would otherwise keep the copy of the dataset they started with).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import Dataset

from bench.data.base import SegDataset
from bench.data.intensity import intensity_stats
from bench.data.preprocess import volume_prep
from bench.transforms import TrainTransform


class TrainDataset(Dataset):
    """Items ``(image float32 (C, S, S), label)``; label int64 (S, S) or float32 (1, S, S) (binary).

    Example::

        train = TrainDataset(open_dataset("synapse", root), protocol, seed=1234)
        loader = DataLoader(train, batch_size=protocol.train.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(1234))
        for epoch in range(protocol.train.epochs):
            train.set_epoch(epoch)
            for images, labels in loader: ...
    """

    def __init__(
        self,
        dataset: SegDataset,
        protocol,
        seed: int,
        *,
        ids: list[str] | None = None,
        transform: TrainTransform | None = None,
    ):
        self.dataset = dataset
        self.seed = int(seed)
        volumes = protocol.patches  # patch protocols cut patches from whole training cases
        # cases cropped, normalised and resampled (nnU-Net's preprocessing; once per run with bench
        # run's cache, else per item), patches cut from them
        prep = volume_prep(dataset, protocol) if volumes else None
        self.load = functools.partial(dataset.load_train_volume, prep=prep) if volumes else dataset.load_train
        self.ids = list((dataset.train_volume_ids() if volumes else dataset.train_ids()) if ids is None else ids)
        self.transform = transform or TrainTransform(protocol, binary=dataset.binary, run_seed=self.seed,
                                                     stats=intensity_stats(dataset, protocol),
                                                     mask_outside=bool(prep and prep.mask_norm))
        self._epoch = torch.zeros((), dtype=torch.int64)
        try:
            self._epoch.share_memory_()
        except RuntimeError:  # no shared memory here: fine without persistent workers
            pass

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.ids)

    def rng(self, index: int, draw: int | None = None) -> np.random.Generator:
        key = [self.seed, self.epoch, int(index)] + ([] if draw is None else [int(draw)])
        return np.random.default_rng(key)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``key``: an item index, or ``(index, draw)`` from an epoch drawn with replacement
        (``EpochBatches(draws=...)``), whose augmentation also depends on the draw. The transform is
        called as ``transform(sample, rng, draw)`` (draw None for an index)."""
        index, draw = key if isinstance(key, tuple) else (key, None)
        sample = self.load(self.ids[index])
        return self.transform(sample, self.rng(index, draw), draw)
