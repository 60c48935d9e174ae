"""Progress events of the long calls (``scan``, ``train``, ``adapt``): frozen values, one class per kind.

The way pynetdicom's ``EVT_*`` events work: the API calls ``progress(event)`` and a caller matches on the
type (``match e: case BatchScored(done=n, total=t): …``), so a renamed field is a type error, not a
silently missing dict key. A caller that ignores progress passes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


# --------------------------------------------------------------------------- scan
@dataclass(frozen=True)
class ScanStarted:
    """The plan is made: ``todo`` of ``files`` need work, ``skipped`` are in the ledger already."""

    run_id: str
    files: int
    todo: int
    skipped: int


@dataclass(frozen=True)
class BatchScored:
    """A batch is scored and committed: ``done`` of ``total`` films, at ``img_s`` films/s so far."""

    done: int
    total: int
    img_s: float


@dataclass(frozen=True)
class ReportWritten:
    """A study's PDF report is written: ``done`` of ``total``."""

    done: int
    total: int


# --------------------------------------------------------------------------- training (train, adapt)
@dataclass(frozen=True)
class CachingImages:
    """``train`` prepares its train and val images."""

    train: int
    val: int


@dataclass(frozen=True)
class TrainStep:
    """One optimisation step of ``epoch`` (0-based): ``step`` of ``steps``, mean loss so far, images/s."""

    epoch: int
    step: int
    steps: int
    loss: float
    img_s: float


@dataclass(frozen=True)
class Resumed:
    """Training goes on after the checkpoint of ``epoch - 1``."""

    epoch: int


@dataclass(frozen=True)
class EpochDone:
    """An epoch (0-based) is fitted and checkpointed; ``score`` is what picks the best epoch (``score_name``)."""

    epoch: int
    train_loss: float
    score_name: str
    score: float
    seconds: float
    best_epoch: int


@dataclass(frozen=True)
class SitePreparing:
    """``adapt`` prepares a site's films through the scan path."""

    folder: str


@dataclass(frozen=True)
class SitePrepared:
    """The site's films are prepared and joined with their labels."""

    seconds: float
    films_found: int
    qc_rejected: int
    labelled: int
    label_rows_unmatched: int
    usable: int


@dataclass(frozen=True)
class AdaptDone:
    """``adapt`` is done; ``passed``: the adapted model passed its acceptance gate."""

    passed: bool


Event = (ScanStarted | BatchScored | ReportWritten | CachingImages | TrainStep | Resumed | EpochDone
         | SitePreparing | SitePrepared | AdaptDone)
ProgressFn = Callable[[Event], None]


def ignore(_event: Event) -> None:
    """The progress function of a caller that does not follow progress."""
