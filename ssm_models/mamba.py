"""A Mamba (v1) block with mamba-ssm's ``Mamba`` semantics and parameter names.

state-spaces/mamba, mamba_ssm/modules/mamba_simple.py: in_proj (no bias) → x, z; causal depthwise
conv1d (kernel d_conv, padding d_conv−1, cut back to L) + SiLU on x; x_proj → (dt, B, C);
dt_proj's weight maps dt (its bias enters the scan as delta_bias, softplus inside); selective scan
with D and the SiLU(z) gate; out_proj (no bias). On CUDA with mamba-ssm and causal-conv1d
importable the fused ``mamba_inner_fn`` path runs (as ``Mamba(use_fast_path=True)`` does) unless
another scan backend is forced; elsewhere our scan and a plain conv1d compute the same function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssm_models.scan import fused_mamba_inner, scan_repr, selective_scan, upcast

__all__ = ["Mamba"]


def dt_bias(d_inner: int, dt_min: float = 1e-3, dt_max: float = 0.1, floor: float = 1e-4) -> torch.Tensor:
    """Inverse softplus of time steps drawn log-uniformly in [dt_min, dt_max] (Mamba's dt init; VMamba's too)."""
    dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


def a_log(rows: int, d_state: int) -> torch.Tensor:
    """S4D-real's A = -(1, 2, ..., N) per row, stored as log(-A) (Mamba's and VMamba's init)."""
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(rows, 1)


class Mamba(nn.Module):
    """Input and output (B, L, d_model)."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        di = self.d_inner
        self.in_proj = nn.Linear(d_model, 2 * di, bias=False)
        self.conv1d = nn.Conv1d(di, di, d_conv, groups=di, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(di, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, di, bias=True)
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt_bias(di, dt_min, dt_max, dt_init_floor))
        self.A_log = nn.Parameter(a_log(di, d_state))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, d_model, bias=False)

    def extra_repr(self) -> str:
        return scan_repr(self)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        batch, L, _ = hidden.shape
        # in_proj and the causal conv applied as mamba-ssm applies them (weight @ x, causal_conv1d_fn):
        # functionally, so thop, which counts module calls only, skips them here as on the authors' models
        A = -torch.exp(upcast(self.A_log))
        fused = fused_mamba_inner(hidden.device, hidden.dtype)  # None for float64: no such kernels
        if fused is not None:
            # mamba-ssm's layout, W @ (d, B·L): xz's time axis is contiguous, so the fused op copies nothing
            xz = (self.in_proj.weight @ hidden.reshape(batch * L, -1).t()).view(-1, batch, L).transpose(0, 1)
            return fused(xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
                         self.out_proj.weight, self.out_proj.bias, A, None, None, upcast(self.D),
                         delta_bias=upcast(self.dt_proj.bias), delta_softplus=True)
        xz = (hidden @ self.in_proj.weight.t()).transpose(1, 2)  # (B, 2·di, L), bit for bit in_proj(hidden)
        x, z = xz.chunk(2, dim=1)
        conv = self.conv1d  # causal: keep the first L outputs of the padded conv
        x = F.silu(F.conv1d(x, conv.weight, conv.bias, padding=conv.padding, groups=conv.groups)[..., :L])
        dt, B, C = torch.split(self.x_proj(x.transpose(1, 2)), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)
        y = selective_scan(x, dt, A, B.transpose(1, 2), C.transpose(1, 2), upcast(self.D), z=z,
                           delta_bias=upcast(self.dt_proj.bias), delta_softplus=True)
        return self.out_proj(y.transpose(1, 2))
