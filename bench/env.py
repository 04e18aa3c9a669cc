"""Where a run ran: device fingerprint, package versions, git commit and source digest (for records and
`bench doctor`)."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

PACKAGES = (
    "torch", "torchvision", "timm", "segmentation-models-pytorch", "numpy", "scipy", "pandas",
    "medpy", "fvcore", "thop", "mamba-ssm", "causal-conv1d", "ssm-unet-bench",
)
# other tools' output (git, nvidia-smi) as text whatever the locale: a localized message in another
# encoding shows a character replaced, not a UnicodeDecodeError where the tool's answer was wanted
TOOL_TEXT = {"text": True, "encoding": "utf-8", "errors": "replace"}


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":  # no /proc, and platform.processor() says only "arm" or "i386"
        try:
            said = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, timeout=10,
                                  **TOOL_TEXT).stdout.strip()
            if said:
                return said
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def nvidia_driver() -> str | None:
    """The NVIDIA kernel-driver version (e.g. "580.159.03"), which torch does not expose:
    NVML (nvidia-ml-py) when importable, else ``nvidia-smi``; None when neither answers."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # not installed, or no driver: try the command line
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, timeout=10, **TOOL_TEXT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines() if out.returncode == 0 else []
    return lines[0].strip() if lines and lines[0].strip() else None


def device_name_problem(device: object) -> str | None:
    """What is wrong with a device name (None: "auto", "cpu", "cuda" or "cuda:N", any case), with the
    likely one where a GPU was named otherwise (gpu, gpu:1, cuda1); the one check of the CLI and the API."""
    from bench.errors import did_you_mean

    text = device.strip().lower() if isinstance(device, str) else None
    if text is not None and re.fullmatch(r"auto|cpu(:0)?|cuda(:\d+)?", text):
        return None
    gpu = re.fullmatch(r"(?:gpu|cuda)[:_ -]?(\d*)", text or "")
    hint = (f" (did you mean {'cuda' + (':' + gpu[1] if gpu[1] else '')!r}?)" if gpu else
            did_you_mean(text, ["auto", "cpu", "cuda"]) if text else "")
    return f"expected 'auto', 'cpu', 'cuda' or 'cuda:N'; got {device!r}{hint}"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" (CUDA where there is one), "cpu", "cuda" or "cuda:N" (any case), or a torch.device: the
    device to run on; BenchError for another name or a CUDA device this machine lacks."""
    from bench.errors import BenchError

    if isinstance(device, torch.device):
        device = str(device)
    if problem := device_name_problem(device):
        raise BenchError(f"device: {problem}")
    device = device.strip().lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {device}: no CUDA device is available to this torch build")
    chosen = torch.device(device)
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise BenchError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return chosen


SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")  # a record's job_id, array_job_id, ...


def launch() -> dict[str, Any]:
    """Where this process came from, for a record: its host, the Slurm job (and array task) it runs in
    (null outside Slurm) and its command line as typed (under ``--nproc``, the launcher's, not that of
    the process it started), so that a surprising run can be traced to its job's log. Nothing of a
    run's numbers depends on it."""
    from bench.distributed import LAUNCH_ARGV_ENV, launched_by_bench

    slurm = {k.removeprefix("SLURM_").lower(): os.environ[k] for k in SLURM_VARS if os.environ.get(k)}
    typed = os.environ.get(LAUNCH_ARGV_ENV) if launched_by_bench() else None
    argv = json.loads(typed) if typed else sys.argv
    return {"host": socket.gethostname(), "slurm": slurm or None, "argv": list(argv)}


def usable_cores() -> int:
    """The CPU cores this process may run on (Linux: its affinity, which Slurm's --cpus-per-task and
    taskset set), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def fingerprint(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What a timing or a bit-exact result depends on: hardware, threads, library builds."""
    device = torch.device(device)
    fp: dict[str, Any] = {
        "device": device.type,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        # what else decides the last bits of CPU results: ATen's vector ISA and MKL's CNR mode
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        fp.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            driver=nvidia_driver(),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
            # autotuned kernels time differently from the deterministic ones training uses
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            cudnn_deterministic=torch.backends.cudnn.deterministic,
        )
    return fp


# bench's own packages and the files of them that run (the .py modules, protocols, the scan kernel's
# C++): what a wheel installs of them, so a checkout and a wheel of the same code digest alike
CODE_PACKAGES = ("bench", "baselines", "ssm_models")
_SOURCE_SUFFIXES = (".py", ".toml", ".cpp")


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """16 hex digits of SHA-256 over bench's sources (path and content of each file), wherever
    they are installed: the code's identity where git names none (a wheel) or not all of it (a
    checkout with edits, "-dirty"). Read once per process: the code that runs is what was imported."""
    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        root = Path(importlib.util.find_spec(package).origin).parent
        for path in sorted(p for p in root.rglob("*") if p.suffix in _SOURCE_SUFFIXES and p.is_file()
                           and "__pycache__" not in p.parts):
            digest.update(f"{package}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The checkout's commit (with "-dirty" for edits), None outside one. Read once per process, as
    ``source_digest``: a commit or pull while a grid trains is not the code its later runs train under."""
    return _git_head(Path(__file__).resolve().parent.parent)


def _git_head(root: Path) -> str | None:
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, timeout=5, **TOOL_TEXT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = out.stdout.strip() if out.returncode == 0 else None
    if commit:
        try:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                   capture_output=True, timeout=5, **TOOL_TEXT).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):  # a slow network mount: the commit alone
            return commit
        return commit + ("-dirty" if dirty else "")
    return None
