"""Shared CLI helpers: exit codes and one-line error messages."""

from __future__ import annotations

import sys
from enum import IntEnum
from pathlib import Path
from typing import NoReturn

import typer


class ExitCode(IntEnum):
    """Documented exit codes (README, "Exit codes")."""

    OK = 0
    FILE_ERRORS = 1  # the run finished, but some files could not be read/decoded
    USAGE = 2  # bad arguments, missing input, unusable model or manifest
    INTERNAL = 3  # unexpected failure (bug); details in the log
    GATE_REFUSED = 4  # adapt: the adapted model failed its acceptance gate; no model written
    LOCKED = 75  # another run holds the output folder's lock (EX_TEMPFAIL)


def fail(message: str, code: ExitCode = ExitCode.USAGE) -> NoReturn:
    """Print ``cxrscreen: error: message`` to stderr and exit with ``code``."""
    typer.echo(f"cxrscreen: error: {message}", err=True)
    raise typer.Exit(int(code))


def load_model_and_manifest(model: Path, manifest: Path, split: str, device: str, precision: str) -> tuple:
    """(LoadedModel, manifest rows of ``split``, Runtime), or exit 2 with the reason."""
    from cxrscreen.model.files import ModelIntegrityError, load_model
    from cxrscreen.model.inference import choose_runtime
    from cxrscreen.training.data import ManifestError, read_manifest

    try:
        lm = load_model(None if str(model) == "default" else model)
        return lm, read_manifest(manifest, split), choose_runtime(device, precision)
    except (ManifestError, FileNotFoundError, ModelIntegrityError, ValueError, RuntimeError) as exc:
        fail(str(exc))


def is_tty() -> bool:
    return sys.stderr.isatty()
