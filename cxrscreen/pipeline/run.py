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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cxrscreen.ingest import isolation
from cxrscreen.ingest.discover import discover
from cxrscreen.model.calibration import Int8Unavailable, load_calibration
from cxrscreen.model.lazy import LazyModel
from cxrscreen.model.meta import ModelInfo, read_model_info
from cxrscreen.options import Device, Precision, ReportPolicy, parse
from cxrscreen.outputs.summary import write_summary_pdf
from cxrscreen.outputs.worklist import images_frame, studies_frame, write_csv
from cxrscreen.pipeline.context import (
    ProcessState,
    ProgressFn,
    RunContext,
    ScanInputError,
    ScanResult,
    borrowed_process_state,
)
from cxrscreen.pipeline.run_summary import drift_check, summarize
from cxrscreen.records import ImageRecord
from cxrscreen.state.atomic import atomic_write_text
from cxrscreen.state.ledger import STATE_DIR, Ledger, file_sha256, ledger_path
from cxrscreen.state.lock import folder_lock
from cxrscreen.studies import Study, group_studies

if TYPE_CHECKING:
    from cxrscreen.model.files import LoadedModel

log = logging.getLogger("cxrscreen")

PAGES_DIR = "pages"  # under OUT/.cxrscreen: report pages made while scoring (outputs.pages.PageStore)

RUN_ID_TIME = "%Y%m%dT%H%M%SZ"
RUN_ID_MAX_SUFFIX = 999


def new_run_id(taken: Callable[[str], bool], now: float | None = None) -> str:
    """The run id: the UTC start time (``20261125T021500Z``), unique without waiting for the clock.

    When that id is ``taken`` (a run earlier in the same second), ``-001``, ``-002``… is appended:
    ids still sort in start order, as text (``…00Z`` < ``…00Z-001`` < ``…01Z``). Called under the
    output folder's lock, so no other run picks an id meanwhile.
    """
    base = time.strftime(RUN_ID_TIME, time.gmtime(now))
    for n in range(RUN_ID_MAX_SUFFIX + 1):
        run_id = f"{base}-{n:03d}" if n else base
        if not taken(run_id):
            return run_id
    raise RuntimeError(f"more than {RUN_ID_MAX_SUFFIX} runs started at {base}")


def plan(
    files: list[Path], root: Path, ledger: Ledger, model_sha: str, rescan: bool,
    on_work: Callable[[], None] | None = None,
) -> tuple[list[tuple[Path, str | None]], int]:
    """Which files need work, and how many were skipped as already scored.

    Work items are ``(path, sha256)`` pairs; the sha256 is ``None`` for files the ledger has never
    seen: preparation hashes the very bytes it scores (one read). ``on_work`` is called once, as soon
    as a file needs work (the scan starts loading the model then, while the plan goes on).
    """
    known = ledger.known()
    todo: list[tuple[Path, str | None]] = []
    skipped = 0
    for p in files:
        rel = p.relative_to(root).as_posix()
        st = p.stat()
        k = known.get(rel)
        sha = None
        if k is not None and not rescan and k.model_sha256 == model_sha:
            if k.size == st.st_size and k.mtime_ns == st.st_mtime_ns:
                skipped += 1
                continue
            sha = file_sha256(p)
            if sha == k.sha256:
                ledger.touch(rel, st.st_size, st.st_mtime_ns)
                skipped += 1
                continue
        todo.append((p, sha))
        if on_work is not None:
            on_work()
            on_work = None
    return todo, skipped


