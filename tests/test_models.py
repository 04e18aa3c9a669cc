"""The forward contract and registry, for every registered model (tiny configurations)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench import env as bench_env
from bench.errors import BenchError
from bench.registry import (
    clean_state_dict, create_model, get_entry, list_models, load_official_state_dict, load_weights,
    register_model, resolve_models,
)
from tests.fixtures import OneConv, randomise_like_a_checkpoint, run_bench

MODELS = list_models()


def _tiny(name: str, **kw):
    return create_model(name, **{"num_classes": 3, "in_chans": 3, "img_size": 64, **get_entry(name).tiny, **kw})


@pytest.mark.parametrize("name", MODELS)
def test_forward_shapes_and_logits(name):
    model = _tiny(name).eval()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 3, 64, 64)
    # raw logits: no softmax inside (channels do not sum to one)
    assert not torch.allclose(out.softmax(1).sum(1), out.sum(1))
    # what the factory fitted to the input is named in the registry: labels of older records leave it out
    assert set(getattr(model, "resolved_config", {})) <= set(get_entry(name).chooses)


@pytest.mark.parametrize("name", MODELS)
def test_one_channel_input_is_repeated_and_another_count_is_named(name):
    """A grey image into a 3-channel stem is repeated; 2 channels are a slip named as such, not repeated
    to 6 and met by the stem's own shape error."""
    model = _tiny(name).eval()
    x = torch.randn(1, 1, 64, 64)
    torch.testing.assert_close(model(x), model(x.repeat(1, 3, 1, 1)))
    with pytest.raises(BenchError, match=r"expects 3 input channels \(or 1, repeated\); got 2$"):
        model(x.repeat(1, 2, 1, 1))


@pytest.mark.parametrize("name", MODELS)
def test_an_empty_batch_is_refused_by_name(name):
    """An API fuzz: four models failed to reshape 0 elements, two returned an empty output."""
    from bench.errors import BenchError

    with pytest.raises(BenchError, match=r"got an empty batch \(shape \(0, 3, 64, 64\)\)"):
        _tiny(name).eval()(torch.randn(0, 3, 64, 64))


# parameters the authors' own model never uses in its forward (kept for checkpoint compatibility)
UNUSED = {"vmunet_v2": ("deconv5.", "seg_outs.0.", "seg_outs.1.", "vmunet.layers.3.")}


@pytest.mark.parametrize("name", MODELS)
def test_backward_reaches_every_parameter(name):
    model = _tiny(name, num_classes=1)
    model(torch.randn(2, 3, 64, 64)).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert [n for n in missing if not n.startswith(UNUSED.get(name, ()))] == []


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_roundtrip_strict(name, tmp_path):
    a, b = _tiny(name), _tiny(name)
    path = tmp_path / "ckpt.pt"
    # our own checkpoint layout plus what DataParallel and thop leave behind
    sd = {f"module.{k}": v for k, v in a.state_dict().items()}
    sd["module.total_ops"] = torch.zeros(1)
    sd["module.encoder.total_params"] = torch.zeros(1)
    torch.save({"model": sd, "epoch": 3}, path)
    report = load_weights(b, path)
    assert report["source"] == "authors" and report["skipped"] == ["module.encoder.total_params", "module.total_ops"]
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v)
    # profiled and saved on one GPU: thop's counters on the model itself are the bare keys
    torch.save({**a.state_dict(), "total_ops": torch.zeros(1), "total_params": torch.zeros(1)}, path)
    assert load_weights(b, path)["skipped"] == ["total_ops", "total_params"]


def test_every_built_in_model_has_its_card_its_readme_row_and_drift_rows():
    """From a contributor journey: a model added to the repository passed CI without a model card, a README
    row or a row in the drift baseline (its new rows pass `bench check`, so nothing guarded it)."""
    import pandas as pd

    from bench.registry import get_entry, is_builtin, list_models

    root = Path(__file__).resolve().parents[1]
    cards = (root / "docs" / "models.md").read_text(encoding="utf-8")
    readme = (root / "README.md").read_text(encoding="utf-8")
    drift = {m.split(" (")[0] for m in pd.read_csv(root / "results" / "baseline" / "smoke.csv")["model"]}
    for name in filter(is_builtin, list_models()):
        family = get_entry(name).family
        assert f"(`{name}`, {family})" in cards, f"docs/models.md: no card '## <Name> (`{name}`, {family})'"
        assert f"\n| `{name}` | {family} |" in readme, f"README.md: no row of {name} in the Models table"
        assert name in drift, f"results/baseline/smoke.csv: no rows of {name}; `make baseline MODELS={name}` adds them"



def test_every_built_in_model_registers_its_facts():
    """Reports label runs from bench.model_facts without loading the models: a built-in model registered
    otherwise (facts of its own in the decorator, or none there) would be labelled by other facts."""
    from dataclasses import fields

    from bench.model_facts import FACTS
    from bench.registry import is_builtin

    registered = set(filter(is_builtin, list_models()))
    assert not registered - set(FACTS), f"bench/model_facts.py: no ModelFacts of {sorted(registered - set(FACTS))}"
    assert not set(FACTS) - registered, f"no registered model of {sorted(set(FACTS) - registered)}'s ModelFacts"
    for name, facts in FACTS.items():
        entry = get_entry(name)
        assert {f.name: getattr(entry, f.name) for f in fields(facts)} == facts.register_args(), (
            f"{name}: registered with other facts than its ModelFacts (give them there alone)")


