"""Shared CLI helpers: exit codes and one-line error messages."""

from __future__ import annotations

import sys
from enum import IntEnum
from typing import NoReturn

import typer


class ExitCode(IntEnum):
    """Documented exit codes (README, "Exit codes")."""

    OK = 0
    FILE_ERRORS = 1  # the run finished, but some files could not be read/decoded
    USAGE = 2  # bad arguments, missing input, unusable model or manifest
    INTERNAL = 3  # unexpected failure (bug); details in the log
    LOCKED = 75  # another run holds the output folder's lock (EX_TEMPFAIL)


def fail(message: str, code: ExitCode = ExitCode.USAGE) -> NoReturn:
    """Print ``cxrscreen: error: message`` to stderr and exit with ``code``."""
    typer.echo(f"cxrscreen: error: {message}", err=True)
    raise typer.Exit(int(code))


def is_tty() -> bool:
    return sys.stderr.isatty()
