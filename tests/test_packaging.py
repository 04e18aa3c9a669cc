"""A wheel of the project holds every file bench reads from its own folders: an installed bench has
no checkout beside it (no results/, no git)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from bench import env
from tests.test_env import _digest_of

ROOT = Path(__file__).resolve().parent.parent


def test_a_wheel_ships_protocols_the_kernel_source_and_the_published_numbers(tmp_path):
    src = tmp_path / "src"
    for package in env.CODE_PACKAGES:
        shutil.copytree(ROOT / package, src / package, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "results", src / "results", ignore=shutil.ignore_patterns("demo", "records", "profiles"))
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"bench/protocols/{p.name}" for p in (ROOT / "bench" / "protocols").glob("*.toml")}
    assert shipped and shipped <= names
    assert "ssm_models/csrc/selective_scan_cpu.cpp" in names
    # the papers' numbers (bench report --published): a copy of the checkout's one file, which no link in the
    # packages stands for (Windows checks a link out as a file holding its path)
    assert not [p for pkg in env.CODE_PACKAGES for p in (ROOT / pkg).rglob("*") if p.is_symlink()]
    assert zipfile.ZipFile(wheel).read("bench/published.csv") == (ROOT / "results" / "published.csv").read_bytes()
    # the sources the records' code_digest covers are all there, and a wheel digests as its checkout does
    ours = {f"{pkg}/{p.relative_to(ROOT / pkg).as_posix()}" for pkg in env.CODE_PACKAGES
            for p in (ROOT / pkg).rglob("*") if p.suffix in (".py", ".toml", ".cpp") and "__pycache__" not in p.parts}
    assert ours <= names
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    assert _digest_of(unpacked) == env.source_digest.__wrapped__()  # the files now, not this process's cache
    # its messages name the table it reads, the copy (they named results/published.csv, not there)
    named = subprocess.run([sys.executable, "-c", "from bench.published import DEFAULT_NAME; print(DEFAULT_NAME)"],
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(unpacked)}, capture_output=True,
                           text=True, check=True, encoding="utf-8").stdout.strip()
    assert named == str((unpacked / "bench" / "published.csv").resolve())
    from bench.published import DEFAULT_NAME

    assert DEFAULT_NAME == "results/published.csv"  # in this checkout, its place


def test_setup_refuses_a_cuda_torch_older_than_2_6(tmp_path):
    # the CUDA route keeps the machine's torch: one whose weights-only loading can be bypassed is refused
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(
        '__version__ = "2.5.1+cu121"\n\n\nclass cuda:\n    is_available = staticmethod(lambda: True)\n',
        encoding="utf-8")
    run_env = {**os.environ, "PYTHONPATH": str(tmp_path), "PYTHON": sys.executable, "VENV": str(tmp_path / "venv")}
    res = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], env=run_env, capture_output=True, text=True,
                         timeout=120, encoding="utf-8")
    assert res.returncode == 1 and "has CUDA torch 2.5.1+cu121, older than 2.6" in res.stderr
    assert "CVE-2025-32434" in res.stderr and not (tmp_path / "venv").exists()


def _python_of_version(folder: Path, version: tuple[int, int, int]) -> Path:
    """A python that reports ``version`` (its ``-c`` code runs in this one, sys.version_info replaced) and fails
    whatever else it is asked (a venv, a script on stdin): setup goes no further than its version check."""
    fake = folder / f"python{version[0]}.{version[1]}"
    said, info = ".".join(map(str, version)), (*version, "final", 0)
    fake.write_text(f'#!/bin/sh\ncase "$1" in\n  -V) echo "Python {said}";;\n'
                    f'  -c) exec {sys.executable} -c "import sys; sys.version_info = {info!r}\n$2";;\n'
                    '  *) exit 1;;\nesac\n', encoding="utf-8")
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("version", [(3, 10, 13), (3, 11, 0)])
def test_setup_refuses_a_python_older_than_3_11_before_installing_anything(tmp_path, version):
    # pip refused the project only after torch was fetched (several GB where PyPI's CUDA build is taken)
    python = _python_of_version(tmp_path, version)
    run_env = {**os.environ, "PYTHON": str(python), "VENV": str(tmp_path / "venv")}
    res = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], env=run_env, capture_output=True, text=True,
                         timeout=120, encoding="utf-8")
    assert res.returncode == 1 and not (tmp_path / "venv").exists()
    if version < (3, 11):
        assert f"setup: needs Python >= 3.11; {python} is Python 3.10.13" in res.stderr and not res.stdout
    else:  # past the check, to the venv the fake cannot make
        assert "needs Python" not in res.stderr and "installing the pinned CPU route" in res.stdout


def test_the_smoke_results_folder_is_the_users_own_unless_named(tmp_path):
    # a fixed /tmp path, emptied by make smoke and copied into the committed baseline, could be another user's
    planned = subprocess.run(["make", "-n", "-C", str(ROOT), "smoke"], capture_output=True, text=True, check=True,
                             timeout=60, encoding="utf-8").stdout
    assert f"rm -rf /tmp/ssm-unet-bench-smoke-{os.getuid()}\n" in planned
    named = subprocess.run(["make", "-n", "-C", str(ROOT), "smoke", f"SMOKE_RESULTS={tmp_path}"], capture_output=True,
                           text=True, check=True, timeout=60, encoding="utf-8").stdout
    assert f"rm -rf {tmp_path}\n" in named and "ssm-unet-bench-smoke" not in named


def _grid_with(tmp_path: Path, fails: str, models: str = "all") -> tuple[int, list[str]]:
    """scripts/smoke_grid.sh with a stand-in bench that logs each command's dataset and protocol and
    fails the one that names ``fails``: its exit code and the commands it ran."""
    log = tmp_path / "log"
    log.unlink(missing_ok=True)
    fake = tmp_path / "bench"
    fake.write_text('#!/usr/bin/env bash\nargs="$*"\n'
                    'ds=$(sed -E "s/.*--dataset ([^ ]+).*/\\1/" <<<"$args"); pr=$(sed -E "s/.*--protocol ([^ ]+).*/\\1/" <<<"$args")\n'
                    f'echo "$ds/$pr" >> {log}\n[[ " $args " == *" {fails} "* ]] && exit 7\nexit 0\n', encoding="utf-8")
    fake.chmod(0o755)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "smoke_grid.sh"), str(tmp_path / "out"), models],
                          env={**os.environ, "BENCH": str(fake)}, capture_output=True, text=True, timeout=60,
                          encoding="utf-8")
    return proc.returncode, sorted(log.read_text(encoding="utf-8").split()) if log.exists() else []


def test_the_drift_grid_fails_when_any_lane_fails(tmp_path):
    """The grid runs in two lanes (ISIC 2017 in the background): a lane's failure must fail `make check`,
    not leave CI green with a part of the grid unchecked; a failed Synapse run skips the nnU-Net runs."""
    everything = ["isic17/drift", "nnunet/drift_2d", "nnunet/drift_3d", "synapse/drift"]
    assert _grid_with(tmp_path, "nothing") == (0, everything)
    assert _grid_with(tmp_path, "isic17") == (7, everything)
    assert _grid_with(tmp_path, "synapse") == (7, ["isic17/drift", "synapse/drift"])
    assert _grid_with(tmp_path, "drift_3d") == (7, ["isic17/drift", "nnunet/drift_3d", "synapse/drift"])
    assert _grid_with(tmp_path, "nothing", models="unet") == (0, ["isic17/drift", "synapse/drift"])


def test_a_signal_to_the_drift_grid_stops_both_lanes(tmp_path):
    """A CI timeout sends SIGTERM to the script alone: bash runs its trap only once a foreground
    command ends, so the runs went on after the job was stopped. Both lanes' runs must end with it,
    and with a kill of the job's whole process group (which lanes in groups of their own escaped)."""
    fake = tmp_path / "bench"
    for how in ("script", "group"):
        pids = tmp_path / f"pids-{how}"
        fake.write_text(f'#!/usr/bin/env bash\necho $$ >> {pids}\nexec sleep 120\n', encoding="utf-8")
        fake.chmod(0o755)
        proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "smoke_grid.sh"), str(tmp_path / "out")],
                                env={**os.environ, "BENCH": str(fake)}, start_new_session=True)
        deadline = time.monotonic() + 30
        while (not pids.exists() or len(pids.read_text(encoding="utf-8").split()) < 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        running = [int(p) for p in pids.read_text(encoding="utf-8").split()]
        assert len(running) == 2  # one run per lane
        if how == "script":
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 143
        else:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        time.sleep(0.2)
        left = [p for p in running if _alive(p)]
        for p in left:
            os.kill(p, signal.SIGKILL)
        assert not left, f"runs of the drift grid outlived it ({how})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat")  # a zombie (its parent gone) is dead
    return not (state.exists() and state.read_text(encoding="utf-8").split(")")[-1].split()[0] == "Z")


def test_the_guard_against_tests_writing_into_the_checkout_watches_its_results_folder():
    """tests/conftest.py fails a session whose tests wrote under the checkout's results/ (a profile
    without --results did): pointed elsewhere, it would pass everything unseen."""
    from tests.conftest import RESULTS

    assert RESULTS == ROOT / "results" and (RESULTS / "baseline" / "smoke.csv").is_file()
