"""``scan()``: one locked, resumable run over a folder — plan, score, report, write the worklists.

Torch, MONAI and the network are loaded only when the plan finds a film to score (in a background
thread while the plan goes on: :class:`~cxrscreen.model.lazy.LazyModel`), or when a report needs a
Grad-CAM: the stages that import them (scoring, pages, reports, DICOM results) are imported where
they run. A night with nothing new reads the model's metadata, the ledger and the folder, and
writes the worklists and the summary.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cxrscreen.events import ProgressFn, ScanStarted, ignore
from cxrscreen.ingest import isolation
from cxrscreen.ingest.discover import discover
from cxrscreen.model.calibration import Int8Unavailable, load_calibration
from cxrscreen.model.lazy import LazyModel
from cxrscreen.model.meta import ModelInfo, read_model_info
from cxrscreen.options import Engine, Precision, ReportPolicy, ScanOptions
from cxrscreen.outputs.summary import write_summary_pdf
from cxrscreen.outputs.worklist import Worklist, write_csv
from cxrscreen.pipeline.context import RunContext, ScanInputError, ScanResult
from cxrscreen.pipeline.plan import new_run_id, plan
from cxrscreen.pipeline.run_summary import Delivered, PlanCounts, summarize
from cxrscreen.runs import RunSummary, WorklistTotals, drift_check
from cxrscreen.state.atomic import atomic_write_text
from cxrscreen.state.ledger import PAGES_DIR, STATE_DIR, Ledger, ledger_path
from cxrscreen.state.lock import folder_lock
from cxrscreen.studies import Study, study_batches

if TYPE_CHECKING:
    from cxrscreen.model.files import LoadedModel

log = logging.getLogger("cxrscreen")


def scan(
    folder: Path | str,
    out: Path | str = "cxrscreen-out",
    model: Path | str | ModelInfo | LoadedModel | LazyModel | None = None,
    options: ScanOptions | None = None,
    progress: ProgressFn | None = None,
) -> ScanResult:
    """Scan ``folder`` recursively and write worklists (and reports) under ``out``.

    ``model``: the model's metadata file (or its weights file; None: the embedded model), its
    :class:`~cxrscreen.model.meta.ModelInfo`, or a :class:`~cxrscreen.model.files.LoadedModel` to
    score with as it is. A file's weights are loaded (and their sha256 checked) only if a film is
    scored or a report needs a Grad-CAM. A :class:`~cxrscreen.model.lazy.LazyModel` is used as it is, on
    its own device and precision, and stays loaded for the next scan (a node that scans again and
    again keeps one warm). ``options``: :class:`~cxrscreen.options.ScanOptions` (default:
    the model's operating points, reports for flagged studies). ``progress`` receives the
    :mod:`cxrscreen.events` of the run.

    Raises :class:`~cxrscreen.pipeline.context.ScanInputError` for a usage problem (no such folder,
    an output path that is a file, a model without the int8 calibration asked for…),
    :class:`~cxrscreen.state.lock.LockedError` while another run holds ``out``, and
    :class:`~cxrscreen.model.meta.ModelIntegrityError` for a damaged model. Leaves the process as it
    found it (threads, MONAI metadata tracking; the CLI alone sets the umask).
    """
    t_start = time.time()
    o = options or ScanOptions()
    folder, out = Path(folder), Path(out)
    if not folder.exists():
        raise ScanInputError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise ScanInputError(f"{folder}: not a folder")
    if out.exists() and not out.is_dir():
        raise ScanInputError(f"--out {out}: exists and is not a folder")
    info = model if isinstance(model, ModelInfo) else read_model_info(model)
    points = info.points if o.threshold is None else info.points.overridden(o.threshold)
    if o.precision is Precision.int8:  # refuse before anything is scanned, with the reason (a usage problem, exit 2)
        try:
            load_calibration(info.path, info.sha256)
        except Int8Unavailable as exc:
            raise ScanInputError(str(exc)) from exc
    if o.engine is Engine.ray:  # refuse before anything is scanned: one line on how to install it (exit 2)
        from cxrscreen.pipeline.ray_engine import ray_missing

        if (why := ray_missing()) is not None:
            raise ScanInputError(why)
    out.mkdir(parents=True, exist_ok=True)
    state = out / STATE_DIR
    warm = model if isinstance(model, LazyModel) else None
    with (folder_lock(state), Ledger(ledger_path(out)) as ledger, isolation.helpers(),
          warm if warm is not None else LazyModel(info, o.device, o.precision, on_import=_import_stages) as lazy):
        run_id = new_run_id(lambda rid: (out / "runs" / rid).exists() or ledger.has_run(rid))
        ctx = RunContext(folder, out, lazy, points, o.reports, o.batch_size, o.workers, ledger, run_id,
                         dicom_results=o.dicom_results, engine=o.engine, ray_address=o.ray_address,
                         emit=progress or ignore)
        return _run(ctx, o.rescan, t_start)


def _import_stages() -> None:
    """Run by the model's loading thread once torch is imported: import the stages that need torch (so that
    this thread alone imports torch's package graph)."""
    import cxrscreen.pages  # noqa: F401
    import cxrscreen.pipeline.scoring  # noqa: F401


def _score(ctx: RunContext, todo: list[tuple[Path, str | None]]) -> None:
    """The scoring pass over ``todo``, the model loaded (started by the plan); report pages made as it goes.
    ``--engine ray``: :mod:`cxrscreen.pipeline.ray_engine` (its actors load the model; it makes ``ctx.pages``).
    The records go to the ledger only, batch by batch: the run reads them back from there."""
    if not todo:
        return
    if ctx.engine is Engine.ray:
        from cxrscreen.pipeline.ray_engine import score as score_on_ray

        score_on_ray(ctx, todo)
        return
    ctx.model.start()
    ctx.model.wait_imported()
    from cxrscreen.pipeline.scoring import score

    if ctx.reports is not ReportPolicy.none:
        from cxrscreen.pages import PageStore

        ctx.pages = PageStore(ctx.out / STATE_DIR / PAGES_DIR, ctx.reports, ctx.model, ctx.model.rt)
    score(ctx, todo)


def _studies(ctx: RunContext) -> Iterator[list[Study]]:
    """Every study of the ledger with its one decision, a batch at a time (the run never holds the whole
    ledger's records: :meth:`~cxrscreen.state.ledger.Ledger.records_by_study`)."""
    return study_batches(ctx.ledger.records_by_study())


@dataclass
class _Lists:
    """What a run's worklists and summary are made of, filled a study at a time (:meth:`add`)."""

    delivered: set[str]  # the run ids whose ledger rows this run delivers: its own, and the killed runs it resumes
    everything: Worklist  # the worklists of the whole ledger
    new_studies: Worklist  # the studies of the images this run delivers, made of those images alone
    new_paths: set[str] = field(default_factory=set)  # those images
    counts: Delivered = field(default_factory=Delivered)  # what the summary counts of them

    def add(self, st: Study) -> None:
        self.everything.add_study(st)
        mine = [r for r in st.records if r.run_id in self.delivered]
        if mine:
            self.new_studies.add_study(Study.of(st.key, mine), images=False)
            for r in mine:
                self.new_paths.add(r.path)
                self.counts.add(r)


def _outputs(ctx: RunContext, delivered: set[str], redecided: int) -> _Lists:
    """Everything a run writes from its studies, in one pass over the ledger's, a batch of studies at a time
    (two with reports: the first counts the missing ones): each study's report, its DICOM results, its
    worklist rows. DICOM results are (re)written for the studies this run changed (new images, a new
    report), for every study when the thresholds changed, and for scored studies that have none yet.
    """
    d = ctx.durations
    reports = None
    if ctx.reports is not ReportPolicy.none:  # the model's runtime is asked for only when a page must be made
        from cxrscreen.outputs.report import ReportSetup, ReportWriter

        reports = ReportWriter(ReportSetup(ctx.out, ctx.folder, ctx.model, None, ctx.ledger, ctx.pages, ctx.emit,
                                           d))
        with d.stage("reports"):
            reports.plan(ctx.reports, _studies(ctx))
    if ctx.dicom_results:
        from cxrscreen.outputs.dicom import DICOM_DIR, write_dicom_results  # highdicom: only when asked for
    lists = _Lists(delivered, Worklist(ctx.model.name), Worklist(ctx.model.name))
    dicom_objects = 0
    studies = _studies(ctx)
    while True:
        with d.stage("worklists"):  # reading the ledger
            batch = next(studies, None)
        if batch is None:
            break
        if reports is not None:
            with d.stage("reports"):
                batch = [reports.make(st) for st in batch]
        if ctx.dicom_results:
            with d.stage("dicom_results"):
                due = [st for st in batch
                       if redecided or (reports is not None and st.key in reports.done)
                       or any(r.run_id in delivered for r in st.records) or not (ctx.out / DICOM_DIR / st.key).is_dir()]
                dicom_objects += len(write_dicom_results(ctx.out, due, ctx.model))
        with d.stage("worklists"):
            for st in batch:
                lists.add(st)
    if reports is not None:
        reports.finish()
    if ctx.dicom_results:
        log.info("DICOM results: %d objects written", dicom_objects)
    return lists


def _run(ctx: RunContext, rescan: bool, t_start: float) -> ScanResult:
    """The stages of one run, under its lock: plan → score → reports → worklists → summary."""
    ledger, d = ctx.ledger, ctx.durations
    ledger.start_run(ctx.run_id)
    resumed = ledger.unfinished_runs(exclude=ctx.run_id)  # killed runs: this run delivers their rows
    delivered = {ctx.run_id, *resumed}  # a ledger row is this run's to deliver if one of these wrote it

    with d.stage("discover"):
        files = discover(ctx.folder)
    with d.stage("plan"):
        # the local engine loads the model while the plan goes on; Ray's actors load their own
        start = ctx.model.start if ctx.engine is Engine.local else None
        todo, skipped = plan(files, ctx.folder, ledger, ctx.model.sha256, rescan, on_work=start)
        redecided = ledger.redecide(ctx.model.sha256, ctx.points)
    log.info("run %s: %d files found, %d already scored, %d to process", ctx.run_id, len(files), skipped, len(todo))
    ctx.emit(ScanStarted(ctx.run_id, len(files), len(todo), skipped))

    # The records go to the ledger as they are scored; what the run writes from them is made in one pass
    # over the ledger's studies, a batch at a time (the one study decision: cxrscreen.studies).
    try:
        _score(ctx, todo)
        lists = _outputs(ctx, delivered, redecided)
    finally:
        if ctx.pages is not None:
            ctx.pages.close()
        elif ctx.reports is not ReportPolicy.none:  # what PageStore.close does: a killed run's pages go
            shutil.rmtree(ctx.out / STATE_DIR / PAGES_DIR, ignore_errors=True)

    with d.stage("worklists"):
        images, studies = lists.everything.images_frame(), lists.everything.studies_frame()
        images_csv = write_csv(images, ctx.out / "worklist_images.csv")
        studies_csv = write_csv(studies, ctx.out / "worklist_studies.csv")
        new_images = images[images["path"].isin(lists.new_paths)].reset_index(drop=True)
        new_images["rank"] = range(1, len(new_images) + 1)
        write_csv(new_images, ctx.run_dir / "new_images.csv")
        write_csv(lists.new_studies.studies_frame(), ctx.run_dir / "new_studies.csv")
        counts = lists.counts
        del lists, new_images  # the cells: the summary needs the two frames and the counts

    exit_code = 1 if counts.errors else 0
    totals = WorklistTotals(len(images), len(studies),
                            {str(k): int(v) for k, v in Counter(studies["decision"]).items()} if len(studies) else {})
    summary = summarize(ctx, PlanCounts(len(files), skipped, redecided), counts, totals, time.time() - t_start,
                        exit_code)
    previous = [RunSummary.from_json(s) for s in ledger.previous_summaries(7, exclude=ctx.run_id)]
    summary = replace(summary, resumed_runs=tuple(resumed), drift=drift_check(summary, previous))
    for w in summary.drift.warnings:
        log.warning("drift: %s", w)
    atomic_write_text(ctx.run_dir / "run.json", json.dumps(summary.to_json(), indent=2) + "\n")
    ledger.finish_run(ctx.run_id, summary.to_json(), resumed)
    write_summary_pdf(ctx.out / "summary.pdf", summary, studies, ctx.model, ctx.threshold, images=images,
                      cache=ctx.out / STATE_DIR)
    return ScanResult(ctx.run_id, ctx.out, images_csv, studies_csv, ctx.run_dir, exit_code, summary)
