"""VM-UNet: Vision Mamba UNet for medical image segmentation.

Paper: Ruan & Xiang, "VM-UNet: Vision Mamba UNet for Medical Image Segmentation", arXiv:2402.02491.
Authors' code: JCruan519/VM-UNet (commit 43c495b), models/vmunet/vmunet.py + vmamba.py, Apache-2.0.
Re-implemented (no code copied); module and parameter
names are the authors', so their checkpoints (``vmunet.*``) load strictly.

What differs from the authors' code: (1) for one class we return logits; their forward ends in a
sigmoid (the harness applies it at evaluation); (2) the selective scan runs on any device through
``ssm_models.scan`` (mamba-ssm's kernel on CUDA); (3) sizes must be multiples of 32 (their code
silently trims odd grids).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.modeling import SegmentationModel, init_linear_and_norm
from bench.model_facts import FACTS
from bench.registry import register_model
from ssm_models.vss import PatchEmbed2D, PatchExpand2D, PatchMerging2D, VSSBlock

__all__ = ["VMUNet", "VSSM", "load_vmamba_pretrained"]


class VSSLayer(nn.Module):
    """Encoder stage: VSS blocks, then (except the last stage) patch merging."""

    def __init__(self, dim: int, depth: int, drop_path: list[float], d_state: int, downsample: bool):
        super().__init__()
        self.blocks = nn.ModuleList(VSSBlock(dim, drop_path[i], d_state) for i in range(depth))
        self.downsample = PatchMerging2D(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class VSSLayerUp(nn.Module):
    """Decoder stage: (except the first) 2× patch expansion, then VSS blocks."""

    def __init__(self, dim: int, depth: int, drop_path: list[float], d_state: int, upsample: bool):
        super().__init__()
        # defined in the authors' order (blocks, then upsample) so state_dict order matches theirs
        self.blocks = nn.ModuleList(VSSBlock(dim, drop_path[i], d_state) for i in range(depth))
        self.upsample = PatchExpand2D(2 * dim, dim, scale=2) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
        for blk in self.blocks:
            x = blk(x)
        return x


class VSSM(nn.Module):
    """The encoder–decoder; skips are the inputs of encoder stages 1–3, added before each expand.

    ``num_classes=None`` builds the encoder only (VM-UNet-V2's copy comments the decoder out)."""

    def __init__(self, in_chans: int, num_classes: int | None, depths, depths_decoder, dims, d_state: int,
                 drop_path_rate: float, patch_size: int = 4):
        super().__init__()
        dims = list(dims)
        dims_dec = dims[::-1]
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.patch_embed = PatchEmbed2D(patch_size, in_chans, dims[0])
        self.layers = nn.ModuleList(
            VSSLayer(dims[i], depths[i], dpr[sum(depths[:i]):sum(depths[: i + 1])], d_state, i < len(dims) - 1)
            for i in range(len(dims))
        )
        if num_classes is None:
            self.apply(init_linear_and_norm)
            return
        dpr_dec = torch.linspace(0, drop_path_rate, sum(depths_decoder)).tolist()[::-1]
        self.layers_up = nn.ModuleList(
            VSSLayerUp(dims_dec[i], depths_decoder[i],
                       dpr_dec[sum(depths_decoder[:i]):sum(depths_decoder[: i + 1])], d_state, i > 0)
            for i in range(len(dims))
        )
        self.final_up = PatchExpand2D(dims[0], dims[0] // 4, scale=4)
        self.final_conv = nn.Conv2d(dims[0] // 4, num_classes, 1)
        self.apply(init_linear_and_norm)

    def forward_encoder(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the last stage's output and the inputs of every stage (channels-last)."""
        x = self.patch_embed(x)
        skips = []
        for layer in self.layers:
            skips.append(x)
            x = layer(x)
        return x, skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.forward_encoder(x)
        for i, layer in enumerate(self.layers_up):
            x = layer(x if i == 0 else x + skips[-i])
        return self.final_conv(self.final_up(x).permute(0, 3, 1, 2))


class VMUNet(SegmentationModel):
    """VM-UNet (authors' ``VMUNet``): the VSSM under ``.vmunet``; a 1-channel input is repeated to 3.

    Args:
        num_classes: output channels (1: sigmoid task, logits returned).
        in_chans: encoder input channels (3 in the authors' configs).
        depths / depths_decoder: VSS blocks per encoder / decoder stage.
        dims: encoder widths; the decoder mirrors them.
        d_state: SSM state size N.
        drop_path_rate: stochastic depth, linear over encoder blocks, reversed over decoder blocks.
    """

    size_divisor = 32
    uses_selective_scan = True

    def __init__(self, num_classes: int, in_chans: int = 3, depths=(2, 2, 2, 2), depths_decoder=(2, 2, 2, 1),
                 dims=(96, 192, 384, 768), d_state: int = 16, drop_path_rate: float = 0.2):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.vmunet = VSSM(in_chans, num_classes, depths, depths_decoder, dims, d_state, drop_path_rate)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.vmunet(x)


def load_vmamba_pretrained(model: nn.Module, state_dict: dict[str, Any], mirror_decoder: bool = True,
                           name: str = "VM-UNet") -> dict[str, Any]:
    """VM-UNet's ``load_from``: VMamba-S (``vmamba_small_e238_ema.pth``, tensors under ``model``)
    into the encoder, and stage i's blocks mirrored into decoder stage 3−i (block indices kept).
    ``name``: the model the errors name (VM-UNet-V2 loads through this too).

    Every checkpoint key is accounted for in the report: loaded (encoder / mirrored decoder), or
    unused (deeper stage-3 blocks, ``norm``, ``head``, shape mismatches)."""
    from bench.registry import clean_state_dict

    sd = clean_state_dict(state_dict)
    own = model.state_dict()
    updates, encoder, decoder = {}, [], []
    for key, value in sd.items():
        target = f"vmunet.{key}"
        if target in own and own[target].shape == value.shape:
            updates[target] = value
            encoder.append(key)
        if mirror_decoder and key.startswith("layers."):
            stage = int(key.split(".")[1])
            mirrored = f"vmunet.layers_up.{3 - stage}." + key.split(".", 2)[2]
            if ".blocks." in key and mirrored in own and own[mirrored].shape == value.shape:
                updates[mirrored] = value
                decoder.append(key)
    from bench.errors import BenchError, few

    if not updates:
        raise BenchError(f"no tensor of the file matches {name}: is this the VMamba-S (Jan 2024) checkpoint?")
    # VMamba-S fills every encoder tensor (and every mirrored decoder block): a file that leaves some
    # random (keys renamed by a later VMamba release, another d_state) is not the recipe's start
    expected = [k for k in own if k.startswith(("vmunet.patch_embed.", "vmunet.layers."))
                or (mirror_decoder and k.startswith("vmunet.layers_up.") and ".blocks." in k)]
    if unfilled := [k for k in expected if k not in updates]:
        part = "encoder and mirrored decoder" if mirror_decoder else "encoder"
        raise BenchError(f"the file fills {len(expected) - len(unfilled)} of the {len(expected)} {part} tensors "
                         f"VMamba-S fills, leaving {few(unfilled, 3)} "
                         "random: is this the VMamba-S (Jan 2024) checkpoint, for this configuration?")
    model.load_state_dict({**own, **updates}, strict=True)
    used = set(encoder) | set(decoder)
    return {
        "loaded": len(updates), "encoder": len(encoder), "decoder_mirrored": len(decoder),
        "not_loaded_from_file": sorted(k for k in sd if k not in used),
        "not_pretrained_in_model": sorted(k for k in own if k not in updates),
    }


PAPER_CONFIG = FACTS["vmunet"].paper_config  # bench.model_facts: read without torch


@register_model(
    **FACTS["vmunet"].register_args(),
    pretrained={"vmamba": load_vmamba_pretrained},
)
def vmunet(*, num_classes: int, in_chans: int = 3, img_size: int = 224, **overrides: Any) -> VMUNet:
    """VM-UNet with the paper configuration (Synapse: 9 classes at 224²; ISIC: 1 class at 256²).

    ``in_chans`` is the data's channel count; like the authors, the network always takes 3 and
    repeats a 1-channel input."""
    return VMUNet(num_classes=num_classes, in_chans=3, **{**PAPER_CONFIG, **overrides})
