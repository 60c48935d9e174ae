"""``cxrscreen pull`` against a real PACS (Orthanc): C-FIND by date and modality, C-GET into a folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, DigitalXRayImageStorageForProcessing, JPEGBaseline8Bit
from typer.testing import CliRunner

from cxrscreen.cli.app import app
from cxrscreen.pacs import Address, DateRangeError, Link, pull
from cxrscreen.pacs.net import MAX_CONTEXTS
from cxrscreen.pacs.pull import SOP_CLASSES, TRANSFER_SYNTAXES, date_range, safe_name, storage_contexts
from cxrscreen.testing import dicom
from tests.orthanc import AET, free_port, orthanc_server, require_orthanc

SAMPLES = Path(__file__).resolve().parents[1] / "sample_dicoms"
runner = CliRunner()


def _extra_films(folder: Path) -> list[Path]:
    """Films of transfer syntaxes and SOP classes the samples lack: DX for processing in JPEG baseline,
    CR deflated; both dated 2026-11-26."""
    rng = np.random.default_rng(0)
    ds = dicom.dataset(sop_class=DigitalXRayImageStorageForProcessing, StudyDate="20261126", PatientName="EXTRA^ONE",
                       PatientID="EXTRA0001", AccessionNumber="ACCX1")
    dicom.set_pixels(ds, rng.integers(0, 255, (64, 48), dtype=np.uint8))
    ds.PresentationIntentType = "FOR PROCESSING"
    jpeg = dicom.write(dicom.encode(ds, JPEGBaseline8Bit), folder / "dx_processing_jpeg.dcm")
    ds = dicom.dataset(sop_class=dicom.CR_STORAGE, modality="CR", StudyDate="20261126", PatientName="EXTRA^TWO",
                       PatientID="EXTRA0002", AccessionNumber="ACCX2")
    dicom.set_pixels(ds, rng.integers(0, 4095, (64, 48), dtype=np.uint16), bits=12)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated = dicom.write(ds, folder / "cr_deflated.dcm")
    return [jpeg, deflated]


def pacs_films(extra: Path) -> list[Path]:
    """What a test PACS holds: the sample films but the truncated one (Orthanc refuses it) and two extra films
    written under ``extra``."""
    films = [p for p in SAMPLES.rglob("*") if p.is_file() and p.suffix != ".md" and "corrupt" not in p.name]
    return films + _extra_films(extra)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc holding the sample films (all but the truncated one, which it refuses) and two extra films."""
    require_orthanc()
    tmp = tmp_path_factory.mktemp("pull")
    films = pacs_films(tmp / "extra")
    with orthanc_server(tmp / "orthanc") as server:
        for path in films:
            assert server.upload(path)["Status"] == "Success", path
        server.films = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in films}
        yield server


def _expected(films: dict[str, Path], dates: tuple[str, str] = ("", "99999999"),
              modalities: tuple[str, ...] = ("CR", "DX")) -> dict[str, Path]:
    """SOPInstanceUID → source file of the CR/DX films the pull should fetch."""
    out = {}
    for uid, path in films.items():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.Modality in modalities and dates[0] <= ds.StudyDate <= dates[1]:
            out[uid] = path
    return out


def _pulled(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in folder.glob("*/*.dcm")}


def test_storage_contexts_one_per_sop_class_and_transfer_syntax():
    contexts = storage_contexts(["CR", "DX"])
    assert len(contexts) == len(set(contexts)) == 3 * len(TRANSFER_SYNTAXES)
    assert {s for s, _ in contexts} == {*SOP_CLASSES["CR"], *SOP_CLASSES["DX"]}
    assert len(contexts) + 2 <= MAX_CONTEXTS  # with the C-FIND and C-GET contexts
    assert storage_contexts(["CR"]) == [(SOP_CLASSES["CR"][0], ts) for ts in TRANSFER_SYNTAXES]


def test_date_range_and_safe_name():
    from datetime import date

    assert date_range(None, None) == ""
    assert date_range(date(2026, 11, 24), None) == "20261124-"
    assert date_range(None, date(2026, 11, 24)) == "-20261124"
    assert date_range(date(2026, 11, 24), date(2026, 11, 24)) == "20261124"
    with pytest.raises(ValueError, match="after"):
        date_range(date(2026, 11, 25), date(2026, 11, 24))
    assert safe_name("1.2.840.1") == "1.2.840.1"
    assert "/" not in safe_name("../../etc/passwd") and safe_name("../x").startswith("h")


def test_date_range_parses_and_checks_text_dates():
    """The API parses YYYYMMDD text itself (the CLI passes --since/--until through) with a typed error."""
    assert date_range("20261124", None) == "20261124-"
    assert date_range("20261124", "20261125") == "20261124-20261125"
    assert issubclass(DateRangeError, ValueError)
    with pytest.raises(DateRangeError, match="--since '2026-11-24': expected a date as YYYYMMDD"):
        date_range("2026-11-24", None)
    with pytest.raises(DateRangeError, match="--until '20261332'"):
        date_range(None, "20261332")
    with pytest.raises(DateRangeError, match="--since 20261125 is after --until 20261124"):
        pull(Address("PACS", "127.0.0.1", 1), Path("unused"), since="20261125", until="20261124")


