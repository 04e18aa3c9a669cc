"""The forward contract every registered model follows.

``SegmentationModel`` is a base class, not a wrapper, so state_dict keys stay the authors' own.
Subclasses implement ``forward_logits``; ``forward`` checks the input, repeats a 1-channel input
to ``in_chans`` (as VM-UNet/TransUNet do with ``x.repeat(1, 3, 1, 1)``) and checks that raw logits
of shape (B, num_classes, H, W) come out — (B, num_classes, D, H, W) for 3-D models
(``spatial_dims = 3``).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from bench.errors import BenchError


def init_linear_and_norm(m: nn.Module) -> None:
    """The Swin/VMamba initialisation: trunc-normal(0.02) Linear weights, zero biases, unit
    LayerNorm. Bare Parameters (SS2D's stacked projections) keep their own. Use with
    ``module.apply``."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def size_error(name: str, img_size: int, divisor: int, why: str) -> BenchError:
    """The error for an ``img_size`` a model cannot take, with the nearest sizes it can."""
    down, up = img_size // divisor * divisor, -(-img_size // divisor) * divisor
    sizes = f"{down} or {up}" if down else f"{up}"
    return BenchError(f"{name}: img_size {img_size} is not a multiple of {divisor}, which {why}; use {sizes} "
                      "(--img-size or the protocol's img_size)")


def _autocast_casts(x: torch.Tensor) -> bool:
    """Whether autocast will cast ``x`` to the weights' precision: on (for its device) and ``x`` of a
    dtype it casts (float64 it leaves as is, so it would meet float32 weights)."""
    try:
        on = torch.is_autocast_enabled(x.device.type)
    except RuntimeError:  # a device type autocast does not know (meta)
        return False
    return on and x.dtype in (torch.float32, torch.float16, torch.bfloat16)


# A fresh model's one-class logits may all lie in [0, 1]; trained this long with BCE on data that is
# mostly background, logits no longer do, while a sigmoid's output always does
SIGMOID_CHECK_AT = 20


def _check_not_probabilities(name: str, out: torch.Tensor, step: int) -> None:
    """Logits, not a softmax's (checked at the first training forward) or a sigmoid's output (at the
    SIGMOID_CHECK_AT-th): bench applies those itself (losses, predictions), so a model applying one
    trains on squashed scores, and a sigmoid's are all foreground at the 0.5 threshold."""
    if out.numel() == 0 or out.min() < 0 or out.max() > 1:
        return
    if step == 1 and out.shape[1] > 1 and torch.allclose(out.sum(1), torch.ones_like(out[:, 0]), atol=1e-3):
        raise BenchError(f"{name} returned probabilities (in [0, 1], summing to 1 over its {out.shape[1]} channels "
                         "at every pixel): forward_logits must give raw logits; bench applies the softmax itself")
    if step == SIGMOID_CHECK_AT and out.shape[1] == 1:
        warnings.warn(f"{name}'s outputs all still lie in [0, 1] after {step} training steps: if forward_logits "
                      "ends with a sigmoid, remove it; bench applies it itself, before the protocol's threshold",
                      stacklevel=3)


class SegmentationModel(nn.Module):
    num_classes: int
    in_chans: int
    size_divisor: int = 1  # every spatial size must be a multiple of this
    square_input: bool = False  # only square inputs (a fixed token grid, or square-only fusion)
    fixed_grid: str = ""  # why only img_size inputs run (learned position embeddings, ...); needs self.img_size
    spatial_dims: int = 2

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = type(self).__name__
        if not torch.is_tensor(x):  # a numpy array from a notebook
            raise BenchError(f"{name} expects a torch.Tensor; got {type(x).__name__}: convert it with "
                             "torch.from_numpy(x).float()")
        if x.ndim != 2 + self.spatial_dims:
            layout = "(B, C, H, W)" if self.spatial_dims == 2 else "(B, C, D, H, W)"
            raise BenchError(f"{name} expects input {layout}; got shape {tuple(x.shape)}")
        if x.shape[0] == 0:  # the SSM and Swin models failed to reshape 0 elements
            raise BenchError(f"{name} got an empty batch (shape {tuple(x.shape)}); expected at least one image")
        weight = next(self.parameters(), None)
        if not x.is_floating_point() or (weight is not None and x.dtype != weight.dtype and not _autocast_casts(x)):
            want, whose = (weight.dtype, " (its weights')") if weight is not None else (torch.float32, "")
            raise BenchError(f"{name} expects a {str(want).replace('torch.', '')} input{whose}; got "
                             f"{str(x.dtype).replace('torch.', '')}: convert it with x.to({want})")
        if x.shape[1] != self.in_chans:
            if x.shape[1] != 1:
                raise BenchError(f"{name} expects {self.in_chans} input channels (or 1, repeated); got {x.shape[1]}")
            x = x.repeat(1, self.in_chans, *([1] * self.spatial_dims))
        size = tuple(x.shape[2:])
        if self.fixed_grid and size != (self.img_size,) * self.spatial_dims:  # before the divisor: padding is no remedy
            built = "x".join([str(self.img_size)] * self.spatial_dims)
            raise BenchError(f"{name} was built for {built} inputs ({self.fixed_grid}); got {size}")
        d = self.size_divisor
        if any(s % d for s in size):
            shown = "x".join(map(str, size))
            padded = "x".join(str(-(-s // d) * d) for s in size)
            raise BenchError(f"{name} needs sizes divisible by {d}; got {shown}, pad to {padded}")
        out = self.forward_logits(x)
        if not torch.is_tensor(out):  # deep supervision's heads as a tuple, a dict of outputs
            raise BenchError(f"{name}.forward_logits returned a {type(out).__name__}, expected one tensor of logits "
                             f"(B, {self.num_classes}, *{size}): return the main output (fuse or drop extra heads)")
        if self.training and not torch.compiler.is_compiling():  # twice a run, not per step
            seen = self._training_forwards = getattr(self, "_training_forwards", 0) + 1
            if seen in (1, SIGMOID_CHECK_AT):
                _check_not_probabilities(name, out.detach().float(), seen)
        if out.shape != (x.shape[0], self.num_classes, *size):
            # a plugin's bug, named in one line (BenchError) where it surfaces: the first forward of a run
            raise BenchError(f"{name} returned {tuple(out.shape)}, expected (B, {self.num_classes}, *{size}): "
                             "forward_logits must give raw logits of the input's size")
        return out
