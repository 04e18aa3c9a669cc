"""The training loop: schedules, losses, reproducibility, checkpoints, resume after a kill, NaN stop."""

from __future__ import annotations

import math
import random
import re
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.data import open_dataset, synthetic_root
from bench.errors import BenchError
from bench.losses import binary_dice_loss, multiclass_dice_loss, nnunet_dice_loss, segmentation_loss
from bench.protocol import list_protocols, load_protocol
from bench.registry import create_model, get_entry
from bench.rng import caller_rng_kept, seed_everything
from bench.train import lr_at, train_model


@pytest.fixture(scope="module")
def synapse_root(tmp_path_factory):
    return synthetic_root("synapse", tmp_path_factory.mktemp("synth"))


def _tiny_unet(ds, seed=0):
    seed_everything(seed)
    return create_model("unet", num_classes=ds.num_classes, in_chans=ds.in_chans, img_size=32, **get_entry("unet").tiny)


def _proto(**kw):
    base = dict(img_size=32, max_iterations=6, batch_size=4, checkpoint_every=1)
    return load_protocol("smoke").with_overrides(**{**base, **kw})


def test_poly_schedule_matches_transunet():
    p = load_protocol("synapse")
    max_it = 13_950
    # TransUNet updates lr after each step from the pre-increment counter: steps 0 and 1 use 0.01
    assert lr_at(p, 0, 0, max_it) == lr_at(p, 1, 0, max_it) == 0.01
    assert lr_at(p, 2, 0, max_it) == pytest.approx(0.01 * (1 - 1 / max_it) ** 0.9)
    assert lr_at(p, max_it, 149, max_it) == pytest.approx(0.01 * (1 / max_it) ** 0.9)


def test_cosine_schedule_matches_torch():
    p = load_protocol("isic17")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=p.train.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50, eta_min=1e-5)
    for epoch in range(300):  # T_max 50 over 300 epochs cycles, as in VM-UNet's code
        assert lr_at(p, 0, epoch, 1) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12)
        opt.step()
        sched.step()


def test_swin_unets_lr_scaling_rule_for_other_batch_sizes():
    swin, transunet = load_protocol("synapse_swin"), load_protocol("synapse")
    first = lambda p, **kw: lr_at(p.with_overrides(**kw) if kw else p, 0, 0, 100)  # noqa: E731
    assert first(swin) == 0.05 and first(swin, batch_size=12) == pytest.approx(0.025)  # train.py: lr * 12 / 24
    assert first(swin, batch_size=48) == pytest.approx(0.1) and first(swin, batch_size=8) == 0.05  # not a multiple of 6
    assert first(swin, batch_size=12, lr=0.01) == pytest.approx(0.005)  # the rule scales a given lr too, as there
    assert first(transunet, batch_size=12) == 0.01  # TransUNet's code has no such rule


def test_each_recipes_optimizer_is_built_with_the_authors_hyperparameters():
    """A recipe's momentum, weight decay, betas or eps lost between the protocol and torch trains another
    optimizer under the recipe's name. spec/baselines.md §4.6: SGD 0.01, momentum 0.9, wd 1e-4 on all parameters;
    spec/ssm_models.md §1.4: AdamW 1e-3, betas (0.9, 0.999), eps 1e-8, wd 1e-2, amsgrad off;
    §3.4: Adam 1e-4, wd 1e-5, eps 1e-5."""
    from bench.train import build_optimizer

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    sgd = build_optimizer(net, load_protocol("synapse"))
    assert type(sgd) is torch.optim.SGD and len(sgd.param_groups) == 1
    g = sgd.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"], g["nesterov"]) == (0.01, 0.9, 1e-4, False)
    assert len(g["params"]) == len(list(net.parameters()))  # no exclusions: BatchNorm's too
    adamw = build_optimizer(net, load_protocol("isic17"))
    g = adamw.param_groups[0]
    assert type(adamw) is torch.optim.AdamW
    assert (g["lr"], tuple(g["betas"]), g["eps"], g["weight_decay"], g["amsgrad"]) == (
        1e-3, (0.9, 0.999), 1e-8, 1e-2, False)
    adam = build_optimizer(net, load_protocol("lightm_unet_2d"))
    g = adam.param_groups[0]
    assert type(adam) is torch.optim.Adam and (g["lr"], g["eps"], g["weight_decay"]) == (1e-4, 1e-5, 1e-5)


def test_amp_only_where_the_protocol_allows_it_and_on_cuda():
    """Every built-in recipe trains without AMP (the authors' code has none): turned on for any CUDA run, a GPU
    would train them in float16 under their names."""
    from bench.train import amp_enabled

    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # a device object needs no GPU
    assert not any(amp_enabled(load_protocol(name), cuda) for name in list_protocols())
    allowed = _proto(amp=True)
    assert amp_enabled(allowed, cuda) and not amp_enabled(allowed, cpu)


def test_multiclass_dice_loss_hand_computed():
    # 2 classes, 1x1x2 image: probabilities from logits, target [0, 1]
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])
    target = torch.tensor([[[0, 1]]])
    p = logits.softmax(1)[0, :, 0]  # (class, pixel)
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    per_class = 1 - (2 * (p * g).sum(1) + 1e-5) / ((p * p).sum(1) + (g * g).sum(1) + 1e-5)
    torch.testing.assert_close(multiclass_dice_loss(logits, target), per_class.mean())


def test_binary_dice_loss_hand_computed():
    logits = torch.tensor([[[[0.0, 0.0]]], [[[10.0, -10.0]]]])
    target = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 0.0]]]])
    p = logits.sigmoid().flatten(1)
    s = (2 * (p * target.flatten(1)).sum(1) + 1) / (p.sum(1) + 1 + 1)
    torch.testing.assert_close(binary_dice_loss(logits, target), 1 - s.mean())


def test_poly_epoch_schedule_matches_nnunets_poly_lr():
    p = load_protocol("lightm_unet_2d")  # nnU-Net's PolyLRScheduler.step(epoch) at each epoch's start
    for epoch in (0, 1, 50, 99):
        want = 1e-4 * (1 - epoch / 100) ** 0.9
        assert lr_at(p, 0, epoch, 25_000, 100) == lr_at(p, 249, epoch, 25_000, 100) == pytest.approx(want, rel=1e-12)
    assert lr_at(p, 0, 1, 10, 2) == pytest.approx(1e-4 * 0.5 ** 0.9)  # a capped run decays over its own epochs
    from bench.train import lr_min_epoch

    assert lr_min_epoch(p, 100, 250, 25_000) == 99


def _nnunet_dice_reference(probs, target):
    """nnU-Net's MemoryEfficientSoftDiceLoss (batch_dice, do_bg False, smooth 1e-5) in float64 loops,
    through tp/fp/fn as nnU-Net's get_tp_fp_fn_tn states them: Dice = (2tp + s) / (2tp + fp + fn + s)."""
    scores = []
    for c in range(1, probs.shape[1]):
        p, g = probs[:, c].double(), (target == c).double()
        tp, fp, fn = (p * g).sum(), (p * (1 - g)).sum(), ((1 - p) * g).sum()
        scores.append((2 * tp + 1e-5) / (2 * tp + fp + fn + 1e-5))
    return -torch.stack(scores).mean()


def test_nnunet_dice_loss_is_nnunets_batch_foreground_dice():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 5, 4))
    target[1][target[1] == 2] = 0  # class 2 absent from the second image: the batch pools it
    ref = _nnunet_dice_reference(logits.softmax(1), target)
    torch.testing.assert_close(nnunet_dice_loss(logits, target), ref)
    total = segmentation_loss(logits, target, ce=1.0, dice=1.0, bce=1.0, dice_loss="nnunet")
    torch.testing.assert_close(total, F.cross_entropy(logits, target) + ref)  # DC_and_CE_loss: ce + dc
    # and it is not TransUNet's Dice (background included, squared denominators)
    assert not torch.allclose(total, segmentation_loss(logits, target, ce=1.0, dice=1.0, bce=1.0))
    # a perfect prediction scores -1 per present class
    perfect = F.one_hot(target, 3).permute(0, 3, 1, 2).double() * 60.0
    assert nnunet_dice_loss(perfect, target).item() == pytest.approx(-1.0, abs=1e-9)


def test_loss_weights_scale_their_own_terms():
    """Swin-Unet's protocol weighs CE 0.4 and Dice 0.6, VM-UNet's binary one BCE and Dice each 1: weights
    swapped or dropped would train another loss than the one the protocol names."""
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 5, 5, dtype=torch.float64), torch.randint(0, 4, (2, 5, 5))
    p, g = logits.softmax(1), F.one_hot(target, 4).permute(0, 3, 1, 2).double()
    dims = (0, 2, 3)  # TransUNet's DiceLoss: batch sums per class, squared denominators, smooth 1e-5
    dice = (1 - (2 * (p * g).sum(dims) + 1e-5) / ((p * p).sum(dims) + (g * g).sum(dims) + 1e-5)).mean()
    torch.testing.assert_close(segmentation_loss(logits, target, ce=0.4, dice=0.6, bce=1.0),
                               0.4 * F.cross_entropy(logits, target) + 0.6 * dice)
    logits, target = torch.randn(2, 1, 5, 5, dtype=torch.float64), torch.rand(2, 1, 5, 5, dtype=torch.float64)
    q = logits.sigmoid()
    bce = -(target * q.log() + (1 - target) * (1 - q).log()).mean()
    dims = (1, 2, 3)  # VM-UNet's BceDiceLoss: per-sample Dice, smooth 1, averaged over the batch
    dice = 1 - ((2 * (q * target).sum(dims) + 1) / (q.sum(dims) + target.sum(dims) + 1)).mean()
    torch.testing.assert_close(segmentation_loss(logits, target, ce=1.0, dice=0.25, bce=0.5), 0.5 * bce + 0.25 * dice)


