"""``cxrscreen export``: write a worklist from the ledger (for a RIS or a spreadsheet)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrscreen.cli.common import Quiet, fail
from cxrscreen.options import ExportFormat, ExportLevel


def export_command(
    out: Annotated[Path, typer.Argument(help="Output folder of 'cxrscreen scan' (holds .cxrscreen/ledger.sqlite).")],
    to: Annotated[Path, typer.Option("--to", help="File to write (replaced atomically, mode 0640).")],
    since: Annotated[str | None, typer.Option(help="Only images scored on or after this date (YYYY-MM-DD).")] = None,
    decision: Annotated[str | None, typer.Option(help="abnormal,review,normal (any of them); default all.")] = None,
    level: Annotated[ExportLevel, typer.Option(help="One row per image or one row per study.")] = ExportLevel.images,
    fmt: Annotated[ExportFormat | None, typer.Option("--format", help="Default: json for a .json --to, else csv.")] = None,
    quiet: Quiet = False,
) -> None:
    """Export the cumulative worklist from the ledger: same columns and order as the worklist CSVs."""
    from cxrscreen.outputs.export import ExportError, export, parse_decisions, parse_since

    fmt = fmt or (ExportFormat.json if to.suffix.lower() == ".json" else ExportFormat.csv)
    try:
        n = export(out, to, since=parse_since(since), decisions=parse_decisions(decision), level=level.value,
                   fmt=fmt.value)
    except ExportError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"--to {to}: cannot write ({exc.strerror or exc})")
    if not quiet:
        typer.echo(f"exported {n} {level.value} to {to}", err=True)
