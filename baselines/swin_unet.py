"""Swin-Unet: a pure-Transformer U-shaped network of Swin blocks.

Paper: Cao et al., "Swin-Unet: Unet-like Pure Transformer for Medical Image Segmentation",
ECCV Workshops 2022, arXiv:2105.05537. Authors' code: HuCaoFighting/Swin-Unet@f48f623,
networks/swin_transformer_unet_skip_expand_decoder_sys.py (``SwinTransformerSys``, wrapped as
``.swin_unet`` by ``SwinUnet``), config swin_tiny_patch4_window7_224_lite (MIT licence).
Re-implemented (no code copied) with the authors' names and their
persistent ``relative_position_index`` / ``attn_mask`` buffers, so their checkpoints load strictly.

As in the authors' code: encoder depths [2, 2, 2, 2] with the decoder mirroring them (the yaml's
decoder depths are never used), skips taken from the INPUTS of encoder stages 0–2, concatenation
+ linear back-projection, PatchExpand, a final ×4 expand and a bias-free 1×1 output conv; the
token grid is fixed by ``img_size``. Smaller inputs need a window that tiles every stage: when
``img_size`` is not a multiple of 32·window (with four stages), the largest window ≤ 7 that tiles the grid is chosen
and recorded in the run's model config (a warning says so).
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.modeling import SegmentationModel, init_linear_and_norm
from bench.model_facts import FACTS
from bench.registry import register_model
from ssm_models.vss import DropPath, PatchExpand2D, PatchMerging2D

__all__ = ["SwinUnet", "SwinTransformerSys"]


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B·nW, ws, ws, C)."""
    b, h, w, c = x.shape
    return x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    b = windows.shape[0] // (h * w // ws // ws)
    return windows.view(b, h // ws, w // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


class WindowAttention(nn.Module):
    """Window multi-head self-attention with a learned relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        ws = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * ws - 1) + rel[..., 1])
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.softmax = nn.Softmax(dim=-1)  # a module as in the authors' code: thop counts it
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(b // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)).view(-1, self.num_heads, n, n)
        x = (self.softmax(attn) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinTransformerBlock(nn.Module):
    """(Shifted) window attention + MLP on a fixed H×W token grid; tokens (B, L, C)."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window_size: int, shift: bool, drop_path: float,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.resolution = resolution
        self.window_size = min(window_size, resolution)
        self.shift_size = self.window_size // 2 if shift and resolution > window_size else 0
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.window_size, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer("attn_mask", self._mask() if self.shift_size else None)

    def _mask(self) -> torch.Tensor:
        """-100 between tokens that the cyclic shift brought together from different regions."""
        r, ws, s = self.resolution, self.window_size, self.shift_size
        img = torch.zeros(1, r, r, 1)
        cnt = 0
        for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                img[:, hs, wsl, :] = cnt
                cnt += 1
        win = window_partition(img, ws).view(-1, ws * ws)
        diff = win.unsqueeze(1) - win.unsqueeze(2)
        return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, L, c = x.shape
        r, ws, s = self.resolution, self.window_size, self.shift_size
        h = self.norm1(x).view(b, r, r, c)
        if s:
            h = torch.roll(h, shifts=(-s, -s), dims=(1, 2))
        h = self.attn(window_partition(h, ws).view(-1, ws * ws, c), self.attn_mask)
        h = window_reverse(h.view(-1, ws, ws, c), ws, r, r)
        if s:
            h = torch.roll(h, shifts=(s, s), dims=(1, 2))
        x = x + self.drop_path(h.reshape(b, L, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _grid(fn: nn.Module, x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Apply a (B, H, W, C) module to (B, L, C) tokens."""
    b, _, c = x.shape
    out = fn(x.view(b, resolution, resolution, c))
    return out.reshape(b, -1, out.shape[-1])


class BasicLayer(nn.Module):
    """Encoder stage: Swin blocks, then (stages 0–2) patch merging."""

    def __init__(self, dim, resolution, depth, num_heads, window_size, drop_path, downsample: bool):
        super().__init__()
        self.resolution = resolution
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, resolution, num_heads, window_size, i % 2 == 1, drop_path[i]) for i in range(depth)
        )
        self.downsample = PatchMerging2D(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return _grid(self.downsample, x, self.resolution) if self.downsample is not None else x


class BasicLayerUp(nn.Module):
    """Decoder stage: Swin blocks, then (stages 1–2) 2× patch expansion."""

    def __init__(self, dim, resolution, depth, num_heads, window_size, drop_path, upsample: bool):
        super().__init__()
        self.resolution = resolution
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, resolution, num_heads, window_size, i % 2 == 1, drop_path[i]) for i in range(depth)
        )
        self.upsample = PatchExpand2D(dim, dim // 2, scale=2) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return _grid(self.upsample, x, self.resolution) if self.upsample is not None else x


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 4):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinTransformerSys(nn.Module):
    def __init__(self, img_size: int, in_chans: int, num_classes: int, embed_dim: int, depths, num_heads,
                 window_size: int, drop_path_rate: float, patch_size: int = 4):
        super().__init__()
        n = len(depths)
        self.grid = img_size // patch_size
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        rates = [dpr[sum(depths[:i]):sum(depths[: i + 1])] for i in range(n)]
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        self.layers = nn.ModuleList(
            BasicLayer(embed_dim * 2**i, self.grid // 2**i, depths[i], num_heads[i], window_size, rates[i], i < n - 1)
            for i in range(n)
        )
        self.layers_up = nn.ModuleList()
        self.concat_back_dim = nn.ModuleList()
        for i in range(n):
            j = n - 1 - i  # the mirrored encoder stage
            dim = embed_dim * 2**j
            if i == 0:
                self.layers_up.append(PatchExpand2D(dim, dim // 2, scale=2))
                self.concat_back_dim.append(nn.Identity())
            else:
                self.layers_up.append(BasicLayerUp(dim, self.grid // 2**j, depths[j], num_heads[j], window_size,
                                                   rates[j], i < n - 1))
                self.concat_back_dim.append(nn.Linear(2 * dim, dim))
        self.norm = nn.LayerNorm(embed_dim * 2 ** (n - 1))
        self.norm_up = nn.LayerNorm(embed_dim)
        self.up = PatchExpand2D(embed_dim, embed_dim, scale=4)
        self.output = nn.Conv2d(embed_dim, num_classes, 1, bias=False)
        self.apply(init_linear_and_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        skips = []
        for layer in self.layers:
            skips.append(x)
            x = layer(x)
        x = self.norm(x)
        n = len(self.layers)
        for i, layer in enumerate(self.layers_up):
            if i == 0:
                x = _grid(layer, x, self.grid // 2 ** (n - 1))
            else:
                x = layer(self.concat_back_dim[i](torch.cat([x, skips[n - 1 - i]], dim=-1)))
        x = _grid(self.up, self.norm_up(x), self.grid)  # (B, 16·L, C) at full resolution
        b, _, c = x.shape
        side = self.grid * 4
        return self.output(x.view(b, side, side, c).permute(0, 3, 1, 2))


class SwinUnet(SegmentationModel):
    """Swin-Unet (authors' ``SwinUnet``): ``SwinTransformerSys`` under ``.swin_unet``; a 1-channel
    input is repeated to 3. ``img_size`` fixes the token grid (attention masks are buffers)."""

    square_input = True
    fixed_grid = "window attention on a fixed grid"

    def __init__(self, num_classes: int, img_size: int = 224, in_chans: int = 3, embed_dim: int = 96,
                 depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), window_size: int = 7, drop_path_rate: float = 0.2):
        super().__init__()
        self.num_classes, self.in_chans, self.img_size = num_classes, in_chans, img_size
        self.size_divisor = _size_divisor(len(depths))
        self.swin_unet = SwinTransformerSys(img_size, in_chans, num_classes, embed_dim, depths, num_heads,
                                            window_size, drop_path_rate)

    @staticmethod
    def img_size_of(state_dict: dict[str, torch.Tensor]) -> int | None:
        """The input size a state_dict of this model was trained at (bench.registry.strict_load's advice),
        from an encoder stage's shifted-window mask (nW, W², W²): that stage's grid is W·√nW tokens, stage
        L's grid is img_size / 4 / 2^L. None where no block has a mask (no grid larger than its window)."""
        for key, mask in state_dict.items():
            found = re.fullmatch(r"swin_unet\.layers\.(\d+)\.blocks\.\d+\.attn_mask", key)
            if found and torch.is_tensor(mask) and mask.ndim == 3:
                window, windows = math.isqrt(mask.shape[-1]), math.isqrt(mask.shape[0])
                return window * windows * 4 * 2 ** int(found[1])
        return None

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.swin_unet(x)


def _size_divisor(stages: int) -> int:
    """What ``img_size`` must be a multiple of: 4-pixel patches, merged once after each stage but the last."""
    return 4 * 2 ** (stages - 1)


def _window_for(img_size: int, window: int, stages: int) -> int:
    """The largest window ≤ ``window`` that tiles the token grid of every stage (or the grid itself)."""
    grids = [img_size // 4 // 2**i for i in range(stages)]
    if img_size % _size_divisor(stages):  # before the model is built: a grid that does not halve fails inside it
        from bench.modeling import size_error

        raise size_error("swin_unet", img_size, _size_divisor(stages),
                         f"its 4-pixel patches merged {stages - 1} times need")
    for w in range(window, 0, -1):
        if all(g % w == 0 or g <= w for g in grids):
            return w
    return 1


def load_swin_t(model: nn.Module, state_dict: dict[str, Any]) -> dict[str, Any]:
    """The authors' ``load_from``. The Swin-T ImageNet file (tensors under ``model``): every
    ``layers.i.*`` tensor also goes to ``layers_up.(3-i).*`` (Swin-Unet's decoder initialisation);
    tensors whose name or shape does not exist in the model are reported, not loaded. A trained
    Swin-Unet (its keys under ``swin_unet.``; the authors' or ours): everything but the output head,
    which may have other classes (their first branch: fine-tuning on other data)."""
    from bench.errors import BenchError
    from bench.registry import clean_state_dict

    sd = clean_state_dict(state_dict)
    own = model.state_dict()
    if any(k.startswith("swin_unet.") for k in sd):
        return _load_trained_swin_unet(model, sd, own)
    updates: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    resized: set[str] = set()
    for key, value in sd.items():
        targets = [key]
        if key.startswith("layers."):
            stage, rest = key.split(".", 2)[1:]
            targets.append(f"layers_up.{3 - int(stage)}.{rest}")
        for t in targets:
            t, v = f"swin_unet.{t}", value
            if t in own and t.endswith("relative_position_bias_table") and v.shape != own[t].shape \
                    and v.shape[1] == own[t].shape[1]:  # a smaller window, the same heads
                v = _resize_bias_table(v, own[t].shape)
                resized.add(t)
            if t in own and own[t].shape == v.shape:
                updates[t] = v
                used.add(key)
    if not updates:
        raise BenchError("no tensor of the file matches Swin-Unet: is this the Swin-T ImageNet checkpoint?")
    # timm's layout of Swin-T puts each patch merging at the start of the next stage: loaded as it is,
    # the encoder's merging layers would stay random, silently
    unmerged = [k for k in own if k.startswith("swin_unet.layers.") and ".downsample." in k and k not in updates]
    if unmerged:
        raise BenchError(f"the file fills Swin-Unet's encoder but not its patch merging ({unmerged[0]}, "
                         f"{len(unmerged)} tensors): is it timm's layout of Swin-T? Give Microsoft's "
                         "swin_tiny_patch4_window7_224.pth, the authors' file")
    model.load_state_dict({**own, **updates}, strict=True)
    return {"loaded": len(updates), "decoder_copies": sum(k.startswith("swin_unet.layers_up.") for k in updates),
            "resized_bias_tables": len(resized),
            "not_loaded_from_file": sorted(set(sd) - used),
            "not_pretrained_in_model": sorted(k for k in own if k not in updates)}


def _resize_bias_table(table: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A relative-position bias table ((2w-1)², heads) for another window, bicubic over the offset
    grid, as Swin's own fine-tuning code resizes it (at 256² the window is 4, not the file's 7)."""
    heads, (side, new) = table.shape[1], (round(n ** 0.5) for n in (table.shape[0], shape[0]))
    grid = table.T.reshape(1, heads, side, side).float()
    out = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return out.reshape(heads, new * new).T.to(table.dtype).contiguous()


def _load_trained_swin_unet(model: nn.Module, sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict:
    """``load_swin_t``'s branch for a trained Swin-Unet: as the authors, the head (keys containing
    ``output``) stays as built; every other tensor must fit (their non-strict load also fails on a
    shape mismatch), so a file of another size or window is one error naming the tensors."""
    from bench.errors import BenchError

    body = {k: v for k, v in sd.items() if "output" not in k}
    missing = sorted(k for k in own if "output" not in k and k not in body)
    unfit = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in body.items()
             if k in own and own[k].shape != v.shape]
    if missing or unfit:
        raise BenchError(f"a trained Swin-Unet that does not fit this one (other img_size, window or widths?): "
                         f"{'; '.join(unfit[:3] + [f'missing {k}' for k in missing[:3]])}")
    updates = {k: v for k, v in body.items() if k in own}
    model.load_state_dict({**own, **updates}, strict=True)
    return {"loaded": len(updates), "decoder_copies": 0, "not_loaded_from_file": sorted(set(sd) - set(updates)),
            "not_pretrained_in_model": sorted(k for k in own if k not in updates), "trained_model": True}


PAPER_CONFIG = FACTS["swin_unet"].paper_config  # bench.model_facts: read without torch


@register_model(
    **FACTS["swin_unet"].register_args(),
    pretrained={"swin_t": load_swin_t},
)
def swin_unet(*, num_classes: int, in_chans: int = 3, img_size: int = 224, **overrides: Any) -> SwinUnet:
    """Swin-Unet with the authors' Synapse configuration at ``img_size`` (224 in the paper)."""
    cfg = {**PAPER_CONFIG, **overrides}
    window = _window_for(img_size, cfg["window_size"], len(cfg["depths"]))
    if window != cfg["window_size"]:
        warnings.warn(f"swin_unet: window {cfg['window_size']} does not tile a {img_size}² input; using {window} "
                      "(recorded in the record's model_config)", stacklevel=2)
    cfg["window_size"] = window
    model = SwinUnet(num_classes=num_classes, img_size=img_size, in_chans=3, **cfg)
    model.resolved_config = {"window_size": window}
    return model