def test_half_precision_logits_are_scored_in_float32():
    """Under autocast a model returns bfloat16 or float16 logits: the loss is computed in float32 (a
    bfloat16 softmax keeps under 3 significant digits, too few for Dice sums over a batch of slices)."""
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 5, 5).bfloat16(), torch.randint(0, 3, (2, 5, 5))
    for low in (logits, logits.half()):
        loss = segmentation_loss(low, target, ce=0.5, dice=0.5, bce=1.0)
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss, segmentation_loss(low.float(), target, ce=0.5, dice=0.5, bce=1.0))


def test_binary_loss_is_vmunets_bce_on_the_sigmoid():
    """VM-UNet's BceDiceLoss: nn.BCELoss on the sigmoid's output. Where a float32 logit saturates its
    log is clamped at -100 and no gradient flows (the with-logits form gave 20 and 1); below that the
    two agree."""
    target = torch.tensor([[[[0.0, 1.0, 0.5]]]])
    logits = torch.tensor([[[[20.0, 2.0, -1.0]]]], requires_grad=True)  # the first saturates: sigmoid = 1.0
    loss = segmentation_loss(logits, target, ce=0.0, dice=0.0, bce=1.0)
    loss.backward()
    p = torch.sigmoid(torch.tensor([2.0, -1.0]))
    rest = -(torch.log(p[0]) + 0.5 * torch.log(p[1]) + 0.5 * torch.log(1 - p[1]))
    assert loss.item() == pytest.approx((100.0 + rest.item()) / 3, rel=1e-6)
    assert logits.grad[0, 0, 0, 0] == 0.0 and logits.grad[0, 0, 0, 1] == pytest.approx((p[0].item() - 1) / 3, rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # runs under autocast too (CUDA's refuses BCELoss)
        segmentation_loss(logits.to(torch.bfloat16), target, ce=0.0, dice=1.0, bce=1.0)
    # a diverged model's NaN logits give a NaN loss for the loop's clear error, not BCELoss's refusal
    assert math.isnan(segmentation_loss(logits * math.nan, target, ce=0.0, dice=0.0, bce=1.0).item())


def test_an_epoch_of_draws_runs_its_fixed_number_of_steps(synapse_root, tmp_path, monkeypatch):
    """nnU-Net's fixed-length epochs, bit-reproducible; each epoch draws its own batches: the loop sets the
    sampler's epoch, else every epoch would silently replay epoch 0's draws (a pass, epoch 0's order)."""
    from bench.train import EpochBatches

    ds = open_dataset("synapse", synapse_root)
    proto = _proto(max_iterations=0, epochs=2, batch_size=4, iterations_per_epoch=3)
    seen, drawn, draw = [], [], EpochBatches.__iter__

    def each_epochs_draws(sampler):
        batches = list(draw(sampler))
        drawn.append((sampler.epoch, batches))
        return iter(batches)

    monkeypatch.setattr(EpochBatches, "__iter__", each_epochs_draws)
    res = train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path / "a", device=torch.device("cpu"),
                      progress=lambda step, total, loss: seen.append((step, total)))
    assert res.iterations == 6 and len(res.epoch_losses) == 2 and seen[-1] == (6, 6)
    assert [epoch for epoch, _ in drawn] == [0, 1] and drawn[0][1] != drawn[1][1]
    again = _tiny_unet(ds)
    train_model(again, ds, proto, seed=0, run_dir=tmp_path / "b", device=torch.device("cpu"))
    model = _tiny_unet(ds)
    train_model(model, ds, proto, seed=0, run_dir=tmp_path / "c", device=torch.device("cpu"))
    for k, v in _state(again).items():
        assert torch.equal(model.state_dict()[k], v), k


