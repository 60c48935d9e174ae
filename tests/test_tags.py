"""Header values are validated by VR when read: invalid ones become '' plus an invalid_tag note."""

from __future__ import annotations

import io

import pydicom
import pytest

from cxrscreen.ingest.decode import TAG_KEYWORDS, extract_tags, read_dataset
from cxrscreen.ingest.tags import INVALID_KEY, tag_notes
from tests.factory import base_dataset
from tests.hostile import set_raw


def read_back(raw: dict[str, tuple[str, bytes]], charset: str | None = None) -> dict[str, str]:
    """Tags of a file whose header holds ``raw`` ``{keyword: (VR, bytes)}`` exactly."""
    ds = base_dataset(300, 300)
    if charset:
        ds.SpecificCharacterSet = charset
    for keyword, (vr, value) in raw.items():
        set_raw(ds, keyword, vr, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return extract_tags(read_dataset(io.BytesIO(buf.getvalue())))


def test_valid_values_are_kept_as_written():
    tags = read_back({
        "StudyInstanceUID": ("UI", b"1.2.840.10008.1.2\x00"),  # UI padding is a NUL
        "StudyDate": ("DA", b"20240229"),
        "StudyTime": ("TM", b"235959.123456 "),
        "NumberOfFrames": ("IS", b" 1 "),
        "AccessionNumber": ("SH", b"ABCDEFGHIJKLMNOP"),  # exactly 16
        "PatientID": ("LO", b"=x" * 32),  # 64: a valid LO, whatever it starts with (the CSV guards it)
    })
    assert INVALID_KEY not in tags
    assert tags["StudyInstanceUID"] == "1.2.840.10008.1.2"
    assert (tags["StudyDate"], tags["StudyTime"], tags["NumberOfFrames"]) == ("20240229", "235959.123456", "1")
    assert tags["AccessionNumber"] == "ABCDEFGHIJKLMNOP" and tags["PatientID"] == "=x" * 32
    assert tags["Rows"] == "300" and tags["TransferSyntaxUID"] == "1.2.840.10008.1.2.1"
    assert tag_notes(tags) == ()


def test_cs_is_upper_cased():
    tags = read_back({"ViewPosition": ("CS", b"pa"), "BodyPartExamined": ("CS", b"chest "),
                      "ImageType": ("CS", b"original\\primary")})
    assert (tags["ViewPosition"], tags["BodyPartExamined"], tags["ImageType"]) == ("PA", "CHEST", "ORIGINAL\\PRIMARY")
    assert INVALID_KEY not in tags


@pytest.mark.parametrize(("charset", "raw", "expected"), [
    ("ISO_IR 192", "Müller^Zoë=山田^太郎".encode(), "Müller^Zoë=山田^太郎"),
    ("ISO_IR 192", "Ελληνικά^Όνομα".encode(), "Ελληνικά^Όνομα"),
    ("ISO_IR 100", "Strauß^Jürgen".encode("latin-1"), "Strauß^Jürgen"),
    ("ISO_IR 144", "Иванов^Иван".encode("iso8859-5"), "Иванов^Иван"),
])
def test_character_sets_are_honoured(charset: str, raw: bytes, expected: str):
    tags = read_back({"PatientName": ("PN", raw), "InstitutionName": ("LO", raw.split(b"=")[0])}, charset=charset)
    assert tags["PatientName"] == expected
    assert tags["InstitutionName"] == expected.split("=")[0]
    assert INVALID_KEY not in tags


HOSTILE = [
    ("SeriesInstanceUID", "UI", b"1.2.abc"),  # letters
    ("SeriesInstanceUID", "UI", b"1." + b"2" * 63),  # 65 characters
    ("SeriesInstanceUID", "UI", b"1.2.840.\x00\r\n\x01\xff" * 2000),  # a smashed length field
    ("StudyInstanceUID", "UI", b"01.2"),  # leading zero
    ("PatientID", "LO", b"x" * 65),
    ("PatientID", "LO", b"ID\x00\r\n42"),
    ("PatientID", "LO", b"A\\B"),  # two values where the dictionary says one
    ("InstitutionName", "LO", "\u202eevil\u2066".encode()),  # bidi override and isolate
    ("StudyDescription", "LO", b"tab\there"),
    ("AccessionNumber", "SH", b"x" * 17),
    ("PatientName", "PN", b"A" * 65 + b"^B"),  # a component group over 64
    ("PatientName", "PN", b"A=B=C=D"),  # four component groups
    ("PatientName", "PN", b"DOE\x07^JANE"),  # BEL
    ("StudyDate", "DA", b"20260231"),  # no such day
    ("StudyDate", "DA", b"-2+3"),
    ("StudyDate", "DA", b"2026-11-24"),
    ("StudyTime", "TM", b"25"),
    ("Modality", "CS", b"DX=1"),
    ("BodyPartExamined", "CS", b"C" * 17),
    ("NumberOfFrames", "IS", b"abc"),
    ("NumberOfFrames", "IS", b"1234567890123"),  # 13 characters
]


@pytest.mark.parametrize(("keyword", "vr", "raw"), HOSTILE, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(HOSTILE)])
def test_invalid_value_becomes_empty_with_a_note(keyword: str, vr: str, raw: bytes):
    tags = read_back({keyword: (vr, raw)}, charset="ISO_IR 192")
    assert tags[keyword] == ""
    assert tag_notes(tags) == (f"invalid_tag:{keyword}",)
    assert tags["SOPInstanceUID"] and tags["Rows"] == "300"  # the rest of the header is untouched


