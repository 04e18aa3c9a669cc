"""Shared test settings: the CI machine has 2 shared cores, so keep torch single-threaded. Tests
marked ``cuda`` need a CUDA device; elsewhere they are skipped, and a lent GPU runs them alone with
``pytest -m cuda`` (scripts/device_check.sh)."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

# What the user's shell may hold changes what commands print (BENCH_DEBUG: tracebacks, Python's warning
# format) and which scan runs (BENCH_SCAN_BACKEND); the tests that want them set them themselves.
for _name in ("BENCH_DEBUG", "BENCH_SCAN_BACKEND"):
    os.environ.pop(_name, None)


def _kernel_cache() -> None:
    """The kernel folder bench uses without BENCH_EXTENSIONS_DIR, named by it, where bench would take it so
    named (its own, not a link, not writable by others: checked only of a named folder); elsewhere the
    kernel is built in the tests' cache."""
    if os.environ.get("BENCH_EXTENSIONS_DIR"):
        return
    from bench import fileio

    try:
        folder = fileio.cache_dir("torch_extensions")
        fileio._check_private(folder, "")
    except OSError:
        return
    os.environ["BENCH_EXTENSIONS_DIR"] = str(folder)


# bench's caches (file digests, label ids) in a folder of this process's own, so the tests neither fill the
# user's ~/.cache nor read what older code wrote there; the compiled scan kernel stays where it is (a build
# takes a minute). Subprocesses inherit both.
_kernel_cache()
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="bench-tests-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)

RESULTS = Path(__file__).resolve().parents[1] / "results"  # the checkout's: what the repo commits, and `make demo`'s


def _files(folder: Path) -> set[tuple[str, int, int]]:
    """(path, size, mtime) of every file below ``folder``: a file written anew, or over (the committed
    baseline by a `bench check --update`), shows as another entry."""
    out = set()
    for parent, _, names in os.walk(folder):  # a folder removed meanwhile (results/demo) is passed over
        for name in names:
            try:
                st = os.stat(os.path.join(parent, name))
            except OSError:
                continue
            out.add((os.path.relpath(os.path.join(parent, name), folder), st.st_size, st.st_mtime_ns))
    return out


@pytest.fixture(autouse=True, scope="session")
def _nothing_written_into_the_checkout():
    """A command without --results writes under ./results: a test that forgets it leaves files in the
    checkout (a plugin's profile did), or rewrites what it commits. Reported at the end of the session
    (by the test that ran last in its process, not necessarily the one that wrote)."""
    before = _files(RESULTS)
    yield
    if new := sorted({path for path, *_ in _files(RESULTS) - before}):
        pytest.fail(f"tests wrote into {RESULTS}: {', '.join(new[:5])}; give the command --results tmp_path", pytrace=False)


@pytest.fixture(autouse=True, scope="session")
def _commands_without_encoding_warnings():
    """`make test`'s PYTHONWARNDEFAULTENCODING=1 checks our modules in the processes that run tests (pyproject's
    filterwarnings); the bench commands tests start run as a user's, without it: torch and matplotlib warn of
    their own files there, on the stderr the tests read. A fixture, not at import: pytest-xdist's workers,
    started after this file is read, must inherit it."""
    os.environ.pop("PYTHONWARNDEFAULTENCODING", None)


@pytest.fixture
def bench_here(monkeypatch, capsys):
    """``bench_here(*args, check=True)``: tests.fixtures.run_bench_here with this test's monkeypatch and capsys,
    ``bench ARGS`` in this process: a refusal's exit code and message without a new process's 1-3 s of imports."""
    from tests.fixtures import run_bench_here

    return lambda *args, check=True: run_bench_here(monkeypatch, capsys, *args, check=check)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (GPU machines only; select with -m cuda)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (GPU machines only)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)
