"""``cxrscreen export``: write a worklist from the ledger (for a RIS or a spreadsheet)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrscreen.cli.common import fail


def export_command(
    out: Annotated[Path, typer.Argument(help="Output folder of 'cxrscreen scan' (holds .cxrscreen/ledger.sqlite).")],
    to: Annotated[Path, typer.Option("--to", help="File to write (replaced atomically, mode 0640).")],
    since: Annotated[str | None, typer.Option(help="Only images scored on or after this date (YYYY-MM-DD).")] = None,
    decision: Annotated[str | None, typer.Option(help="abnormal,review,normal (any of them); default all.")] = None,
    level: Annotated[str, typer.Option(help="images (one row per image) | studies (one row per study).")] = "images",
    fmt: Annotated[str | None, typer.Option("--format", help="csv | json (default: by --to suffix).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
) -> None:
    """Export the cumulative worklist from the ledger: same columns and order as the worklist CSVs."""
    from cxrscreen.outputs.export import FORMATS, LEVELS, ExportError, export, parse_decisions, parse_since

    if not out.is_dir():
        fail(f"{out}: no such folder")
    if to.is_dir():
        fail(f"--to {to}: is a folder; give a file name")
    if not to.parent.is_dir():
        fail(f"--to {to}: folder {to.parent} does not exist")
    if level not in LEVELS:
        fail(f"--level: {level!r} is not {' or '.join(LEVELS)}")
    fmt = fmt or ("json" if to.suffix.lower() == ".json" else "csv")
    if fmt not in FORMATS:
        fail(f"--format: {fmt!r} is not {' or '.join(FORMATS)}")
    try:
        n = export(out, to, since=parse_since(since), decisions=parse_decisions(decision), level=level, fmt=fmt)
    except ExportError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"--to {to}: cannot write ({exc.strerror or exc})")
    if not quiet:
        typer.echo(f"exported {n} {level} to {to}", err=True)
