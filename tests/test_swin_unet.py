"""Swin-Unet: the authors' layout and buffers, parameter count, the Swin block against timm's
(an independent implementation of the same block), the whole forward recomposed from its parts, the
stochastic-depth rates and the initialisation, window adaptation for small inputs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import BenchError
from bench.registry import create_model, load_official_state_dict
from baselines.swin_unet import SwinTransformerBlock
from tests.fixtures import randomise_like_a_checkpoint
from tests.test_vmunet import REFERENCE, _manifest


def _small_swin(num_classes: int = 3):
    """64² input, embed 24: the window becomes 4 (16-token grid), which the warning says."""
    with pytest.warns(UserWarning, match="using 4"):
        return create_model("swin_unet", num_classes=num_classes, img_size=64, embed_dim=24, num_heads=(1, 2, 4, 8))


def test_authors_layout_loads_strictly():
    model = create_model("swin_unet", num_classes=9, img_size=224)
    meta = json.loads((REFERENCE / "swin_unet_synapse" / "meta.json").read_text(encoding="utf-8"))
    assert sum(p.numel() for p in model.parameters()) == meta["params_total"]
    manifest = _manifest("swin_unet_synapse")
    own = model.state_dict()
    assert [(k, tuple(v.shape)) for k, v in own.items()] == [(k, s) for k, s, _ in manifest]
    # the persistent buffers equal what the authors' code computes, so their checkpoints load as saved
    g = torch.Generator().manual_seed(0)
    sd = {f"module.{k}": (own[k].clone() if ("index" in k or "mask" in k) else torch.randn(s, generator=g))
          for k, s, _ in manifest}
    load_official_state_dict(model, sd)
    assert torch.equal(model.state_dict()["swin_unet.output.weight"], sd["module.swin_unet.output.weight"])


@pytest.mark.parametrize("shift", [0, 3])
def test_swin_block_matches_timm(shift):
    from bench._tv_compat import ensure_torchvision

    ensure_torchvision()
    from timm.models.swin_transformer import SwinTransformerBlock as TimmBlock

    torch.manual_seed(0)
    ours = SwinTransformerBlock(dim=24, resolution=14, num_heads=3, window_size=7, shift=bool(shift), drop_path=0.0)
    theirs = TimmBlock(dim=24, input_resolution=(14, 14), num_heads=3, window_size=7, shift_size=shift)
    with torch.no_grad():  # norms away from their ones/zeros init too, so a swapped name would show
        for p in ours.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    params = {k: v for k, v in ours.state_dict().items() if k not in ("attn_mask", "attn.relative_position_index")}
    theirs.load_state_dict(params, strict=True)  # timm keeps its index and mask as non-persistent buffers
    x = torch.randn(2, 14 * 14, 24)
    torch.testing.assert_close(ours(x), theirs(x.view(2, 14, 14, 24)).reshape(2, -1, 24), rtol=1e-5, atol=1e-5)


def test_shift_mask_blocks_tokens_from_different_regions():
    blk = SwinTransformerBlock(dim=8, resolution=8, num_heads=2, window_size=4, shift=True, drop_path=0.0)
    mask = blk.attn_mask
    assert mask.shape == (4, 16, 16)
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    assert torch.equal(mask[0], torch.zeros(16, 16))  # the top-left window holds one region only
    assert torch.equal(mask, mask.transpose(1, 2))


def swin_unet_by_hand(m, x: torch.Tensor) -> torch.Tensor:
    """Spec 2.2-2.3 wiring of the parts the other tests pin (Swin blocks against timm, merge and expand
    orders): skips are the INPUTS of encoder stages 0-2; concat [decoder, skip] then concat_back_dim;
    norm_up, the ×4 expand (channels (p1, p2, c), p1 outermost) and its LayerNorm, a bias-free 1×1 conv."""
    inputs = [m.patch_embed(x)]  # of encoder stages 0-3
    for stage in (0, 1, 2):
        inputs.append(m.layers[stage](inputs[-1]))
    t = m.norm(m.layers[3](inputs[3]))
    b, g = x.shape[0], m.grid // 8
    t = m.layers_up[0](t.view(b, g, g, -1)).reshape(b, 4 * g * g, -1)
    for i in (1, 2, 3):
        t = m.layers_up[i](m.concat_back_dim[i](torch.cat([t, inputs[3 - i]], dim=-1)))
    c, g = t.shape[-1], m.grid
    t = F.layer_norm(t, (c,), m.norm_up.weight, m.norm_up.bias, 1e-5)
    e = (t @ m.up.expand.weight.T).view(b, g, g, 4, 4, c)
    full = torch.empty(b, 4 * g, 4 * g, c, dtype=x.dtype)
    for p1 in range(4):
        for p2 in range(4):
            full[:, p1::4, p2::4] = e[:, :, :, p1, p2]
    full = F.layer_norm(full, (c,), m.up.norm.weight, m.up.norm.bias, 1e-5)
    return torch.einsum("bhwc,kc->bkhw", full, m.output.weight[:, :, 0, 0])


def test_swin_unet_forward_is_its_parts_wired_as_the_authors():
    """The parts are checked against timm and by channel order; only the whole forward shows a skip
    concatenated in the wrong order or norm_up left out, which an authors' checkpoint still loads into."""
    torch.manual_seed(0)
    model = _small_swin().double().eval()
    randomise_like_a_checkpoint(model)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), swin_unet_by_hand(model.swin_unet, x))


