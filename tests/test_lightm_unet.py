"""LightM-UNet and the Mamba block: the authors' layouts (2-D and 3-D), parameter counts, the Mamba
block against a transcription of mamba-ssm's reference (slow) path and against its recurrence written
out, its init, and the whole forward recomposed in functional ops."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from bench.registry import create_model, load_weights
from ssm_models import scan
from ssm_models.lightm_unet import LightMUNet, MambaLayer, ResMambaBlock, ResUpBlock
from ssm_models.mamba import Mamba
from tests.fixtures import randomise_like_a_checkpoint, require_mamba_kernels
from tests.test_scan import sequential_scan
from tests.test_vmunet import REFERENCE, _manifest


@pytest.mark.parametrize("ref", ["lightm_unet_2d", "lightm_unet_3d"])
def test_authors_layout_loads_strictly(ref, tmp_path):
    meta = json.loads((REFERENCE / ref / "meta.json").read_text(encoding="utf-8"))
    args = meta["constructor_args"]
    model = create_model("lightm_unet", num_classes=args["out_channels"], in_chans=args["in_channels"],
                         spatial_dims=args["spatial_dims"])
    assert sum(p.numel() for p in model.parameters()) == meta["params_total"]
    manifest = _manifest(ref)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == [(k, s) for k, s, _ in manifest]
    g = torch.Generator().manual_seed(0)
    weights = {k: torch.randn(s, generator=g) for k, s, _ in manifest}
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": weights, "trainer_name": "nnUNetTrainerLightMUNet"}, path)  # nnU-Net v2
    load_weights(model, path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    # a checkpoint holds no eps: the authors' LayerNorms and MONAI's GroupNorms use torch's default 1e-5
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    assert {m.eps for m in model.modules() if isinstance(m, norms)} == {1e-5}


def reference_mamba(m: Mamba, hidden: torch.Tensor) -> torch.Tensor:
    """mamba_simple.Mamba's slow path, op by op, with the reference scan."""
    b, L, _ = hidden.shape
    xz = (m.in_proj.weight @ hidden.reshape(b * L, -1).t()).reshape(-1, b, L).permute(1, 0, 2)
    A = -torch.exp(m.A_log.float())
    x, z = xz.chunk(2, dim=1)
    x = F.silu(m.conv1d(x)[..., :L])
    x_dbl = m.x_proj(x.permute(0, 2, 1).reshape(b * L, -1))
    dt, B, C = torch.split(x_dbl, [m.dt_rank, m.d_state, m.d_state], dim=-1)
    dt = (m.dt_proj.weight @ dt.t()).reshape(-1, b, L).permute(1, 0, 2)
    B = B.reshape(b, L, -1).permute(0, 2, 1)
    C = C.reshape(b, L, -1).permute(0, 2, 1)
    y = scan.selective_scan(x, dt, A, B, C, m.D.float(), z=z, delta_bias=m.dt_proj.bias.float(),
                            delta_softplus=True, backend="ref")
    return m.out_proj(y.permute(0, 2, 1))


