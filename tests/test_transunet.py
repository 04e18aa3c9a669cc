"""TransUNet R50-ViT-B_16: the authors' layout, parameter count, weight-standardised conv and ViT
block against timm (independent implementations of the same functions), the 55→56 skip padding; the
bottleneck units, root, tokens and decoder written out in functional ops, n_skip, the ViT MLP init."""

from __future__ import annotations

import json
import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import BenchError
from bench.registry import create_model, load_official_state_dict
from baselines.transunet import Block, DecoderCup, Embeddings, Mlp, PreActBottleneck, ResNetV2, StdConv2d
from tests.fixtures import randomise_like_a_checkpoint
from tests.test_vmunet import REFERENCE, _manifest


def _timm():
    from bench._tv_compat import ensure_torchvision

    ensure_torchvision()
    import timm.layers
    import timm.models.vision_transformer

    return timm


def test_authors_layout_loads_strictly():
    model = create_model("transunet", num_classes=9, img_size=224)
    meta = json.loads((REFERENCE / "transunet_synapse" / "meta.json").read_text(encoding="utf-8"))
    assert sum(p.numel() for p in model.parameters()) == meta["params_total"] == 105_277_081
    manifest = _manifest("transunet_synapse")
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == [(k, s) for k, s, _ in manifest]
    g = torch.Generator().manual_seed(0)
    sd = {k: (torch.randn(s, generator=g) if d == "float32" else torch.zeros(s, dtype=torch.int64))
          for k, s, d in manifest}
    load_official_state_dict(model, sd)
    assert torch.equal(model.state_dict()["transformer.encoder.layer.3.attn.key.bias"],
                       sd["transformer.encoder.layer.3.attn.key.bias"])


