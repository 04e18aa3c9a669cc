"""TransUNet R50-ViT-B_16: the authors' layout, parameter count, weight-standardised conv and ViT
block against timm (independent implementations of the same functions), the 55→56 skip padding."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from torch import nn

from bench.errors import BenchError
from bench.registry import create_model, load_official_state_dict
from baselines.transunet import Block, ResNetV2, StdConv2d
from tests.test_vmunet import REFERENCE, _manifest


def _timm():
    from bench._tv_compat import ensure_torchvision

    ensure_torchvision()
    import timm.layers
    import timm.models.vision_transformer

    return timm


def test_authors_layout_loads_strictly():
    model = create_model("transunet", num_classes=9, img_size=224)
    meta = json.loads((REFERENCE / "transunet_synapse" / "meta.json").read_text())
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


def test_size_rules():
    model = create_model("transunet", num_classes=2, img_size=64, hidden=64, layers=1, heads=2, mlp_dim=64)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)
    with pytest.raises(BenchError, match="built for 64x64"):
        model(torch.randn(1, 3, 128, 128))
    with pytest.raises(BenchError, match="divisible by 16"):
        create_model("transunet", num_classes=2, img_size=100)
