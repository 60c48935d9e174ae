"""``cxrscreen export``: worklists from the ledger, filtered; same columns and order as the scan's worklists."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage
from typer.testing import CliRunner

from cxrscreen.cli.app import app
from cxrscreen.outputs.export import ExportError, export_frame, parse_decisions, parse_since
from cxrscreen.outputs.worklist import IMAGE_COLUMNS, STUDY_COLUMNS, read_csv
from cxrscreen.records import ImageRecord
from cxrscreen.state.ledger import Ledger
from cxrscreen.state.lock import folder_lock
from tests.factory import chest_phantom, make_dicom

REPO = Path(__file__).resolve().parents[1]
MODEL = "c0ffee" * 10 + "abcd"

# path, study, status, probability, decision, scored_at
ROWS = [
    ("a1.dcm", "1.1", "ok", 0.9, "abnormal", "2026-01-10T02:00:00"),
    ("a2.dcm", "1.1", "ok", 0.2, "normal", "2026-01-20T02:00:00"),
    ("b1.dcm", "1.2", "ok", 0.1, "normal", "2026-01-10T02:00:00"),
    ("c1.dcm", "1.3", "not_assessable:lateral_view", None, "review", "2026-01-20T02:00:00"),
    ("d1.dcm", "", "error:truncated", None, "review", "2026-01-05T02:00:00"),
    ("e1.dcm", "1.4", "ok", 0.3, "normal", "2026-01-20T02:00:00"),
]


def invoke(*args: object):
    return CliRunner().invoke(app, ["export", *map(str, args)])


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An output folder whose ledger is filled directly (known decisions and dates)."""
    out = tmp_path / "out"
    with Ledger(out / ".cxrscreen" / "ledger.sqlite") as led:
        led.start_run("r1")
        led.put([ImageRecord(path=p, status=st, probability=pr, decision=d, sha256=f"sha{i}", threshold=0.5,
                             model_sha256=MODEL, run_id="r1",
                             tags={"StudyInstanceUID": s, "SOPInstanceUID": f"{s}.{i}", "PatientID": f"P{i}"})
                 for i, (p, s, st, pr, d, _) in enumerate(ROWS)])
        led.db.executemany("UPDATE images SET scored_at=? WHERE path=?", [(r[5], r[0]) for r in ROWS])
        led.finish_run("r1", {"model": {"name": "test-model", "sha256": MODEL}})
    return out


def paths(csv: Path, column: str = "path") -> list[str]:
    return read_csv(csv)[column].tolist()


def test_images_all_rows_in_worklist_order(out: Path, tmp_path: Path) -> None:
    to = tmp_path / "x.csv"
    res = invoke(out, "--to", to)
    assert res.exit_code == 0, res.stderr
    df = read_csv(to)
    assert list(df.columns) == IMAGE_COLUMNS
    assert df["path"].tolist() == ["a1.dcm", "c1.dcm", "d1.dcm", "e1.dcm", "a2.dcm", "b1.dcm"]
    assert df["rank"].tolist() == [str(i) for i in range(1, 7)]
    assert set(df["model"]) == {"test-model"} and set(df["model_sha256"]) == {MODEL[:12]}
    assert "exported 6 images" in res.stderr


def test_decision_filter_keeps_order_and_reranks(out: Path, tmp_path: Path) -> None:
    to = tmp_path / "x.csv"
    assert invoke(out, "--to", to, "--decision", "review,abnormal").exit_code == 0
    df = read_csv(to)
    assert df["path"].tolist() == ["a1.dcm", "c1.dcm", "d1.dcm"]
    assert df["rank"].tolist() == ["1", "2", "3"]


def test_since_filters_on_scoring_date(out: Path, tmp_path: Path) -> None:
    to = tmp_path / "x.csv"
    assert invoke(out, "--to", to, "--since", "2026-01-20").exit_code == 0
    assert paths(to) == ["c1.dcm", "e1.dcm", "a2.dcm"]
    assert invoke(out, "--to", to, "--since", "2030-01-01").exit_code == 0
    assert to.read_text().strip() == ",".join(IMAGE_COLUMNS)  # header only


def test_studies_since_keeps_whole_studies(out: Path, tmp_path: Path) -> None:
    """A study with one new image is exported, decided over all its images (1.1 stays abnormal)."""
    to = tmp_path / "x.csv"
    assert invoke(out, "--to", to, "--level", "studies", "--since", "2026-01-20").exit_code == 0
    df = read_csv(to)
    assert list(df.columns) == STUDY_COLUMNS
    assert df["StudyInstanceUID"].tolist() == ["1.1", "1.3", "1.4"]
    assert df["decision"].tolist() == ["abnormal", "review", "normal"]
    assert df.loc[0, "n_images"] == "2"
    assert invoke(out, "--to", to, "--level", "studies", "--decision", "normal").exit_code == 0
    assert paths(to, "StudyInstanceUID") == ["1.4", "1.2"]
    assert invoke(out, "--to", to, "--level", "studies", "--since", "2026-01-01").exit_code == 0
    assert paths(to, "paths") == ["a1.dcm;a2.dcm", "d1.dcm", "c1.dcm", "e1.dcm", "b1.dcm"]


def test_json_format(out: Path, tmp_path: Path) -> None:
    to = tmp_path / "x.json"
    assert invoke(out, "--to", to, "--decision", "review").exit_code == 0  # format from the suffix
    rows = json.loads(to.read_text())
    assert [list(r) for r in rows] == [IMAGE_COLUMNS, IMAGE_COLUMNS]
    assert rows[0]["path"] == "c1.dcm" and rows[0]["probability"] is None and rows[0]["rank"] == 1
    assert invoke(out, "--to", to, "--format", "csv").exit_code == 0  # explicit format wins
    assert to.read_text().startswith("rank,decision,")


