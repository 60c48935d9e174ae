"""``cxrscreen send``: C-STORE (or DICOMweb STOW-RS) the DICOM result objects under OUT/dicom/ that the
destination has not acknowledged."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from cxrscreen.cli.common import (
    AsJson,
    CallingAet,
    ExitCode,
    LogFile,
    Quiet,
    Timeout,
    TlsCa,
    TlsCert,
    TlsKey,
    destination,
    fail,
)
from cxrscreen.logs import setup_logging
from cxrscreen.outputs import DICOM_DIR


def send_command(
    out: Annotated[Path, typer.Argument(help="Output folder of 'cxrscreen scan --dicom-results' (holds dicom/).")],
    to: Annotated[str, typer.Option("--to", help="The destination: AET@HOST:PORT (e.g. ORTHANC@pacs.example.org:4242), or a DICOMweb base URL (e.g. https://pacs.example.org/dicom-web; credentials from CXRSCREEN_DICOMWEB_USER/_PASSWORD or _TOKEN).")],
    calling_aet: CallingAet = "CXRSCREEN",
    retries: Annotated[int, typer.Option(min=0, max=20, help="Further associations tried after an association failure or a transient status.")] = 3,
    retry_delay: Annotated[float, typer.Option("--retry-delay", min=0, max=3600, help="Seconds before the first retry; doubled before each further one.")] = 5.0,
    timeout: Timeout = 30.0,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_ca: TlsCa = None,
    quiet: Quiet = False,
    as_json: AsJson = False,
    log_file: LogFile = None,
) -> None:
    """Send the result objects (SR, encapsulated PDF) not yet acknowledged by --to; a second send sends nothing new."""
    from cxrscreen.pacs import Link, Retry, send
    from cxrscreen.state.lock import LockedError

    where = destination(to, "--to", calling_aet, tls_cert, tls_key, tls_ca, os.environ)
    if not out.is_dir():
        fail(f"{out}: no such folder")
    if not (out / DICOM_DIR).is_dir():
        fail(f"{out}: holds no dicom/ folder; run 'cxrscreen scan --dicom-results' first")
    setup_logging(quiet=quiet or as_json, log_file=log_file)
    try:
        result = send(out, where.peer, link=Link(calling_aet, timeout, where.tls, where.credentials),
                      retry=Retry(retries, retry_delay))
    except LockedError as exc:
        fail(f"{exc}; not sending while it runs", ExitCode.LOCKED)
    code = ExitCode.USAGE if result.unreachable else ExitCode.OK if result.complete else ExitCode.NOT_SENT
    if as_json:
        typer.echo(json.dumps(result.summary() | {"exit_code": int(code)}, indent=2))
    elif not quiet and not result.unreachable:  # unreachable: the error line alone
        typer.echo(f"{result.found} result objects: {result.sent} sent, {result.already_acknowledged} already "
                   f"acknowledged, {result.failed} not sent", err=True)
    if result.unreachable:
        typer.echo(f"cxrscreen: error: {result.error} (after {result.attempts} attempt(s)); nothing sent", err=True)
    elif result.failed:
        typer.echo(f"cxrscreen: error: {result.failed} object(s) not acknowledged; the next send tries them again "
                   f"(exit code {int(code)})", err=True)
    logging.getLogger("cxrscreen").info("send finished with exit code %d", int(code))
    raise typer.Exit(int(code))
