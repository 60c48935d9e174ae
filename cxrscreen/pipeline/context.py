"""What every step of one run shares, and the process state the API borrows for it."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.data import get_track_meta, set_track_meta

from cxrscreen.model.files import LoadedModel
from cxrscreen.model.inference import Runtime
from cxrscreen.options import ReportPolicy
from cxrscreen.outputs.pages import PageStore
from cxrscreen.populations import OperatingPoints
from cxrscreen.state.ledger import Ledger

ProgressFn = Callable[[dict[str, Any]], None]


class ScanInputError(ValueError):
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
    summary: dict[str, Any] = field(default_factory=dict)


def _ignore(_event: dict[str, Any]) -> None:
    pass


@dataclass
class RunContext:
    """One run: its inputs, settings, ledger and the measurements its steps add to."""

    folder: Path
    out: Path
    lm: LoadedModel
    rt: Runtime
    points: OperatingPoints  # the model's, or every one at --threshold
    reports: ReportPolicy
    batch_size: int
    workers: int | None  # None: chosen after timing the first batch
    ledger: Ledger
    run_id: str
    dicom_results: bool = False  # SR + encapsulated PDF in OUT/dicom/ (outputs.dicom)
    emit: ProgressFn = _ignore
    durations: Counter[str] = field(default_factory=Counter)
    pages: PageStore | None = None  # report pages made while the scoring pass holds the pixels
    schedule: dict[str, Any] | None = None  # what scoring ran with (for run.json)

    @property
    def threshold(self) -> float:
        """The default population's threshold (the only one of a single-threshold model)."""
        return self.points[self.points.default].threshold

    @property
    def run_dir(self) -> Path:
        return self.out / "runs" / self.run_id


@contextlib.contextmanager
def borrowed_process_state() -> Iterator[None]:
    """Give back what a run changes process-wide: torch's thread count, MONAI's metadata tracking and
    the quantized engine. (The CLI alone sets the umask; reportlab's settings are scoped where set.)"""
    threads, track_meta = torch.get_num_threads(), get_track_meta()
    engine = torch.backends.quantized.engine
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        set_track_meta(track_meta)
        if torch.backends.quantized.engine != engine:
            torch.backends.quantized.engine = engine
