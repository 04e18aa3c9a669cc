"""TransUNet R50-ViT-B_16: the authors' layout, parameter count, weight-standardised conv and ViT
block against timm (independent implementations of the same functions), the 55→56 skip padding."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
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