def test_model_facts_refuse_a_family_of_none_and_a_name_given_twice():
    from bench.model_facts import FACTS, ModelFacts, _by_name

    with pytest.raises(ValueError, match=r"model_facts.py: mynet's family must be one of .*got 'CNN'"):
        ModelFacts(name="mynet", family="CNN", paper_config={}, description="")
    with pytest.raises(ValueError, match="model_facts.py: two ModelFacts named 'unet'"):
        _by_name(FACTS["unet"], FACTS["swin_unet"], ModelFacts(name="unet", family="cnn", paper_config={},
                                                               description="a copy not renamed"))


# each built-in model's tiny configuration (model_facts.py) at 9 classes, 3 channels, 64x64: a typo in a fact
# (a tiny setting dropped or mistyped) changes its count; a deliberate change updates it here
TINY_PARAMS = {"lightm_unet": 128_938, "swin_unet": 1_711_300, "transunet": 1_014_137, "unet": 135_153,
               "vmunet": 598_149, "vmunet_v2": 318_150}


@pytest.mark.parametrize("name", sorted(TINY_PARAMS))
def test_tiny_configurations_parameter_counts_are_pinned(name):
    assert sum(p.numel() for p in _tiny(name, num_classes=9).parameters()) == TINY_PARAMS[name]


def test_every_built_in_model_has_its_tiny_count_pinned():
    from bench.model_facts import FACTS

    assert set(TINY_PARAMS) == set(FACTS), "TINY_PARAMS: pin the tiny count of each built-in model, and only those"


def test_unet_paper_parameter_count():
    # bigmb U_Net with 1 input and 9 output channels (bigmb/Unet-Segmentation-Pytorch-Nest-of-Unets, the U-Net of Swin-Unet's table)
    model = create_model("unet", num_classes=9, in_chans=1, img_size=224)
    assert sum(p.numel() for p in model.parameters()) == 34_526_409


def test_unet_loads_a_checkpoint_of_bigmbs_u_net(tmp_path):
    """The authors' U-Net rows ran bigmb's ``U_Net`` (Conv1..5, Up5..2, Up_conv5..2, Conv): its
    checkpoints load strictly, each tensor where its module sits in ours."""
    from bench.registry import load_weights

    torch.manual_seed(0)
    model = create_model("unet", num_classes=9, in_chans=1, img_size=64)
    ours = {k: torch.randn(v.shape) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    enc = {f"encoder.blocks.{k - 1}.": f"Conv{k}.conv." for k in range(1, 6)}
    dec = {**{f"decoder.blocks.{5 - m}.up.": f"Up{m}.up." for m in range(2, 6)},
           **{f"decoder.blocks.{5 - m}.conv.": f"Up_conv{m}.conv." for m in range(2, 6)}, "head.": "Conv."}
    names = {**enc, **dec}
    bigmb = {next(b + k[len(a):] for a, b in names.items() if k.startswith(a)): v for k, v in ours.items()}
    assert "Up_conv2.conv.4.running_var" in bigmb and "Conv5.conv.0.weight" in bigmb and "Conv.bias" in bigmb
    torch.save({"state_dict": bigmb}, tmp_path / "bigmb.pth")
    load_weights(model, tmp_path / "bigmb.pth")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ours.items())
    torch.save(ours, tmp_path / "ours.pth")  # our own names still load as they are
    load_weights(model, tmp_path / "ours.pth")


def unet_by_hand(model, x: torch.Tensor) -> torch.Tensor:
    """bigmb's ``U_Net`` in eval, written out in functional ops (spec 3.2): per level (3×3 conv with bias,
    BN, ReLU) ×2 after a 2×2 max-pool; up_conv = nearest ×2 → 3×3 conv → BN → ReLU; torch.cat((skip, up));
    1×1 head. BatchNorm with PyTorch's eps 1e-5."""
    def cbr(t, conv, bn):
        t = F.conv2d(t, conv.weight, conv.bias, padding=1)
        return F.relu(F.batch_norm(t, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, 1e-5))

    def double(t, seq):
        return cbr(cbr(t, seq[0], seq[1]), seq[3], seq[4])

    feats = [double(x, model.encoder.blocks[0])]
    for blk in model.encoder.blocks[1:]:
        feats.append(double(F.max_pool2d(feats[-1], 2, 2), blk))
    d = feats[-1]
    for blk, skip in zip(model.decoder.blocks, feats[-2::-1]):
        up = cbr(F.interpolate(d, scale_factor=2, mode="nearest"), blk.up[1], blk.up[2])
        d = double(torch.cat((skip, up), dim=1), blk.conv)
    return F.conv2d(d, model.head.weight, model.head.bias)


