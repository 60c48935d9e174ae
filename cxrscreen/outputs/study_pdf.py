"""One study's PDF report: a page per image, the film beside its Grad-CAM overlay (reportlab platypus).

Each image's page is a story of flowables (header, pictures, details) kept to one landscape A4
page; the footer is drawn by the page template. Header and detail values are cut to fit, so no tag
value, however long or odd, can push a page's content onto a second page.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache, partial
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER, TA_RIGHT
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase import pdfmetrics
from reportlab.platypus import (
    BaseDocTemplate,
    Flowable,
    Frame,
    Image,
    KeepTogether,
    PageBreak,
    PageTemplate,
    Paragraph,
    Spacer,
    Table,
    TableStyle,
)

from cxrscreen.outputs.layout import (
    DECISION_COLOUR,
    DISCLAIMER,
    binary_streams,
    clean,
    describe_notes,
    describe_status,
    dicom_date,
    fit,
    fmt_prob,
    fmt_threshold,
    fonts,
    jpeg,
    jpeg_bytes,
    person_name,
    wrap,
)
from cxrscreen.outputs.overlay import overlay
from cxrscreen.pages import Page
from cxrscreen.populations import ALL
from cxrscreen.studies import Study
from cxrscreen.version import __version__

PAGE = landscape(A4)


MARGIN = 28.0


FOOTER_H = 22.0  # the footer's band above the bottom margin


WIDTH = PAGE[0] - 2 * MARGIN  # the frame (no padding)


HEIGHT = PAGE[1] - 2 * MARGIN - FOOTER_H


IMG_H_MAX = 350.0  # picture boxes' height when the page has room (the details rarely take two lines)


GAP, BAR_W = 16.0, 44.0  # between the two pictures; the colour bar's column


BAR_H_MAX = 260.0


GREY_TEXT = colors.HexColor("#555555")


RULE = colors.HexColor("#999999")


@dataclass(frozen=True)
class ReportContext:
    """What every page of every report shares."""

    model_name: str
    model_version: str
    model_sha: str
    generated: str


@cache
def colour_bar() -> ImageReader:
    """Vertical bar, CAM 1 at the top, drawn with the overlay's own blend over mid-grey."""
    v = np.linspace(1.0, 0.0, 256)[:, None].repeat(12, axis=1)
    return jpeg(overlay(np.full_like(v, 0.5), v), quality=95)


@cache
def _styles() -> dict[str, ParagraphStyle]:
    regular, bold = fonts()
    return {
        "title": ParagraphStyle("title", fontName=bold, fontSize=14, leading=17),
        "badge": ParagraphStyle("badge", fontName=bold, fontSize=12, leading=14, alignment=TA_CENTER,
                                textColor=colors.white),
        "label": ParagraphStyle("label", fontName=regular, fontSize=7.5, leading=9, textColor=GREY_TEXT),
        "value": ParagraphStyle("value", fontName=bold, fontSize=10.5, leading=13),
        "meta": ParagraphStyle("meta", fontName=regular, fontSize=8, leading=10, textColor=GREY_TEXT),
        "meta_r": ParagraphStyle("meta_r", fontName=regular, fontSize=8, leading=10, textColor=GREY_TEXT,
                                 alignment=TA_RIGHT),
        "caption": ParagraphStyle("caption", fontName=regular, fontSize=8.5, leading=10.5,
                                  textColor=colors.HexColor("#333333")),
        "box_title": ParagraphStyle("box_title", fontName=bold, fontSize=11, leading=14, alignment=TA_CENTER,
                                    textColor=colors.HexColor("#333333")),
        "box_text": ParagraphStyle("box_text", fontName=regular, fontSize=9, leading=11.5, alignment=TA_CENTER,
                                   textColor=colors.HexColor("#333333")),
        "d_label": ParagraphStyle("d_label", fontName=regular, fontSize=8.5, leading=12, textColor=GREY_TEXT),
        "d_value": ParagraphStyle("d_value", fontName=regular, fontSize=9.5, leading=12),
        "d_strong": ParagraphStyle("d_strong", fontName=bold, fontSize=9.5, leading=12),
    }


def para(text: str, style: ParagraphStyle, colour: Any = None) -> Paragraph:
    """A Paragraph of plain text: markup characters (``<``, ``&``) are escaped, never parsed."""
    if colour is not None:
        style = ParagraphStyle(f"{style.name}_c", parent=style, textColor=colour)
    return Paragraph(escape(text), style)


