"""Populations and their operating points: which threshold applies to a film, from the patient's age.

A model file may declare one operating point per population, each an age band with its own
threshold and calibration record (``meta["operating_points"]``). A film's age comes from
PatientAge (DICOM AS: ``nnnD``, ``nnnW``, ``nnnM``, ``nnnY``), else from PatientBirthDate and
StudyDate; a film whose age is missing or invalid gets the model's declared default population
and the QC note ``age_unknown``. A model without operating points (v1, adapted models) has one
point, ``all``, that applies to every film with the model's ``threshold``: no age is needed.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

AGE_UNKNOWN = "age_unknown"
ALL = "all"
#: The standard bands: pediatric below 18 years, adult from 18 on.
ADULT_AGE_YEARS = 18.0
_AS = re.compile(r"^(\d{3})([DWMY])$")
_DAYS_PER = {"D": 1.0, "W": 7.0, "M": 365.25 / 12.0, "Y": 365.25}
#: Older than this is taken as an error in the header, not a patient.
MAX_AGE_YEARS = 130.0


def age_from_as(value: str) -> float | None:
    """A DICOM Age String (``"045Y"``, ``"006M"``, ``"003W"``, ``"010D"``) in years, or None if invalid."""
    m = _AS.match(value.strip().upper()) if value else None
    if m is None:
        return None
    return int(m.group(1)) * _DAYS_PER[m.group(2)] / 365.25


def _date(value: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(value.strip(), "%Y%m%d").date() if value and len(value.strip()) == 8 else None
    except ValueError:
        return None


def age_from_dates(birth: str, on: str) -> float | None:
    """Years between PatientBirthDate and StudyDate (both DICOM DA, ``YYYYMMDD``), or None if either is
    missing or invalid, or the birth is after the study."""
    b, s = _date(birth), _date(on)
    if b is None or s is None or b > s:
        return None
    years = s.year - b.year - ((s.month, s.day) < (b.month, b.day))  # completed years: calendar birthdays
    last = _birthday(b, b.year + years)
    return years + (s - last).days / max((_birthday(b, b.year + years + 1) - last).days, 1)


def _birthday(birth: dt.date, year: int) -> dt.date:
    """The birthday in ``year`` (29 February → 28 February in a common year)."""
    try:
        return birth.replace(year=year)
    except ValueError:
        return birth.replace(year=year, day=28)


def patient_age_years(tags: Mapping[str, str]) -> float | None:
    """The patient's age at the study in years: PatientAge, else PatientBirthDate and StudyDate; None when
    neither gives a plausible age (0 to :data:`MAX_AGE_YEARS`)."""
    age = age_from_as(tags.get("PatientAge", ""))
    if age is None:
        age = age_from_dates(tags.get("PatientBirthDate", ""), tags.get("StudyDate", ""))
    return age if age is not None and 0.0 <= age <= MAX_AGE_YEARS else None


@dataclass(frozen=True)
class OperatingPoint:
    """One population: an age band ``[min_age_years, max_age_years)`` and its threshold."""

    population: str
    threshold: float
    min_age_years: float = 0.0
    max_age_years: float | None = None  # None: no upper bound
    threshold_source: str = ""
    calibration: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def covers(self, age: float) -> bool:
        return self.min_age_years <= age and (self.max_age_years is None or age < self.max_age_years)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"population": self.population, "min_age_years": self.min_age_years,
                               "max_age_years": self.max_age_years, "threshold": self.threshold}
        if self.threshold_source:
            out["threshold_source"] = self.threshold_source
        if self.calibration:
            out["calibration"] = dict(self.calibration)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OperatingPoint:
        hi = d.get("max_age_years")
        return cls(population=str(d["population"]), threshold=float(d["threshold"]),
                   min_age_years=float(d.get("min_age_years", 0.0)), max_age_years=None if hi is None else float(hi),
                   threshold_source=str(d.get("threshold_source", "")), calibration=dict(d.get("calibration", {})))


@dataclass(frozen=True)
class Assignment:
    """The point that applies to one film, and the QC notes the choice adds (``age_unknown``)."""

    point: OperatingPoint
    notes: tuple[str, ...] = ()

    @property
    def population(self) -> str:
        return self.point.population

    @property
    def threshold(self) -> float:
        return self.point.threshold


class OperatingPointError(ValueError):
    """Operating points that cannot be used (overlapping bands, unknown default, bad threshold)."""


@dataclass(frozen=True)
class OperatingPoints:
    """A model's operating points; :meth:`assign` picks one for a film from its tags."""

    points: tuple[OperatingPoint, ...]
    default: str

    def __post_init__(self) -> None:
        names = [p.population for p in self.points]
        if not names or len(set(names)) != len(names):
            raise OperatingPointError(f"operating points need distinct population names, got {names}")
        if self.default not in names:
            raise OperatingPointError(f"default population {self.default!r} is not one of {names}")
        for p in self.points:
            if not 0.0 < p.threshold < 1.0:
                raise OperatingPointError(f"{p.population}: threshold {p.threshold} is not between 0 and 1")
            if p.max_age_years is not None and p.max_age_years <= p.min_age_years:
                raise OperatingPointError(f"{p.population}: empty age band")
        bands = sorted(self.points, key=lambda p: p.min_age_years)
        for a, b in zip(bands, bands[1:], strict=False):
            if a.max_age_years is None or a.max_age_years > b.min_age_years:
                raise OperatingPointError(f"age bands of {a.population} and {b.population} overlap")

    @property
    def single(self) -> bool:
        """One point for every film (a single-threshold model): ages are not needed."""
        return len(self.points) == 1

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.population for p in self.points)

    def __getitem__(self, population: str) -> OperatingPoint:
        for p in self.points:
            if p.population == population:
                return p
        raise KeyError(f"no population {population!r} (the model has {', '.join(self.names)})")

    def threshold_of(self, population: str) -> float:
        """The threshold of ``population``; the default's for a name the model does not have (a ledger
        row written under another model's points)."""
        try:
            return self[population].threshold
        except KeyError:
            return self[self.default].threshold

    def assign(self, tags: Mapping[str, str], scored: bool = True) -> Assignment:
        """The point for a film with these tags (the default and ``age_unknown`` without a usable age);
        a film that is not ``scored`` (not assessable, unreadable) gets no note."""
        if self.single:
            return Assignment(self.points[0])
        age = patient_age_years(tags)
        point = next((p for p in self.points if age is not None and p.covers(age)), None)
        if point is not None:
            return Assignment(point)
        return Assignment(self[self.default], (AGE_UNKNOWN,) if scored else ())

    def overridden(self, threshold: float) -> OperatingPoints:
        """Every point at ``threshold`` (``--threshold``)."""
        return OperatingPoints(tuple(replace(p, threshold=float(threshold), threshold_source="--threshold")
                                     for p in self.points), self.default)

    def with_point(self, point: OperatingPoint) -> OperatingPoints:
        """These points with ``point`` replacing the one of its population."""
        return OperatingPoints(tuple(point if p.population == point.population else p for p in self.points),
                               self.default)

    def to_meta(self) -> dict[str, Any]:
        return {"default": self.default, "points": [p.to_dict() for p in self.points]}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> OperatingPoints:
        """From a model's metadata: its ``operating_points``, or one point ``all`` at its ``threshold``."""
        op = meta.get("operating_points")
        if not op:
            return cls((OperatingPoint(ALL, float(meta["threshold"]), threshold_source=str(
                meta.get("threshold_source", ""))),), ALL)
        try:
            return cls(tuple(OperatingPoint.from_dict(p) for p in op["points"]), str(op["default"]))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, OperatingPointError):
                raise
            raise OperatingPointError(f"invalid operating_points in the model metadata ({exc})") from exc

    @classmethod
    def standard(cls, pediatric: float, adult: float, default: str = "adult") -> OperatingPoints:
        """Pediatric below :data:`ADULT_AGE_YEARS`, adult from it on."""
        return cls((OperatingPoint("pediatric", pediatric, 0.0, ADULT_AGE_YEARS),
                    OperatingPoint("adult", adult, ADULT_AGE_YEARS, None)), default)


def manifest_population(text: str, names: tuple[str, ...]) -> str:
    """The population a manifest's free-text ``population`` cell names (``"pediatric (1-5 y), Guangzhou"``
    → ``pediatric``): the model's name it starts with, else ``""``."""
    t = str(text).strip().lower()
    return next((n for n in sorted(names, key=len, reverse=True) if t.startswith(n.lower())), "")