def test_unet_forward_is_bigmbs_u_net():
    """A checkpoint of bigmb's U_Net loads by name alone: pooling, up-sampling, the up-conv's ReLU, the concat
    order and BatchNorm's eps show only in what the whole forward computes. BN statistics as a trained
    checkpoint has them; momentum the default 0.1 of bigmb's nn.BatchNorm2d(c)."""
    from baselines.unet import UNet

    model = UNet(num_classes=3, in_chans=2, widths=(4, 8, 8, 16, 16)).double().eval()
    randomise_like_a_checkpoint(model)
    assert {(m.eps, m.momentum) for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {(1e-5, 0.1)}
    x = torch.randn(2, 2, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), unet_by_hand(model, x))


def test_unet_smp_encoder_builds_offline():
    model = create_model("unet", num_classes=9, in_chans=3, img_size=64, encoder="resnet34")
    # smp's Unet-ResNet34 has 24,436,369 parameters for 1 class; 8 more outputs of its 3x3 head on
    # 16 channels add 8 * (16 * 9 + 1)
    assert sum(p.numel() for p in model.parameters()) == 24_436_369 + 8 * (16 * 9 + 1)
    # and its encoder is torchvision's ResNet-34 without the classifier (512 * 1000 + 1000)
    import torchvision

    resnet34 = sum(p.numel() for p in torchvision.models.resnet34().parameters())
    assert sum(p.numel() for p in model.net.encoder.parameters()) == resnet34 - (512 * 1000 + 1000)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 9, 64, 64)
    # a misspelt encoder: smp's KeyError listed every encoder on one line
    with pytest.raises(BenchError, match=r"^unet: encoder 'resnet43' is not an smp encoder \(did you mean 'resnet34'"):
        create_model("unet", num_classes=9, img_size=64, encoder="resnet43")


def test_unet_smp_encoder_local_weights(tmp_path):
    src = create_model("unet", num_classes=2, img_size=64, encoder="resnet18")
    path = tmp_path / "enc.pt"
    torch.save(src.net.encoder.state_dict(), path)
    dst = create_model("unet", num_classes=2, img_size=64, encoder="resnet18", encoder_weights=str(path))
    torch.testing.assert_close(dst.net.encoder.conv1.weight, src.net.encoder.conv1.weight)


def test_size_divisor_error_suggests_padding():
    model = _tiny("unet")
    with pytest.raises(BenchError, match=r"divisible by 8; got 66x66, pad to 72x72"):
        model(torch.randn(1, 3, 66, 66))


def test_a_set_key_at_its_paper_value_is_the_paper_model_and_fixed_keys_are_refused():
    """--set d_state=16 (VM-UNet's own value) trained a second run of the paper model under another id
    and row; --set num_classes=3 ended in a TypeError traceback; depths=[1, 1, 1] in an IndexError."""
    from bench.registry import identity_overrides, model_overrides

    assert identity_overrides("vmunet", {"d_state": 16, "depths": (2, 2, 2, 2)}) == {}
    assert identity_overrides("vmunet", {"d_state": 8}) == {"d_state": 8}
    tiny = identity_overrides("vmunet", model_overrides("vmunet", {"dims": [96, 192, 384, 768]}, tiny=True), tiny=True)
    assert tiny["dims"] == [96, 192, 384, 768]  # the paper's value where --tiny sets another: kept
    for key in ("num_classes", "in_chans", "img_size"):
        with pytest.raises(BenchError, match=f"--set {key}: not a --set key"):
            model_overrides("unet", {key: 3})
    with pytest.raises(BenchError, match=r"vmunet: cannot build with .*depths=\[1, 1, 1\] \(list index out of range\)"):
        create_model("vmunet", num_classes=9, img_size=64, depths=[1, 1, 1])


def test_unknown_model_suggests_name():
    with pytest.raises(BenchError, match=r"did you mean 'unet'.*Known models: .*unet"):
        create_model("unett", num_classes=2)
    with pytest.raises(BenchError, match="unknown model"):
        resolve_models("unet,nope")
    # one's own model, not installed as a plugin: where bench looks for it
    with pytest.raises(BenchError, match=r"unknown model 'mynet'.*A model of your own: its module registers it with "
                                         r"@register_model and is an entry point of the group ssm_unet_bench\.models"):
        create_model("mynet", num_classes=2)