def scan(
    folder: Path | str,
    out: Path | str = "cxrscreen-out",
    model: Path | str | ModelInfo | LoadedModel | None = None,
    threshold: float | None = None,
    device: Device | str = Device.auto,
    precision: Precision | str = Precision.auto,
    batch_size: int = 16,
    workers: int | None = None,
    reports: ReportPolicy | str = ReportPolicy.flagged,
    rescan: bool = False,
    progress: ProgressFn | None = None,
    dicom_results: bool = False,
) -> ScanResult:
    """Scan ``folder`` recursively and write worklists (and reports) under ``out``.

    ``model``: the model's metadata file (or its weights file; None: the embedded model), its
    :class:`~cxrscreen.model.meta.ModelInfo`, or a :class:`~cxrscreen.model.files.LoadedModel` to
    score with as it is. A file's weights are loaded (and their sha256 checked) only if a film is
    scored or a report needs a Grad-CAM.

    ``dicom_results``: also write each scored study's results as DICOM objects in its own study
    (``OUT/dicom/<StudyInstanceUID>/``: SR, encapsulated PDF) for ``cxrscreen send``.

    Leaves the process as it found it (threads, MONAI metadata tracking, umask: the CLI sets that).
    """
    t_start = time.time()
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise ScanInputError(f"{folder}: not a folder")
    try:
        policy = parse(ReportPolicy, reports, "--reports")
        device, precision = parse(Device, device, "--device"), parse(Precision, precision, "--precision")
    except ValueError as exc:
        raise ScanInputError(str(exc)) from exc
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ScanInputError("--threshold must be between 0 and 1")
    if batch_size < 1:
        raise ScanInputError("--batch-size must be at least 1")
    if precision is Precision.int8 and device is Device.cuda:
        raise ScanInputError("--precision int8 runs on the CPU only")
    info = model if isinstance(model, ModelInfo) else read_model_info(model)
    points = info.points if threshold is None else info.points.overridden(threshold)
    if precision is Precision.int8:  # refuse before anything is scanned, with the reason (a usage problem, exit 2)
        try:
            load_calibration(info.path, info.sha256)
        except Int8Unavailable as exc:
            raise ScanInputError(str(exc)) from exc
    out.mkdir(parents=True, exist_ok=True)
    state = out / STATE_DIR
    with (borrowed_process_state() as process, folder_lock(state), Ledger(ledger_path(out)) as ledger,
          isolation.helpers(), LazyModel(info, device, precision, on_import=_on_import(process)) as lazy):
        run_id = new_run_id(lambda rid: (out / "runs" / rid).exists() or ledger.has_run(rid))
        ctx = RunContext(folder, out, lazy, points, policy, batch_size, workers, ledger, run_id,
                         dicom_results=dicom_results, emit=progress or (lambda _e: None))
        return _run(ctx, rescan, t_start)


def _on_import(process: ProcessState) -> Callable[[], None]:
    """What the model's loading thread does once torch is imported, before anything uses it: record the
    process-wide settings the run will change, and import the stages that need torch (so that this
    thread alone imports torch's package graph)."""

    def hook() -> None:
        process.capture()
        import cxrscreen.outputs.pages  # noqa: F401
        import cxrscreen.pipeline.scoring  # noqa: F401

    return hook


def _score(ctx: RunContext, todo: list[tuple[Path, str | None]]) -> list[ImageRecord]:
    """The scoring pass over ``todo``, the model loaded (started by the plan); report pages made as it goes."""
    if not todo:
        return []
    ctx.model.start()
    ctx.model.wait_imported()
    from cxrscreen.pipeline.scoring import score

    if ctx.reports is not ReportPolicy.none:
        from cxrscreen.outputs.pages import PageStore

        ctx.pages = PageStore(ctx.out / STATE_DIR / PAGES_DIR, ctx.reports, ctx.model, ctx.model.rt)
    return score(ctx, todo)


def _reports(ctx: RunContext, studies: list[Study]) -> tuple[set[str], list[Study]]:
    """The report stage (:func:`~cxrscreen.outputs.report.write_reports`). The model's runtime and network
    are asked for only when a page has to be made: a stage with every report in place imports no torch."""
    from cxrscreen.outputs.report import ReportSetup, write_reports

    setup = ReportSetup(ctx.out, ctx.folder, ctx.model, None, ctx.ledger, ctx.pages, ctx.emit, ctx.durations)
    return write_reports(setup, studies, ctx.reports)


