"""The forward contract every registered model follows (DESIGN.md, contract 2).

``SegmentationModel`` is a base class, not a wrapper, so state_dict keys stay the authors' own.
Subclasses implement ``forward_logits``; ``forward`` checks the input, repeats a 1-channel input
to ``in_chans`` (as VM-UNet/TransUNet do with ``x.repeat(1, 3, 1, 1)``) and checks that raw logits
of shape (B, num_classes, H, W) come out.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.errors import BenchError


class SegmentationModel(nn.Module):
    num_classes: int
    in_chans: int
    size_divisor: int = 1  # H and W must be multiples of this

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise BenchError(f"{type(self).__name__} expects input (B, C, H, W); got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            if x.shape[1] != 1:
                raise BenchError(
                    f"{type(self).__name__} expects {self.in_chans} input channels (or 1, repeated); got {x.shape[1]}"
                )
            x = x.repeat(1, self.in_chans, 1, 1)
        h, w = x.shape[-2:]
        d = self.size_divisor
        if h % d or w % d:
            ph, pw = -(-h // d) * d, -(-w // d) * d
            raise BenchError(
                f"{type(self).__name__} needs H and W divisible by {d}; got {h}x{w}, pad to {ph}x{pw}"
            )
        out = self.forward_logits(x)
        if out.shape != (x.shape[0], self.num_classes, h, w):
            raise RuntimeError(f"{type(self).__name__} returned {tuple(out.shape)}, expected (B, {self.num_classes}, {h}, {w})")
        return out