def test_python_callers_name_a_model_in_any_case_as_the_cli_does():
    from bench.cost import profile_model
    from bench.registry import is_builtin
    from bench.report.labels import _entry

    # create_model("VMUNet") said "unknown model" where `--models VMUNet` ran it
    assert get_entry("UNET").name == "unet" and is_builtin("UNet")
    model = create_model("VMUNet", num_classes=2, img_size=64, tiny=True)
    assert model.bench_entry.name == "vmunet"
    with pytest.raises(BenchError, match="^unet: num_classes must be a positive whole number"):  # as registered
        create_model("UNET", num_classes=0)
    assert profile_model("UNet", img_size=32, tiny=True, timing=False)["model"] == "unet"  # the row's name
    # a record names its model as registered: another spelling is no model of its
    assert _entry("unet") is not None and _entry("UNET") is None

    def build(*, num_classes, in_chans=3, img_size=224):
        return OneConv(num_classes, in_chans)

    # a decomposed "é" is the composed one; two names alike but for case: each only as registered
    for name in ("_t\u00e9st_plugin", "_Twin_plugin", "_twin_plugin"):
        register_model(family="cnn", paper_config={}, name=name)(build)
    try:
        assert get_entry("_TE\u0301ST_PLUGIN").name == "_t\u00e9st_plugin"
        assert get_entry("_Twin_plugin").name == "_Twin_plugin" and get_entry("_twin_plugin").name == "_twin_plugin"
        with pytest.raises(BenchError, match="unknown model '_TWIN_PLUGIN'"):
            create_model("_TWIN_PLUGIN", num_classes=2)
        with pytest.raises(BenchError, match="unknown model '_TWIN_PLUGIN'"):
            resolve_models("unet,_TWIN_PLUGIN")
    finally:
        from bench import registry

        for name in ("_t\u00e9st_plugin", "_Twin_plugin", "_twin_plugin"):
            registry._REGISTRY.pop(name)


def test_python_callers_get_the_tiny_configuration_and_argument_checks():
    # create_model(tiny=True) builds what --tiny builds, a given key over it; an unset one (None, as an
    # unset CLI option) keeps the configuration's value
    model = create_model("vmunet", num_classes=2, img_size=64, tiny=True, drop_path_rate=0.0, d_state=None)
    assert model.bench_config == {"num_classes": 2, "in_chans": 3, "img_size": 64, **get_entry("vmunet").tiny,
                                  "drop_path_rate": 0.0}
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in _tiny("vmunet", num_classes=2).parameters())
    # bad numbers are named as themselves, not blamed on the configuration's keys
    for arg, value in (("num_classes", 0), ("num_classes", "9"), ("in_chans", 0), ("img_size", 64.0)):
        with pytest.raises(BenchError, match=rf"^unet: {arg} must be a positive whole number.*; got {value!r}$"):
            create_model("unet", **{"num_classes": 2, "img_size": 64, arg: value}, tiny=True)
    assert list_models("SSM") == list_models("ssm") == ["lightm_unet", "vmunet", "vmunet_v2"]
    with pytest.raises(BenchError, match=r"unknown family 'transformers' \(did you mean 'transformer'"):
        list_models("transformers")


def test_strict_load_lists_problems():
    model = _tiny("unet")
    sd = dict(model.state_dict())
    sd.pop("head.bias")
    sd["extra.weight"] = torch.zeros(1)
    sd["head.weight"] = torch.zeros(5, 8, 1, 1)
    with pytest.raises(BenchError, match=r"missing 1 \[head.bias\].*unexpected 1 \[extra.weight\].*mis-shaped 1"):
        load_official_state_dict(model, sd)


def test_a_file_that_does_not_load_is_said_to_look_like_what_it_is(tmp_path):
    """Beside the key lists, what a misfit file recognisably is: a pretrained encoder (an ImageNet
    head, no decoder), the other dimensionality's variant, another input size, another model."""
    def said(model, sd) -> str:
        torch.save(sd, tmp_path / "w.pth")
        with pytest.raises(BenchError) as err:
            load_weights(model, tmp_path / "w.pth")
        return str(err.value)

    # VMamba-S as its release holds it: the encoder's keys without "vmunet.", a 1000-class head, no decoder
    vm = _tiny("vmunet")
    encoder = {k.removeprefix("vmunet."): v for k, v in vm.state_dict().items()
               if "layers_up" not in k and "final" not in k and "concat" not in k}
    text = said(vm, {**encoder, "head.weight": torch.zeros(1000, 8), "head.bias": torch.zeros(1000)})
    assert "an ImageNet classifier's weights (head.weight: (1000, 8)), a pretrained encoder rather than a trained " \
           "vmunet" in text and "(vmamba_small_e238_ema.pth): give its folder to bench run as --pretrained-dir" in text
    flat = _tiny("lightm_unet").state_dict()
    assert re.search(r"2-D convolutions \(convInit\.0\.conv\.weight: file \(\d+, \d+, 3, 3\)\) for this 3-D model: weights "
                     r"of lightm_unet's 2-D variant, which a 2-D protocol builds \(--protocol lightm_unet_2d\)",
                     said(_tiny("lightm_unet", spatial_dims=3), flat))
    # position tables say the size the file was trained at: TransUNet's embedding, Swin-Unet's window masks
    assert "(transformer.embeddings.position_embeddings): trained at 64x64, where this model was built for 32x32: " \
           "--img-size 64 builds it so" in said(_tiny("transunet", img_size=32), _tiny("transunet").state_dict())
    assert "trained at 128x128, where this model was built for 64x64: --img-size 128" in said(
        _tiny("swin_unet"), _tiny("swin_unet", img_size=128).state_dict())
    assert "transunet's keys (decoder, segmentation_head, transformer): weights of another model; --models transunet" \
        in said(_tiny("vmunet"), _tiny("transunet").state_dict())
    assert "What it looks like" not in said(_tiny("unet"), {})  # nothing recognisable: the key lists alone
    # a small classifier head beside a whole unet (5 classes, not ImageNet's): no pretrained encoder said
    five = {**_tiny("unet").state_dict(), "fc.weight": torch.zeros(5, 8)}
    assert "What it looks like" not in said(_tiny("unet"), five)