def test_a_twice_drawn_item_is_augmented_twice_differently(synapse_root):
    from bench.data.torch_dataset import TrainDataset

    ds = open_dataset("synapse", synapse_root)
    data = TrainDataset(ds, _proto(augment="transunet"), seed=0)
    outs = [data[(0, d)][0] for d in range(8)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # 8 draws of a p 0.75 augmentation
    assert torch.equal(data[(0, 3)][0], data[(0, 3)][0]) and torch.equal(data[0][0], data[0][0])


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_bit_reproducible_and_checkpoints(synapse_root, tmp_path):
    ds = open_dataset("synapse", synapse_root)
    proto = _proto()
    states = []
    for i in range(2):
        model = _tiny_unet(ds)
        res = train_model(model, ds, proto, seed=3, run_dir=tmp_path / f"r{i}", device=torch.device("cpu"))
        states.append(_state(model))
        assert res.iterations == 6 and math.isfinite(res.final_loss)
        assert res.to_record()["cudnn_deterministic"] is None  # no cuDNN on CPU; True on CUDA
        assert res.to_record()["base_lr"] == proto.train.lr  # the lr the schedule started from
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    ckpts = sorted(p.name for p in (tmp_path / "r0" / "checkpoints").iterdir())
    assert "final.pt" in ckpts and "last.pt" in ckpts
    assert not [n for n in ckpts if n.endswith(".tmp")]
    # a different seed gives different weights; checkpoint temp files killed writers left a day ago go,
    # also under the name older versions gave them (no TEMP_MARK)
    import os
    import time

    from bench.fileio import TEMP_MARK

    left = tmp_path / "r2" / "checkpoints"
    left.mkdir(parents=True)
    # today's names, mkstemp's of earlier versions, and the "<pid>.tmp" of the first ones (any pid's length)
    leftovers = [left / f".last.pt.{TEMP_MARK}k1ll3d.tmp", left / ".last.pt.k1ll3d00.tmp", left / ".last.pt.1234567.tmp"]
    for path in leftovers:
        path.write_bytes(b"half")
        os.utime(path, (time.time() - 2 * 86400,) * 2)
    other = _tiny_unet(ds)
    train_model(other, ds, proto, seed=4, run_dir=tmp_path / "r2", device=torch.device("cpu"))
    assert not any(path.exists() for path in leftovers)
    assert any(not torch.equal(other.state_dict()[k], states[0][k]) for k in states[0])


def test_grad_clip_rescales_the_whole_gradient_to_its_norm(synapse_root, tmp_path):
    """Guards against clipping each gradient element at grad_clip (clip_grad_value_) instead of the norm."""
    ds = open_dataset("synapse", synapse_root)
    start = {k: p.detach().clone() for k, p in _tiny_unet(ds).named_parameters()}
    lr = 0.1

    def one_step(clip, name):
        # one plain SGD step (no momentum, no decay): the update is -lr * the (clipped) gradient
        model = _tiny_unet(ds)
        proto = _proto(max_iterations=1, optimizer="sgd", momentum=0.0, weight_decay=0.0, scheduler="constant",
                       lr=lr, grad_clip=clip)
        train_model(model, ds, proto, seed=0, run_dir=tmp_path / name, device=torch.device("cpu"))
        return {k: p.detach() - start[k] for k, p in model.named_parameters()}

    free = one_step(0.0, "free")
    norm = torch.linalg.vector_norm(torch.cat([d.flatten() for d in free.values()])).item() / lr
    clip = 0.5 * norm  # every element scales by about a half; no single element comes near the norm
    clipped = one_step(clip, "clipped")
    coef = clip / (norm + 1e-6)  # torch's clip_grad_norm_: every gradient times max_norm / (total_norm + 1e-6)
    for k, step in free.items():
        torch.testing.assert_close(clipped[k], step * coef, rtol=0, atol=1e-6, msg=k)


def _sgd_lrs(monkeypatch):
    """The lr each SGD step really runs at, in order (what the optimizer holds, not what the loop logs)."""
    used, real = [], torch.optim.SGD.step

    def step(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    return used


def test_the_loop_trains_each_step_at_transunets_poly_lr(synapse_root, tmp_path, monkeypatch):
    """The schedule must reach the optimizer, not only the log: spec/baselines.md §4.6, "after each step
    lr = 0.01·(1 − it/max_it)^0.9 with `it` counted before the increment (first two steps both at 0.01)"."""
    from bench.train import load_checkpoint

    ds = open_dataset("synapse", synapse_root)
    proto = _proto(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, scheduler="poly", poly_power=0.9)
    logged, used = [], _sgd_lrs(monkeypatch)

    class Writer:
        def add_scalar(self, tag, value, step):
            if tag == "train/lr":
                logged.append(value)

    train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"), writer=Writer())
    want = [0.01, 0.01, 0.01 * (5 / 6) ** 0.9, 0.01 * (4 / 6) ** 0.9, 0.01 * (3 / 6) ** 0.9, 0.01 * (2 / 6) ** 0.9]
    assert used == pytest.approx(want, rel=1e-12) and logged == pytest.approx(want, rel=1e-12)
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    g = last["optimizer"]["param_groups"][0]
    assert g["lr"] == pytest.approx(want[-1], rel=1e-12) and (g["momentum"], g["weight_decay"]) == (0.9, 1e-4)
    assert last["step"] == 6 and last["optimizer"]["state"]  # the momentum buffers, for a resume


def test_swin_unets_loss_weights_reach_the_loss_and_the_model_trains_in_train_mode(synapse_root, tmp_path,
                                                                                      monkeypatch):
    """Swin-Unet's loss is 0.4·CE + 0.6·Dice (spec/baselines.md §2.7): swapped, it trains another objective. A model
    handed over in eval mode (as an evaluation or a cost measurement leaves it) must still train in train mode:
    BatchNorm's batch statistics, dropout on."""
    ds = open_dataset("synapse", synapse_root)
    weights, modes = [], []

    def loss(logits, label, **kw):
        weights.append((kw["ce"], kw["dice"]))
        return segmentation_loss(logits, label, **kw)

    monkeypatch.setattr("bench.train.segmentation_loss", loss)
    model = _tiny_unet(ds)
    model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    model.eval()
    swin = load_protocol("synapse_swin").train
    proto = _proto(max_iterations=2, loss_ce=swin.loss_ce, loss_dice=swin.loss_dice)
    train_model(model, ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"))
    assert weights == [(0.4, 0.6)] * 2 and modes == [True, True]


def test_each_step_uses_only_its_own_batchs_gradient(synapse_root, tmp_path, monkeypatch):
    """Gradients left over from the step before would silently add up (TransUNet's trainer.py calls
    optimizer.zero_grad() before each loss.backward()): at every step each gradient is d(this step's loss)/dp."""
    ds = open_dataset("synapse", synapse_root)
    model = _tiny_unet(ds)
    params = [p for p in model.parameters() if p.requires_grad]
    expected, checked, real_step = [], [], torch.optim.SGD.step

    def loss(logits, label, **kw):
        value = segmentation_loss(logits, label, **kw)
        expected.append(torch.autograd.grad(value, params, retain_graph=True, allow_unused=True))
        return value

    def step(self, *args, **kwargs):
        for p, want in zip(params, expected[-1]):
            got = torch.zeros_like(p) if p.grad is None else p.grad
            checked.append(torch.allclose(got, torch.zeros_like(p) if want is None else want, rtol=1e-5, atol=1e-7))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr("bench.train.segmentation_loss", loss)
    monkeypatch.setattr(torch.optim.SGD, "step", step)
    proto = _proto(max_iterations=3, optimizer="sgd", momentum=0.0, weight_decay=0.0, scheduler="constant", lr=0.1)
    train_model(model, ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"))
    assert len(expected) == 3 and len(checked) == 3 * len(params) and all(checked)


def test_seed_everything_makes_cudnn_deterministic():
    # TransUNet and VM-UNet set both flags with the seed (their train.py files)
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
        seed_everything(0)
        assert torch.backends.cudnn.deterministic is True and torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def test_seed_everything_seeds_python_numpy_and_torch_with_the_seed():
    """The authors' set-ups seed random, numpy and torch with the run's seed: a stream left unseeded, or
    seeded with something else, makes a run unrepeatable or differ from theirs."""
    with caller_rng_kept():
        seed_everything(7)
        assert random.random() == random.Random(7).random()
        assert np.random.random() == np.random.RandomState(7).random_sample()
        assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(7)))


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, torch
    torch.set_num_threads(1)
    from bench.data import open_dataset
    from bench.protocol import load_protocol
    from bench.registry import create_model, get_entry
    from bench.train import train_model
    root, run_dir, kill_after, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    ds = open_dataset("synapse", root)
    proto = load_protocol("smoke").with_overrides(img_size=32, max_iterations=0, epochs=3, batch_size=16,
                                                  checkpoint_every=1)
    torch.manual_seed(7)
    model = create_model("unet", num_classes=9, in_chans=1, img_size=32, **get_entry("unet").tiny)
    def on_epoch_end(epoch):
        if epoch == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    train_model(model, ds, proto, seed=7, run_dir=run_dir, device=torch.device("cpu"), resume=resume,
                on_epoch_end=on_epoch_end)
    torch.save(model.state_dict(), os.path.join(run_dir, "weights.pt"))
    """
)


def _run_script(tmp_path, *args):
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script), *map(str, args)], env=env, capture_output=True, text=True,
                          encoding="utf-8")


def test_resume_after_sigkill_gives_same_weights(synapse_root, tmp_path):
    full = tmp_path / "full"
    killed = tmp_path / "killed"
    assert _run_script(tmp_path, synapse_root, full, -1, 0).returncode == 0
    proc = _run_script(tmp_path, synapse_root, killed, 0, 0)
    assert proc.returncode == -signal.SIGKILL
    assert (killed / "checkpoints" / "last.pt").is_file()
    assert not (killed / "weights.pt").exists()
    proc = _run_script(tmp_path, synapse_root, killed, -1, 1)
    assert proc.returncode == 0, proc.stderr
    a = torch.load(full / "weights.pt", weights_only=True)
    b = torch.load(killed / "weights.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_resume_continues_the_step_count_and_poly_lr_of_an_uninterrupted_run(synapse_root, tmp_path, monkeypatch):
    """A step counter restored off by one shifts every later poly lr and the record's iteration count: killed
    after epoch 0's checkpoint and resumed, the run steps 3 epochs × 6 batches = 18 times, each at the lr
    an uninterrupted run used (spec/baselines.md §4.6; the last at 0.01·(1 − 16/18)^0.9), to the same weights."""
    ds = open_dataset("synapse", synapse_root)
    proto = _proto(max_iterations=0, epochs=3, batch_size=16, optimizer="sgd", lr=0.01, momentum=0.9,
                   weight_decay=1e-4, scheduler="poly")
    used = _sgd_lrs(monkeypatch)
    full = _tiny_unet(ds)
    assert train_model(full, ds, proto, seed=0, run_dir=tmp_path / "full", device=torch.device("cpu")).iterations == 18
    full_lrs = used[:]
    used.clear()

    def stop(epoch):
        raise KeyboardInterrupt  # killed after epoch 0's checkpoint

    with pytest.raises(KeyboardInterrupt):
        train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path / "cut", device=torch.device("cpu"),
                    on_epoch_end=stop)
    resumed = _tiny_unet(ds)
    res = train_model(resumed, ds, proto, seed=0, run_dir=tmp_path / "cut", device=torch.device("cpu"), resume=True)
    assert (res.iterations, res.resumed_from) == (18, 0)
    assert used == full_lrs and len(used) == 18
    assert used[:2] == [0.01, 0.01] and used[-1] == pytest.approx(0.01 * (2 / 18) ** 0.9, rel=1e-12)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


class _Dropped(torch.nn.Module):
    """The tiny UNet with dropout on its logits: training draws from torch's global RNG."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return F.dropout(self.inner(x), 0.3, self.training)


def test_loader_workers_are_capped_by_the_cores_this_process_may_use(synapse_root, tmp_path, monkeypatch):
    """A Slurm job given 1 of a node's cores (--cpus-per-task, its affinity) started one loader worker
    per core of the node: they took turns on the one core."""
    import os

    from bench import env

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert env.usable_cores() == 1
    ds = open_dataset("synapse", synapse_root)
    proto = _proto(max_iterations=1, epochs=1, batch_size=16)
    assert train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"),
                       workers=2).loader_workers == 1


def test_dropout_sees_one_stream_whatever_the_workers_and_across_a_resume(synapse_root, tmp_path):
    """DataLoader iterators draw their workers' base seed: from torch's global RNG, a resumed run
    (its persistent workers started again) and a run with another worker count drew differently,
    so their dropout masks and weights differed."""
    ds = open_dataset("synapse", synapse_root)
    weights = {}
    for workers in (0, 1):
        proto = _proto(max_iterations=0, epochs=3, batch_size=16, num_workers=workers)
        full = _Dropped(_tiny_unet(ds))
        train_model(full, ds, proto, seed=0, run_dir=tmp_path / f"full{workers}", device=torch.device("cpu"))
        weights[f"full{workers}"] = full.state_dict()

        def stop(epoch):
            raise KeyboardInterrupt  # killed after epoch 0's checkpoint

        run_dir = tmp_path / f"resumed{workers}"
        with pytest.raises(KeyboardInterrupt):
            train_model(_Dropped(_tiny_unet(ds)), ds, proto, seed=0, run_dir=run_dir, device=torch.device("cpu"),
                        on_epoch_end=stop)
        resumed = _Dropped(_tiny_unet(ds))
        assert train_model(resumed, ds, proto, seed=0, run_dir=run_dir, device=torch.device("cpu"),
                           resume=True).resumed_from == 0
        weights[f"resumed{workers}"] = resumed.state_dict()
    # bench run --workers: a killed run of the protocol's 0 workers resumed with 1 (no part of its identity)
    proto = _proto(max_iterations=0, epochs=3, batch_size=16, num_workers=0)
    with pytest.raises(KeyboardInterrupt):
        train_model(_Dropped(_tiny_unet(ds)), ds, proto, seed=0, run_dir=tmp_path / "given", device=torch.device("cpu"),
                    on_epoch_end=stop)
    given = _Dropped(_tiny_unet(ds))
    assert train_model(given, ds, proto, seed=0, run_dir=tmp_path / "given", device=torch.device("cpu"), resume=True,
                       workers=1).loader_workers == 1
    weights["given"] = given.state_dict()
    for name, state in weights.items():
        assert all(torch.equal(state[k], weights["full0"][k]) for k in state), name

def test_training_time_adds_up_across_a_resume(synapse_root, tmp_path):
    ds = open_dataset("synapse", synapse_root)
    proto = _proto(max_iterations=0, epochs=2, batch_size=16)

    def stop(epoch):
        raise KeyboardInterrupt  # killed after epoch 0's checkpoint

    with pytest.raises(KeyboardInterrupt):
        train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"), on_epoch_end=stop)
    last = tmp_path / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=False)
    assert 0 < state["time_s"] < 600
    state["time_s"] = 1000.0  # as if the killed process had trained for 1000 s
    torch.save(state, last)
    res = train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"), resume=True)
    assert res.resumed_from == 0 and 1000.0 < res.time_s < 1600.0



