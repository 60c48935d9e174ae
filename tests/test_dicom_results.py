"""DICOM result objects (outputs.dicom): SR + Encapsulated PDF in the source study, stable UIDs, dciodvfy-clean."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage, EncapsulatedPDFStorage, generate_uid

from cxrscreen import scan
from cxrscreen.logs import setup_logging
from cxrscreen.options import ScanOptions
from cxrscreen.outputs.dicom import DICOM_DIR, write_dicom_results
from cxrscreen.outputs.dicom.pdf import EncapsulatedPDF, InstanceIds
from cxrscreen.outputs.dicom.sr import PROBABILITY, QC_STATUS, TRIAGE_DECISION
from cxrscreen.records import ImageRecord
from cxrscreen.state.ledger import Ledger
from cxrscreen.studies import group_studies
from cxrscreen.testing import dicom
from tests.factory import chest_phantom
from tests.test_logs import isolated_logging  # noqa: F401 (a fixture)

STUDY_A, STUDY_B = generate_uid(), generate_uid()
PATIENT_A = {"PatientName": "Müller^Zoë", "PatientID": "PAT-A", "AccessionNumber": "ACC-A", "PatientSex": "F",
             "StudyID": "S1", "StudyTime": "101010", "ReferringPhysicianName": "REF^DOC",
             "SpecificCharacterSet": "ISO_IR 192"}
#: Attributes that hold the time an object was made: the only ones a rerun may change.
TIME_FIELDS = {"InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime", "ContributionDateTime"}


def film(path: Path, seed: int, study_uid: str, view: str, **tags: str) -> Path:
    """A 12-bit DX chest film of ``study_uid``, ``view`` PA or LL."""
    ds = dicom.dataset(StudyInstanceUID=study_uid, view=view, **tags)
    dicom.set_pixels(ds, np.rint(chest_phantom(512, 448, seed=seed) * 4095).astype(np.uint16), bits=12)
    return dicom.write(ds, path)


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, random_model) -> tuple[Path, list[ImageRecord]]:
    """Study A: two frontal films and a lateral; study B: a lateral only; and a file that is not DICOM."""
    root = tmp_path_factory.mktemp("dicom_results")
    src = root / "in"
    src.mkdir()
    film(src / "a1.dcm", 1, STUDY_A, "PA", **PATIENT_A)
    film(src / "a2.dcm", 2, STUDY_A, "AP", **PATIENT_A)
    film(src / "a3.dcm", 3, STUDY_A, "LL", **PATIENT_A)
    film(src / "b1.dcm", 4, STUDY_B, "LL", PatientID="PAT-B")
    (src / "junk.dcm").write_bytes(b"not a DICOM file")
    scan(src, root / "out", model=random_model, options=ScanOptions(threshold=1e-6, reports="flagged", workers=0))
    with Ledger(root / "out" / ".cxrscreen" / "ledger.sqlite") as ledger:
        records = list(ledger.records())
    return root / "out", records


@pytest.fixture
def out(tmp_path: Path, scanned) -> Path:
    """A fresh output folder holding the scan's reports (each test writes its own objects)."""
    shutil.copytree(scanned[0] / "reports", tmp_path / "reports")
    return tmp_path


def study_records(records: list[ImageRecord], study_uid: str) -> list[ImageRecord]:
    return [r for r in records if r.tag("StudyInstanceUID") == study_uid]


def read_objects(paths: list[Path]) -> dict[str, Dataset]:
    """``{SOPClassUID: dataset}`` of a study's objects."""
    objects = {str(ds.SOPClassUID): ds for ds in map(pydicom.dcmread, paths)}
    assert len(objects) == len(paths)
    return objects


def items(node: Dataset) -> Iterator[Dataset]:
    """Every content item below ``node``, depth first."""
    for item in node.get("ContentSequence", []):
        yield item
        yield from items(item)


def concept(item: Dataset) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return code.CodingSchemeDesignator, code.CodeValue


def named(node: Dataset, code) -> list[Dataset]:
    return [i for i in node.get("ContentSequence", []) if concept(i) == (code.scheme_designator, code.value)]


