"""The batch summary PDF: written by every scan, atomically, with counts, histogram, ranked flagged studies, model."""

from __future__ import annotations

import stat
from pathlib import Path

import pandas as pd
import pytest
from pypdf import PdfReader

from cxrscreen import scan
from cxrscreen.options import ScanOptions
from cxrscreen.outputs import summary as S
from cxrscreen.outputs.worklist import read_csv
from cxrscreen.runs import RunSummary
from tests.factory import chest_phantom, make_dicom, make_sr


def text_of(path: Path) -> str:
    return "\n".join(p.extract_text() or "" for p in PdfReader(path).pages)


@pytest.mark.slow
def test_scan_writes_the_summary(tmp_path: Path, random_model) -> None:
    root = tmp_path / "in"
    make_dicom(root / "a.dcm", chest_phantom(512, 448, seed=1), accession="ACC0101")
    make_dicom(root / "b.dcm", chest_phantom(512, 448, seed=2), accession="ACC0102", view="LL")
    make_sr(root / "c.dcm")
    out = tmp_path / "out"
    res = scan(root, out=out, model=random_model, options=ScanOptions(threshold=1e-6, workers=0))
    pdf = out / "summary.pdf"
    assert stat.S_IMODE(pdf.stat().st_mode) == 0o640
    assert not list(out.glob(".summary.pdf.*"))
    text = text_of(pdf)
    studies = read_csv(out / "worklist_studies.csv")
    for must in ("batch summary", res.run_id, "Counts by decision", "lateral view", "no pixel data",
                 "Research use only", random_model.sha256[:16], "1.0e-06", "ACC0101",
                 "ACC0102", "Model and threshold"):
        assert must in text, must
    for row in studies[studies["decision"] != "normal"].itertuples():
        assert row.report and row.report in text  # flagged studies listed with their report file
    first = PdfReader(pdf).pages[0]
    assert len(first.images) == 1  # the histogram
    assert text.index("ACC0101") < text.index("ACC0102")  # abnormal ranked before review


def test_summary_with_nothing_scored(tmp_path: Path, random_model) -> None:
    summary = RunSummary("20261125T010203Z", wall_s=3725.0)
    path = S.write_summary_pdf(tmp_path / "summary.pdf", summary, pd.DataFrame(columns=["decision", "probability"]),
                               random_model, 0.42, images=None)
    text = text_of(path)
    assert "No image has been scored yet" in text and "No study is flagged" in text
    assert "2026-11-25 01:02:03 UTC" in text and "1 h 02 min 05 s" in text and "0.420" in text


def test_many_flagged_studies_are_capped(tmp_path: Path, random_model, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S, "MAX_ROWS", 3)
    studies = pd.DataFrame({"decision": ["abnormal"] * 5 + ["normal"], "AccessionNumber": [f"A{i}" for i in range(6)],
                            "probability": [0.6, 0.9, 0.7, 0.8, 0.95, 0.1], "n_images": 1, "report": ""})
    images = studies.assign(status="ok")
    path = S.write_summary_pdf(tmp_path / "s.pdf", RunSummary("x"), studies, random_model, 0.5, images=images)
    text = text_of(path)
    assert "First 3 of 5 flagged studies" in text
    assert text.index("A4") < text.index("A1") < text.index("A3")
    assert "A2" not in text and "A0" not in text and "A5" not in text


def test_helpers() -> None:
    assert S.duration(None) == "—" and S.duration(12.34) == "12.3 s" and S.duration(75) == "1 min 15 s"
    assert S.run_started("20261125T224129Z") == "2026-11-25 22:41:29 UTC"
    rows = S.status_rows({"error:truncated": 1, "ok": 3, "not_assessable:lateral_view": 2},
                         {"ok": 10, "not_assessable:body_part_leg": 1})
    assert [r[:2] for r in rows] == [("assessable", "—"), ("not assessable (QC)", "body part leg"),
                                     ("not assessable (QC)", "lateral view"), ("error", "truncated")]
    assert rows[0][2:] == (3, 10)
    png = S.histogram_png(pd.Series([0.1, 0.2, 0.8]).to_numpy(), 0.5, "t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
