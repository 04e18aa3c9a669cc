"""Exporting a model for deployment: TorchScript's tracer and both ONNX exporters give the function the
model computes in eager mode, on the scan's default CPU backend (tiny configurations, small inputs)."""
from __future__ import annotations

import re
from pathlib import Path

import onnxruntime
import pytest
import torch

from bench.registry import create_model
from ssm_models import scan

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "python.md"
# tracing warns at every shape check it freezes, and of its own deprecation
pytestmark = [pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
              pytest.mark.filterwarnings("ignore:.*deprecated"),
              pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")]

SSM_MODELS = [("vmunet", 32), ("vmunet_v2", 32), ("lightm_unet", 16)]


def _model(name: str, size: int):
    torch.manual_seed(0)
    return create_model(name, num_classes=3, img_size=size, tiny=True).eval(), torch.randn(1, 3, size, size)


def _onnx_run(path, x: torch.Tensor) -> torch.Tensor:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@pytest.mark.parametrize("name, size", SSM_MODELS)
def test_a_traced_and_frozen_model_scans_with_the_kernel(name, size, tmp_path):
    """torch.jit.trace could not record the scan's autograd Function ("Could not export Python function
    call '_CpuScan'"): traced, the kernel's op itself is recorded, and the saved program loads and runs."""
    model, x = _model(name, size)
    with scan.use_backend("cpu"), torch.no_grad():
        want = model(x)
        program = torch.jit.freeze(torch.jit.trace(model, (x,), check_trace=False))
    assert "ssm_unet_bench::selective_scan_cpu_fwd" in str(program.graph)
    torch.jit.save(program, tmp_path / "model.pt")
    torch.testing.assert_close(torch.jit.load(tmp_path / "model.pt")(x), want, rtol=0, atol=0)


@pytest.mark.parametrize("name, size", SSM_MODELS)
def test_the_torchscript_onnx_exporter_writes_the_scan(name, size, tmp_path):
    """ONNX has no op for either scan kernel, so an export scans with the torch backend's steps; its
    in-place steps, inlined by the TorchScript-based exporter, were dropped: the file ran without a
    word, here VM-UNet's output off by 1.8e-4 and LightM-UNet's by 0.014. (The tiny VM-UNet-V2's
    output hardly depends on its scans, its decoder multiplying four small features: for it this
    checks that the export works, the kernel's op, which ONNX lacks, kept out.)"""
    model, x = _model(name, size)
    with torch.no_grad():
        want = model(x)
        torch.onnx.export(model, (x,), tmp_path / "model.onnx", dynamo=False, opset_version=17)
    assert scan.last_backend() == "torch"
    got = _onnx_run(tmp_path / "model.onnx", x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=3e-5)  # float32 kernels: ~5e-6 apart


def test_the_dynamo_onnx_exporter_writes_the_scan(tmp_path):
    """The default exporter: the kernel's op had no ONNX function ("No ONNX function found"); the file
    now holds the scan's steps."""
    model, x = _model("vmunet", 32)
    with torch.no_grad():
        want = model(x)
        torch.onnx.export(model, (x,), tmp_path / "model.onnx", dynamo=True)
    got = _onnx_run(tmp_path / "model.onnx", x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=3e-5)  # float32 kernels: ~5e-6 apart


def test_the_guides_export_recipe_ships_a_trained_run(tmp_path, monkeypatch):
    """docs/python.md, "Exporting a trained model", as written: a run's record rebuilds its model, its
    final weights load, and the exported program computes what the run's model computes."""
    from bench.protocol import load_protocol
    from bench.run import plan_grid, run_grid

    monkeypatch.chdir(tmp_path)
    protocol = load_protocol("smoke").with_overrides(img_size=32, max_iterations=2, epochs=1)
    specs = plan_grid(models=["vmunet"], dataset="synapse", protocol=protocol, seeds=[0], data_root=None,
                      synthetic=True, results_dir=Path("results/nb"), tiny=True)
    run_grid(specs, results_dir=Path("results/nb"), device="cpu", show_progress=False)
    section = GUIDE.read_text(encoding="utf-8").split("\n## Exporting a trained model\n", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)
    namespace: dict = {}
    exec(compile(code, str(GUIDE), "exec"), namespace)  # noqa: S102 - our own guide
    model, x, rec = namespace["model"], namespace["x"], namespace["rec"]
    program = torch.export.load(Path("results/nb") / f"{rec['run_id']}.pt2")
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=0, atol=0)
    assert rec["model"] == "vmunet" and not model.training
    final = torch.load(Path("results/nb/runs") / rec["run_id"] / "checkpoints" / "final.pt", weights_only=True)
    assert all(torch.equal(final["model"][k], v) for k, v in model.state_dict().items())  # the run's weights
