"""Shared test settings: the CI machine has 2 shared cores, so keep torch single-threaded. Tests
marked ``cuda`` need a CUDA device; elsewhere they are skipped, and a lent GPU runs them alone with
``pytest -m cuda`` (scripts/device_check.sh)."""

import pytest
import torch

torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (GPU machines only; select with -m cuda)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (GPU machines only)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)
