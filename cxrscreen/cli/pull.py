"""``cxrscreen pull``: fetch a PACS's CR/DX studies (C-FIND, then C-GET) into a folder, one folder per study."""

from __future__ import annotations

import json
import logging
from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import typer

from cxrscreen.cli.common import AsJson, CallingAet, ExitCode, LogFile, Quiet, Timeout, fail, pacs_address
from cxrscreen.logs import setup_logging
from cxrscreen.options import Modality


def _day(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y%m%d").date()
    except ValueError:
        fail(f"{option} {value!r}: expected a date as YYYYMMDD, e.g. 20261124")


def pull_command(
    source: Annotated[str, typer.Option("--from", help="The PACS: AET@HOST:PORT (e.g. ORTHANC@pacs.example.org:4242).")],
    to: Annotated[Path, typer.Option("--to", help="Folder to fetch into: DIR/<StudyInstanceUID>/<SOPInstanceUID>.dcm.")],
    since: Annotated[str | None, typer.Option(help="Only studies dated on or after this day (YYYYMMDD).")] = None,
    until: Annotated[str | None, typer.Option(help="Only studies dated on or before this day (YYYYMMDD).")] = None,
    modality: Annotated[list[Modality] | None, typer.Option("--modality", help="Modality to fetch; repeat for several (default: CR and DX).")] = None,
    calling_aet: CallingAet = "CXRSCREEN",
    timeout: Timeout = 30.0,
    quiet: Quiet = False,
    as_json: AsJson = False,
    log_file: LogFile = None,
) -> None:
    """Fetch the CR/DX images of the PACS's studies in a date range; instances already in --to are not fetched again."""
    from cxrscreen.pacs import PacsError, pull

    address = pacs_address(source, "--from", calling_aet)
    first, last = _day(since, "--since"), _day(until, "--until")
    if first and last and first > last:
        fail(f"--since {since} is after --until {until}")
    if to.exists() and not to.is_dir():
        fail(f"--to {to}: exists and is not a folder")
    try:
        to.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"--to {to}: cannot create ({exc.strerror or exc})")
    setup_logging(quiet=quiet or as_json, log_file=log_file)
    modalities = [m.value for m in modality] if modality else ["CR", "DX"]
    try:
        result = pull(address, to, since=first, until=last, modalities=modalities, calling_aet=calling_aet,
                      timeout=timeout)
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
