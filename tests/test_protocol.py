"""Protocols: the built-in recipes hold the authors' values, hashes follow content, bad files fail clearly."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings

import pytest
import torch

from bench.errors import BenchError
from bench.protocol import PROTOCOL_DIR, list_protocols, load_protocol


def test_builtin_protocols_load():
    names = list_protocols()
    assert {"synapse", "synapse_swin", "synapse_vmunet", "isic17", "isic18", "polyp", "isic_all", "acdc",
            "lightm_unet_2d", "smoke", "drift"} <= set(names)
    hashes = {load_protocol(n).hash for n in names}
    assert len(hashes) == len(names)  # each recipe is told apart by its hash


def test_synapse_is_transunets_recipe():
    p = load_protocol("synapse")
    t = p.train
    assert (p.img_size, t.batch_size, t.optimizer, t.lr, t.momentum, t.weight_decay) == (224, 24, "sgd", 0.01, 0.9, 1e-4)
    assert (t.scheduler, t.poly_power, t.epochs, t.loss_ce, t.loss_dice) == ("poly", 0.9, 150, 0.5, 0.5)
    assert (p.eval.image_order, p.eval.label_order, t.select, p.metric_policy) == (3, 0, "final", "legacy-synapse")
    assert (t.augment, t.amp, p.seed) == ("transunet", False, 1234)


def test_synapse_swin_differs_from_synapse_only_where_swin_unet_does():
    """spec/baselines.md §4.8: "Only: loss weights 0.4/0.6, base lr 0.05 [...], the lr-scaling rule for other
    batch sizes [...]. Data, lists, augmentation, [...] optimizer type/momentum/wd, poly 0.9, 150 epochs, batch 24,
    seeds, final-epoch checkpoint, metric code and aggregation are the same": a Swin-Unet row trains as TransUNet's."""
    swin, syn = load_protocol("synapse_swin"), load_protocol("synapse")
    own = ("lr", "lr_scale_batch", "loss_ce", "loss_dice")

    def same(cfg):
        return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in own}

    assert same(swin.train) == same(syn.train)
    t = swin.train
    assert (swin.variant_of, t.lr, t.lr_scale_batch, t.loss_ce, t.loss_dice) == ("synapse", 0.05, 24, 0.4, 0.6)
    assert (swin.img_size, swin.seed, swin.eval, swin.metric_policy, swin.normalize) == (
        syn.img_size, syn.seed, syn.eval, syn.metric_policy, syn.normalize)


def test_synapse_vmunet_is_vmunets_synapse_recipe():
    """spec/ssm_models.md §1.4, Synapse column: 224, 300 epochs, batch 32, AdamW 1e-3, betas (0.9, 0.999), eps 1e-8,
    wd 1e-2, cosine T_max=100 (not ISIC's 50: the lr ends at eta_min), CE+Dice [1, 1], AMP off, seed 42, best.pth
    the lowest mean training loss; TransUNet's augmentation and zoom orders (spec/baselines.md §4.9)."""
    p = load_protocol("synapse_vmunet")
    t = p.train
    assert (p.variant_of, p.img_size, t.epochs, t.batch_size, p.seed) == ("synapse", 224, 300, 32, 42)
    assert (t.optimizer, t.lr, t.betas, t.eps, t.weight_decay) == ("adamw", 1e-3, (0.9, 0.999), 1e-8, 1e-2)
    assert (t.scheduler, t.cosine_t_max, t.cosine_eta_min) == ("cosine", 100, 1e-5)
    assert (t.loss_ce, t.loss_dice, t.amp) == (1.0, 1.0, False)  # multiclass: the BCE weight is unused
    assert (t.select, t.augment, t.max_iterations) == ("best_train_loss", "transunet", 0)
    assert (p.eval.image_order, p.eval.label_order, p.metric_policy) == (3, 0, "legacy-synapse")