def test_write_is_atomic_and_owner_group_only(out: Path, tmp_path: Path) -> None:
    to = tmp_path / "dest" / "x.csv"
    to.parent.mkdir()
    to.write_text("old\n")
    assert invoke(out, "--to", to).exit_code == 0
    assert to.read_text().startswith("rank,") and to.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in to.parent.iterdir()] == ["x.csv"]


def test_export_reads_without_the_lock_and_writes_nothing_in_out(out: Path, tmp_path: Path) -> None:
    ledger = out / ".cxrscreen" / "ledger.sqlite"
    before = hashlib.sha256(ledger.read_bytes()).hexdigest()
    with folder_lock(out / ".cxrscreen"):  # a scan is running
        assert invoke(out, "--to", tmp_path / "x.csv").exit_code == 0
    assert hashlib.sha256(ledger.read_bytes()).hexdigest() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "2026-02-30"], "--since: '2026-02-30' is not a valid date"),
        (["--since", "20260101"], "--since: '20260101' is not a date (YYYY-MM-DD)"),
        (["--since", "yesterday"], "is not a date"),
        (["--decision", "abnormal,urgent"], "--decision: unknown decision 'urgent'"),
        (["--decision", ","], "--decision: give one or more of"),
    ],
)
def test_bad_options_exit_2_with_one_line(out: Path, tmp_path: Path, args: list[str], message: str) -> None:
    to = tmp_path / "x.csv"
    res = invoke(out, "--to", to, *args)
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cxrscreen: error: ") and message in lines[0]
    assert not to.exists()


@pytest.mark.parametrize(("option", "value", "choices"), [("--level", "series", "'images', 'studies'"),
                                                         ("--format", "xml", "'csv', 'json'")])
def test_bad_choices_exit_2_naming_the_choices(tmp_path: Path, option: str, value: str, choices: str) -> None:
    """--level and --format are Enums (cxrscreen.options): Typer refuses other values, listing the choices,
    before the command looks at OUT (here a folder without a ledger)."""
    to = tmp_path / "x.csv"
    res = CliRunner().invoke(app, ["export", str(tmp_path), "--to", str(to), option, value], env={"COLUMNS": "250"})
    assert res.exit_code == 2
    assert f"'{value}' is not one of {choices}" in res.stderr and "Traceback" not in res.stderr
    assert not to.exists()


def test_bad_paths_exit_2_with_one_line(out: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken" / ".cxrscreen").mkdir(parents=True)
    (tmp_path / "broken" / ".cxrscreen" / "ledger.sqlite").write_text("not a database")
    cases = [
        ([tmp_path / "empty", "--to", tmp_path / "x.csv"], "no ledger"),
        ([tmp_path / "missing", "--to", tmp_path / "x.csv"], "no such folder"),
        ([tmp_path / "broken", "--to", tmp_path / "x.csv"], "not a readable cxrscreen ledger"),
        ([out, "--to", tmp_path], "is a folder"),
        ([out, "--to", tmp_path / "nope" / "x.csv"], "does not exist"),
    ]
    for args, message in cases:
        res = invoke(*args)
        lines = res.stderr.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1 and message in lines[0], (args, res.stderr)
    assert not (tmp_path / "x.csv").exists()


def test_api_parsers() -> None:
    assert parse_since(None) is None and str(parse_since("2026-11-25")) == "2026-11-25"
    assert parse_decisions("Review, abnormal,review") == ("review", "abnormal")
    assert parse_decisions(None) is None
    with pytest.raises(ExportError):
        export_frame(Path("/nonexistent"))


# --------------------------------------------------------------------------- against a real scan
@pytest.fixture(scope="module")
def scanned(tmp_path_factory, random_model_path) -> Path:
    base = tmp_path_factory.mktemp("export_scan")
    folder, out = base / "in", base / "out"
    study = "1.2.826.0.1.3680043.8.498.1"
    make_dicom(folder / "a.dcm", chest_phantom(256, 256, seed=1), study_uid=study)
    make_dicom(folder / "b.dcm", chest_phantom(256, 256, seed=2), study_uid=study)
    make_dicom(folder / "c.dcm", chest_phantom(256, 256, seed=3))
    make_dicom(folder / "ct.dcm", chest_phantom(256, 256, seed=4), modality="CT", sop_class=CTImageStorage,
               body_part="ABDOMEN", view=None)
    res = subprocess.run([sys.executable, "-m", "cxrscreen", "scan", str(folder), "--out", str(out), "--model",
                          str(random_model_path), "--batch-size", "4", "--workers", "0", "--reports", "none",
                          "--device", "cpu", "--precision", "fp32", "--quiet"],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr
    return out


@pytest.mark.slow
def test_export_equals_the_scan_worklists(scanned: Path, tmp_path: Path) -> None:
    for level, worklist in (("images", "worklist_images.csv"), ("studies", "worklist_studies.csv")):
        to = tmp_path / f"{level}.csv"
        res = subprocess.run([sys.executable, "-m", "cxrscreen", "export", str(scanned), "--to", str(to),
                              "--level", level], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert res.returncode == 0, res.stderr
        assert to.read_text() == (scanned / worklist).read_text()


@pytest.mark.slow
def test_export_frame_filters_real_scan(scanned: Path) -> None:
    df = export_frame(scanned, decisions=["review"])
    assert df["path"].tolist() == ["ct.dcm"] and df["rank"].tolist() == [1]
    full = export_frame(scanned)
    assert full.to_csv(index=False, lineterminator="\n") == (scanned / "worklist_images.csv").read_text()