def test_stochastic_depth_rates_are_the_authors():
    """Training as the authors train (spec 2.1): DROP_PATH_RATE 0.2 linear over the 8 encoder blocks in
    order; each decoder stage takes the rates of the encoder stage it mirrors (not the decoder's own)."""
    m = _small_swin().swin_unet
    rates = [0.2 * k / 7 for k in range(8)]
    assert [b.drop_path.p for layer in m.layers for b in layer.blocks] == pytest.approx(rates)
    for i in (1, 2, 3):
        j = 3 - i
        assert [b.drop_path.p for b in m.layers_up[i].blocks] == pytest.approx(rates[2 * j:2 * j + 2])


def test_a_swin_unet_from_scratch_starts_as_swins_init():
    """A run without pretrained weights starts from Swin's _init_weights: Linear trunc-normal std 0.02 with
    zero biases, LayerNorm (1, 0), relative-position bias tables trunc-normal std 0.02."""
    torch.manual_seed(0)
    m = _small_swin().swin_unet
    linears = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    assert abs(torch.cat([mod.weight.detach().flatten() for mod in linears]).std().item() - 0.02) < 0.001
    assert not any(mod.bias.detach().any() for mod in linears if mod.bias is not None)
    norms = [mod for mod in m.modules() if isinstance(mod, nn.LayerNorm)]
    assert all(torch.equal(mod.weight.detach(), torch.ones_like(mod.weight)) and not mod.bias.detach().any()
               for mod in norms)
    tables = torch.cat([p.detach().flatten() for k, p in m.named_parameters() if k.endswith("bias_table")])
    assert abs(tables.std().item() - 0.02) < 0.002


def test_small_inputs_adapt_the_window_and_record_it():
    model = _small_swin(num_classes=2)
    assert model.bench_config["window_size"] == 4
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)
    with pytest.raises(BenchError, match="built for 64x64"):
        model(torch.randn(1, 3, 96, 96))
    with pytest.raises(BenchError, match="not a multiple of 32"):
        create_model("swin_unet", num_classes=2, img_size=100)


def test_three_stages_take_multiples_of_16():
    """Each stage but the last halves the 4-pixel patches' grid: 3 stages need 16, not the paper's 32."""
    model = create_model("swin_unet", num_classes=2, img_size=48, embed_dim=12, depths=(1, 1, 1), num_heads=(1, 2, 4))
    assert model.size_divisor == 16
    assert model(torch.randn(1, 1, 48, 48)).shape == (1, 2, 48, 48)


