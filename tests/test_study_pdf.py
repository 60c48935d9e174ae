"""The per-study PDF (platypus): every field on every page, one page per image, hostile text, missing pictures."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from pypdf import PdfReader
from reportlab import rl_config

from cxrscreen import __version__
from cxrscreen.outputs import study_pdf as SP
from cxrscreen.outputs.layout import DISCLAIMER, fonts, wrap
from cxrscreen.pages import Page
from cxrscreen.records import ABNORMAL, REVIEW, ImageRecord
from cxrscreen.studies import Study
from tests.factory import chest_phantom

SHA = "2ddb267344a8" + "f" * 52
CTX = SP.ReportContext("cxrscreen-test-model", "0.1.0", SHA, "2026-11-26 00:27 UTC")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069]")
TAGS = {"PatientName": "Müller^Zoë", "PatientID": "PID-77", "AccessionNumber": "ACC0006", "StudyDate": "20261125",
        "InstitutionName": "Demo General Hospital", "StudyDescription": "XR CHEST PA", "ViewPosition": "PA",
        "Modality": "CR", "SeriesDescription": "CHEST PA SERIES", "StudyInstanceUID": "1.2.3"}


def scored(tags: dict[str, str], path: str = "2026-11-25/ACC0006/pa.dcm", threshold: float | None = 0.753) -> Page:
    """An ok image with its display image and a Grad-CAM (at the display's shape) peaking off-centre."""
    display = chest_phantom(480, 360, seed=1)
    yy, xx = np.mgrid[0:480, 0:360]
    cam = np.exp(-((xx - 240) ** 2 + (yy - 150) ** 2) / 3000.0).astype(np.float32)
    rec = ImageRecord(path=path, status="ok", tags=tags, qc_notes=("reduced_x2",), probability=0.996,
                      decision=ABNORMAL, threshold=threshold)
    return Page(rec, display=display, cam=cam)


def lateral(tags: dict[str, str]) -> Page:
    """A not-assessable image that can be shown: no Grad-CAM, the reason in the box and the details."""
    rec = ImageRecord(path="2026-11-25/ACC0006/lat.dcm", status="not_assessable:lateral_view",
                      tags={**tags, "ViewPosition": "LL"})
    return Page(rec, display=chest_phantom(360, 480, seed=2), note="not assessable: lateral view")


def render(pages: list[Page], decision: str = ABNORMAL, thr: float = 0.5) -> bytes:
    study = Study("1.2.3", tuple(p.record for p in pages), decision)
    fh = io.BytesIO()
    SP.render_study(fh, study, pages, CTX, thr)
    return fh.getvalue()


def texts(pdf: bytes) -> list[str]:
    return [p.extract_text() or "" for p in PdfReader(io.BytesIO(pdf)).pages]


def test_every_field_on_a_two_page_study() -> None:
    pages = [scored(TAGS), lateral(TAGS)]
    pdf = render(pages)
    reader = PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) == 2
    assert [round(float(v)) for v in reader.pages[0].mediabox[2:]] == [842, 595]  # landscape A4
    assert reader.metadata.title == "cxrscreen study report" and reader.metadata.subject == DISCLAIMER
    assert reader.metadata.author == f"cxrscreen {__version__}"
    assert b"ASCII85Decode" not in pdf and rl_config.useA85 == 1  # binary streams, setting restored
    first, second = texts(pdf)
    for i, page in enumerate((first, second), 1):  # header and footer on every page
        for must in ("Chest X-ray triage report", "Study decision: ABNORMAL", "Müller, Zoë", "PID-77", "ACC0006",
                     "2026-11-25", "Demo General Hospital", "Generated 2026-11-26 00:27 UTC", "XR CHEST PA",
                     f"Image {i} of 2", "cxrscreen-test-model 0.1.0", SHA[:12], f"cxrscreen {__version__}",
                     DISCLAIMER, f"Page {i} / 2", "Image decision", "Probability (abnormal)", "Threshold",
                     "QC status", "QC notes", "View / modality", "Series", "CHEST PA SERIES", "File"):
            assert must in page, (i, must)
        assert SHA[:13] not in page
    for must in ("As the model saw it (borders trimmed, windowed)", "Grad-CAM overlay", "ABNORMAL", "0.996",
                 "0.753", "OK", "decoded at 1/2 resolution", "PA / CR", "2026-11-25/ACC0006/pa.dcm",
                 "relative evidence for 'abnormal'"):
        assert must in first, must
    assert "No Grad-CAM" not in first and "Note" not in first
    for must in ("No Grad-CAM", "not assessable: lateral view", "REVIEW", "Not assessable: lateral view",
                 "LL / CR", "2026-11-25/ACC0006/lat.dcm", "Note", "0.500"):  # no record threshold: the default
        assert must in second, must
    assert "As the model saw it" not in second and "relative evidence" not in second
    assert [len(p.images) for p in reader.pages] == [3, 1]  # film, overlay, colour bar; the lateral film only


