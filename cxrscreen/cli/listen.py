"""``cxrscreen listen``: a DICOM node (C-STORE + C-ECHO) that scores each study once it goes quiet."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

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
    Timeout,
    TlsCa,
    TlsCert,
    TlsKey,
    destination,
    fail,
    tls_files,
)
from cxrscreen.logs import OneLineFormatter, StderrHandler, native_stderr_to_log, setup_logging
from cxrscreen.options import Device, OptionError, Precision, ReportPolicy, ScanOptions


def listen_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: the spool of received images (OUT/spool), the ledger, worklists, reports.")],
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port to listen on (DICOM: 104 or 11112).")],
    aet: Annotated[str, typer.Option("--aet", help="Our AE title: the called AE title the PACS or modality sends to.")] = "CXRSCREEN",
    host: Annotated[str, typer.Option("--host", help="The address to listen on (default: every interface).")] = "0.0.0.0",
    study_timeout: Annotated[float, typer.Option("--study-timeout", min=0.1, max=86400, help="Seconds without a new image of a study before it is scored.")] = 10.0,
    forward: Annotated[str | None, typer.Option("--forward", help="AET@HOST:PORT (over TLS with the --tls options) or a DICOMweb URL (credentials from CXRSCREEN_DICOMWEB_*): send each scored study's results (SR + PDF) there; implies --dicom-results.")] = None,
    allow: Annotated[list[str] | None, typer.Option("--allow", metavar="AET", help="Accept associations only from this calling AE title (repeatable).")] = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_ca: TlsCa = None,
    model: ModelFile = None,
    threshold: Threshold = None,
    device: DeviceOpt = Device.auto,
    precision: PrecisionOpt = Precision.auto,
    batch_size: BatchSize = 16,
    reports: Reports = ReportPolicy.flagged,
    dicom_results: DicomResults = False,
    timeout: Timeout = 30.0,
    quiet: Quiet = False,
    as_json: AsJson = False,
    log_file: LogFile = None,
) -> None:
    """Receive CR/DX/SC images (C-STORE), score each study once no image of it has arrived for --study-timeout
    seconds, write what `scan` writes under OUT, and forward the results. SIGTERM or Ctrl-C: stop accepting,
    finish the study in hand, exit 0 (a second one: exit at once)."""
    from cxrscreen.pacs import AddressError, WebEndpoint
    from cxrscreen.pacs.listen import SPOOL_DIR, ListenConfig, ListenError, Node
    from cxrscreen.pacs.tls import TlsError
    from cxrscreen.state.lock import LockedError

    tls = tls_files(tls_cert, tls_key, tls_ca)
    target = destination(forward, "--forward", aet, None, None, None, os.environ) if forward is not None else None
    if target is not None and tls is not None and not isinstance(target.peer, WebEndpoint):
        target = replace(target, tls=tls)  # one node identity: a DIMSE forward goes over TLS too
    try:
        options = ScanOptions(threshold=threshold, device=device, precision=precision, batch_size=batch_size,
                              reports=reports, dicom_results=dicom_results)
    except OptionError as exc:
        fail(str(exc))
    if out.exists() and not out.is_dir():
        fail(f"--out {out}: exists and is not a folder")
    os.umask(0o027)  # the spool and every output: owner/group only
    setup_logging(quiet=quiet or as_json, log_file=log_file, root=out / SPOOL_DIR)
    node_log, info = logging.getLogger("cxrscreen.pacs.listen"), StderrHandler(logging.INFO)
    info.setFormatter(OneLineFormatter("cxrscreen: %(message)s"))
    info.addFilter(lambda r: r.levelno < logging.WARNING)  # warnings: the handler setup_logging made
    if not (quiet or as_json):  # the node's INFO lines (associations, studies) on stderr too: the service's journal
        node_log.addHandler(info)
    config = ListenConfig(out, port, aet=aet, host=host, study_timeout=study_timeout, allow=tuple(allow or ()), tls=tls,
                          model=model, options=options, timeout=timeout,
                          forward=target.peer if target else None, forward_tls=target.tls if target else None,
                          forward_credentials=target.credentials if target else None)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():  # a second one: leave now (the next start scores what was acknowledged)
            os._exit(128 + signum)
        stop.set()

    try:
        node = Node(config)  # checks the AE titles
    except AddressError as exc:
        fail(str(exc))
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with native_stderr_to_log(out / SPOOL_DIR):  # decoders' own stderr lines → the log, scrubbed
            node.run(stop)
    except LockedError as exc:
        fail(f"{exc}; another cxrscreen listen serves {out}", ExitCode.LOCKED)
    except (ListenError, TlsError) as exc:
        fail(str(exc))
    except Exception as exc:  # a bug: say so, log it, distinct exit code
        logging.getLogger("cxrscreen").exception("internal error")
        fail(f"internal error ({type(exc).__name__}); details in the log", ExitCode.INTERNAL)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        node_log.removeHandler(info)
    if as_json:
        typer.echo(json.dumps(node.stats.summary(), indent=2))
    if node.error is not None:
        fail(node.error)
    logging.getLogger("cxrscreen").info("listen stopped with exit code 0")