def test_resume_refuses_a_checkpoint_of_other_data_or_another_model(synapse_root, tmp_path):
    """A run killed, its data edited (here: a shorter training list), then resumed would mix two
    trainings into one record; a model whose weights changed layout would fail deep in torch."""
    import shutil

    root = Path(shutil.copytree(synapse_root, tmp_path / "data"))
    proto = _proto(max_iterations=0, epochs=2, batch_size=16)

    def stop(epoch):
        raise KeyboardInterrupt  # killed after epoch 0's checkpoint

    ds = open_dataset("synapse", root)
    with pytest.raises(KeyboardInterrupt):
        train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path / "run", device=torch.device("cpu"),
                    on_epoch_end=stop)
    listed = root / "lists" / "lists_Synapse" / "train.txt"
    ids = listed.read_text(encoding="utf-8").split()
    listed.write_text("\n".join(ids[: len(ids) // 2]) + "\n", encoding="utf-8")
    short = open_dataset("synapse", root)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    with pytest.raises(BenchError, match=rf"{last}: written for other training data \(items .*n_items {len(ids)} -> "
                                         rf"{len(ids) // 2}.*run it without --resume"):
        train_model(_tiny_unet(short), short, proto, seed=0, run_dir=tmp_path / "run", device=torch.device("cpu"),
                    resume=True)
    wider = create_model("unet", num_classes=ds.num_classes, in_chans=ds.in_chans, img_size=32,
                         widths=(16, 32, 64, 128))
    with pytest.raises(BenchError, match=rf"{last}: its weights do not fit this model \(.*size mismatch"):
        train_model(wider, ds, proto, seed=0, run_dir=tmp_path / "run", device=torch.device("cpu"), resume=True)
    assert train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path / "run", device=torch.device("cpu"),
                       resume=True).resumed_from == 0  # the same data and model resume

def test_a_resume_under_other_code_is_said_and_recorded(synapse_root, tmp_path, monkeypatch):
    """An upgrade between a kill and its resume trained the rest under other code, unsaid; the
    record's git commit named only the last."""
    from bench import env

    ds = open_dataset("synapse", synapse_root)
    proto = _proto(max_iterations=0, epochs=2, batch_size=16)

    def stop(epoch):
        raise KeyboardInterrupt  # killed after epoch 0's checkpoint

    def attempt(commit, run, sources="0123456789abcdef", **kw):
        monkeypatch.setattr(env, "git_commit", lambda: commit)
        monkeypatch.setattr(env, "source_digest", lambda: sources)
        return train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path / run, device=torch.device("cpu"), **kw)

    s0, s1 = "0123456789abcdef", "fedcba9876543210"  # two versions of the sources

    def killed_then_resumed(run, before, after, **said):
        """``before``/``after``: (git commit, source digest) of the killed and the resuming process."""
        with pytest.raises(KeyboardInterrupt):
            attempt(*before[:1], run, sources=before[1], on_epoch_end=stop)
        return resumed(run, after, **said)

    def resumed(run, after, match=None):
        with (pytest.warns(UserWarning, match=match) if match else warnings.catch_warnings()):
            if not match:
                warnings.simplefilter("error")
            return attempt(after[0], run, sources=after[1], resume=True).commits

    a, b, c = "a" * 40, "b" * 40, "c" * 40
    # an upgrade: other commit, other sources
    assert killed_then_resumed("upgrade", (a, s0), (b, s1), match=r"last\.pt: written by commit aaaaaaaaaaaa, resumed "
                               r"at commit bbbbbbbbbbbb: the rest of the training runs other code") == [a, b]
    # the same code: one version, nothing to say; a commit that changed no source (the README) is the same code
    assert killed_then_resumed("same", (a, s0), (a, s0)) == [a]
    assert killed_then_resumed("docs", (a, s0), (c, s0)) == [a]
    assert killed_then_resumed("readme", (c, s0), (c + "-dirty", s0)) == [c]  # an edit outside the code
    # an edited tree: its sources name it (its first 12 digits alone read as the same commit)
    assert killed_then_resumed("dirty", (c, s0), (c + "-dirty", s1), match=r"written by commit cccccccccccc, resumed at "
                               r"commit cccccccccccc-dirty \(sources fedcba9876543210\)") == [c, f"{c}-dirty sources {s1}"]
    assert killed_then_resumed("edited", (c + "-dirty", s0), (c + "-dirty", s1),
                               match=r"resumed at commit cccccccccccc-dirty \(sources fedcba9876543210\)") == [
        f"{c}-dirty sources {s0}", f"{c}-dirty sources {s1}"]
    # one clean commit, other sources (a module git does not track): the digests tell them apart
    assert killed_then_resumed("untracked", (c, s0), (c, s1), match=r"written by commit cccccccccccc \(sources "
                               r"0123456789abcdef\), resumed at commit cccccccccccc \(sources fedcba9876543210\)") == [
        f"{c} sources {s0}", f"{c} sources {s1}"]
    # outside a git checkout (an installed wheel) the sources name the code
    assert killed_then_resumed("outside", (None, s0), (a, s1), match=r"written by sources 0123456789abcdef \(outside a "
                               r"git checkout\), resumed at commit aaaaaaaaaaaa") == [f"sources {s0}", a]

    def older(run, before, **kept):
        """A checkpoint as a version of bench before source digests wrote it."""
        with pytest.raises(KeyboardInterrupt):
            attempt(*before[:1], run, sources=before[1], on_epoch_end=stop)
        last = tmp_path / run / "checkpoints" / "last.pt"
        state = {k: v for k, v in torch.load(last, weights_only=False).items() if k not in ("code_digest", "commits")}
        torch.save({**state, **kept}, last)

    older("old", (a, s0))  # before commits were kept too: an older version's code
    assert resumed("old", (a, s0), match=r"written by an older version of bench, resumed at commit aaaaaaaaaaaa") == [
        "unknown (a checkpoint written before commits were kept)", a]
    older("old-same", (a, s0), commits=[a])  # its commit names its code
    assert resumed("old-same", (a, s0)) == [a]
    older("old-outside", (None, s0), commits=[])  # outside git it kept none: unknown code
    assert resumed("old-outside", (None, s0), match=r"written by code outside a git checkout, resumed at sources "
                   r"0123456789abcdef") == ["unknown (outside a git checkout)", f"sources {s0}"]


def test_a_resume_with_no_checkpoint_says_it_starts_over(synapse_root, tmp_path, capsys):
    """Ctrl-C before a run's first checkpoint (epoch 40 of a protocol writing one every 50) left
    none: --resume trained from scratch as if resuming."""
    ds = open_dataset("synapse", synapse_root)

    def stop(epoch):
        raise KeyboardInterrupt

    proto = _proto(max_iterations=0, epochs=3, batch_size=16, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):  # after epoch 1 of 3: no checkpoint yet
        train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path / "run", device=torch.device("cpu"),
                    on_epoch_end=stop)
    capsys.readouterr()
    train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path / "run", device=torch.device("cpu"), resume=True)
    assert ("run: no checkpoint to resume from (its protocol writes last.pt every 2 epochs); training from the "
            "start\n") in capsys.readouterr().err
    # the same model and seed under an edited protocol file (another hash: another run id) left checkpoints:
    # a resume of the edited recipe says where they are (it read as if nothing had run)
    runs = tmp_path / "runs"
    (runs / "synapse-mine-unet-s0-aaaa1111" / "checkpoints").mkdir(parents=True)
    (runs / "synapse-mine-unet-s0-aaaa1111" / "checkpoints" / "last.pt").write_bytes(b"x")
    (runs / "synapse-mine-unet-s1-cccc3333" / "checkpoints").mkdir(parents=True)  # another seed: not named
    (runs / "synapse-mine-unet-s1-cccc3333" / "checkpoints" / "last.pt").write_bytes(b"x")
    # folders whose names are no run id of this model and seed (read by records' one parser): not named
    for name in ("synapse-mine-unet-s0-backup", "synapse-mine-unet-s0-f1-eeee5555"):
        (runs / name / "checkpoints").mkdir(parents=True)
        (runs / name / "checkpoints" / "last.pt").write_bytes(b"x")
    train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=runs / "synapse-mine-unet-s0-bbbb2222",
                device=torch.device("cpu"), resume=True)
    assert ("training from the start; synapse-mine-unet-s0-aaaa1111 holds checkpoints of this model and seed under "
            "other settings (another version of the protocol file, overrides, policy, --set or data): that run "
            "resumes only with those\n") in capsys.readouterr().err
    # a finished run (its record written: every run keeps last.pt) is no leftover
    (tmp_path / "records").mkdir()
    for finished in ("aaaa1111", "bbbb2222"):  # bbbb2222 trained to its end above
        (tmp_path / "records" / f"synapse-mine-unet-s0-{finished}.json").write_text("{}", encoding="utf-8")
    train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=runs / "synapse-mine-unet-s0-dddd4444",
                device=torch.device("cpu"), resume=True)
    assert "training from the start\n" in capsys.readouterr().err


def test_nan_loss_stops_with_clear_error(synapse_root, tmp_path):
    ds = open_dataset("synapse", synapse_root)
    model = _tiny_unet(ds)
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    with pytest.raises(BenchError, match=r"non-finite loss .*check the data \(no checkpoint written yet\)"):
        train_model(model, ds, _proto(), seed=0, run_dir=tmp_path, device=torch.device("cpu"))


def test_a_resume_on_other_threads_is_said_and_recorded(synapse_root, tmp_path):
    """A run killed under 1 thread and resumed under 2 trains the rest otherwise (not bit-identical);
    the record named only the last process's device."""
    ds = open_dataset("synapse", synapse_root)
    proto = _proto(max_iterations=0, epochs=2, batch_size=16)

    def stop(epoch):
        raise KeyboardInterrupt  # killed after epoch 0's checkpoint

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with pytest.raises(KeyboardInterrupt):
            train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"),
                        on_epoch_end=stop)
        torch.set_num_threads(2)
        with pytest.warns(UserWarning, match=r"last\.pt: written on .* x1 threads .*, resumed on .* x2 threads .*not "
                                             r"bit-identical"):
            res = train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"),
                              resume=True)
    finally:
        torch.set_num_threads(threads)
    assert res.resumed_from == 0 and [d.split(" x")[1][:9] for d in res.devices] == ["1 threads", "2 threads"]
    assert res.to_record()["devices"] == res.devices
    # a checkpoint from before devices were kept: its part is "unknown", not claimed for this machine
    with pytest.raises(KeyboardInterrupt):
        train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path / "old", device=torch.device("cpu"),
                    on_epoch_end=stop)
    last = tmp_path / "old" / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=False)
    del state["devices"]
    torch.save(state, last)
    res = train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path / "old", device=torch.device("cpu"),
                      resume=True)
    assert len(res.devices) == 2 and res.devices[0].startswith("unknown (a checkpoint written before")


