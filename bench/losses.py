"""The two loss families of the protocols, written to match the authors' definitions.

- Multi-class (TransUNet ``utils.DiceLoss`` + ``nn.CrossEntropyLoss``; VM-UNet ``CeDiceLoss``):
  softmax Dice over ALL classes including background, sums over the whole batch,
  per class ``1 - (2·Σpg + 1e-5) / (Σp² + Σg² + 1e-5)``, averaged over classes.
- Multi-class, ``dice_loss = "nnunet"`` (nnU-Net v2 ``DC_and_CE_loss`` with
  ``MemoryEfficientSoftDiceLoss``, batch_dice, do_bg False, smooth 1e-5; the LightM-UNet trainer):
  CE plus minus the soft Dice ``(2·Σpg + 1e-5) / max(Σp + Σg + 1e-5, 1e-8)`` of each foreground
  class, sums over the whole batch, averaged over classes (so the loss is negative once it learns).
- Binary (VM-UNet ``BceDiceLoss``): BCE on the sigmoid plus a per-sample soft Dice with smooth 1,
  ``1 - (2·Σpg + 1) / (Σp + Σg + 1)``, averaged over the batch. Targets may be soft (resized masks).
  The BCE is ``nn.BCELoss`` on the sigmoid's output as theirs, not the with-logits form: where a
  logit saturates (sigmoid rounds to 1 past ~16.6 in float32) theirs clamps the log at -100 and
  passes no gradient, which changes late training on confidently wrong pixels.

Several processes (bench.distributed) compute the global batch's loss: ``share=(n, N)`` says this
process holds n of the N items; mean terms are scaled by ``n·world/N`` (DDP averages gradients
over ranks) and the batch-summed Dice statistics are summed over ranks.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F


def multiclass_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5, *,
                         sum_stats: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """``sum_stats`` combines the per-class sums (2, C) with other processes' (autograd-aware)."""
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    stats = torch.stack([(probs * onehot).sum(dims), (probs * probs).sum(dims) + (onehot * onehot).sum(dims)])
    if sum_stats is not None:
        stats = sum_stats(stats)
    inter, denom = stats
    return (1 - (2 * inter + smooth) / (denom + smooth)).mean()


def nnunet_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5, *,
                     sum_stats: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """nnU-Net's batch soft Dice over the foreground classes, returned negated (its sign convention)."""
    probs = logits.softmax(dim=1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1])[..., 1:].movedim(-1, 1).to(probs.dtype)
    dims = (0, *range(2, probs.ndim))
    stats = torch.stack([(probs * onehot).sum(dims), probs.sum(dims) + onehot.sum(dims)])
    if sum_stats is not None:
        stats = sum_stats(stats)
    inter, denom = stats
    return -((2 * inter + smooth) / (denom + smooth).clamp_min(1e-8)).mean()


DICE_LOSSES = {"transunet": multiclass_dice_loss, "nnunet": nnunet_dice_loss}  # protocol train.dice_loss


def binary_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    p = logits.sigmoid().flatten(1)
    g = target.flatten(1)
    score = (2 * (p * g).sum(1) + smooth) / (p.sum(1) + g.sum(1) + smooth)
    return 1 - score.mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, *, ce: float, dice: float, bce: float,
                      share: tuple[int, int] | None = None, dice_loss: str = "transunet") -> torch.Tensor:
    """``ce``·CE + ``dice``·Dice for multi-class logits (Dice term ``DICE_LOSSES[dice_loss]``);
    ``bce``·BCE + ``dice``·Dice for one channel.

    ``share=(n, N)``: this process's n items of a global batch of N spread over processes; the
    result is this rank's term of the global loss (the mean over ranks is the global loss). n=0
    marks a placeholder item that contributes nothing (a final batch smaller than the world)."""
    if logits.dtype in (torch.float16, torch.bfloat16):  # losses in fp32 under autocast (fp64 stays fp64)
        logits = logits.float()
    weight, sum_stats = 1.0, None
    if share is not None:
        from bench.distributed import sum_across_ranks, world

        n, total = share
        weight = n * world().size / total
        sum_stats = lambda stats: sum_across_ranks(stats * (n > 0))  # noqa: E731
    if logits.shape[1] == 1:
        target = target.to(logits.dtype).reshape(logits.shape)
        if torch.isfinite(logits).all():
            with torch.autocast(logits.device.type, enabled=False):  # CUDA autocast refuses BCELoss; fp32 here
                bce_term = F.binary_cross_entropy(logits.sigmoid(), target)
        else:  # BCELoss refuses NaN (a device assert on CUDA): let the loop's non-finite-loss error speak
            bce_term = logits.sum() * math.nan
        mean_terms = bce * bce_term + dice * binary_dice_loss(logits, target)
        return weight * mean_terms
    target = target.long()
    dice_term = DICE_LOSSES[dice_loss](logits, target, sum_stats=sum_stats)
    return weight * ce * F.cross_entropy(logits, target) + dice * dice_term
