"""What every step of one run shares, and the process state the API borrows for it."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrscreen.events import ProgressFn, ignore
from cxrscreen.model.lazy import LazyModel
from cxrscreen.options import OptionError, ReportPolicy
from cxrscreen.populations import OperatingPoints
from cxrscreen.runs import RunSummary
from cxrscreen.state.ledger import Ledger
from cxrscreen.timings import Timings

if TYPE_CHECKING:
    from cxrscreen.pages import PageStore



class ScanInputError(OptionError):
    """A usage problem (missing folder, unusable model…): exit code 2."""


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


class ProcessState:
    """What a run may change process-wide: torch's thread count, MONAI's metadata tracking, the quantized
    engine. :meth:`capture` records them before the run first changes one: when torch is imported for
    it (:class:`~cxrscreen.model.lazy.LazyModel`'s ``on_import``), so a run that imports no torch reads
    and restores nothing."""

    def __init__(self) -> None:
        self._saved: tuple[int, bool, str] | None = None
        self._lock = threading.Lock()

    def capture(self) -> None:
        """Record the settings now, unless already recorded (any thread)."""
        with self._lock:
            if self._saved is None:
                import torch
                from monai.data import get_track_meta

                self._saved = (torch.get_num_threads(), get_track_meta(), torch.backends.quantized.engine)

    def restore(self) -> None:
        """Put back what :meth:`capture` recorded (nothing if it never ran)."""
        if self._saved is None:
            return
        import torch
        from monai.data import set_track_meta

        threads, track_meta, engine = self._saved
        torch.set_num_threads(threads)
        set_track_meta(track_meta)
        if torch.backends.quantized.engine != engine:
            torch.backends.quantized.engine = engine


@contextlib.contextmanager
def borrowed_process_state() -> Iterator[ProcessState]:
    """Give back what a run changes process-wide: torch's thread count, MONAI's metadata tracking and
    the quantized engine (:class:`ProcessState`; recorded at once if torch and MONAI are already
    imported). (The CLI alone sets the umask; reportlab's settings are scoped where set.)"""
    state = ProcessState()
    if "torch" in sys.modules and "monai.data" in sys.modules:
        state.capture()
    try:
        yield state
    finally:
        state.restore()
