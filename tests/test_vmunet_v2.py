"""VM-UNet-V2: the authors' layout, parameters without gradient as in their code, SDI resizing, the
whole forward recomposed in functional ops, encoder-only VMamba-S loading."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from bench.errors import BenchError
from bench.registry import create_model, load_official_state_dict, load_weights
from ssm_models.vmunet_v2 import SDI
from tests.fixtures import randomise_like_a_checkpoint
from tests.test_vmunet import REFERENCE, _manifest

META = json.loads((REFERENCE / "vmunet_v2_isic" / "meta.json").read_text(encoding="utf-8"))


def test_authors_layout_loads_strictly():
    model = create_model("vmunet_v2", num_classes=1, img_size=256)
    assert sum(p.numel() for p in model.parameters()) == META["params_total"]
    manifest = _manifest("vmunet_v2_isic")
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == [(k, s) for k, s, _ in manifest]
    g = torch.Generator().manual_seed(0)
    sd = {k: (torch.randn(s, generator=g) if d == "float32" else torch.zeros(s, dtype=torch.int64))
          for k, s, d in manifest}
    sd = {f"module.{k}": v for k, v in sd.items()} | {"module.total_ops": torch.zeros(1)}
    load_official_state_dict(model, sd)
    assert torch.equal(model.state_dict()["sdi_3.convs.2.weight"], sd["module.sdi_3.convs.2.weight"])


def test_unused_parameters_are_the_authors():
    torch.manual_seed(0)
    model = create_model("vmunet_v2", num_classes=1, img_size=64)
    model(torch.randn(1, 3, 64, 64)).sum().backward()
    no_grad = sorted(n for n, p in model.named_parameters() if p.grad is None)
    assert no_grad == sorted(META["unused_parameters_probe"]["no_grad_params"])


def test_sdi_resizes_like_the_authors():
    torch.manual_seed(0)
    sdi = SDI(2, levels=3)
    feats = [torch.randn(1, 2, 8, 8), torch.randn(1, 2, 4, 4), torch.randn(1, 2, 2, 2)]
    anchor = feats[1]
    want = sdi.convs[0](F.adaptive_avg_pool2d(feats[0], (4, 4))) * sdi.convs[1](feats[1]) * sdi.convs[2](
        F.interpolate(feats[2], size=(4, 4), mode="bilinear", align_corners=True))
    torch.testing.assert_close(sdi(feats, anchor), want)


def v2_by_hand(m, x: torch.Tensor) -> torch.Tensor:
    """Spec 2.1 in functional ops on the model's weights: per level channel attention (shared MLP on the
    average and max pools), then spatial attention (7×7 conv on the channel mean and max), then Translayer
    (1×1 conv + BN, no ReLU); sdi_k at level k; the deconv2/3/4 ladder; output seg3↑4 + deconv6(seg2↑4)."""
    _, skips = m.vmunet.forward_encoder(x)
    feats = []
    for i, f in enumerate(skips, start=1):
        f = f.permute(0, 3, 1, 2)
        ca, sa, tl = getattr(m, f"ca_{i}"), getattr(m, f"sa_{i}"), getattr(m, f"Translayer_{i}")

        def mlp(t, ca=ca):
            return F.conv2d(F.relu(F.conv2d(t, ca.fc1.weight)), ca.fc2.weight)

        f = f * torch.sigmoid(mlp(f.mean((2, 3), keepdim=True)) + mlp(f.amax((2, 3), keepdim=True)))
        f = f * torch.sigmoid(F.conv2d(torch.cat([f.mean(1, keepdim=True), f.amax(1, keepdim=True)], 1),
                                       sa.conv1.weight, padding=3))
        feats.append(F.batch_norm(F.conv2d(f, tl.conv.weight), tl.bn.running_mean, tl.bn.running_var,
                                  tl.bn.weight, tl.bn.bias, False, 0.0, tl.bn.eps))

    def sdi(k):  # every level resized to level k's size, through sdi_k's conv j, multiplied together
        size, out = feats[k - 1].shape[-1], 1.0
        for j, f in enumerate(feats):
            if f.shape[-1] > size:
                f = F.adaptive_avg_pool2d(f, size)
            elif f.shape[-1] < size:
                f = F.interpolate(f, size=(size, size), mode="bilinear", align_corners=True)
            conv = getattr(m, f"sdi_{k}").convs[j]
            out = out * F.conv2d(f, conv.weight, conv.bias, padding=1)
        return out

    s1, s2, s3, s4 = (sdi(k) for k in (1, 2, 3, 4))
    y3 = F.conv_transpose2d(s4, m.deconv2.weight, stride=2, padding=1) + s3
    y2 = F.conv_transpose2d(y3, m.deconv3.weight, stride=2, padding=1) + s2
    y1 = F.conv_transpose2d(y2, m.deconv4.weight, stride=2, padding=1) + s1

    def seg_up(j, y):  # seg_outs[j], then ×4
        return F.interpolate(F.conv2d(y, m.seg_outs[j].weight, m.seg_outs[j].bias), scale_factor=4,
                             mode="bilinear", align_corners=False)

    seg2, seg3 = seg_up(2, y2), seg_up(3, y1)
    return seg3 + F.conv_transpose2d(seg2, m.deconv6.weight, m.deconv6.bias, stride=2, padding=1, output_padding=1)


def test_vmunet_v2_forward_is_attention_sdi_and_the_two_head_fusion():
    """The whole forward against spec 2.1 written out (the other tests check the SDI and shapes only):
    attention order, the Translayer's missing ReLU, which sdi/deconv serves which level and the fusion all
    change what an authors' checkpoint computes. BN statistics as a trained checkpoint has them."""
    torch.manual_seed(0)
    m = create_model("vmunet_v2", num_classes=1, img_size=64, tiny=True).double().eval()
    randomise_like_a_checkpoint(m)
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
        torch.testing.assert_close(m(x), v2_by_hand(m, x))


