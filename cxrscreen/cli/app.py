"""The ``cxrscreen`` Typer application: joins the command modules."""

from __future__ import annotations

import typer

from cxrscreen import settings
from cxrscreen.cli.adapt import adapt_command
from cxrscreen.cli.calibrate import calibrate_command
from cxrscreen.cli.evaluate import evaluate_command
from cxrscreen.cli.export import export_command
from cxrscreen.cli.listen import listen_command
from cxrscreen.cli.pull import pull_command
from cxrscreen.cli.scan import scan_command
from cxrscreen.cli.send import send_command
from cxrscreen.cli.train import train_command
from cxrscreen.version import __version__

app = typer.Typer(
    name="cxrscreen",
    help="Overnight chest X-ray triage: DICOM folder → QC → ResNet50 → worklists and reports.\n\n"
    "Research use only; not a medical device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("scan")(scan_command)
app.command("train")(train_command)
app.command("evaluate")(evaluate_command)
app.command("calibrate")(calibrate_command)
app.command("export")(export_command)
app.command("adapt")(adapt_command)
app.command("pull")(pull_command)
app.command("send")(send_command)
app.command("listen")(listen_command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cxrscreen {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Overnight chest X-ray triage (research use, not a medical device)."""


def main() -> None:
    """The ``cxrscreen`` command: the environment's settings are read here, once (:mod:`cxrscreen.settings`)."""
    for name in settings.load().ignored:
        typer.echo(f"cxrscreen: warning: {name} is not a usable value; its default applies", err=True)
    app()
