"""DICOM files that really crash or hang the codecs, built deterministically from the test phantom.

Found by mutating RLE and JPEG-LS encodings of phantoms and decoding each mutant in a subprocess
(pydicom 3.0, pylibjpeg-rle 2.2, pyjpegls 1.5 / CharLS):

* RLE Lossless, 16 bits, Columns one less than encoded: pydicom's own RLE decoder rejects it, the
  next plugin, pylibjpeg-rle, panics (``index out of bounds``) — pyo3's ``PanicException``, a
  ``BaseException``: ``except Exception`` does not stop it.
* JPEG-LS lossless with its codestream cut at byte 64 735 of 137 000: CharLS usually never returns
  (a busy loop; 18 of the first 340 random mutants of this stream in our search hung the same way).
  Not always: it reads past the end of the cut stream, so what it finds there decides — in a
  fresh helper processes it hung in 5 of 6 tries here, and after other JPEG-LS files in the same
  process it has returned "Invalid JPEG-LS stream" instead. Tests that need a hang every time use
  the ``hang`` fault (cxrscreen.faults); tests of this file accept either outcome per try.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.uid import JPEGLSLossless, RLELossless

from tests.factory import chest_phantom, make_dicom

JPEGLS_STREAM_BYTES = 137000
JPEGLS_HANG_CUT = 64735


def rle_panic_file(path: Path, **kw) -> Path:
    """A 640×512 RLE film whose Columns says 511: pylibjpeg-rle panics on it."""
    make_dicom(path, chest_phantom(640, 512, seed=3), transfer_syntax=RLELossless, **kw)
    ds = pydicom.dcmread(path)
    ds.Columns = 511
    ds.save_as(path)
    return path


def jpegls_hang_file(path: Path, **kw) -> Path:
    """A 384×320 JPEG-LS film whose codestream is cut short where CharLS loops forever."""
    make_dicom(path, chest_phantom(384, 320, seed=1), transfer_syntax=JPEGLSLossless, **kw)
    ds = pydicom.dcmread(path)
    _bot, stream = list(generate_fragments(ds.PixelData))[:2]
    assert len(stream) == JPEGLS_STREAM_BYTES, (
        f"the JPEG-LS encoder output changed ({len(stream)} bytes): find a new hanging cut for this test")
    ds.PixelData = encapsulate([stream[:JPEGLS_HANG_CUT]])
    ds.save_as(path)
    return path
