"""bench.env: the device fingerprint's driver version, read without torch's help; the sources' digest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import env


@pytest.fixture
def no_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError


def _fake_smi(tmp_path, monkeypatch, body: str) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))


def test_driver_from_nvidia_smi(tmp_path, monkeypatch, no_nvml):
    _fake_smi(tmp_path, monkeypatch, 'echo "580.159.03"; echo "580.159.03"')  # one line per GPU
    assert env.nvidia_driver() == "580.159.03"


@pytest.mark.parametrize("body", ["exit 9", "echo ''", r"printf '\351' >&2; exit 9"])  # a latin-1 message too
def test_no_driver_when_nvidia_smi_fails_or_says_nothing(tmp_path, monkeypatch, no_nvml, body):
    _fake_smi(tmp_path, monkeypatch, body)
    assert env.nvidia_driver() is None


def test_no_driver_without_nvml_or_nvidia_smi(tmp_path, monkeypatch, no_nvml):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder
    assert env.nvidia_driver() is None


def test_nvml_is_asked_first(monkeypatch):
    import types

    calls = []
    fake = types.SimpleNamespace(nvmlInit=lambda: calls.append("init"), nvmlShutdown=lambda: calls.append("shutdown"),
                                 nvmlSystemGetDriverVersion=lambda: b"575.57.08")
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert env.nvidia_driver() == "575.57.08" and calls == ["init", "shutdown"]


def test_records_name_the_counter_behind_paper_macs():
    from bench import env

    # paper_macs is thop's count: its version belongs with the numbers, like fvcore's
    versions = env.package_versions()
    assert versions["thop"] and versions["fvcore"] and versions["torch"]


def _digest_of(tree) -> str:
    """source_digest as a process importing bench from ``tree`` computes it."""
    out = subprocess.run([sys.executable, "-c", "from bench import env; print(env.source_digest())"], cwd=tree,
                         env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, check=True,
                         encoding="utf-8")
    return out.stdout.strip()


def test_source_digest_names_the_code_wherever_it_is_installed(tmp_path):
    """Outside a git checkout (an installed wheel) the sources' digest is the code's identity: the
    same files give the same digest in another folder, an edit or a new module another one, and
    what does not run (bytecode caches, notes) none."""
    root, here = Path(env.__file__).resolve().parent.parent, env.source_digest.__wrapped__()  # uncached: the files now
    tree = tmp_path / "copy"
    for package in env.CODE_PACKAGES:
        shutil.copytree(root / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    assert _digest_of(tree) == here
    (tree / "bench" / "NOTES.txt").write_text("not code", encoding="utf-8")
    (tree / "ssm_models" / "__pycache__").mkdir(exist_ok=True)
    (tree / "ssm_models" / "__pycache__" / "junk.py").write_text("x = 1", encoding="utf-8")
    assert _digest_of(tree) == here
    kernel = tree / "ssm_models" / "csrc" / "selective_scan_cpu.cpp"
    kernel.write_text(kernel.read_text(encoding="utf-8") + "\n// edited\n", encoding="utf-8")
    edited = _digest_of(tree)
    assert edited != here
    (tree / "baselines" / "extra.py").write_text("", encoding="utf-8")
    assert _digest_of(tree) not in (edited, here)


def test_a_mac_names_its_cpu_model(monkeypatch):
    """A portability review: without /proc the boards said "on cpu: arm" (platform.processor()), and the
    kernel's build folder, keyed by the CPU -march=native builds for, could not tell two models apart."""
    from bench import env
    from ssm_models import scan

    real = env.Path.read_text

    def no_proc(self, *a, **k):
        if str(self).startswith("/proc/"):
            raise FileNotFoundError(self)
        return real(self, *a, **k)

    calls = []

    def sysctl(args, **kw):
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, stdout="Apple M2 Pro\n", stderr="")

    monkeypatch.setattr(env.Path, "read_text", no_proc)
    monkeypatch.setattr(env.sys, "platform", "darwin")
    monkeypatch.setattr(env.subprocess, "run", sysctl)
    assert env.cpu_model() == "Apple M2 Pro" and scan._cpu_signature() == "Apple M2 Pro"
    assert calls[0] == ["sysctl", "-n", "machdep.cpu.brand_string"]
