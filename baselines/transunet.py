"""TransUNet (R50-ViT-B_16): a ResNet-50 stem + ViT-B/16 encoder with a cascaded upsampler.

Paper: Chen et al., "TransUNet: Transformers Make Strong Encoders for Medical Image
Segmentation", arXiv:2102.04306. Authors' code: Beckschen/TransUNet, networks/vit_seg_modeling.py
and vit_seg_modeling_resnet_skip.py (Apache-2.0), configuration get_r50_b16_config with n_skip 3.
Re-implemented (no code copied) with the authors' module names, so
their checkpoints load strictly (409 entries, 105,277,081 parameters for 9 classes).

Details that matter for weight compatibility, kept as in the code: weight-standardised convs
(population variance, eps 1e-5 inside the square root), GroupNorm(32, eps 1e-6) in the units but a
per-channel ``gn_proj`` (GroupNorm(C, C), eps 1e-5), stem padding 3 and an unpadded 3×3/2 max-pool,
the 1/4-scale skip zero-padded at the bottom/right (55 → 56 at 224²), no class token, separate
q/k/v projections, bilinear align_corners=True up-sampling, a 3×3 head with bias. The ViT token
grid follows ``img_size`` / 16 (the authors' train.py overwrites the config grid the same way).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.modeling import SegmentationModel
from bench.model_facts import FACTS
from bench.registry import register_model

__all__ = ["TransUNet"]


class StdConv2d(nn.Conv2d):
    """Weight-standardised convolution (BiT): per output channel, population variance, eps 1e-5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v, m = torch.var_mean(self.weight, dim=[1, 2, 3], keepdim=True, unbiased=False)
        return F.conv2d(x, (self.weight - m) / torch.sqrt(v + 1e-5), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)


class PreActBottleneck(nn.Module):
    """Despite the name, a post-activation bottleneck with the stride on the 3×3 conv."""

    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1):
        super().__init__()
        self.gn1 = nn.GroupNorm(32, cmid, eps=1e-6)
        self.conv1 = StdConv2d(cin, cmid, 1, bias=False)
        self.gn2 = nn.GroupNorm(32, cmid, eps=1e-6)
        self.conv2 = StdConv2d(cmid, cmid, 3, stride=stride, padding=1, bias=False)
        self.gn3 = nn.GroupNorm(32, cout, eps=1e-6)
        self.conv3 = StdConv2d(cmid, cout, 1, bias=False)
        if stride != 1 or cin != cout:
            self.downsample = StdConv2d(cin, cout, 1, stride=stride, bias=False)
            self.gn_proj = nn.GroupNorm(cout, cout)  # one group per channel, default eps: the authors' choice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.gn_proj(self.downsample(x)) if hasattr(self, "downsample") else x
        y = F.relu(self.gn1(self.conv1(x)))
        y = F.relu(self.gn2(self.conv2(y)))
        return F.relu(residual + self.gn3(self.conv3(y)))


class ResNetV2(nn.Module):
    """The first three ResNet-50 stages; returns the 1/16 map and the skips (deepest first)."""

    def __init__(self, block_units=(3, 4, 9), width: int = 64):
        super().__init__()
        self.root = nn.Sequential(OrderedDict(
            conv=StdConv2d(3, width, 7, stride=2, padding=3, bias=False),
            gn=nn.GroupNorm(32, width, eps=1e-6),
            relu=nn.ReLU(inplace=True),
        ))
        specs = [(width, width * 4, width, 1), (width * 4, width * 8, width * 2, 2), (width * 8, width * 16, width * 4, 2)]
        blocks = OrderedDict()
        for b, ((cin, cout, cmid, stride), n) in enumerate(zip(specs, block_units), start=1):
            units = [(f"unit{u}", PreActBottleneck(cin if u == 1 else cout, cout, cmid, stride if u == 1 else 1))
                     for u in range(1, n + 1)]
            blocks[f"block{b}"] = nn.Sequential(OrderedDict(units))
        self.body = nn.Sequential(blocks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        size = x.shape[-1]
        x = self.root(x)
        features = [x]
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=0)
        for i, block in enumerate(self.body[:-1]):
            x = block(x)
            right = size // 4 // (i + 1)
            pad = right - x.shape[-1]
            # the unpadded max-pool leaves 55×55 at 224²: zero-pad bottom/right to the expected size
            features.append(F.pad(x, (0, pad, 0, pad)) if pad else x)
        return self.body[-1](x), features[::-1]