def _dicom_results(ctx: RunContext, studies: list[Study], changed: set[str], everything: bool) -> None:
    """(Re)write the DICOM results of the studies this run changed (new images, a new report), of
    every study when the threshold changed, and of scored studies that have none yet."""
    from cxrscreen.outputs.dicom import DICOM_DIR, write_dicom_results  # highdicom: only when asked for

    root = ctx.out / DICOM_DIR
    todo = [s for s in studies if everything or s.key in changed or not (root / s.key).is_dir()]
    written = write_dicom_results(ctx.out, todo, ctx.model)
    log.info("DICOM results: %d objects written", len(written))


def _run(ctx: RunContext, rescan: bool, t_start: float) -> ScanResult:
    """The stages of one run, under its lock: plan → score → reports → worklists → summary."""
    ledger, d = ctx.ledger, ctx.durations
    ledger.start_run(ctx.run_id)
    resumed = ledger.unfinished_runs(exclude=ctx.run_id)  # killed runs: this run delivers their rows

    with d.stage("discover"):
        files = discover(ctx.folder)
    with d.stage("plan"):
        todo, skipped = plan(files, ctx.folder, ledger, ctx.model.sha256, rescan, on_work=ctx.model.start)
        redecided = ledger.redecide(ctx.model.sha256, ctx.points)
    log.info("run %s: %d files found, %d already scored, %d to process", ctx.run_id, len(files), skipped, len(todo))
    ctx.emit({"event": "start", "files": len(files), "todo": len(todo), "skipped": skipped, "run_id": ctx.run_id})

    reported: set[str] = set()
    try:
        new_records = _score(ctx, todo)
        if resumed:
            own = {r.path for r in new_records}
            new_records = [r for rid in resumed for r in ledger.records(rid) if r.path not in own] + new_records
        all_studies = group_studies(ledger.records())  # the one study decision of this run
        if ctx.reports is not ReportPolicy.none:
            with d.stage("reports"):
                reported, all_studies = _reports(ctx, all_studies)
    finally:
        if ctx.pages is not None:
            ctx.pages.close()
        elif ctx.reports is not ReportPolicy.none:  # what PageStore.close does: a killed run's pages go
            shutil.rmtree(ctx.out / STATE_DIR / PAGES_DIR, ignore_errors=True)
    if ctx.dicom_results:
        with d.stage("dicom_results"):
            changed = {r.study_key for r in new_records} | reported
            _dicom_results(ctx, all_studies, changed, everything=redecided > 0)

    with d.stage("worklists"):
        records = [r for s in all_studies for r in s.records]
        images = images_frame(records, ctx.model.name)
        studies = studies_frame(all_studies, ctx.model.name)
        images_csv = write_csv(images, ctx.out / "worklist_images.csv")
        studies_csv = write_csv(studies, ctx.out / "worklist_studies.csv")
        new_paths = {r.path for r in new_records}
        new_images = images[images["path"].isin(new_paths)].reset_index(drop=True)
        new_images["rank"] = range(1, len(new_images) + 1)
        write_csv(new_images, ctx.run_dir / "new_images.csv")
        write_csv(studies_frame(group_studies(r for r in records if r.path in new_paths), ctx.model.name),
                  ctx.run_dir / "new_studies.csv")

    exit_code = 1 if any(r.status.is_error for r in new_records) else 0
    summary = summarize(ctx, files, skipped, new_records, images, studies, time.time() - t_start, exit_code,
                        redecided)
    summary["resumed_runs"] = resumed
    summary["drift"] = drift_check(summary, ledger.previous_summaries(7, exclude=ctx.run_id))
    for w in summary["drift"]["warnings"]:
        log.warning("drift: %s", w)
    atomic_write_text(ctx.run_dir / "run.json", json.dumps(summary, indent=2) + "\n")
    ledger.finish_run(ctx.run_id, summary, resumed)
    write_summary_pdf(ctx.out / "summary.pdf", summary, studies, ctx.model, ctx.threshold, images=images,
                      cache=ctx.out / STATE_DIR)
    return ScanResult(ctx.run_id, ctx.out, images_csv, studies_csv, ctx.run_dir, exit_code, summary)