def lines(text: str, style: ParagraphStyle, width: float, max_lines: int, colour: Any = None) -> Paragraph:
    """At most ``max_lines`` lines of plain text in ``width`` points (cut with an ellipsis)."""
    cut = wrap(text, style.fontName, style.fontSize, width - 1.0, max_lines)
    if colour is not None:
        style = ParagraphStyle(f"{style.name}_c", parent=style, textColor=colour)
    return Paragraph("<br/>".join(escape(s) for s in cut), style)


def grid(rows: list[list[Any]], widths: list[float], style: list[tuple] | None = None,
         heights: list[float | None] | None = None) -> Table:
    """A borderless table without padding (the page's layout grid)."""
    t = Table(rows, colWidths=widths, rowHeights=heights, hAlign="LEFT")
    t.setStyle(TableStyle([("LEFTPADDING", (0, 0), (-1, -1), 0), ("RIGHTPADDING", (0, 0), (-1, -1), 0),
                           ("TOPPADDING", (0, 0), (-1, -1), 0), ("BOTTOMPADDING", (0, 0), (-1, -1), 0),
                           ("VALIGN", (0, 0), (-1, -1), "TOP")] + (style or [])))
    return t


# --------------------------------------------------------------------------- header
def header(study: Study, ctx: ReportContext, page_no: int, n_pages: int) -> list[Any]:
    """Title and study decision; patient, IDs, date, institution; generation time, description, image i of n."""
    st = _styles()
    regular, bold = fonts()
    label = f"Study decision: {study.decision.upper()}"
    badge_w = min(pdfmetrics.stringWidth(label, bold, 12) + 20, WIDTH / 2)
    badge = grid([[para(fit(label, bold, 12, badge_w - 12), st["badge"])]], [badge_w], heights=[24],
                 style=[("BACKGROUND", (0, 0), (-1, -1), DECISION_COLOUR.get(study.decision, colors.grey)),
                        ("ROUNDEDCORNERS", [4, 4, 4, 4]), ("VALIGN", (0, 0), (-1, -1), "MIDDLE")])
    title = grid([[para("Chest X-ray triage report", st["title"]), badge]], [WIDTH - badge_w, badge_w],
                 style=[("ALIGN", (1, 0), (1, 0), "RIGHT"), ("VALIGN", (0, 0), (0, 0), "MIDDLE")])
    fields = [
        ("Patient", person_name(study.first("PatientName"))),
        ("Patient ID", clean(study.first("PatientID")) or "—"),
        ("Accession", clean(study.first("AccessionNumber")) or "—"),
        ("Study date", dicom_date(study.first("StudyDate"))),
    ]
    institution = clean(study.first("InstitutionName"))
    if institution:
        fields.append(("Institution", institution))
    col_w = WIDTH / len(fields)
    v = st["value"]
    cells = [[para(name.upper(), st["label"]), para(fit(value, v.fontName, v.fontSize, col_w - 8), v)]
             for name, value in fields]
    patient = grid([cells], [col_w] * len(fields))
    desc = clean(study.first("StudyDescription"))
    generated = f"Generated {clean(ctx.generated)}" + (f"   ·   {desc}" if desc else "")
    meta = grid([[para(fit(generated, regular, 8, WIDTH - 120), st["meta"]),
                  para(f"Image {page_no} of {n_pages}", st["meta_r"])]], [WIDTH - 100, 100],
                style=[("BOTTOMPADDING", (0, 0), (-1, -1), 4), ("LINEBELOW", (0, 0), (-1, -1), 0.6, RULE)])
    return [title, Spacer(1, 2), patient, Spacer(1, 4), meta]


# --------------------------------------------------------------------------- pictures
class ColourBar(Flowable):
    """The overlay's colour scale: 0.0 at the bottom, 1.0 at the top, and what the colours mean."""

    def __init__(self, height: float) -> None:
        super().__init__()
        self.width, self.height = BAR_W, height

    def draw(self) -> None:
        regular, _ = fonts()
        c, h = self.canv, self.height
        x = 6.0
        c.drawImage(colour_bar(), x, 0, 10, h)
        c.setStrokeColor(RULE)
        c.setLineWidth(0.6)
        c.rect(x, 0, 10, h, stroke=1, fill=0)
        c.setFont(regular, 7)
        c.setFillColor(colors.black)
        for v in (0.0, 0.5, 1.0):
            c.drawString(x + 13, min(max(v * h - 2.5, 0.0), h - 7.0), f"{v:.1f}")
        c.saveState()
        c.translate(x + 36, h / 2)
        c.rotate(90)
        c.drawCentredString(0, 0, "relative evidence for 'abnormal'")
        c.restoreState()


