"""Logging set-up: warnings to stderr (unless quiet), everything to --log-file; no patient data."""

from __future__ import annotations

import logging
import os
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class OneLineFormatter(logging.Formatter):
    """For the terminal: the message only, never a traceback (that goes to --log-file)."""

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return super().format(record)


def setup_logging(quiet: bool = False, log_file: Path | None = None) -> None:
    logger = logging.getLogger("cxrscreen")
    logger.setLevel(logging.INFO)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    logger.propagate = False
    logger.addHandler(logging.NullHandler())  # quiet means quiet: no "last resort" stderr output
    if not quiet:
        err = logging.StreamHandler()
        err.setLevel(logging.WARNING)
        err.setFormatter(OneLineFormatter("cxrscreen: %(levelname)s: %(message)s"))
        logger.addHandler(err)
    if log_file is not None:
        old = os.umask(0o027)
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(log_file, encoding="utf-8")
        finally:
            os.umask(old)
        fh.setLevel(logging.INFO)
        fh.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(fh)
