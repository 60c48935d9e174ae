"""The Grad-CAM overlay of a report page: the film in grey under a colour map whose opacity follows the CAM."""

from __future__ import annotations

from functools import cache

import numpy as np

CMAP = "turbo"
ALPHA_MAX = 0.6  # overlay opacity at CAM = 1; opacity ∝ CAM, so weak evidence leaves the film visible


@cache
def _lut() -> np.ndarray:
    import matplotlib

    return matplotlib.colormaps[CMAP](np.linspace(0.0, 1.0, 256))[:, :3].astype(np.float32)


def overlay(grey: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """RGB uint8: grey film under the colour map, opacity ∝ CAM (``cam`` already at ``grey``'s shape)."""
    cam = np.clip(cam, 0.0, 1.0).astype(np.float32, copy=False)
    rgb = _lut()[np.rint(cam * 255.0).astype(np.uint8)]
    alpha = (ALPHA_MAX * cam)[..., None]
    out = (1.0 - alpha) * grey.astype(np.float32, copy=False)[..., None] + alpha * rgb
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
