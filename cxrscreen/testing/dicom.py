"""One DICOM builder for tests, benchmarks and ``tools/make_sample_dicoms.py``.

Compose: :func:`dataset` (patient, study, series and SOP attributes, no pixels) →
:func:`set_pixels` (image pixel module, window, rescale) → :func:`encode` (transfer syntax) →
:func:`write` or :func:`to_bytes`. Encoders are pinned to the declared dependencies
(pylibjpeg-rle, pyjpegls, pylibjpeg-openjpeg) so the bytes do not depend on which optional
plugins (e.g. python-gdcm) happen to be installed; JPEG baseline is encoded by Pillow.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

CR_STORAGE = ComputedRadiographyImageStorage
DX_STORAGE = DigitalXRayImageStorageForPresentation
SC_STORAGE = SecondaryCaptureImageStorage
SR_STORAGE = BasicTextSRStorage

#: pydicom encoding plugin per compressed transfer syntax (all declared runtime dependencies)
ENCODERS: dict[str, str] = {RLELossless: "pylibjpeg", JPEGLSLossless: "pyjpegls", JPEG2000Lossless: "pylibjpeg"}


#: The test patient and study every :func:`dataset` starts from (DICOM keyword → value).
IDENTITY: dict[str, str] = {"PatientName": "TEST^PATIENT", "PatientID": "TEST0001", "PatientBirthDate": "19700101",
                            "AccessionNumber": "ACC0001", "StudyDate": "20261124"}


def dataset(
    *,
    sop_class: str = DX_STORAGE,
    modality: str = "DX",
    body_part: str | None = "CHEST",
    view: str | None = "PA",
    **attributes: Any,
) -> Dataset:
    """A dataset with file meta, SOP, patient, study and series attributes; no pixel data.

    ``attributes`` are DICOM keywords and their values (``PatientName="A^B"``, ``StudyInstanceUID=…``,
    ``PatientSex="F"``), over :data:`IDENTITY`; the Study, Series and SOP Instance UIDs default to fresh
    random ones. ``None`` for ``body_part``/``view`` leaves the tag out.
    """
    for keyword in attributes:
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"not a DICOM keyword: {keyword!r}")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = attributes.pop("SOPInstanceUID", None) or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = attributes.pop("StudyInstanceUID", None) or generate_uid()
    ds.SeriesInstanceUID = attributes.pop("SeriesInstanceUID", None) or generate_uid()
    for keyword, value in (IDENTITY | {"Modality": modality}).items():
        setattr(ds, keyword, value)
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if view is not None:
        ds.ViewPosition = view
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def set_pixels(
    ds: Dataset,
    arr: np.ndarray,
    *,
    bits: int | None = None,
    photometric: str = "MONOCHROME2",
    window: tuple[Any, Any] | None = None,
    rescale: tuple[Any, Any] | None = None,
) -> Dataset:
    """Uncompressed pixel data from ``arr`` (rows × cols, frames × rows × cols, or rows × cols × 3).

    ``bits`` stored defaults to the array's item size; ``window`` is (center, width) and
    ``rescale`` (slope, intercept), written as given. Returns ``ds``.
    """
    ds.set_pixel_data(arr, photometric, bits or arr.dtype.itemsize * 8, generate_instance_uid=False)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    return ds


def auto_window(arr: np.ndarray) -> tuple[int, int]:
    """(center, width) covering the 0.5–99.5 percentiles of the stored values."""
    lo, hi = np.percentile(arr, (0.5, 99.5))
    return int(round((lo + hi) / 2)), int(max(1, round(hi - lo)))


def encode(ds: Dataset, transfer_syntax: str, *, quality: int = 90) -> Dataset:
    """Re-encode the pixel data of ``ds`` (uncompressed) in ``transfer_syntax``; SOP Instance UID kept.

    RLE, JPEG-LS and JPEG 2000 (lossless) go through pydicom's encoders; JPEG baseline
    (8-bit, one frame, one sample) through Pillow at ``quality``, marked lossy. Returns ``ds``.
    """
    syntax = UID(transfer_syntax)
    if syntax == ExplicitVRLittleEndian:
        return ds
    if syntax == JPEGBaseline8Bit:
        return _jpeg_baseline(ds, quality)
    if syntax not in ENCODERS:
        raise ValueError(f"no encoder for transfer syntax {syntax.name}")
    ds.compress(syntax, encoding_plugin=ENCODERS[syntax], generate_instance_uid=False)
    return ds


def _jpeg_baseline(ds: Dataset, quality: int) -> Dataset:
    from PIL import Image

    arr = ds.pixel_array
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ValueError("JPEG baseline here takes one 8-bit single-sample frame")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality, optimize=False)  # uint8 2-D: mode L
    jpeg = buf.getvalue()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{arr.size / len(jpeg):.2f}"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def to_bytes(ds: Dataset) -> bytes:
    """The DICOM file (preamble, file meta, dataset) as bytes."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM file at ``path`` (parent folders created); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
