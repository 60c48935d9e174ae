"""Test fixtures built in code: synthetic chest-like images and DICOM files (via cxrscreen.testing.dicom)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from cxrscreen.testing import dicom
from cxrscreen.testing.dicom import DX_STORAGE, SR_STORAGE

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def chest_phantom(h: int = 512, w: int = 448, seed: int = 0, blob: bool = False) -> np.ndarray:
    """Display-polarity chest-like image in [0, 1]: body, dark lungs, bright spine/mediastinum."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    y, x = (yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2)
    img = np.full((h, w), 0.05)
    img[(x / 0.9) ** 2 + (y / 0.95) ** 2 < 1] = 0.55  # body
    for cx in (-0.42, 0.42):
        img[((x - cx) / 0.3) ** 2 + ((y + 0.05) / 0.6) ** 2 < 1] = 0.2  # lungs
    img[np.abs(x) < 0.12] = np.maximum(img[np.abs(x) < 0.12], 0.8)  # spine / mediastinum
    if blob:
        cy, cx = rng.uniform(-0.3, 0.3), rng.choice([-0.42, 0.42])
        img[((x - cx) / 0.12) ** 2 + ((y - cy) / 0.12) ** 2 < 1] = 0.9
    img += rng.normal(0, 0.02, img.shape)
    return np.clip(img, 0, 1)


def base_dataset(
    rows: int,
    cols: int,
    modality: str = "DX",
    sop_class: str = DX_STORAGE,
    study_uid: str | None = None,
    patient_id: str = "TEST0001",
    patient_name: str = "TEST^PATIENT",
    accession: str = "ACC0001",
    body_part: str | None = "CHEST",
    view: str | None = "PA",
) -> Dataset:
    """A test patient's dataset declaring ``rows`` × ``cols`` but holding no pixel data."""
    ds = dicom.dataset(sop_class=sop_class, modality=modality, StudyInstanceUID=study_uid, PatientID=patient_id,
                       PatientName=patient_name, AccessionNumber=accession, body_part=body_part, view=view)
    ds.Rows, ds.Columns = rows, cols
    return ds


def make_dicom(
    path: Path,
    pixels: np.ndarray | None = None,
    *,
    photometric: str = "MONOCHROME2",
    bits: int = 12,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    frames: int = 1,
    rgb: bool = False,
    with_pixels: bool = True,
    **kw,
) -> Path:
    """Write a DICOM file whose display image is ``pixels`` (display polarity, [0, 1])."""
    pixels = chest_phantom() if pixels is None else pixels
    ds = base_dataset(*pixels.shape, **kw)
    if with_pixels:
        if rgb:
            arr, photometric, bits = np.repeat((pixels * 255).astype(np.uint8)[..., None], 3, axis=2), "RGB", 8
        else:
            hi = 2**bits - 1
            arr = np.rint(pixels * hi).astype(np.uint16)
            if photometric == "MONOCHROME1":
                arr = (hi - arr).astype(np.uint16)
        if frames > 1:
            arr = np.stack([arr] * frames)
        dicom.set_pixels(ds, arr, bits=bits, photometric=photometric)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    return dicom.write(dicom.encode(ds, transfer_syntax), path)


def make_sr(path: Path) -> Path:
    """A Structured Report: DICOM without pixel data."""
    ds = dicom.dataset(modality="SR", sop_class=SR_STORAGE, body_part=None, view=None, ValueType="CONTAINER")
    return dicom.write(ds, path)


def make_dicomdir(path: Path) -> Path:
    """A DICOMDIR (media directory, no image)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.FileSetID = "TEST"
    ds.DirectoryRecordSequence = []
    return dicom.write(ds, path)


def make_ct(path: Path) -> Path:
    return make_dicom(path, modality="CT", sop_class=CTImageStorage, body_part="ABDOMEN", view=None)


def truncate(src: Path, dst: Path, keep: float = 0.6) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def read(path: Path) -> Dataset:
    return pydicom.dcmread(path)