def test_acdc_is_transunets_synapse_recipe_for_20k_iterations():
    import dataclasses

    acdc, syn = load_protocol("acdc"), load_protocol("synapse")
    assert (acdc.variant_of, acdc.datasets, acdc.normalize) == ("synapse", ("nnunet",), "zscore")
    assert acdc.train.max_iterations == 20000 and acdc.train.epochs * 81 > 20000  # the cap decides
    same = lambda cfg: {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("epochs", "max_iterations")}  # noqa: E731
    assert same(acdc.train) == same(syn.train) and acdc.eval == syn.eval
    assert (acdc.img_size, acdc.metric_policy, acdc.seed, acdc.pretrained) == (224, "legacy-synapse", 1234, True)


def test_lightm_unet_2d_is_the_lightm_unet_nnunet_trainer():
    p = load_protocol("lightm_unet_2d")
    t = p.train
    assert (t.optimizer, t.lr, t.weight_decay, t.eps, t.grad_clip, t.amp) == ("adam", 1e-4, 1e-5, 1e-5, 12.0, False)
    assert (t.scheduler, t.poly_power, t.epochs, t.iterations_per_epoch) == ("poly_epoch", 0.9, 100, 250)
    assert (t.loss_ce, t.loss_dice, t.dice_loss, t.augment, t.select) == (1.0, 1.0, "nnunet", "nnunet", "final")
    assert (p.datasets, p.normalize, p.metric_policy, p.pretrained) == (("nnunet",), "zscore", "strict", False)
    # nnU-Net's 2d data path: patches, the in-plane target spacing, a third of each batch on foreground,
    # the sliding window without mirroring (--disable_tta)
    assert (p.patch_size, p.spatial_dims, p.img_size, p.model_size, p.patches) == ((512, 512), 2, 0, 512, True)
    assert (p.target_spacing, t.batch_size, t.oversample_foreground) == ("nnunet", 12, 0.33)
    assert (p.eval.tile_step, p.eval.mirror) == (0.5, False)


def test_isic_is_vmunets_recipe():
    for name in ("isic17", "isic18"):
        p = load_protocol(name)
        t = p.train
        assert (p.img_size, t.optimizer, t.lr, t.weight_decay, t.batch_size, t.epochs) == (256, "adamw", 1e-3, 1e-2, 32, 300)
        assert (t.scheduler, t.cosine_t_max, t.cosine_eta_min) == ("cosine", 50, 1e-5)
        # spec/ssm_models.md §1.4: AdamW betas (0.9, 0.999), eps 1e-8; BceDiceLoss(wb=1, wd=1); AMP off; seed 42;
        # flips and a rotation by one angle drawn per run (the ISIC pipeline)
        assert (t.betas, t.eps, t.amp, p.seed) == ((0.9, 0.999), 1e-8, False, 42), name
        assert (t.augment, t.loss_bce, t.loss_dice) == ("vmunet_isic", 1.0, 1.0), name
        assert (p.eval.threshold, p.metric_policy) == (0.5, "legacy-isic")
        assert t.select == "lr_min"  # not the final epoch, which trains at the cosine cycle's peak lr


def test_polyp_is_vmunet_v2s_recipe():
    # VM-UNet-V2's train.py runs VM-UNet's pipeline, loss and metric code with batch 80
    p = load_protocol("polyp")
    t = p.train
    assert (p.img_size, t.epochs, t.batch_size, p.seed, p.datasets) == (256, 300, 80, 42, ("polyp",))
    assert (t.optimizer, t.lr, t.weight_decay, t.betas) == ("adamw", 1e-3, 1e-2, (0.9, 0.999))
    assert (t.scheduler, t.cosine_t_max, t.cosine_eta_min) == ("cosine", 50, 1e-5)
    assert (t.loss_bce, t.loss_dice, t.amp) == (1.0, 1.0, False)
    assert (t.augment, p.normalize) == ("vmunet_isic", "minmax255")
    assert (p.metric_policy, p.eval.threshold) == ("legacy-isic", 0.5)
    assert t.select == "lr_min"  # the authors select on the test sets; we take the lowest-lr epoch
    assert p.source and p.description