def test_a_failed_checkpoint_write_is_one_error_and_leaves_nothing(synapse_root, tmp_path, monkeypatch):
    """A full disk while writing last.pt: a torch traceback, and the half-written temp file stayed.
    torch 2.13 says only "unexpected pos" then: the disk's free space tells the cause."""
    import collections
    import errno

    from bench import fileio

    ds = open_dataset("synapse", synapse_root)

    def full_disk(obj, fh, *a, **k):
        fh.write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 189184 vs 189080")

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda folder: usage(10 << 20, 10 << 20, 0))
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(BenchError, match=r"checkpoints/last\.pt: cannot write the checkpoint \(no space left on the "
                                         r"disk of .*checkpoints\); free space and run it again with --resume$"):
        train_model(_tiny_unet(ds), ds, _proto(), seed=0, run_dir=tmp_path, device=torch.device("cpu"))
    assert not [p.name for p in (tmp_path / "checkpoints").iterdir()]

    def enospc(obj, path, *a, **k):  # a Python write's own error, wherever in the chain
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError("write failed") from exc

    monkeypatch.setattr(torch, "save", enospc)
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda folder: usage(10 << 20, 0, 10 << 20))
    with pytest.raises(BenchError, match=r"last\.pt: cannot write the checkpoint \(No space left on device\); free"):
        train_model(_tiny_unet(ds), ds, _proto(), seed=0, run_dir=tmp_path / "c", device=torch.device("cpu"))

    def a_bug(obj, path, *a, **k):  # not a write failure: its own error, not "free space"
        raise RuntimeError("Can't pickle local object")

    monkeypatch.setattr(torch, "save", a_bug)
    with pytest.raises(RuntimeError, match="Can't pickle"):
        train_model(_tiny_unet(ds), ds, _proto(), seed=0, run_dir=tmp_path / "b", device=torch.device("cpu"))


def test_training_afresh_over_an_earlier_attempt_says_so(synapse_root, tmp_path):
    """A killed run started again without --resume threw its checkpoint away unsaid."""
    ds = open_dataset("synapse", synapse_root)
    proto = _proto(max_iterations=0, epochs=1, batch_size=16)
    train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"))
    with pytest.warns(UserWarning, match=r"checkpoints/last\.pt: an earlier attempt's checkpoint \(written "
                                         r"\d{4}-\d\d-\d\d \d\d:\d\d UTC\); training afresh replaces it and, at its first "
                                         r"checkpoint, deletes that attempt's per-epoch, best@ and lr_min "
                                         r"checkpoints and curves \(--resume continues it\)"):
        train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"))


def test_training_afresh_clears_the_earlier_attempts_curves_and_epoch_checkpoints(synapse_root, tmp_path):
    """Its tb/ event files and epoch_*.pt stayed beside the new attempt's, read as this run's."""
    ds = open_dataset("synapse", synapse_root)
    proto = _proto(max_iterations=0, epochs=1, batch_size=16)
    train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"))
    old = [tmp_path / "checkpoints" / "epoch_0007.pt", tmp_path / "checkpoints" / "best@0003.pt",
           tmp_path / "tb" / "events.out.tfevents.1.node7.1.0"]

    def earlier_attempt():
        old[-1].parent.mkdir(exist_ok=True)
        for path in old:
            path.write_bytes(b"an earlier attempt's")

    earlier_attempt()
    train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"), resume=True)
    assert all(p.is_file() for p in old)  # resumed: the same training's, kept

    def stop(*_):
        raise KeyboardInterrupt

    with pytest.warns(UserWarning, match="training afresh replaces it"), pytest.raises(KeyboardInterrupt):
        train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"), progress=stop)
    # stopped before its first checkpoint: the earlier attempt, resumable, keeps what its last.pt names
    assert all(p.is_file() for p in old) and (tmp_path / "checkpoints" / "last.pt").is_file()
    with pytest.warns(UserWarning, match="training afresh replaces it"):
        train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"))
    assert not any(p.exists() for p in old)
    assert (tmp_path / "checkpoints" / "final.pt").is_file()  # this attempt's own
    earlier_attempt()
    (tmp_path / "checkpoints" / "last.pt").unlink()  # killed before its first checkpoint: --resume starts afresh
    train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"), resume=True)
    assert not any(p.exists() for p in old)


def test_the_selective_scan_kernel_is_built_before_the_train_time_starts(synapse_root, tmp_path, monkeypatch):
    """The first SSM run on a machine built the kernel (15-50 s) at its first forward, inside its
    train time: the board's column was unfair to it."""
    import time

    from ssm_models import scan

    ds = open_dataset("synapse", synapse_root)
    built = []

    def slow_build():
        time.sleep(1.0)
        built.append("kernel")
        return None  # unavailable: the torch backend

    monkeypatch.delenv(scan.ENV_VAR, raising=False)
    monkeypatch.setattr(scan, "_load_extension", slow_build)
    model = _tiny_unet(ds)
    model.uses_selective_scan = True  # as an SSM model's class says (the build is what is measured)
    result = train_model(model, ds, _proto(max_iterations=1, epochs=1), seed=0, run_dir=tmp_path,
                         device=torch.device("cpu"))
    assert built and result.time_s < 1.0