class Embeddings(nn.Module):
    def __init__(self, img_size: int, hidden: int, dropout: float, resnet_units=(3, 4, 9), resnet_width: int = 64):
        super().__init__()
        self.position_embeddings = nn.Parameter(torch.zeros(1, (img_size // 16) ** 2, hidden))
        self.hybrid_model = ResNetV2(resnet_units, resnet_width)
        # 1×1 "patches" of the 1/16 map (1024 channels in R50)
        self.patch_embeddings = nn.Conv2d(resnet_width * 16, hidden, kernel_size=1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, features = self.hybrid_model(x)
        x = self.patch_embeddings(x).flatten(2).transpose(1, 2)
        return self.dropout(x + self.position_embeddings), features


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, attn_dropout: float):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.out = nn.Linear(hidden, hidden)
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.proj_dropout = nn.Dropout(attn_dropout)  # the code uses the attention rate here too
        # modules, not functional calls, where the authors have them: thop counts them, so the
        # papers' convention (bench.cost.paper_count) gives the authors' number
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        split = lambda t: t.view(b, n, self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        probs = self.attn_dropout(self.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // self.heads)))
        return self.proj_dropout(self.out((probs @ v).transpose(1, 2).reshape(b, n, c)))


class Mlp(nn.Module):
    def __init__(self, hidden: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(hidden, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.normal_(fc.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-LN transformer block (LayerNorm eps 1e-6)."""

    def __init__(self, hidden: int, heads: int, mlp_dim: int, dropout: float, attn_dropout: float):
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-6)
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-6)
        self.ffn = Mlp(hidden, mlp_dim, dropout)
        self.attn = Attention(hidden, heads, attn_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attention_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class Encoder(nn.Module):
    def __init__(self, hidden: int, layers: int, heads: int, mlp_dim: int, dropout: float, attn_dropout: float):
        super().__init__()
        self.layer = nn.ModuleList(Block(hidden, heads, mlp_dim, dropout, attn_dropout) for _ in range(layers))
        self.encoder_norm = nn.LayerNorm(hidden, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.layer:
            x = blk(x)
        return self.encoder_norm(x)


class Transformer(nn.Module):
    def __init__(self, img_size: int, hidden: int, layers: int, heads: int, mlp_dim: int, dropout: float,
                 attn_dropout: float, resnet_units=(3, 4, 9), resnet_width: int = 64):
        super().__init__()
        self.embeddings = Embeddings(img_size, hidden, dropout, resnet_units, resnet_width)
        self.encoder = Encoder(hidden, layers, heads, mlp_dim, dropout, attn_dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, features = self.embeddings(x)
        return self.encoder(x), features


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """The authors' ``Conv2dReLU``: 3×3 conv (no bias) → BatchNorm → ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, skip: int):
        super().__init__()
        self.conv1 = conv_bn_relu(cin + skip, cout)
        self.conv2 = conv_bn_relu(cout, cout)
        self.up = nn.UpsamplingBilinear2d(scale_factor=2)  # bilinear, align_corners=True

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class DecoderCup(nn.Module):
    """Cascaded upsampler: 768 → 512 (conv_more), then 4 blocks to 256/128/64/16; block i takes
    skip i only when i < n_skip."""

    def __init__(self, hidden: int, channels=(256, 128, 64, 16), skips=(512, 256, 64, 16), n_skip: int = 3,
                 head_channels: int = 512):
        super().__init__()
        self.n_skip = n_skip
        self.conv_more = conv_bn_relu(hidden, head_channels)
        ins = (head_channels, *channels[:-1])
        skips = [s if i < n_skip else 0 for i, s in enumerate(skips)]
        self.blocks = nn.ModuleList(DecoderBlock(i, o, s) for i, o, s in zip(ins, channels, skips))

    def forward(self, tokens: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        b, n, c = tokens.shape
        side = int(math.isqrt(n))
        x = self.conv_more(tokens.transpose(1, 2).reshape(b, c, side, side))
        for i, block in enumerate(self.blocks):
            x = block(x, features[i] if i < self.n_skip else None)
        return x


class TransUNet(SegmentationModel):
    """TransUNet R50-ViT-B_16 (authors' ``VisionTransformer``); a 1-channel input is repeated to 3.

    Args:
        num_classes: output channels.
        img_size: input size, a multiple of 16; sets the ViT grid (img_size / 16)².
        hidden, layers, heads, mlp_dim: ViT-B/16 (768, 12, 12, 3072).
        dropout, attn_dropout: 0.1 and 0.0 as in the configuration.
        n_skip: decoder skips used (3).
        resnet_units, resnet_width: the hybrid's ResNet-50 stages 1-3 ((3, 4, 9) units, width 64);
            the decoder's skip widths follow the width (8w, 4w, w).
        head_channels, decoder_channels: the upsampler's widths, 512 then (256, 128, 64, 16) as in
            the configuration (``decoder_channels``; 512 is fixed in the authors' ``DecoderCup``).
        Smaller widths are for tests and the CI grid only.
    """

    size_divisor = 16
    square_input = True
    fixed_grid = "learned position embeddings for a fixed grid"

    def __init__(self, num_classes: int, img_size: int = 224, in_chans: int = 3, hidden: int = 768, layers: int = 12,
                 heads: int = 12, mlp_dim: int = 3072, dropout: float = 0.1, attn_dropout: float = 0.0, n_skip: int = 3,
                 resnet_units: tuple[int, int, int] = (3, 4, 9), resnet_width: int = 64, head_channels: int = 512,
                 decoder_channels: tuple[int, int, int, int] = (256, 128, 64, 16)):
        super().__init__()
        self.num_classes, self.in_chans, self.img_size = num_classes, in_chans, img_size
        self.transformer = Transformer(img_size, hidden, layers, heads, mlp_dim, dropout, attn_dropout,
                                       tuple(resnet_units), resnet_width)
        w = resnet_width
        self.decoder = DecoderCup(hidden, tuple(decoder_channels), skips=(8 * w, 4 * w, w, 16), n_skip=n_skip,
                                  head_channels=head_channels)
        self.segmentation_head = nn.Sequential(nn.Conv2d(decoder_channels[-1], num_classes, 3, padding=1),
                                               nn.Identity())

    @staticmethod
    def img_size_of(state_dict: dict[str, torch.Tensor]) -> int | None:
        """The input size a state_dict of this model was trained at (bench.registry.strict_load's advice):
        its position embedding (1, N, hidden) holds a token of each 16-pixel patch, N = (img_size / 16)²."""
        pos = state_dict.get("transformer.embeddings.position_embeddings")
        n = pos.shape[1] if torch.is_tensor(pos) and pos.ndim == 3 else 0
        return 16 * math.isqrt(n) if n and math.isqrt(n) ** 2 == n else None

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        tokens, features = self.transformer(x)
        return self.segmentation_head(self.decoder(tokens, features))


def _th(a: Any, conv: bool = False) -> torch.Tensor:
    t = torch.as_tensor(a, dtype=torch.float32)
    return t.permute(3, 2, 0, 1) if conv else t  # TF conv kernels are HWIO


def load_vit_npz(model: nn.Module, npz: dict[str, Any]) -> dict[str, Any]:
    """The authors' ``load_from`` for Google's ``R50+ViT-B_16.npz`` (ImageNet-21k): the R50 stem
    and units, the patch embedding, the 12 blocks and the final norm; TF layouts transposed,
    GroupNorm parameters flattened from the file's (1, 1, 1, C) as the authors' ``.view(-1)``; the
    class-token row of the position embedding dropped (or the grid resized with scipy zoom,
    order 1, when the token grid differs). The decoder and head stay as initialised."""
    from scipy import ndimage

    from bench.errors import BenchError

    t = model.transformer
    hidden = t.embeddings.patch_embeddings.out_channels
    used: set[str] = set()

    def get(key: str, conv: bool = False) -> torch.Tensor:
        if key not in npz:
            raise BenchError(f"pretrained npz: missing {key!r}; is this Google's R50+ViT-B_16.npz?")
        used.add(key)
        return _th(npz[key], conv)

    def gn(key: str) -> torch.Tensor:  # old Flax stored GroupNorm scale/bias as (1, 1, 1, C): flattened
        return get(key).reshape(-1)

    new: dict[str, torch.Tensor] = {}
    emb = "transformer.embeddings."
    new[emb + "patch_embeddings.weight"] = get("embedding/kernel", conv=True)
    new[emb + "patch_embeddings.bias"] = get("embedding/bias")
    pos = get("Transformer/posembed_input/pos_embedding")
    n_new = t.embeddings.position_embeddings.shape[1]
    if pos.shape[1] == n_new + 1:
        pos = pos[:, 1:]
    elif pos.shape[1] != n_new:
        grid = pos[0, 1:].numpy()
        old, side = int(math.isqrt(grid.shape[0])), int(math.isqrt(n_new))
        grid = ndimage.zoom(grid.reshape(old, old, -1), (side / old, side / old, 1), order=1)
        pos = torch.from_numpy(grid.reshape(1, side * side, -1))
    new[emb + "position_embeddings"] = pos
    enc = "transformer.encoder."
    new[enc + "encoder_norm.weight"] = get("Transformer/encoder_norm/scale")
    new[enc + "encoder_norm.bias"] = get("Transformer/encoder_norm/bias")
    for i in range(len(t.encoder.layer)):
        src, dst = f"Transformer/encoderblock_{i}/", f"{enc}layer.{i}."
        for ln, name in (("LayerNorm_0", "attention_norm"), ("LayerNorm_2", "ffn_norm")):
            new[dst + f"{name}.weight"] = get(src + f"{ln}/scale")
            new[dst + f"{name}.bias"] = get(src + f"{ln}/bias")
        for part in ("query", "key", "value", "out"):
            new[dst + f"attn.{part}.weight"] = get(src + f"MultiHeadDotProductAttention_1/{part}/kernel").reshape(hidden, hidden).t()
            new[dst + f"attn.{part}.bias"] = get(src + f"MultiHeadDotProductAttention_1/{part}/bias").reshape(-1)
        for dense, fc in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            new[dst + f"ffn.{fc}.weight"] = get(src + f"MlpBlock_3/{dense}/kernel").t()
            new[dst + f"ffn.{fc}.bias"] = get(src + f"MlpBlock_3/{dense}/bias")
    res = "transformer.embeddings.hybrid_model."
    new[res + "root.conv.weight"] = get("conv_root/kernel", conv=True)
    new[res + "root.gn.weight"] = gn("gn_root/scale")
    new[res + "root.gn.bias"] = gn("gn_root/bias")
    for bname, block in t.embeddings.hybrid_model.body.named_children():
        for uname, unit in block.named_children():
            src, dst = f"{bname}/{uname}/", f"{res}body.{bname}.{uname}."
            for n in (1, 2, 3):
                new[dst + f"conv{n}.weight"] = get(src + f"conv{n}/kernel", conv=True)
                new[dst + f"gn{n}.weight"] = gn(src + f"gn{n}/scale")
                new[dst + f"gn{n}.bias"] = gn(src + f"gn{n}/bias")
            if hasattr(unit, "downsample"):
                new[dst + "downsample.weight"] = get(src + "conv_proj/kernel", conv=True)
                new[dst + "gn_proj.weight"] = gn(src + "gn_proj/scale")
                new[dst + "gn_proj.bias"] = gn(src + "gn_proj/bias")
    own = model.state_dict()
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in new.items() if v.shape != own[k].shape]
    if wrong:
        raise BenchError("pretrained npz does not fit this TransUNet: " + "; ".join(wrong[:5]))
    model.load_state_dict({**own, **new}, strict=True)
    return {"loaded": len(new), "not_loaded_from_file": sorted(set(npz) - used),
            "not_pretrained_in_model": sorted(k for k in own if k not in new)}


PAPER_CONFIG = FACTS["transunet"].paper_config  # bench.model_facts: read without torch


@register_model(
    **FACTS["transunet"].register_args(),
    pretrained={"vit_npz": load_vit_npz},
)
def transunet(*, num_classes: int, in_chans: int = 3, img_size: int = 224, **overrides: Any) -> TransUNet:
    """TransUNet with the authors' Synapse configuration; ``img_size`` must be a multiple of 16."""
    if img_size % 16:
        from bench.modeling import size_error

        raise size_error("transunet", img_size, 16, "its ViT grid of 16-pixel patches needs")
    return TransUNet(num_classes=num_classes, img_size=img_size, in_chans=3, **{**PAPER_CONFIG, **overrides})
