"""Screening metrics with confidence intervals (AUROC bootstrap, Wilson intervals)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_roc_auc


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (MONAI's implementation); NaN if one class is absent."""
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.min(initial=1) == labels.max(initial=0):
        return float("nan")
    return float(compute_roc_auc(torch.as_tensor(scores), torch.as_tensor(labels)))


def auroc_ci(
    labels: np.ndarray, scores: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """AUROC with a stratified percentile-bootstrap CI: (point, low, high)."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    point = auroc(labels, scores)
    if math.isnan(point):
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(labels == 1)
    neg = np.flatnonzero(labels == 0)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        p = scores[rng.choice(pos, pos.size)]
        n = scores[rng.choice(neg, neg.size)]
        stats[b] = _auc_mann_whitney(p, n)
    alpha = (1.0 - level) / 2.0
    return point, float(np.quantile(stats, alpha)), float(np.quantile(stats, 1.0 - alpha))


def _auc_mann_whitney(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score_pos > score_neg) + 0.5 P(tie), via ranks (fast inside the bootstrap loop)."""
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(allv.size)
    sorted_v = allv[order]
    # average ranks for ties
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    r_pos = ranks[: pos.size].sum()
    return float((r_pos - pos.size * (pos.size + 1) / 2.0) / (pos.size * neg.size))


def wilson_ci(successes: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion."""
    if total == 0:
        return float("nan"), float("nan")
    z = _z(level)
    p = successes / total
    denom = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _z(level: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + level / 2.0)


def confusion(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, int]:
    """Counts with ``score >= threshold`` called abnormal."""
    labels = np.asarray(labels).astype(int)
    pred = np.asarray(scores) >= threshold
    return {
        "tp": int(np.sum(pred & (labels == 1))),
        "fn": int(np.sum(~pred & (labels == 1))),
        "tn": int(np.sum(~pred & (labels == 0))),
        "fp": int(np.sum(pred & (labels == 0))),
    }


def _rate(num: int, den: int, level: float) -> dict[str, float]:
    lo, hi = wilson_ci(num, den, level)
    return {"value": num / den if den else float("nan"), "ci_low": lo, "ci_high": hi, "n": den}


def threshold_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float, level: float = 0.95
) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV, accuracy with Wilson CIs, and the confusion matrix."""
    c = confusion(labels, scores, threshold)
    tp, fn, tn, fp = c["tp"], c["fn"], c["tn"], c["fp"]
    return {
        "threshold": float(threshold),
        "confusion": c,
        "sensitivity": _rate(tp, tp + fn, level),
        "specificity": _rate(tn, tn + fp, level),
        "ppv": _rate(tp, tp + fp, level),
        "npv": _rate(tn, tn + fn, level),
        "accuracy": _rate(tp + tn, tp + tn + fp + fn, level),
    }


def summarize(
    labels: np.ndarray, scores: np.ndarray, threshold: float, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """All metrics for one group of images."""
    point, lo, hi = auroc_ci(labels, scores, n_boot=n_boot, seed=seed)
    out = {
        "n": int(len(labels)),
        "n_abnormal": int(np.sum(np.asarray(labels) == 1)),
        "n_normal": int(np.sum(np.asarray(labels) == 0)),
        "auroc": {"value": point, "ci_low": lo, "ci_high": hi},
    }
    out.update(threshold_metrics(labels, scores, threshold))
    return out


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) for every distinct score, thresholds descending."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    thr = np.unique(scores)[::-1]
    P = max(int(labels.sum()), 1)
    N = max(int((labels == 0).sum()), 1)
    tpr = np.array([np.sum((scores >= t) & (labels == 1)) / P for t in thr])
    fpr = np.array([np.sum((scores >= t) & (labels == 0)) / N for t in thr])
    return np.r_[0.0, fpr], np.r_[0.0, tpr], np.r_[np.inf, thr]
