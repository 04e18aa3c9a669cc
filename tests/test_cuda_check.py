"""benchmarks/cuda_check.py, the GPU session's CUDA-vs-CPU check, run here as its dry run: our
``torch`` backend against the compiled kernel on CPU, with the same code path and report."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

from ssm_models import scan

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cuda_check.py"
DRY = ["--device", "cpu", "--backend", "torch", "--tiny", "--stages", "4", "--repeats", "1", "--cpu-repeats", "1",
       "--threads", "1"]


@pytest.fixture(scope="module")
def cuda_check():
    spec = importlib.util.spec_from_file_location("cuda_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(text: str, first: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith(f"| {first}")]


def test_dry_run_reports_every_scan_pass_and_model_within_bound(cuda_check, tmp_path):
    out = tmp_path / "check.md"
    assert cuda_check.main([*DRY, "--models", "vmunet,lightm_unet_3d", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "scan backend `torch`; oracle" in text and "scan backend `cpu`" in text
    scan_rows = _rows(text, "4 ")
    assert [r[2] for r in scan_rows] == ["forward", "forward+backward"]
    assert scan_rows[0][1] == "(1, 6144, 49)"
    assert scan_rows[1][7] in {"u", "delta", "A", "B", "C", "D", "delta_bias"}  # the worst gradient is named
    models = _rows(text, "VM-UNet") + _rows(text, "LightM-UNet")
    assert [r[1] for r in models] == ["1×3×32×32", "1×1×16×16×16"]
    for row in scan_rows:  # column 6: max rel. error
        assert 0 < float(row[6]) <= 1e-4  # two different backends: close, but not the same code
    for row in models:  # logits, then the SSM blocks' outputs (with their count)
        blocks, count = re.fullmatch(r"(\S+) \((\d+)\)", row[7]).groups()
        assert float(row[6]) <= 1e-4 and 0 < float(blocks) <= 1e-4 and int(count) > 0
    assert "All errors within their bounds (0.0001 outputs, 0.001 gradients): yes" in text


def test_a_wrong_candidate_fails_the_check(cuda_check, monkeypatch, tmp_path):
    """The bound is enforced: a candidate scan that is off by about 1e-2 makes the check fail,
    in the scan's rows and in the model's SSM blocks (an additive error: the blocks' LayerNorm
    would hide a pure scaling; the blocks damp it to ~1e-4 at initialisation)."""
    apply = scan._TorchScan.apply

    def off(*args):
        y, last = apply(*args)
        g = torch.Generator().manual_seed(0)
        return y + 1e-2 * y.abs().max() * torch.randn(y.shape, generator=g), last

    monkeypatch.setattr(scan._TorchScan, "apply", off)
    out = tmp_path / "check.md"
    assert cuda_check.main([*DRY, "--models", "vmunet", "--out", str(out)]) == 1
    text = out.read_text(encoding="utf-8")
    assert "All errors within their bounds (0.0001 outputs, 0.001 gradients): NO" in text
    assert [float(r[6]) > 5e-3 for r in _rows(text, "4 ")] == [True, True]  # y and the gradients
    (model,) = _rows(text, "VM-UNet")
    assert float(model[7].split()[0]) > 1e-4


def test_refuses_a_candidate_equal_to_the_oracle_and_a_missing_gpu(cuda_check, capsys):
    def refused(args, words):
        with pytest.raises(SystemExit) as exit_:
            cuda_check.main(args)
        assert exit_.value.code == 2 and words in capsys.readouterr().err

    refused(["--device", "cpu", "--backend", "cpu", "--models", ""], "the oracle's own backend (cpu)")
    if not torch.cuda.is_available():
        refused(["--models", ""], "--device cuda: no CUDA device here")
    refused([*DRY, "--models", "nope"], "--models: unknown nope")


def test_refuses_to_call_the_torch_backend_the_cuda_path(cuda_check, monkeypatch, capsys):
    """On a GPU where mamba-ssm's kernels do not load, the automatic candidate would be our torch
    backend: the check stops instead of reporting it as the CUDA path, unless asked for it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(scan, "_mamba", False)  # mamba-ssm does not import
    monkeypatch.setattr(scan, "_mamba_error", "No module named 'mamba_ssm'")
    monkeypatch.delenv(scan.ENV_VAR, raising=False)
    with pytest.raises(SystemExit):
        cuda_check.main(["--models", "", "--stages", ""])
    assert "mamba-ssm's kernels do not run here" in capsys.readouterr().err


def test_the_forced_backend_is_restored(cuda_check, monkeypatch):
    monkeypatch.setenv(scan.ENV_VAR, "ref")
    with cuda_check.scan_backend("torch"):
        assert scan.default_backend("cpu") == "torch"
    assert scan.default_backend("cpu") == "ref"
    with cuda_check.scan_backend(None):
        assert scan.default_backend("cpu") in {"cpu", "torch"}
    assert scan.default_backend("cpu") == "ref"
