"""``cxrscreen send``: C-STORE of the result objects under OUT/dicom/, tracked in the outbox, against Orthanc."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import EncapsulatedPDFStorage
from typer.testing import CliRunner

from cxrscreen.cli.app import app
from cxrscreen.pacs import Address, Link, Retry, send
from cxrscreen.pacs.send import is_stored, is_transient
from cxrscreen.state.lock import folder_lock
from cxrscreen.state.outbox import Outbox
from cxrscreen.testing import dicom
from tests.factory import chest_phantom, make_dicom
from tests.orthanc import free_port, orthanc_server, require_orthanc

runner = CliRunner()
STUDY = "1.2.826.0.1.3680043.8.498.4242"
UNKNOWN_SOP_CLASS = "1.2.826.0.1.3680043.8.498.999.1"  # Orthanc (UnknownSopClassAccepted false) refuses it


def _write(ds: pydicom.Dataset, out: Path) -> Path:
    return dicom.write(ds, out / "dicom" / ds.StudyInstanceUID / f"{ds.SOPInstanceUID}.dcm")


def sr(out: Path, **tags) -> Path:
    ds = dicom.dataset(sop_class=dicom.SR_STORAGE, modality="SR", StudyInstanceUID=STUDY, body_part=None, view=None,
                       ValueType="CONTAINER", **tags)
    return _write(ds, out)


def pdf(out: Path) -> Path:
    ds = dicom.dataset(sop_class=EncapsulatedPDFStorage, modality="DOC", StudyInstanceUID=STUDY, body_part=None,
                       view=None, MIMETypeOfEncapsulatedDocument="application/pdf",
                       EncapsulatedDocument=b"%PDF-1.4\n%%EOF\n")
    return _write(ds, out)


def image(out: Path) -> Path:
    path = make_dicom(out / "tmp.dcm", chest_phantom(64, 64), study_uid=STUDY)
    return path.rename(out / "dicom" / STUDY / f"{pydicom.dcmread(path).SOPInstanceUID}.dcm")


def refused_by_status(out: Path) -> Path:
    """An SR without StudyInstanceUID: Orthanc answers C-STORE with 0xA700 (out of resources)."""
    ds = dicom.dataset(sop_class=dicom.SR_STORAGE, modality="SR", body_part=None, view=None, ValueType="CONTAINER")
    del ds.StudyInstanceUID
    return dicom.write(ds, out / "dicom" / "broken" / f"{ds.SOPInstanceUID}.dcm")


def unknown_sop_class(out: Path) -> Path:
    return _write(dicom.dataset(sop_class=UNKNOWN_SOP_CLASS, modality="OT", StudyInstanceUID=STUDY), out)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    require_orthanc()
    with orthanc_server(tmp_path_factory.mktemp("send") / "orthanc", OverwriteInstances=True) as server:
        yield server


@pytest.fixture
def orthanc(pacs):
    pacs.clear()
    yield pacs


def test_status_classes():
    assert is_stored(0x0000) and is_stored(0xB000) and is_stored(0xB007)
    assert not is_stored(0xA700) and not is_stored(0xC000)
    assert is_transient(0xA700) and is_transient(0xA7FF) and is_transient(0x0213)
    assert not is_transient(0xA900) and not is_transient(0xC000) and not is_transient(0x0122)


def test_outbox_tracks_content_per_destination(tmp_path):
    with Outbox(tmp_path / "outbox.sqlite") as box:
        assert not box.is_acknowledged("A@h:1", "1.2.3", "aa")
        box.acknowledge("A@h:1", "1.2.3", "aa")
        assert box.is_acknowledged("A@h:1", "1.2.3", "aa")
        assert not box.is_acknowledged("A@h:1", "1.2.3", "bb")  # new content of the same object
        assert not box.is_acknowledged("B@h:1", "1.2.3", "aa")  # another destination
        box.acknowledge("A@h:1", "1.2.3", "bb", 0xB000)
        assert box.is_acknowledged("A@h:1", "1.2.3", "bb") and box.count() == 1
    assert (tmp_path / "outbox.sqlite").stat().st_mode & 0o777 == 0o640


@pytest.mark.slow
def test_send_stores_new_objects_once_and_resends_changed_ones(orthanc, tmp_path):
    out = tmp_path / "out"
    files = [sr(out), pdf(out), image(out)]
    uids = {pydicom.dcmread(p).SOPInstanceUID for p in files}

    first = send(out, orthanc.dicom, link=Link(calling_aet="TESTSCU"), retry=Retry(retries=0))
    assert (first.found, first.sent, first.failed, first.already_acknowledged) == (3, 3, 0, 0) and first.complete
    assert orthanc.sop_uids() == uids
    for path in files:  # sent as they are on disk: the same data set arrives
        src = pydicom.dcmread(path)
        assert pydicom.dcmread(io.BytesIO(orthanc.instance_bytes(src.SOPInstanceUID))) == src
    assert (out / ".cxrscreen" / "ledger.sqlite").is_file()  # acknowledgements live in the ledger

    second = send(out, orthanc.dicom, link=Link(calling_aet="TESTSCU"), retry=Retry(retries=0))
    assert (second.sent, second.already_acknowledged, second.attempts) == (0, 3, 0)

    ds = pydicom.dcmread(files[0])  # the scan rewrote one object: same UID, new content
    ds.SeriesDescription = "second version"
    ds.save_as(files[0], enforce_file_format=True)
    third = send(out, orthanc.dicom, link=Link(calling_aet="TESTSCU"), retry=Retry(retries=0))
    assert (third.sent, third.already_acknowledged) == (1, 2)
    assert orthanc.get(f"/instances/{orthanc.instance_id(ds.SOPInstanceUID)}/simplified-tags")[
        "SeriesDescription"] == "second version"
    assert orthanc.sop_uids() == uids


@pytest.mark.slow
def test_transient_refusals_are_retried_with_exponential_back_off(orthanc, tmp_path):
    out = tmp_path / "out"
    sr(out)
    refused_by_status(out)
    slept: list[float] = []
    result = send(out, orthanc.dicom, retry=Retry(retries=3, backoff=1.5, sleep=slept.append))
    assert slept == [1.5, 3.0, 6.0] and result.attempts == 4
    assert (result.sent, result.failed) == (1, 1) and not result.unreachable


@pytest.mark.slow
def test_cli_partial_failure_has_its_own_exit_code(orthanc, tmp_path):
    out = tmp_path / "out"
    good = sr(out)
    unknown_sop_class(out)
    refused_by_status(out)
    (out / "dicom" / STUDY / "not_dicom.dcm").write_bytes(b"not a DICOM file")
    args = ["send", str(out), "--to", str(orthanc.dicom), "--retries", "1", "--retry-delay", "0"]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 5, res.output
    summary = json.loads(res.stdout)
    assert (summary["found"], summary["sent"], summary["failed"]) == (4, 1, 3)
    assert "3 object(s) not acknowledged; the next send tries them again (exit code 5)" in res.stderr
    assert orthanc.sop_uids() == {pydicom.dcmread(good).SOPInstanceUID}

    res = runner.invoke(app, [*args, "--json"])  # the failures are tried again, the good one is not resent
    assert res.exit_code == 5
    assert (json.loads(res.stdout)["sent"], json.loads(res.stdout)["already_acknowledged"]) == (0, 1)


@pytest.mark.slow
def test_only_unaccepted_objects_left_is_a_partial_failure_not_unreachable(orthanc, tmp_path):
    out = tmp_path / "out"
    unknown_sop_class(out)
    result = send(out, orthanc.dicom, retry=Retry(retries=2, backoff=0))
    assert not result.unreachable and result.failed == 1 and result.attempts == 1  # a refusal is not retried


def test_unreachable_destination_exits_2_after_the_retries(tmp_path):
    out = tmp_path / "out"
    sr(out)
    port = free_port()  # nothing listens there
    slept: list[float] = []
    result = send(out, Address("PACS", "127.0.0.1", port), retry=Retry(retries=2, backoff=0.5, sleep=slept.append))
    assert result.unreachable and result.attempts == 3 and result.failed == 1 and slept == [0.5, 1.0]
    res = runner.invoke(app, ["send", str(out), "--to", f"PACS@127.0.0.1:{port}", "--retries", "1",
                              "--retry-delay", "0"])
    assert res.exit_code == 2
    assert res.stderr.strip().endswith(f"cannot connect to PACS@127.0.0.1:{port}: connection refused "
                                       "(after 2 attempt(s)); nothing sent")


def test_send_waits_for_no_scan_holding_the_lock(tmp_path):
    out = tmp_path / "out"
    sr(out)
    with folder_lock(out / ".cxrscreen"):
        res = runner.invoke(app, ["send", str(out), "--to", f"PACS@127.0.0.1:{free_port()}"])
    assert res.exit_code == 75 and "another cxrscreen run holds" in res.stderr


@pytest.mark.parametrize(("make", "args", "message"), [
    (False, ["--to", "PACS@h:104"], "no such folder"),
    (True, ["--to", "PACS@h:104"], "holds no dicom/ folder"),
    (True, ["--to", "PACS@h:99999"], "--to: 'PACS@h:99999': port '99999' is not a number from 1 to 65535"),
])
def test_cli_usage_errors(tmp_path, make, args, message):
    if make:
        (tmp_path / "out").mkdir()
    res = runner.invoke(app, ["send", str(tmp_path / "out"), *args])
    assert res.exit_code == 2 and message in res.stderr