@pytest.mark.slow
def test_pull_fetches_every_cr_dx_film_byte_for_byte_and_resumes(pacs, tmp_path):
    dest = tmp_path / "in"
    expected = _expected(pacs.films)
    result = pull(pacs.dicom, dest, link=Link(calling_aet="TESTSCU"))
    assert result.complete and result.error is None
    assert (result.fetched, result.already_present, result.failed) == (len(expected), 0, 0)
    pulled = _pulled(dest)
    assert set(pulled) == set(expected)  # the Secondary Capture (modality OT) is not a CR/DX film
    syntaxes = set()
    for uid, path in pulled.items():
        got, src = pydicom.dcmread(path), pydicom.dcmread(expected[uid])
        assert path.parent.name == src.StudyInstanceUID
        assert path.stat().st_mode & 0o777 == 0o640
        assert got.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID  # not transcoded
        assert got.PixelData == src.PixelData
        syntaxes.add(got.file_meta.TransferSyntaxUID.name)
    assert {"JPEG 2000 Image Compression (Lossless Only)", "JPEG-LS Lossless Image Compression", "RLE Lossless",
            "JPEG Baseline (Process 1)", "Deflated Explicit VR Little Endian", "Explicit VR Little Endian"} <= syntaxes
    assert sorted(result.study_folders) == sorted({p.parent for p in pulled.values()})

    again = pull(pacs.dicom, dest, link=Link(calling_aet="TESTSCU"))
    assert (again.fetched, again.already_present, again.failed) == (0, len(expected), 0)

    gone = sorted(pulled.values())[0]
    before = {p: p.stat().st_mtime_ns for p in pulled.values() if p != gone}
    content = gone.read_bytes()
    gone.unlink()
    resumed = pull(pacs.dicom, dest, link=Link(calling_aet="TESTSCU"))
    assert (resumed.fetched, resumed.already_present) == (1, len(expected) - 1)
    assert gone.read_bytes() == content
    assert {p: p.stat().st_mtime_ns for p in before} == before  # the others were not written again


@pytest.mark.slow
def test_cli_pull_date_range_and_modality(pacs, tmp_path):
    dest = tmp_path / "day"
    res = runner.invoke(app, ["pull", "--from", str(pacs.dicom), "--to", str(dest), "--since", "20261124",
                              "--until", "20261124", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    expected = _expected(pacs.films, ("20261124", "20261124"))
    assert summary["fetched"] == len(expected) == 3 and summary["studies"] == 2
    assert set(_pulled(dest)) == set(expected)

    dest = tmp_path / "cr"
    res = runner.invoke(app, ["pull", "--from", str(pacs.dicom), "--to", str(dest), "--since", "20261125",
                              "--modality", "CR", "--quiet"])
    assert res.exit_code == 0 and res.output == ""
    expected = _expected(pacs.films, ("20261125", "99999999"), ("CR",))
    assert set(_pulled(dest)) == set(expected) and len(expected) == 3


@pytest.mark.slow
def test_pull_log_holds_no_patient_data(pacs, tmp_path):
    log = tmp_path / "pull.log"
    dest = tmp_path / "in"
    res = runner.invoke(app, ["pull", "--from", str(pacs.dicom), "--to", str(dest), "--log-file", str(log)])
    assert res.exit_code == 0, res.output
    text = log.read_text()
    assert "fetched" in text
    identifiers = {"DEMO", "EXTRA", "ACC0", str(tmp_path)}
    for path in pacs.films.values():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        identifiers |= {ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, str(ds.PatientID)}
    assert not [s for s in identifiers if s in text]


@pytest.mark.slow
def test_wrong_called_aet_is_refused_with_exit_2(tmp_path):
    with orthanc_server(tmp_path / "orthanc", DicomCheckCalledAet=True) as server:
        wrong = Address("NOT" + AET, server.dicom.host, server.dicom.port)
        res = runner.invoke(app, ["pull", "--from", str(wrong), "--to", str(tmp_path / "in")])
    assert res.exit_code == 2
    assert "rejected the association" in res.stderr and "called ae title not recognised" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not list((tmp_path / "in").iterdir())


def test_closed_port_is_a_clear_error_with_exit_2(tmp_path):
    port = free_port()  # nothing listens there
    res = runner.invoke(app, ["pull", "--from", f"PACS@127.0.0.1:{port}", "--to", str(tmp_path / "in")])
    assert res.exit_code == 2
    assert res.stderr.strip() == f"cxrscreen: error: cannot connect to PACS@127.0.0.1:{port}: connection refused"


@pytest.mark.parametrize(("args", "message"), [
    (["--from", "PACS@host"], "--from: 'PACS@host': no port"),
    (["--from", "PACS@host:104", "--since", "2026-11-24"], "--since '2026-11-24': expected a date as YYYYMMDD"),
    (["--from", "PACS@host:104", "--since", "20261125", "--until", "20261124"], "is after --until"),
    (["--from", "PACS@host:104", "--calling-aet", "A_CALLING_AE_TITLE_TOO_LONG"], "longer than 16 characters"),
])
def test_cli_usage_errors(tmp_path, args, message):
    res = runner.invoke(app, ["pull", *args, "--to", str(tmp_path / "in")])
    assert res.exit_code == 2 and message in res.stderr
