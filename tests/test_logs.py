"""Logging: third-party warnings, loggers and native stderr lines reach the log scrubbed of values and paths."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.misc import warn_and_log

from cxrscreen.logs import (
    MAX_MESSAGE,
    THIRD_PARTY_LOGGERS,
    file_handle,
    native_stderr_to_log,
    scrub,
    setup_logging,
)
from cxrscreen.safetext import has_forbidden

NAME = "DOE^JANE"


@pytest.fixture
def isolated_logging() -> Iterator[None]:
    """Restore the loggers and the warnings machinery that ``setup_logging`` changes."""
    names = ("cxrscreen", *THIRD_PARTY_LOGGERS)
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in names}
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        yield
    for n, (handlers, propagate) in saved.items():
        lg = logging.getLogger(n)
        for h in lg.handlers:
            if h not in handlers:
                h.close()
        lg.handlers[:] = handlers
        lg.propagate = propagate


def test_scrub_drops_quoted_values_and_paths(tmp_path: Path):
    root = tmp_path / "pacs export"
    f = root / NAME / "m 003.dcm"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"")
    assert scrub(f"Invalid value for VR PN: '{NAME}'. See <https://x.example/a>") == \
        "Invalid value for VR PN: '…'. See <path>"
    assert scrub(f'bad "{NAME}" and b\'\\x00{NAME}\'') == "bad '…' and '…'"
    assert scrub(f"End of file reached before delimiter (FFFE,E0DD) found in file {f}", root) == \
        f"End of file reached before delimiter (FFFE,E0DD) found in file <file {file_handle(f'{NAME}/m 003.dcm')}>"
    assert scrub(f"cannot open {f}", tmp_path / "elsewhere") == "cannot open <path>"
    assert scrub(f"relative {NAME}/m003.dcm: truncated") == "relative <path>"


def test_scrub_is_one_bounded_line():
    text = scrub("line1\nline2\r\x00\u202e" + "x" * 10_000)
    assert not has_forbidden(text) and len(text) <= MAX_MESSAGE and text.startswith("line1\\nline2\\r\\x00")


def test_warnings_and_library_loggers_are_routed_scrubbed(tmp_path: Path, capsys, isolated_logging):
    log = tmp_path / "scan.log"
    setup_logging(quiet=True, log_file=log, root=tmp_path)
    warnings.warn(f"Invalid value for VR UI: '{NAME}'", UserWarning, stacklevel=1)
    logging.getLogger("pydicom").warning("file %s is odd", tmp_path / NAME / "a.dcm")
    logging.getLogger("openjpeg").error("decoding failed for '%s'", NAME)
    warn_and_log(f"Invalid value for VR PN: '{NAME}'")  # pydicom logs it *and* warns it: one line
    text = log.read_text(encoding="utf-8")
    assert NAME not in text and str(tmp_path) not in text
    assert "Invalid value for VR UI: '…'" in text and "cxrscreen.lib" in text
    assert f"pydicom: file <file {file_handle(NAME + '/a.dcm')}>\n" in text  # the path and all after it
    assert "openjpeg: decoding failed for '…'" in text
    assert text.count("Invalid value for VR PN") == 1
    assert capsys.readouterr().err == ""  # quiet


def test_not_quiet_shows_third_party_warnings_scrubbed(tmp_path: Path, capsys, isolated_logging):
    setup_logging(quiet=False)
    warnings.warn(f"bad value '{NAME}'", UserWarning, stacklevel=1)
    logging.getLogger("cxrscreen").warning("two\nlines")
    err = capsys.readouterr().err
    assert "bad value '…'" in err and NAME not in err
    assert "two\\nlines" in err


def test_native_stderr_is_logged_scrubbed(tmp_path: Path, capfd, isolated_logging):
    log = tmp_path / "scan.log"
    setup_logging(quiet=True, log_file=log, root=tmp_path)
    with native_stderr_to_log(tmp_path):
        os.write(2, f"Corrupt JPEG data in {tmp_path / NAME / 'x.dcm'}\npartial line without newline".encode())
        print("cxrscreen: error: python's own stderr still works", file=sys.stderr)
    out = capfd.readouterr()
    assert NAME not in out.err and "Corrupt JPEG" not in out.err
    assert "python's own stderr still works" in out.err
    text = log.read_text(encoding="utf-8")
    assert f"cxrscreen.native: native library: Corrupt JPEG data in <file {file_handle(NAME + '/x.dcm')}>" in text
    assert "native library: partial line without newline" in text and NAME not in text
    os.write(2, b"after the capture\n")  # fd 2 restored
    assert "after the capture" in capfd.readouterr().err
