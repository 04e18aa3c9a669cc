"""SS2D and the VSS block shared by VM-UNet and VM-UNet-V2 (the early-2024 VMamba layout).

Facts from JCruan519/VM-UNet models/vmunet/vmamba.py (commit 43c495b), which VM-UNet-V2 copies:
SS2D projects C → 2·(2C) (x and gate z), runs a depthwise 3×3 conv + SiLU on x, scans it in four
directions (row-major, column-major, and both reversed) with ONE selective-scan call over all
4·2C channels (grouped B/C of shape (batch, 4, N, L)), maps the four outputs back to row-major
order and sums them, then LayerNorm, SiLU(z) gate and a linear back to C. Parameter names and the
stacked per-direction layout (``x_proj_weight``, ``dt_projs_weight``, ``dt_projs_bias``,
``A_logs``, ``Ds``) are the authors', so their checkpoints load unchanged. Tensors are
channels-last (B, H, W, C) throughout, as in the authors' code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssm_models.mamba import a_log, dt_bias
from ssm_models.scan import scan_repr, selective_scan, upcast

__all__ = ["SS2D", "VSSBlock", "PatchEmbed2D", "PatchMerging2D", "PatchExpand2D", "DropPath"]


class DropPath(nn.Module):
    """Stochastic depth per sample (identical to timm's DropPath; written here to keep the SSM
    models free of timm/torchvision imports)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SS2D(nn.Module):
    """2-D selective scan in four directions. Input and output (B, H, W, d_model)."""

    K = 4  # scan directions

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 3, expand: int = 2):
        super().__init__()
        self.d_model, self.d_state = d_model, d_state
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        di, r, k = self.d_inner, self.dt_rank, self.K
        self.in_proj = nn.Linear(d_model, 2 * di, bias=False)
        self.conv2d = nn.Conv2d(di, di, d_conv, padding=(d_conv - 1) // 2, groups=di, bias=True)
        # stacked per-direction projections, initialised as K separate nn.Linear would be
        x_proj = [nn.Linear(di, r + 2 * d_state, bias=False).weight for _ in range(k)]
        self.x_proj_weight = nn.Parameter(torch.stack(x_proj))  # (K, r + 2N, di)
        std = r**-0.5
        self.dt_projs_weight = nn.Parameter(torch.empty(k, di, r).uniform_(-std, std))
        self.dt_projs_bias = nn.Parameter(torch.stack([dt_bias(di) for _ in range(k)]))  # (K, di)
        self.A_logs = nn.Parameter(a_log(k * di, d_state))  # (K·di, N); A = -exp(A_logs)
        self.Ds = nn.Parameter(torch.ones(k * di))
        self.out_norm = nn.LayerNorm(di)
        self.out_proj = nn.Linear(di, d_model, bias=False)

    def extra_repr(self) -> str:
        return scan_repr(self)

    def forward_core(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, di, H, W) -> sum of the four directions' outputs, row-major (B, di, L)."""
        b, c, h, w = x.shape
        L, k = h * w, self.K
        row = x.reshape(b, c, L)
        col = x.transpose(2, 3).reshape(b, c, L)
        xs = torch.stack([row, col, row.flip(-1), col.flip(-1)], dim=1)  # (B, K, di, L)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        y = selective_scan(
            upcast(xs).reshape(b, k * c, L), upcast(dts).reshape(b, k * c, L),
            -torch.exp(upcast(self.A_logs)), upcast(Bs), upcast(Cs), upcast(self.Ds),
            delta_bias=upcast(self.dt_projs_bias).reshape(-1), delta_softplus=True,
        ).reshape(b, k, c, L)
        back = y[:, 2:].flip(-1)  # directions 2, 3 un-reversed
        col_to_row = lambda t: t.reshape(b, c, w, h).transpose(2, 3).reshape(b, c, L)  # noqa: E731
        return y[:, 0] + back[:, 0] + col_to_row(y[:, 1]) + col_to_row(back[:, 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2).contiguous()))
        y = self.forward_core(x).transpose(1, 2).reshape(b, h, w, -1)
        # the scan's float32 sum enters the norm as it is (its weight's dtype: float32 under autocast,
        # as the authors' code; a model cast to bf16 whole gets bf16): a cast to z's half precision
        # before the norm rounded it, which the authors' forward never does
        y = self.out_norm(y.to(self.out_norm.weight.dtype)) * F.silu(z)
        return self.out_proj(y)


class VSSBlock(nn.Module):
    """x + DropPath(SS2D(LayerNorm(x))); no MLP. LayerNorm eps 1e-5 as the layers pass it."""

    def __init__(self, dim: int, drop_path: float = 0.0, d_state: int = 16):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = SS2D(d_model=dim, d_state=d_state)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.self_attention(self.ln_1(x)))


class PatchEmbed2D(nn.Module):
    """Non-overlapping patch×patch conv, channels-last output, LayerNorm."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging2D(nn.Module):
    """2×2 → channels: concat order (even row, even col), (odd, even), (even, odd), (odd, odd) —
    the order of the authors' weights — then LayerNorm(4C) and Linear 4C → 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class PatchExpand2D(nn.Module):
    """Linear in → scale²·out channels read as (p1, p2, c), p1 outermost, to a scale× larger grid,
    then LayerNorm(out). VM-UNet: ``PatchExpand2D(dim)`` maps 2·dim → dim at 2×;
    ``Final_PatchExpand2D(dim)`` maps dim → dim/4 at 4×."""

    def __init__(self, in_dim: int, out_dim: int, scale: int):
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(in_dim, scale * scale * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        s = self.scale
        x = self.expand(x).reshape(b, h, w, s, s, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, h * s, w * s, -1)
        return self.norm(x)