def test_authors_checkpoints_keeping_numpy_numbers_load_and_broken_ones_are_named(tmp_path):
    """VM-UNet's latest.pth keeps its losses as np.float64 beside the weights, nnU-Net's
    checkpoint_final.pth NumPy values in its logging: weights-only loading refused both."""
    import numpy as np

    sd = _tiny("unet").state_dict()
    layouts = {"latest.pth": {"epoch": 300, "min_loss": np.float64(0.21), "loss": np.float32(0.23),
                              "model_state_dict": sd, "optimizer_state_dict": {"state": {}}},
               "checkpoint_final.pth": {"network_weights": sd, "logging": {"train_losses": [np.float64(0.5)],
                                                                           "ema_fg_dice": np.arange(3.0)}}}
    for name, layout in layouts.items():
        torch.save(layout, tmp_path / name)
        model = _tiny("unet")
        load_weights(model, tmp_path / name)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    torch.save([1, 2], tmp_path / "list.pth")  # no names to load by: one line, not an AttributeError traceback
    with pytest.raises(BenchError, match=r"list\.pth: holds a list, not a state_dict"):
        load_weights(_tiny("unet"), tmp_path / "list.pth")
    torch.save({k: v.float().fill_(float("nan")) if k == "head.weight" else v for k, v in sd.items()}, tmp_path / "nan.pth")
    with pytest.raises(BenchError, match=r"nan\.pth: 1 tensor\(s\) hold NaN or infinite values \(first: head\.weight\)"):
        load_weights(_tiny("unet"), tmp_path / "nan.pth")  # it scored DSC 0 as a model that finds nothing
    with pytest.raises(BenchError, match="weights file is a folder"):
        load_weights(_tiny("unet"), tmp_path)


def test_a_file_that_does_not_fit_is_named(tmp_path):
    model = _tiny("unet")
    path = tmp_path / "mine.pt"
    torch.save({"module." + k: v for k, v in _tiny("unet", num_classes=5).state_dict().items()}, path)
    with pytest.raises(BenchError, match=rf"^{re.escape(str(path))} does not match UNet: missing 0 \[none\]; "
                                         r"unexpected 0 \[none\]; mis-shaped 2 \[head\.weight: file \(5, 8, 1, 1\)"
                                         r".*\]; the model was built with num_classes=3, in_chans=3, img_size=64, "
                                         r"widths=\(8, 16, 32, 64\) \(the data's classes and channels"):
        load_weights(model, path)


def test_an_empty_weights_file_is_named_as_such(tmp_path):
    (tmp_path / "best.pth").touch()  # a copy that failed: torch said "EOFError: EOFError"
    with pytest.raises(BenchError, match=r"best\.pth: the weights file is empty \(0 bytes\)"):
        load_weights(_tiny("unet"), tmp_path / "best.pth")


def test_pickled_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"model": Evil()}, fh)
    with pytest.raises(BenchError, match=r"evil\.pth: refused to load .* Re-save it as a plain state_dict\.$"):
        load_weights(_tiny("unet"), path)  # one line, without torch's pages of advice and colour codes
    torch.save(nn.Sequential(nn.Linear(2, 2)), path)  # a whole model saved: the class it holds is named
    with pytest.raises(BenchError, match=r"plain state_dict \(it holds torch\.nn\.modules\.container\.Sequential; "
                                         r"torch\.save\(model\.state_dict\(\), path\) writes tensors only\)\.$"):
        load_weights(_tiny("unet"), path)


def test_a_torch_whose_weights_only_loading_can_be_bypassed_unpickles_nothing(tmp_path, monkeypatch):
    # before 2.6 a crafted file gets past weights_only=True (CVE-2025-32434); safetensors holds no pickle
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from bench.cli import app
    from bench.train import load_checkpoint

    model = _tiny("unet")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    monkeypatch.setattr(torch, "__version__", "2.10.0")  # compared as numbers, not as text
    load_weights(model, tmp_path / "w.pt")
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu121")
    said = (r"w\.pt: refused to load a pickle-based checkpoint: torch 2\.5\.1\+cu121 is older than 2\.6, whose "
            r"weights-only loading a crafted file can get past to run code \(CVE-2025-32434\); upgrade it")
    for load in (lambda: load_weights(model, tmp_path / "w.pt"), lambda: load_checkpoint(tmp_path / "w.pt")):
        with pytest.raises(BenchError, match=said):
            load()
    load_weights(model, tmp_path / "w.safetensors")
    doc = CliRunner().invoke(app, ["doctor"])
    assert doc.exit_code == 1 and "torch 2.5.1+cu121 is older than 2.6" in doc.output