def test_isic_all_is_vmunet_v2s_polyp_recipe_on_merged_isic():
    # VM-UNet-V2's train_isic_all.py trains with the same config_setting_v2.py as the polyp
    # run, on ISIC17 + ISIC18 training images merged
    import dataclasses

    merged, polyp = load_protocol("isic_all"), load_protocol("polyp")
    assert (merged.name, merged.datasets, merged.variant_of) == ("isic_all", ("isic_all",), "polyp")
    assert "train_isic_all.py" in merged.source and "config_setting_v2.py" in merged.source and merged.description
    meta = ("name", "version", "description", "source", "datasets", "variant_of", "hash")
    same = lambda p: {k: v for k, v in dataclasses.asdict(p).items() if k not in meta}  # noqa: E731
    assert same(merged) == same(polyp)
    t = merged.train
    assert (merged.img_size, t.batch_size, t.epochs, t.select) == (256, 80, 300, "lr_min")


def test_dtype_defaults_to_float32_and_drift_runs_in_float64():
    assert load_protocol("synapse").torch_dtype == torch.float32
    assert load_protocol("smoke").torch_dtype == torch.float32
    assert load_protocol("drift").torch_dtype == torch.float64


def test_hash_follows_content(tmp_path):
    smoke = load_protocol("smoke").hash
    copy = tmp_path / "copy.toml"
    copy.write_text((PROTOCOL_DIR / "smoke.toml").read_text(encoding="utf-8") + "\n# a comment changes nothing\n",
                    encoding="utf-8")
    assert load_protocol(copy).hash == smoke
    copy.write_text((PROTOCOL_DIR / "smoke.toml").read_text(encoding="utf-8").replace("lr = 1e-3", "lr = 2e-3"),
                    encoding="utf-8")
    with pytest.warns(UserWarning, match="give the copy its own name"):
        assert load_protocol(copy).hash != smoke


def test_override_marks_off_protocol():
    p = load_protocol("smoke")
    assert not p.off_protocol and p.with_overrides(lr=None) is p
    q = p.with_overrides(epochs=3, dtype="float64")
    assert q.off_protocol and q.overrides == {"epochs": 3, "dtype": "float64"}
    assert q.train.epochs == 3 and q.torch_dtype == torch.float64 and q.hash == p.hash
    with pytest.raises(BenchError, match=r"^cannot override protocol field 'colour'; these can be: .*\bepochs, .*"
                                         r"\bimg_size, .*\bmetric_policy\b"):
        p.with_overrides(colour="red")
    with pytest.raises(BenchError, match=r"^cannot override protocol field 'epoch' \(did you mean 'epochs'\?\); these can"):
        p.with_overrides(epoch=3)
    with pytest.raises(BenchError, match=r"override dtype: unknown 'float16'.* Expected one of float32, float64"):
        p.with_overrides(dtype="float16")  # checked like a protocol file, not a KeyError later


