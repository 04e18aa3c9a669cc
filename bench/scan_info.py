"""Which selective-scan backend a model used (recorded with every run).

Models that run the selective scan set ``uses_selective_scan = True``; others report None.
The backend is the one of the last scan in this thread, else the one that would run on the
model's device (``ssm_models.scan``, imported only for such models).
"""

from __future__ import annotations

from torch import nn


def scan_backend_for(model: nn.Module, ran: bool = True) -> str | None:
    """``ran=False``: the backend that would run on the model's device, whatever ran last (an
    untimed profile's last scans were the counts', on CPU)."""
    if not getattr(model, "uses_selective_scan", False):
        return None
    from ssm_models import scan

    p = next(model.parameters())
    return (scan.last_backend() if ran else None) or scan.default_backend(p.device, p.dtype)
