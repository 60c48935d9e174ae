"""Screening metrics with confidence intervals, on scikit-learn and scipy.stats.

AUROC and the ROC curve come from :mod:`sklearn.metrics`, the AUROC interval from
:func:`scipy.stats.bootstrap` (stratified: positives and negatives resampled separately),
the rate intervals from :meth:`scipy.stats.binomtest(...).proportion_ci <scipy.stats.binomtest>` (Wilson).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN if one class is absent."""
    labels = np.asarray(labels).astype(int)
    if labels.min(initial=1) == labels.max(initial=0):
        return float("nan")
    return float(skm.roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def _auc_u(pos: np.ndarray, neg: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUROC as the Mann-Whitney U of the positives over n_pos * n_neg (vectorised for the bootstrap)."""
    u = stats.mannwhitneyu(pos, neg, axis=axis, method="asymptotic").statistic
    return u / (pos.shape[axis] * neg.shape[axis])


def auroc_ci(
    labels: np.ndarray, scores: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """AUROC with a stratified percentile-bootstrap CI: (point, low, high).

    Positives and negatives are resampled independently, each to its own size
    (``scipy.stats.bootstrap`` with two unpaired samples). The CI is NaN when a class
    has fewer than two images (nothing to resample).
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    point = auroc(labels, scores)
    pos, neg = scores[labels == 1], scores[labels == 0]
    if math.isnan(point) or min(pos.size, neg.size) < 2:
        return point, float("nan"), float("nan")
    res = stats.bootstrap(
        (pos, neg), _auc_u, n_resamples=n_boot, vectorized=True, paired=False,
        confidence_level=level, method="percentile", rng=np.random.default_rng(seed),
    )
    return point, float(res.confidence_interval.low), float(res.confidence_interval.high)


def wilson_ci(successes: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; NaN for an empty denominator."""
    if total == 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(successes), int(total)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def confusion(labels: np.ndarray, scores: np.ndarray, threshold: float | np.ndarray) -> dict[str, int]:
    """Counts with ``score >= threshold`` called abnormal (``threshold``: one, or one per image)."""
    pred = (np.asarray(scores) >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(np.asarray(labels).astype(int), pred, labels=[0, 1]).ravel()
    return {"tp": int(tp), "fn": int(fn), "tn": int(tn), "fp": int(fp)}


def _rate(num: int, den: int, level: float) -> dict[str, float]:
    lo, hi = wilson_ci(num, den, level)
    return {"value": num / den if den else float("nan"), "ci_low": lo, "ci_high": hi, "n": den}


def threshold_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float | np.ndarray, level: float = 0.95
) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV, accuracy with Wilson CIs, and the confusion matrix.

    ``threshold``: one, or one per image (operating points per population); ``threshold`` in the
    result is None when the images' thresholds differ."""
    c = confusion(labels, scores, threshold)
    tp, fn, tn, fp = c["tp"], c["fn"], c["tn"], c["fp"]
    distinct = np.unique(np.asarray(threshold, dtype=np.float64))
    return {
        "threshold": float(distinct[0]) if distinct.size == 1 else None,
        "confusion": c,
        "sensitivity": _rate(tp, tp + fn, level),
        "specificity": _rate(tn, tn + fp, level),
        "ppv": _rate(tp, tp + fp, level),
        "npv": _rate(tn, tn + fn, level),
        "accuracy": _rate(tp + tn, tp + tn + fp + fn, level),
    }


def summarize(
    labels: np.ndarray, scores: np.ndarray, threshold: float | np.ndarray, n_boot: int = 1000, seed: int = 0
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
    """(fpr, tpr, thresholds) for every distinct score, thresholds descending, starting at (0, 0, inf).

    Both classes must be present (scikit-learn gives NaN rates for an absent class).
    """
    fpr, tpr, thr = skm.roc_curve(
        np.asarray(labels).astype(int), np.asarray(scores, dtype=np.float64), drop_intermediate=False
    )
    return fpr, tpr, thr