def test_swin_t_pretrained_fills_encoder_and_mirrored_decoder(tmp_path):
    from bench.registry import load_weights

    kw = dict(num_classes=2, img_size=224, embed_dim=24, num_heads=(1, 2, 4, 8))
    torch.manual_seed(0)
    model = create_model("swin_unet", **kw)
    own = model.state_dict()
    g = torch.Generator().manual_seed(1)
    # a Swin-T-style file: encoder keys without the wrapper prefix, deeper stage 2, norm and head
    ckpt = {k[len("swin_unet."):]: torch.randn(v.shape, generator=g) if v.is_floating_point() else v
            for k, v in own.items() if k.startswith(("swin_unet.patch_embed.", "swin_unet.layers.", "swin_unet.norm."))}
    ckpt["layers.2.blocks.5.norm1.weight"] = torch.ones(96)
    ckpt["head.weight"] = torch.zeros(1000, 192)
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": ckpt}, path)
    report = load_weights(model, path, source="swin_t")
    sd = model.state_dict()
    assert torch.equal(sd["swin_unet.layers.1.blocks.0.attn.qkv.weight"], ckpt["layers.1.blocks.0.attn.qkv.weight"])
    # layers.i -> layers_up.(3-i): stage 2's blocks initialise decoder stage 1, stage 0's stage 3
    assert torch.equal(sd["swin_unet.layers_up.1.blocks.1.mlp.fc2.weight"], ckpt["layers.2.blocks.1.mlp.fc2.weight"])
    assert torch.equal(sd["swin_unet.layers_up.3.blocks.0.norm1.weight"], ckpt["layers.0.blocks.0.norm1.weight"])
    assert {"head.weight", "layers.2.blocks.5.norm1.weight"} <= set(report["not_loaded_from_file"])
    assert "swin_unet.output.weight" in report["not_pretrained_in_model"]
    assert "swin_unet.concat_back_dim.1.weight" in report["not_pretrained_in_model"]


def test_a_trained_swin_unet_fills_everything_but_its_head(tmp_path):
    """The authors' load_from, first branch: a trained Swin-Unet (their DataParallel file, keys
    module.swin_unet.*, or ours) starts a model with another number of classes; only the output head
    stays as built. A file of another size is one error naming the tensors."""
    from bench.errors import BenchError
    from bench.registry import load_weights

    kw = dict(img_size=64, embed_dim=24, num_heads=(1, 2, 4, 8))
    torch.manual_seed(0)
    trained = create_model("swin_unet", num_classes=9, **kw)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)  # away from any initialisation
    path = tmp_path / "epoch_149.pth"
    torch.save({f"module.{k}": v for k, v in trained.state_dict().items()}, path)
    for file in (path, tmp_path / "ours.pt"):
        if file.name == "ours.pt":
            torch.save({"model": trained.state_dict(), "epoch": 3}, file)
        torch.manual_seed(1)
        model = create_model("swin_unet", num_classes=2, **kw)
        head = model.state_dict()["swin_unet.output.weight"].clone()
        report = load_weights(model, file, source="swin_t")
        sd, src = model.state_dict(), trained.state_dict()
        assert all(torch.equal(sd[k], v) for k, v in src.items() if "output" not in k)
        assert torch.equal(sd["swin_unet.output.weight"], head) and head.shape[0] == 2
        assert report["not_pretrained_in_model"] == ["swin_unet.output.weight"]
    # under a protocol's name for the ImageNet file, bench run refuses it: a run from it is not the recipe
    from bench.protocol import load_protocol
    from bench.run import plan_grid

    pretrained = tmp_path / "pretrained"
    pretrained.mkdir()
    torch.save({f"module.{k}": v for k, v in create_model("swin_unet", num_classes=9, **kw).state_dict().items()},
               pretrained / "swin_tiny_patch4_window7_224.pth")
    with pytest.raises(BenchError, match=r"swin_unet: .*swin_tiny_patch4_window7_224\.pth holds a trained swin_unet, "
                                         r"not the pretrained file its authors start from"):
        plan_grid(models=["swin_unet"], dataset="synapse", protocol=load_protocol("smoke").with_overrides(
            img_size=64, pretrained=True), seeds=[0], data_root=None, synthetic=True, results_dir=tmp_path / "res",
            model_overrides={"embed_dim": 24, "num_heads": (1, 2, 4, 8)}, pretrained_dir=pretrained)
    bigger = create_model("swin_unet", num_classes=2, img_size=128, embed_dim=24, num_heads=(1, 2, 4, 8))
    with pytest.raises(BenchError, match=r"a trained Swin-Unet that does not fit this one .*: swin_unet\.\S+: file"):
        load_weights(bigger, path, source="swin_t")