def fitted(shape: tuple[int, ...], box_w: float, box_h: float) -> tuple[float, float]:
    """Width and height of an image of ``shape`` (rows, columns, …) fitted into the box, aspect kept."""
    ih, iw = shape[:2]
    scale = min(box_w / iw, box_h / ih)
    return iw * scale, ih * scale


def picture(data: bytes, shape: tuple[int, ...], box_w: float, box_h: float) -> Table:
    """A JPEG fitted into ``box_w × box_h`` with its aspect ratio, with a thin frame."""
    dw, dh = fitted(shape, box_w, box_h)
    return grid([[Image(io.BytesIO(data), width=dw, height=dh)]], [dw], heights=[dh],
                style=[("BOX", (0, 0), (-1, -1), 0.4, colors.HexColor("#cccccc"))])


def message(title: str, text: str, box_w: float, box_h: float) -> Table:
    """A grey box saying why there is nothing to show."""
    st = _styles()
    return grid([[[para(title, st["box_title"]), Spacer(1, 3), lines(text, st["box_text"], box_w - 24, 3)]]],
                [box_w], heights=[box_h],
                style=[("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#f3f3f3")),
                       ("BOX", (0, 0), (-1, -1), 0.5, colors.HexColor("#cccccc")),
                       ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
                       ("LEFTPADDING", (0, 0), (-1, -1), 12), ("RIGHTPADDING", (0, 0), (-1, -1), 12)])


def pictures(page: Page, img_h: float) -> Table:
    """Captions; the film as the model saw it beside its Grad-CAM overlay and colour bar (or why not)."""
    st = _styles()
    img_w = (WIDTH - GAP - BAR_W) / 2
    reason = page.note or describe_status(page.record.status)
    seen = "As the model saw it (borders trimmed, windowed)" if page.cam is not None else "Image"
    bar: Any = ""
    if page.display is not None:
        left: Any = picture(jpeg_bytes(page.display), page.display.shape, img_w, img_h)
    else:
        left = message("Image cannot be shown", reason, img_w, img_h)
    if page.cam is not None and page.display is not None:
        right: Any = picture(jpeg_bytes(overlay(page.display, page.cam)), page.display.shape,
                             img_w, img_h)
        drawn_h = fitted(page.display.shape, img_w, img_h)[1]
        bar = ColourBar(min(max(min(BAR_H_MAX, drawn_h), 120.0), img_h))  # level with the overlay's top
    else:
        right = message("No Grad-CAM", reason, img_w, img_h)
    captions = [para(seen, st["caption"]), "",
                para("Grad-CAM overlay (last convolutional block, abnormal logit)", st["caption"]), ""]
    return grid([captions, [left, "", right, bar]], [img_w, GAP, img_w, BAR_W], heights=[None, img_h],
                style=[("BOTTOMPADDING", (0, 0), (-1, 0), 4), ("ALIGN", (0, 1), (-1, 1), "CENTER")])


# --------------------------------------------------------------------------- details
def details(page: Page, thr_default: float) -> Table:
    """Image decision (in its colour), probability, threshold, QC; view, series, file, note."""
    st = _styles()
    r = page.record
    left = [
        ("Image decision", r.decision.upper()),
        ("Probability (abnormal)", fmt_prob(r.probability)),
        ("Threshold", fmt_threshold(r.threshold_or(thr_default))
         + (f" ({clean(r.population)} operating point)" if r.population not in ("", ALL) else "")),
        ("QC status", describe_status(r.status)),
        ("QC notes", describe_notes(r.all_notes)),
    ]
    right = [
        ("View / modality", " / ".join(v for v in (clean(r.tag("ViewPosition")), clean(r.tag("Modality"))) if v)
         or "—"),
        ("Series", clean(r.tag("SeriesDescription")) or "—"),
        ("File", clean(r.path)),
    ]
    if page.note:
        right.append(("Note", page.note))
    label_w = 120.0
    col_w = WIDTH / 2
    value_w = col_w - label_w - 10

    def column(items: list[tuple[str, str]]) -> Table:
        rows = []
        for name, value in items:
            strong = name in ("Image decision", "Probability (abnormal)")
            colour = DECISION_COLOUR.get(r.decision, colors.black) if name == "Image decision" else None
            rows.append([para(name, st["d_label"]),
                         lines(value, st["d_strong" if strong else "d_value"], value_w, 2, colour)])
        return grid(rows, [label_w, value_w], style=[("BOTTOMPADDING", (0, 0), (-1, -1), 1)])

    return grid([[column(left), column(right)]], [col_w, col_w])