def test_a_resume_from_the_last_epoch_rewrites_final(synapse_root, tmp_path):
    """Killed after last.pt's final epoch, a final.pt of an earlier attempt stayed beside it, and
    rescore and predict read it: other weights than the record was scored with."""
    ds = open_dataset("synapse", synapse_root)
    proto = _proto(max_iterations=0, epochs=1, batch_size=16)
    model = _tiny_unet(ds)
    train_model(model, ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"))
    final = tmp_path / "checkpoints" / "final.pt"
    stale = {k: v + 1 for k, v in torch.load(final, weights_only=True)["model"].items()}
    torch.save({"model": stale, "epoch": 0}, final)  # an earlier attempt's
    again = _tiny_unet(ds)
    assert train_model(again, ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"), resume=True).resumed_from == 0
    kept = torch.load(final, weights_only=True)["model"]
    assert all(torch.equal(kept[k], v) for k, v in model.state_dict().items())


def test_best_train_loss_selection(synapse_root, tmp_path):
    ds = open_dataset("synapse", synapse_root)
    proto = _proto(select="best_train_loss", max_iterations=0, epochs=2, batch_size=32)
    res = train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"))
    best_epoch = min(range(len(res.epoch_losses)), key=res.epoch_losses.__getitem__)
    assert res.selected == f"best_train_loss@{best_epoch}"
    # a killed process may write best.pt after its last last.pt; a resume that never beats the best it
    # restored must not evaluate that other epoch's weights under the best epoch's name: the
    # checkpoint's own copy of the best (best@<epoch>.pt) is put back
    ckpt = tmp_path / "checkpoints"
    selected = {k: v.clone() for k, v in torch.load(ckpt / "best.pt", weights_only=True)["model"].items()}
    assert sorted(p.name for p in ckpt.glob("best@*.pt")) == [f"best@{best_epoch:04d}.pt"]
    # each file says which it is, for Methods to word weights given from it (the run's selected ones, not
    # "not its final ones"): the select rule it keeps, or final, last, per-epoch
    said = {p.name: torch.load(p, weights_only=True)["trained_by"]["checkpoint"] for p in ckpt.glob("*.pt")}
    assert said == {"best.pt": "best_train_loss", f"best@{best_epoch:04d}.pt": "best_train_loss", "final.pt": "final",
                    "last.pt": "last", "epoch_0000.pt": "epoch"}
    torch.save({"model": {k: v + 1 for k, v in selected.items()}, "epoch": best_epoch + 7}, ckpt / "best.pt")
    model = _tiny_unet(ds)
    again = train_model(model, ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"), resume=True)
    assert again.selected == f"best_train_loss@{best_epoch}"
    for k, v in model.state_dict().items():
        assert torch.equal(v, selected[k]), k
    # a checkpoint written before it kept that copy: refused by name rather than evaluated
    torch.save({"model": selected, "epoch": best_epoch + 7}, ckpt / "best.pt")
    (ckpt / f"best@{best_epoch:04d}.pt").unlink()
    with pytest.raises(BenchError, match=rf"best\.pt: holds epoch {best_epoch + 7}'s weights, not those of the "
                                         rf"best epoch {best_epoch}"):
        train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"), resume=True)


def test_epoch_loss_is_the_plain_mean_of_its_steps(synapse_root, tmp_path):
    """VM-UNet's engine averages the per-step losses (np.mean(loss_list)): a short last batch
    counts as much as a full one in best_train_loss's choice."""
    ds = open_dataset("synapse", synapse_root)
    n_train = len(ds.train_ids())
    proto = _proto(max_iterations=0, epochs=2, batch_size=n_train - 1)  # two steps: n-1 items, then 1
    losses = []
    res = train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"),
                      progress=lambda step, total, loss: losses.append(loss))
    assert len(losses) == 4
    assert res.epoch_losses == pytest.approx([(losses[0] + losses[1]) / 2, (losses[2] + losses[3]) / 2], rel=1e-12)


def test_lr_min_epoch_is_the_end_of_the_last_cosine_descent():
    from bench.train import lr_min_epoch

    isic = load_protocol("isic17")  # cosine T_max 50 over 300 epochs: lr peaks again at the end
    assert lr_at(isic, 0, 299, 1) > 0.99 * isic.train.lr
    assert lr_min_epoch(isic, 300, 47, 300 * 47) == 250
    assert lr_at(isic, 0, 250, 1) == pytest.approx(isic.train.cosine_eta_min)
    assert lr_min_epoch(isic, 3, 47, 3 * 47) == 2  # a shortened run is still descending: its last epoch
    synapse = load_protocol("synapse")  # poly decays to the end
    assert lr_min_epoch(synapse, 150, 93, 150 * 93) == 149


def test_lr_min_selection_keeps_that_epochs_weights(synapse_root, tmp_path):
    ds = open_dataset("synapse", synapse_root)
    cosine = dict(scheduler="cosine", cosine_t_max=2, cosine_eta_min=1e-5, max_iterations=0, batch_size=16)
    model = _tiny_unet(ds)  # lr over 5 epochs: max, mid, min, mid, max -> epoch 2
    res = train_model(model, ds, _proto(select="lr_min", epochs=5, **cosine), seed=0, run_dir=tmp_path / "a",
                      device=torch.device("cpu"))
    assert res.selected == "lr_min@2" and len(res.epoch_losses) == 5
    three = _tiny_unet(ds)  # the same schedule stopped after epoch 2
    train_model(three, ds, _proto(epochs=3, **cosine), seed=0, run_dir=tmp_path / "b", device=torch.device("cpu"))
    for k, v in _state(three).items():
        assert torch.equal(model.state_dict()[k], v), k
    assert torch.load(tmp_path / "a" / "checkpoints" / "lr_min.pt", weights_only=True)["trained_by"]["checkpoint"] \
        == "lr_min"


def test_an_interrupted_fresh_attempt_leaves_the_earlier_attempts_lr_min_weights(synapse_root, tmp_path):
    """A fresh attempt wrote lr_min.pt at its lowest-lr epoch, before its first checkpoint replaced the
    earlier attempt's last.pt: interrupted in between, a --resume of that attempt evaluated the aborted
    one's weights."""
    ds = open_dataset("synapse", synapse_root)
    # lr over 5 epochs: max, mid, min, mid, max -> epoch 2; the first checkpoint after epoch 3
    proto = _proto(select="lr_min", epochs=5, scheduler="cosine", cosine_t_max=2, cosine_eta_min=1e-5,
                   max_iterations=0, batch_size=16, checkpoint_every=4)
    kept = tmp_path / "checkpoints" / "lr_min.pt"
    model = _tiny_unet(ds)
    assert train_model(model, ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu")).selected == "lr_min@2"
    first = _state(model)

    def stop_in_epoch_3(step, total, loss):  # after lr_min's epoch, before the first checkpoint
        if step == 3 * total // 5 + 1:
            raise KeyboardInterrupt

    with pytest.warns(UserWarning, match="training afresh"), pytest.raises(KeyboardInterrupt):
        train_model(_tiny_unet(ds, seed=1), ds, proto, seed=1, run_dir=tmp_path, device=torch.device("cpu"),
                    progress=stop_in_epoch_3)
    resumed = _tiny_unet(ds, seed=1)
    res = train_model(resumed, ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"), resume=True)
    assert res.resumed_from == 4 and res.selected == "lr_min@2"
    assert all(torch.equal(v, first[k]) for k, v in _state(resumed).items())  # the earlier attempt's own
    other = _tiny_unet(ds, seed=1)
    with pytest.warns(UserWarning, match="training afresh"):  # its own, written at its first checkpoint
        train_model(other, ds, proto, seed=1, run_dir=tmp_path, device=torch.device("cpu"))
    on_disk = torch.load(kept, weights_only=True)
    assert on_disk["epoch"] == 2 and all(torch.equal(v, on_disk["model"][k]) for k, v in _state(other).items())
    assert not all(torch.equal(v, first[k]) for k, v in _state(other).items())


def test_a_run_resumed_twice_keeps_both_resumes(synapse_root, tmp_path):
    """Records kept the last resume only: a run killed twice read as killed once."""
    ds = open_dataset("synapse", synapse_root)
    proto = _proto(max_iterations=0, epochs=3, batch_size=16)

    def stop_after(epoch_to_stop):
        def stop(epoch):
            if epoch == epoch_to_stop:
                raise KeyboardInterrupt
        return stop

    for resume, stop_at in ((False, 0), (True, 1)):
        with pytest.raises(KeyboardInterrupt):
            train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"),
                        resume=resume, on_epoch_end=stop_after(stop_at))
    res = train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path, device=torch.device("cpu"), resume=True)
    assert (res.resumes, res.resumed_from) == ([0, 1], 1)
    assert res.to_record()["resumes"] == [0, 1]
    fresh = train_model(_tiny_unet(ds), ds, proto, seed=0, run_dir=tmp_path / "b", device=torch.device("cpu"))
    assert (fresh.resumes, fresh.resumed_from) == ([], None)


def test_weights_given_to_another_split_say_where_they_came_from(synapse_root, tmp_path):
    """--weights of a run's checkpoint trained on other items: its record could not say the weights might
    have trained on the test cases they were scored on."""
    from bench.run import _given_weights

    ds = open_dataset("synapse", synapse_root)
    train_model(_tiny_unet(ds), ds, _proto(), seed=0, run_dir=tmp_path / "r0", device=torch.device("cpu"),
                data_id="files:aaaa")
    final = tmp_path / "r0" / "checkpoints" / "final.pt"
    _, same = _given_weights(_tiny_unet(ds), str(final), tmp_path / "same", True, ds.train_ids(), "files:aaaa")
    assert same["run_id"] == "r0" and same["same_items"] is True and same["protocol"] == "smoke"
    with pytest.warns(UserWarning, match=r"final\.pt: weights of run r0 \(protocol smoke\), trained on other items "
                                         r"than this split's training set \(\d+ items, not these 3\)"):
        _, other = _given_weights(_tiny_unet(ds), str(final), tmp_path / "other", True, ds.train_ids()[:3],
                                  "files:aaaa")
    assert other["same_items"] is False
    # other data whose items are named alike (synthetic sets, case_000-style ids): not "this split's items", nor
    # a leak of its test cases (they are no training item's names)
    with pytest.warns(UserWarning, match=r"trained on items named as this split's training items, in other data "
                                         r"\(data id files:aaaa, not this run's files:bbbb; which files differ, "
                                         r"training or test, is unknown\)$"):
        _, elsewhere = _given_weights(_tiny_unet(ds), str(final), tmp_path / "b", True, ds.train_ids(), "files:bbbb")
    assert (elsewhere["same_data"], elsewhere["same_items"], elsewhere["same_but_labels"]) == (False, False, None)
    with pytest.warns(UserWarning, match=r"in other data \(data id files:aaaa, not this run's files:bbbb; which files"):
        _, elsewhere = _given_weights(_tiny_unet(ds), str(final), tmp_path / "c", True, ds.train_ids(), "files:bbbb",
                                      "files:cccc")  # the rest differs too
    assert (elsewhere["same_item_names"], elsewhere["same_but_labels"]) == (True, False)
    # the same data but for the files its test labels are read from (labels edited by hand): said so
    with pytest.warns(UserWarning, match=r"trained on this split's training items, in data that differs from this "
                                         r"run's only in its label files \(Synapse: its test volumes\) \(data id "
                                         r"files:aaaa, not this run's files:bbbb\): labels edited since, training or "
                                         r"test ones, so its scores need not match the weights' run's$"):
        _, relabelled = _given_weights(_tiny_unet(ds), str(final), tmp_path / "d", True, ds.train_ids(), "files:bbbb",
                                       ds.content_id(labels=False))
    assert (relabelled["same_data"], relabelled["same_but_labels"]) == (False, True)
    with pytest.warns(UserWarning, match=r"trained on other data \(data id files:aaaa, not this run's files:bbbb\): "
                                         r"where this data's test cases were among its"):
        _given_weights(_tiny_unet(ds), str(final), tmp_path / "e", True, ds.train_ids()[:3], "files:bbbb")
    # the given-weights run's own final.pt keeps naming the run that trained them
    kept = torch.load(tmp_path / "other" / "checkpoints" / "final.pt", weights_only=True)
    assert kept["trained_by"]["run_id"] == "r0"
    # a checkpoint from before data ids were kept: its data is not known to differ, so nothing is warned
    older = torch.load(final, weights_only=True)
    del older["trained_by"]["data_id"]
    torch.save(older, tmp_path / "older.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, before = _given_weights(_tiny_unet(ds), str(tmp_path / "older.pt"), tmp_path / "f", True, ds.train_ids(),
                                   "files:bbbb")
    assert (before["same_data"], before["same_items"]) == (True, True)


def test_an_interrupted_runs_last_checkpoint_given_as_weights_names_its_run_and_epoch(synapse_root, tmp_path):
    """last.pt carried no trained_by: --weights runs/<id>/checkpoints/last.pt of a killed run was recorded as
    weights of unknown origin, and nothing said they were an unfinished training's. Every weights file of
    a run now names the run and the epoch they are from."""
    from bench.run import _given_weights

    class Killed(Exception):
        pass

    def kill(epoch):
        raise Killed

    ds = open_dataset("synapse", synapse_root)
    with pytest.raises(Killed):  # 2 steps an epoch, 2 epochs: killed after the first
        train_model(_tiny_unet(ds), ds, _proto(batch_size=48, max_iterations=4), seed=0, run_dir=tmp_path / "r0",
                    device=torch.device("cpu"), data_id="files:aaaa", on_epoch_end=kill)
    last = tmp_path / "r0" / "checkpoints" / "last.pt"
    _, by = _given_weights(_tiny_unet(ds), str(last), tmp_path / "given", True, ds.train_ids(), "files:aaaa")
    assert (by["run_id"], by["epoch"], by["epochs"], by["same_items"]) == ("r0", 0, 2, True)
    train_model(_tiny_unet(ds), ds, _proto(batch_size=48, max_iterations=4), seed=0, run_dir=tmp_path / "r0",
                device=torch.device("cpu"), data_id="files:aaaa", resume=True)
    for name in ("last.pt", "final.pt"):  # finished: its last epoch's
        assert torch.load(tmp_path / "r0" / "checkpoints" / name, weights_only=True)["trained_by"]["epoch"] == 1


def test_float64_protocol_trains_and_evaluates_in_float64(synapse_root, tmp_path):
    from bench.evaluate import evaluate

    ds = open_dataset("synapse", synapse_root)
    proto = _proto(dtype="float64", max_iterations=3)
    model = _tiny_unet(ds)
    res = train_model(model, ds, proto, seed=0, run_dir=tmp_path / "r", device=torch.device("cpu"))
    assert math.isfinite(res.final_loss)
    floats = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float64 for t in floats)
    scores = evaluate(model, ds, proto.with_overrides(max_cases=1), "legacy-synapse", device=torch.device("cpu"))
    assert 0.0 <= scores.metrics["dice"] <= 1.0


def test_shards_are_disjoint_cover_the_grid_and_balance(synapse_root, tmp_path):
    from bench.run import parse_shard, plan_grid, select_shard

    specs = plan_grid(models=["unet", "vmunet", "transunet"], dataset="synapse", protocol=load_protocol("smoke"),
                      seeds=[0, 1, 2, 3], data_root=synapse_root, synthetic=False, results_dir=tmp_path)
    for n in (1, 3, 5, 12, 13):
        shards = [select_shard(specs, f"{k}/{n}") for k in range(1, n + 1)]
        keys = [s.key for shard in shards for s in shard]
        assert sorted(keys) == sorted(s.key for s in specs) and len(set(keys)) == len(keys)  # a partition
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    # the same arguments give the same shard whatever the order they were planned in
    assert [s.key for s in select_shard(specs[::-1], "2/3")] == [s.key for s in select_shard(specs, "2/3")]
    assert select_shard(specs, None) == specs
    for bad in ("0/3", "4/3", "3", "a/b", "1/0", "-1/2"):
        with pytest.raises(BenchError, match="--shard must be K/N"):
            parse_shard(bad)
    # a 0-based Slurm array (--array=0-3) is told how to count from 1
    with pytest.raises(BenchError, match=r"a 0-based array: --shard \$\(\(SLURM_ARRAY_TASK_ID\+1\)\)/N"):
        parse_shard("0/4")


def test_model_overrides_are_part_of_the_run_id(synapse_root, tmp_path):
    """Guards against one run id for two model configurations (the second run skipped as finished)."""
    from bench.records import load
    from bench.run import plan_grid, run_one

    grid = dict(models=["unet"], dataset="synapse", protocol=_proto(max_iterations=1, max_cases=1), seeds=[0],
                data_root=synapse_root, synthetic=False, results_dir=tmp_path)
    (tiny,) = plan_grid(**grid, tiny=True)
    (wider,) = plan_grid(**grid, tiny=True, model_overrides={"widths": (8, 16, 32, 128)})  # one --set value
    (full,) = plan_grid(**grid)
    assert len({tiny.key, wider.key, full.key}) == 3
    for spec in (tiny, wider):  # two configurations into one results folder: two records
        run_one(spec, results_dir=tmp_path, device=torch.device("cpu"))
    assert sorted(load(tmp_path)["run_id"]) == sorted([tiny.key, wider.key])


def test_hd95_unit_follows_policy_and_spacing():
    from bench.evaluate import hd95_unit

    mm = (2.5, 0.7, 0.7)
    assert hd95_unit("strict", [mm, mm], volumes=True) == "mm"
    assert hd95_unit("strict", [None, None], volumes=True) == "voxels"  # real Synapse h5: no spacing
    assert hd95_unit("strict", [None], volumes=False) == "pixels"
    assert hd95_unit("strict", [mm, None], volumes=True) == "mixed"
    assert hd95_unit("legacy-synapse", [mm], volumes=True) == "voxels"  # the papers' rule ignores spacing
    assert hd95_unit("legacy-isic", [None], volumes=False) is None  # no HD95 at all


def test_run_record_carries_policy_conventions_and_hd95_unit(synapse_root, tmp_path):
    from bench.metrics import policy_fields
    from bench.records import load
    from bench.run import plan_grid, run_one

    proto = _proto(max_iterations=2, max_cases=1)
    (spec,) = plan_grid(models=["unet"], dataset="synapse", protocol=proto, seeds=[0], data_root=synapse_root,
                        synthetic=False, results_dir=tmp_path, policy="strict",
                        model_overrides=dict(get_entry("unet").tiny))
    rec = run_one(spec, results_dir=tmp_path, device=torch.device("cpu"))
    # the synthesizer writes a spacing attribute, so strict HD95 is in mm
    assert rec["hd95_unit"] == "mm" and load(tmp_path)["hd95_unit"].tolist() == ["mm"]
    assert rec["policy_conventions"] == policy_fields("strict")
    assert rec["policy_conventions"]["use_spacing"] is True and "table" not in rec["policy_conventions"]


def test_without_a_live_bar_a_run_says_how_far_it_is_now_and_then(synapse_root, tmp_path, monkeypatch, capsys):
    # with --no-progress or output to a log file, a run of hours printed nothing until it finished
    from bench import run
    from bench.run import plan_grid, run_one

    proto = _proto(max_iterations=3, max_cases=1)
    (spec,) = plan_grid(models=["unet"], dataset="synapse", protocol=proto, seeds=[0], data_root=synapse_root,
                        synthetic=False, results_dir=tmp_path, model_overrides=dict(get_entry("unet").tiny))
    monkeypatch.setattr(run, "HEARTBEAT_S", 0.0)  # every step and case, instead of every 5 minutes
    rec = run_one(spec, results_dir=tmp_path, device=torch.device("cpu"), show_progress=False)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" · ")[0] for line in lines] == [
        f"  {rec['run_id']}: training, step {i} of 3" for i in (1, 2, 3)] + [
        f"  {rec['run_id']}: evaluating, 1 of 1 test cases scored"], lines
    # the time left, from the pace of the steps since the first: none to tell at the first, none left at the last
    assert [bool(re.search(r" · about \d+ min left$", line)) for line in lines] == [False, True, False, False], lines
    monkeypatch.setattr(run, "HEARTBEAT_S", 300.0)
    run_one(spec, results_dir=tmp_path / "again", device=torch.device("cpu"), show_progress=False)
    assert capsys.readouterr().err == ""  # a short run prints none


