"""Per-study PDF reports: contents, pages, safe names, atomic 0640 files, idempotence and resumption."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.uid import generate_uid
from pypdf import PdfReader

from cxrscreen import pages as PG
from cxrscreen import scan
from cxrscreen import studies as ST
from cxrscreen.model.files import load_model
from cxrscreen.options import ScanOptions
from cxrscreen.outputs import layout as LY
from cxrscreen.outputs import report as R
from cxrscreen.outputs.overlay import overlay
from cxrscreen.outputs.worklist import read_csv
from cxrscreen.prepare import prepare_file
from cxrscreen.preprocess import build_transform, placement, to_display
from cxrscreen.records import ABNORMAL, NORMAL, REVIEW, ImageRecord
from cxrscreen.state.ledger import Ledger
from tests.conftest import _random_model
from tests.factory import chest_phantom, make_dicom, truncate

EVIL_ID = "../../x"
EVIL_ACC = "../../evil/AC 42"  # 16 characters: the SH limit
NAME_RE = re.compile(r"^reports/[A-Za-z0-9_-]+_[0-9a-f]{12}_[0-9a-f]{10}\.pdf$")
LOW = 1e-6  # every assessable image of the random model is "abnormal" at this threshold


def pdf_text(path: Path) -> list[str]:
    return [page.extract_text() or "" for page in PdfReader(path).pages]


def make_folder(tmp_path: Path) -> Path:
    """Study A: two frontal films + a lateral (not assessable), hostile tags. Study B: one truncated file."""
    root = tmp_path / "in"
    uid = generate_uid()
    tags = {"study_uid": uid, "patient_id": EVIL_ID, "accession": EVIL_ACC, "patient_name": "Müller^Zoë"}
    make_dicom(root / "a" / "pa.dcm", chest_phantom(512, 448, seed=1), **tags)
    make_dicom(root / "a" / "ap.dcm", chest_phantom(400, 512, seed=2), view="AP", **tags)
    make_dicom(root / "a" / "lat.dcm", chest_phantom(512, 448, seed=3), view="LL", **tags)
    good = make_dicom(tmp_path / "b_full.dcm", chest_phantom(512, 448, seed=4), accession="ACC0002", patient_id="P2")
    (root / "b").mkdir()
    truncate(good, root / "b" / "b.dcm")
    good.unlink()
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path)


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, random_model) -> Path:
    """One scan shared by the read-only tests: returns OUT (its parent holds only ``in`` and ``out``)."""
    tmp = tmp_path_factory.mktemp("scanned")
    out = tmp / "out"
    run(make_folder(tmp), out, random_model)
    return out


def run(folder: Path, out: Path, model, **kw):
    kw.setdefault("threshold", LOW)
    return scan(folder, out=out, model=model, options=ScanOptions(workers=0, batch_size=4, **kw))


def study_reports(out: Path) -> dict[str, str]:
    st = read_csv(out / "worklist_studies.csv")
    return dict(zip(st["AccessionNumber"], st["report"], strict=True))


@pytest.mark.slow
def test_report_contents_pages_and_worklist_links(scanned: Path, random_model) -> None:
    out = scanned
    images = read_csv(out / "worklist_images.csv")
    studies = read_csv(out / "worklist_studies.csv")
    assert set(studies["decision"]) == {ABNORMAL, REVIEW}
    for df in (images, studies):  # every row of a flagged study links an existing PDF
        assert all(NAME_RE.match(r) and (out / r).is_file() for r in df["report"])
    rel = study_reports(out)[EVIL_ACC]
    pages = pdf_text(out / rel)
    assert len(pages) == 3  # one page per image of the study, the lateral included
    text = "\n".join(pages)
    assert EVIL_ACC in text and "Müller, Zoë" in text and EVIL_ID in text
    assert "Study decision: ABNORMAL" in text and "Research use only" in text
    assert random_model.sha256[:12] in text
    a = images[images["AccessionNumber"] == EVIL_ACC]
    for row in a.itertuples():
        page = next(p for p in pages if row.path in p)
        assert row.decision.upper() in page
        if row.status == "ok":
            assert f"{float(row.probability):.3f}" in page and "Grad-CAM overlay" in page
        else:
            assert "lateral view" in page and "No Grad-CAM" in page
    assert "ok" in set(a["status"]) and len(PdfReader(out / rel).pages[0].images) == 3  # film, overlay, colour bar
    err = pdf_text(out / study_reports(out)["ACC0002"])
    assert len(err) == 1 and "truncated" in err[0] and "Image cannot be shown" in err[0]


@pytest.mark.slow
def test_hostile_tags_stay_inside_the_reports_folder(scanned: Path) -> None:
    out, tmp_path = scanned, scanned.parent
    reports = (out / "reports").resolve()
    for rel in study_reports(out).values():
        path = (out / rel).resolve()
        assert path.parent == reports
        assert "Müller" not in rel and "x" not in rel.split("_")[0] and ".." not in rel
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert not list(tmp_path.rglob("evil")) and not list(tmp_path.rglob("x"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]
    assert not list((out / "reports").glob(".*.tmp"))


@pytest.mark.slow
def test_unchanged_study_is_not_rewritten_and_changes_make_a_new_report(folder: Path, tmp_path: Path,
                                                                         random_model) -> None:
    out = tmp_path / "out"
    run(folder, out, random_model)
    first = study_reports(out)
    stamps = {rel: (out / rel).stat().st_mtime_ns for rel in first.values()}
    run(folder, out, random_model)
    assert study_reports(out) == first
    assert {rel: (out / rel).stat().st_mtime_ns for rel in first.values()} == stamps

    # a run killed midway: a missing report is made again, the others are left alone
    (out / first["ACC0002"]).unlink()
    run(folder, out, random_model)
    assert (out / first["ACC0002"]).is_file()
    assert (out / first[EVIL_ACC]).stat().st_mtime_ns == stamps[first[EVIL_ACC]]

    # the study gains an image: new report (4 pages), the old one is gone
    make_dicom(folder / "a" / "pa2.dcm", chest_phantom(512, 448, seed=9), study_uid=_uid(out, EVIL_ACC),
               patient_id=EVIL_ID, accession=EVIL_ACC)
    run(folder, out, random_model)
    grown = study_reports(out)[EVIL_ACC]
    assert grown != first[EVIL_ACC] and not (out / first[EVIL_ACC]).exists()
    assert len(PdfReader(out / grown).pages) == 4
    assert study_reports(out)["ACC0002"] == first["ACC0002"]

    # rescored by another model: every report is remade; ledger and worklists follow
    other = load_model(_random_model(tmp_path / "m2" / "random.json", seed=1))
    run(folder, out, other)
    rescored = study_reports(out)
    assert rescored[EVIL_ACC] != grown and rescored["ACC0002"] != first["ACC0002"]
    assert sorted(p.name for p in (out / "reports").iterdir()) == sorted(Path(r).name for r in rescored.values())
    assert other.sha256[:12] in pdf_text(out / rescored[EVIL_ACC])[0]


def _uid(out: Path, accession: str) -> str:
    st = read_csv(out / "worklist_studies.csv")
    return st.loc[st["AccessionNumber"] == accession, "StudyInstanceUID"].iloc[0]


@pytest.mark.slow
def test_policies_flagged_all(folder: Path, tmp_path: Path, random_model) -> None:
    out = tmp_path / "out"
    run(folder, out, random_model, threshold=0.999999, reports="flagged")
    with Ledger(out / ".cxrscreen" / "ledger.sqlite") as ledger:
        studies = ST.group_studies(ledger.records())
    flagged = {s.first("AccessionNumber") for s in studies if s.decision != NORMAL}
    linked = {acc for acc, rel in study_reports(out).items() if rel}
    assert linked == flagged
    run(folder, out, random_model, threshold=0.999999, reports="all")
    assert all(study_reports(out).values())


# --------------------------------------------------------------------------- pure helpers
def _rec(path: str, uid: str, decision: str, prob: float | None = 0.5, status: str = "ok") -> ImageRecord:
    return ImageRecord(path=path, status=status, probability=prob, decision=decision,
                       tags={"StudyInstanceUID": uid, "AccessionNumber": "A1"}, threshold=0.5,
                       model_sha256="f" * 64)


def test_grouping_decision_rule_and_selection() -> None:
    recs = [_rec("a1", "1.2.3", NORMAL, 0.1), _rec("a2", "1.2.3", ABNORMAL, 0.9),
            _rec("b1", "1.2.4", NORMAL, 0.2), _rec("b2", "1.2.4", REVIEW, None, "not_assessable:body_part_knee"),
            _rec("c1", "1.2.5", NORMAL, 0.1), _rec("d1", "", REVIEW, None, "error:truncated"),
            _rec("d2", "", REVIEW, None, "error:truncated")]
    studies = {s.key: s for s in ST.group_studies(recs)}
    assert studies["1.2.3"].decision == ABNORMAL and [r.path for r in studies["1.2.3"].records] == ["a2", "a1"]
    assert studies["1.2.4"].decision == REVIEW and studies["1.2.5"].decision == NORMAL
    assert {"file:d1", "file:d2"} <= set(studies)  # no StudyInstanceUID: each file is its own study
    assert [ST.wanted(s, "flagged") for s in studies.values()].count(True) == 4
    assert all(ST.wanted(s, "all") for s in studies.values())
    assert not any(ST.wanted(s, "none") for s in studies.values())


def test_names_are_sanitised_hashed_and_keyed() -> None:
    assert R.sanitize("../../x") == "x"
    assert R.sanitize("") == R.sanitize("///") == "noacc"
    assert R.sanitize("-rf ACC/7\x00") == "rf_ACC_7"
    assert R.sanitize("Ñandú-42") == "Nandu-42"
    assert len(R.sanitize("A" * 200)) == 24
    study = ST.Study.of("1.2.3", [_rec("a1", "1.2.3", ABNORMAL, 0.9)])
    rel = R.report_relpath(study)
    assert NAME_RE.match(rel) and rel.startswith("reports/A1_")
    moved = ST.Study.of("1.2.3", [_rec("a1", "1.2.3", ABNORMAL, 0.91)])
    assert R.report_stem(moved) == R.report_stem(study) and R.report_relpath(moved) != rel


def test_text_helpers() -> None:
    assert LY.person_name("DOE^JANE^Q") == "DOE, JANE Q"
    assert LY.person_name("") == "—"
    assert LY.dicom_date("20261124") == "2026-11-24"
    assert LY.describe_status("not_assessable:lateral_view") == "Not assessable: lateral view"
    assert LY.clean("a\x00b\nc") == "a b c"


def test_overlay_aligns_with_the_displayed_image(tmp_path: Path, random_model) -> None:
    """Feed the model input itself as the 'CAM': mapped back through the film's placement it must match the display."""
    img = chest_phantom(520, 300, seed=5)  # tall and narrow: wide padding left and right
    img[60:120, 40:90] = 1.0  # an off-centre landmark
    path = make_dicom(tmp_path / "in" / "tall.dcm", img)
    spec = random_model.spec
    prep = prepare_file(path, spec, build_transform(spec), keep_film=True)
    assert prep.film is not None and prep.image is not None
    pl = placement(prep.film.shape, spec)
    assert not pl.valid[:, :5].any() and pl.valid[:, spec.input_size // 2].all()  # padding found on both sides
    rec = ImageRecord(path="tall.dcm", status="ok", probability=0.5, decision=ABNORMAL)
    (page,) = PG.make_pages([(rec, prep.film, None)], spec, None, None)
    assert page.display is not None and page.cam is None
    assert abs(page.display.shape[0] / page.display.shape[1] - 520 / 300) < 0.02  # aspect kept
    moved = pl.to_film(to_display(prep.image, spec)[None][0], page.display.shape)
    assert moved.shape == page.display.shape
    r = np.corrcoef(moved.ravel(), page.display.ravel())[0, 1]
    assert r > 0.9, f"overlay misaligned with the film (correlation {r:.2f})"
    rgb = overlay(page.display, np.zeros_like(page.display))
    assert np.abs(rgb[..., 0].astype(int) - np.round(page.display * 255)).max() <= 1  # CAM 0 leaves the film


def test_make_pages_maps_each_cam_onto_its_display(random_model) -> None:
    """Grad-CAM in batches for the films with a scored tensor, at each display's own shape; none without."""
    from cxrscreen.model.inference import choose_runtime

    spec = random_model.spec
    chain = build_transform(spec)
    films = [chest_phantom(300 + 40 * i, 260, seed=i) for i in range(3)]
    items = [(_rec(f"p{i}", "1", ABNORMAL), f.astype(np.float32), torch.as_tensor(chain(f)))
             for i, f in enumerate(films)]
    items.append((_rec("q", "1", REVIEW, None, "error:truncated"), None, None))
    items.append((_rec("r", "1", NORMAL, 0.1), films[0].astype(np.float32), None))  # no tensor: no CAM
    pages = PG.make_pages(items, spec, random_model.net.eval(), choose_runtime("cpu", "fp32"))
    for page in pages[:3]:
        assert page.cam is not None and page.cam.shape == page.display.shape
        assert page.cam.min() >= 0.0 and page.cam.max() <= 1.0
    assert pages[3].display is None and pages[3].cam is None
    assert pages[4].display is not None and pages[4].cam is None


def _count_reads(monkeypatch) -> dict[str, int]:
    import cxrscreen.prepare as prepare

    reads: dict[str, int] = {}
    real = prepare._read

    def counted(path: Path, size: int):
        reads[path.name] = reads.get(path.name, 0) + 1
        return real(path, size)

    monkeypatch.setattr(prepare, "_read", counted)
    return reads


def test_each_film_is_read_once_with_reports_for_all(folder: Path, tmp_path: Path, random_model, monkeypatch) -> None:
    """Scoring hands the report stage its pages: no file is read a second time, even with --reports all."""
    reads = _count_reads(monkeypatch)
    res = scan(folder, out=tmp_path / "out", model=random_model,
               options=ScanOptions(reports="all", batch_size=2, workers=0))
    assert sorted(reads) == ["ap.dcm", "b.dcm", "lat.dcm", "pa.dcm"] and set(reads.values()) == {1}
    assert "report_rereads" not in res.summary.durations_s
    assert all(study_reports(tmp_path / "out").values())
    assert not (tmp_path / "out" / ".cxrscreen" / "pages").exists()  # the pages kept for the reports are gone
    pages = [t for f in (tmp_path / "out" / "reports").glob("*.pdf") for t in pdf_text(f)]
    assert len(pages) == 4 and sum("No Grad-CAM" in t for t in pages) == 2  # the lateral's and the truncated film's


@pytest.mark.slow
def test_study_flagged_by_a_later_film_gets_its_earlier_films_pages(tmp_path: Path, random_model, monkeypatch) -> None:
    """A normal film scored before the film that flags its study waits in memory: still read once."""
    root = tmp_path / "in"
    uid = generate_uid()
    make_dicom(root / "1_normal.dcm", chest_phantom(512, 448, seed=1), study_uid=uid)
    full = make_dicom(tmp_path / "full.dcm", chest_phantom(512, 448, seed=2), study_uid=uid)
    truncate(full, root / "2_truncated.dcm")  # same study, unreadable pixels: error → the study is reviewed
    reads = _count_reads(monkeypatch)
    res = scan(root, out=tmp_path / "out", model=random_model,
               options=ScanOptions(reports="flagged", batch_size=1, workers=0, threshold=0.999999))
    decisions = read_csv(res.images_csv).set_index("path")["decision"].to_dict()
    assert decisions == {"1_normal.dcm": NORMAL, "2_truncated.dcm": REVIEW}
    assert reads == {"1_normal.dcm": 1, "2_truncated.dcm": 1}
    assert "report_rereads" not in res.summary.durations_s
    (report,) = (tmp_path / "out" / "reports").glob("*.pdf")
    text = pdf_text(report)
    assert len(text) == 2 and sum("No Grad-CAM" in t for t in text) == 1  # the truncated film's page only


@pytest.mark.slow
def test_films_scored_by_an_earlier_run_are_read_again_for_their_report(folder: Path, tmp_path: Path, random_model,
                                                                       monkeypatch) -> None:
    """Reports asked for later (nothing left to score): the report stage reads those films itself."""
    out = tmp_path / "out"
    scan(folder, out=out, model=random_model, options=ScanOptions(reports="none", workers=0))
    reads = _count_reads(monkeypatch)
    res = scan(folder, out=out, model=random_model, options=ScanOptions(reports="all", workers=0))
    assert res.summary.files_processed == 0
    assert res.summary.durations_s["report_rereads"] == 4
    assert reads == {"ap.dcm": 1, "pa.dcm": 1, "lat.dcm": 1}  # the truncated file's error needs no pixels
    assert all(study_reports(out).values())
