"""The two loss families of the protocols, written to match the authors' definitions.

- Multi-class (TransUNet ``utils.DiceLoss`` + ``nn.CrossEntropyLoss``; VM-UNet ``CeDiceLoss``):
  softmax Dice over ALL classes including background, sums over the whole batch,
  per class ``1 - (2·Σpg + 1e-5) / (Σp² + Σg² + 1e-5)``, averaged over classes.
- Binary (VM-UNet ``BceDiceLoss``): BCE on the sigmoid plus a per-sample soft Dice with smooth 1,
  ``1 - (2·Σpg + 1) / (Σp + Σg + 1)``, averaged over the batch. Targets may be soft (resized masks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def multiclass_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = (probs * probs).sum(dims) + (onehot * onehot).sum(dims)
    return (1 - (2 * inter + smooth) / (denom + smooth)).mean()


def binary_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    p = logits.sigmoid().flatten(1)
    g = target.flatten(1)
    score = (2 * (p * g).sum(1) + smooth) / (p.sum(1) + g.sum(1) + smooth)
    return 1 - score.mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, *, ce: float, dice: float, bce: float) -> torch.Tensor:
    """``ce``·CE + ``dice``·Dice for multi-class logits; ``bce``·BCE + ``dice``·Dice for one channel."""
    logits = logits.float()  # losses in fp32 even under autocast
    if logits.shape[1] == 1:
        target = target.to(logits.dtype).reshape(logits.shape)
        return bce * F.binary_cross_entropy_with_logits(logits, target) + dice * binary_dice_loss(logits, target)
    target = target.long()
    return ce * F.cross_entropy(logits, target) + dice * multiclass_dice_loss(logits, target)