def test_a_long_test_case_still_beats_while_it_is_scored(synapse_root, tmp_path, monkeypatch, capsys):
    # beats came per test case only: a 3-D volume predicted for ten minutes printed nothing all that time
    import time

    from bench import run
    from bench.run import plan_grid, run_one

    proto = _proto(max_iterations=1, max_cases=1)
    (spec,) = plan_grid(models=["unet"], dataset="synapse", protocol=proto, seeds=[0], data_root=synapse_root,
                        synthetic=False, results_dir=tmp_path, model_overrides=dict(get_entry("unet").tiny))
    scored = run.evaluate

    def slow(*args, **kwargs):  # one long case: no progress for a while
        time.sleep(0.5)
        return scored(*args, **kwargs)

    monkeypatch.setattr(run, "evaluate", slow)
    monkeypatch.setattr(run, "HEARTBEAT_S", 0.0)
    monkeypatch.setattr(run, "TICK_S", 0.05)  # no progress for 0.05 s: the last line again
    rec = run_one(spec, results_dir=tmp_path, device=torch.device("cpu"), show_progress=False)
    lines = capsys.readouterr().err.splitlines()
    waiting = [line for line in lines if line.startswith(f"  {rec['run_id']}: evaluating, no test case scored yet · ")]
    assert len(waiting) >= 2, lines
    assert any(line.startswith(f"  {rec['run_id']}: evaluating, 1 of 1 test cases scored") for line in lines), lines


def test_a_finished_run_is_not_trained_again_from_python(synapse_root, tmp_path):
    # bench run skips finished runs; run_one, called from a script, trained it again and replaced the
    # weights behind the record before failing on the record's name
    from bench.records import record_path
    from bench.run import plan_grid, run_one

    proto = _proto(max_iterations=2, max_cases=1)
    (spec,) = plan_grid(models=["unet"], dataset="synapse", protocol=proto, seeds=[0], data_root=synapse_root,
                        synthetic=False, results_dir=tmp_path, tiny=True)  # tiny: the tiny configuration
    assert dict(spec.model_overrides) == dict(get_entry("unet").tiny) and spec.tiny
    run_one(spec, results_dir=tmp_path, device=torch.device("cpu"))
    weights = tmp_path / "runs" / spec.key / "checkpoints" / "final.pt"
    before = weights.read_bytes()
    with pytest.raises(BenchError, match=rf"^{spec.key}: finished already \({re.escape(str(record_path(tmp_path, spec.key)))}\); "
                                         "training it again would replace the weights"):
        run_one(spec, results_dir=tmp_path, device=torch.device("cpu"))
    assert weights.read_bytes() == before
    # `mv X.json X-backup.json`: bench run refuses it before training (test_cli); run_one trained it again
    backup = record_path(tmp_path, spec.key).rename(record_path(tmp_path, spec.key + "-backup"))
    with pytest.raises(BenchError, match=rf"^{re.escape(str(backup))}: holds the record of run '{spec.key}'"):
        run_one(spec, results_dir=tmp_path, device=torch.device("cpu"))
    assert weights.read_bytes() == before


def _vmamba_file(folder, tiny):
    """A VMamba-S-layout file for the tiny VM-UNet (its encoder keys without the prefix)."""
    own = create_model("vmunet", num_classes=9, img_size=32, **tiny).state_dict()
    g = torch.Generator().manual_seed(7)
    ckpt = {k[len("vmunet."):]: torch.randn(v.shape, generator=g) for k, v in own.items()
            if k.startswith(("vmunet.patch_embed.", "vmunet.layers."))}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": ckpt}, folder / "vmamba_small_e238_ema.pth")
    return ckpt


