"""VM-UNet-V2: the VM-UNet encoder with CBAM attention, SDI fusion and a light conv decoder.

Paper: Zhang et al., "VM-UNET-V2: Rethinking Vision Mamba UNet for Medical Image Segmentation",
arXiv:2403.09157. Authors' code: nobodyplayer1/VM-UNetV2@b65f04c, models/vmunet/vmunet_v2.py
(Apache-2.0). Re-implemented (no code copied) with the authors' names.

As in the authors' code: the encoder's last stage (``vmunet.layers.3``) runs but its output is
discarded, so its parameters get no gradient (kept for checkpoint compatibility); ``deconv5`` is
unused; "deep supervision" fuses the two finest heads into one output
(seg3↑ + deconv6(seg2↑)), which only exists for one class. The other heads are computed (their FLOPs
count, as in the authors' model) but reach no output, so they train no more than ``layers.3``:
``seg_outs.0`` and ``seg_outs.1``, and without deep supervision (more than one class) ``seg_outs.2``
too, while ``deconv6`` then runs no more than ``deconv5``. Differences: we return that fused map
as logits (the authors apply a sigmoid); with more than one class deep supervision is off (the
authors' code fails there); non-square inputs are refused (their SDI assumes squares).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import BenchError
from bench.modeling import SegmentationModel
from bench.model_facts import FACTS
from bench.registry import register_model
from ssm_models.vmunet import VSSM, load_vmamba_pretrained

__all__ = ["VMUNetV2"]


class ChannelAttention(nn.Module):
    """CBAM channel attention: shared 1×1 MLP (C → C/16 → C) on avg- and max-pooled maps."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        # the pools are modules as in the authors' CBAM: thop counts the average pool, so the
        # papers' convention (bench.cost.paper_count) gives their 4.40 G
        self.avg_pool, self.max_pool = nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mlp = lambda t: self.fc2(F.relu(self.fc1(t)))  # noqa: E731
        return torch.sigmoid(mlp(self.avg_pool(x)) + mlp(self.max_pool(x)))


class SpatialAttention(nn.Module):
    """CBAM spatial attention: 7×7 conv over the channel mean and max."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv1(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)))


class BasicConv2d(nn.Module):
    """1×1 conv (no bias) + BatchNorm. The authors define a ReLU here but never apply it."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SDI(nn.Module):
    """Semantics and detail infusion: every level resized to the anchor's size (adaptive average
    pooling down, bilinear align_corners=True up), smoothed by its own 3×3 conv, multiplied."""

    def __init__(self, channels: int, levels: int = 4):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(levels))

    def forward(self, feats: list[torch.Tensor], anchor: torch.Tensor) -> torch.Tensor:
        size = anchor.shape[-1]  # square maps, as in the authors' code
        out = torch.ones_like(anchor)
        for conv, f in zip(self.convs, feats):
            if f.shape[-1] > size:
                f = F.adaptive_avg_pool2d(f, (size, size))
            elif f.shape[-1] < size:
                f = F.interpolate(f, size=(size, size), mode="bilinear", align_corners=True)
            out = out * conv(f)
        return out


class VMUNetV2(SegmentationModel):
    """VM-UNet-V2 (authors' ``VMUNetV2``).

    Args:
        num_classes: output channels.
        in_chans: encoder input channels (3; a 1-channel input is repeated).
        depths: VSS blocks per encoder stage ([2, 2, 9, 2] in the authors' config).
        dims: encoder widths.
        mid_channel: width of the SDI/decoder maps (48).
        deep_supervision: fuse the two finest heads (one class only).
        drop_path_rate, d_state: as in VM-UNet.
    """

    size_divisor = 32
    square_input = True
    uses_selective_scan = True

    def __init__(self, num_classes: int, in_chans: int = 3, depths=(2, 2, 9, 2), dims=(96, 192, 384, 768),
                 mid_channel: int = 48, deep_supervision: bool = True, d_state: int = 16,
                 drop_path_rate: float = 0.2):
        super().__init__()
        if deep_supervision and num_classes != 1:
            raise ValueError("VM-UNet-V2's deep supervision fuses one-channel heads: use num_classes=1 or "
                             "deep_supervision=False")
        self.num_classes, self.in_chans, self.deep_supervision = num_classes, in_chans, deep_supervision
        for i, c in enumerate(dims, start=1):  # ca_i, sa_i interleaved: the authors' definition order
            setattr(self, f"ca_{i}", ChannelAttention(c))
            setattr(self, f"sa_{i}", SpatialAttention())
        for i, c in enumerate(dims, start=1):
            setattr(self, f"Translayer_{i}", BasicConv2d(c, mid_channel))
        for i in range(1, len(dims) + 1):
            setattr(self, f"sdi_{i}", SDI(mid_channel, len(dims)))
        self.seg_outs = nn.ModuleList(nn.Conv2d(mid_channel, num_classes, 1) for _ in range(4))
        for i in range(2, 6):  # deconv5 is defined but unused by the authors
            setattr(self, f"deconv{i}", nn.ConvTranspose2d(mid_channel, mid_channel, 4, stride=2, padding=1, bias=False))
        self.deconv6 = nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=1)
        self.vmunet = VSSM(in_chans, None, depths, None, dims, d_state, drop_path_rate)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != x.shape[-2]:
            raise BenchError(f"VMUNetV2 needs square inputs (its SDI resizes to squares); got {tuple(x.shape[-2:])}")
        _, skips = self.vmunet.forward_encoder(x)  # the last stage's output is discarded, as in the code
        feats = []
        for i, f in enumerate(skips, start=1):
            f = f.permute(0, 3, 1, 2)
            f = getattr(self, f"ca_{i}")(f) * f
            f = getattr(self, f"sa_{i}")(f) * f
            feats.append(getattr(self, f"Translayer_{i}")(f))
        f11, f21, f31, f41 = (getattr(self, f"sdi_{i}")(feats, feats[i - 1]) for i in range(1, 5))
        y = f41
        segs = [self.seg_outs[0](y)]
        for deconv, skip, head in ((self.deconv2, f31, 1), (self.deconv3, f21, 2), (self.deconv4, f11, 3)):
            y = deconv(y) + skip
            segs.append(self.seg_outs[head](y))
        segs = [F.interpolate(s, scale_factor=4, mode="bilinear", align_corners=False) for s in segs]
        if self.deep_supervision:
            return segs[3] + self.deconv6(segs[2])
        return segs[3]


def load_vmamba_encoder(model: nn.Module, state_dict: dict[str, Any]) -> dict[str, Any]:
    """V2's ``load_from``: VMamba-S tensors into the encoder by exact name; no decoder mirroring
    (the authors commented it out)."""
    report = load_vmamba_pretrained(model, state_dict, mirror_decoder=False, name="VM-UNet-V2")
    return report


PAPER_CONFIG = FACTS["vmunet_v2"].paper_config  # bench.model_facts: read without torch


@register_model(
    **FACTS["vmunet_v2"].register_args(),
    pretrained={"vmamba": load_vmamba_encoder},
)
def vmunet_v2(*, num_classes: int, in_chans: int = 3, img_size: int = 256, **overrides: Any) -> VMUNetV2:
    """VM-UNet-V2 with the authors' ISIC configuration; deep supervision only for one class."""
    cfg = {**PAPER_CONFIG, "deep_supervision": num_classes == 1, **overrides}
    return VMUNetV2(num_classes=num_classes, in_chans=3, **cfg)