def test_pixels_are_released_once_the_page_is_laid_out() -> None:
    pages = [scored(TAGS), lateral(TAGS)]
    render(pages)
    assert all(p.display is None and p.cam is None for p in pages)


def test_missing_image_and_missing_cam_say_why() -> None:
    gone = Page(ImageRecord(path="b/b.dcm", status="error:truncated", tags=TAGS),
                note="the file is no longer in the scanned folder")
    undecodable = Page(ImageRecord(path="c/c.dcm", status="error:truncated", tags=TAGS))
    other_model = scored(TAGS)
    other_model.cam, other_model.note = None, "scored by another model: no Grad-CAM"
    pdf = render([gone, undecodable, other_model], decision=REVIEW)
    reader = PdfReader(io.BytesIO(pdf))
    first, second, third = texts(pdf)
    assert len(reader.pages) == 3 and "Study decision: REVIEW" in first
    assert "Image cannot be shown" in first and "No Grad-CAM" in first
    assert first.count("the file is no longer in the scanned folder") == 3  # both boxes and the Note row
    assert "Image cannot be shown" in second and second.count("Error: truncated") == 3  # boxes, QC status
    assert "No Grad-CAM" in third and "Image cannot be shown" not in third and "Image\n" in third
    assert "scored by another model" in third
    assert [len(p.images) for p in reader.pages] == [0, 0, 1]


def test_tiny_threshold_is_not_printed_as_zero() -> None:
    assert "1.0e-06" in texts(render([scored(TAGS, threshold=1e-6)]))[0]


HOSTILE = {
    "PatientName": "Ω" * 300 + "^Zoë",
    "PatientID": "<b>&amp;</b><font size=40>&</font>",
    "AccessionNumber": "A\x00B\x1bC\u202eD\r\nE",
    "InstitutionName": "مستشفى الأمل " * 20,
    "StudyDescription": "W" * 3000,
    "StudyDate": "<2026>",
    "SeriesDescription": "山田^太郎 " * 40,
    "ViewPosition": "<i>", "Modality": "&lt;",
}


@pytest.mark.parametrize("name", ["山田^太郎", "Ω" * 300 + "^Zoë", "", "^^^", "<b>Doe</b>^&Jane"])
def test_hostile_text_never_breaks_the_page(name: str) -> None:
    tags = {**TAGS, **HOSTILE, "PatientName": name}
    long_path = "/".join(["a" * 120] * 20) + ".dcm"  # 2400 characters, no space to break at
    pages = [scored(tags, path=long_path), lateral(tags)]
    pages[1].note = "x" * 5000
    pdf = render(pages)
    reader = PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) == 2  # nothing spilled onto an extra page
    for i, text in enumerate(texts(pdf), 1):
        assert CONTROL.search(text) is None
        assert f"Page {i} / 2" in text and DISCLAIMER in text and f"Image {i} of 2" in text
        assert "<b>&amp;</b>" in text.replace("\n", "")  # markup printed as text, not parsed
        assert "<2026>" in text and "<i> / CR" not in text and "ABCDE" not in text
        assert "…" in text  # long values cut with an ellipsis
    assert [len(p.images) for p in reader.pages] == [3, 1]
    if name == "山田^太郎":  # glyphs DejaVu Sans lacks are drawn (and extracted) as U+FFFD, not as NUL
        assert "\ufffd\ufffd, \ufffd\ufffd" in texts(pdf)[0]


def test_hostile_report_context_is_cut_to_the_footer() -> None:
    ctx = SP.ReportContext("m<b>" * 100, "v&1\x00", SHA, "2026-11-26 <b>")
    study = Study("1.2.3", (), ABNORMAL)
    fh = io.BytesIO()
    SP.render_study(fh, study, [scored(TAGS)], ctx, 0.5)
    (text,) = texts(fh.getvalue())
    assert DISCLAIMER in text and "Page 1 / 1" in text and "Generated 2026-11-26 <b>" in text


def test_wrap_breaks_words_too_long_for_a_line() -> None:
    regular, _ = fonts()
    out = wrap("x" * 500, regular, 9.5, 100.0, max_lines=2)
    assert len(out) == 2 and out[0].startswith("xxx") and out[1].endswith("…")
    assert wrap("short words here", regular, 9.5, 300.0, max_lines=2) == ["short words here"]