def test_std_conv_matches_timm():
    timm = _timm()
    torch.manual_seed(0)
    ours = StdConv2d(8, 16, 3, padding=1, bias=False)
    theirs = timm.layers.StdConv2d(8, 16, 3, padding=1, bias=False, eps=1e-5)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_vit_block_matches_timm():
    timm = _timm()
    torch.manual_seed(0)
    ours = Block(hidden=32, heads=4, mlp_dim=64, dropout=0.0, attn_dropout=0.0).eval()
    theirs = timm.models.vision_transformer.Block(dim=32, num_heads=4, mlp_ratio=2.0, qkv_bias=True,
                                                  norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
    a = ours.attn
    theirs.load_state_dict({
        "norm1.weight": ours.attention_norm.weight, "norm1.bias": ours.attention_norm.bias,
        "attn.qkv.weight": torch.cat([a.query.weight, a.key.weight, a.value.weight]),
        "attn.qkv.bias": torch.cat([a.query.bias, a.key.bias, a.value.bias]),
        "attn.proj.weight": a.out.weight, "attn.proj.bias": a.out.bias,
        "norm2.weight": ours.ffn_norm.weight, "norm2.bias": ours.ffn_norm.bias,
        "mlp.fc1.weight": ours.ffn.fc1.weight, "mlp.fc1.bias": ours.ffn.fc1.bias,
        "mlp.fc2.weight": ours.ffn.fc2.weight, "mlp.fc2.bias": ours.ffn.fc2.bias,
    })
    x = torch.randn(2, 10, 32)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_quarter_scale_skip_is_zero_padded_55_to_56():
    net = ResNetV2().eval()
    with torch.no_grad():
        out, feats = net(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1024, 14, 14)
    assert [tuple(f.shape[1:]) for f in feats] == [(512, 28, 28), (256, 56, 56), (64, 112, 112)]
    assert feats[1][:, :, 55, :].abs().sum() == 0 and feats[1][:, :, :, 55].abs().sum() == 0
    assert feats[1][:, :, :55, :55].abs().sum() > 0


def _standardised(w: torch.Tensor) -> torch.Tensor:
    """Spec 1.2: per output channel over (in, kh, kw), population variance, eps 1e-5 inside the sqrt."""
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    return (w - mean) / torch.sqrt(((w - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True) + 1e-5)


def bottleneck_by_hand(u, x: torch.Tensor, stride: int) -> torch.Tensor:
    """Spec 1.2 (where timm and JAX differ, 1.8): conv1 → GN(32, eps 1e-6) → ReLU → conv2 with the stride →
    GN → ReLU → conv3 → GN; shortcut a strided 1×1 StdConv → GroupNorm(C, C) with eps 1e-5, else identity;
    ReLU after the sum."""
    def gn(t, norm):
        return F.group_norm(t, 32, norm.weight, norm.bias, 1e-6)

    y = F.relu(gn(F.conv2d(x, _standardised(u.conv1.weight)), u.gn1))
    y = F.relu(gn(F.conv2d(y, _standardised(u.conv2.weight), stride=stride, padding=1), u.gn2))
    y = gn(F.conv2d(y, _standardised(u.conv3.weight)), u.gn3)
    if not hasattr(u, "downsample"):
        return F.relu(x + y)
    r = F.conv2d(x, _standardised(u.downsample.weight), stride=stride)
    return F.relu(F.group_norm(r, r.shape[1], u.gn_proj.weight, u.gn_proj.bias, 1e-5) + y)


@pytest.mark.parametrize("small", [False, True])
@pytest.mark.parametrize("cin, cout, cmid, stride", [(64, 128, 32, 2), (128, 128, 32, 1), (64, 128, 64, 1)])
def test_bottleneck_unit_is_the_authors(cin, cout, cmid, stride, small):
    """A Google R50 checkpoint holds no group counts, eps, stride places or ReLU places: each is the authors'
    or the pretrained encoder computes something else. ``small`` gives the GroupNorms a tiny variance (input
    ×1e-3, gains 3e-3 over a bias of 0.5), so their eps (1e-6 in the units, 1e-5 in gn_proj) decide."""
    unit = PreActBottleneck(cin, cout, cmid, stride)
    randomise_like_a_checkpoint(unit)
    unit = unit.double()
    x = torch.randn(2, cin, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        if small:
            x = x * 1e-3
            for gn in (unit.gn1, unit.gn2):
                gn.weight.fill_(3e-3)
                gn.bias.fill_(0.5)
        torch.testing.assert_close(unit(x), bottleneck_by_hand(unit, x, stride), rtol=1e-9, atol=1e-9)


def test_root_pool_and_skips_are_the_authors():
    """Spec 1.2: root 7×7/2 StdConv (pad 3) → GN(32, eps 1e-6) → ReLU, which is the 1/2 skip; 3×3/2 max-pool
    without padding (32 → 15); skips deepest first, the 1/4 one zero-padded at the bottom/right (15 → 16)."""
    net = ResNetV2(block_units=(1, 1, 1), width=32).double().eval()
    randomise_like_a_checkpoint(net)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        out, feats = net(x)
        gn = net.root.gn
        root = F.relu(F.group_norm(F.conv2d(x, _standardised(net.root.conv.weight), stride=2, padding=3), 32,
                                   gn.weight, gn.bias, 1e-6))
        pooled = F.max_pool2d(root, 3, 2, 0)
        b1 = bottleneck_by_hand(net.body.block1.unit1, pooled, 1)
        b2 = bottleneck_by_hand(net.body.block2.unit1, b1, 2)
        b3 = bottleneck_by_hand(net.body.block3.unit1, b2, 2)
    assert pooled.shape[-1] == 15
    for got, want in zip([*feats, out], [b2, F.pad(b1, (0, 1, 0, 1)), root, b3]):
        torch.testing.assert_close(got, want)


def test_tokens_are_row_major_plus_their_position():
    """Spec 1.3: token r·side + c is the 1×1 patch embedding of the CNN map at (r, c) plus position r·side + c;
    a transposed grid or a missing position embedding still loads the authors' weights."""
    emb = Embeddings(img_size=64, hidden=16, dropout=0.0, resnet_units=(1, 1, 1), resnet_width=32).eval()
    randomise_like_a_checkpoint(emb)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        tokens, _ = emb(x)
        f, _ = emb.hybrid_model(x)
    w, bias, pos = emb.patch_embeddings.weight[:, :, 0, 0], emb.patch_embeddings.bias, emb.position_embeddings[0]
    side = f.shape[-1]
    want = torch.stack([w @ f[0, :, r, c] + bias + pos[r * side + c] for r in range(side) for c in range(side)])
    torch.testing.assert_close(tokens[0], want.detach(), rtol=1e-4, atol=1e-4)


def _conv_bn_relu(x: torch.Tensor, seq) -> torch.Tensor:
    """The authors' Conv2dReLU in eval: 3×3 conv without bias, BatchNorm with PyTorch's eps 1e-5, ReLU."""
    conv, bn = seq[0], seq[1]
    y = F.conv2d(x, conv.weight, None, padding=1)
    return F.relu(F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, 1e-5))


def test_decoder_cup_is_the_authors():
    """Spec 1.4: tokens laid row-major into (C, h, w) → conv_more; each block bilinear ×2 with
    align_corners=True → concat [upsampled, skip] → two conv-BN-ReLU. The BatchNorms keep PyTorch's
    defaults (eps 1e-5, momentum 0.1), as the authors' nn.BatchNorm2d(c)."""
    dec = DecoderCup(16, channels=(8, 8, 4, 4), skips=(8, 4, 4, 4), n_skip=3, head_channels=8).eval()
    randomise_like_a_checkpoint(dec)
    assert {(m.eps, m.momentum) for m in dec.modules() if isinstance(m, nn.BatchNorm2d)} == {(1e-5, 0.1)}
    tokens = torch.randn(2, 9, 16)
    feats = [torch.randn(2, 8, 6, 6), torch.randn(2, 4, 12, 12), torch.randn(2, 4, 24, 24)]
    with torch.no_grad():
        x = torch.empty(2, 16, 3, 3)
        for r in range(3):
            for c in range(3):
                x[:, :, r, c] = tokens[:, 3 * r + c]
        x = _conv_bn_relu(x, dec.conv_more)
        for i, blk in enumerate(dec.blocks):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            if i < 3:
                x = torch.cat([x, feats[i]], dim=1)
            x = _conv_bn_relu(_conv_bn_relu(x, blk.conv1), blk.conv2)
        torch.testing.assert_close(dec(tokens, feats), x, rtol=1e-4, atol=1e-4)


def test_n_skip_one_keeps_the_eighth_scale_skip_as_the_code_does():
    """Spec 1.4: in the authors' code decoder block i takes a skip iff i < n_skip, so ``--set n_skip=1``
    keeps the deepest (1/8, 512-channel) skip, not the 1/4 one of the paper's 1-skip ablation."""
    model = create_model("transunet", num_classes=2, img_size=64, hidden=32, layers=1, heads=2, mlp_dim=32, n_skip=1)
    assert [blk.conv1[0].in_channels for blk in model.decoder.blocks] == [512 + 512, 256, 128, 64]
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_vit_mlp_starts_xavier_uniform_with_near_zero_biases():
    """Spec 1.3: the MLP's weights Xavier-uniform, its biases N(0, 1e-6): PyTorch's default Linear init
    would start a from-scratch transformer elsewhere."""
    torch.manual_seed(0)
    mlp = Mlp(256, 1024, 0.0)
    for fc in (mlp.fc1, mlp.fc2):
        bound = math.sqrt(6 / (fc.in_features + fc.out_features))
        w = fc.weight.detach()
        assert w.abs().max() <= bound and abs(w.std().item() - bound / math.sqrt(3)) < 0.02 * bound
        assert fc.bias.detach().abs().max() < 1e-5


def test_size_rules():
    model = create_model("transunet", num_classes=2, img_size=64, hidden=64, layers=1, heads=2, mlp_dim=64)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)
    with pytest.raises(BenchError, match="built for 64x64"):
        model(torch.randn(1, 3, 128, 128))
    with pytest.raises(BenchError, match="not a multiple of 16"):
        create_model("transunet", num_classes=2, img_size=100)


def _to_google_npz(model, with_cls: bool = True) -> dict:
    """Write a model's encoder in Google's R50+ViT-B_16.npz layout (the inverse of the mapping)."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    conv = lambda a: a.transpose(2, 3, 1, 0)  # noqa: E731  OIHW -> HWIO
    hidden = model.transformer.embeddings.patch_embeddings.out_channels
    heads = model.transformer.encoder.layer[0].attn.heads
    emb, enc, res = "transformer.embeddings.", "transformer.encoder.", "transformer.embeddings.hybrid_model."
    out = {"embedding/kernel": conv(sd[emb + "patch_embeddings.weight"]), "embedding/bias": sd[emb + "patch_embeddings.bias"]}
    pos = sd[emb + "position_embeddings"]
    out["Transformer/posembed_input/pos_embedding"] = (
        np.concatenate([np.full_like(pos[:, :1], 7.0), pos], axis=1) if with_cls else pos)
    out["Transformer/encoder_norm/scale"] = sd[enc + "encoder_norm.weight"]
    out["Transformer/encoder_norm/bias"] = sd[enc + "encoder_norm.bias"]
    for i in range(len(model.transformer.encoder.layer)):
        p, q = f"{enc}layer.{i}.", f"Transformer/encoderblock_{i}/"
        out[q + "LayerNorm_0/scale"], out[q + "LayerNorm_0/bias"] = sd[p + "attention_norm.weight"], sd[p + "attention_norm.bias"]
        out[q + "LayerNorm_2/scale"], out[q + "LayerNorm_2/bias"] = sd[p + "ffn_norm.weight"], sd[p + "ffn_norm.bias"]
        for part in ("query", "key", "value"):
            out[q + f"MultiHeadDotProductAttention_1/{part}/kernel"] = sd[p + f"attn.{part}.weight"].T.reshape(hidden, heads, -1)
            out[q + f"MultiHeadDotProductAttention_1/{part}/bias"] = sd[p + f"attn.{part}.bias"].reshape(heads, -1)
        out[q + "MultiHeadDotProductAttention_1/out/kernel"] = sd[p + "attn.out.weight"].T.reshape(heads, -1, hidden)
        out[q + "MultiHeadDotProductAttention_1/out/bias"] = sd[p + "attn.out.bias"]
        out[q + "MlpBlock_3/Dense_0/kernel"], out[q + "MlpBlock_3/Dense_0/bias"] = sd[p + "ffn.fc1.weight"].T, sd[p + "ffn.fc1.bias"]
        out[q + "MlpBlock_3/Dense_1/kernel"], out[q + "MlpBlock_3/Dense_1/bias"] = sd[p + "ffn.fc2.weight"].T, sd[p + "ffn.fc2.bias"]
    out["conv_root/kernel"] = conv(sd[res + "root.conv.weight"])
    gn = lambda a: a.reshape(1, 1, 1, -1)  # noqa: E731  old Flax's GroupNorm layout, as in the real file
    out["gn_root/scale"], out["gn_root/bias"] = gn(sd[res + "root.gn.weight"]), gn(sd[res + "root.gn.bias"])
    for k, v in sd.items():
        if k.startswith(res + "body."):
            b, u, rest = k[len(res + "body."):].split(".", 2)
            name = {"downsample.weight": "conv_proj/kernel", "gn_proj.weight": "gn_proj/scale", "gn_proj.bias": "gn_proj/bias"}.get(
                rest, rest.replace(".weight", "/kernel" if rest.startswith("conv") else "/scale").replace(".bias", "/bias"))
            out[f"{b}/{u}/{name}"] = conv(v) if name.endswith("kernel") else gn(v)  # the unit's params: gn*
    out["cls"] = np.zeros((1, 1, hidden), "float32")
    out["head/kernel"] = np.zeros((hidden, 10), "float32")
    return out


def test_google_npz_loads_with_the_authors_mapping(tmp_path):
    from bench.registry import load_weights

    kw = dict(num_classes=2, img_size=64, hidden=64, layers=2, heads=4, mlp_dim=128)
    torch.manual_seed(0)
    src = create_model("transunet", **kw)
    path = tmp_path / "R50+ViT-B_16.npz"
    np.savez(path, **_to_google_npz(src))
    torch.manual_seed(1)
    dst = create_model("transunet", **kw)
    report = load_weights(dst, path, source="vit_npz")
    own = dst.state_dict()
    for k, v in src.state_dict().items():
        if k.startswith("transformer.") and "running" not in k and "num_batches" not in k:
            assert torch.equal(own[k], v), k
    assert report["not_loaded_from_file"] == ["cls", "head/kernel"]
    assert "segmentation_head.0.weight" in report["not_pretrained_in_model"]


def test_google_npz_position_grid_is_resized():
    from scipy import ndimage

    from baselines.transunet import load_vit_npz

    kw = dict(num_classes=2, hidden=64, layers=1, heads=4, mlp_dim=128)
    src = create_model("transunet", img_size=224, **kw)  # 14x14 grid (+ class token in the file)
    npz = _to_google_npz(src)
    dst = create_model("transunet", img_size=64, **kw)  # 4x4 grid
    load_vit_npz(dst, npz)
    grid = npz["Transformer/posembed_input/pos_embedding"][0, 1:].reshape(14, 14, -1)
    want = ndimage.zoom(grid, (4 / 14, 4 / 14, 1), order=1).reshape(1, 16, -1)
    torch.testing.assert_close(dst.transformer.embeddings.position_embeddings.detach(), torch.from_numpy(want))
