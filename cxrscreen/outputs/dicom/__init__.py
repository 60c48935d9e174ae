"""Results as DICOM objects in the source study, for PACS viewers.

Files: ``OUT/dicom/<StudyInstanceUID>/<SOPInstanceUID>.dcm``.

For every study with at least one image scored by the model, each object in a new series of its own:

- :mod:`.sr` — a Comprehensive SR: study decision, each image's probability and QC status, the
  threshold, the model's name and weights sha256, references to the source instances;
- :mod:`.pdf` — the study's PDF report as Encapsulated PDF, when it has one.

:mod:`.source` builds what they share from the ledger's tags (no source file is read again) and derives
the UIDs from StudyInstanceUID + weights sha256 + threshold + object kind: a rerun with the same inputs
rewrites the same files; objects of an earlier model or threshold are removed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

from pydicom.dataset import Dataset

from cxrscreen.model.meta import ModelInfo
from cxrscreen.outputs import DICOM_DIR
from cxrscreen.outputs.dicom import pdf, sr
from cxrscreen.outputs.dicom.source import StudyResult
from cxrscreen.state.atomic import atomic_open
from cxrscreen.studies import Study

log = logging.getLogger("cxrscreen")

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def write_dicom_results(out: Path, studies: Iterable[Study], model: ModelInfo) -> list[Path]:
    """Write the DICOM result objects of every study in ``studies`` that has an image scored by ``model``.

    Only these studies are touched: their folder under ``OUT/dicom`` ends up
    holding exactly this call's objects (a study with nothing scored keeps none). A study whose
    objects cannot be built is logged (no PHI) and left with none; the others are still written.
    Returns the paths written.
    """
    out = Path(out)
    root = out / DICOM_DIR
    written: list[Path] = []
    failed = 0
    for n, study in enumerate(studies, 1):
        if not _UID.fullmatch(study.key):  # "file:<path>": not in any study
            continue
        folder = root / study.key
        result = StudyResult.of(study, model)
        paths: list[Path] = []
        try:
            if result is not None:
                paths = [_save(ds, folder) for ds in _objects(result, out)]
        except (ValueError, TypeError, AttributeError, KeyError) as exc:  # e.g. an unknown source SOP class
            failed += 1
            paths = []  # none kept: no half set, and no earlier result left standing as if current
            log.warning("dicom results: study #%d skipped: %s", n, type(exc).__name__)
        _remove_stale(folder, {p.name for p in paths})
        written += paths
    log.debug("dicom results: %d objects written under %s%s", len(written), DICOM_DIR,
             f", {failed} studies failed" if failed else "")
    return written


def _objects(result: StudyResult, out: Path) -> list[Dataset]:
    """The study's SR, and its Encapsulated PDF when it has a report."""
    if not result.evidence():
        raise ValueError("no source instance with complete UIDs")
    objects: list[Dataset] = [sr.build(result)]
    report = pdf.report_path(out, result)
    if report is not None:
        objects.append(pdf.build(result, report.read_bytes()))
    return objects


def _save(ds: Dataset, folder: Path) -> Path:
    """``folder/<SOPInstanceUID>.dcm``, written atomically, mode 0640."""
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    with atomic_open(path, "wb", 0o640) as fh:
        ds.save_as(fh, enforce_file_format=True)
    return path


def _remove_stale(folder: Path, keep: set[str]) -> None:
    """Remove the study's objects that this call did not write (an earlier model or threshold)."""
    if not folder.is_dir():
        return
    for p in folder.glob("*.dcm"):
        if p.name not in keep:
            p.unlink(missing_ok=True)
    if not any(folder.iterdir()):
        folder.rmdir()


__all__ = ["DICOM_DIR", "write_dicom_results"]
