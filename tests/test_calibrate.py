import numpy as np
import pandas as pd
import pytest

from cxrscreen.populations import OperatingPoints
from cxrscreen.training.calibrate import (
    CalibrateConfig,
    CalibrationError,
    calibrate,
    pick_threshold,
    rows_to_calibrate,
)
from cxrscreen.training.metrics import threshold_metrics, wilson_ci


def test_known_distribution_meets_target_and_is_highest():
    rng = np.random.default_rng(0)
    neg = rng.normal(0.3, 0.1, 2000)
    pos = rng.normal(0.7, 0.1, 400)
    y = np.r_[np.zeros(2000), np.ones(400)]
    s = np.r_[neg, pos]
    t = pick_threshold(y, s, 0.95)
    sens = threshold_metrics(y, s, t)["sensitivity"]["value"]
    assert sens >= 0.95
    # any higher threshold (the next positive score up) drops below the target
    higher = np.sort(pos)[np.sort(pos) > t][0]
    assert threshold_metrics(y, s, higher)["sensitivity"]["value"] < 0.95
    # theory: the 5th percentile of N(0.7, 0.1) is 0.7 - 1.645 * 0.1
    assert t == pytest.approx(0.7 - 1.645 * 0.1, abs=0.03)


def test_lower_bound_option_is_stricter():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(300), np.ones(100)]
    s = np.r_[rng.uniform(0, 0.6, 300), rng.uniform(0.3, 1.0, 100)]
    t_point = pick_threshold(y, s, 0.9)
    t_lb = pick_threshold(y, s, 0.9, require_lower_bound=True)
    assert t_lb < t_point
    tp = int(np.sum(s[y == 1] >= t_lb))
    assert wilson_ci(tp, 100)[0] >= 0.9


def test_unreachable_targets():
    with pytest.raises(ValueError):
        pick_threshold(np.array([0, 0]), np.array([0.1, 0.2]), 0.95)
    with pytest.raises(ValueError):
        pick_threshold(np.array([1, 1, 0]), np.array([0.9, 0.8, 0.1]), 0.99, require_lower_bound=True)


def test_calibrate_config_refuses_the_test_split_and_impossible_targets() -> None:
    with pytest.raises(CalibrationError, match="test split"):
        CalibrateConfig("m.csv", "test")
    assert CalibrateConfig("m.csv", "test", allow_test=True).split == "test"
    with pytest.raises(CalibrationError, match="target-sensitivity"):
        CalibrateConfig("m.csv", target_sensitivity=1.5)


def test_calibrate_sets_one_population_point_on_its_rows() -> None:
    df = pd.DataFrame({"label": [1, 1, 0, 0, 1, 0], "dataset": "d",
                       "population": ["adult", "adult", "adult", "pediatric (1-5 y)", "pediatric", "pediatric"]})
    scores = np.array([0.9, 0.6, 0.2, 0.7, 0.8, 0.1])
    single = OperatingPoints.from_meta({"threshold": 0.5})
    cfg = CalibrateConfig("m.csv", population="pediatric", target_sensitivity=1.0)
    points, rows = rows_to_calibrate(single, df, cfg)
    assert points.names == ("pediatric", "adult") and list(rows["label"]) == [0, 1, 0]
    got = calibrate({"threshold": 0.5, "sha256": "x"}, points, rows, scores[3:], cfg)
    assert got.threshold == 0.8 and got.n == 3 and "sha256" not in got.meta
    meta_points = OperatingPoints.from_meta(got.meta)
    assert meta_points["pediatric"].threshold == 0.8 and meta_points["adult"].threshold == 0.5
    with pytest.raises(CalibrationError, match="one threshold per population"):
        rows_to_calibrate(meta_points, df, CalibrateConfig("m.csv"))
    with pytest.raises(CalibrationError, match="no 'population' column"):
        rows_to_calibrate(single, df.drop(columns="population"), cfg)
