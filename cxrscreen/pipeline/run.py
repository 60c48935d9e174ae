"""``scan()``: one locked, resumable run over a folder — plan, score, report, write the worklists."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from cxrscreen.ingest import isolation
from cxrscreen.ingest.discover import discover
from cxrscreen.model.files import LoadedModel, load_model
from cxrscreen.model.inference import runtime_for
from cxrscreen.model.quantize import Int8Unavailable, load_calibration
from cxrscreen.options import Device, Precision, ReportPolicy, parse
from cxrscreen.outputs.dicom import DICOM_DIR, write_dicom_results
from cxrscreen.outputs.pages import PageStore
from cxrscreen.outputs.report import ReportSetup, write_reports
from cxrscreen.outputs.summary import write_summary_pdf
from cxrscreen.outputs.worklist import images_frame, studies_frame, write_csv
from cxrscreen.pipeline.context import (
    ProgressFn,
    RunContext,
    ScanInputError,
    ScanResult,
    borrowed_process_state,
)
from cxrscreen.pipeline.run_summary import drift_check, summarize
from cxrscreen.pipeline.scoring import score
from cxrscreen.state.atomic import atomic_write_text
from cxrscreen.state.ledger import STATE_DIR, Ledger, file_sha256, ledger_path
from cxrscreen.state.lock import folder_lock
from cxrscreen.studies import Study, group_studies

log = logging.getLogger("cxrscreen")

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
    files: list[Path], root: Path, ledger: Ledger, model_sha: str, rescan: bool
) -> tuple[list[tuple[Path, str | None]], int]:
    """Which files need work, and how many were skipped as already scored.

    Work items are ``(path, sha256)`` pairs; the sha256 is ``None`` for files the ledger has never
    seen: preparation hashes the very bytes it scores (one read).
    """
    known = ledger.known()
    todo: list[tuple[Path, str | None]] = []
    skipped = 0
    for p in files:
        rel = p.relative_to(root).as_posix()
        st = p.stat()
        k = known.get(rel)
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
            continue
        todo.append((p, None))
    return todo, skipped


def scan(
    folder: Path | str,
    out: Path | str = "cxrscreen-out",
    model: Path | str | LoadedModel | None = None,
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
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    points = lm.points if threshold is None else lm.points.overridden(threshold)
    rt = runtime_for(lm, device, precision)
    if rt.int8:  # refuse before anything is scanned, with the reason (a usage problem, exit 2)
        try:
            load_calibration(lm.path, lm.sha256)
        except Int8Unavailable as exc:
            raise ScanInputError(str(exc)) from exc
    out.mkdir(parents=True, exist_ok=True)
    state = out / STATE_DIR
    with (borrowed_process_state(), folder_lock(state), Ledger(ledger_path(out)) as ledger,
          isolation.helpers()):
        run_id = new_run_id(lambda rid: (out / "runs" / rid).exists() or ledger.has_run(rid))
        pages = None if policy is ReportPolicy.none else PageStore(state / "pages", policy, lm, rt)
        ctx = RunContext(folder, out, lm, rt, points, policy, batch_size, workers, ledger, run_id,
                         dicom_results=dicom_results, emit=progress or (lambda _e: None), pages=pages)
        return _run(ctx, rescan, t_start)


def _dicom_results(ctx: RunContext, studies: list[Study], changed: set[str], everything: bool) -> None:
    """(Re)write the DICOM results of the studies this run changed (new images, a new report), of
    every study when the threshold changed, and of scored studies that have none yet."""
    root = ctx.out / DICOM_DIR
    todo = [s for s in studies if everything or s.key in changed or not (root / s.key).is_dir()]
    written = write_dicom_results(ctx.out, todo, ctx.lm)
    log.info("DICOM results: %d objects written", len(written))


def _run(ctx: RunContext, rescan: bool, t_start: float) -> ScanResult:
    """The stages of one run, under its lock: plan → score → reports → worklists → summary."""
    ledger, d = ctx.ledger, ctx.durations
    ledger.start_run(ctx.run_id)
    resumed = ledger.unfinished_runs(exclude=ctx.run_id)  # killed runs: this run delivers their rows

    t = time.perf_counter()
    files = discover(ctx.folder)
    d["discover"] = time.perf_counter() - t
    t = time.perf_counter()
    todo, skipped = plan(files, ctx.folder, ledger, ctx.lm.sha256, rescan)
    redecided = ledger.redecide(ctx.lm.sha256, ctx.points)
    d["plan"] = time.perf_counter() - t
    log.info("run %s: %d files found, %d already scored, %d to process", ctx.run_id, len(files), skipped, len(todo))
    ctx.emit({"event": "start", "files": len(files), "todo": len(todo), "skipped": skipped, "run_id": ctx.run_id})

    reported: set[str] = set()
    try:
        new_records = score(ctx, todo)
        if resumed:
            own = {r.path for r in new_records}
            new_records = [r for rid in resumed for r in ledger.records(rid) if r.path not in own] + new_records
        all_studies = group_studies(ledger.records())  # the one study decision of this run
        if ctx.reports is not ReportPolicy.none:
            t = time.perf_counter()
            setup = ReportSetup(ctx.out, ctx.folder, ctx.lm, ctx.rt, ledger, ctx.pages, ctx.emit, d)
            reported, all_studies = write_reports(setup, all_studies, ctx.reports)
            d["reports"] = time.perf_counter() - t
    finally:
        if ctx.pages is not None:
            ctx.pages.close()
    if ctx.dicom_results:
        t = time.perf_counter()
        changed = {r.study_key for r in new_records} | reported
        _dicom_results(ctx, all_studies, changed, everything=redecided > 0)
        d["dicom_results"] = time.perf_counter() - t

    t = time.perf_counter()
    records = [r for s in all_studies for r in s.records]
    images = images_frame(records, ctx.lm.name)
    studies = studies_frame(all_studies, ctx.lm.name)
    images_csv = write_csv(images, ctx.out / "worklist_images.csv")
    studies_csv = write_csv(studies, ctx.out / "worklist_studies.csv")
    new_paths = {r.path for r in new_records}
    new_images = images[images["path"].isin(new_paths)].reset_index(drop=True)
    new_images["rank"] = range(1, len(new_images) + 1)
    write_csv(new_images, ctx.run_dir / "new_images.csv")
    write_csv(studies_frame(group_studies(r for r in records if r.path in new_paths), ctx.lm.name),
              ctx.run_dir / "new_studies.csv")
    d["worklists"] = time.perf_counter() - t

    exit_code = 1 if any(r.status.is_error for r in new_records) else 0
    summary = summarize(ctx, files, skipped, new_records, images, studies, time.time() - t_start, exit_code,
                        redecided)
    summary["resumed_runs"] = resumed
    summary["drift"] = drift_check(summary, ledger.previous_summaries(7, exclude=ctx.run_id))
    for w in summary["drift"]["warnings"]:
        log.warning("drift: %s", w)
    atomic_write_text(ctx.run_dir / "run.json", json.dumps(summary, indent=2) + "\n")
    ledger.finish_run(ctx.run_id, summary, resumed)
    write_summary_pdf(ctx.out / "summary.pdf", summary, studies, ctx.lm, ctx.threshold, images=images)
    return ScanResult(ctx.run_id, ctx.out, images_csv, studies_csv, ctx.run_dir, exit_code, summary)
