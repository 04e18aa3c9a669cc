"""bench.env: the device fingerprint's driver version, read without torch's help."""

from __future__ import annotations

import sys

import pytest

from bench import env


@pytest.fixture
def no_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError


def _fake_smi(tmp_path, monkeypatch, body: str) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\n{body}\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))


def test_driver_from_nvidia_smi(tmp_path, monkeypatch, no_nvml):
    _fake_smi(tmp_path, monkeypatch, 'echo "580.159.03"; echo "580.159.03"')  # one line per GPU
    assert env.nvidia_driver() == "580.159.03"


@pytest.mark.parametrize("body", ["exit 9", "echo ''"])
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


def test_short_fingerprint_names_the_driver_and_cudnn_on_cuda_and_the_isa_on_cpu():
    fp = {"device": "cuda", "gpu": "NVIDIA H200", "driver": "580.159.03", "cuda": "13.0", "cudnn": 91002,
          "torch": "2.11.0"}
    assert env.short_fingerprint(fp) == "NVIDIA H200 / driver 580.159.03 / CUDA 13.0 / cuDNN 91002 / torch 2.11.0"
    # cost tables group timings by it: one ISA's kernels do not rank against another's
    cpu = {"device": "cpu", "cpu": "AMD EPYC", "threads": 1, "cpu_capability": "AVX512", "torch": "2.13.0"}
    assert env.short_fingerprint(cpu) == "AMD EPYC x1 threads (AVX512) / torch 2.13.0"
    assert env.short_fingerprint({**cpu, "cpu_capability": "DEFAULT"}) != env.short_fingerprint(cpu)


def test_records_name_the_counter_behind_paper_macs():
    from bench import env

    # paper_macs is thop's count: its version belongs with the numbers, like fvcore's
    versions = env.package_versions()
    assert versions["thop"] and versions["fvcore"] and versions["torch"]
