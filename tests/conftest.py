"""Shared test settings: the CI machine has 2 shared cores, so keep torch single-threaded. Tests
marked ``cuda`` need a CUDA device; elsewhere they are skipped, and a lent GPU runs them alone with
``pytest -m cuda`` (scripts/device_check.sh)."""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

RESULTS = Path(__file__).resolve().parents[1] / "results"  # the checkout's: what the repo commits, and `make demo`'s


@pytest.fixture(autouse=True, scope="session")
def _nothing_written_into_the_checkout():
    """A command without --results writes under ./results: a test that forgets it leaves files in the
    checkout (a plugin's profile did), which a later `git add` may commit."""
    before = set(RESULTS.rglob("*"))
    yield
    if new := sorted(str(p.relative_to(RESULTS)) for p in set(RESULTS.rglob("*")) - before):
        pytest.fail(f"tests wrote into {RESULTS}: {', '.join(new[:5])}; give the command --results tmp_path", pytrace=False)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (GPU machines only; select with -m cuda)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (GPU machines only)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)
