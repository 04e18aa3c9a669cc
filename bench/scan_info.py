"""Which selective-scan backend a model used (recorded with every run).

Models that run the selective scan set ``uses_selective_scan = True``; others report None.
The backend is the one of the last scan in this process, else the one that would run on the
model's device (``ssm_models.scan``, imported only for such models).
"""

from __future__ import annotations

import warnings

from torch import nn


def scan_backend_for(model: nn.Module, ran: bool = True) -> str | None:
    """``ran=False``: the backend that would run on the model's device, whatever ran last (an
    untimed profile's last scans were the counts', on CPU)."""
    if not getattr(model, "uses_selective_scan", False):
        return None
    from ssm_models import scan

    p = next(model.parameters())
    return (scan.last_backend() if ran else None) or scan.default_backend(p.device, p.dtype)


def note_scan_use(model: nn.Module, scan_macs: float, name: str) -> None:
    """Where a model's FLOP count and its class's ``uses_selective_scan`` disagree (a plugin that
    forgot it, or set it on a model that never scans): mark this instance as its count says, so that
    its records name a backend where one ran and no other, and say so."""
    says = bool(getattr(model, "uses_selective_scan", False))
    if bool(scan_macs) != says:
        model.uses_selective_scan = not says
        warnings.warn(f"{name}: {type(model).__name__} runs the selective scan but does not set "
                      "uses_selective_scan = True; set it on the class (records and cost tables name the scan "
                      "backend from it)" if not says else
                      f"{name}: {type(model).__name__} sets uses_selective_scan = True but its forward runs no "
                      "selective scan; drop it from the class", stacklevel=2)
