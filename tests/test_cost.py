"""Cost: FLOPs with the selective scan counted (hand counts, fvcore cross-check, the authors'
measured fvcore/thop numbers), uncounted ops refused, timings and `bench profile` end to end."""

from __future__ import annotations

import io
import json
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from bench import cost, profiles
from bench.errors import BenchError
from bench.registry import create_model, get_entry
from ssm_models.mamba import Mamba
from tests.fixtures import OneConv, md_rows, run_bench
from tests.test_vmunet import REFERENCE


class _OneScan(nn.Module):
    def __init__(self, backend, with_D, with_z):
        super().__init__()
        self.backend, self.with_D, self.with_z = backend, with_D, with_z

    def forward(self, u):
        from ssm_models.scan import selective_scan

        batch, dim, L = u.shape
        A = -torch.arange(1, 5, dtype=u.dtype).repeat(dim, 1)
        B = C = torch.ones(batch, 2, 4, L)
        return selective_scan(u, u, A, B, C, D=torch.ones(dim) if self.with_D else None,
                              z=u if self.with_z else None, delta_softplus=True, backend=self.backend)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("with_D, with_z", [(False, False), (True, False), (True, True)])
def test_scan_flops_equal_the_hand_count(backend, with_D, with_z):
    batch, dim, L, N = 2, 6, 11, 4
    got = cost.count_flops(_OneScan(backend, with_D, with_z), torch.randn(batch, dim, L))
    hand = 9 * batch * L * dim * N + batch * dim * L * (with_D + with_z)
    assert got.scan_flops == got.flops == hand
    assert got.macs == hand / 2 and got.by_op == {"selective_scan": hand}


def _tiny(name, size=64, nc=9):
    torch.manual_seed(0)
    return create_model(name, num_classes=nc, in_chans=3, img_size=size, **dict(get_entry(name).tiny))


@pytest.mark.parametrize("name", ["unet", "transunet", "vmunet", "lightm_unet"])
def test_conv_linear_and_scan_agree_with_fvcore(name):
    model, x = _tiny(name), torch.randn(1, 3, 64, 64)
    ours = {k: v / 2 for k, v in cost.count_flops(model, x).by_op.items()}  # MACs
    fv = cost.fvcore_macs(model, x)
    assert ours.get("aten.convolution", 0) == fv.get("conv", 0)
    ours_mm = sum(ours.get(k, 0) for k in ("aten.mm", "aten.addmm", "aten.bmm"))
    # fvcore prices an einsum with numpy's einsum_path estimate, a little above its exact MACs
    tol = 0.02 if "einsum" in fv else 0
    assert ours_mm == pytest.approx(fv.get("linear", 0) + fv.get("matmul", 0) + fv.get("einsum", 0), rel=tol)
    assert ours.get("selective_scan", 0) == fv.get(cost.FVCORE_SCAN_KEY, 0) == _hand_scan_macs(model, x)
    assert (ours.get("selective_scan", 0) > 0) == (name in ("vmunet", "lightm_unet"))


def test_fvcore_prices_the_scans_of_a_stage_the_model_discards():
    """VM-UNet-V2's encoder computes a last stage whose output it discards; TorchScript's trace drops dead
    pure ops, so the kernel's op is marked as having side effects (as the autograd Function it was)."""
    model, x = _tiny("vmunet_v2"), torch.randn(1, 3, 64, 64)
    fv = cost.fvcore_macs(model, x)
    assert fv[cost.FVCORE_SCAN_KEY] == cost.count_flops(model, x).scan_flops / 2 == _hand_scan_macs(model, x)


def test_fvcore_prices_the_torch_backends_scan(monkeypatch):
    """Where the kernel does not build, counts run the torch backend: fvcore's trace sees its ``_TorchScan``
    Function, priced by the scan's handle rather than skipped as an unsupported op. The Function takes the
    5 tensors of the scan proper; D is applied outside it, as element-wise ops fvcore does not price, so the
    scan's entry is the kernel's less VM-UNet's D term. Every other operator is priced as with the kernel."""
    from ssm_models import scan

    model, x = _tiny("vmunet"), torch.randn(1, 3, 64, 64)
    with_kernel = cost.fvcore_macs(model, x)
    monkeypatch.setattr(scan, "_kernel_loads", lambda: False)  # a machine where the kernel does not build
    fv = cost.fvcore_macs(model, x)
    torch_scan = fv.pop("PythonOp._TorchScan", 0)
    assert torch_scan == _hand_scan_macs(model, x, with_D_z=False) > 0
    assert with_kernel[cost.FVCORE_SCAN_KEY] == _hand_scan_macs(model, x) > torch_scan
    others = {k: v for k, v in with_kernel.items() if k not in ("total", cost.FVCORE_SCAN_KEY)}
    assert {k: v for k, v in fv.items() if k != "total"} == others
    assert fv["total"] == sum(others.values()) + torch_scan


