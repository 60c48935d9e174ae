"""Shared reportlab building blocks for every PDF cxrscreen writes (study reports, run summary,
site validation): fonts, text cleaning, wording of statuses and notes, paragraph styles, tables,
the page footer. Pure helpers: nothing here knows about pipelines, ledgers or models."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from PIL import Image
from reportlab import rl_config
from reportlab.lib import colors
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.lib.utils import ImageReader, simpleSplit
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import LongTable, Table, TableStyle

from cxrscreen.records import ABNORMAL, NORMAL, REVIEW, Status
from cxrscreen.version import __version__

DISCLAIMER = "Research use only — not a diagnostic device"


NOTE_TEXT = {
    "polarity_suspect": "polarity looks inverted (bone dark, air bright): check the film",
    "percentile_window": "no window in the header (percentile window)",
    "age_unknown": "no usable patient age in the header: the default population's threshold applies",
}


DECISION_COLOUR = {ABNORMAL: colors.HexColor("#b71c1c"), REVIEW: colors.HexColor("#e65100"),
                   NORMAL: colors.HexColor("#2e7d32")}


@cache
def fonts() -> tuple[str, str]:
    """DejaVu Sans (shipped with matplotlib; covers accented, Greek, Cyrillic names) or Helvetica."""
    base = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    try:
        pdfmetrics.registerFont(TTFont("CXR-Sans", str(base / "DejaVuSans.ttf")))
        pdfmetrics.registerFont(TTFont("CXR-Sans-Bold", str(base / "DejaVuSans-Bold.ttf")))
        return "CXR-Sans", "CXR-Sans-Bold"
    except Exception:
        return "Helvetica", "Helvetica-Bold"


@cache
def _glyphs() -> frozenset[int] | None:
    """Code points both PDF fonts can draw (None: a standard font, no glyph table to consult)."""
    faces = [getattr(pdfmetrics.getFont(name), "face", None) for name in fonts()]
    maps = [getattr(face, "charToGlyph", None) for face in faces]
    return None if any(m is None for m in maps) else frozenset.intersection(*(frozenset(m) for m in maps))


def clean(text: str) -> str:
    """Printable single line (tags may hold control characters); a character the PDF font lacks
    (CJK in DejaVu Sans) becomes U+FFFD, drawn as such instead of an invisible NUL glyph."""
    glyphs = _glyphs()
    line = " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())
    return line if glyphs is None else "".join(c if ord(c) in glyphs else "\ufffd" for c in line)


def fit(text: str, font: str, size: float, width: float) -> str:
    """One line no wider than ``width`` points, cut with an ellipsis when needed."""
    text = clean(text[:400])
    if pdfmetrics.stringWidth(text, font, size) <= width:
        return text
    while text and pdfmetrics.stringWidth(text + "…", font, size) > width:
        text = text[:-1]
    return text + "…"


def _split_long(line: str, font: str, size: float, width: float) -> list[str]:
    """A line with a word wider than ``width`` (a path, a long ID) broken between characters."""
    out = []
    while len(line) > 1 and pdfmetrics.stringWidth(line, font, size) > width:
        n = 1
        while n < len(line) and pdfmetrics.stringWidth(line[:n + 1], font, size) <= width:
            n += 1
        out.append(line[:n])
        line = line[n:]
    return out + [line]


def wrap(text: str, font: str, size: float, width: float, max_lines: int) -> list[str]:
    """Word-wrap to at most ``max_lines`` lines, the last one cut with an ellipsis when needed;
    a word too long for a line is broken between characters."""
    lines = [part for line in simpleSplit(clean(text[:2000]), font, size, width) or [""]
             for part in _split_long(line, font, size, width)]
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [fit(" ".join(lines[max_lines - 1:]) + " …", font, size, width)]
    return lines


def person_name(pn: str) -> str:
    """DICOM PN ``FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX`` → ``FAMILY, GIVEN MIDDLE`` (first component group)."""
    parts = [p.strip() for p in pn.split("=")[0].split("^")]
    family, rest = (parts[0] if parts else ""), " ".join(p for p in parts[1:] if p)
    return clean(f"{family}, {rest}" if family and rest else family or rest) or "—"


def dicom_date(value: str) -> str:
    v = value.strip()
    return f"{v[:4]}-{v[4:6]}-{v[6:8]}" if re.fullmatch(r"\d{8}", v) else (clean(v) or "—")


def describe_status(status: str) -> str:
    st = Status(status)
    label = {"not_assessable": "Not assessable", "error": "Error", "ok": "OK"}[st.kind]
    return f"{label}: {st.reason.replace('_', ' ')}" if st.reason else label


def describe_notes(notes: Iterable[str]) -> str:
    out = []
    for n in notes:
        if n in NOTE_TEXT:
            out.append(NOTE_TEXT[n])
        elif n.startswith("reduced_x"):
            out.append(f"decoded at 1/{n.removeprefix('reduced_x')} resolution")
        else:
            out.append(n.replace("_", " "))
    return "; ".join(out) or "none"


def fmt_prob(p: float | None) -> str:
    return "—" if p is None else f"{p:.3f}"


def fmt_threshold(t: float) -> str:
    """Three decimals, or scientific notation for a threshold too small to show that way."""
    return f"{t:.3f}" if t >= 0.001 else f"{t:.1e}"


def jpeg_bytes(arr: np.ndarray, quality: int = 88) -> bytes:
    """A grey [0, 1] float or uint8 (grey or RGB) image as JPEG."""
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def jpeg(arr: np.ndarray, quality: int = 88) -> ImageReader:
    return ImageReader(io.BytesIO(jpeg_bytes(arr, quality)))


@contextlib.contextmanager
def binary_streams() -> Iterator[None]:
    """Binary PDF streams instead of reportlab's default ASCII85: 25 % smaller, and without the
    C accelerator its pure-Python encoder costs more than everything else on a page."""
    old = rl_config.useA85
    rl_config.useA85 = 0
    try:
        yield
    finally:
        rl_config.useA85 = old


def styles() -> dict[str, ParagraphStyle]:
    regular, bold = fonts()
    return {
        "title": ParagraphStyle("title", fontName=bold, fontSize=16, leading=20, spaceAfter=4),
        "h2": ParagraphStyle("h2", fontName=bold, fontSize=11.5, leading=14, spaceBefore=10, spaceAfter=4),
        "body": ParagraphStyle("body", fontName=regular, fontSize=9, leading=11.5),
        "small": ParagraphStyle("small", fontName=regular, fontSize=7.5, leading=9.5,
                                textColor=colors.HexColor("#555555")),
        "warn": ParagraphStyle("warn", fontName=bold, fontSize=9, leading=11.5, textColor=colors.HexColor("#b71c1c")),
    }


def table(rows: list[list[Any]], widths: list[float], header: bool = True, long: bool = False) -> Table:
    regular, bold = fonts()
    cls = LongTable if long else Table
    t = cls(rows, colWidths=widths, repeatRows=1 if header else 0, hAlign="LEFT")
    style = [
        ("FONT", (0, 0), (-1, -1), regular, 8.5),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.HexColor("#dddddd")),
        ("TOPPADDING", (0, 0), (-1, -1), 2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
    ]
    if header:
        style += [("FONT", (0, 0), (-1, 0), bold, 8.5), ("LINEBELOW", (0, 0), (-1, 0), 0.8, colors.black),
                  ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#f0f0f0"))]
    t.setStyle(TableStyle(style))
    return t


def page_decor(c: Any, doc: Any) -> None:
    """Footer of the summary and validation PDFs (any page size): disclaimer, version, page number."""
    regular, bold = fonts()
    w = doc.pagesize[0]
    c.saveState()
    c.setStrokeColor(colors.HexColor("#999999"))
    c.line(doc.leftMargin, 14 * mm, w - doc.rightMargin, 14 * mm)
    c.setFont(bold, 7.5)
    c.drawString(doc.leftMargin, 10 * mm, DISCLAIMER)
    c.setFont(regular, 7.5)
    c.drawRightString(w - doc.rightMargin, 10 * mm, f"cxrscreen {__version__} · page {doc.page}")
    c.restoreState()
