"""Which selective-scan backend a model would use (recorded with every run).

Models without a selective scan report None. SSM models (issue: ssm_models) expose
``scan_backend`` themselves; this indirection keeps bench/ free of model imports.
"""

from __future__ import annotations

from torch import nn


def scan_backend_for(model: nn.Module) -> str | None:
    backend = getattr(model, "scan_backend", None)
    return backend() if callable(backend) else backend