def test_clean_state_dict_unwraps_and_strips():
    sd = clean_state_dict({"state_dict": {"module._orig_mod.a": 1, "b.total_ops": 2}})
    assert sd == {"a": 1}
    # torch.compile of a DDP model saves "_orig_mod.module.<key>": it kept "module." and failed strict loading
    assert clean_state_dict({"_orig_mod.module.a": 1, "module.module.b": 2, "c.module.d": 3}) == {"a": 1, "b": 2,
                                                                                                "c.module.d": 3}
    # the VM-UNet authors' latest.pth: weights beside the optimizer's and scheduler's state
    latest = {"epoch": 300, "min_loss": 0.1, "model_state_dict": {"module.a": 1},
              "optimizer_state_dict": {"state": {}}, "scheduler_state_dict": {"last_epoch": 300}}
    assert clean_state_dict(latest) == {"a": 1}


def test_third_party_registration():
    @register_model(family="cnn", paper_config={}, name="_test_tiny_plugin")
    def _factory(*, num_classes, in_chans=3, img_size=224):
        return OneConv(num_classes, in_chans)

    try:
        model = create_model("_test_tiny_plugin", num_classes=2)
        assert model.bench_entry.family == "cnn"
        assert model(torch.randn(1, 3, 8, 8)).shape == (1, 2, 8, 8)
        # the same constructor registered again (a module reloaded) is no conflict
        register_model(family="cnn", paper_config={}, name="_test_tiny_plugin")(_factory)
    finally:
        from bench import registry

        registry._REGISTRY.pop("_test_tiny_plugin")


def test_a_plugin_model_that_breaks_the_forward_contract_is_named(tmp_path):
    """Models written from the README's example: each slip one line when the model is built or first
    runs (an AttributeError after the data was prepared, a RuntimeError traceback)."""
    from bench.modeling import SegmentationModel
    from bench.protocol import load_protocol
    from bench.registry import model_overrides
    from bench.run import plan_grid

    class Sloppy(SegmentationModel):
        def __init__(self, num_classes, in_chans, set_attrs):
            super().__init__()
            if set_attrs:
                self.num_classes, self.in_chans = num_classes, in_chans
            self.conv = nn.Conv2d(in_chans, num_classes + 1, 1)  # one channel too many

        def forward_logits(self, x):
            return self.conv(x)

    register_model(family="cnn", paper_config={"set_attrs": False}, name="_sloppy")(
        lambda *, num_classes, in_chans=3, img_size=224, set_attrs=False: Sloppy(num_classes, in_chans, set_attrs))
    try:
        with pytest.raises(BenchError, match=r"_sloppy: Sloppy does not set self\.num_classes or self\.in_chans; "
                                             "SegmentationModel's forward checks"):
            create_model("_sloppy", num_classes=2)
        model = create_model("_sloppy", num_classes=2, set_attrs=True)
        with pytest.raises(BenchError, match=r"Sloppy returned \(1, 3, 8, 8\), expected \(B, 2, \*\(8, 8\)\)"):
            model(torch.randn(1, 3, 8, 8))
        # the right classes at half the size (a decoder a stage short): not zoomed back and scored unsaid
        model.conv = nn.Conv2d(3, 2, 2, stride=2)
        with pytest.raises(BenchError, match=r"Sloppy returned \(1, 2, 4, 4\), expected \(B, 2, \*\(8, 8\)\)"):
            model(torch.randn(1, 3, 8, 8))
        with pytest.warns(UserWarning, match="_sloppy: has no tiny configuration .* --tiny builds its paper"):
            assert model_overrides("_sloppy", {"set_attrs": True}, tiny=True) == {"set_attrs": True}
        # nor is its run labelled "(tiny)" on boards (the flag is a label, not the run's identity)
        with pytest.warns(UserWarning, match="no tiny configuration"):
            (spec,) = plan_grid(models=["_sloppy"], dataset="isic17", protocol=load_protocol("smoke"), seeds=[0],
                                data_root=None, synthetic=True, results_dir=tmp_path, tiny=True,
                                model_overrides={"set_attrs": True})
        assert not spec.tiny
        assert model_overrides("unet", {"widths": (4, 8)}, tiny=True) == {"widths": (4, 8)}  # --set over tiny
    finally:
        from bench import registry

        registry._REGISTRY.pop("_sloppy")