def test_objects_sit_in_the_source_study(out, scanned, random_model):
    _, records = scanned
    stale = out / DICOM_DIR / STUDY_B / "1.2.3.dcm"  # an object of study B from an earlier run
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    paths = write_dicom_results(out, group_studies(records), random_model)
    assert {p.parent.name for p in paths} == {STUDY_A}  # study B has no scored image: no object, stale one gone
    assert not (out / DICOM_DIR / STUDY_B).exists()
    objects = read_objects(paths)
    assert set(objects) == {ComprehensiveSRStorage, EncapsulatedPDFStorage}
    sources = study_records(records, STUDY_A)
    source_series = {r.tag("SeriesInstanceUID") for r in sources}
    for ds in objects.values():
        assert ds.StudyInstanceUID == STUDY_A
        assert (ds.PatientID, str(ds.PatientName), ds.PatientSex) == ("PAT-A", "Müller^Zoë", "F")
        assert (ds.AccessionNumber, ds.StudyID, ds.StudyTime, str(ds.ReferringPhysicianName)) == \
            ("ACC-A", "S1", "101010", "REF^DOC")
        assert ds.SeriesInstanceUID not in source_series
        assert (out / DICOM_DIR / STUDY_A / f"{ds.SOPInstanceUID}.dcm").is_file()
    assert objects[ComprehensiveSRStorage].SeriesInstanceUID != objects[EncapsulatedPDFStorage].SeriesInstanceUID
    assert {p.stat().st_mode & 0o777 for p in paths} == {0o640}


def test_sr_holds_each_probability_status_and_reference(out, scanned, random_model):
    _, records = scanned
    sources = {r.tag("SOPInstanceUID"): r for r in study_records(records, STUDY_A)}
    sr = read_objects(write_dicom_results(out, group_studies(records), random_model))[ComprehensiveSRStorage]

    evidence = {sop.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence}
    assert evidence == set(sources)  # the lateral too

    decision = named(sr, TRIAGE_DECISION)[0].ConceptCodeSequence[0]
    assert (decision.CodingSchemeDesignator, decision.CodeValue) == ("SCT", "263654008")  # Abnormal
    texts = {concept(i): i.TextValue for i in items(sr) if i.ValueType == "TEXT"}
    assert texts[("DCM", "111001")] == random_model.name and texts[("DCM", "111003")] == random_model.sha256
    threshold = next(i for i in sr.ContentSequence if i.ValueType == "NUM").MeasuredValueSequence[0]
    assert threshold.FloatingPointValue == 1e-6

    assessments = [i for i in sr.ContentSequence if i.ValueType == "CONTAINER"]
    assert len(assessments) == len(sources)
    seen = {}
    for a in assessments:
        ref = next(i for i in a.ContentSequence if i.ValueType == "IMAGE").ReferencedSOPSequence[0]
        record = sources[ref.ReferencedSOPInstanceUID]
        assert ref.ReferencedSOPClassUID == record.tag("SOPClassUID")
        assert named(a, QC_STATUS)[0].TextValue == str(record.status)
        nums = named(a, PROBABILITY)
        if record.probability is None:
            assert nums == [] and record.status == "not_assessable:lateral_view"
            continue
        value = nums[0].MeasuredValueSequence[0]
        assert value.FloatingPointValue == record.probability  # FD: the ledger's double, exactly
        assert float(value.NumericValue) == pytest.approx(record.probability, abs=1e-12)  # DS: 16 characters
        unit = value.MeasurementUnitsCodeSequence[0]
        assert (unit.CodingSchemeDesignator, unit.CodeValue) == ("UCUM", "1")
        inferred = nums[0].ContentSequence[0]
        assert inferred.RelationshipType == "INFERRED FROM"
        assert inferred.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ref.ReferencedSOPInstanceUID
        seen[ref.ReferencedSOPInstanceUID] = value.FloatingPointValue
    assert len(seen) == 2  # both frontal films


def test_pdf_holds_the_report_bytes(out, scanned, random_model):
    _, records = scanned
    pdf = read_objects(write_dicom_results(out, group_studies(records), random_model))[EncapsulatedPDFStorage]
    report = (out / study_records(records, STUDY_A)[0].report).read_bytes()
    assert pdf.EncapsulatedDocument[: pdf.EncapsulatedDocumentLength] == report
    assert len(pdf.EncapsulatedDocument) % 2 == 0 and len(pdf.EncapsulatedDocument) - len(report) in (0, 1)
    assert (pdf.MIMETypeOfEncapsulatedDocument, pdf.BurnedInAnnotation, pdf.Modality) == ("application/pdf", "YES",
                                                                                           "DOC")
    assert pdf.ConceptNameCodeSequence[0].CodeValue == "18748-4" and pdf.DocumentTitle
    assert {i.ReferencedSOPInstanceUID for i in pdf.SourceInstanceSequence} == \
        {r.tag("SOPInstanceUID") for r in study_records(records, STUDY_A)}