def test_invalid_transfer_syntax_is_noted():
    ds = base_dataset(300, 300)
    ds.PatientID = "\x01"  # invalid in the dataset too: both notes are kept
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue().replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.X.1\x00", 1)
    tags = extract_tags(read_dataset(io.BytesIO(data)))
    assert tags["TransferSyntaxUID"] == "" and tags["PatientID"] == ""
    assert set(tag_notes(tags)) == {"invalid_tag:PatientID", "invalid_tag:TransferSyntaxUID"}


def test_every_keyword_is_present_and_bounded():
    tags = read_back({kw: ("UN", b"\xff" * 70_000) for kw in ("PatientName", "PatientID", "StudyDescription")})
    assert set(TAG_KEYWORDS) <= set(tags)
    assert set(tag_notes(tags)) == {"invalid_tag:PatientName", "invalid_tag:PatientID", "invalid_tag:StudyDescription"}
    assert max(len(v) for k, v in tags.items() if k != INVALID_KEY) <= 64


def test_real_files_have_no_invalid_tags(shared_data):
    """The validation is not stricter than real exports: none of the shared DICOM files loses a value."""
    files = sorted(p for sub in ("dicom", "site_nih") for p in (shared_data / sub).rglob("*.dcm"))
    assert len(files) > 400
    noted = {p.name: tag_notes(extract_tags(read_dataset(p, header_only=True))) for p in files}
    assert {k: v for k, v in noted.items() if v} == {}


def test_pydicom_validation_settings_are_left_alone():
    """pydicom still warns (cxrscreen.logs routes it); cxrscreen drops the value; no global setting changed."""
    with pytest.warns(UserWarning, match="VR UI"):
        tags = read_back({"SOPInstanceUID": ("UI", b"DOE^JANE")})
    assert tags["SOPInstanceUID"] == "" and tag_notes(tags) == ("invalid_tag:SOPInstanceUID",)
    assert pydicom.config.settings.reading_validation_mode == pydicom.config.WARN


def test_patient_age_kept_as_an_age_string_and_bare_years_read_as_years():
    assert read_back({"PatientAge": ("AS", b"045Y")})["PatientAge"] == "045Y"
    assert read_back({"PatientAge": ("AS", b"81")})["PatientAge"] == "081Y"
    tags = read_back({"PatientAge": ("AS", b"45 years")})
    assert tags["PatientAge"] == "" and tag_notes(tags) == ("invalid_tag:PatientAge",)
