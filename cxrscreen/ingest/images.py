"""Load a training/evaluation image (PNG, JPEG or DICOM) as a float32 [0, 1] grey array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DICOM_SUFFIXES = {".dcm", ".dicom", ""}


def load_raster(path: Path | str) -> np.ndarray:
    """PNG/JPEG/TIFF → 2-D float32 in [0, 1]; colour is converted to luminance."""
    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float32)
            hi = 65535.0 if arr.max() > 255 else 255.0
            return np.clip(arr / hi, 0.0, 1.0)
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def load_image(path: Path | str, min_side: int | None = None) -> np.ndarray:
    """Any supported file → 2-D float32 [0, 1], display polarity (air dark)."""
    path = Path(path)
    from cxrscreen.ingest.discover import is_dicom

    if path.suffix.lower() in {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"} or not is_dicom(path):
        return load_raster(path)
    from cxrscreen.ingest.decode import decode_file

    return decode_file(path, target=min_side).pixels