def without_time(ds: Dataset) -> Dataset:
    ds = ds.copy()
    ds.walk(lambda d, elem: d.__delitem__(elem.tag) if elem.keyword in TIME_FIELDS else None)
    return ds


def test_rerun_replaces_rather_than_duplicates(out, scanned, random_model):
    _, records = scanned
    first = write_dicom_results(out, group_studies(records), random_model)
    before = {p: pydicom.dcmread(p) for p in first}
    second = write_dicom_results(out, group_studies(records), random_model)
    assert second == first
    assert sorted((out / DICOM_DIR).rglob("*")) == sorted([*first, first[0].parent])
    for p in second:
        assert without_time(pydicom.dcmread(p)) == without_time(before[p])

    # another threshold: new UIDs, and the study's earlier objects are removed
    moved = [r.evolve(threshold=0.25) for r in records]
    third = write_dicom_results(out, group_studies(moved), random_model)
    assert len(third) == 2 and not set(third) & set(first)
    assert sorted((out / DICOM_DIR / STUDY_A).iterdir()) == sorted(third)


@pytest.mark.slow
def test_every_object_passes_dciodvfy(out, scanned, random_model):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy absent (Debian package dicom3tools; `make sysdeps` installs it when root)")
    _, records = scanned
    for path in write_dicom_results(out, group_studies(records), random_model):
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
        report = run.stdout + run.stderr
        assert report.strip(), "dciodvfy printed nothing"
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert errors == [], f"{path.name}: {errors}"


def test_encapsulated_pdf_pads_an_odd_document_and_refuses_a_non_pdf():
    header = Dataset()
    header.update({"PatientID": "P", "PatientName": "", "PatientBirthDate": "", "PatientSex": "", "StudyDate": "",
                   "StudyTime": "", "AccessionNumber": "", "StudyID": "", "ReferringPhysicianName": ""})
    header.StudyInstanceUID, header.SOPInstanceUID = generate_uid(), generate_uid()
    header.SOPClassUID = dicom.DX_STORAGE
    document = b"%PDF-1.4\n%%EOF\n"  # 15 bytes: odd
    assert len(document) % 2 == 1
    kw = {"ids": InstanceIds(generate_uid(), 1, generate_uid()), "document_title": "t"}
    ds = EncapsulatedPDF(header, document, **kw)
    assert ds.EncapsulatedDocument == document + b"\x00" and ds.EncapsulatedDocumentLength == len(document)
    assert ds.PatientID == "P" and ds.StudyInstanceUID == header.StudyInstanceUID
    with pytest.raises(ValueError, match="not a PDF"):
        EncapsulatedPDF(header, b"<html>", **kw)


def test_a_study_that_cannot_be_encoded_is_skipped_without_phi(out, scanned, random_model, caplog):
    """A source SOP class highdicom does not know: that study is logged and left without objects, the others
    are written."""
    _, records = scanned
    other = generate_uid()
    odd = [r.evolve(tags={**r.tags, "StudyInstanceUID": other, "SOPClassUID": "1.2.3.4.5"})
           for r in study_records(records, STUDY_A)]
    earlier = out / DICOM_DIR / other / "1.2.3.dcm"  # its result from an earlier run: not left as if current
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"old")
    with caplog.at_level("WARNING", logger="cxrscreen"):
        paths = write_dicom_results(out, group_studies([*records, *odd]), random_model)
    assert {p.parent.name for p in paths} == {STUDY_A}
    assert not (out / DICOM_DIR / other).exists()
    assert "skipped" in caplog.text
    assert not any(s in caplog.text for s in ("PAT-A", "Müller", other, STUDY_A))


@pytest.mark.usefixtures("isolated_logging")
def test_highdicom_messages_reach_the_log_scrubbed(out, scanned, random_model, tmp_path):
    """highdicom warns about a single-component person name, quoting it: the log keeps the warning, not the name."""
    _, records = scanned
    odd = [r.evolve(tags={**r.tags, "PatientName": "Covid0000"}) for r in records]
    log = tmp_path / "cxrscreen.log"
    setup_logging(quiet=True, log_file=log)
    assert write_dicom_results(out, group_studies(odd), random_model)
    text = log.read_text(encoding="utf-8")
    assert "highdicom UserWarning" in text and "person name" in text
    assert "Covid0000" not in text