def test_deep_supervision_only_for_one_class_and_square_inputs():
    assert create_model("vmunet_v2", num_classes=9, img_size=64, dims=(16, 32, 64, 128)).deep_supervision is False
    with pytest.raises(BenchError, match="num_classes=1"):  # the constructor's ValueError, as one line
        create_model("vmunet_v2", num_classes=9, deep_supervision=True)
    model = create_model("vmunet_v2", num_classes=1, img_size=64, dims=(16, 32, 64, 128), mid_channel=8)
    with pytest.raises(BenchError, match="square"):
        model(torch.randn(1, 3, 64, 96))


def test_vmamba_encoder_only(tmp_path):
    model = create_model("vmunet_v2", num_classes=1, img_size=64, dims=(16, 32, 64, 128), mid_channel=8)
    ckpt = {k[len("vmunet."):]: torch.randn(v.shape) for k, v in model.state_dict().items() if k.startswith("vmunet.")}
    ckpt["head.weight"] = torch.zeros(1000, 128)
    path = tmp_path / "vmamba.pth"
    torch.save({"model": ckpt}, path)
    report = load_weights(model, path, source="vmamba")
    assert report["encoder"] == len(ckpt) - 1 and report["decoder_mirrored"] == 0
    assert report["not_loaded_from_file"] == ["head.weight"]
    assert torch.equal(model.state_dict()["vmunet.layers.2.blocks.1.self_attention.Ds"],
                       ckpt["layers.2.blocks.1.self_attention.Ds"])
    # VMamba of another d_state: its SSM tensors do not fit, the rest would (most of the encoder random)
    other = {k: torch.randn(*v.shape[:-1], 8) if k.endswith("A_logs") else v for k, v in ckpt.items()}
    torch.save({"model": other}, path)
    with pytest.raises(BenchError, match=r"fills \d+ of the \d+ encoder tensors VMamba-S fills, leaving "
                                         r"vmunet\.layers\.0\.blocks\.0\.self_attention\.A_logs"):
        load_weights(model, path, source="vmamba")
    # a file with nothing of VMamba in it: the error names this model, not VM-UNet (whose loader it shares)
    torch.save({"model": {"classifier.weight": torch.zeros(3)}}, path)
    with pytest.raises(BenchError, match=r"no tensor of the file matches VM-UNet-V2: is this the VMamba-S"):
        load_weights(model, path, source="vmamba")
