"""Exporting a model for deployment: TorchScript's tracer and both ONNX exporters give the function the
model computes in eager mode, on the scan's default CPU backend (tiny configurations, small inputs)."""
from __future__ import annotations

import re
from pathlib import Path

import onnx
import onnxruntime
import pytest
import torch

from bench.registry import create_model
from ssm_models import scan
from tests.test_scan import core, extras, make, sequential_scan

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "python.md"
# tracing warns at every shape check it freezes, and of its own deprecation
pytestmark = [pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
              pytest.mark.filterwarnings("ignore:.*deprecated"),
              pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")]

SSM_MODELS = [("vmunet", 32), ("vmunet_v2", 32), ("lightm_unet", 16)]


def _model(name: str, size: int):
    torch.manual_seed(0)
    return create_model(name, num_classes=3, img_size=size, tiny=True).eval(), torch.randn(1, 3, size, size)


def _onnx_run(path, *xs: torch.Tensor) -> torch.Tensor:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: x.numpy() for i, x in zip(session.get_inputs(), xs)}
    return torch.from_numpy(session.run(None, feed)[0])


class _Scan(torch.nn.Module):
    """A lone scan with every option: grouped B/C, D, z, delta_bias, softplus."""

    def __init__(self, x):
        super().__init__()
        self.A, self.D, self.delta_bias = (torch.nn.Parameter(x[k]) for k in ("A", "D", "delta_bias"))

    def forward(self, u, delta, B, C, z):
        return scan.selective_scan(u, delta, self.A, B, C, self.D, z, self.delta_bias, delta_softplus=True)


INPUTS = ("u", "delta", "B", "C", "z")


def _lone_scan(L: int, batch: int = 1):
    x = make(batch=batch, dim=4, L=L, N=3, G=2, dtype=torch.float32)
    want = sequential_scan(*core(x), **extras(x, (True, True, True, True)))[0]
    return _Scan(x).eval(), tuple(x[k] for k in INPUTS), want


def _assert_float64_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """A float32 scan against the float64 recurrence: 1e-5, relative to the largest output."""
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_an_exported_scan_takes_about_three_sqrt_L_steps(tmp_path):
    """An export writes every Python step of the scan into its program: one per time index made
    VM-UNet's ONNX file at 256² take two minutes to write and over one to open. Now ~3·sqrt(L), and
    the numbers are the float64 recurrence's (L = 1000: chunks of 32, the last padded)."""
    module, args, want = _lone_scan(1000)
    with torch.no_grad():
        torch.onnx.export(module, args, tmp_path / "scan.onnx", dynamo=False, opset_version=17)
        program = torch.export.export(module, args)  # on the cpu backend: a call of the kernel's op
        with scan.use_backend("torch"):  # the scan's own steps
            steps = torch.export.export(module, args)
    nodes = onnx.load(str(tmp_path / "scan.onnx")).graph.node
    assert sum(n.op_type == "Add" for n in nodes) < 3 * 32 + 5  # a step each, a few other sums (D, delta_bias)
    addcmuls = [n for n in steps.graph.nodes if n.target == torch.ops.aten.addcmul.default]
    assert len(addcmuls) == 31 + 31 + 32  # to the chunks' ends, across them, through them again
    assert "ssm_unet_bench.selective_scan_cpu_fwd" in str(program.graph)
    for got in (_onnx_run(tmp_path / "scan.onnx", *args), steps.module()(*args), program.module()(*args)):
        _assert_float64_close(got, want)


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


@pytest.mark.parametrize("dataset, protocol, model, overrides, input_shape, dtype", [
    ("synapse", "smoke", "vmunet", dict(img_size=32, max_iterations=2), (1, 1, 32, 32), torch.float32),
    ("nnunet", "drift_3d", "lightm_unet", {}, (1, 1, 8, 16, 16), torch.float64)], ids=["2d", "3d-float64"])
def test_the_guides_export_recipe_ships_a_trained_run(dataset, protocol, model, overrides, input_shape, dtype,
                                                       tmp_path, monkeypatch):
    """docs/python.md, "Exporting a trained model", as written: a run's record rebuilds its model, its
    final weights load, and the exported program computes what the run's model computes. A 3-D run's
    example input is its patch (8 x 16 x 16; the model's img_size is its largest side), and a float64
    protocol's model is float64 (built float32, it computed other numbers than the run's)."""
    from bench.protocol import load_protocol
    from bench.run import plan_grid, run_grid

    monkeypatch.chdir(tmp_path)
    recipe = load_protocol(protocol).with_overrides(epochs=1, **overrides)
    specs = plan_grid(models=[model], dataset=dataset, protocol=recipe, seeds=[0], data_root=None,
                      synthetic=True, results_dir=Path("results/nb"), tiny=True)
    run_grid(specs, results_dir=Path("results/nb"), device="cpu", show_progress=False)
    section = GUIDE.read_text(encoding="utf-8").split("\n## Exporting a trained model\n", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)
    code = code.replace("synapse-smoke-vmunet-s0-", f"{dataset}-{protocol}-{model}-s0-")  # the run made here
    namespace: dict = {}
    exec(compile(code, str(GUIDE), "exec"), namespace)  # noqa: S102 - our own guide
    model_, x, rec = namespace["model"], namespace["x"], namespace["rec"]
    assert tuple(x.shape) == input_shape and x.dtype == dtype
    program = torch.export.load(Path("results/nb") / f"{rec['run_id']}.pt2")
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model_(x), rtol=0, atol=0)
    assert rec["model"] == model and not model_.training
    final = torch.load(Path("results/nb/runs") / rec["run_id"] / "checkpoints" / "final.pt", weights_only=True)
    assert all(torch.equal(final["model"][k], v) for k, v in model_.state_dict().items())  # the run's weights


def test_an_onnx_export_on_the_cuda_backend_writes_the_steps(tmp_path):
    """A GPU machine's default backend is cuda, mamba-ssm's kernel, which ONNX has no op for: the export
    writes the torch backend's steps (reached here with CPU tensors, which the cuda backend otherwise refuses)."""
    module, args, want = _lone_scan(10)
    with scan.use_backend("cuda"), torch.no_grad():
        torch.onnx.export(module, args, tmp_path / "scan.onnx", dynamo=False, opset_version=17)
    assert scan.last_backend() == "torch"
    got = _onnx_run(tmp_path / "scan.onnx", *args)
    _assert_float64_close(got, want)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_an_exported_scan_with_a_free_batch_axis_takes_another_batch(dynamo, tmp_path):
    """docs/python.md: a batch axis left free works with both exporters (the default one fixes a
    batch of 1, so the example has 2); L = 10 pads the last of its chunks."""
    module, args, _ = _lone_scan(10, batch=2)
    if dynamo:
        batch = torch.export.Dim("batch")
        how = dict(dynamo=True, dynamic_shapes={k: {0: batch} for k in INPUTS})
    else:
        how = dict(dynamo=False, opset_version=17, input_names=list(INPUTS),
                   dynamic_axes={k: {0: "batch"} for k in INPUTS})
    with torch.no_grad():
        torch.onnx.export(module, args, tmp_path / "scan.onnx", **how)
    y = make(batch=3, dim=4, L=10, N=3, G=2, dtype=torch.float32, seed=1)
    want = sequential_scan(y["u"], y["delta"], module.A, y["B"], y["C"], module.D, y["z"], module.delta_bias,
                           delta_softplus=True)[0]
    got = _onnx_run(tmp_path / "scan.onnx", *(y[k] for k in INPUTS))
    assert got.shape == (3, 4, 10)
    _assert_float64_close(got, want)
