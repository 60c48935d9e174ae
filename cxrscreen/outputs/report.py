"""Per-study PDF reports with Grad-CAM: which studies get one, their file names, and making them.

A report's name carries a hash of what it shows (``content_key``), so a rescored study gets a new
report and the old one is removed; the ledger records each image's report path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cxrscreen.events import ProgressFn, ReportWritten, ignore
from cxrscreen.options import ReportPolicy
from cxrscreen.outputs.layout import describe_status
from cxrscreen.outputs.study_pdf import ReportContext, render_study
from cxrscreen.pages import Page, PageStore, make_pages
from cxrscreen.records import ImageRecord
from cxrscreen.state.atomic import atomic_open
from cxrscreen.state.ledger import Ledger
from cxrscreen.studies import Study, wanted
from cxrscreen.timings import Timings

if TYPE_CHECKING:  # torch and the decoders are imported only when a page has to be made
    import torch

    from cxrscreen.model.files import LoadedModel
    from cxrscreen.model.inference import Runtime
    from cxrscreen.model.lazy import LazyModel

log = logging.getLogger("cxrscreen")

REPORT_DIR = "reports"


LAYOUT_VERSION = "report/2"  # bump when the page layout changes: every report is then remade


_NAME_RE = re.compile(r"^(?P<stem>[A-Za-z0-9_-]+_[0-9a-f]{12})_(?P<key>[0-9a-f]{10})\.pdf$")




def sanitize(text: str, limit: int = 24) -> str:
    """``[A-Za-z0-9_-]`` only (other runs → ``_``), no leading ``-``/``_``, at most ``limit`` chars."""
    ascii_ = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    out = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_).strip("_-")[:limit].strip("_-")
    return out or "noacc"


SHOWN_TAGS = ("PatientName", "PatientID", "AccessionNumber", "StudyDate", "InstitutionName", "StudyDescription",
              "ViewPosition", "Modality", "SeriesDescription")


def content_key(study: Study) -> str:
    """Hash of what the report shows: a change in any of it (a rescore, a corrected header) means a new report."""
    items = [(r.path, None if r.probability is None else round(r.probability, 6), r.decision, r.status,
              list(r.all_notes), r.model_sha256, str(r.threshold), [r.tag(k) for k in SHOWN_TAGS])
             for r in study.records]
    blob = json.dumps([LAYOUT_VERSION, study.decision, items], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def report_stem(study: Study) -> str:
    return f"{sanitize(study.first('AccessionNumber'))}_{hashlib.sha256(study.key.encode()).hexdigest()[:12]}"


def report_relpath(study: Study) -> str:
    """``reports/<accession>_<uid hash>_<content key>.pdf`` (relative to OUT, POSIX)."""
    return f"{REPORT_DIR}/{report_stem(study)}_{content_key(study)}.pdf"


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().parent == folder.resolve()


def reread(root: Path, record: ImageRecord, lm: LoadedModel, rt: Runtime,
           net: Callable[[], torch.nn.Module]) -> Page:
    """The page of a film this run's scoring pass did not hold (scored by an earlier run): read it again,
    through the same preparation as the scan (crash-isolated decode, same chain)."""
    path = root / record.path
    if not path.is_file():
        return Page(record, note="the file is no longer in the scanned folder")
    if record.status.is_error:
        return Page(record)
    from cxrscreen.prepare import prepare_file
    from cxrscreen.preprocess import build_transform

    prep = prepare_file(path, lm.spec, build_transform(lm.spec, augment=False), keep_film=True)
    if prep.film is None:
        note = "" if not record.status.is_ok else f"file could not be read again ({describe_status(prep.status)})"
        return Page(record, note=note)
    same_model = record.model_sha256 in ("", lm.sha256)
    page = make_pages([(record, prep.film, prep.image if same_model else None)], lm.spec,
                      net() if same_model and prep.image is not None else None, rt)[0]
    if not same_model:
        page.note = "scored by another model: no Grad-CAM"
    return page


@dataclass
class ReportSetup:
    """Where reports go and what makes them: the output folder, the scanned folder (films scored by an
    earlier run are read again from it), the model, the ledger whose report column is kept, the pages
    made while scoring, and where progress and ``durations`` (``report_pages``, ``report_rereads``,
    ``pdf``, in seconds) go."""

    out: Path
    root: Path
    lm: LoadedModel | LazyModel
    rt: Runtime | None  # None: the lazy model's own, asked for only when a page must be made
    ledger: Ledger
    pages: PageStore | None = None
    emit: ProgressFn = ignore
    durations: Timings = field(default_factory=Timings)


class ReportWriter:
    """One report stage: which studies need a new report (:meth:`plan`, a first pass over the studies), then,
    study by study (:meth:`make`), their pages, the PDFs, the ledger's report column."""

    def __init__(self, setup: ReportSetup) -> None:
        self.out, self.root, self.lm, self._rt, self.ledger = setup.out, setup.root, setup.lm, setup.rt, setup.ledger
        self.store, self.emit, self.durations = setup.pages, setup.emit, setup.durations
        self.folder = self.out / REPORT_DIR
        self._net: torch.nn.Module | None = None
        self.ctx: ReportContext | None = None
        self.todo: set[str] = set()  # keys of the studies whose report is to be written (plan)
        self.done: set[str] = set()  # of which written

    @property
    def rt(self) -> Runtime:
        if self._rt is None:
            self._rt = self.lm.rt  # a LazyModel: torch is imported here, when a page is needed
        return self._rt

    def net(self) -> torch.nn.Module:
        if self._net is None:
            from cxrscreen.model.inference import prepare

            self._net = self.store.net if self.store is not None else prepare(self.lm.net, self.rt)
        return self._net

    def plan(self, policy: ReportPolicy | str, studies: Iterable[list[Study]]) -> int:
        """First pass over the studies (a batch at a time): which need a new report (``policy`` wants one and
        none is in place); the others get their report path in the ledger (the one in place, or none) and
        lose their outdated files. Returns how many reports are to be written (:meth:`make` writes them)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        _remove_temporaries(self.folder)
        self.existing = index_reports(self.folder)
        self.todo, self.done = set(), set()
        for batch in studies:
            for study in batch:
                rel = report_relpath(study)
                names = self.existing.get(report_stem(study), set())
                exists = Path(rel).name in names and (self.out / rel).is_file()
                if wanted(study, policy) and not exists:
                    self.todo.add(study.key)
                    continue
                _set_report(self.ledger, study, rel if exists else "")
                _remove(self.folder, names - {Path(rel).name})
        return len(self.todo)

    def make(self, study: Study) -> Study:
        """Second pass, study by study: write the report :meth:`plan` found missing. Returns the study with
        its report path (as it was for the others, and where the report failed: retried next run)."""
        if study.key not in self.todo:
            return study
        if self.ctx is None:
            self.ctx = ReportContext(str(self.lm.name), str(self.lm.meta.get("version", "")), self.lm.sha256,
                                     datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip())
        rel = report_relpath(study)
        if not self.write(study, rel):
            return study
        self.done.add(study.key)
        self.emit(ReportWritten(len(self.done), len(self.todo)))
        return study.with_report(rel)

    def finish(self) -> None:
        if self.todo:
            log.info("reports: %d of %d written", len(self.done), len(self.todo))

    def page(self, record: ImageRecord) -> Page:
        page = self.store.take(record) if self.store is not None else None
        if page is None:
            self.durations["report_rereads"] += 1
            try:
                page = reread(self.root, record, self.lm, self.rt, self.net)
            except Exception as exc:  # the page then says so; the report is still made
                page = Page(record, note=f"the file could not be read again ({type(exc).__name__})")
        return page

    def write(self, study: Study, rel: str) -> bool:
        """Write one study's report; False (retried next run) if its pages or PDF failed."""
        with self.durations.stage("report_pages"):
            try:
                pages = [self.page(r) for r in study.records]
            except Exception as exc:  # Grad-CAM failed: no half-made report
                log.warning("reports: pages of study %s failed (%s); retried next run", report_stem(study)[-12:],
                            type(exc).__name__)
                return False
        path = self.out / rel
        if not _inside(path, self.folder):  # cannot happen with sanitised names; refuse rather than trust it
            raise RuntimeError("report path escapes the reports folder")
        with self.durations.stage("pdf"):
            try:
                with atomic_open(path, "wb", 0o640) as fh:
                    render_study(fh, study, pages, self.ctx, study.records[0].threshold_or(self.lm.threshold))
            except Exception as exc:
                log.warning("report for study %s failed (%s); retried next run", report_stem(study)[-12:],
                            type(exc).__name__)
                return False
        _set_report(self.ledger, study, rel)
        _remove(self.folder, self.existing.get(report_stem(study), set()) - {path.name})
        return True


def index_reports(folder: Path) -> dict[str, set[str]]:
    """Report file names in ``folder`` by study stem (one directory listing, not one per study)."""
    index: dict[str, set[str]] = {}
    for p in folder.iterdir():
        m = _NAME_RE.match(p.name)
        if m:
            index.setdefault(m["stem"], set()).add(p.name)
    return index


def _set_report(ledger: Ledger, study: Study, rel: str) -> None:
    for r in study.records:
        if r.report != rel:
            ledger.set_report(r.path, rel)


def _remove(folder: Path, names: Iterable[str]) -> None:
    """Delete outdated reports of a study (an older content key, or no longer wanted and stale)."""
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()


def _remove_temporaries(folder: Path) -> None:
    """Leftovers of a run killed while writing (the scan lock rules out a concurrent writer)."""
    for p in folder.glob(".*.pdf.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
