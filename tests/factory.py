"""Test fixtures built in code: synthetic chest-like images and DICOM files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"

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
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.AccessionNumber = accession
    ds.StudyDate = "20261124"
    ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if view is not None:
        ds.ViewPosition = view
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
    h, w = pixels.shape
    ds = base_dataset(h, w, **kw)
    hi = 2**bits - 1
    stored = np.rint(pixels * hi).astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = (hi - stored).astype(np.uint16)
    if with_pixels:
        if rgb:
            arr = np.repeat((pixels * 255).astype(np.uint8)[..., None], 3, axis=2)
            ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
            ds.BitsAllocated = ds.BitsStored = 8
            ds.HighBit = 7
        else:
            arr = stored
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
        ds.PixelRepresentation = 0
        if frames > 1:
            arr = np.stack([arr] * frames)
            ds.NumberOfFrames = frames
        ds.PixelData = arr.tobytes()
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_sr(path: Path) -> Path:
    """A Structured Report: DICOM without pixel data."""
    ds = base_dataset(0, 0, modality="SR", sop_class=SR_STORAGE, body_part=None, view=None)
    del ds.Rows, ds.Columns
    ds.ValueType = "CONTAINER"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_dicomdir(path: Path) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.FileSetID = "TEST"
    ds.DirectoryRecordSequence = []
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_ct(path: Path) -> Path:
    return make_dicom(path, modality="CT", sop_class=CTImageStorage, body_part="ABDOMEN", view=None)


def truncate(src: Path, dst: Path, keep: float = 0.6) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def read(path: Path) -> Dataset:
    return pydicom.dcmread(path)
