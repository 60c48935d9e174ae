"""Metrics against values worked out by hand, independent reference code and the shipped evaluation."""

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from cxrscreen.training.metrics import (
    auroc,
    auroc_ci,
    confusion,
    roc_curve,
    summarize,
    threshold_metrics,
    wilson_ci,
)

ROOT = Path(__file__).resolve().parents[1]
LABELS = np.array([0, 0, 0, 1, 1, 1, 0, 1])
SCORES = np.array([0.1, 0.4, 0.35, 0.8, 0.3, 0.9, 0.7, 0.6])
RATES = ("sensitivity", "specificity", "ppv", "npv", "accuracy")


def _pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Reference: the share of (positive, negative) pairs ranked right, ties counting half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    won = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return won / (pos.size * neg.size)


def _wilson_formula(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Reference: the Wilson score interval written out (Wilson 1927)."""
    z = norm.ppf(0.5 + level / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def _noisy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.round(y * 0.5 + rng.normal(0, 0.4, n), 2)  # rounded: many ties


def test_auroc_by_hand():
    # positives 0.8, 0.3, 0.9, 0.6 vs negatives 0.1, 0.4, 0.35, 0.7:
    # pairs won: 0.8→4, 0.3→1, 0.9→4, 0.6→3 = 12 of 16
    assert auroc(LABELS, SCORES) == pytest.approx(12 / 16)
    assert auroc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)  # tie counts half
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auroc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.0
    assert auroc(np.array([0, 1, 0, 1]), np.array([0.2, 0.2, 0.1, 0.3])) == pytest.approx(3.5 / 4)
    assert math.isnan(auroc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_auroc_matches_pairwise_reference_with_ties():
    y, s = _noisy(150, seed=3)
    assert auroc(y, s) == pytest.approx(_pairwise_auc(y, s), abs=1e-12)


def test_confusion_and_rates_by_hand():
    # threshold 0.5: predicted abnormal = 0.8, 0.9, 0.7, 0.6 → TP 3 (0.8, 0.9, 0.6), FP 1 (0.7), FN 1 (0.3), TN 3
    assert confusion(LABELS, SCORES, 0.5) == {"tp": 3, "fn": 1, "tn": 3, "fp": 1}
    m = threshold_metrics(LABELS, SCORES, 0.5)
    assert m["sensitivity"]["value"] == 0.75 and m["specificity"]["value"] == 0.75
    assert m["ppv"]["value"] == 0.75 and m["npv"]["value"] == 0.75 and m["accuracy"]["value"] == 0.75
    assert confusion(LABELS, SCORES, 0.6)["tp"] == 3  # score == threshold counts as abnormal
    # one class only: the other class's cells are zero, its rates NaN with NaN intervals
    assert confusion(np.array([1, 1]), np.array([0.9, 0.1]), 0.5) == {"tp": 1, "fn": 1, "tn": 0, "fp": 0}
    spec = threshold_metrics(np.array([1, 1]), np.array([0.9, 0.1]), 0.5)["specificity"]
    assert spec["n"] == 0 and all(math.isnan(spec[k]) for k in ("value", "ci_low", "ci_high"))


def test_wilson_textbook_values():
    # 81/263 at 95 %: (0.2553, 0.3662); 8/10: (0.4902, 0.9433); 10/10: (0.7225, 1)
    for (k, n), (lo_ref, hi_ref) in {(81, 263): (0.2553, 0.3662), (8, 10): (0.4902, 0.9433),
                                     (10, 10): (0.7225, 1.0)}.items():
        lo, hi = wilson_ci(k, n)
        assert lo == pytest.approx(lo_ref, abs=1e-4) and hi == pytest.approx(hi_ref, abs=1e-4)
    assert wilson_ci(0, 10)[0] == 0.0 and wilson_ci(10, 10)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_ci(0, 0))


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_wilson_matches_formula(level):
    for k, n in [(1, 7), (81, 263), (50, 51), (300, 1000)]:
        assert wilson_ci(k, n, level) == pytest.approx(_wilson_formula(k, n, level), abs=1e-12)
    assert wilson_ci(3, 10, 0.99)[1] - wilson_ci(3, 10, 0.99)[0] > wilson_ci(3, 10, 0.9)[1] - wilson_ci(3, 10, 0.9)[0]


def test_bootstrap_ci_is_seeded_and_matches_a_stratified_reference():
    y, s = _noisy(400, seed=0)
    p, lo, hi = auroc_ci(y, s, n_boot=1000, seed=1)
    assert lo < p < hi and hi - lo < 0.15
    assert auroc_ci(y, s, n_boot=1000, seed=1) == (p, lo, hi)
    # reference: resample positives and negatives separately, each to its own size, percentile interval
    rng = np.random.default_rng(123)
    pos, neg = s[y == 1], s[y == 0]
    boot = []
    for _ in range(1000):
        bp, bn = rng.choice(pos, pos.size), rng.choice(neg, neg.size)
        boot.append(_pairwise_auc(np.r_[np.ones(bp.size), np.zeros(bn.size)], np.r_[bp, bn]))
    # two independent Monte Carlo estimates of the same percentiles: loose on purpose
    assert lo == pytest.approx(np.quantile(boot, 0.025), abs=0.01)
    assert hi == pytest.approx(np.quantile(boot, 0.975), abs=0.01)


def test_bootstrap_ci_degenerate_inputs():
    assert all(math.isnan(v) for v in auroc_ci(np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3])))
    p, lo, hi = auroc_ci(np.array([0, 0, 1]), np.array([0.1, 0.2, 0.3]))  # one positive: nothing to resample
    assert p == 1.0 and math.isnan(lo) and math.isnan(hi)
    assert auroc_ci(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4]), n_boot=200) == (1.0, 1.0, 1.0)


def test_roc_curve_matches_threshold_sweep():
    y, s = _noisy(120, seed=5)
    fpr, tpr, thr = roc_curve(y, s)
    assert (fpr[0], tpr[0], thr[0]) == (0.0, 0.0, np.inf) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    distinct = np.unique(s)[::-1]
    np.testing.assert_array_equal(thr[1:], distinct)  # every distinct score, descending
    for t, f, r in zip(distinct, fpr[1:], tpr[1:], strict=True):
        assert f == np.mean(s[y == 0] >= t) and r == np.mean(s[y == 1] >= t)
    area = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)  # trapezoids under the curve
    assert area == pytest.approx(auroc(y, s), abs=1e-12)


def _shipped(split: str) -> tuple[dict, pd.DataFrame]:
    folder = ROOT / "docs" / "evaluation" / split
    return json.loads((folder / "metrics.json").read_text()), pd.read_csv(folder / "scores.csv")


@pytest.mark.parametrize("split", ["val", "test"])
def test_recomputes_the_shipped_evaluation(split):
    """docs/evaluation/<split>: the per-image scores give back the recorded figures (and the model's copy)."""
    recorded, df = _shipped(split)
    key = f"{recorded['meta']['manifest_name']}:{split}"
    model_copy = json.loads((ROOT / "cxrscreen/models/default.json").read_text())["metrics"][key]
    assert model_copy["threshold"] == recorded["meta"]["threshold"]
    # each image at its own operating point (a model with one per population) or the one threshold
    thr = df["threshold"].to_numpy() if "threshold" in df.columns else recorded["meta"]["threshold"]
    y, s = df["label"].to_numpy(), df["probability"].to_numpy()
    groups = {str(k): v for k, v in df.groupby("dataset").indices.items()} | {"pooled": np.arange(len(df))}
    if "population" in df.columns:
        groups |= {f"population:{k}": v for k, v in df.groupby("population").indices.items()
                   if df["label"].to_numpy()[v].min() != df["label"].to_numpy()[v].max()}
    assert set(groups) == set(recorded["metrics"])
    for name, idx in groups.items():
        t = thr[idx] if isinstance(thr, np.ndarray) else thr
        got, want = summarize(y[idx], s[idx], t, n_boot=recorded["meta"]["n_boot"]), recorded["metrics"][name]
        assert (got["n"], got["n_abnormal"], got["n_normal"]) == (want["n"], want["n_abnormal"], want["n_normal"])
        assert got["confusion"] == want["confusion"] == model_copy["groups"][name]["confusion"]
        for rate in RATES:
            assert got[rate]["n"] == want[rate]["n"]
            for key in ("value", "ci_low", "ci_high"):
                assert got[rate][key] == pytest.approx(want[rate][key], abs=1e-12, nan_ok=True), (name, rate, key)
        assert got["auroc"]["value"] == pytest.approx(want["auroc"]["value"], abs=1e-12, nan_ok=True)
        # seeded bootstrap, but a different resampling stream from the one that wrote the file
        for key in ("ci_low", "ci_high"):
            assert got["auroc"][key] == pytest.approx(want["auroc"][key], abs=0.01, nan_ok=True), (name, key)
