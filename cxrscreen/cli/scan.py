"""``cxrscreen scan``: score every DICOM file under a folder and write the worklists."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cxrscreen.cli.common import (
    AsJson,
    BatchSize,
    DeviceOpt,
    DicomResults,
    ExitCode,
    LogFile,
    ModelFile,
    PrecisionOpt,
    Quiet,
    Reports,
    Threshold,
    fail,
    is_tty,
)
from cxrscreen.events import BatchScored, Event, ReportWritten, ScanStarted
from cxrscreen.logs import native_stderr_to_log, setup_logging
from cxrscreen.options import Device, Engine, Precision, ReportPolicy


def scan_command(
    folder: Annotated[Path, typer.Argument(help="Folder to scan recursively for DICOM files.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (worklists, reports, ledger).")] = Path(
        "cxrscreen-out"
    ),
    model: ModelFile = None,
    threshold: Threshold = None,
    device: DeviceOpt = Device.auto,
    precision: PrecisionOpt = Precision.auto,
    batch_size: BatchSize = 16,
    workers: Annotated[int | None, typer.Option(min=0, max=64, help="Decode worker processes; 0 decodes in the main process (default: chosen after timing the first batch).")] = None,
    reports: Reports = ReportPolicy.flagged,
    rescan: Annotated[bool, typer.Option("--rescan", help="Score every file again, even if the ledger has it.")] = False,
    dicom_results: DicomResults = False,
    engine: Annotated[Engine, typer.Option("--engine", help="local: this machine (threads or worker processes); ray: Ray Data on a Ray cluster (pip install 'cxrscreen[ray]'), the driver keeping the ledger.")] = Engine.local,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="--engine ray: the cluster to join (e.g. ray://head:10001 or auto); default: a local one.")] = None,
    quiet: Quiet = False,
    as_json: AsJson = False,
    log_file: LogFile = None,
) -> None:
    """Find DICOM files, reject what is not an assessable frontal chest film, score the rest, write worklists."""
    from cxrscreen import scan
    from cxrscreen.model.meta import ModelIntegrityError  # no torch: a scan with nothing to score imports none
    from cxrscreen.options import OptionError, ScanOptions
    from cxrscreen.pipeline import ScanStopped
    from cxrscreen.state.lock import LockedError

    try:
        options = ScanOptions(threshold=threshold, device=device, precision=precision, batch_size=batch_size,
                              workers=workers, reports=reports, rescan=rescan, dicom_results=dicom_results,
                              engine=engine, ray_address=ray_address)
    except OptionError as exc:
        fail(str(exc))
    os.umask(0o027)  # the CLI's process: outputs (worklists, reports, ledger) owner/group-only
    setup_logging(quiet=quiet or as_json, log_file=log_file, root=folder)
    console = Console(stderr=True, quiet=quiet or as_json)
    progress = Progress(TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                        TimeElapsedColumn(), console=console, disable=quiet or as_json or not is_tty(), transient=True)
    task = None

    def on_event(e: Event) -> None:
        nonlocal task
        match e:
            case ScanStarted(todo=todo):
                task = progress.add_task("scan", total=todo, rate="")
            case BatchScored(done=done, img_s=rate) if task is not None:
                progress.update(task, completed=done, rate=f"{rate:.1f} img/s")
            case ReportWritten() if task is not None:
                progress.update(task, description="reports")

    try:
        with native_stderr_to_log(folder), progress:  # decoders' own stderr lines → the log, scrubbed
            result = scan(folder, out, model, options, progress=on_event)
    except LockedError as exc:
        fail(f"{exc}; not starting a second run", ExitCode.LOCKED)
    except (OptionError, FileNotFoundError, ModelIntegrityError) as exc:
        fail(str(exc))
    except (KeyboardInterrupt, SystemExit):
        raise
    except ScanStopped as exc:  # what happened and what to do, one line; its cause (Ray's error) in the log only
        logging.getLogger("cxrscreen").info("scan stopped", exc_info=exc)
        fail(str(exc), ExitCode.INTERNAL)
    except BaseException as exc:  # a bug, not a bad file (a codec's panic too): say so, log it, distinct exit code
        if isinstance(exc, RuntimeError) and "CUDA" in str(exc):
            fail(str(exc))
        logging.getLogger("cxrscreen").exception("internal error")
        fail(f"internal error ({type(exc).__name__}); details in the log", ExitCode.INTERNAL)
    s = result.summary
    if as_json:
        typer.echo(json.dumps(s.to_json(), indent=2))
    else:
        decisions = ", ".join(f"{v} {k}" for k, v in sorted(s.decisions.items())) or "nothing new"
        console.print(f"{s.files_found} files, {s.files_skipped_already_scored} already scored, "
                      f"{s.files_processed} processed: {decisions}")
        console.print(f"worklists: {result.images_csv} and {result.studies_csv}")
        if s.errors:
            console.print(f"{s.errors} file(s) could not be read; see the status column (exit code 1)")
    logging.getLogger("cxrscreen").info("run %s finished with exit code %d", result.run_id, result.exit_code)
    raise typer.Exit(result.exit_code)
