"""ResNet50 classifier: architecture, model files, inference.

The names below are imported on first use (PEP 562): importing :mod:`cxrscreen.model.meta` (the
metadata, no torch) must not import torch and MONAI through this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "LoadedModel": "cxrscreen.model.files",
    "ModelIntegrityError": "cxrscreen.model.meta",
    "build_resnet50": "cxrscreen.model.architecture",
    "load_model": "cxrscreen.model.files",
    "load_torchvision_backbone": "cxrscreen.model.architecture",
    "save_model": "cxrscreen.model.files",
}

__all__ = [
    "LoadedModel",
    "ModelIntegrityError",
    "build_resnet50",
    "load_model",
    "load_torchvision_backbone",
    "save_model",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