def test_override_repeating_the_protocols_value_stays_on_protocol():
    p = load_protocol("smoke")
    # the protocol's own values, spelt as the CLI and a record's JSON spell them
    same = p.with_overrides(lr=p.train.lr * 1.0, img_size=p.img_size, dtype=p.dtype)
    assert same == p and not same.off_protocol
    q = p.with_overrides(lr=p.train.lr, epochs=p.train.epochs + 1)
    assert q.overrides == {"epochs": p.train.epochs + 1} and q.off_protocol
    # once overridden, setting the overridden value again keeps the override; setting the file's
    # value back drops it (compared with the file, not with the overridden copy)
    assert q.with_overrides(epochs=p.train.epochs + 1).overrides == q.overrides
    back = q.with_overrides(epochs=p.train.epochs)
    assert back == p and not back.off_protocol and back.hash == p.hash
    patch = load_protocol("lightm_unet_2d")
    assert patch.with_overrides(patch_size=list(patch.patch_size), target_spacing="nnunet") == patch
    assert patch.with_overrides(patch_size=[16, 16]).overrides == {"patch_size": [16, 16]}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.replace('seed = 0', 'seed = 0\ndtype = "float16"'), r"bad\.toml: dtype: unknown 'float16'.* Expected one of float32, float64"),
        (lambda s: s.replace("[train]", "[trian]"), r"bad\.toml: unknown table \[trian\] \(did you mean \[train\]\?\)$"),
        (lambda s: s + "\n[[[", r"bad\.toml: invalid TOML"),
        # a misspelt name fails when the protocol loads, not when a run of a grid reaches it
        (lambda s: s.replace('optimizer = "adamw"', 'optimizer = "adamm"'),
         r"bad\.toml: train\.optimizer: unknown 'adamm' \(did you mean 'adam'\?\)\. Expected one of sgd, adamw, adam"),
        (lambda s: s.replace('scheduler = "constant"', 'scheduler = "step"'), r"train\.scheduler: unknown 'step'"),
        (lambda s: s.replace('select = "final"', 'select = "best"'), r"train\.select: unknown 'best'"),
        (lambda s: s.replace('augment = "none"', 'augment = "mixup"'), r"train\.augment: unknown 'mixup'"),
        (lambda s: s.replace('normalize = "none"', 'normalize = "zscor"'), r"bad\.toml: normalize: unknown 'zscor' \(did you mean 'zscore'"),
        (lambda s: s + "nsd_tolerance = -1.0\n", r"bad\.toml: eval\.nsd_tolerance: expected a number >= 0 \(0: no NSD\)"),
        (lambda s: s + "nsd_tolerance = \"2mm\"\n", r"eval\.nsd_tolerance: .* or a table of class name = tolerance; got '2mm'"),
        (lambda s: s + "\n[eval.nsd_tolerance]\nliver = 5.0\nspleen = 0\n",
         r"bad\.toml: eval\.nsd_tolerance\.spleen: expected the class's tolerance, a finite number > 0; got 0"),
        (lambda s: s + "\n[eval.nsd_tolerance]\nliver = nan\n", r"eval\.nsd_tolerance\.liver: .*> 0; got nan"),
        (lambda s: s + "\n[eval.nsd_tolerance]\n", r"bad\.toml: eval\.nsd_tolerance: empty table"),
    ],
)
def test_bad_protocol_file_names_the_file(tmp_path, edit, message):
    bad = tmp_path / "bad.toml"
    bad.write_text(edit((PROTOCOL_DIR / "smoke.toml").read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(BenchError, match=message):
        load_protocol(bad)


@pytest.mark.parametrize("augment", ["transunet", "vmunet_isic"])
def test_a_patch_protocol_of_a_whole_image_augmentation_is_refused_when_it_loads(tmp_path, augment):
    # it was refused by the first training batch, after the cases were preprocessed and the run had begun
    mine = tmp_path / "mine.toml"
    mine.write_text((PROTOCOL_DIR / "lightm_unet_2d.toml").read_text(encoding="utf-8").replace(
        'name = "lightm_unet_2d"', 'name = "mine"').replace('augment = "nnunet"', f'augment = "{augment}"'),
        encoding="utf-8")
    with pytest.raises(BenchError, match=rf"mine\.toml: train\.augment: '{augment}' works on whole images; a patch "
                                         r"protocol \(patch_size\) takes 'nnunet' or 'none'$"):
        load_protocol(mine)
    assert load_protocol(PROTOCOL_DIR / "lightm_unet_2d.toml").train.augment == "nnunet"
    mine.write_text(mine.read_text(encoding="utf-8").replace(f'augment = "{augment}"', 'augment = "none"'),
                    encoding="utf-8")
    assert load_protocol(mine).train.augment == "none"  # patches without augmentation


def test_a_protocol_file_is_read_by_its_toml_suffix_in_any_case(tmp_path):
    """`--protocol my.TOML` and `--protocol ./custom`, files there, were "unknown protocol" with the built-ins listed."""
    upper = tmp_path / "mine.TOML"
    upper.write_text((PROTOCOL_DIR / "smoke.toml").read_text(encoding="utf-8")
                     .replace('name = "smoke"', 'name = "mine"'), encoding="utf-8")
    assert load_protocol(upper).name == "mine"
    bare = tmp_path / "custom"
    bare.write_text(upper.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(BenchError, match=rf"^--protocol {re.escape(str(bare))}: a protocol file's name ends in \.toml; "
                                         "rename it$"):
        load_protocol(bare)
    with pytest.raises(BenchError, match=r"unknown protocol 'smok'.*did you mean 'smoke'"):
        load_protocol("smok")


def test_nsd_tolerance_per_class_table(tmp_path):
    smoke = load_protocol("smoke")
    path = tmp_path / "organs.toml"
    path.write_text((PROTOCOL_DIR / "smoke.toml").read_text(encoding="utf-8")
                    .replace('name = "smoke"', 'name = "organs"')
                    + "\n[eval.nsd_tolerance]\nspleen = 3\nliver = 5.0\n", encoding="utf-8")
    p = load_protocol(path)
    # sorted (name, tolerance) pairs: the config stays hashable, the order of the file is no content
    assert p.eval.nsd_tolerance == (("liver", 5.0), ("spleen", 3.0)) and hash(p.eval)
    assert p.hash != smoke.hash and not p.off_protocol
    path.write_text(path.read_text(encoding="utf-8").replace("spleen = 3", "spleen = 2"), encoding="utf-8")
    assert load_protocol(path).hash != p.hash
    # one number for all classes still overrides it, and an override of another field keeps it
    assert p.with_overrides(nsd_tolerance=2).eval.nsd_tolerance == 2.0
    assert p.with_overrides(epochs=3).eval.nsd_tolerance == p.eval.nsd_tolerance
    q = smoke.with_overrides(nsd_tolerance={"liver": 5})
    assert q.eval.nsd_tolerance == (("liver", 5.0),) and q.overrides == {"nsd_tolerance": {"liver": 5}}
    with pytest.raises(BenchError, match=r"override eval\.nsd_tolerance\.liver: .* > 0; got -5"):
        smoke.with_overrides(nsd_tolerance={"liver": -5})
    # a record keeps overrides as JSON: stored pairs come back as lists of lists, and bench rescore
    # rebuilds the protocol from them
    stored = json.loads(json.dumps(smoke.with_overrides(nsd_tolerance=p.eval.nsd_tolerance).overrides))
    assert smoke.with_overrides(**stored).eval.nsd_tolerance == p.eval.nsd_tolerance


def _smoke_edited(tmp_path, edit):
    path = tmp_path / "mine.toml"
    path.write_text(edit((PROTOCOL_DIR / "smoke.toml").read_text(encoding="utf-8")), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        # "$": a misspelt or misplaced key is not also reported missing where it belongs
        (lambda s: s.replace('normalize = "none"', 'normalise = "none"'),
         r"unknown key 'normalise' at the top level \(did you mean 'normalize'\?\)$"),
        (lambda s: s.replace("max_iterations", "max_iteration"),
         r"unknown key 'max_iteration' under \[train\] \(did you mean 'max_iterations'\?\)$"),
        (lambda s: s.replace("[train]", "[training]"), r"unknown table \[training\] \(did you mean \[train\]\?\)$"),
        # the likeliest slip: a top-level key appended at the end lands in the last table
        (lambda s: s + "pretrained = false\n",
         r"pretrained is a top-level key; it sits under \[eval\] here \(TOML puts every key after a \[table\] header "
         r"into that table\): move it above \[train\]$"),
        (lambda s: s + "amp = true\n", r"amp is a key of \[train\]; it sits under \[eval\] here \(TOML .*: move it "
                                       r"under \[train\]$"),
        (lambda s: s.replace("lr = 1e-3\n", "").replace("seed = 0", "seed = 0\nlr = 1e-3"),
         r"lr is a key of \[train\]; it sits at the top level here: move it under \[train\]$"),
        (lambda s: s.replace("lr = 1e-3\n", "").replace("batch_size = 4\n", ""),
         r"missing required keys under \[train\]: batch_size, lr$"),
        (lambda s: s.replace("seed = 0\n", ""), r"missing required key at the top level: seed$"),
        (lambda s: s[:s.index("[train]")], r"missing table \[train\] \(its required keys: epochs, batch_size, optimizer, "
                                           r"lr, weight_decay\)$"),
        (lambda s: s.replace("seed = 0", 'seed = 0\nhash = "0123"'), r"unknown key 'hash' at the top level$"),  # computed
        # every problem, in one line
        (lambda s: s.replace("seed = 0", "seed = 0\ncolour = 1") + "pretrained = true\n",
         r"unknown key 'colour' at the top level; pretrained is a top-level key; .*move it above \[train\]$"),
    ],
)
def test_unknown_misplaced_and_missing_keys_name_file_table_and_key(tmp_path, edit, message):
    path = _smoke_edited(tmp_path, edit)
    with pytest.raises(BenchError) as err:
        load_protocol(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and "\n" not in text and "__init__" not in text
    assert re.search(message, text), text


@pytest.mark.parametrize(
    "edit, message",
    [
        # a quoted "false" is a true string: it would have trained from the pretrained files
        (lambda s: s.replace("seed = 0", 'seed = 0\npretrained = "false"'), r"pretrained: expected true or false; got 'false'$"),
        (lambda s: s.replace("[eval]", 'amp = "no"\n[eval]'), r"train\.amp: expected true or false; got 'no'$"),
        (lambda s: s.replace("seed = 0", "seed = 0\nrequires_split_file = 1"), r"requires_split_file: expected true or false; got 1$"),
        (lambda s: s.replace("version = 1", 'version = "1"'), r"version: expected a whole number; got '1'$"),
        (lambda s: s.replace("seed = 0", "seed = 0.5"), r"seed: expected a whole number from 0 to 4294967295; got 0\.5$"),
        (lambda s: s.replace('source = "ssm-unet-bench"', "source = 3"), r"source: expected a string; got 3$"),
        (lambda s: s.replace("seed = 0", 'seed = 0\ndatasets = "synapse"'), r"datasets: expected a list of strings; got 'synapse'$"),
        (lambda s: s.replace("[eval]", "betas = [0.9]\n[eval]"), r"train\.betas: expected a list of 2 finite numbers; got \[0\.9\]$"),
        (lambda s: s.replace("[eval]", 'momentum = "0.9"\n[eval]'), r"train\.momentum: expected a finite number; got '0\.9'$"),
        (lambda s: s.replace("loss_ce = 0.5", "loss_ce = nan"), r"train\.loss_ce: expected a finite number; got nan$"),
        (lambda s: s.replace("image_order = 1", "image_order = 1.5"), r"eval\.image_order: expected a whole number; got 1\.5$"),
        (lambda s: s + "mirror = 0\n", r"eval\.mirror: expected true or false; got 0$"),
    ],
)
def test_field_types_are_checked(tmp_path, edit, message):
    path = _smoke_edited(tmp_path, edit)
    with pytest.raises(BenchError) as err:
        load_protocol(path)
    assert str(err.value).startswith(f"{path}: ") and re.search(message, str(err.value)), str(err.value)


def test_overrides_are_type_checked_and_survive_a_records_json():
    smoke = load_protocol("smoke")
    with pytest.raises(BenchError, match=r"^override pretrained: expected true or false; got 'false'$"):
        smoke.with_overrides(pretrained="false")
    with pytest.raises(BenchError, match=r"^override train\.amp: expected true or false; got 'yes'$"):
        smoke.with_overrides(amp="yes")
    # a record keeps overrides as JSON (lists), and bench rescore rebuilds the protocol from them:
    # the rebuilt recipe is the same (overrides keep what was given), and its configs stay hashable
    patch = load_protocol("lightm_unet_2d")
    for base, changes in ((smoke, {"betas": (0.8, 0.9), "pretrained": True, "amp": True}),
                          (patch, {"patch_size": (16, 16), "target_spacing": (1.0, 1.5)})):
        ran = base.with_overrides(**changes)
        rec = json.loads(json.dumps(ran.to_record()))
        rebuilt = load_protocol(rec["name"]).with_overrides(**rec["overrides"])
        assert dataclasses.replace(rebuilt, overrides={}) == dataclasses.replace(ran, overrides={})
        assert rebuilt.hash == rec["hash"] and rebuilt.overrides.keys() == changes.keys()
        assert hash(rebuilt.train) and hash(rebuilt.eval)


def test_a_copy_named_like_a_built_in_warns_when_its_content_differs(tmp_path):
    smoke = load_protocol("smoke")
    edited = _smoke_edited(tmp_path, lambda s: s.replace("lr = 1e-3", "lr = 2e-3"))
    with pytest.warns(UserWarning) as caught:
        mine = load_protocol(edited)
    (warning,) = caught
    assert re.fullmatch(rf"{re.escape(str(edited))}: protocol name 'smoke' is a built-in protocol's, but the content "
                        rf"differs \(hash {mine.hash}, the built-in's {smoke.hash}\): .*give the copy its own name",
                        str(warning.message)), warning.message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # the same recipe (byte for byte, or comments aside), a copy of its own name, the built-ins themselves
        assert load_protocol(_smoke_edited(tmp_path, lambda s: s)) == smoke
        assert load_protocol(_smoke_edited(tmp_path, lambda s: "# mine\n" + s)) == smoke
        assert load_protocol(_smoke_edited(tmp_path, lambda s: s.replace('name = "smoke"', 'name = "mine"'))).name == "mine"
        for name in list_protocols():
            assert load_protocol(name) == load_protocol(PROTOCOL_DIR / f"{name}.toml")


def test_a_recipes_values_are_checked_where_the_file_names_them(tmp_path):
    """From a custom-protocol journey: a name "../x" wrote checkpoints outside --results; cosine_t_max
    0 and image_order 7 ended runs in tracebacks; a threshold of 1.5, all loss weights 0, a negative
    loss weight or poly power, momentum 2 were taken silently (lr 0 stays: it keeps a model's initial weights); a misspelt policy or dataset surfaced
    at the first run without the file's name; a Notepad byte-order mark was invalid TOML."""
    from bench.protocol import PROTOCOL_DIR

    base = (PROTOCOL_DIR / "smoke.toml").read_text(encoding="utf-8").replace('name = "smoke"', 'name = "mine"')

    def load(text: str):
        path = tmp_path / "mine.toml"
        path.write_text(text, encoding="utf-8")
        return load_protocol(path)

    def refused(text: str, pattern: str) -> None:
        with pytest.raises(BenchError, match=pattern):
            load(text)

    assert load(base).name == "mine"
    assert load("\ufeff" + base).name == "mine"  # a byte-order mark
    (tmp_path / "mine.toml").write_text(base, encoding="utf-16")  # Notepad's "Unicode": a traceback before
    assert load_protocol(tmp_path / "mine.toml").name == "mine"
    for name in ("x/../../../esc", "my recipe", ""):
        refused(base.replace('name = "mine"', f'name = "{name}"'), r"mine\.toml: name .*: expected letters, digits")
    for key, value, pattern in (
            ("cosine_t_max", "0", r"train\.cosine_t_max: expected a whole number >= 1"),
            ("poly_power", "-3", r"train\.poly_power: expected a number >= 0"),
            ("momentum", "2.0", r"train\.momentum: expected a number >= 0 and < 1"),
            ("grad_clip", "-5", r"train\.grad_clip: expected a norm >= 0"),
            ("checkpoint_every", "-1", r"train\.checkpoint_every: expected a whole number >= 0"),
            ("loss_ce", "-0.4", r"train\.loss_ce: expected a number >= 0")):
        refused(base.replace("[train]\n", f"[train]\n{key} = {value}\n", 1) if f"\n{key} =" not in base else
                re.sub(rf"\n{key} = [^\n]*", f"\n{key} = {value}", base), pattern)
    refused(re.sub(r"\nloss_(ce|dice|bce) = [^\n]*", "", base).replace("[train]\n", "[train]\nloss_ce = 0.0\n"
                                                                      "loss_dice = 0.0\nloss_bce = 0.0\n", 1),
            r"train\.loss_ce, loss_dice, loss_bce: all 0, so nothing would train")
    assert "\n[eval]\n" in base
    with_eval = base
    refused(re.sub(r"\nthreshold = [^\n]*", "", with_eval).replace("[eval]\n", "[eval]\nthreshold = 1.5\n", 1),
            r"eval\.threshold: expected a probability")
    refused(re.sub(r"\nimage_order = [^\n]*", "", with_eval).replace("[eval]\n", "[eval]\nimage_order = 7\n", 1),
            r"eval\.image_order: expected a spline order")
    refused(re.sub(r'\nmetric_policy = [^\n]*', '\nmetric_policy = "stict"', base),
            r"mine\.toml: metric_policy: unknown metric policy 'stict' \(did you mean 'strict'\?\)")
    refused(base.replace('name = "mine"', 'name = "mine"\ndatasets = ["isic2017"]'),
            r"mine\.toml: datasets: unknown dataset 'isic2017'")
    refused(base + "\n[evaluation]\nthreshold = 0.4\n", r"unknown table \[evaluation\] \(did you mean \[eval\]\?\)")
    assert load(base.replace('name = "mine"', 'name = "mine"\ndatasets = ["Synapse"]')).datasets == ("Synapse",)  # any case
    # the record keeps every setting, overrides included
    recipe = load(base).with_overrides(epochs=3).to_record()["recipe"]
    assert recipe["name"] == "mine" and recipe["train"]["epochs"] == 3 and "hash" not in recipe
    assert load(base).with_overrides(lr=0.0).train.lr == 0.0  # lr 0 keeps a model's initial weights (a test's tool)


def test_a_records_recipe_rebuilds_the_protocol_it_ran():
    """Every built-in protocol (patch protocols, per-class NSD tables, overrides) comes back whole from a
    record's JSON; a recipe another version of bench wrote (unknown or missing settings) is left to the
    file, as records without one."""
    from bench.protocol import protocol_from_record

    for name in list_protocols():
        ran = load_protocol(name).with_overrides(seed=7)
        ran = ran.with_overrides(nsd_tolerance={"liver": 2.0, "spleen": 1.0}) if name == "lightm_unet_3d" else ran
        meta = json.loads(json.dumps(ran.to_record()))
        back = protocol_from_record(meta)
        assert back is not None and dataclasses.replace(back, file_values={}) == dataclasses.replace(ran, file_values={})
        assert back.hash == ran.hash and back.off_protocol
    meta = json.loads(json.dumps(load_protocol("smoke").to_record()))
    assert protocol_from_record({**meta, "recipe": {**meta["recipe"], "new_setting": 1}}) is None
    assert protocol_from_record({**meta, "recipe": {"name": "smoke"}}) is None
    assert protocol_from_record({k: v for k, v in meta.items() if k != "recipe"}) is None
