"""The node's spool: every received instance on disk (fsynced) before its C-STORE success goes back.

Layout under ``OUT/spool`` (the folder the node scans, so ``cxrscreen scan OUT/spool --out OUT``
sees the same relative paths, hence the same ledger rows)::

    .incoming/<study>/<sop>.dcm   received; the study is still open (hidden: a scan skips it)
    <study>/<sop>.dcm             the study went quiet: handed to the scan

``<study>`` and ``<sop>`` are the UIDs when they are valid UIDs, else hashes (never a path). An
instance is written to a temporary file, fsynced, renamed into ``.incoming`` and its folder fsynced;
a study is handed over by renaming its files (same file system: atomic). A re-sent instance lands on
the same path, so the ledger keeps one row for it (and does not score it again when its bytes are the
same). After a crash, what is in ``.incoming`` is still there; temporary files are dropped.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from cxrscreen.state.atomic import atomic_write_bytes

INCOMING = ".incoming"
SPOOL_DIR = "spool"  # under OUT
UNKNOWN_STUDY = "unknown-study"  # instances whose StudyInstanceUID cannot be read: error rows, all the same


def fsync_dir(folder: Path) -> None:
    """Make ``folder``'s entries (files created, renamed or removed in it) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """``OUT/spool``: :meth:`store` a received instance, :meth:`promote` a study that went quiet."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / INCOMING

    def recover(self) -> list[str]:
        """Create the folders; drop what a crash left half-written (temporary files, empty study folders);
        the studies still in ``.incoming`` (acknowledged, not yet handed to a scan)."""
        if not self.incoming.is_dir():
            self.incoming.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.root)
            fsync_dir(self.root.parent)
        studies = []
        for folder in sorted(p for p in self.incoming.iterdir() if p.is_dir()):
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
            if any(folder.glob("*.dcm")):
                studies.append(folder.name)
            else:
                with contextlib.suppress(OSError):
                    folder.rmdir()
        return studies

    def store(self, study: str, sop: str, data: bytes) -> Path:
        """Write ``data`` as ``.incoming/<study>/<sop>.dcm``, durably; ``OSError`` (disk full…) if it is not."""
        folder = self.incoming / study
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.incoming)
        path = folder / f"{sop}.dcm"
        atomic_write_bytes(path, data)  # temporary file, fsync, rename, fsync of the folder
        return path

    def promote(self, study: str) -> int:
        """Move the study's received files where the scan reads them; how many were moved.

        An instance stored meanwhile either moves now or stays for the next promotion (its store
        marks the study open again).
        """
        src = self.incoming / study
        names = sorted(p.name for p in src.glob("*.dcm")) if src.is_dir() else []
        if not names:
            return 0
        dest = self.root / study
        if not dest.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.root)
        for name in names:
            os.replace(src / name, dest / name)  # a re-sent instance replaces its earlier copy
        fsync_dir(dest)
        fsync_dir(src)
        return len(names)