# --------------------------------------------------------------------------- page and document
def page_flowables(study: Study, page: Page, ctx: ReportContext, thr: float, page_no: int,
                   n_pages: int) -> list[Any]:
    """One image's page; the picture boxes take the height the header and details leave."""
    top = header(study, ctx, page_no, n_pages)
    bottom = details(page, thr)
    used = sum(f.wrap(WIDTH, HEIGHT)[1] for f in top) + bottom.wrap(WIDTH, HEIGHT)[1]
    caption_h, spacing = 15.0, 10.0 + 10.0 + 6.0
    img_h = max(min(IMG_H_MAX, HEIGHT - used - caption_h - spacing - 1.0), 60.0)
    return [KeepTogether([*top, Spacer(1, 10), pictures(page, img_h), Spacer(1, 10), bottom])]


def draw_footer(c: Any, doc: Any, ctx: ReportContext, n_pages: int) -> None:
    """Model, weights and software on the left, the disclaimer in bold, the page number on the right."""
    regular, bold = fonts()
    w = doc.pagesize[0]
    y = MARGIN + 3
    version = f" {clean(ctx.model_version)}" if ctx.model_version else ""
    page_text = f"Page {doc.page} / {n_pages}"
    disclaimer_w = pdfmetrics.stringWidth(DISCLAIMER, bold, 7.5)
    page_w = pdfmetrics.stringWidth(page_text, regular, 7.5)
    model = fit(f"Model {clean(ctx.model_name)}{version} · weights sha256 {clean(ctx.model_sha)[:12]} · "
                f"cxrscreen {__version__}", regular, 7.5, w - 2 * MARGIN - page_w - disclaimer_w - 48)
    left_end = MARGIN + pdfmetrics.stringWidth(model, regular, 7.5)
    centre = (left_end + w - MARGIN - page_w) / 2  # the disclaimer centred between the other two
    c.saveState()
    c.setStrokeColor(RULE)
    c.setLineWidth(0.6)
    c.line(MARGIN, MARGIN + 14, w - MARGIN, MARGIN + 14)
    c.setFillColor(colors.HexColor("#444444"))
    c.setFont(regular, 7.5)
    c.drawString(MARGIN, y, model)
    c.drawRightString(w - MARGIN, y, page_text)
    c.setFont(bold, 7.5)
    c.drawCentredString(centre, y, DISCLAIMER)
    c.restoreState()


def render_study(fh: Any, study: Study, pages: list[Page], ctx: ReportContext, thr: float) -> None:
    """Write the study's PDF to the binary handle ``fh``: one landscape A4 page per image.

    Each page's pixels are released once its flowables hold them as JPEG bytes.
    """
    story: list[Any] = []
    for i, page in enumerate(pages, 1):
        story += page_flowables(study, page, ctx, thr, i, len(pages))
        if i < len(pages):
            story.append(PageBreak())
        page.display = page.cam = None
    frame = Frame(MARGIN, MARGIN + FOOTER_H, WIDTH, HEIGHT, leftPadding=0, rightPadding=0, topPadding=0,
                  bottomPadding=0, id="body")
    with binary_streams():
        doc = BaseDocTemplate(fh, pagesize=PAGE, leftMargin=MARGIN, rightMargin=MARGIN, topMargin=MARGIN,
                              bottomMargin=MARGIN + FOOTER_H, title="cxrscreen study report",
                              author=f"cxrscreen {__version__}", subject=DISCLAIMER, pageCompression=1,
                              invariant=0)
        doc.addPageTemplates([PageTemplate(id="image", frames=[frame],
                                           onPage=partial(draw_footer, ctx=ctx, n_pages=len(pages)))])
        doc.build(story)