def _swin_t_file(kw, seed=1):
    """A Swin-T-style state_dict (Microsoft's layout) for a model built with ``kw``."""
    own = create_model("swin_unet", **kw).state_dict()
    g = torch.Generator().manual_seed(seed)
    return {k[len("swin_unet."):]: torch.randn(v.shape, generator=g) if v.is_floating_point() else v
            for k, v in own.items() if k.startswith(("swin_unet.patch_embed.", "swin_unet.layers.", "swin_unet.norm."))}


def test_swin_t_in_timms_layout_is_refused_not_half_loaded(tmp_path):
    """timm moves each patch merging to the start of the next stage: its Swin-T loaded 188 tensors
    and left the encoder's three merging layers random, reported as a success."""
    from bench.registry import load_weights

    kw = dict(num_classes=2, img_size=224, embed_dim=24, num_heads=(1, 2, 4, 8))
    timm = {}
    for k, v in _swin_t_file(kw).items():
        if ".downsample." in k:  # layers.i.downsample -> layers.(i+1).downsample
            i = int(k.split(".")[1])
            k = k.replace(f"layers.{i}.downsample.", f"layers.{i + 1}.downsample.")
        timm[k] = v
    timm["head.fc.weight"] = torch.zeros(1000, 192)
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save(timm, path)
    with pytest.raises(BenchError, match=r"fills Swin-Unet's encoder but not its patch merging "
                                         r"\(swin_unet\.layers\.0\.downsample\..*timm's layout"):
        load_weights(create_model("swin_unet", **kw), path, source="swin_t")


def test_a_smaller_window_takes_the_files_bias_tables_resized(tmp_path):
    """At 128² (window 4; 256² likewise) the file's 13×13 relative-position tables did not fit and
    were skipped silently, all 14 left random: they are resized over the offset grid (bicubic)."""
    from bench.registry import load_weights

    file = _swin_t_file(dict(num_classes=2, img_size=224, embed_dim=24, num_heads=(1, 2, 4, 8)))
    for k, v in file.items():
        if k.endswith("relative_position_bias_table"):  # one constant per head: a resize keeps it
            file[k] = torch.arange(v.shape[1], dtype=v.dtype).expand(v.shape).clone() + 0.5
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": file}, path)
    with pytest.warns(UserWarning, match="using 4"):
        model = create_model("swin_unet", num_classes=2, img_size=128, embed_dim=24, num_heads=(1, 2, 4, 8))
    report = load_weights(model, path, source="swin_t")
    tables = {k: v for k, v in model.state_dict().items() if k.endswith("relative_position_bias_table")}
    assert report["resized_bias_tables"] == len(tables) == 14
    assert not [k for k in report["not_pretrained_in_model"] if k.endswith("relative_position_bias_table")]
    for k, v in tables.items():
        assert v.shape[0] == 7 * 7
        torch.testing.assert_close(v, torch.arange(v.shape[1], dtype=v.dtype).expand(v.shape) + 0.5)