def _hand_scan_macs(model, x, with_D_z=True):
    """The scans' MACs from each SSM layer's input shape, by hand: per state element of every
    step 9 FLOPs (discretise, update, read out), plus 1 per output for D and 1 for the z gate
    (mamba-ssm's flop_selective_scan_fn); SS2D scans K=4 directions of d_inner channels, with D,
    without z; a Mamba block d_inner channels, with D and z. Half of it is MACs. ``with_D_z=False``:
    the scan without its D and z terms."""
    from ssm_models.vss import SS2D

    flops = []

    def ss2d(m, args):
        b, h, w, _ = args[0].shape
        dim, length = m.K * m.d_inner, h * w
        flops.append(9 * b * length * dim * m.d_state + b * dim * length * with_D_z)

    def mamba(m, args):
        b, length, _ = args[0].shape
        flops.append(9 * b * length * m.d_inner * m.d_state + 2 * b * m.d_inner * length * with_D_z)

    hooks = [mod.register_forward_pre_hook(ss2d if isinstance(mod, SS2D) else mamba)
             for mod in model.modules() if isinstance(mod, (SS2D, Mamba))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return sum(flops) / 2


class _Calls(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize("op, fn", [
    ("mv", lambda x: torch.mv(torch.ones(3, 5), x[0])),
    ("addmv", lambda x: torch.addmv(torch.ones(3), torch.ones(3, 5), x[0])),
    ("dot", lambda x: torch.matmul(x[0], x[0])),  # a matmul of two vectors dispatches to dot
    ("vdot", lambda x: torch.vdot(x[0], x[0])),
    ("addbmm", lambda x: torch.addbmm(torch.ones(5, 5), torch.ones(2, 5, 5), x.expand(2, 5, 5))),
    ("_fft_r2c", lambda x: torch.fft.rfft(x)),
    ("_fft_c2c", lambda x: torch.fft.fft(x.to(torch.complex64))),
    ("_fft_c2r", lambda x: torch.fft.irfft(x.to(torch.complex64))),
    ("_trilinear", lambda x: torch.nn.functional.bilinear(x, x, torch.ones(2, 5, 5))),  # nn.Bilinear's x1ᵀ A x2
])
def test_uncounted_contraction_is_refused(op, fn):
    """Contractions torch's counter has no formula for would count 0 FLOPs: the count stops and names the op."""
    with pytest.raises(cost.UncountedOpsError, match=rf"aten\.{op} ×1"):
        cost.count_flops(_Calls(fn), torch.randn(1, 5))


def test_counts_do_not_depend_on_the_scan_backend_asked_for(monkeypatch):
    """BENCH_SCAN_BACKEND=ref used to add its per-step einsums to the scan's count (+11 % on VM-UNet),
    and =cuda to crash the count on CPU tensors: counting runs the CPU backend whatever it says."""
    model, x = _tiny("vmunet"), torch.randn(1, 3, 64, 64)
    ours, fv = cost.count_flops(model, x).by_op, cost.fvcore_macs(model, x)
    paper = cost.paper_count(model, x)
    for forced in ("ref", "torch", "cuda"):
        monkeypatch.setenv("BENCH_SCAN_BACKEND", forced)
        assert cost.count_flops(model, x).by_op == ours and cost.fvcore_macs(model, x) == fv
        # and what a run records after training (thop's forward included)
        build = {"num_classes": 9, "in_chans": 3, "img_size": 64, **dict(get_entry("vmunet").tiny)}
        assert cost.run_counts("vmunet", build, (64, 64))["paper_macs"] == paper["paper_macs"]


def test_a_model_without_a_scan_is_counted_without_building_the_scan_kernel(monkeypatch):
    """A UNet's first run on a machine waited some 15 s for the compiled scan kernel, only to count
    its FLOPs; the torch backend a model that says it runs no scan is counted under counts the same."""
    from ssm_models import scan

    build = lambda name: {"num_classes": 9, "in_chans": 3, "img_size": 32, **dict(get_entry(name).tiny)}  # noqa: E731
    expected = cost.run_counts("unet", build("unet"), (32, 32))

    def no_build():
        raise AssertionError("the scan kernel was loaded")

    monkeypatch.setattr(scan, "_load_extension", no_build)
    assert cost.run_counts("unet", build("unet"), (32, 32)) == expected
    with pytest.raises(AssertionError, match="the scan kernel was loaded"):  # a model that scans still asks for it
        cost.run_counts("vmunet", build("vmunet"), (32, 32))


def test_a_profile_keeps_the_keys_set_changed_and_states_its_scan_and_thops_gap_in_macs():
    """A row's scan_macs sits beside macs in the tables, so it is MACs (half the scan's FLOPs), and
    paper_macs_missing_pct is the share of our MACs that thop's count leaves out."""
    tiny = dict(get_entry("vmunet").tiny)
    row = cost.profile_model("vmunet", img_size=32, overrides={"d_state": 8}, tiny=True, timing=False)
    assert row["set_keys"] == ["d_state"] and row["model_config"]["dims"] == list(tiny["dims"])
    torch.manual_seed(0)
    model = create_model("vmunet", num_classes=9, in_chans=3, img_size=32, **{**tiny, "d_state": 8})
    assert row["scan_macs"] == _hand_scan_macs(model, torch.randn(1, 3, 32, 32)) > 0
    assert row["flops_by_op"]["selective_scan"] == 2 * row["scan_macs"]
    missing = 100 * (row["macs"] - row["paper_macs"]) / row["macs"]  # thop prices no scan: some is missing
    assert row["paper_macs_missing_pct"] == pytest.approx(missing) and 0 < missing < 100


def test_the_ref_scan_is_never_timed(monkeypatch):
    """The sequential oracle's latency would sit in a cost table as the model's speed: a profile
    under BENCH_SCAN_BACKEND=ref counts but does not time models that scan; others it times."""
    monkeypatch.setenv("BENCH_SCAN_BACKEND", "ref")
    tiny = dict(get_entry("vmunet").tiny)
    with pytest.warns(UserWarning, match="vmunet: not timed: the 'ref' selective-scan backend"):
        row = cost.profile_model("vmunet", img_size=32, overrides=tiny, warmup=0, iters=1)
    assert row["macs"] > 0 and row["scan_backend"] == "ref"
    assert not {"latency_ms_median", "fps", "peak_mem_mb"} & set(row)
    # the code and packages behind the numbers, as a run record names them (a wheel has no commit)
    from bench import env

    assert row["code_digest"] == env.source_digest() and row["packages"]["torch"] == torch.__version__
    unet = cost.profile_model("unet", img_size=32, overrides=dict(get_entry("unet").tiny), warmup=0, iters=1)
    assert unet["latency_ms_median"] > 0 and unet["scan_backend"] is None
    monkeypatch.setenv("BENCH_SCAN_BACKEND", "torch")  # a fallback is timed, and marked in the tables
    assert cost.profile_model("vmunet", img_size=32, overrides=tiny, warmup=0, iters=1)["latency_ms_median"] > 0


def test_a_model_that_scans_without_saying_so_is_found_by_its_count(monkeypatch):
    """A plugin that forgets uses_selective_scan: its records named no backend, and the oracle's
    speed under BENCH_SCAN_BACKEND=ref went into the cost table unmarked; one that sets it without
    scanning had a backend named (and was not timed under ref)."""
    from bench import registry
    from bench.modeling import SegmentationModel
    from bench.registry import register_model

    class Quiet(SegmentationModel):  # a Mamba layer over the pixels, no uses_selective_scan
        def __init__(self, num_classes, in_chans):
            super().__init__()
            self.num_classes, self.in_chans = num_classes, in_chans
            self.stem, self.mamba = nn.Conv2d(in_chans, 8, 1), Mamba(8, d_state=4)
            self.head = nn.Conv2d(8, num_classes, 1)

        def forward_logits(self, x):
            y = self.stem(x)
            b, c, h, w = y.shape
            y = self.mamba(y.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)
            return self.head(y)

    register_model(family="ssm", paper_config={}, name="_quiet_scanner")(
        lambda *, num_classes, in_chans=3, img_size=224: Quiet(num_classes, in_chans))
    monkeypatch.setenv("BENCH_SCAN_BACKEND", "ref")
    try:
        with pytest.warns(UserWarning, match="_quiet_scanner: Quiet runs the selective scan but does not set "
                                             "uses_selective_scan = True"):
            row = cost.profile_model("_quiet_scanner", img_size=8, warmup=0, iters=1)
        assert row["scan_macs"] > 0 and row["scan_backend"] == "ref" and "latency_ms_median" not in row
    finally:
        registry._REGISTRY.pop("_quiet_scanner")

    class Claims(OneConv):  # the flag set, no scan: its records named a backend that never ran
        uses_selective_scan = True

    register_model(family="cnn", paper_config={}, name="_claims_a_scan")(
        lambda *, num_classes, in_chans=3, img_size=224: Claims(num_classes, in_chans))
    try:
        with pytest.warns(UserWarning, match="_claims_a_scan: Claims sets uses_selective_scan = True but its forward "
                                             "runs no selective scan"):
            row = cost.profile_model("_claims_a_scan", img_size=8, warmup=0, iters=1)
        assert row["scan_macs"] == 0 and row["scan_backend"] is None and row["latency_ms_median"] > 0
    finally:
        registry._REGISTRY.pop("_claims_a_scan")


def test_fused_attention_is_counted_not_skipped():
    """nn.TransformerEncoderLayer in eval without grad runs one fused op no counter prices (it
    counted 0 FLOPs and raised nothing); counting takes the decomposed path and restores the flag."""
    layer, x = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True).eval(), torch.randn(2, 10, 32)
    tokens = 2 * 10
    linears = 2 * tokens * (32 * 96 + 32 * 32 + 32 * 64 + 64 * 32)  # in_proj, out_proj, two feed-forward layers
    attention = 2 * (2 * 2 * 4 * 10 * 10 * 8)  # QKᵀ and AV: batch 2, 4 heads, 10 tokens, head dim 8
    got = cost.count_flops(layer, x)
    assert got.flops == linears + attention and got.by_op["aten._scaled_dot_product_flash_attention_for_cpu"] == attention
    assert torch.backends.mha.get_fastpath_enabled()


def test_each_way_a_model_ran_is_a_profile_of_its_own():
    """A re-profile replaces the file of the same id: a compiled, channels-last, bf16 or other-backend timing
    of the same model and input would have replaced the plain one's."""
    row = {"model": "unet", "input_shape": "1x3x64x64", "model_config": {"num_classes": 9}, "precision": "fp32",
           "device_fingerprint": {"device": "cpu"}, "channels_last": False, "compiled": False, "scan_backend": "cpu"}
    for key, other in (("compiled", True), ("channels_last", True), ("precision", "bf16"), ("scan_backend", "ref"),
                       ("model_config", {"num_classes": 2}), ("device_fingerprint", {"device": "cuda"})):
        assert profiles.profile_id({**row, key: other}) != profiles.profile_id(row), key


def test_a_counts_only_profile_keeps_the_timings_of_the_same_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_SCAN_BACKEND", "torch")  # timed on torch; the counts run the cpu backend
    tiny = dict(get_entry("vmunet").tiny)
    timed = cost.profile_model("vmunet", img_size=32, overrides=tiny, warmup=0, iters=2)
    profiles.write_profile(timed, tmp_path)
    counts = cost.profile_model("vmunet", img_size=32, tiny=True, timing=False)  # as overrides=tiny, marked tiny
    assert counts["scan_backend"] == timed["scan_backend"] == "torch"  # the device's, not the counts'
    assert counts["tiny"] and counts["model_config"] == timed["model_config"] and counts["macs"] == timed["macs"]
    path = profiles.write_profile(counts, tmp_path)
    assert len(list((tmp_path / "profiles").glob("*.json"))) == 1
    assert json.loads(path.read_text(encoding="utf-8"))["latency_ms_median"] == timed["latency_ms_median"]
    # another scan backend's timing is another record
    assert profiles.profile_id({**timed, "scan_backend": "ref"}) != profiles.profile_id(timed)
    # a recount of another architecture under the same id does not inherit the timings
    path = profiles.write_profile({**counts, "macs": counts["macs"] + 1}, tmp_path)
    assert "latency_ms_median" not in json.loads(path.read_text(encoding="utf-8"))
    # the fvcore cross-check speaks up when the two counts part
    # ... on the ops both price: fvcore's norms and up-sampling (LightM-UNet's 5 %) are not ours to count
    def fvcore(conv: float, norm: float):
        return lambda model, x: {"total": (conv + norm) * cost.count_flops(model, x).macs,
                                 "conv": conv * cost.count_flops(model, x).macs,
                                 "group_norm": norm * cost.count_flops(model, x).macs}

    monkeypatch.setattr(cost, "fvcore_macs", fvcore(0.5, 0.5))
    with pytest.warns(UserWarning, match=r"unet: our count .* and fvcore's on the same ops .* differ by more than 5%"):
        cost.profile_model("unet", img_size=32, overrides=dict(get_entry("unet").tiny), timing=False)
    monkeypatch.setattr(cost, "fvcore_macs", fvcore(1.0, 0.2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cost.profile_model("unet", img_size=32, overrides=dict(get_entry("unet").tiny), timing=False)


def test_a_training_step_a_small_input_cannot_take_is_left_unmeasured():
    # VM-UNet-V2's BatchNorm meets a 1x1 map at 32² and batch 1 in train mode: the traceback stopped
    # `bench profile --models all` after the models before it
    with pytest.warns(UserWarning, match=r"vmunet_v2: no training-step memory at 32x32 \(Expected more than 1 value "
                                         r"per channel when training.*a larger --img-size measures it"):
        row = cost.profile_model("vmunet_v2", img_size=32, tiny=True, iters=2, warmup=1)
    assert row["train_peak_mem_mb"] is None and row["latency_ms_median"] > 0 and row["peak_mem_mb"] >= 0
    # torch.compile wraps the error (and says it in its message); any other error still stops the profile
    said = "Expected more than 1 value per channel when training, got input size torch.Size([1, 8, 1, 1])"
    try:
        try:
            raise ValueError(said)
        except ValueError as exc:
            raise RuntimeError("compiled") from exc
    except RuntimeError as wrapped:
        assert cost._batch_norm_at_batch_1(wrapped) == said
    assert cost._batch_norm_at_batch_1(RuntimeError(f"when making fake tensor call: got ValueError('{said}')")) == said
    assert cost._batch_norm_at_batch_1(ValueError("a plugin's own bug")) is None


@pytest.mark.parametrize("args, message", [
    (["--num-classes", "0"], "--num-classes: expected a whole number >= 1; got 0"),
    (["--in-chans", "-1"], "--in-chans: expected a whole number >= 1; got -1"),
    (["--compile", "--warmup", "0"], "--warmup 0 with --compile: the first forward compiles the model"),
    (["--set", "spatial_dims=4"], "spatial_dims=4 (spatial_dims must be 2 or 3, got 4)"),
    # batch 0 was accepted as "batch 1 only", which bench run refuses; a precision given twice was timed
    # twice and its second record replaced the first; --compile untimed recorded compiled: true
    (["--batch-size", "0"], "--batch-size: expected a whole number >= 2 or 'auto' (batch 1 is always timed); got '0'"),
    (["--precision", "fp32,bf16,fp32"], "--precision: fp32 given twice"),
    (["--no-timing", "--compile"], "--compile with --no-timing: it chooses how models are timed"),
    (["--no-timing", "--channels-last", "--batch-size", "auto"], "--channels-last, --batch-size with --no-timing"),
    (["--no-timing", "--precision", "fp32,bf16"], "--precision with --no-timing"),  # untimed bf16 records
    (["--batch-size", "²"], "--batch-size: expected a whole number >= 2"),  # isdigit() took it, int() did not
])
def test_profile_options_out_of_range_are_one_line(tmp_path, args, message, bench_here):
    proc = bench_here("profile", "--models", "lightm_unet", "--tiny", "--img-size", "32", *args, "--results", tmp_path,
                      check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("batch_size", ["8x", "AUTO", 1, -2, 2.0, True, False])
def test_profile_model_refuses_a_batch_size_before_building_the_model(monkeypatch, batch_size):
    """The Python API's batch_size: a string other than "auto" reached ``batch_size > 1`` as a TypeError,
    after the model was built and timed; now the CLI's check, before anything is built."""
    monkeypatch.setattr("bench.registry.create_model", lambda *a, **k: pytest.fail("built before the check"))
    with pytest.raises(BenchError, match=f"batch_size: expected a whole number >= 2 or 'auto' .*got {batch_size!r}"):
        cost.profile_model("unet", tiny=True, img_size=32, batch_size=batch_size)


def test_batch_size_takes_what_the_cli_and_the_api_give():
    taken = [cost.check_batch_size(b) for b in (None, 0, "auto", "8", 8, np.int64(4))]
    assert taken == [0, 0, "auto", 8, 8, 4] and [type(b) for b in taken[3:]] == [int] * 3  # a record's number


def test_vmunet_isic_counts_match_the_authors_measurements():
    """VM-UNet at 1×3×256²: thop gives the published 4.11 G exactly; fvcore without the scan equals
    the authors' model measured with fvcore; our count adds the scan on top."""
    meta = json.loads((REFERENCE / "vmunet_isic" / "meta.json").read_text(encoding="utf-8"))["flops"]
    torch.manual_seed(0)
    model, x = create_model("vmunet", num_classes=1, in_chans=3, img_size=256), torch.randn(1, 3, 256, 256)
    paper = cost.paper_count(model, x)
    assert paper["paper_macs"] == pytest.approx(meta["thop_gmacs_official_counter"] * 1e9, rel=1e-9)
    fv = cost.fvcore_macs(model, x)
    assert fv["total"] - fv[cost.FVCORE_SCAN_KEY] == pytest.approx(meta["fvcore_gflops_without_selective_scan"] * 1e9,
                                                                  rel=1e-9)
    ours = cost.count_flops(model, x)
    assert ours.scan_flops > 0 and ours.macs > paper["paper_macs"] * 1.5  # thop misses a third of it


@pytest.mark.parametrize("ref, name, nc, size", [
    ("vmunet_synapse", "vmunet", 9, 224), ("vmunet_v2_isic", "vmunet_v2", 1, 256),
    ("swin_unet_synapse", "swin_unet", 9, 224), ("transunet_synapse", "transunet", 9, 224)])
def test_paper_macs_equal_thop_on_the_authors_models(ref, name, nc, size):
    """thop on our model gives what thop gives on the authors' (their softmax, upsampling and
    pooling modules are modules here too), so paper_macs is comparable with published tables."""
    meta = json.loads((REFERENCE / ref / "meta.json").read_text(encoding="utf-8"))["flops"]
    expected = meta.get("thop_gmacs_official_counter") or meta["thop_gmacs"]
    torch.manual_seed(0)
    model = create_model(name, num_classes=nc, in_chans=3, img_size=size)
    got = cost.paper_count(model, torch.randn(1, 3, size, size))["paper_macs"]
    assert got == pytest.approx(expected * 1e9, rel=1e-9)


def test_swin_unet_fvcore_matches_the_authors_measurement():
    meta = json.loads((REFERENCE / "swin_unet_synapse" / "meta.json").read_text(encoding="utf-8"))["flops"]
    torch.manual_seed(0)
    model = create_model("swin_unet", num_classes=9, in_chans=3, img_size=224)
    assert cost.fvcore_macs(model, torch.randn(1, 3, 224, 224))["total"] == pytest.approx(meta["fvcore_gflops"] * 1e9,
                                                                                           rel=1e-9)


def test_params_and_thop_params():
    model = _tiny("vmunet")
    p = cost.count_params(model)
    assert p["params"] == sum(t.numel() for t in model.parameters()) == p["trainable_params"]
    # a frozen layer counts in params only: 3x4 weights + 4 biases frozen, 4x2 + 2 trainable
    partly_frozen = nn.Sequential(nn.Linear(3, 4).requires_grad_(False), nn.Linear(4, 2))
    assert cost.count_params(partly_frozen) == {"params": 16 + 10, "trainable_params": 10}
    # thop skips bare nn.Parameters (A_logs, Ds, ...) and the einsum'd projection weights
    assert cost.paper_count(model, torch.randn(1, 3, 64, 64))["paper_params"] < p["params"]


def test_latency_fields():
    model = _tiny("unet").eval()
    r = cost.measure_latency(model, torch.randn(2, 3, 64, 64), warmup=1, iters=5)
    assert 0 < r["latency_ms_median"] <= r["latency_ms_p90"]
    assert r["fps"] == pytest.approx(2 / (r["latency_ms_median"] / 1e3)) and (r["timed_iters"], r["warmup_iters"]) == (5, 1)
    with pytest.raises(BenchError, match="tf32 needs a CUDA device"):
        cost.measure_latency(model, torch.randn(1, 3, 64, 64), precision="tf32")
    with pytest.raises(BenchError, match="must be one of fp32, tf32, bf16, fp16"):
        cost.measure_latency(model, torch.randn(1, 3, 64, 64), precision="int8")


def test_latency_is_the_median_and_p90_of_the_timed_forwards_after_the_warm_up(monkeypatch):
    """On a fake clock: 3 slow warm-up forwards (1 s each, compiling or warming caches) must not be
    timed; the median of 1..9 and 100 ms is 5.5 ms, the p90 the 9th of the 10 sorted (9 ms), fps batch / median."""
    clock = [0.0]
    monkeypatch.setattr(cost, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    durations = iter([1.0] * 3 + [k / 1000 for k in (4, 9, 1, 100, 7, 2, 8, 3, 6, 5)])

    class Ticks(nn.Module):
        def forward(self, x):
            clock[0] += next(durations)
            return x

    r = cost.measure_latency(Ticks(), torch.zeros(4, 1), warmup=3, iters=10)
    assert r["latency_ms_median"] == pytest.approx(5.5) and r["latency_ms_p90"] == pytest.approx(9.0)
    assert r["fps"] == pytest.approx(4 / 0.0055) and next(durations, None) is None


def test_a_cuda_forward_is_timed_to_its_end(monkeypatch):
    """CUDA kernels run asynchronously: without a synchronize, the timer would stop at the launch."""
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    cost._sync(torch.device("cpu"))
    assert calls == []
    cost._sync(torch.device("cuda", 0))
    assert calls == [torch.device("cuda", 0)]


def test_bf16_runs_the_matmuls_in_bfloat16_on_cpu():
    """--precision bf16 times what autocast runs: its matmuls in bfloat16, not float32 under another name."""
    with cost.precision_context("bf16", torch.device("cpu")):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with cost.precision_context("fp32", torch.device("cpu")):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32


def test_peak_memory_on_cpu():
    model = _tiny("unet")
    fwd = [cost.peak_memory_mb(model.eval(), torch.randn(b, 3, 64, 64))["peak_mem_mb"] for b in (4, 8)]
    # the first layer's output alone: batch × 8 channels × 64² float32
    assert fwd[0] >= 4 * 8 * 64 * 64 * 4 / 2**20 and fwd[1] == pytest.approx(2 * fwd[0], rel=0.05)
    train = cost.peak_memory_mb(model.train(), torch.randn(4, 3, 64, 64), train_step=True)
    assert train["peak_mem_kind"] == "cpu_tensors" and train["peak_mem_mb"] > fwd[0]
    assert all(p.grad is None for p in model.parameters())
    # MiB (2**20 bytes), as docs/cost.md says: a forward that allocates 262144 float32 peaks at 1.0
    assert cost.peak_memory_mb(_Calls(lambda x: torch.zeros(262144)), torch.zeros(1))["peak_mem_mb"] == 1.0


def test_forward_memory_is_measured_without_autograd():
    """Inference keeps no activations for a backward: 8 Linear+Tanh layers at 1 MiB of activations each
    peak near 3 MiB (input, output and the Linear's before Tanh), where autograd would keep 9."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(256, 256), nn.Tanh()) for _ in range(8)]).eval()
    assert cost.peak_memory_mb(model, torch.randn(1024, 256))["peak_mem_mb"] < 4.5


def _bench(*args):
    return run_bench(*args).stdout


def test_profile_cli_writes_records_that_report_joins(tmp_path):
    out = _bench("profile", "--models", "unet,vmunet", "--tiny", "--img-size", "64", "--iters", "3", "--warmup", "1",
                 "--batch-size", "2", "--threads", "1", "--results", tmp_path, "--format", "csv")
    table = pd.read_csv(__import__("io").StringIO(out))
    for col in ("model", "params", "input_shape", "macs", "paper_macs", "flops", "fingerprint",
                "latency_ms_median", "fps", "throughput_fps", "peak_mem_mb", "train_peak_mem_mb", "scan_backend"):
        assert col in table.columns, col
    assert list(table["model"]) == ["unet", "vmunet"] and list(table["label"]) == ["unet (tiny)", "vmunet (tiny)"]
    assert (table["flops"] == 2 * table["macs"]).all()
    macs = out.splitlines()[1].split(",")[out.splitlines()[0].split(",").index("macs")]
    assert macs.isdigit(), macs  # a count, not "49545216.0"
    vm = table.set_index("model").loc["vmunet"]
    assert vm["scan_macs"] > 0 and vm["scan_backend"] == "cpu" and vm["paper_macs"] < vm["macs"]
    written = profiles.load_profiles(tmp_path)
    assert sorted(written["model"]) == ["unet", "vmunet"] and len(list((tmp_path / "profiles").glob("*.json"))) == 2
    report = _bench("report", "--results", tmp_path)
    assert "## Cost · input 1x3x64x64 · fp32" in report
    assert [r["model"] for r in md_rows(report[report.index("## Cost"):], "model")] == ["vmunet (tiny)", "unet (tiny)"]
    # a CLI audit: the boards' CSV of a folder of profiles only was its header, without a word
    csv_only = run_bench("report", "--results", tmp_path, "--format", "csv")
    assert csv_only.stdout.count("\n") == 1 and "the boards' CSV holds its header only (its `bench profile` " \
        "records' cost tables: --format md or latex)" in csv_only.stderr
    # profiling the same setup again replaces its record rather than adding one
    rows = json.loads(_bench("profile", "--models", "unet", "--tiny", "--img-size", "64", "--iters", "2", "--warmup",
                             "0", "--threads", "1", "--results", tmp_path, "--format", "json"))
    assert len(list((tmp_path / "profiles").glob("*.json"))) == 2 and rows[0]["label"] == "unet (tiny)"
    assert not math.isnan(profiles.load_profiles(tmp_path).set_index("model").loc["unet", "macs"])


def test_counts_only_profile_renders_without_timing_columns(tmp_path):
    """--no-timing records have no latency, FPS or memory: the Markdown table (printed, and in
    `bench report`) shows the counts and leaves those columns out instead of failing."""
    out = _bench("profile", "--models", "vmunet", "--tiny", "--img-size", "64", "--no-timing", "--threads", "1",
                 "--results", tmp_path, "--format", "md")
    (row,) = md_rows(out, "model")
    assert row["model"] == "vmunet (tiny)" and row["macs"].endswith(" G") and row["paper_macs"].endswith(" G")
    assert not {"latency_ms_median", "latency_ms_p90", "fps", "peak_mem_mb", "train_peak_mem_mb"} & set(row)
    assert "| vmunet" in _bench("report", "--results", tmp_path)


def test_profile_defaults_to_the_papers_synapse_input(bench_here, tmp_path):
    """Without --img-size, --in-chans and --num-classes a profile is of the input the papers' cost tables give
    (the README's cost table: 1x3x224x224, Synapse's 9 classes): another default would put other costs beside theirs."""
    (row,) = json.loads(bench_here("profile", "--models", "unet", "--tiny", "--no-timing", "--format", "json",
                                   "--results", tmp_path).stdout)
    assert row["input_shape"] == "1x3x224x224" and row["model_config"]["num_classes"] == 9, row


def test_find_batch_size_stops_before_out_of_memory():
    class Capped(nn.Module):
        def forward(self, x):
            if x.shape[0] > 24:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return x

    make = lambda b: torch.zeros(b, 1)  # noqa: E731
    assert cost.find_batch_size(Capped(), make) == 16
    assert cost.find_batch_size(Capped(), make, limit=4) == 4

    class Never(nn.Module):
        def forward(self, x):
            raise torch.OutOfMemoryError("simulated")

    with pytest.raises(BenchError, match=r"^Never: even batch 1 \(input \(1, 1\) on cpu\) runs out of memory; "
                                         r"profile it at a smaller --img-size, or with --device cpu$"):
        cost.find_batch_size(Never(), make)

    class CudnnWorkspace(nn.Module):  # near the limit cuDNN reports a failed allocation this way
        def forward(self, x):
            if x.shape[0] > 8:
                raise RuntimeError("FIND was unable to find an engine to execute this computation")
            return x

    assert cost.find_batch_size(CudnnWorkspace(), make) == 8

    class CublasWorkspace(nn.Module):  # and cuBLAS so
        def forward(self, x):
            if x.shape[0] > 8:
                raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
            return x

    assert cost.find_batch_size(CublasWorkspace(), make) == 8

    class Broken(nn.Module):  # any other error is the model's, and must not read as "does not fit"
        def forward(self, x):
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        cost.find_batch_size(Broken(), make)


def test_batch_search_keeps_every_tensor_within_32_bit_indexing():
    """A found batch never takes a tensor past 2**31 - 1 elements, where a large GPU still has memory
    but CUDA kernels indexed with 32-bit integers fail or silently go wrong."""
    class Widening(nn.Module):  # its largest tensor: the (b, 8, 6, 6) activation
        def forward(self, x):
            return x.repeat(1, 8, 3, 3).sum(1)

    x = torch.zeros(1, 1, 2, 2)
    assert cost.largest_tensor_numel(Widening(), x) == 8 * 6 * 6
    make = lambda b: torch.zeros(b, 1)  # noqa: E731
    assert cost.find_batch_size(nn.Identity(), make, numel_at_1=2**28) == 4  # 2**31 // 2**28 = 8 would pass 2**31 - 1
    assert cost.find_batch_size(nn.Identity(), make, numel_at_1=2**20) == 512  # the usual cap
    assert cost.find_batch_size(nn.Identity(), make, numel_at_1=2**32) == 1  # batch 1 is timed regardless


def test_throughput_halves_a_found_batch_that_runs_out_of_memory_when_timed():
    class Tight(nn.Module):  # one forward at batch 16 fits; the repeated timed ones do not
        calls = 0

        def forward(self, x):
            self.calls += 1
            if x.shape[0] > 4 and self.calls > 1:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return x

    make = lambda b: torch.zeros(b, 1)  # noqa: E731
    batch, timing = cost._throughput(Tight(), make, 16, 0, 5, "fp32", halve=True)
    assert batch == 4 and timing["fps"] > 0
    with pytest.raises(BenchError, match="--batch-size 16: the timed forwards run out of memory on cpu"):
        cost._throughput(Tight(), make, 16, 0, 5, "fp32", halve=False)  # a batch the user gave: reported


def test_throughput_times_a_quarter_of_the_warm_up_and_a_tenth_of_the_iterations_at_least_2_and_5():
    """A large batch is slow: its timing takes fewer forwards, but never fewer than 2 warm-ups and 5 timed ones."""
    for warmup, iters, expected in ((20, 2, (5, 5)), (0, 100, (2, 10)), (40, 60, (10, 6))):
        calls = []
        count = _Calls(lambda x: calls.append(1) or x)
        batch, timing = cost._throughput(count, lambda b: torch.zeros(b, 1), 4, warmup, iters, "fp32", halve=False)
        assert batch == 4 and (timing["warmup_iters"], timing["timed_iters"]) == expected
        assert len(calls) == sum(expected)


def test_several_precisions_are_timed_and_counted_once(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from bench.cli import app

    calls = []
    real = cost._counts
    monkeypatch.setattr(cost, "_counts", lambda model, x: calls.append(1) or real(model, x))
    result = CliRunner().invoke(app, ["profile", "--models", "unet", "--tiny", "--img-size", "32", "--device", "cpu",
                                      "--precision", "fp32,bf16", "--iters", "2", "--warmup", "0", "--format", "json",
                                      "--results", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout[result.stdout.index("["):])
    assert [r["precision"] for r in rows] == ["fp32", "bf16"] and len(calls) == 1
    assert rows[0]["macs"] == rows[1]["macs"] > 0 and rows[0]["fvcore_macs"] == rows[1]["fvcore_macs"]
    assert all(r["latency_ms_median"] > 0 for r in rows)
    assert len(list((tmp_path / "profiles").glob("*.json"))) == 2  # one record per precision
    assert all(json.loads(p.read_text(encoding="utf-8"))["tiny"] is True  # --tiny
               for p in (tmp_path / "profiles").glob("*.json"))
    bad = CliRunner().invoke(app, ["profile", "--models", "unet", "--device", "cpu", "--precision", "fp32,tf32",
                                   "--results", str(tmp_path / "none")])
    # CliRunner calls the app itself: the BenchError reaches it, which `bench` prints as one line, exit 2
    assert isinstance(bad.exception, BenchError) and "--precision tf32 needs a CUDA device" in str(bad.exception)
    assert not (tmp_path / "none" / "profiles").exists()  # refused before any model runs


@pytest.mark.parametrize("ref, dims, size, nc, chans", [("lightm_unet_2d", 2, 256, 2, 3), ("lightm_unet_3d", 3, 32, 3, 1)])
def test_lightm_unet_counts_match_the_authors_model(ref, dims, size, nc, chans):
    """thop's count equals the reference's thop on the authors' model (2-D at 256², the volumetric
    variant, ``--set spatial_dims=3``, on a 32³ cube): mamba-ssm applies in_proj, dt_proj and the
    causal conv functionally, which thop does not see, and so does our Mamba block. fvcore's count
    without the scan equals theirs too (the scan formulas differ: ours is the Mamba authors' 9·L·D·N
    estimate, the reference plugged in VM-UNet's einsum count)."""
    meta = json.loads((REFERENCE / ref / "meta.json").read_text(encoding="utf-8"))["flops"]
    (want,) = [r for r in meta["per_input"] if r["input_shape"] == [1, chans] + [size] * dims]
    torch.manual_seed(0)
    model = create_model("lightm_unet", num_classes=nc, in_chans=chans, img_size=size, spatial_dims=dims)
    x = torch.randn(1, chans, *[size] * dims)
    assert cost.paper_count(model, x)["paper_macs"] == pytest.approx(want["thop_gmacs"] * 1e9, rel=1e-9)
    fv = cost.fvcore_macs(model, x)
    assert fv[cost.FVCORE_SCAN_KEY] > 0
    for op, macs in want["fvcore_by_operator"].items():
        if op != "conv":
            assert fv[op] == macs, op
    # conv: our causal conv pads both sides and drops the last d_conv - 1 = 3 outputs of each channel
    # (mamba-ssm's own path without causal-conv1d does the same); the reference computed only L
    extra = sum(3 * m.conv1d.weight.shape[0] * m.conv1d.weight.shape[-1] for m in model.modules() if isinstance(m, Mamba))
    assert fv["conv"] == want["fvcore_by_operator"]["conv"] + extra
    row = cost.profile_model("lightm_unet", img_size=size, num_classes=nc, in_chans=chans, timing=False,
                             overrides={"spatial_dims": dims})
    assert row["input_shape"] == "x".join(map(str, x.shape)) and row["paper_macs"] == pytest.approx(want["thop_gmacs"] * 1e9)


def test_profile_csv_names_tiny_configurations_as_the_tables_do(tmp_path):
    from typer.testing import CliRunner

    from bench.cli import app

    out = CliRunner().invoke(app, ["profile", "--models", "unet", "--tiny", "--img-size", "32", "--no-timing",
                                   "--format", "csv", "--results", str(tmp_path)])
    assert out.exit_code == 0, out.output
    rows = pd.read_csv(io.StringIO(out.stdout[out.stdout.index("model,"):]))
    assert rows["label"].tolist() == ["unet (tiny)"] and rows["model"].tolist() == ["unet"]
    assert json.loads(rows["model_config"].iloc[0])["widths"] == [8, 16, 32, 64]
