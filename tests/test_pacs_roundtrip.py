"""The nightly round trip against a real PACS (Orthanc): pull → scan --dicom-results → send, results
read back through Orthanc's REST API in the studies they belong to; every object passes dciodvfy."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ComprehensiveSRStorage, EncapsulatedPDFStorage

from cxrscreen import scan
from cxrscreen.options import ScanOptions
from cxrscreen.pacs import Link, Retry, pull, send
from tests.orthanc import orthanc_server, require_orthanc

pytestmark = pytest.mark.slow  # Orthanc, a scan with DICOM results, dciodvfy

SAMPLES = Path(__file__).resolve().parents[1] / "sample_dicoms"


@pytest.fixture
def pacs(tmp_path: Path):
    require_orthanc()
    with orthanc_server(tmp_path / "orthanc", OverwriteInstances=True) as server:
        for path in sorted(SAMPLES.rglob("*.dcm")):
            with contextlib.suppress(OSError):  # Orthanc refuses the sample folder's deliberately truncated file
                server.upload(path)
        yield server


def test_pull_scan_send_puts_the_results_in_their_studies(pacs, tmp_path: Path, random_model) -> None:
    films, out = tmp_path / "films", tmp_path / "out"
    pulled = pull(pacs.dicom, films, link=Link(calling_aet="CXRSCREEN"))
    assert pulled.fetched > 0 and pulled.complete
    res = scan(films, out=out, model=random_model, options=ScanOptions(threshold=1e-6, workers=0, dicom_results=True))
    assert res.summary.images_scored > 0
    objects = sorted((out / "dicom").rglob("*.dcm"))
    scored_studies = {pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID
                      for p in films.rglob("*.dcm")
                      if pydicom.dcmread(p, stop_before_pixels=True).Modality in ("CR", "DX")}
    by_study: dict[str, set[str]] = {}
    for p in objects:
        ds = pydicom.dcmread(p)
        by_study.setdefault(ds.StudyInstanceUID, set()).add(ds.SOPClassUID)
    assert set(by_study) <= scored_studies and by_study
    assert all(ComprehensiveSRStorage in classes for classes in by_study.values())
    assert any(EncapsulatedPDFStorage in classes for classes in by_study.values())  # flagged studies' reports

    sent = send(out, pacs.dicom, link=Link(calling_aet="CXRSCREEN"), retry=Retry(retries=0))
    assert sent.complete and sent.sent == len(objects)
    for p in objects:  # each object sits in its source study in the PACS
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        tags = pacs.get(f"/instances/{pacs.instance_id(ds.SOPInstanceUID)}/simplified-tags")
        assert tags["StudyInstanceUID"] == ds.StudyInstanceUID and tags["PatientID"] == ds.PatientID
    assert send(out, pacs.dicom, link=Link(calling_aet="CXRSCREEN"), retry=Retry(retries=0)).sent == 0  # nothing new

    again = scan(films, out=out, model=random_model, options=ScanOptions(threshold=1e-6, workers=0, dicom_results=True))
    assert again.summary.files_processed == 0
    assert sorted((out / "dicom").rglob("*.dcm")) == objects  # a rerun replaces, never duplicates


def test_every_result_object_passes_dciodvfy(tmp_path: Path, random_model) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed; `make sysdeps` installs it as root")
    out = tmp_path / "out"
    scan(SAMPLES, out=out, model=random_model, options=ScanOptions(threshold=1e-6, workers=0, dicom_results=True))
    objects = sorted((out / "dicom").rglob("*.dcm"))
    assert objects
    for p in objects:
        proc = subprocess.run(["dciodvfy", str(p)], capture_output=True, text=True)
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
        assert not errors, (p.name, errors)
