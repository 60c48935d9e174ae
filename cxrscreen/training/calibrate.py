"""Operating-point calibration: the highest threshold that keeps sensitivity at the target."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from cxrscreen.training.metrics import threshold_metrics, wilson_ci


def pick_threshold(
    labels: np.ndarray, scores: np.ndarray, target: float, require_lower_bound: bool = False, level: float = 0.95
) -> float:
    """Highest threshold t (``score >= t`` is abnormal) with sensitivity ≥ ``target``.

    With ``require_lower_bound`` the Wilson lower confidence bound of the sensitivity must
    reach the target instead of the point estimate. Raises ``ValueError`` if unreachable.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError("target sensitivity must be in (0, 1]")
    pos = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(labels) == 1])[::-1]
    n = pos.size
    if n == 0:
        raise ValueError("no abnormal images: sensitivity is undefined")
    k = math.ceil(target * n - 1e-9)  # positives that must be at or above the threshold
    if require_lower_bound:
        while k <= n and wilson_ci(k, n, level)[0] < target:
            k += 1
        if k > n:
            raise ValueError(f"with {n} abnormal images the lower {level:.0%} bound cannot reach {target}")
    k = max(k, 1)
    return float(pos[k - 1])


def calibration_record(
    labels: np.ndarray, scores: np.ndarray, threshold: float, target: float, require_lower_bound: bool, split: str,
    manifest: str,
) -> dict[str, Any]:
    """What goes into the model metadata under ``calibration``."""
    m = threshold_metrics(labels, scores, threshold)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "manifest": manifest,
        "split": split,
        "target_sensitivity": target,
        "require_lower_bound": require_lower_bound,
        "threshold": threshold,
        "n": int(len(labels)),
        "sensitivity": m["sensitivity"],
        "specificity": m["specificity"],
        "confusion": m["confusion"],
    }
