"""A wheel of the project holds every file bench reads from its own folders: an installed bench has
no checkout beside it (no results/, no git)."""

from __future__ import annotations

import json
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


# a stand-in torch: its version, and its CUDA (None: a CPU build)
_TORCH = ('__version__ = {version!r}\n\n\nclass cuda:\n    is_available = staticmethod(lambda: {available})\n'
          '\n\nclass version:\n    cuda = {cuda!r}\n')

# The venv's pip: logs each command (with MAMBA_KEEP_CUDA_BUILD as the shell line sets it), answers a dry run's
# --report with FAKE_TORCH (no report where empty, as offline), and "installs" a stand-in torch into the venv's
# site folder: FAKE_TORCH from the configured indexes, FAKE_CPU_INDEX_TORCH where PyTorch's CPU index is added.
# An install of the project puts a stand-in ssm_models whose kernels fail to load with FAKE_MAMBA_PROBLEM
# (load where empty).
_FAKE_PIP = """\
import json, os, sys
venv = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
args = sys.argv[1:]
keep = os.environ.get("MAMBA_KEEP_CUDA_BUILD")
with open(os.environ["FAKE_LOG"], "a", encoding="utf-8") as log:
    log.write(json.dumps(([f"MAMBA_KEEP_CUDA_BUILD={keep}"] if keep else []) + ["pip", *args]) + "\\n")
if "--dry-run" in args:
    if not os.environ["FAKE_TORCH"]:
        sys.exit(1)
    torch = {"metadata": {"name": "torch", "version": os.environ["FAKE_TORCH"]}}
    print(json.dumps({"version": "1", "install": [torch]}))
elif "torch==2.13.0" in args:
    version = os.environ["FAKE_CPU_INDEX_TORCH" if "--extra-index-url" in args else "FAKE_TORCH"]
    cuda = None if version.endswith("+cpu") or os.environ["FAKE_UNAME"] != "Linux" else "12.8"
    os.makedirs(os.path.join(venv, "site", "torch"))
    with open(os.path.join(venv, "site", "torch", "__init__.py"), "w", encoding="utf-8") as f:
        f.write(TORCH.format(version=version, cuda=cuda, available=cuda is not None))
elif "-e" in args:
    os.makedirs(os.path.join(venv, "site", "ssm_models"))
    open(os.path.join(venv, "site", "ssm_models", "__init__.py"), "w", encoding="utf-8").close()
    with open(os.path.join(venv, "site", "ssm_models", "scan.py"), "w", encoding="utf-8") as f:
        f.write("def mamba_kernels_problem():\\n    return %r or None\\n" % os.environ["FAKE_MAMBA_PROBLEM"])
"""


