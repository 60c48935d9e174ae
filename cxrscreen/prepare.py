"""One film's preparation, in one read: bytes → hash → header QC → decode → pixel QC → model tensor.

The scan, site adaptation and the report stage's fallback all prepare films through
:func:`prepare_file`, so a model learns from, and is explained on, exactly the pixels ``scan`` feeds it.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxrscreen.ingest import isolation
from cxrscreen.ingest.decode import DecodeError, extract_tags, read_dataset
from cxrscreen.ingest.discover import DICOMDIR_SOP_CLASS, looks_like_dicom
from cxrscreen.ingest.tags import tag_notes
from cxrscreen.preprocess import PreprocessSpec
from cxrscreen.qc import check_header, check_pixels, error, not_assessable, polarity_suspect
from cxrscreen.records import OK, Status
from cxrscreen.state.atomic import sha256_file

#: Files up to this size are read once into memory (hashed and parsed from the same bytes);
#: larger ones are hashed in a streaming pass and parsed from disk.
IN_MEMORY_BYTES = 256 << 20


@dataclass
class Prepared:
    """What preparing one file gives (pixels only for assessable images)."""

    index: int
    status: Status
    tags: dict[str, str]
    notes: tuple[str, ...] = ()
    image: torch.Tensor | None = None  # the model input (1, S, S)
    t_decode: float = 0.0
    t_preprocess: float = 0.0
    sha256: str = ""  # of the bytes that were read and scored ('' when unreadable)
    size: int = 0  # size and mtime as stat() saw them just before the read
    mtime_ns: int = 0
    film: np.ndarray | None = None  # with keep_film: the decoded film ([0, 1], display polarity) for a report page


def _read(path: Path, size: int) -> tuple[bytes | Path, bytes, str]:
    """The bytes (or, when large, the path) to parse, the first 132 bytes, the content sha256 (one read when small)."""
    if size <= IN_MEMORY_BYTES:
        data = path.read_bytes()
        return data, data[:132], hashlib.sha256(data).hexdigest()
    with open(path, "rb") as fh:
        head = fh.read(132)
    return path, head, sha256_file(path)


def prepare_file(path: Path, spec: PreprocessSpec, transform: Callable, index: int = 0,
                 isolate: str | None = None, keep_film: bool = False) -> Prepared:
    """Read → header QC → decode → pixel QC → preprocess; never raises for a bad file.

    ``isolate``: where pixels are decoded (``isolation.MODES``; default ``$CXRSCREEN_DECODE_ISOLATION``,
    i.e. compressed files in a helper process). ``keep_film``: also return the decoded film (for a
    report page, so it need not be read again). Raises only ``isolation.IsolationError`` (no helper
    process could be started: an internal failure).
    """
    t0 = time.perf_counter()
    tags: dict[str, str] = {}
    sha = ""
    stat = (0, 0)
    film: np.ndarray | None = None

    def done(status: Status, notes: tuple[str, ...] = (), image: torch.Tensor | None = None,
             t_decode: float = 0.0, t_preprocess: float = 0.0) -> Prepared:
        return Prepared(index, status, tags, (*tag_notes(tags), *notes), image, t_decode, t_preprocess, sha, *stat,
                        film=film)

    try:
        st = path.stat()
        stat = (st.st_size, st.st_mtime_ns)
        data, head, sha = _read(path, st.st_size)
        if st.st_size == 0:
            return done(error("empty_file"))
        if not looks_like_dicom(head):
            return done(error("not_dicom"))
        ds = read_dataset(io.BytesIO(data) if isinstance(data, bytes) else data)
        tags = extract_tags(ds)
        media = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
        if media == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
            return done(not_assessable("dicomdir"))
        status = check_header(tags)
        if status != OK:
            return done(status, t_decode=time.perf_counter() - t0)
        decoded = isolation.decode_pixels(ds, data, spec.decode_target, isolate)
        del ds, data
        t1 = time.perf_counter()
        status = check_pixels(decoded.pixels)
        notes = tuple(decoded.notes)
        if status != OK:
            return done(status, notes, t_decode=t1 - t0)
        if polarity_suspect(decoded.pixels):
            notes += ("polarity_suspect",)
        if keep_film:  # the decoder's own array, kept as it is: no work for the films that get no page
            film = decoded.pixels
        image = torch.as_tensor(transform(decoded.pixels))
        return done(OK, notes, image, t1 - t0, time.perf_counter() - t1)
    except DecodeError as exc:
        return done(error(exc.reason), t_decode=time.perf_counter() - t0)
    except MemoryError:
        return done(error("out_of_memory"))
    except OSError:
        return done(error("unreadable_file"))
    except isolation.IsolationError:
        raise
    except Exception as exc:  # a bad file never stops the run
        return done(error(f"unexpected_{type(exc).__name__}"))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # a codec's panic in this process (pyo3's PanicException is no Exception)
        return done(error("decoder_crash"), t_decode=time.perf_counter() - t0)
