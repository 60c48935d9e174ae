"""The committed demo folder ``sample_dicoms/`` (built by ``tools/make_sample_dicoms.py``) stays small and decodable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

SAMPLES = Path(__file__).resolve().parents[1] / "sample_dicoms"
CORRUPT = "corrupt_truncated.dcm"
LOSSLESS_CODECS = {JPEG2000Lossless, JPEGLSLossless, RLELossless}
MAX_BYTES = 15 * 1024 * 1024


def _files() -> list[Path]:
    return sorted(p for p in SAMPLES.rglob("*") if p.is_file() and p.suffix != ".md")


FILES = _files()
GOOD = [p for p in FILES if p.name != CORRUPT]


def _id(path: Path) -> str:
    return str(path.relative_to(SAMPLES))


def test_folder_is_small_and_complete() -> None:
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total <= MAX_BYTES
    assert len(FILES) >= 10
    assert (SAMPLES / "README.md").is_file()
    assert any(p.name == CORRUPT for p in FILES)
    assert any(p.suffix == "" for p in FILES), "one file should have no extension"
    assert any(len(p.relative_to(SAMPLES).parts) > 2 for p in FILES), "files should sit in nested folders"


def test_transfer_syntaxes_present() -> None:
    found = {pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID for p in FILES}
    assert {JPEG2000Lossless, JPEGLSLossless, RLELossless, JPEGBaseline8Bit, ExplicitVRLittleEndian} <= found


@pytest.mark.parametrize("path", GOOD, ids=_id)
def test_file_decodes(path: Path) -> None:
    with path.open("rb") as fh:
        assert fh.read(132)[128:] == b"DICM"
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    assert arr.shape == (ds.Rows, ds.Columns)
    assert min(arr.shape) >= 256
    assert float(arr.std()) > 0
    assert ds.PatientID.startswith("DEMO") and ds.AccessionNumber.startswith("ACC")
    if ds.file_meta.TransferSyntaxUID in LOSSLESS_CODECS | {ExplicitVRLittleEndian}:
        assert arr.dtype == np.uint16
        assert ds.BitsAllocated == 16 and 10 <= ds.BitsStored <= 16
        assert int(arr.max()) < 2**ds.BitsStored


def test_multi_image_study() -> None:
    studies: dict[str, set[str]] = {}
    for p in GOOD:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        studies.setdefault(ds.StudyInstanceUID, set()).add(ds.SeriesInstanceUID)
    assert any(len(series) >= 2 for series in studies.values())


def test_corrupt_file_fails_to_decode() -> None:
    path = next(p for p in FILES if p.name == CORRUPT)
    ds = pydicom.dcmread(path)  # the header is intact
    assert ds.Modality == "DX"
    with pytest.raises(ValueError):  # pydicom: "number of bytes of pixel data is less than expected"
        _ = ds.pixel_array