def test_a_plugin_model_that_returns_no_logits_is_named():
    """From a plugin journey: a forward ending in softmax or sigmoid trained and was scored unsaid (a
    one-class sigmoid is foreground everywhere at 0.5), deep supervision's tuple of heads ended in an
    AttributeError traceback, and a constructor without img_size blamed the --tiny configuration."""
    from bench.modeling import SIGMOID_CHECK_AT, SegmentationModel

    class Ends(SegmentationModel):
        def __init__(self, num_classes, end):
            super().__init__()
            self.num_classes, self.in_chans, self.end = num_classes, 3, end
            self.conv = nn.Conv2d(3, num_classes, 1)

        def forward_logits(self, x):
            y = self.conv(x)
            return {"softmax": y.softmax(1), "sigmoid": y.sigmoid(), "tuple": (y, y), "none": y}[self.end]

    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(BenchError, match=r"Ends returned probabilities \(in \[0, 1\], summing to 1 over its 3 channels "
                                         r"at every pixel\): forward_logits must give raw logits"):
        Ends(3, "softmax").train()(x)
    assert Ends(3, "softmax").eval()(x).shape == (2, 3, 8, 8)  # checked in training, at its first forward
    sigmoid = Ends(1, "sigmoid").train()
    with warnings.catch_warnings():  # a fresh model's logits may all lie in [0, 1]: not said at once
        warnings.simplefilter("error")
        for _ in range(SIGMOID_CHECK_AT - 1):
            sigmoid(x)
    with pytest.warns(UserWarning, match=rf"Ends's outputs all still lie in \[0, 1\] after {SIGMOID_CHECK_AT} "
                                         r"training steps: if forward_logits ends with a sigmoid, remove it"):
        sigmoid(x)
    with pytest.raises(BenchError, match=r"Ends\.forward_logits returned a tuple, expected one tensor of logits "
                                         r"\(B, 3, \*\(8, 8\)\)"):
        Ends(3, "tuple")(x)
    with warnings.catch_warnings():  # logits pass
        warnings.simplefilter("error")
        for model in (Ends(1, "none").train(), Ends(3, "none").train()):
            for _ in range(SIGMOID_CHECK_AT):
                model(x)

    @register_model(family="cnn", paper_config={"width": 4}, tiny={"width": 2}, name="_no_img_size")
    def _no_img_size(*, num_classes, in_chans=3, width=4):
        raise AssertionError("never built")

    @register_model(family="cnn", paper_config={}, name="_plain_module")  # no SegmentationModel: unchecked
    def _plain_module(*, num_classes, in_chans=3, img_size=224):
        return nn.Conv2d(in_chans, num_classes, 2, stride=2)  # half the input's size

    try:
        with pytest.raises(BenchError, match=r"_no_img_size: its constructor does not take img_size \(.*\); a "
                                             r"registered constructor takes num_classes, in_chans and img_size"):
            create_model("_no_img_size", num_classes=2, tiny=True)
        with pytest.warns(UserWarning, match=r"_plain_module: Conv2d is not a bench\.modeling\.SegmentationModel, so "
                                             r"its inputs and outputs go unchecked"):
            create_model("_plain_module", num_classes=2)
    finally:
        from bench import registry

        registry._REGISTRY.pop("_no_img_size")
        registry._REGISTRY.pop("_plain_module")


def test_a_plugin_cannot_take_a_registered_name():
    # a board would show the plugin's numbers under the built-in model's name
    with pytest.raises(ValueError, match=r"'unet' is taken by baselines\.unet\.unet.*register_model\(name="):
        @register_model(family="cnn", paper_config={}, name="unet")
        def mine(*, num_classes, in_chans=3, img_size=224):
            raise AssertionError("never built")
    assert get_entry("unet").constructor.__module__ == "baselines.unet"
    # a script's model registered before anything loaded the built-ins: refused too (it took the name, and
    # loading the built-ins then failed, blaming baselines' unet)
    script = ("from bench.registry import create_model, register_model\n"
              "try:\n"
              "    register_model(family='cnn', paper_config={}, name='unet')(lambda **kw: None)\n"
              "except ValueError as exc:\n"
              "    print(exc)\n"
              "print(type(create_model('unet', num_classes=2)).__name__)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         encoding="utf-8").stdout
    assert out.startswith("model name 'unet' is taken by baselines.unet.unet; register __main__.<lambda>")
    assert out.endswith("UNet\n")


_PLUGIN = """
from torch import nn

from bench.modeling import SegmentationModel
from bench.registry import register_model
from ssm_models.mamba import Mamba


class TinyNet(SegmentationModel):  # a Mamba layer over the pixels; uses_selective_scan forgotten
    size_divisor = 2

    def __init__(self, num_classes, in_chans, width):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.down = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.mamba = Mamba(width, d_state=4)
        self.up = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(width, num_classes, 3, padding=1))

    def forward_logits(self, x):
        y = self.down(x)
        b, c, h, w = y.shape
        return self.up(self.mamba(y.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w))


@register_model(family="cnn", paper_config={"width": 8}, tiny={"width": 4}, source="lab/mynet@abc123")
def mynet(*, num_classes, in_chans=3, img_size=224, width=8):
    \"\"\"A lab's own model.\"\"\"
    return TinyNet(num_classes, in_chans, width)
"""


def _install_plugin(site, body: str) -> dict[str, str]:
    """A package ``myplug`` declaring the entry point, as ``pip install`` leaves it (a dist-info
    folder on the path); the environment that puts it on a subprocess's path."""
    (site / "myplug.py").write_text(body, encoding="utf-8")
    info = site / "myplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[ssm_unet_bench.models]\nmynet = myplug\n", encoding="utf-8")
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_entry_point_plugin_runs_like_a_built_in_model(tmp_path):
    # a model from the user's own package, through bench's commands unchanged
    env = _install_plugin(tmp_path, _PLUGIN)
    listed = run_bench("models", env=env).stdout
    assert "mynet" in listed and "lab/mynet@abc123" in listed
    # no pretrained file: nothing said of its authors' recipe (bench knows only the built-ins')
    assert listed.split("\nmynet ", 1)[1].splitlines()[3].strip() == "pretrained init: none"
    assert "plugins      mynet: mynet" in run_bench("doctor", env=env).stdout
    results = tmp_path / "res"
    ran = run_bench("run", "--models", "mynet", "--dataset", "isic17", "--synthetic", "--protocol", "smoke", "--tiny",
                    "--max-iterations", "2", "--epochs", "1", "--results", results, "--threads", "1", env=env)
    # the scan its count found names the backend in the record, with a word about the missing flag
    assert "mynet: TinyNet runs the selective scan but does not set uses_selective_scan = True" in ran.stderr
    (record,) = (results / "records").glob("*.json")
    assert json.loads(record.read_text(encoding="utf-8"))["scan_backend"] in ("cpu", "torch")
    # its code edited since: the finished run is still skipped (a run is its name and configuration),
    # saying that its numbers are the old code's
    assert json.loads(record.read_text(encoding="utf-8"))["model_code"]
    assert (json.loads(record.read_text(encoding="utf-8"))["code_digest"]
            == bench_env.source_digest.__wrapped__())  # bench's code
    (tmp_path / "myplug.py").write_text(_PLUGIN.replace("nn.ReLU()", "nn.GELU()"), encoding="utf-8")
    again = run_bench("run", "--models", "mynet", "--dataset", "isic17", "--synthetic", "--protocol", "smoke",
                      "--tiny", "--max-iterations", "2", "--epochs", "1", "--results", results, env=env).stdout
    assert "finished earlier, skipped; mynet's code changed since it trained, so its numbers are the old code's" in again
    report = run_bench("report", "--results", results, env=env)
    board = report.stdout
    assert "| mynet (tiny) | cnn" in board.replace("  ", " ").replace("  ", " ")
    assert "train them into another --results folder for the code as it is" in report.stderr  # not in the caption
    # and its board says that its numbers are the old code's (it read as the edited model's)
    assert "Plugin code changed since these runs trained (mynet: 1 of 1 run(s)): their numbers are the old code's" \
        in board
    prof = run_bench("profile", "--models", "mynet", "--img-size", "32", "--no-timing", "--format", "csv", "--results",
                     results, env=env)
    assert "mynet" in prof.stdout


