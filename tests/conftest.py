"""Shared test settings: the CI machine has 2 shared cores, so keep torch single-threaded."""

import torch

torch.set_num_threads(1)