def test_mamba_block_matches_reference_path():
    torch.manual_seed(0)
    m = Mamba(d_model=16)
    h = torch.randn(2, 23, 16)
    torch.testing.assert_close(m(h), reference_mamba(m, h), rtol=1e-5, atol=1e-5)
    # causality: the output at t does not depend on inputs after t
    h2 = h.clone()
    h2[:, 15:] += 1.0
    torch.testing.assert_close(m(h2)[:, :15], m(h)[:, :15], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block", ["mamba", "ss2d"])
def test_ssm_parameters_start_where_mamba_ssm_starts_them(block):
    """A model trained from scratch starts as the authors' does. Guards against dt bias without the inverse
    softplus (time steps ~0.7, not in [1e-3, 0.1]), an A_log init other than log(1..N), D other than ones
    and dt_proj's weights outside U(±dt_rank^-0.5)."""
    from ssm_models.vss import SS2D

    torch.manual_seed(0)
    if block == "mamba":
        m = Mamba(d_model=32, d_state=6)
        bias, a_log, d, dt_weight = m.dt_proj.bias, m.A_log, m.D, m.dt_proj.weight
    else:
        m = SS2D(d_model=32, d_state=6)
        bias, a_log, d, dt_weight = m.dt_projs_bias, m.A_logs, m.Ds, m.dt_projs_weight
    assert torch.equal(d.detach(), torch.ones_like(d))
    bound = m.dt_rank**-0.5  # mamba-ssm's dt_init="random"; 128 (SS2D: 512) draws reach past 0.9 of it
    assert 0.9 * bound < dt_weight.abs().max() <= bound
    # mamba-ssm's Mamba.__init__: dt log-uniform in [dt_min 1e-3, dt_max 0.1] (floor 1e-4), bias = softplus⁻¹(dt)
    dt = F.softplus(bias.detach().double())
    assert dt.numel() == 64 * (1 if block == "mamba" else 4)  # expand 2: 64 channels (SS2D: 4 directions)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert dt.max() / dt.min() > 10  # spread over the range, not one value
    # S4D-real: A = -(1, 2, ..., N) in every row, stored as log(-A)
    torch.testing.assert_close(torch.exp(a_log.detach()), torch.arange(1.0, 7.0).expand_as(a_log))


def test_mamba_block_is_the_recurrence_with_each_channels_own_a_and_d():
    """The block written out: causal depthwise conv (left padding only), SiLU, x_proj → (dt, B, C), the
    recurrence step by step, the SiLU(z) gate, out_proj. A fresh model's A rows are all alike; with a
    checkpoint's, channel c must read row c of A_log and D."""
    torch.manual_seed(0)
    m = Mamba(d_model=4, d_state=3).double()
    randomise_like_a_checkpoint(m)
    L, di, N, r = 6, m.d_inner, m.d_state, m.dt_rank
    h = torch.randn(1, L, 4, dtype=torch.float64)
    with torch.no_grad():
        xz = (h[0] @ m.in_proj.weight.t()).t()  # (2·di, L)
        x, z = xz[:di], xz[di:]
        past = F.pad(x, (m.d_conv - 1, 0))
        w = m.conv1d.weight[:, 0]
        x = F.silu(torch.stack([(past[:, t:t + m.d_conv] * w).sum(-1) for t in range(L)], -1) + m.conv1d.bias[:, None])
        dbl = m.x_proj.weight @ x
        y, _ = sequential_scan(x[None], (m.dt_proj.weight @ dbl[:r])[None], -torch.exp(m.A_log), dbl[None, r:r + N],
                               dbl[None, r + N:], m.D, z=z[None], delta_bias=m.dt_proj.bias, delta_softplus=True)
        torch.testing.assert_close(m(h)[0], (m.out_proj.weight @ y[0]).t())


def test_mamba_layer_shares_its_norm():
    torch.manual_seed(0)
    layer = MambaLayer(8, 16)
    x = torch.randn(2, 8, 4, 5)
    flat = x.reshape(2, 8, 20).transpose(1, 2)
    want = layer.proj(layer.norm(layer.mamba(layer.norm(flat)) + layer.skip_scale * flat))
    torch.testing.assert_close(layer(x), want.transpose(1, 2).reshape(2, 16, 4, 5))


def lightm_by_hand(m: LightMUNet, x: torch.Tensor) -> torch.Tensor:
    """Spec 3.1 in functional ops on the model's weights (its Mamba blocks called as modules): stem; per
    level MambaLayer + max-pool (i > 0), then ResMambaBlocks; per decoder stage 1×1 conv, ×2 interpolation
    (align_corners False), + the encoder output, then a ResUpBlock; head GroupNorm, ReLU, 1×1 conv."""
    dims = x.ndim - 2
    conv = F.conv2d if dims == 2 else F.conv3d

    def gn(norm, t):
        return F.group_norm(t, norm.num_groups, norm.weight, norm.bias, 1e-5)

    def dw_separable(seq, t):  # depthwise, then pointwise
        a, p = seq[0].conv, seq[1].conv
        return conv(conv(t, a.weight, a.bias, padding=a.padding, groups=a.groups), p.weight, p.bias)

    def mamba_layer(layer, t):  # tokens row-major over (D,) H, W; one LayerNorm applied twice
        b, c, *grid = t.shape
        flat = t.reshape(b, c, -1).transpose(1, 2)
        w, bias = layer.norm.weight, layer.norm.bias
        out = F.layer_norm(layer.mamba(F.layer_norm(flat, (c,), w, bias, 1e-5)) + layer.skip_scale * flat, (c,), w,
                           bias, 1e-5)
        return (out @ layer.proj.weight.t() + layer.proj.bias).transpose(1, 2).reshape(b, -1, *grid)

    def block(blk, t):
        if isinstance(blk, ResMambaBlock):
            y = mamba_layer(blk.conv1, F.relu(gn(blk.norm1, t)))
            return mamba_layer(blk.conv2, F.relu(gn(blk.norm2, y))) + t
        assert isinstance(blk, ResUpBlock), type(blk)
        return F.relu(gn(blk.norm2, dw_separable(blk.conv, F.relu(gn(blk.norm1, t))) + blk.skip_scale * t))

    x = dw_separable(m.convInit, x)
    skips = []
    for i, down in enumerate(m.down_layers):
        if i > 0:
            x = (F.max_pool2d if dims == 2 else F.max_pool3d)(mamba_layer(down[0][0], x), 2, 2)
        for blk in list(down)[1:]:
            x = block(blk, x)
        skips.append(x)
    for up, layer, skip in zip(m.up_samples, m.up_layers, skips[-2::-1]):
        x = F.interpolate(conv(x, up[0].conv.weight), scale_factor=2, mode="bilinear" if dims == 2 else "trilinear",
                          align_corners=False) + skip
        for blk in layer:
            x = block(blk, x)
    return dw_separable(m.conv_final[2], F.relu(gn(m.conv_final[0], x)))


@pytest.mark.parametrize("dims", [2, 3])
def test_lightm_unet_forward_is_the_spec_wiring(dims):
    """The whole forward against spec 3.1 written out (the other tests check the Mamba parts and shapes only):
    where residuals, skips, ReLUs and skip scales sit changes what an authors' checkpoint computes. Skip
    scales at 0.6, as trained ones are not 1 (where 1 multiplies cannot show); a non-cubic input."""
    torch.manual_seed(0)
    m = LightMUNet(num_classes=2, in_chans=1, spatial_dims=dims, init_filters=8, blocks_down=(1, 1, 1, 1))
    m = m.double().eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("skip_scale"):
                p.fill_(0.6)
        x = torch.randn(1, 1, *([8, 16] if dims == 2 else [8, 8, 16]), dtype=torch.float64)
        torch.testing.assert_close(m(x), lightm_by_hand(m, x))


def test_3d_forward_and_shape_errors():
    from bench.errors import BenchError

    model = create_model("lightm_unet", num_classes=3, in_chans=1, spatial_dims=3, init_filters=8,
                         blocks_down=(1, 1, 1, 1)).eval()
    assert model(torch.randn(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
    with pytest.raises(BenchError, match=r"expects input \(B, C, D, H, W\)"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(BenchError, match="divisible by 8; got 16x16x12, pad to 16x16x16"):
        model(torch.randn(1, 1, 16, 16, 12))


def test_float16_runs_cast_whole_or_under_autocast():
    """The authors' MambaLayer casts a float16 input to float32 for its float32 norm (AMP); a model cast to
    float16 (.half()) has float16 norms, where that cast made the first layer norm fail on mixed dtypes. Both
    now run, near the float64 model."""
    torch.manual_seed(0)
    model = create_model("lightm_unet", num_classes=3, img_size=32, tiny=True).eval()
    x = torch.randn(1, 3, 32, 32)
    seen = []
    layer = next(m for m in model.modules() if isinstance(m, MambaLayer))
    layer.norm.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    with torch.no_grad():
        want = model.double()(x.double())
        halved = model.half()(x.half())
        with torch.autocast("cpu", dtype=torch.float16):
            mixed = model.float()(x)
    # its two norm calls per forward: float64; .half(): float16 throughout; AMP: the authors' cast to float32
    assert seen[::2] == [torch.float64, torch.float16, torch.float32]
    for got in (halved, mixed):
        assert got.dtype == torch.float16
        assert (got.double() - want).abs().max() <= 2e-2 * want.abs().max()


def test_fused_path_follows_the_scan_backend(monkeypatch):
    """mamba-ssm's fused block runs exactly when the scan would run the cuda backend and
    causal-conv1d is there: forcing another backend turns it off, and running it is recorded as
    the cuda backend."""
    import types

    fake = types.SimpleNamespace(selective_scan_fn=object(), mamba_inner_fn=object(), causal_conv1d_fn=object())
    monkeypatch.setattr(scan, "_mamba", fake)
    monkeypatch.setattr(scan, "_last", None)
    monkeypatch.setenv(scan.ENV_VAR, "torch")
    assert scan.fused_mamba_inner("cuda") is None and scan.last_backend() is None
    monkeypatch.delenv(scan.ENV_VAR)
    assert scan.fused_mamba_inner("cpu") is None  # CPU tensors never take mamba-ssm's kernels
    assert scan.fused_mamba_inner("cuda") is fake.mamba_inner_fn and scan.last_backend() == "cuda"
    # an ONNX export has no fused kernel: the block's own path, whose scan writes its steps
    exporting = scan._in_onnx_export
    monkeypatch.setattr(scan, "_in_onnx_export", lambda: True)
    assert scan.fused_mamba_inner("cuda") is None
    monkeypatch.setattr(scan, "_in_onnx_export", exporting)
    fake.causal_conv1d_fn = None  # causal-conv1d missing: mamba-ssm's Mamba takes its slow path too
    assert scan.fused_mamba_inner("cuda") is None
    monkeypatch.setattr(scan, "_mamba", False)  # mamba-ssm does not import
    assert scan.fused_mamba_inner("cuda") is None


def fake_mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
                        out_proj_bias, A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None,
                        C_proj_bias=None, delta_softplus=True):
    """mamba-ssm's ``mamba_inner_fn`` as its ``mamba_inner_ref`` defines it (positional order as in
    mamba_ssm/ops/selective_scan_interface.py), on CPU with the reference scan; it also checks the
    layout its CUDA version wants without copying: xz's time axis contiguous."""
    assert xz.stride(-1) == 1 and B is None and C is None and B_proj_bias is None and C_proj_bias is None
    L = xz.shape[-1]
    rank, n = delta_proj_weight.shape[1], A.shape[-1]
    x, z = xz.chunk(2, dim=1)
    x = F.silu(F.conv1d(x, conv1d_weight, conv1d_bias, padding=conv1d_weight.shape[-1] - 1,
                        groups=x.shape[1])[..., :L])
    x_dbl = F.linear(x.transpose(1, 2).reshape(-1, x.shape[1]), x_proj_weight)  # ((b l), r + 2n)
    delta = (delta_proj_weight @ x_dbl[:, :rank].t()).reshape(-1, xz.shape[0], L).transpose(0, 1)
    B = x_dbl[:, rank:rank + n].reshape(xz.shape[0], L, n).transpose(1, 2)
    C = x_dbl[:, rank + n:].reshape(xz.shape[0], L, n).transpose(1, 2)
    y = scan.selective_scan(x, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                            backend="ref")
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def test_fused_call_gives_mamba_inner_fn_its_arguments(monkeypatch):
    """The fused path's call into mamba-ssm (argument order, dtypes, xz's layout), checked on CPU
    against mamba_inner_ref's definition: the same output as our unfused path."""
    import ssm_models.mamba as mamba_module

    torch.manual_seed(0)
    m = Mamba(d_model=16)
    h = torch.randn(2, 12, 16)
    ours = m(h)
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return fake_mamba_inner_fn(*args, **kwargs)

    monkeypatch.setattr(mamba_module, "fused_mamba_inner", lambda device, dtype=None: counted)
    torch.testing.assert_close(m(h), ours, rtol=1e-5, atol=1e-5)
    assert len(calls) == 1  # the fused branch ran, not the unfused one twice


@pytest.mark.cuda
def test_fused_cuda_path_matches_our_path():
    require_mamba_kernels()
    torch.manual_seed(0)
    m = Mamba(d_model=32).cuda()
    h = torch.randn(2, 64, 32, device="cuda")
    assert scan.fused_mamba_inner("cuda") is not None, "causal-conv1d does not import: the fused path cannot run"
    fused = m(h)
    assert scan.last_backend() == "cuda"
    ours = reference_mamba(m.cpu(), h.cpu())
    torch.testing.assert_close(fused.cpu(), ours, rtol=1e-4, atol=1e-4)
