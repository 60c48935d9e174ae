"""Logging set-up: warnings to stderr (unless quiet), everything to --log-file; no patient data.

Patient data reaches log lines by three roads, and each is closed here:

* cxrscreen's own messages name files by :func:`file_handle` (a hash of the path relative to the
  scanned folder), never by path or tag value; every line is escaped to one line
  (:func:`cxrscreen.safetext.escape_forbidden`).
* Third-party Python messages, i.e. :mod:`warnings` and the loggers of pydicom and the decoders
  (:data:`THIRD_PARTY_LOGGERS`), are routed into the ``cxrscreen.lib`` logger after :func:`scrub`:
  quoted text (where pydicom puts header values) becomes ``'…'`` and a path becomes the file's
  handle (or ``<path>``).
* Native libraries that write to file descriptor 2 themselves (libjpeg's "Corrupt JPEG data…")
  are captured during a scan by :func:`native_stderr_to_log` and logged the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

from cxrscreen.safetext import bounded, escape_forbidden

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Loggers of the libraries that read, decode and write DICOM files.
THIRD_PARTY_LOGGERS = ("pydicom", "highdicom", "pylibjpeg", "openjpeg", "libjpeg", "jpeg_ls", "rle", "glymur", "PIL")
MAX_MESSAGE = 300  # characters of a third-party message kept (a pydicom warning can quote megabytes)

_QUOTED = re.compile(r"""b?'(?:[^'\\]|\\.)*'?|b?"(?:[^"\\]|\\.)*"?""", re.DOTALL)
_PATH = re.compile(r"""[^\s'"]*[/\\]""")  # the first token holding a path separator, up to it
_TRAILING = ".,;:)]}>"


def file_handle(relpath: str) -> str:
    """Non-identifying handle of a file (its path relative to the scanned folder) for logs."""
    return hashlib.sha256(relpath.encode()).hexdigest()[:12]


def scrub(message: str, root: Path | None = None) -> str:
    """A third-party message without values or paths, on one line, at most ``MAX_MESSAGE`` characters.

    Quoted text becomes ``'…'``; from the first token holding ``/`` or ``\\`` to the end becomes
    ``<file HANDLE>`` when it names a file under ``root``, else ``<path>`` (libraries put the path
    last; what follows a path is dropped with it, since a path may hold spaces).
    """
    text = _QUOTED.sub("'…'", str(message))[: 4 * MAX_MESSAGE]
    m = _PATH.search(text)
    if m:
        text = text[: m.start()] + _path_label(text[m.start():], root)
    return bounded(" ".join(escape_forbidden(text).split()), MAX_MESSAGE)


def _path_label(tail: str, root: Path | None) -> str:
    """``<file HANDLE>`` for the longest existing path (else the first word) that ``tail`` starts
    with, when it lies under ``root``; otherwise ``<path>``."""
    if root is None:
        return "<path>"
    words = tail.split(" ")[:32]
    prefixes = [" ".join(words[:n]).rstrip(_TRAILING) for n in range(len(words), 0, -1)]
    chosen = next((p for p in prefixes if os.path.lexists(p)), prefixes[-1])
    with contextlib.suppress(OSError, ValueError):
        rel = Path(chosen).resolve().relative_to(root.resolve())
        if rel.parts:
            return f"<file {file_handle(rel.as_posix())}>"
    return "<path>"


class SafeFormatter(logging.Formatter):
    """Each message escaped to one line (control characters visible); the traceback as usual."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape_forbidden(record.message)
        return super().formatMessage(record)


class OneLineFormatter(SafeFormatter):
    """For the terminal: the message only, never a traceback (that goes to --log-file)."""

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return super().format(record)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record arrives (like logging's last resort), so
    it follows :func:`native_stderr_to_log`'s redirection instead of feeding it."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        logging.Handler.__init__(self, level)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


class _ThirdParty(logging.Handler):
    """Forwards third-party log records and warnings, scrubbed, to the ``cxrscreen.lib`` logger.

    pydicom's ``warn_and_log`` logs a message and then warns it: the warning that repeats the
    message just logged by the same thread is dropped.
    """

    def __init__(self, root: Path | None) -> None:
        super().__init__(logging.WARNING)
        self.root = root
        self.target = logging.getLogger("cxrscreen.lib")
        self.last = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        self.last.message = text
        self.forward(record.levelno, record.name.split(".")[0], text)

    def warning(self, message: object, category: type[Warning], filename: str) -> None:
        text = str(message)
        if getattr(self.last, "message", None) == text:
            self.last.message = None
            return
        self.forward(logging.WARNING, f"{_package(filename)} {category.__name__}", text)

    def forward(self, level: int, source: str, text: str) -> None:
        self.target.log(level, "%s: %s", source, scrub(text, self.root))


def _package(filename: str) -> str:
    """``…/site-packages/pydicom/valuerep.py`` → ``pydicom``; else the module's file stem."""
    parts = Path(filename).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            return Path(parts[parts.index(marker) + 1]).stem
    return Path(filename).stem


