"""Find DICOM files under a folder: by content, not by extension; deterministic order."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
#: Names that claim to be DICOM: such files get a row (``error:not_dicom``) even when they are not.
DICOM_SUFFIXES = {".dcm", ".dicom", ".dic", ".ima"}


def looks_like_dicom(head: bytes) -> bool:
    """True if a file's first 132 bytes are DICOM: ``DICM`` after the 128-byte preamble, or a
    preamble-less dataset starting with a little-endian group 0002 or 0008 element."""
    if head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    group = int.from_bytes(head[0:2], "little")
    vr = head[4:6]
    explicit = vr.isalpha() and vr.isupper()
    return group in (0x0002, 0x0008) and (explicit or int.from_bytes(head[4:8], "little") < 1 << 16)


def is_dicom(path: Path | str) -> bool:
    """True if the content is DICOM (see :func:`looks_like_dicom`); False when unreadable."""
    try:
        with open(path, "rb") as fh:
            return looks_like_dicom(fh.read(132))
    except OSError:
        return False


def claims_dicom(path: Path) -> bool:
    """Named like a DICOM file (suffix, or DICOMDIR)."""
    return path.suffix.lower() in DICOM_SUFFIXES or path.name.upper() == "DICOMDIR"


def iter_files(root: Path) -> Iterator[Path]:
    """Regular files under ``root`` in sorted order; hidden entries skipped; symlinks never
    followed out of ``root`` (nor into directories)."""
    real_root = Path(root).resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            if p.is_symlink():
                try:
                    target = p.resolve(strict=True)
                except (OSError, RuntimeError):
                    continue
                if not target.is_relative_to(real_root):
                    continue
            if p.is_file():
                yield p


def discover(root: Path | str) -> list[Path]:
    """Files to put through the pipeline, in deterministic (sorted) order.

    DICOM by content, plus files *named* like DICOM that are not (so they get an error row
    instead of vanishing). Other files (README.txt, JPEGs…) are ignored.
    """
    return [p for p in iter_files(Path(root)) if claims_dicom(p) or is_dicom(p)]