def _fake_setup(tmp_path: Path, *, system_torch: str | None = None, torchvision: bool = True, torch: str = "",
                cpu_index_torch: str = "2.13.0+cpu", uname: str = "Linux",
                mamba_problem: str = "") -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """scripts/setup.sh against stand-ins, no pip run and nothing fetched: its output and the commands it ran
    (``$PYTHON -m venv`` and the venv's pip, in order). ``$PYTHON`` is this interpreter without its site
    packages, seeing ``system_torch`` (a CUDA build; None: no torch) and, with it, torchvision; ``-m venv``
    makes a venv whose python is this one, with the venv's site folder (and the system's, where asked) first.
    ``torch`` is the wheel pip takes from the configured indexes, ``cpu_index_torch`` the one it takes where
    PyTorch's CPU index is added (a version without +cpu: PyPI's CUDA build, the CPU index unreachable)."""
    bin_, system, template, log = tmp_path / "bin", tmp_path / "system", tmp_path / "template", tmp_path / "log"
    for folder in (bin_, system, template / "bin", template / "site"):
        folder.mkdir(parents=True)
    if system_torch:
        (system / "torch").mkdir()
        (system / "torch" / "__init__.py").write_text(_TORCH.format(version=system_torch, cuda="12.6", available=True),
                                                      encoding="utf-8")
        if torchvision:
            (system / "torchvision.py").write_text('__version__ = "0.22.1+cu126"\n', encoding="utf-8")
    scripts = {
        bin_ / "uname": f"#!/bin/sh\necho {uname}\n",
        bin_ / "python3": (f'#!/bin/sh\nif [ "$1 $2" = "-m venv" ]; then\n'
                           f'  printf \'["python3"%s]\\n\' "$(printf \', "%s"\' "$@")" >> {log}\n'
                           f'  for last; do :; done\n  cp -R {template}/. "$last"\n'
                           f'  case "$*" in *--system-site-packages*) touch "$last/system-site";; esac\n'
                           f'  exit 0\nfi\nPYTHONPATH={system} exec {sys.executable} -S "$@"\n'),
        template / "bin" / "python": ('#!/bin/sh\nhere=$(cd "$(dirname "$0")/.." && pwd)\n'
                                      'path="$here/site"; [ -e "$here/system-site" ] && path="$path:' f'{system}"\n'
                                      'if [ "$1" = -c ]; then\n'
                                      '  code="import sys; sys.path[0:0] = \'$path\'.split(\':\')\n$2"; shift 2\n'
                                      f'  exec {sys.executable} -c "$code" "$@"\nfi\nexec {sys.executable} "$@"\n'),
        template / "bin" / "pip": f"#!{sys.executable}\nTORCH = {_TORCH!r}\n{_FAKE_PIP}",
    }
    for path, text in scripts.items():
        path.write_text(text, encoding="utf-8")
        path.chmod(0o755)
    run_env = {k: v for k, v in os.environ.items() if k not in ("MAMBA_KEEP_CUDA_BUILD", "PYTHONPATH")}
    run_env.update(PATH=f"{bin_}:{os.environ['PATH']}", PYTHON=str(bin_ / "python3"), VENV=str(tmp_path / "venv"),
                   FAKE_LOG=str(log), FAKE_TORCH=torch, FAKE_CPU_INDEX_TORCH=cpu_index_torch, FAKE_UNAME=uname,
                   FAKE_MAMBA_PROBLEM=mamba_problem)
    res = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], env=run_env, capture_output=True, text=True,
                         timeout=120, encoding="utf-8")
    return res, [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []


_DRY_RUN = ["pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "--report", "-", "-q", "torch==2.13.0"]
_TORCH_ALONE = ["pip", "install", "-q", "torch==2.13.0"]
_FROM_CPU_INDEX = ["pip", "install", "-q", "torch==2.13.0", "torchvision==0.28.0",
                   "--extra-index-url", "https://download.pytorch.org/whl/cpu"]
_PROJECT_PINNED = ["pip", "install", "-q", "-c", "constraints-cpu.txt", "-e", ".[dev]"]


@pytest.mark.parametrize("torch, uname, cpu_index_torch, install, built", [
    ("2.13.0+cpu", "Linux", "-", _TORCH_ALONE, "2.13.0+cpu (CPU build)"),  # a local wheel folder's
    ("2.13.0", "Darwin", "-", _TORCH_ALONE, "2.13.0 (CPU build)"),  # PyPI's macOS torch is a CPU build
    ("2.13.0", "Linux", "2.13.0+cpu", _FROM_CPU_INDEX, "2.13.0+cpu (CPU build)"),  # PyPI's is the CUDA build
    ("", "Linux", "2.13.0+cpu", _FROM_CPU_INDEX, "2.13.0+cpu (CPU build)"),  # no report (pip offline)
    ("2.13.0", "Linux", "2.13.0", _FROM_CPU_INDEX, "2.13.0 (CUDA 12.8 build)"),  # the CPU index unreachable
], ids=["local-cpu-wheel", "macos", "cpu-index", "no-report", "cpu-index-unreachable"])
def test_setup_installs_the_cpu_torch_alone_first_then_the_project_pinned(tmp_path, torch, uname, cpu_index_torch,
                                                                         install, built):
    res, commands = _fake_setup(tmp_path, torch=torch, uname=uname, cpu_index_torch=cpu_index_torch)
    assert res.returncode == 0, res.stderr
    assert commands == [["python3", "-m", "venv", str(tmp_path / "venv")], _DRY_RUN, install, _PROJECT_PINNED]
    lines = res.stdout.splitlines()
    assert lines[0] == "setup: no CUDA torch; installing the pinned CPU route"
    assert lines[-1] == f"setup: ok, torch {built}"
    adding = f"setup: adding PyTorch's CPU index for torch 2.13.0 (the configured indexes offer {torch or 'nothing'})"
    assert (adding in lines) == (install == _FROM_CPU_INDEX)
    # PyPI's CUDA build taken on the CPU route is said, and only then
    python = sys.version.split()[0]
    warning = f"setup: WARNING: no CPU torch 2.13.0 wheel for Python {python} was reachable; pip installed"
    assert (warning in lines) == ("CUDA" in built) and ("PIP_FIND_LINKS" in res.stdout) == ("CUDA" in built)


@pytest.mark.parametrize("torchvision, problem", [
    (True, ""), (False, ""), (True, "mamba-ssm's kernels do not import: selective_scan_cuda: undefined symbol")],
    ids=["kernels-load", "no-torchvision", "kernels-fail"])
def test_setup_keeps_a_cuda_torch_and_builds_the_kernels_against_it(tmp_path, torchvision, problem):
    res, commands = _fake_setup(tmp_path, system_torch="2.7.1+cu126", torchvision=torchvision, mamba_problem=problem)
    assert res.returncode == 0, res.stderr
    venv = tmp_path / "venv"
    pin = str(venv / "torch-pin.txt")
    assert commands == [
        ["python3", "-m", "venv", "--system-site-packages", str(venv)],
        ["pip", "install", "-q", "-c", pin, "packaging", "wheel", "setuptools", "ninja"],  # for the build
        ["MAMBA_KEEP_CUDA_BUILD=TRUE", "pip", "install", "--no-build-isolation", "-c", pin,
         "-c", "constraints-cuda.txt", "-e", ".[dev,cuda]"]]
    # the kept torch (and torchvision, where there is one) pinned, so the extra cannot replace them
    assert Path(pin).read_text(encoding="utf-8") == "torch==2.7.1+cu126\n" + (
        "torchvision==0.22.1+cu126\n" if torchvision else "")
    lines = res.stdout.splitlines()
    assert lines[0] == "setup: CUDA torch 2.7.1+cu126 found; keeping it and adding the cuda extra"
    assert lines[-1] == "setup: ok, torch 2.7.1+cu126 (CUDA 12.6 build)"
    rebuild = ["  MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE MAMBA_KEEP_CUDA_BUILD=TRUE "
               f"{venv}/bin/pip install \\",
               "    --no-build-isolation --no-deps --force-reinstall -c constraints-cuda.txt mamba-ssm causal-conv1d"]
    if problem:  # a prebuilt wheel that installs but does not load is said, with how to build one
        assert f"setup: WARNING: with torch 2.7.1+cu126, {problem};" in lines and lines[-3:-1] == rebuild
    else:
        assert "WARNING" not in res.stdout and rebuild[1] not in lines


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