_original_showwarning = warnings.showwarning


def route_third_party(root: Path | None = None) -> None:
    """Send :mod:`warnings` and the :data:`THIRD_PARTY_LOGGERS` through :func:`scrub` into ``cxrscreen.lib``.

    Like ``logging.captureWarnings(True)``, but the message is scrubbed rather than printed with
    its source line. ``root`` (the scanned folder) lets paths become file handles. Idempotent.
    """
    forward = _ThirdParty(root)
    for name in THIRD_PARTY_LOGGERS:
        lg = logging.getLogger(name)
        for h in [h for h in lg.handlers if isinstance(h, _ThirdParty)]:
            lg.removeHandler(h)
        lg.addHandler(forward)
        lg.propagate = False  # not to the root logger's handlers (or Python's last resort), unscrubbed

    def showwarning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202
        if file is not None:  # an explicit destination: not ours to reroute
            _original_showwarning(message, category, filename, lineno, file, line)
        else:
            forward.warning(message, category, filename)

    warnings.showwarning = showwarning


def setup_logging(quiet: bool = False, log_file: Path | None = None, root: Path | None = None) -> None:
    """cxrscreen's handlers (stderr from WARNING unless ``quiet``; ``log_file`` from INFO), with
    third-party messages routed into them (:func:`route_third_party`)."""
    logger = logging.getLogger("cxrscreen")
    logger.setLevel(logging.INFO)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    logger.propagate = False
    logger.addHandler(logging.NullHandler())  # quiet means quiet: no "last resort" stderr output
    if not quiet:
        err = StderrHandler(logging.WARNING)
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
        fh.setFormatter(SafeFormatter(FORMAT))
        logger.addHandler(fh)
    route_third_party(root)


@contextlib.contextmanager
def native_stderr_to_log(root: Path | None = None, logger: str = "cxrscreen.native",
                         level: int = logging.WARNING) -> Iterator[None]:
    """Capture what native code writes to file descriptor 2 and log it, scrubbed, to ``logger`` at ``level``.

    fd 2 is pointed at a pipe read by a thread; Python's own ``sys.stderr`` (progress, messages,
    the stderr log handler) keeps writing to the real stderr. Child processes (decode workers)
    inherit the pipe. What a crash writes in its last moment (a segfault dump) is lost while the
    capture is on.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)
    swapped = None
    if _writes_to_fd2(sys.stderr):
        swapped = sys.stderr
        sys.stderr = io.TextIOWrapper(io.FileIO(os.dup(saved), "w"), encoding=swapped.encoding or "utf-8",
                                      errors=swapped.errors or "backslashreplace", line_buffering=True)
    reader = threading.Thread(target=_pump, args=(r, root, logger, level), name="cxrscreen-native-stderr",
                              daemon=True)
    reader.start()
    try:
        yield
    finally:
        if swapped is not None:
            ours, sys.stderr = sys.stderr, swapped
            ours.close()
        os.dup2(saved, 2)  # the pipe's last write end (unless a child still holds it) closes here
        os.close(saved)
        reader.join(timeout=10.0)


def _writes_to_fd2(stream: object) -> bool:
    try:
        return stream.fileno() == 2  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


def _pump(fd: int, root: Path | None, logger: str, level: int, limit: int = 8192) -> None:
    """Read the pipe until every writer has closed it; one log record per line."""
    log = logging.getLogger(logger)

    def emit(raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").strip()
        if text:
            log.log(level, "native library: %s", scrub(text, root))

    with open(fd, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                emit(line)
            if len(pending) > limit:
                emit(pending)
                pending = b""
        emit(pending)
