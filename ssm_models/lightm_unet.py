"""LightM-UNet: a SegResNet-style UNet whose encoder blocks are Mamba layers (2-D and 3-D).

Paper: Liao et al., "LightM-UNet: Mamba Assists in Lightweight UNet for Medical Image
Segmentation", arXiv:2403.05246. Authors' code: MrBlankness/LightM-UNet@6b72e27,
lightm-unet/nnunetv2/nets/LightMUNet.py (Apache-2.0), built by nnUNetTrainerLightMUNet with
init_filters 32, blocks_down [1,2,2,4], blocks_up [1,1,1], GroupNorm(8), ReLU, non-trainable
(bi/tri)linear up-sampling. Re-implemented (no code copied) with the
authors' module names (MONAI's ``Convolution`` wrapper shows up as ``.conv`` in the keys), so their
``network_weights`` load strictly.

As released, the network has 5.01 M parameters (2-D, 3→2 channels) — not the 1.09 M / 1.87 M of
the paper (issues #30, #36); each "RVM layer" is a single forward 1-D scan over the flattened
volume (issue #31), not the multi-branch VSS module of the paper's figure. We reproduce the code.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.modeling import SegmentationModel
from bench.model_facts import FACTS
from bench.registry import register_model
from ssm_models.mamba import Mamba

__all__ = ["LightMUNet", "MambaLayer"]


class _Conv(nn.Module):
    """MONAI ``Convolution(conv_only=True)``: the conv sits under ``.conv``."""

    def __init__(self, dims: int, cin: int, cout: int, kernel: int, groups: int = 1, bias: bool = False):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.conv = conv(cin, cout, kernel, padding=(kernel - 1) // 2, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def dw_separable(dims: int, cin: int, cout: int, kernel: int = 3, bias: bool = False) -> nn.Sequential:
    """Depthwise kernel×kernel, then pointwise 1×1 (the authors' ``get_dwconv_layer``)."""
    return nn.Sequential(_Conv(dims, cin, cin, kernel, groups=cin, bias=bias), _Conv(dims, cin, cout, 1, bias=bias))


class MambaLayer(nn.Module):
    """Tokens = flattened spatial grid; norm → Mamba + skip_scale·x → the SAME norm → proj."""

    def __init__(self, input_dim: int, output_dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2):
        super().__init__()
        self.output_dim = output_dim
        self.norm = nn.LayerNorm(input_dim)
        self.mamba = Mamba(d_model=input_dim, d_state=d_state, d_conv=d_conv, expand=expand)
        self.proj = nn.Linear(input_dim, output_dim)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float16 and self.norm.weight.dtype == torch.float32:  # the authors' cast, for AMP: a
            x = x.float()  # model cast to float16 (.half()) has float16 norms, which a float32 input would not fit
        b, c, *grid = x.shape
        flat = x.reshape(b, c, -1).transpose(1, 2)
        out = self.norm(self.mamba(self.norm(flat)) + self.skip_scale * flat)
        return self.proj(out).transpose(1, 2).reshape(b, self.output_dim, *grid)


class ResMambaBlock(nn.Module):
    def __init__(self, channels: int, groups: int):  # no spatial dims: GroupNorm and Mamba take any number
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv1 = MambaLayer(channels, channels)
        self.conv2 = MambaLayer(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.norm1(x)))
        y = self.conv2(F.relu(self.norm2(y)))
        return y + x


class ResUpBlock(nn.Module):
    def __init__(self, dims: int, channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv = dw_separable(dims, channels, channels, 3)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm2(self.conv(F.relu(self.norm1(x))) + self.skip_scale * x))


def _upsample(dims: int) -> nn.Upsample:
    """MONAI's non-trainable ``UpSample``: a plain ``nn.Upsample`` (thop, which matches module types
    exactly, counts its bilinear work at 11 per output element, as on the authors' model; trilinear
    it counts as zero)."""
    return nn.Upsample(scale_factor=2, mode="bilinear" if dims == 2 else "trilinear", align_corners=False)


class LightMUNet(SegmentationModel):
    """LightM-UNet as released.

    Args:
        num_classes: output channels (logits; nnU-Net applies the softmax).
        in_chans: input channels.
        spatial_dims: 2 or 3.
        init_filters: width of the first level; level i has init_filters·2^i channels.
        blocks_down / blocks_up: residual blocks per encoder / decoder level.
        num_groups: GroupNorm groups.
    """

    uses_selective_scan = True

    def __init__(self, num_classes: int, in_chans: int = 1, spatial_dims: int = 2, init_filters: int = 32,
                 blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), num_groups: int = 8):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.num_classes, self.in_chans, self.spatial_dims = num_classes, in_chans, spatial_dims
        self.size_divisor = 2 ** (len(blocks_down) - 1)
        dims, f = spatial_dims, init_filters
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
        self.convInit = dw_separable(dims, in_chans, f, 3)
        self.down_layers = nn.ModuleList()
        for i, n in enumerate(blocks_down):
            c = f * 2**i
            down = nn.Sequential(MambaLayer(c // 2, c), pool(2, 2)) if i > 0 else nn.Identity()
            self.down_layers.append(nn.Sequential(down, *[ResMambaBlock(c, num_groups) for _ in range(n)]))
        n_up = len(blocks_up)
        self.up_layers, self.up_samples = nn.ModuleList(), nn.ModuleList()
        for i in range(n_up):
            c = f * 2 ** (n_up - i)
            self.up_layers.append(nn.Sequential(*[ResUpBlock(dims, c // 2, num_groups) for _ in range(blocks_up[i])]))
            self.up_samples.append(nn.Sequential(_Conv(dims, c, c // 2, 1), _upsample(dims)))
        self.conv_final = nn.Sequential(nn.GroupNorm(num_groups, f), nn.ReLU(inplace=True),
                                        dw_separable(dims, f, num_classes, 1, bias=True))

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convInit(x)
        skips = []
        for down in self.down_layers:
            x = down(x)
            skips.append(x)
        for up, layer, skip in zip(self.up_samples, self.up_layers, skips[-2::-1]):
            x = layer(up(x) + skip)
        return self.conv_final(x)


PAPER_CONFIG = FACTS["lightm_unet"].paper_config  # bench.model_facts: read without torch


@register_model(**FACTS["lightm_unet"].register_args())
def lightm_unet(*, num_classes: int, in_chans: int = 3, img_size: int = 224, **overrides: Any) -> LightMUNet:
    """LightM-UNet as released; ``spatial_dims=3`` builds the volumetric variant."""
    return LightMUNet(num_classes=num_classes, in_chans=in_chans, **{**PAPER_CONFIG, **overrides})
