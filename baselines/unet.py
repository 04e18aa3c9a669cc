"""U-Net, the CNN baseline of the SSM papers' tables.

Paper: Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015 (arXiv 1505.04597). The Synapse tables of Swin-Unet and VM-UNet (U-Net 76.85 DSC) come
from the Swin-Unet authors' runs of bigmb/Unet-Segmentation-Pytorch-Nest-of-Unets ``U_Net``
(Swin-Unet issue #14): widths 64-128-256-512-1024, padded 3×3 conv (bias) + BN + ReLU twice per
level, 2×2 max-pool, up-sampling = nearest ×2 + 3×3 conv + BN + ReLU, concatenation, 1×1 head.
This file builds that network (34,526,409 parameters for 1 input and 9 output channels) in smp's
encoder → decoder → head split. ``encoder="resnet34"`` (any smp encoder name) builds smp's ``Unet``
instead, with no download; ``encoder_weights`` may point to a local encoder state_dict.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from bench.errors import BenchError, did_you_mean
from bench.modeling import SegmentationModel
from bench.model_facts import FACTS
from bench.registry import register_model

__all__ = ["UNet", "ClassicEncoder", "ClassicDecoder", "SmpUNet", "from_bigmb"]


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=True),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=True),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ClassicEncoder(nn.Module):
    """Five levels of double convs; returns the features of every level (shallow first)."""

    def __init__(self, in_chans: int, widths: tuple[int, ...]):
        super().__init__()
        chans = (in_chans, *widths)
        self.blocks = nn.ModuleList(conv_block(chans[i], chans[i + 1]) for i in range(len(widths)))
        self.pool = nn.MaxPool2d(2, 2)
        self.out_channels = tuple(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else self.pool(x))
            feats.append(x)
        return feats


class UpBlock(nn.Module):
    """Nearest ×2 up-sampling, 3×3 conv halving the width, concat with the skip, double conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(cin, cout, 3, padding=1, bias=True),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )
        self.conv = conv_block(2 * cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class ClassicDecoder(nn.Module):
    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        rev = widths[::-1]
        self.blocks = nn.ModuleList(UpBlock(rev[i], rev[i + 1]) for i in range(len(rev) - 1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for block, skip in zip(self.blocks, feats[-2::-1]):
            x = block(x, skip)
        return x


class UNet(SegmentationModel):
    """Classic U-Net: encoder → decoder → 1×1 head, raw logits out.

    Args:
        num_classes: output channels (1 for a sigmoid task).
        in_chans: input channels.
        widths: channels per level, shallow to deep; len(widths)-1 poolings.
    """

    def __init__(self, num_classes: int, in_chans: int = 3, widths: tuple[int, ...] = (64, 128, 256, 512, 1024)):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.size_divisor = 2 ** (len(widths) - 1)
        self.encoder = ClassicEncoder(in_chans, tuple(widths))
        self.decoder = ClassicDecoder(tuple(widths))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))


class SmpUNet(SegmentationModel):
    """smp's ``Unet`` with any smp encoder, built offline (``encoder_weights`` is a local file or None)."""

    def __init__(self, num_classes: int, in_chans: int, encoder: str, encoder_weights: str | None = None):
        super().__init__()
        from bench._tv_compat import ensure_torchvision

        ensure_torchvision()
        import segmentation_models_pytorch as smp

        self.num_classes, self.in_chans = num_classes, in_chans
        known = smp.encoders.get_encoder_names()
        if encoder not in known:  # smp's KeyError lists ~80 names on one line
            raise BenchError(f"unet: encoder {encoder!r} is not an smp encoder{did_you_mean(encoder, known)}"
                             " (segmentation_models_pytorch.encoders.get_encoder_names() lists them; or 'classic')")
        self.net = smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=in_chans, classes=num_classes)
        self.size_divisor = self.net.encoder.output_stride
        if encoder_weights is not None:
            from bench.registry import clean_state_dict, read_weights_file

            sd = clean_state_dict(read_weights_file(Path(encoder_weights)))
            self.net.encoder.load_state_dict(sd, strict=True)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


PAPER_CONFIG = FACTS["unet"].paper_config  # bench.model_facts: read without torch
# bigmb's U_Net names its modules Conv1..Conv5 (encoder), Up5..Up2 and Up_conv5..Up_conv2 (decoder,
# deepest first) and Conv (head); the layers inside are the same Sequentials as ours
_BIGMB = ((re.compile(r"^Conv(\d)\.conv\."), lambda m: f"encoder.blocks.{int(m[1]) - 1}."),
          (re.compile(r"^Up(\d)\.up\."), lambda m: f"decoder.blocks.{5 - int(m[1])}.up."),
          (re.compile(r"^Up_conv(\d)\.conv\."), lambda m: f"decoder.blocks.{5 - int(m[1])}.conv."),
          (re.compile(r"^Conv\.(?=weight|bias)"), lambda m: "head."))


def from_bigmb(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint of bigmb's ``U_Net`` (the authors' U-Net rows) in our names; our own keys pass."""
    out = {}
    for key, value in sd.items():
        for pattern, name in _BIGMB:
            m = pattern.match(key)
            if m:
                key = name(m) + key[m.end():]
                break
        out[key] = value
    return out


@register_model(
    **FACTS["unet"].register_args(),
    convert_official=from_bigmb,
)
def unet(*, num_classes: int, in_chans: int = 3, img_size: int = 224, encoder: str = "classic",
         widths: tuple[int, ...] = PAPER_CONFIG["widths"], encoder_weights: str | None = None) -> SegmentationModel:
    """U-Net baseline; ``img_size`` only needs to be divisible by 16 (classic) or 32 (smp)."""
    if encoder == "classic":
        if encoder_weights is not None:
            raise ValueError("encoder_weights applies to smp encoders only: choose one with encoder "
                             "(--set encoder=resnet34)")
        return UNet(num_classes=num_classes, in_chans=in_chans, widths=tuple(widths))
    return SmpUNet(num_classes=num_classes, in_chans=in_chans, encoder=encoder, encoder_weights=encoder_weights)
