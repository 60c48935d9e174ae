"""What every step of one run shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrscreen.events import ProgressFn, ignore
from cxrscreen.model.lazy import LazyModel
from cxrscreen.options import Engine, OptionError, ReportPolicy
from cxrscreen.populations import OperatingPoints
from cxrscreen.runs import RunSummary
from cxrscreen.state.ledger import Ledger
from cxrscreen.timings import Timings

if TYPE_CHECKING:
    from cxrscreen.pages import PageStore


class ScanInputError(OptionError):
    """A usage problem (missing folder, unusable model…): exit code 2."""


class ScanStopped(RuntimeError):
    """The scan stopped part-way for a reason its message states in one line (the Ray engine's scoring actors
    kept dying…); the batches committed before stay in the ledger and a rerun continues: exit code 3."""


@dataclass
class ScanResult:
    """What a scan did; ``summary`` is also written as ``runs/<id>/run.json``."""

    run_id: str
    out: Path
    images_csv: Path
    studies_csv: Path
    run_dir: Path
    exit_code: int
    summary: RunSummary


@dataclass
class RunContext:
    """One run: its inputs, settings, ledger and the measurements its steps add to."""

    folder: Path
    out: Path
    model: LazyModel  # metadata now; network, runtime and scoring network when a film needs them
    points: OperatingPoints  # the model's, or every one at --threshold
    reports: ReportPolicy
    batch_size: int
    workers: int | None  # None: chosen after timing the first batch
    ledger: Ledger
    run_id: str
    dicom_results: bool = False  # SR + encapsulated PDF in OUT/dicom/ (outputs.dicom)
    engine: Engine = Engine.local  # what prepares and scores (pipeline.scoring, or pipeline.ray_engine)
    ray_address: str | None = None
    emit: ProgressFn = ignore
    durations: Timings = field(default_factory=Timings)
    pages: PageStore | None = None  # report pages made while the scoring pass holds the pixels
    schedule: dict[str, Any] | None = None  # what scoring ran with (for run.json)

    @property
    def threshold(self) -> float:
        """The default population's threshold (the only one of a single-threshold model)."""
        return self.points[self.points.default].threshold

    @property
    def run_dir(self) -> Path:
        return self.out / "runs" / self.run_id
