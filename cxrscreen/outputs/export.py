"""``export``: a worklist for a RIS or a spreadsheet, read from the ledger (the Python API).

The rows and columns are those of ``worklist_images.csv`` / ``worklist_studies.csv`` (built by the
same functions), filtered by scoring date and decision, then ranked again from 1. The ledger is
opened read-only and without the run lock, so an export works while a scan runs (SQLite WAL gives
it the rows committed so far) and for users who may read, but not write, the output folder.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from cxrscreen.options import ExportFormat, ExportLevel, parse
from cxrscreen.outputs.worklist import images_frame, studies_frame, study_keys, write_csv
from cxrscreen.records import DECISION_ORDER
from cxrscreen.safetext import escape_forbidden
from cxrscreen.state.atomic import atomic_write_text
from cxrscreen.state.ledger import LEDGER_NAME, STATE_DIR, Ledger, ledger_path
from cxrscreen.studies import group_studies

DECISIONS = tuple(DECISION_ORDER)


class ExportError(ValueError):
    """Bad input (no ledger, bad date, unknown decision…): exit code 2."""


class ReadOnlyLedger(Ledger):
    """The ledger opened read-only: no schema creation, no chmod, no lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        uri = f"{path.resolve().as_uri()}?mode=ro"
        self.db = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)


def parse_since(text: str | None) -> dt.date | None:
    """``YYYY-MM-DD`` (exactly) → date; None passes through."""
    if text is None:
        return None
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
        raise ExportError(f"--since: {text!r} is not a date (YYYY-MM-DD)")
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError as exc:
        raise ExportError(f"--since: {text!r} is not a valid date ({exc})") from exc


def parse_decisions(text: str | None) -> tuple[str, ...] | None:
    """``abnormal,review`` → ('abnormal', 'review'); None means every decision."""
    if text is None:
        return None
    values = [v.strip().lower() for v in text.split(",") if v.strip()]
    if not values:
        raise ExportError(f"--decision: give one or more of {', '.join(DECISIONS)}")
    unknown = [v for v in values if v not in DECISIONS]
    if unknown:
        raise ExportError(f"--decision: unknown decision {unknown[0]!r} (choose from {', '.join(DECISIONS)})")
    return tuple(dict.fromkeys(values))


def _model_names(ledger: Ledger) -> dict[str, str]:
    """Model sha256 prefix (as in the worklists) → model name, from the finished runs' summaries."""
    names: dict[str, str] = {}
    for s in reversed(ledger.previous_summaries(limit=-1)):  # oldest first: newer names win
        model = s.get("model") or {}
        if model.get("sha256") and model.get("name"):
            names[str(model["sha256"])[:12]] = str(model["name"])
    return names


def _rerank(df: pd.DataFrame) -> pd.DataFrame:
    df = df.reset_index(drop=True)
    df["rank"] = range(1, len(df) + 1)
    return df


def export_frame(
    out: Path | str,
    since: dt.date | None = None,
    decisions: Iterable[str] | None = None,
    level: ExportLevel | str = ExportLevel.images,
) -> pd.DataFrame:
    """The filtered worklist (images or studies) from ``OUT``'s ledger, ranked from 1.

    ``since`` keeps images scored on or after that (local) date; at study level it keeps studies
    with at least one such image, each still summarised over all its images. ``decisions`` is
    applied last (to the study decision at study level).
    """
    try:
        level = parse(ExportLevel, level, "--level")
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    if not Path(out).is_dir():
        raise ExportError(f"{out}: no such folder")
    db_path = ledger_path(out)
    if not db_path.is_file():
        raise ExportError(f"{out}: no ledger ({STATE_DIR}/{LEDGER_NAME}); run 'cxrscreen scan' into it first")
    try:
        with ReadOnlyLedger(db_path) as ledger:
            names = _model_names(ledger)
            records = list(ledger.records())
    except sqlite3.DatabaseError as exc:
        raise ExportError(f"{db_path}: not a readable cxrscreen ledger ({exc})") from exc
    images = images_frame(records, names)
    recent = images
    if since is not None:
        recent = images[images["scored_at"].str[:10] >= since.isoformat()]
    if level is ExportLevel.images:
        df = recent
    else:
        df = studies_frame(group_studies(records), names)
        if since is not None:
            keys = set(study_keys(recent)) if len(recent) else set()
            own = df["StudyInstanceUID"].where(df["StudyInstanceUID"] != "", "file:" + df["paths"])
            df = df[own.isin(keys)]
    if decisions is not None:
        df = df[df["decision"].isin(list(decisions))]
    return _rerank(df)


def write_export(df: pd.DataFrame, to: Path | str, fmt: ExportFormat | str = ExportFormat.csv) -> Path:
    """Atomic write (mode 0640) as CSV (like the worklists: formula-guarded, see ``worklist.write_csv``) or
    JSON (a list of row objects, nulls for blanks, control characters escaped)."""
    to = Path(to)
    try:
        fmt = parse(ExportFormat, fmt, "--format")
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    if fmt is ExportFormat.csv:
        return write_csv(df, to)
    rows = df.astype(object).where(df.notna(), None).map(_one_line).to_dict(orient="records")
    atomic_write_text(to, json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    return to


def _one_line(value: object) -> object:
    """Strings with control and bidi characters escaped (old ledger rows, file names); JSON needs no formula guard."""
    return escape_forbidden(value) if isinstance(value, str) else value


def export(
    out: Path | str,
    to: Path | str,
    since: dt.date | None = None,
    decisions: Iterable[str] | None = None,
    level: ExportLevel | str = ExportLevel.images,
    fmt: str = "csv",
) -> int:
    """Write the filtered worklist to ``to``; returns the number of rows. :class:`ExportError` for a bad
    argument (checked before anything is read)."""
    to = Path(to)
    if to.is_dir():
        raise ExportError(f"--to {to}: is a folder; give a file name")
    if not to.parent.is_dir():
        raise ExportError(f"--to {to}: folder {to.parent} does not exist")
    df = export_frame(out, since, decisions, level)
    write_export(df, to, fmt)
    return len(df)
