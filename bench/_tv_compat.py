"""Make torchvision's Python parts importable next to a CPU-only torch.

PyPI's torchvision 0.28.0 is a CUDA build: its ``_C.so`` links CUDA torch libraries, fails to load
next to the CPU torch wheel, and ``import torchvision`` then dies in ``_meta_registrations`` with
"operator torchvision::nms does not exist". timm and smp need torchvision only for pure-Python
pieces, so defining the two op schemas that the meta registrations refer to is enough.

``ensure_torchvision()`` does nothing where the extension loads normally (any matching CPU or
CUDA build); call it before the first ``import torchvision`` (timm, smp).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

_done = False


def _extension_loads(pkg_dir: str) -> bool:
    import torch

    libs = glob.glob(os.path.join(pkg_dir, "_C*.so")) + glob.glob(os.path.join(pkg_dir, "_C*.pyd"))
    if not libs:
        return False
    try:
        torch.ops.load_library(libs[0])
    except (OSError, RuntimeError):
        return False
    return True


def ensure_torchvision() -> None:
    """Define ``torchvision::nms``/``qnms`` schemas iff torchvision's C extension cannot load."""
    global _done
    if _done or "torchvision" in sys.modules:
        _done = True
        return
    _done = True
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return  # not installed: the importing library reports that itself
    if _extension_loads(spec.submodule_search_locations[0]):
        return
    import torch

    lib = torch.library.Library("torchvision", "DEF")  # noqa: F841 (kept alive below)
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    globals()["_lib"] = lib  # a Library deregisters its ops when garbage-collected
