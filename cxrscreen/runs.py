"""A run's summary as a typed value (:class:`RunSummary`): ``runs/<id>/run.json``, the ledger's runs table,
the summary PDF, the CLI's ``--json`` — and the drift check that compares it with earlier runs.

The JSON keeps the keys run.json always had (plus ``summary_format``); :meth:`RunSummary.from_json`
reads older runs' files too, a missing key taking its empty value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from cxrscreen.populations import OperatingPoints
from cxrscreen.version import __version__

SUMMARY_FORMAT = 1
DRIFT_BOUNDS = {"flag_rate": 0.15, "review_rate": 0.15, "median_probability": 0.15}
DRIFT_MIN_IMAGES = 20
#: run.json's "runtime" when no runtime was chosen: nothing was scored and no Grad-CAM made (no torch imported)
NOT_LOADED = "none (nothing to score)"


@dataclass(frozen=True)
class ModelRef:
    """Which model a run scored with."""

    name: str = ""
    sha256: str = ""
    path: str = ""


@dataclass(frozen=True)
class WorklistTotals:
    """The worklists after the run: image and study rows, studies per decision."""

    images: int = 0
    studies: int = 0
    decisions: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DriftCheck:
    """This run's rates against the mean of earlier runs; a warning per bound exceeded."""

    compared_runs: int = 0
    bounds: dict[str, float] = field(default_factory=lambda: dict(DRIFT_BOUNDS))
    warnings: tuple[str, ...] = ()
    baseline: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSummary:
    """What one run did: counts, rates, score quantiles, timings and its exit code."""

    run_id: str
    software_version: str = __version__
    folder: str = ""
    out: str = ""
    model: ModelRef = ModelRef()
    threshold: float | None = None  # the default population's (the only one of a single-threshold model)
    runtime: str = NOT_LOADED
    files_found: int = 0
    files_skipped_already_scored: int = 0
    files_processed: int = 0
    rows_redecided_new_threshold: int = 0
    images_scored: int = 0
    decisions: dict[str, int] = field(default_factory=dict)  # this run's images per decision
    statuses: dict[str, int] = field(default_factory=dict)  # this run's images per status
    worklist_totals: WorklistTotals = WorklistTotals()
    flag_rate: float | None = None
    review_rate: float | None = None
    probability_quantiles: dict[str, float] = field(default_factory=dict)
    durations_s: dict[str, float] = field(default_factory=dict)
    images_per_s: float | None = None
    wall_s: float | None = None
    exit_code: int = 0
    schedule: dict[str, Any] | None = None  # how scoring shared the cores (pipeline.schedule)
    operating_points: OperatingPoints | None = None  # a model with a threshold per population
    images_scored_by_population: dict[str, int] | None = None
    resumed_runs: tuple[str, ...] = ()  # killed runs whose rows this run delivered
    drift: DriftCheck = DriftCheck()

    @property
    def median_probability(self) -> float | None:
        return self.probability_quantiles.get("0.5")

    @property
    def errors(self) -> int:
        """Files of this run that could not be read or decoded."""
        return sum(n for status, n in self.statuses.items() if status.startswith("error"))

    def to_json(self) -> dict[str, Any]:
        """The run.json object (keys without a value for this run are left out, as before)."""
        out: dict[str, Any] = {"summary_format": SUMMARY_FORMAT}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("operating_points", "images_scored_by_population") and value is None:
                continue
            if isinstance(value, OperatingPoints):
                value = value.to_meta()
            elif isinstance(value, ModelRef | WorklistTotals | DriftCheck):
                value = asdict(value)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out["drift"]["warnings"] = list(self.drift.warnings)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSummary:
        """From a run.json object (this format or an older one); unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        if "model" in kw:
            kw["model"] = ModelRef(**{k: str(v) for k, v in _known(ModelRef, kw["model"]).items()})
        if "worklist_totals" in kw:
            kw["worklist_totals"] = WorklistTotals(**_known(WorklistTotals, kw["worklist_totals"]))
        if "drift" in kw:
            d = _known(DriftCheck, kw["drift"])
            kw["drift"] = DriftCheck(**(d | {"warnings": tuple(d.get("warnings", ()))}))
        if kw.get("operating_points"):
            kw["operating_points"] = OperatingPoints.from_meta({"operating_points": kw["operating_points"]})
        kw["resumed_runs"] = tuple(kw.get("resumed_runs") or ())
        for name in ("decisions", "statuses", "probability_quantiles", "durations_s"):
            if kw.get(name) is None:
                kw.pop(name, None)
        return cls(**kw)


def _known(cls: type, data: dict[str, Any] | None) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in (data or {}).items() if k in names}


def _rate(summary: RunSummary, name: str) -> float | None:
    return summary.median_probability if name == "median_probability" else getattr(summary, name)


def drift_check(current: RunSummary, previous: list[RunSummary]) -> DriftCheck:
    """Compare this run's rates and median score with the mean of earlier runs (≥ 20 images each).

    A warning when an absolute difference exceeds ``DRIFT_BOUNDS`` (documented in the README).
    """
    prev = [p for p in previous if p.images_scored >= DRIFT_MIN_IMAGES]
    if current.images_scored < DRIFT_MIN_IMAGES or not prev:
        return DriftCheck(compared_runs=len(prev))
    warnings, baseline = [], {}
    for name, bound in DRIFT_BOUNDS.items():
        vals = [v for v in (_rate(p, name) for p in prev) if v is not None]
        cur = _rate(current, name)
        if not vals or cur is None:
            continue
        base = float(np.mean(vals))
        baseline[name] = base
        if abs(cur - base) > bound:
            warnings.append(f"{name} {cur:.3f} vs {base:.3f} over the last {len(vals)} runs (bound ±{bound})")
    return DriftCheck(len(prev), dict(DRIFT_BOUNDS), tuple(warnings), baseline)
