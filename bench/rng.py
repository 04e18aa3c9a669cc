"""The random number generators a run seeds, and the caller's kept: one seeding for every run
(`bench run`, rescore), and the caller's states back after a library call that seeds (a notebook's
own RNG goes on where it was)."""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed every RNG and fix cuDNN's kernel choice, as the authors' set-ups do (no-op on CPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    deterministic_kernels()


@contextmanager
def caller_rng_kept(cuda: bool = False) -> Iterator[None]:
    """The caller's RNG states and cuDNN flags back after the block (a notebook calling ``run_grid``,
    which seeds every RNG and fixes cuDNN's kernels per run, goes on with its own). ``cuda``: the
    block uses the GPU (torch.manual_seed seeds it too), so its state is kept even where the block is
    what starts CUDA."""
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if cuda or torch.cuda.is_initialized() else None
    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags


def deterministic_kernels() -> None:
    """cuDNN's deterministic kernels, without autotuning (no-op on CPU): benchmark mode times
    candidate kernels per shape and keeps the fastest, which varies by run."""
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
