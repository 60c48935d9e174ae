"""``cxrscreen pull``: fetch a PACS's CR/DX studies (C-FIND and C-GET, or DICOMweb QIDO-RS and WADO-RS) into a
folder, one folder per study."""

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
from cxrscreen.options import Modality


def pull_command(
    source: Annotated[str, typer.Option("--from", help="The PACS: AET@HOST:PORT (e.g. ORTHANC@pacs.example.org:4242), or a DICOMweb base URL (e.g. https://pacs.example.org/dicom-web; credentials from CXRSCREEN_DICOMWEB_USER/_PASSWORD or _TOKEN).")],
    to: Annotated[Path, typer.Option("--to", help="Folder to fetch into: DIR/<StudyInstanceUID>/<SOPInstanceUID>.dcm.")],
    since: Annotated[str | None, typer.Option(help="Only studies dated on or after this day (YYYYMMDD).")] = None,
    until: Annotated[str | None, typer.Option(help="Only studies dated on or before this day (YYYYMMDD).")] = None,
    modality: Annotated[list[Modality] | None, typer.Option("--modality", help="Modality to fetch; repeat for several (default: CR and DX).")] = None,
    calling_aet: CallingAet = "CXRSCREEN",
    timeout: Timeout = 30.0,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_ca: TlsCa = None,
    quiet: Quiet = False,
    as_json: AsJson = False,
    log_file: LogFile = None,
) -> None:
    """Fetch the CR/DX images of the PACS's studies in a date range; instances already in --to are not fetched again."""
    from cxrscreen.pacs import DateRangeError, Link, PacsError, date_range, pull

    where = destination(source, "--from", calling_aet, tls_cert, tls_key, tls_ca, os.environ)
    try:
        date_range(since, until)
    except DateRangeError as exc:
        fail(str(exc))
    if to.exists() and not to.is_dir():
        fail(f"--to {to}: exists and is not a folder")
    try:
        to.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"--to {to}: cannot create ({exc.strerror or exc})")
    setup_logging(quiet=quiet or as_json, log_file=log_file)
    modalities = [m.value for m in modality] if modality else ["CR", "DX"]
    try:
        result = pull(where.peer, to, since=since, until=until, modalities=modalities,
                      link=Link(calling_aet, timeout, where.tls, where.credentials))
    except PacsError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"--to {to}: cannot write ({exc.strerror or exc})")
    code = ExitCode.OK if result.complete else ExitCode.FILE_ERRORS
    if as_json:
        typer.echo(json.dumps(result.summary() | {"exit_code": int(code)}, indent=2))
    elif not quiet:
        typer.echo(f"{result.studies} studies, {result.instances} CR/DX instances: {result.fetched} fetched, "
                   f"{result.already_present} already present, {result.failed} failed", err=True)
    if result.error:
        typer.echo(f"cxrscreen: error: {result.error}; the next pull resumes", err=True)
    elif result.failed:
        typer.echo(f"cxrscreen: error: {result.failed} instance(s) not received; the next pull tries them again",
                   err=True)
    logging.getLogger("cxrscreen").info("pull finished with exit code %d", int(code))
    raise typer.Exit(int(code))
