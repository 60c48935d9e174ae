"""Operating-point calibration: the highest threshold that keeps sensitivity at the target."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from cxrscreen.options import OptionError
from cxrscreen.populations import OperatingPoints, manifest_population
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


class CalibrationError(OptionError):
    """A calibration that cannot be made as asked (the test split, no rows of the population, a target no
    threshold reaches): the CLI's exit code 2."""


@dataclass(frozen=True)
class CalibrateConfig:
    """What ``calibrate`` does: the split it scores (``manifest_name`` is recorded), the sensitivity it keeps
    (the Wilson lower bound with ``require_lower_bound``; in every ``dataset`` group with ``per_dataset``),
    the operating point it sets (``population``: that population's, on its rows), and the new model's name."""

    manifest_name: str
    split: str = "val"
    target_sensitivity: float = 0.95
    require_lower_bound: bool = False
    per_dataset: bool = False
    population: str | None = None
    name: str | None = None
    allow_test: bool = False

    def __post_init__(self) -> None:
        if self.split == "test" and not self.allow_test:
            raise CalibrationError("refusing to calibrate on the test split: choose the threshold on validation data")
        if not 0.0 < self.target_sensitivity <= 1.0:
            raise CalibrationError("--target-sensitivity must be above 0 and at most 1")

    @property
    def source(self) -> str:
        """Where the threshold came from, in words (the metadata's ``threshold_source``)."""
        return (f"calibrated on {self.manifest_name}:{self.split}"
                + (f" ({self.population} rows)" if self.population else "")
                + f" for sensitivity ≥ {self.target_sensitivity}"
                + (" (95% lower bound)" if self.require_lower_bound else "")
                + (" in every dataset" if self.per_dataset else ""))


@dataclass(frozen=True)
class Calibration:
    """A calibrated threshold, its record, and the metadata of the model that carries it."""

    threshold: float
    record: dict[str, Any]
    meta: dict[str, Any]
    n: int


def rows_to_calibrate(points: OperatingPoints, df: pd.DataFrame, cfg: CalibrateConfig) -> tuple[OperatingPoints,
                                                                                                  pd.DataFrame]:
    """The model's points (a one-threshold model gets the standard bands for ``--population``) and the
    manifest rows the threshold is chosen on."""
    if cfg.population is None:
        if not points.single:
            raise CalibrationError(f"the model has one threshold per population ({', '.join(points.names)}): "
                                   "calibrate each with --population NAME")
        return points, df
    if points.single:
        points = OperatingPoints.standard(points[points.default].threshold, points[points.default].threshold)
    if cfg.population not in points.names:
        raise CalibrationError(f"--population: {cfg.population!r} is not one of the model's populations "
                               f"({', '.join(points.names)})")
    if "population" not in df.columns:
        raise CalibrationError(f"{cfg.manifest_name}: no 'population' column to select the {cfg.population} rows by")
    own = df["population"].fillna("").map(lambda t: manifest_population(t, points.names)) == cfg.population
    if not own.any():
        raise CalibrationError(f"{cfg.manifest_name}: no {cfg.split} rows of population {cfg.population!r}")
    return points, df[own.to_numpy()].reset_index(drop=True)


def calibrate(meta: dict[str, Any], points: OperatingPoints, df: pd.DataFrame, scores: np.ndarray,
              cfg: CalibrateConfig) -> Calibration:
    """The threshold for ``cfg`` from the ``scores`` of ``df``'s rows, and ``meta`` (a model's metadata) with it."""
    labels = df["label"].to_numpy()
    groups = df.groupby("dataset").indices if cfg.per_dataset else {"all": np.arange(len(df))}
    try:
        per_group = {str(k): pick_threshold(labels[i], scores[i], cfg.target_sensitivity, cfg.require_lower_bound)
                     for k, i in groups.items()}
    except ValueError as exc:
        raise CalibrationError(str(exc)) from None
    thr = min(per_group.values())
    record = calibration_record(labels, scores, thr, cfg.target_sensitivity, cfg.require_lower_bound, cfg.split,
                                cfg.manifest_name)
    record["per_dataset"] = cfg.per_dataset
    record["group_thresholds"] = per_group
    if cfg.per_dataset:
        record["groups"] = {str(k): threshold_metrics(labels[i], scores[i], thr) for k, i in groups.items()}
    new = {k: v for k, v in meta.items() if k not in ("sha256", "weights_file", "weights_dtype")}
    if cfg.name:
        new["name"] = cfg.name
    if cfg.population is None:
        new["threshold"], new["threshold_source"], new["calibration"] = thr, cfg.source, record
    else:
        points = points.with_point(replace(points[cfg.population], threshold=thr, threshold_source=cfg.source,
                                           calibration=record))
        new["operating_points"] = points.to_meta()
        new["threshold"] = points[points.default].threshold
        new["threshold_source"] = f"one operating point per population ({', '.join(points.names)})"
        new.pop("calibration", None)
    return Calibration(thr, record, new, len(df))