def test_a_plugin_taking_a_built_in_name_is_refused_whichever_module_loads_first(tmp_path):
    # `import baselines` first: a built-in's registration loaded the plugins while baselines was half
    # imported, so the plugin took unet and the built-in's import failed, blaming baselines
    env = _install_plugin(tmp_path, "from bench.registry import register_model\n"
                                    "register_model(family='cnn', paper_config={}, name='unet')(lambda **kw: None)\n")
    script = "import baselines\nfrom bench.registry import get_entry\nprint(get_entry('unet').constructor.__module__)\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, **env}, check=True, encoding="utf-8")
    assert proc.stdout == "baselines.unet\n"
    assert "model plugin 'mynet'" in proc.stderr and "model name 'unet' is taken by baselines.unet.unet" in proc.stderr


def test_a_broken_plugin_is_named_and_the_rest_works(tmp_path):
    # it registers its model, then fails: the half-loaded model must not be used
    env = _install_plugin(tmp_path, _PLUGIN + "\nimport a_module_that_is_not_installed\n")
    listed = run_bench("models", env=env)
    assert "mynet" not in listed.stdout and "vmunet" in listed.stdout
    assert "model plugin 'mynet'" in listed.stderr and "a_module_that_is_not_installed" in listed.stderr
    doctor = run_bench("doctor", env=env, check=False)
    assert doctor.returncode == 1 and "mynet: failed to load (myplug: ModuleNotFoundError" in doctor.stdout
    assert "doctor: 1 problem(s): model plugin mynet failed to load" in doctor.stderr
    asked = run_bench("profile", "--models", "mynet", "--no-timing", check=False, env=env)
    assert asked.returncode == 2
    assert "unknown model 'mynet'" in asked.stderr and "model plugins that failed to load: mynet" in asked.stderr


def test_set_kinds_are_checked_for_a_runs_set_not_when_a_record_is_rebuilt():
    """A diff review: refusing deep_supervision=0 inside create_model would have kept bench rescore, predict
    and figure from rebuilding a run trained with it before the check (records keep the value as given)."""
    from bench.registry import check_set_kinds

    with pytest.raises(BenchError, match=r"^vmunet_v2: --set deep_supervision takes true/false, e.g. true; got 0$"):
        check_set_kinds("vmunet_v2", {"deep_supervision": 0})
    check_set_kinds("vmunet_v2", {"deep_supervision": False, "drop_path_rate": 0})  # 0 for 0.2: both numbers
    model = create_model("vmunet_v2", num_classes=1, in_chans=3, img_size=64, tiny=True, deep_supervision=0)
    assert model.bench_config["deep_supervision"] == 0
