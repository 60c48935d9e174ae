"""Per-study PDF reports: the image as the model saw it beside its Grad-CAM overlay.

One PDF per study (StudyInstanceUID; a file without one is its own study), one page per image.
File names carry no tag values but a sanitised accession: ``reports/<accession>_<uid-hash>_<key>.pdf``
where ``<key>`` hashes what the report shows (paths, scores, decisions, model, layout version).
A report whose file exists is up to date by construction; a study that gains an image or is
rescored gets a new file and the old one is removed, and a killed run leaves only whole files.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from monai.transforms import CenterScaleCrop, Compose, EnsureChannelFirst, Resize, SpatialPad
from PIL import Image
from reportlab import rl_config
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.utils import ImageReader, simpleSplit
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas

from cxrscreen import __version__
from cxrscreen.explain import compute_cams, content_box, resize_map
from cxrscreen.ingest.decode import read_dataset, reduction_factor
from cxrscreen.ingest.isolation import decode_pixels
from cxrscreen.model.files import LoadedModel
from cxrscreen.model.inference import Runtime, prepare, to_device
from cxrscreen.outputs.worklist import images_frame, studies_frame
from cxrscreen.preprocess import PreprocessSpec, build_transform
from cxrscreen.records import ABNORMAL, NORMAL, REVIEW, ImageRecord
from cxrscreen.state.atomic import atomic_open
from cxrscreen.state.ledger import Ledger

log = logging.getLogger("cxrscreen")

REPORT_DIR = "reports"
LAYOUT_VERSION = "report/1"  # bump when the page layout changes: every report is then remade
DISPLAY_TARGET = 1024  # decode the display image at ≥ this many pixels on the long side
DISPLAY_MAX = 900  # …then embed it at most this large (≈ 180 dpi in the page's image box)
CAM_BATCH = 8
CMAP = "turbo"
ALPHA_MAX = 0.6  # overlay opacity at CAM = 1; opacity ∝ CAM, so weak evidence leaves the film visible
DISCLAIMER = "Research use only — not a diagnostic device"
_NAME_RE = re.compile(r"^(?P<stem>[A-Za-z0-9_-]+_[0-9a-f]{12})_(?P<key>[0-9a-f]{10})\.pdf$")

NOTE_TEXT = {
    "polarity_suspect": "polarity looks inverted (bone dark, air bright): check the film",
    "percentile_window": "no window in the header (percentile window)",
}
DECISION_COLOUR = {ABNORMAL: colors.HexColor("#b71c1c"), REVIEW: colors.HexColor("#e65100"),
                   NORMAL: colors.HexColor("#2e7d32")}

Emit = Callable[[dict[str, Any]], None]


# --------------------------------------------------------------------------- studies and names
@dataclass
class Study:
    """The records of one study and the study-level decision (worklist rule)."""

    key: str  # StudyInstanceUID, or "file:<path>" for a file without one
    records: list[ImageRecord]
    decision: str

    def first(self, keyword: str) -> str:
        return next((r.tag(keyword) for r in self.records if r.tag(keyword)), "")


def study_key(record: ImageRecord) -> str:
    return record.tag("StudyInstanceUID") or f"file:{record.path}"


def group_studies(records: Iterable[ImageRecord]) -> list[Study]:
    """Group by study; decisions come from ``outputs.worklist.studies_frame`` (one rule, one place)."""
    records = list(records)
    groups: dict[str, list[ImageRecord]] = {}
    for r in records:
        groups.setdefault(study_key(r), []).append(r)
    frame = studies_frame(images_frame(records, ""))
    decisions = {(row.StudyInstanceUID or f"file:{row.paths}"): row.decision for row in frame.itertuples()}
    return [Study(k, sorted(v, key=page_order), decisions.get(k, REVIEW)) for k, v in sorted(groups.items())]


def page_order(r: ImageRecord) -> tuple:
    """Scored images first, most suspicious first; then the rest by path."""
    return (r.probability is None, -(r.probability or 0.0), r.path)


def wanted(study: Study, policy: str) -> bool:
    if policy == "all":
        return True
    if policy == "flagged":
        return study.decision in (ABNORMAL, REVIEW)
    return False


def sanitize(text: str, limit: int = 24) -> str:
    """``[A-Za-z0-9_-]`` only (other runs → ``_``), no leading ``-``/``_``, at most ``limit`` chars."""
    ascii_ = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    out = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_).strip("_-")[:limit].strip("_-")
    return out or "noacc"


SHOWN_TAGS = ("PatientName", "PatientID", "AccessionNumber", "StudyDate", "InstitutionName", "StudyDescription",
              "ViewPosition", "Modality", "SeriesDescription")


def content_key(study: Study) -> str:
    """Hash of what the report shows: a change in any of it (a rescore, a corrected header) means a new report."""
    items = [(r.path, None if r.probability is None else round(r.probability, 6), r.decision, r.status,
              list(r.qc_notes), r.tag("_model_sha256"), r.tag("_threshold"), [r.tag(k) for k in SHOWN_TAGS])
             for r in study.records]
    blob = json.dumps([LAYOUT_VERSION, study.decision, items], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def report_stem(study: Study) -> str:
    return f"{sanitize(study.first('AccessionNumber'))}_{hashlib.sha256(study.key.encode()).hexdigest()[:12]}"


def report_relpath(study: Study) -> str:
    """``reports/<accession>_<uid hash>_<content key>.pdf`` (relative to OUT, POSIX)."""
    return f"{REPORT_DIR}/{report_stem(study)}_{content_key(study)}.pdf"


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().parent == folder.resolve()


# --------------------------------------------------------------------------- pixels
@dataclass
class Page:
    """What one page needs; pixels are dropped once the page is drawn."""

    record: ImageRecord
    tensor: torch.Tensor | None = None  # model input (1, S, S) — exactly what was scored
    valid: np.ndarray | None = None  # (S, S) True where the image is (not padding)
    display: np.ndarray | None = None  # grey [0, 1], display polarity, aspect kept
    note: str = ""  # why there is no Grad-CAM
    cam: np.ndarray | None = None  # (S, S) in [0, 1]


def model_view(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The model's border crop and percentile window at display resolution (no resize, no padding).

    Same arithmetic as MONAI's ``CenterScaleCrop`` + ``ScaleIntensityRangePercentiles`` in
    ``preprocess.base_transforms``, in numpy (MONAI's version is ~10× slower at this size).
    """
    h, w = pixels.shape
    r = 1.0 - 2.0 * spec.border_crop
    ch, cw = math.ceil(r * h), math.ceil(r * w)
    y0, x0 = max(h // 2 - ch // 2, 0), max(w // 2 - cw // 2, 0)
    crop = pixels[y0:y0 + ch, x0:x0 + cw].astype(np.float32)
    lo, hi = np.percentile(crop, [spec.lower_percentile, spec.upper_percentile])
    return np.clip((crop - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)


def valid_mask(shape: tuple[int, int], spec: PreprocessSpec) -> np.ndarray:
    """Where an image of ``shape`` lands in the padded ``S×S`` model input (same MONAI geometry)."""
    chain = Compose([
        EnsureChannelFirst(channel_dim="no_channel"),
        CenterScaleCrop(roi_scale=1.0 - 2.0 * spec.border_crop),
        Resize(spatial_size=spec.input_size, size_mode="longest", mode="nearest"),
        SpatialPad(spatial_size=(spec.input_size, spec.input_size), mode="constant", value=0.0),
    ])
    return np.asarray(chain(np.ones(shape, dtype=np.float32)))[0] > 0.5


def shrink(img: np.ndarray, longest: int = DISPLAY_MAX) -> np.ndarray:
    """Area-resample a [0, 1] image so its long side is at most ``longest`` (aspect kept)."""
    h, w = img.shape[:2]
    scale = longest / max(h, w)
    if scale >= 1.0:
        return img
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.array(Image.fromarray(img.astype(np.float32)).resize(size, Image.Resampling.BOX), dtype=np.float32)


def _decode_display(path: Path) -> np.ndarray | None:
    try:  # crash-isolated like the scan's decode: a file QC rejected unread may still crash a codec
        return decode_pixels(read_dataset(path), path, DISPLAY_TARGET).pixels
    except Exception:  # the page then says the image cannot be shown
        return None


def model_shape(record: ImageRecord, fallback: tuple[int, int], spec: PreprocessSpec) -> tuple[int, int]:
    """Shape of the image the pipeline decoded for scoring (``spec.decode_target``), from the header."""
    try:
        rows, cols = int(record.tag("Rows")), int(record.tag("Columns"))
    except ValueError:
        return fallback
    if rows <= 0 or cols <= 0:
        return fallback
    f = reduction_factor((rows, cols), spec.decode_target)
    return max(1, rows // f), max(1, cols // f)


def load_page(root: Path, record: ImageRecord, lm: LoadedModel, transform: Callable) -> Page:
    """Re-read one file: the scored tensor (ok images of this model) and a sharper display image."""
    from cxrscreen.pipeline import prepare_file  # late import: the pipeline imports this module lazily

    page = Page(record)
    path = root / record.path
    if not path.is_file():
        page.note = "the file is no longer in the scanned folder"
        return page
    pixels = None if record.status.startswith("error") else _decode_display(path)
    if record.status != "ok":
        page.note = describe_status(record.status)
        page.display = None if pixels is None else shrink(pixels)
        return page
    if pixels is None:
        page.note = "the image could not be decoded again"
        return page
    pre = round(DISPLAY_MAX / (1.0 - 2.0 * lm.spec.border_crop))  # the crop then lands at ≈ DISPLAY_MAX
    page.display = shrink(model_view(shrink(pixels, pre), lm.spec))
    if record.tag("_model_sha256") and record.tag("_model_sha256") != lm.sha256:
        page.note = "scored by another model: no Grad-CAM"
        return page
    prep = prepare_file(path, lm.spec, transform)
    if prep.image is None:
        page.note = f"file could not be re-read ({describe_status(prep.status)})"
        return page
    page.tensor = prep.image
    page.valid = valid_mask(model_shape(record, pixels.shape, lm.spec), lm.spec)
    return page


def attach_cams(pages: list[Page], net: torch.nn.Module, rt: Runtime) -> None:
    """Grad-CAM for every page with a tensor, in batches (fp32, no autocast)."""
    todo = [p for p in pages if p.tensor is not None]
    if not todo:
        return
    x = to_device(torch.stack([p.tensor for p in todo]), rt)
    valid = np.stack([p.valid for p in todo])
    cams = compute_cams(net, x, valid, batch_size=CAM_BATCH)
    for p, c in zip(todo, cams, strict=True):
        p.cam, p.tensor = c, None


@cache
def _lut() -> np.ndarray:
    return matplotlib.colormaps[CMAP](np.linspace(0.0, 1.0, 256))[:, :3].astype(np.float32)


def overlay(grey: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """RGB uint8: grey film under the colour map, opacity ∝ CAM (``cam`` already at ``grey``'s shape)."""
    cam = np.clip(cam, 0.0, 1.0).astype(np.float32, copy=False)
    rgb = _lut()[np.rint(cam * 255.0).astype(np.uint8)]
    alpha = (ALPHA_MAX * cam)[..., None]
    out = (1.0 - alpha) * grey.astype(np.float32, copy=False)[..., None] + alpha * rgb
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def cam_on_display(page: Page) -> np.ndarray:
    """The model-space CAM cropped to the image (padding dropped) and resized onto the display image."""
    assert page.cam is not None and page.valid is not None and page.display is not None
    y0, y1, x0, x1 = content_box(page.valid)
    return resize_map(page.cam[y0:y1, x0:x1], page.display.shape)


def jpeg(arr: np.ndarray, quality: int = 88) -> ImageReader:
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality, optimize=True)
    buf.seek(0)
    return ImageReader(buf)


@cache
def colour_bar() -> ImageReader:
    """Vertical bar, CAM 1 at the top, drawn with the overlay's own blend over mid-grey."""
    v = np.linspace(1.0, 0.0, 256)[:, None].repeat(12, axis=1)
    return jpeg(overlay(np.full_like(v, 0.5), v), quality=95)


# --------------------------------------------------------------------------- text helpers
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


def clean(text: str) -> str:
    """Printable single line (tags may hold control characters)."""
    return " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())


def fit(text: str, font: str, size: float, width: float) -> str:
    """One line no wider than ``width`` points, cut with an ellipsis when needed."""
    text = clean(text[:400])
    if pdfmetrics.stringWidth(text, font, size) <= width:
        return text
    while text and pdfmetrics.stringWidth(text + "…", font, size) > width:
        text = text[:-1]
    return text + "…"


def person_name(pn: str) -> str:
    """DICOM PN ``FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX`` → ``FAMILY, GIVEN MIDDLE`` (first component group)."""
    parts = [p.strip() for p in pn.split("=")[0].split("^")]
    family, rest = (parts[0] if parts else ""), " ".join(p for p in parts[1:] if p)
    return clean(f"{family}, {rest}" if family and rest else family or rest) or "—"


def dicom_date(value: str) -> str:
    v = value.strip()
    return f"{v[:4]}-{v[4:6]}-{v[6:8]}" if re.fullmatch(r"\d{8}", v) else (clean(v) or "—")


def describe_status(status: str) -> str:
    kind, _, reason = status.partition(":")
    label = {"not_assessable": "Not assessable", "error": "Error", "ok": "OK"}.get(kind, kind)
    return f"{label}: {reason.replace('_', ' ')}" if reason else label


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


# --------------------------------------------------------------------------- drawing
PAGE = landscape(A4)
MARGIN = 28.0


@dataclass(frozen=True)
class ReportContext:
    """What every page of every report shares."""

    model_name: str
    model_version: str
    model_sha: str
    generated: str


def draw_header(c: Canvas, study: Study, ctx: ReportContext, page_no: int, n_pages: int) -> None:
    regular, bold = fonts()
    w, h = PAGE
    top = h - MARGIN
    c.setFillColor(colors.black)
    c.setFont(bold, 14)
    c.drawString(MARGIN, top - 14, "Chest X-ray triage report")
    label = f"Study decision: {study.decision.upper()}"
    box_w = pdfmetrics.stringWidth(label, bold, 12) + 20
    c.setFillColor(DECISION_COLOUR.get(study.decision, colors.grey))
    c.roundRect(w - MARGIN - box_w, top - 20, box_w, 24, 4, stroke=0, fill=1)
    c.setFillColor(colors.white)
    c.setFont(bold, 12)
    c.drawCentredString(w - MARGIN - box_w / 2, top - 13, label)
    c.setFillColor(colors.black)
    fields_ = [
        ("Patient", person_name(study.first("PatientName"))),
        ("Patient ID", clean(study.first("PatientID")) or "—"),
        ("Accession", clean(study.first("AccessionNumber")) or "—"),
        ("Study date", dicom_date(study.first("StudyDate"))),
    ]
    institution = clean(study.first("InstitutionName"))
    if institution:
        fields_.append(("Institution", institution))
    x, y = MARGIN, top - 36
    col_w = (w - 2 * MARGIN) / len(fields_)
    for label, value in fields_:
        c.setFont(regular, 7.5)
        c.setFillColor(colors.HexColor("#555555"))
        c.drawString(x, y + 9, label.upper())
        c.setFont(bold, 10.5)
        c.setFillColor(colors.black)
        c.drawString(x, y - 3, fit(value, bold, 10.5, col_w - 8))
        x += col_w
    c.setFont(regular, 8)
    c.setFillColor(colors.HexColor("#555555"))
    desc = clean(study.first("StudyDescription"))
    c.drawString(MARGIN, top - 54, fit(f"Generated {ctx.generated}" + (f"   ·   {desc}" if desc else ""),
                                       regular, 8, w - 2 * MARGIN - 120))
    c.drawRightString(w - MARGIN, top - 54, f"Image {page_no} of {n_pages}")
    c.setStrokeColor(colors.HexColor("#999999"))
    c.setLineWidth(0.6)
    c.line(MARGIN, top - 60, w - MARGIN, top - 60)


def draw_footer(c: Canvas, ctx: ReportContext, page_no: int, n_pages: int) -> None:
    regular, bold = fonts()
    w, _ = PAGE
    c.setStrokeColor(colors.HexColor("#999999"))
    c.line(MARGIN, MARGIN + 14, w - MARGIN, MARGIN + 14)
    c.setFont(regular, 7.5)
    c.setFillColor(colors.HexColor("#444444"))
    version = f" {ctx.model_version}" if ctx.model_version else ""
    c.drawString(MARGIN, MARGIN + 3, f"Model {ctx.model_name}{version} · weights sha256 {ctx.model_sha[:12]} · "
                                     f"cxrscreen {__version__}")
    c.setFont(bold, 7.5)
    c.drawCentredString(w / 2 + 90, MARGIN + 3, DISCLAIMER)
    c.setFont(regular, 7.5)
    c.drawRightString(w - MARGIN, MARGIN + 3, f"Page {page_no} / {n_pages}")


def draw_picture(c: Canvas, img: ImageReader, shape: tuple[int, int], box: tuple[float, float, float, float]) -> None:
    """Fit an image into ``box`` (x, y, w, h) with its aspect ratio, centred, top-aligned; thin frame."""
    x, y, bw, bh = box
    ih, iw = shape
    scale = min(bw / iw, bh / ih)
    dw, dh = iw * scale, ih * scale
    dx, dy = x + (bw - dw) / 2, y + bh - dh
    c.drawImage(img, dx, dy, dw, dh)
    c.setStrokeColor(colors.HexColor("#cccccc"))
    c.setLineWidth(0.4)
    c.rect(dx, dy, dw, dh, stroke=1, fill=0)


def draw_message(c: Canvas, title: str, text: str, box: tuple[float, float, float, float]) -> None:
    regular, bold = fonts()
    x, y, bw, bh = box
    c.setFillColor(colors.HexColor("#f3f3f3"))
    c.setStrokeColor(colors.HexColor("#cccccc"))
    c.rect(x, y, bw, bh, stroke=1, fill=1)
    c.setFillColor(colors.HexColor("#333333"))
    c.setFont(bold, 11)
    c.drawCentredString(x + bw / 2, y + bh / 2 + 6, title)
    c.setFont(regular, 9)
    c.drawCentredString(x + bw / 2, y + bh / 2 - 10, fit(text, regular, 9, bw - 16))


def draw_colour_bar(c: Canvas, x: float, y: float, height: float) -> None:
    regular, _ = fonts()
    c.drawImage(colour_bar(), x, y, 10, height)
    c.setStrokeColor(colors.HexColor("#999999"))
    c.rect(x, y, 10, height, stroke=1, fill=0)
    c.setFont(regular, 7)
    c.setFillColor(colors.black)
    for v in (0.0, 0.5, 1.0):
        c.drawString(x + 13, y + v * height - 2.5, f"{v:.1f}")
    c.saveState()
    c.translate(x + 38, y + height / 2)
    c.rotate(90)
    c.drawCentredString(0, 0, "relative evidence for 'abnormal'")
    c.restoreState()


def draw_details(c: Canvas, page: Page, thr_default: float, y_top: float) -> None:
    regular, bold = fonts()
    r = page.record
    w, _ = PAGE
    thr = r.tag("_threshold")
    thr_text = fmt_threshold(float(thr) if thr else thr_default)
    left = [
        ("Image decision", r.decision.upper()),
        ("Probability (abnormal)", fmt_prob(r.probability)),
        ("Threshold", thr_text),
        ("QC status", describe_status(r.status)),
        ("QC notes", describe_notes(r.qc_notes)),
    ]
    right = [
        ("View / modality", " / ".join(v for v in (clean(r.tag("ViewPosition")), clean(r.tag("Modality"))) if v)
         or "—"),
        ("Series", clean(r.tag("SeriesDescription")) or "—"),
        ("File", clean(r.path)),
    ]
    if page.note:
        right.append(("Note", page.note))
    col_w = (w - 2 * MARGIN) / 2
    for col, items in enumerate((left, right)):
        y = y_top
        x = MARGIN + col * col_w
        for label, value in items:
            c.setFont(regular, 8.5)
            c.setFillColor(colors.HexColor("#555555"))
            c.drawString(x, y, label)
            strong = label in ("Image decision", "Probability (abnormal)")
            font = bold if strong else regular
            c.setFont(font, 9.5)
            c.setFillColor(DECISION_COLOUR.get(r.decision, colors.black) if label == "Image decision" else colors.black)
            for line in wrap(value, font, 9.5, col_w - 130, max_lines=2):
                c.drawString(x + 120, y, line)
                y -= 12
            y -= 1


def wrap(text: str, font: str, size: float, width: float, max_lines: int) -> list[str]:
    """Word-wrap to at most ``max_lines`` lines, the last one cut with an ellipsis when needed."""
    lines = simpleSplit(clean(text), font, size, width) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [fit(" ".join(lines[max_lines - 1:]) + " …", font, size, width)]
    return lines


def draw_page(c: Canvas, study: Study, page: Page, ctx: ReportContext, thr: float, page_no: int, n_pages: int) -> None:
    regular, _ = fonts()
    w, h = PAGE
    draw_header(c, study, ctx, page_no, n_pages)
    img_top = h - MARGIN - 78
    img_h = 350.0
    gap, bar_w = 16.0, 44.0
    img_w = (w - 2 * MARGIN - gap - bar_w) / 2
    y0 = img_top - img_h
    left_box = (MARGIN, y0, img_w, img_h)
    right_box = (MARGIN + img_w + gap, y0, img_w, img_h)
    c.setFont(regular, 8.5)
    c.setFillColor(colors.HexColor("#333333"))
    seen = "As the model saw it (borders trimmed, windowed)" if page.cam is not None else "Image"
    c.drawString(MARGIN, img_top + 4, seen)
    c.drawString(right_box[0], img_top + 4, "Grad-CAM overlay (last convolutional block, abnormal logit)")
    if page.display is not None:
        draw_picture(c, jpeg(page.display), page.display.shape, left_box)
    else:
        draw_message(c, "Image cannot be shown", page.note or describe_status(page.record.status), left_box)
    if page.cam is not None and page.display is not None:
        draw_picture(c, jpeg(overlay(page.display, cam_on_display(page))), page.display.shape, right_box)
        draw_colour_bar(c, right_box[0] + img_w + 6, y0 + img_h - 260, 260)
    else:
        draw_message(c, "No Grad-CAM", page.note or describe_status(page.record.status), right_box)
    draw_details(c, page, thr, y0 - 18)
    draw_footer(c, ctx, page_no, n_pages)


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


def render_study(fh: Any, study: Study, pages: list[Page], ctx: ReportContext, thr: float) -> None:
    """Write the study's PDF to the binary handle ``fh``; pages' pixels are released as drawn."""
    with binary_streams():
        c = Canvas(fh, pagesize=PAGE, pageCompression=1, invariant=0)
        c.setTitle("cxrscreen study report")
        c.setAuthor(f"cxrscreen {__version__}")
        c.setSubject(DISCLAIMER)
        for i, page in enumerate(pages, 1):
            draw_page(c, study, page, ctx, thr, i, len(pages))
            c.showPage()
            page.display = page.cam = page.valid = None
        c.save()


# --------------------------------------------------------------------------- the hook
def write_reports(out: Path, root: Path, lm: LoadedModel, rt: Runtime, ledger: Ledger, policy: str,
                  emit: Emit, durations: Counter | None = None) -> None:
    """Make the missing or outdated reports of ``policy`` studies and record their paths in the ledger.

    ``durations`` (when given) gets the stage times: ``report_reread`` (decode + preprocess again),
    ``cam`` (Grad-CAM) and ``pdf`` (rendering and writing), in seconds.
    """
    durations = Counter() if durations is None else durations
    folder = out / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    _remove_temporaries(folder)
    existing = index_reports(folder)
    todo: list[tuple[Study, str]] = []
    for study in group_studies(ledger.records()):
        rel = report_relpath(study)
        names = existing.get(report_stem(study), set())
        exists = Path(rel).name in names and (out / rel).is_file()
        if wanted(study, policy) and not exists:
            todo.append((study, rel))
            continue
        _set_report(ledger, study, rel if exists else "")
        _remove(folder, names - {Path(rel).name})
    if not todo:
        return
    net = prepare(lm.net, rt)
    transform = build_transform(lm.spec, augment=False)
    ctx = ReportContext(str(lm.name), str(lm.meta.get("version", "")), lm.sha256,
                        datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip())
    done, batch = 0, []
    for i, (study, rel) in enumerate(todo):
        t = time.perf_counter()
        batch.append((study, rel, load_study(root, study, lm, transform)))
        durations["report_reread"] += time.perf_counter() - t
        n_cam = sum(p.tensor is not None for _, _, pages in batch for p in pages)
        if n_cam >= CAM_BATCH or i == len(todo) - 1:
            done = _finish(batch, out, folder, existing, net, rt, ctx, ledger, emit, done, len(todo), durations)
            batch = []
    log.info("reports: %d of %d written", done, len(todo))


def load_study(root: Path, study: Study, lm: LoadedModel, transform: Callable) -> list[Page]:
    """The pages of one study; a file that cannot be re-read gets a page saying so."""
    pages = []
    for r in study.records:
        try:
            pages.append(load_page(root, r, lm, transform))
        except Exception as exc:
            pages.append(Page(r, note=f"the file could not be read again ({type(exc).__name__})"))
    return pages


def index_reports(folder: Path) -> dict[str, set[str]]:
    """Report file names in ``folder`` by study stem (one directory listing, not one per study)."""
    index: dict[str, set[str]] = {}
    for p in folder.iterdir():
        m = _NAME_RE.match(p.name)
        if m:
            index.setdefault(m["stem"], set()).add(p.name)
    return index


def _finish(batch: list[tuple[Study, str, list[Page]]], out: Path, folder: Path, existing: dict[str, set[str]],
            net: torch.nn.Module, rt: Runtime, ctx: ReportContext, ledger: Ledger, emit: Emit, done: int,
            total: int, durations: Counter) -> int:
    t = time.perf_counter()
    try:
        attach_cams([p for _, _, pages in batch for p in pages], net, rt)
    except Exception as exc:  # no half-made reports: these studies are retried next run
        log.warning("reports: Grad-CAM failed for %d studies (%s); retried next run", len(batch), type(exc).__name__)
        return done
    finally:
        durations["cam"] += time.perf_counter() - t
    for study, rel, pages in batch:
        t = time.perf_counter()
        path = out / rel
        if not _inside(path, folder):  # cannot happen with sanitised names; refuse rather than trust it
            raise RuntimeError("report path escapes the reports folder")
        try:
            with atomic_open(path, "wb", 0o640) as fh:
                render_study(fh, study, pages, ctx, float(study.records[0].tag("_threshold") or 0.5))
        except Exception as exc:
            log.warning("report for study %s failed (%s); retried next run", report_stem(study)[-12:],
                        type(exc).__name__)
            continue
        finally:
            durations["pdf"] += time.perf_counter() - t
        _set_report(ledger, study, rel)
        _remove(folder, existing.get(report_stem(study), set()) - {path.name})
        done += 1
        emit({"event": "report", "done": done, "total": total})
    return done


def _set_report(ledger: Ledger, study: Study, rel: str) -> None:
    for r in study.records:
        if r.report != rel:
            ledger.set_report(r.path, rel)


def _remove(folder: Path, names: Iterable[str]) -> None:
    """Delete outdated reports of a study (an older content key, or no longer wanted and stale)."""
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()


def _remove_temporaries(folder: Path) -> None:
    """Leftovers of a run killed while writing (the scan lock rules out a concurrent writer)."""
    for p in folder.glob(".*.pdf.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
