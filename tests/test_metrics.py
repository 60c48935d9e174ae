"""Metrics against values worked out by hand."""

import math

import numpy as np
import pytest

from cxrscreen.training.metrics import auroc, auroc_ci, confusion, roc_curve, threshold_metrics, wilson_ci

LABELS = np.array([0, 0, 0, 1, 1, 1, 0, 1])
SCORES = np.array([0.1, 0.4, 0.35, 0.8, 0.3, 0.9, 0.7, 0.6])


def test_auroc_by_hand():
    # positives 0.8, 0.3, 0.9, 0.6 vs negatives 0.1, 0.4, 0.35, 0.7:
    # pairs won: 0.8→4, 0.3→1, 0.9→4, 0.6→3 = 12 of 16
    assert auroc(LABELS, SCORES) == pytest.approx(12 / 16)
    assert auroc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)  # tie counts half
    assert math.isnan(auroc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_confusion_and_rates_by_hand():
    # threshold 0.5: predicted abnormal = 0.8, 0.9, 0.7, 0.6 → TP 3 (0.8, 0.9, 0.6), FP 1 (0.7), FN 1 (0.3), TN 3
    assert confusion(LABELS, SCORES, 0.5) == {"tp": 3, "fn": 1, "tn": 3, "fp": 1}
    m = threshold_metrics(LABELS, SCORES, 0.5)
    assert m["sensitivity"]["value"] == 0.75 and m["specificity"]["value"] == 0.75
    assert m["ppv"]["value"] == 0.75 and m["npv"]["value"] == 0.75 and m["accuracy"]["value"] == 0.75
    assert confusion(LABELS, SCORES, 0.6)["tp"] == 3  # score == threshold counts as abnormal


def test_wilson_by_hand():
    # 8/10 at 95 %: (0.4902, 0.9433) (standard tables)
    lo, hi = wilson_ci(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_ci(0, 0) != wilson_ci(0, 0)  # NaN
    lo, hi = wilson_ci(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)


def test_bootstrap_ci_brackets_point_and_is_seeded():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = y * 0.5 + rng.normal(0, 0.4, 400)
    p, lo, hi = auroc_ci(y, s, n_boot=300, seed=1)
    assert lo < p < hi and hi - lo < 0.15
    assert auroc_ci(y, s, n_boot=300, seed=1) == (p, lo, hi)


def test_roc_curve_endpoints():
    fpr, tpr, thr = roc_curve(LABELS, SCORES)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