def test_pretrained_protocol_starts_each_model_from_its_authors_file(synapse_root, tmp_path):
    import dataclasses
    import hashlib

    from bench.records import load
    from bench.run import plan_grid, run_one

    tiny = dict(get_entry("vmunet").tiny)
    # lr 0: the weights stay what the file put there, so the final checkpoint shows the init
    proto = load_protocol("smoke").with_overrides(pretrained=True, img_size=32, max_iterations=1, lr=0.0,
                                                  max_cases=1)
    grid = dict(dataset="synapse", protocol=proto, seeds=[0], data_root=synapse_root, synthetic=False,
                results_dir=tmp_path / "res", model_overrides=tiny)
    with pytest.raises(BenchError, match=r"vmunet: vmamba_small_e238_ema\.pth.*--pretrained-dir.*--no-pretrained"):
        plan_grid(models=["vmunet"], **grid)
    with pytest.raises(BenchError, match=r"not found in .*nowhere"):
        plan_grid(models=["vmunet"], pretrained_dir=tmp_path / "nowhere", **grid)
    (unet,) = plan_grid(models=["unet"], **{**grid, "model_overrides": dict(get_entry("unet").tiny)})
    assert unet.init is None  # the classic U-Net has no pretrained file: from scratch under any protocol

    misfit = tmp_path / "misfit"
    misfit.mkdir()
    torch.save({"model": {"layers.0.blocks.0.ln_1.weight": torch.ones(3)}}, misfit / "vmamba_small_e238_ema.pth")
    with pytest.raises(BenchError, match=r"vmunet: vmamba_small_e238_ema\.pth does not load into this configuration"):
        plan_grid(models=["vmunet"], pretrained_dir=misfit, **grid)  # at planning, before any run trains
    ckpt = _vmamba_file(tmp_path / "weights", tiny)
    (spec,) = plan_grid(models=["vmunet"], pretrained_dir=tmp_path / "weights", **grid)
    # the whole sha256, as weights.sha256 keeps it; the run id hashes its first 16 digits (older records' ids)
    sha = hashlib.sha256((tmp_path / "weights" / "vmamba_small_e238_ema.pth").read_bytes()).hexdigest()
    assert spec.init == ("vmamba", str(tmp_path / "weights" / "vmamba_small_e238_ema.pth"), sha)
    assert spec.key == dataclasses.replace(spec, init=(*spec.init[:2], sha[:16])).key
    scratch = load_protocol("smoke").with_overrides(img_size=32, max_iterations=1, lr=0.0, max_cases=1)
    (other,) = plan_grid(models=["vmunet"], **{**grid, "protocol": scratch})
    assert other.init is None and other.key != spec.key

    rec = run_one(spec, results_dir=tmp_path / "res", device=torch.device("cpu"))
    assert rec["init"]["file"] == "vmamba_small_e238_ema.pth" and rec["init"]["sha256"] == sha and len(sha) == 64
    assert rec["init"]["encoder"] == len(ckpt) and rec["init"]["decoder_mirrored"] > 0
    assert load(tmp_path / "res")["init"].tolist() == [f"vmamba_small_e238_ema.pth@{sha[:8]}"]
    final = torch.load(tmp_path / "res" / "runs" / spec.key / "checkpoints" / "final.pt", weights_only=True)["model"]
    key = "layers.0.blocks.0.self_attention.A_logs"
    assert torch.equal(final[f"vmunet.{key}"], ckpt[key])
    assert torch.equal(final["vmunet.layers_up.3.blocks.0.ln_1.weight"], ckpt["layers.0.blocks.0.ln_1.weight"])


@pytest.mark.cuda
def test_cuda_run_records_its_training_peak_memory(synapse_root, tmp_path):
    from bench.run import plan_grid, run_one

    (spec,) = plan_grid(models=["unet"], dataset="synapse", protocol=_proto(max_iterations=2, max_cases=1), seeds=[0],
                        data_root=synapse_root, synthetic=False, results_dir=tmp_path,
                        model_overrides=dict(get_entry("unet").tiny))
    rec = run_one(spec, results_dir=tmp_path, device=torch.device("cuda"))
    assert rec["cost"]["peak_mem_kind"] == "cuda_train" and 0 < rec["cost"]["peak_mem_mb"] < 2048


def test_protocol_nsd_tolerance_adds_nsd_to_records_and_boards(synapse_root, tmp_path):
    from bench.records import load
    from bench.report import render
    from bench.run import plan_grid, run_one

    proto = _proto(max_iterations=2, max_cases=2, nsd_tolerance=2.0)
    (spec,) = plan_grid(models=["unet"], dataset="synapse", protocol=proto, seeds=[0], data_root=synapse_root,
                        synthetic=False, results_dir=tmp_path, policy="strict",
                        model_overrides=dict(get_entry("unet").tiny))
    rec = run_one(spec, results_dir=tmp_path, device=torch.device("cpu"))
    assert rec["metrics"]["nsd_tolerance"] == 2.0 and 0.0 <= rec["metrics"]["nsd"] <= 1.0
    assert all("nsd" in row and row["nsd_tolerance"] == 2.0 for row in rec["per_case"])
    md = render(load(tmp_path))
    assert "NSD ↑ (%)" in md and "NSD: % of both surfaces within 2 mm of the other." in md
    from bench.report import write_report

    assert "NSD 95% CI" in write_report(tmp_path)  # bootstrapped like DSC and HD95


def test_per_class_nsd_tolerances_reach_rows_records_and_the_caption(synapse_root, tmp_path):
    from bench.data.synapse import CLASS_NAMES
    from bench.records import load
    from bench.report import render
    from bench.run import plan_grid, run_one

    table = {name: float(i % 3 + 1) for i, name in enumerate(CLASS_NAMES)}  # organ-specific, U-Mamba style
    grid = dict(models=["unet"], dataset="synapse", seeds=[0], data_root=synapse_root, synthetic=False,
                results_dir=tmp_path, policy="strict", model_overrides=dict(get_entry("unet").tiny))
    # a table that misses an organ, or names one the dataset lacks, stops the grid before training
    bad = {**{k: v for k, v in table.items() if k != "pancreas"}, "livr": 2.0}
    with pytest.raises(BenchError, match=r"eval\.nsd_tolerance on dataset 'synapse': no tolerance for pancreas; "
                                         r"'livr' is not a class\. Classes: aorta, gallbladder, .*, stomach"):
        plan_grid(protocol=_proto(nsd_tolerance=bad), **grid)
    assert not (tmp_path / "runs").exists()
    (spec,) = plan_grid(protocol=_proto(max_iterations=2, max_cases=2, nsd_tolerance=table), **grid)
    rec = run_one(spec, results_dir=tmp_path, device=torch.device("cpu"))
    assert rec["metrics"]["nsd_tolerances"] == table and "nsd_tolerance" not in rec["metrics"]
    assert list(rec["metrics"]["nsd_tolerances"]) == list(CLASS_NAMES)  # class order
    assert all(row["nsd_tolerance"] == table[row["name"]] for row in rec["per_case"])
    text = "aorta 1, gallbladder 2, kidney_l 3, kidney_r 1, liver 2, pancreas 3, spleen 1, stomach 2"
    runs = load(tmp_path)
    assert runs["nsd_tolerances"].tolist() == [text] and "nsd_tolerance" not in runs
    assert f"NSD: % of both surfaces within the class's tolerance of the other, in mm: {text}." in render(runs)


def test_a_checkpoints_cuda_rng_is_this_processs_device_only(monkeypatch):
    """A checkpoint keeps the CUDA generator of the process's own device, so a run requeued onto a
    machine with fewer visible GPUs resumes (every device's state, as once saved, failed to restore
    there); older checkpoints' per-device lists restore their entry for this device."""
    from bench import train as train_mod

    states = {0: torch.tensor([1], dtype=torch.uint8), 1: torch.tensor([2], dtype=torch.uint8)}
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[1])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(state))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("every device's state saved"))
    state = train_mod._rng_state()
    assert torch.equal(state["cuda"], states[1])
    train_mod._set_rng_state(state)
    train_mod._set_rng_state({**state, "cuda": [states[0], states[1]]})  # an older checkpoint's list
    train_mod._set_rng_state({**state, "cuda": [states[0]]})  # written where this device did not exist: left as is
    assert [int(s[0]) for s in restored] == [2, 2]


def test_a_plugin_sized_for_another_input_is_named_at_its_first_forward(synapse_root, tmp_path):
    """From a plugin journey: a model whose layer fits one input size only ended the run in a
    RuntimeError traceback from torch's Linear; the line names the model, the batch, the plugin's own
    failing line and what sets the size it was given. A built-in model's failure keeps its traceback."""
    from torch import nn

    from bench.modeling import SegmentationModel
    from bench.registry import register_model

    class FixedSize(SegmentationModel):
        def __init__(self, num_classes, in_chans):
            super().__init__()
            self.num_classes, self.in_chans = num_classes, in_chans
            self.fc = nn.Linear(in_chans * 16 * 16, num_classes * 16 * 16)  # 16x16 inputs only

        def forward_logits(self, x):
            return self.fc(x.flatten(1)).view(x.shape[0], self.num_classes, 16, 16)

    register_model(family="cnn", paper_config={}, name="_fixed_size")(
        lambda *, num_classes, in_chans=3, img_size=224: FixedSize(num_classes, in_chans))
    ds = open_dataset("synapse", synapse_root)
    try:
        model = create_model("_fixed_size", num_classes=ds.num_classes, in_chans=ds.in_chans, img_size=32)
        with pytest.raises(BenchError, match=r"^_fixed_size failed at its first forward, on a batch of shape "
                                             r"\(4, 1, 32, 32\): RuntimeError: mat1 and mat2 .* \(at test_train\.py:\d+ "
                                             r"in forward_logits\)\. Its factory was given img_size 32 \(--img-size"):
            train_model(model, ds, _proto(), seed=0, run_dir=tmp_path / "a", device=torch.device("cpu"))
        FixedSize.__module__ = "__no_file__"  # a class typed into a notebook: no file to point at
        with pytest.raises(BenchError, match=r"RuntimeError: mat1 and mat2 [^(]*\(\d+x\d+ and \d+x\d+\)\. Its factory"):
            train_model(model, ds, _proto(), seed=0, run_dir=tmp_path / "c", device=torch.device("cpu"))
    finally:
        from bench import registry

        registry._REGISTRY.pop("_fixed_size")
    broken = _tiny_unet(ds)
    broken.forward_logits = lambda x: x @ torch.ones(1, 2)  # a built-in's bug: bench's, its traceback
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        train_model(broken, ds, _proto(), seed=0, run_dir=tmp_path / "b", device=torch.device("cpu"))
    # a built-in model given a value its architecture cannot take (an ablation's --set): one line naming it
    odd = create_model("vmunet", num_classes=ds.num_classes, in_chans=ds.in_chans, img_size=32, tiny=True,
                       dims=[15, 32, 64, 128])
    with pytest.raises(BenchError, match=r"^vmunet failed at its first forward, built with dims=\[15, 32, 64, 128\]: "
                                         r"RuntimeError: .*a value its architecture cannot take"):
        train_model(odd, ds, _proto(), seed=0, run_dir=tmp_path / "d", device=torch.device("cpu"))
