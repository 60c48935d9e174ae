"""The batch summary PDF (``OUT/summary.pdf``): what a run did, how scores fall, which studies to read first."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.platypus import (
    Image,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from cxrscreen.model.meta import ModelInfo
from cxrscreen.outputs.layout import (
    DECISION_COLOUR,
    DISCLAIMER,
    binary_streams,
    clean,
    fit,
    fmt_threshold,
    fonts,
    page_decor,
    styles,
    table,
)
from cxrscreen.records import ABNORMAL, DECISION_ORDER, NORMAL, REVIEW, Status
from cxrscreen.runs import RunSummary
from cxrscreen.state.atomic import atomic_open, atomic_write_bytes
from cxrscreen.version import __version__

MAX_ROWS = 500  # flagged studies listed; the worklist CSV has them all
DECISIONS = (ABNORMAL, REVIEW, NORMAL)


# --------------------------------------------------------------------------- pure helpers
def run_started(run_id: str) -> str:
    """``20261125T224129Z`` → ``2026-11-25 22:41:29 UTC`` (the run id is the UTC start time)."""
    try:
        started = datetime.strptime(run_id, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        return started.strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return clean(run_id)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min {s:02d} s" if h else f"{m} min {s:02d} s"


def status_rows(this_run: Mapping[str, int], worklist: Mapping[str, int]) -> list[tuple[str, str, int, int]]:
    """``(group, reason, this run, worklist)`` rows: ok first, then QC rejects and errors by reason."""
    keys = [Status(k) for k in set(this_run) | set(worklist)]
    kind_order = {"ok": 0, "not_assessable": 1, "error": 2}
    label = {"ok": "assessable", "not_assessable": "not assessable (QC)", "error": "error"}
    return [(label[k.kind], k.reason.replace("_", " ") or "—", int(this_run.get(k, 0)), int(worklist.get(k, 0)))
            for k in sorted(keys, key=lambda k: (kind_order[k.kind], k.reason))]


def flagged(studies: pd.DataFrame) -> pd.DataFrame:
    """Abnormal then review studies, in worklist rank order."""
    if studies is None or studies.empty:
        return pd.DataFrame(columns=["rank", "decision", "AccessionNumber", "probability", "n_images", "report"])
    df = studies[studies["decision"].isin([ABNORMAL, REVIEW])].copy()
    order = df["decision"].map(DECISION_ORDER)
    prob = pd.to_numeric(df["probability"], errors="coerce").fillna(-1.0)
    return df.assign(_o=order, _p=-prob).sort_values(["_o", "_p"], kind="mergesort").drop(columns=["_o", "_p"])


def histogram_png(probs: np.ndarray, thr: float, title: str) -> bytes:
    """Histogram of probabilities with the threshold marked (matplotlib Agg, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # 0.5 s: only a summary with scores draws one
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.8, 2.5), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    bins = np.linspace(0.0, 1.0, 41)
    below, above = probs[probs < thr], probs[probs >= thr]
    ax.hist([below, above], bins=bins, stacked=True, color=["#607d8b", "#b71c1c"],
            label=[f"below threshold ({below.size})", f"at/above threshold ({above.size})"])
    ax.axvline(thr, color="black", linestyle="--", linewidth=1.2, label=f"threshold {fmt_threshold(thr)}")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel(title, fontsize=8)
    ax.set_ylabel("count", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7, frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def cached_histogram_png(probs: np.ndarray, thr: float, title: str, folder: Path | None) -> bytes:
    """:func:`histogram_png`, kept in ``folder`` (the output folder's state) for the next run.

    A night with nothing new draws the same histogram again; matplotlib's import and drawing were
    0.6–0.7 s of such a run (2 busy cores). The file is named by a hash of what the picture is made
    from (the probabilities, threshold and title, this module's code, the matplotlib and cxrscreen
    versions); a run with another picture replaces it.
    """
    if folder is None:
        return histogram_png(probs, thr, title)
    import matplotlib

    h = hashlib.sha256(json.dumps([__version__, matplotlib.__version__, float(thr), title]).encode())
    h.update(Path(__file__).read_bytes())
    h.update(np.ascontiguousarray(probs, dtype=np.float64).tobytes())
    path = folder / f"histogram-{h.hexdigest()[:24]}.png"
    try:
        return path.read_bytes()
    except OSError:
        pass
    png = histogram_png(probs, thr, title)
    for old in folder.glob("histogram-*.png"):
        old.unlink(missing_ok=True)
    atomic_write_bytes(path, png)
    return png


# --------------------------------------------------------------------------- document


def _number_cols(t: Table, first: int) -> None:
    t.setStyle(TableStyle([("ALIGN", (first, 0), (-1, -1), "RIGHT")]))


def _decision_counts(summary: RunSummary, images: pd.DataFrame | None) -> Table:
    run = summary.decisions
    wl_studies = summary.worklist_totals.decisions
    wl_images = Counter(images["decision"]) if images is not None and len(images) else Counter()
    rows: list[list[Any]] = [["Decision", "This run (images)", "Worklist (images)", "Worklist (studies)"]]
    for d in DECISIONS:
        rows.append([d, int(run.get(d, 0)), int(wl_images.get(d, 0)), int(wl_studies.get(d, 0))])
    rows.append(["total", sum(r[1] for r in rows[1:]), sum(r[2] for r in rows[1:]), sum(r[3] for r in rows[1:])])
    t = table(rows, [35 * mm, 35 * mm, 35 * mm, 35 * mm])
    _number_cols(t, 1)
    style = [("TEXTCOLOR", (0, i), (0, i), DECISION_COLOUR[d]) for i, d in enumerate(DECISIONS, 1)]
    t.setStyle(TableStyle(style + [("FONT", (0, len(rows) - 1), (-1, -1), fonts()[1], 8.5)]))
    return t


def _status_counts(summary: RunSummary, images: pd.DataFrame | None) -> Table:
    worklist = Counter(images["status"]) if images is not None and len(images) else Counter()
    rows: list[list[Any]] = [["Status", "Reason", "This run", "Worklist"]]
    rows += [list(r) for r in status_rows(summary.statuses, worklist)]
    if len(rows) == 1:
        rows.append(["—", "nothing scored", 0, 0])
    t = table(rows, [40 * mm, 70 * mm, 25 * mm, 25 * mm])
    _number_cols(t, 2)
    return t


def _flagged_table(studies: pd.DataFrame, st: dict[str, ParagraphStyle]) -> list[Any]:
    df = flagged(studies)
    if df.empty:
        return [Paragraph("No study is flagged (abnormal or review).", st["body"])]
    regular, _ = fonts()
    rows: list[list[Any]] = [["#", "Decision", "Accession", "P(abnormal)", "Images", "Report file"]]
    for i, row in enumerate(df.head(MAX_ROWS).itertuples(), 1):
        prob = pd.to_numeric(pd.Series([row.probability]), errors="coerce").iloc[0]
        rows.append([i, row.decision, fit(str(row.AccessionNumber or "—"), regular, 8.5, 28 * mm),
                     "—" if pd.isna(prob) else f"{float(prob):.3f}", int(row.n_images),
                     fit(str(row.report or "—"), regular, 8.5, 78 * mm)])
    t = table(rows, [8 * mm, 18 * mm, 30 * mm, 23 * mm, 15 * mm, 80 * mm], long=True)
    t.setStyle(TableStyle([("ALIGN", (3, 0), (4, -1), "RIGHT"), ("LEFTPADDING", (5, 0), (5, -1), 10)] + [
        ("TEXTCOLOR", (1, i), (1, i), DECISION_COLOUR.get(rows[i][1], colors.black)) for i in range(1, len(rows))]))
    out: list[Any] = [t]
    if len(df) > MAX_ROWS:
        out.append(Paragraph(f"First {MAX_ROWS} of {len(df)} flagged studies; worklist_studies.csv lists them all.",
                             st["small"]))
    return out


def _histogram(images: pd.DataFrame | None, studies: pd.DataFrame, thr: float, st: dict,
               cache: Path | None = None) -> list[Any]:
    if images is not None and len(images):
        probs = pd.to_numeric(images.loc[images["status"] == "ok", "probability"], errors="coerce").dropna()
        what = "images"
    else:
        probs = pd.to_numeric(studies["probability"], errors="coerce").dropna() if len(studies) else pd.Series([])
        what = "studies (highest image per study)"
    if probs.empty:
        return [Paragraph("No image has been scored yet.", st["body"])]
    title = f"P(abnormal) — {len(probs)} scored {what} in the worklist"
    png = cached_histogram_png(probs.to_numpy(dtype=float), thr, title, cache)
    return [Image(io.BytesIO(png), width=170 * mm, height=170 * mm * 2.5 / 6.8)]


def _thresholds_text(summary: RunSummary, meta: Mapping[str, Any], thr: float) -> str:
    """One threshold (and where it came from), or one per population with its age band."""
    op = summary.operating_points
    if op is None:
        return fmt_threshold(thr) + (f" ({clean(meta['threshold_source'])})" if meta.get("threshold_source") else "")
    parts = []
    for p in op.points:
        lo, hi = p.min_age_years or 0, p.max_age_years
        band = f"< {hi:g} y" if not lo and hi is not None else (f"≥ {lo:g} y" if hi is None else f"{lo:g}–{hi:g} y")
        default = ", also age unknown" if p.population == op.default else ""
        parts.append(f"{clean(p.population)} ({band}{default}): {fmt_threshold(p.threshold)}")
    return "; ".join(parts)


def _model_table(summary: RunSummary, lm: ModelInfo, thr: float) -> Table:
    meta = lm.meta
    rows = [
        ["Model", f"{lm.name} {meta.get('version', '')}".strip()],
        ["Weights sha256", lm.sha256[:16] + "…"],
        ["Threshold", _thresholds_text(summary, meta, thr)],
        ["Runtime", clean(summary.runtime) or "—"],
        ["Software", f"cxrscreen {summary.software_version}"],
    ]
    regular, _ = fonts()
    rows = [[k, fit(str(v), regular, 8.5, 128 * mm)] for k, v in rows]
    return table(rows, [35 * mm, 130 * mm], header=False)


def _run_table(summary: RunSummary) -> Table:
    n_err = sum(v for k, v in summary.statuses.items() if Status(k).is_error)
    ips = summary.images_per_s
    regular, _ = fonts()
    rows = [
        ["Folder", fit(summary.folder, regular, 8.5, 128 * mm)],
        ["Files found", summary.files_found],
        ["Already scored (skipped)", summary.files_skipped_already_scored],
        ["Processed this run", summary.files_processed],
        ["Images scored this run", summary.images_scored],
        ["Unreadable files (errors)", n_err],
        ["Throughput", f"{ips} files/s" if ips else "—"],
    ]
    return table(rows, [45 * mm, 120 * mm], header=False)


def _stages(summary: RunSummary, st: dict) -> Paragraph:
    text = " · ".join(f"{escape(str(k))} {float(v):.1f} s" for k, v in summary.durations_s.items())
    return Paragraph(f"Stage times: {text or '—'}", st["small"])


def _drift(summary: RunSummary, st: dict) -> list[Any]:
    return [Paragraph(f"Drift: {escape(clean(w))}", st["warn"]) for w in summary.drift.warnings]


def build_story(summary: RunSummary, studies: pd.DataFrame, lm: ModelInfo, thr: float,
                images: pd.DataFrame | None = None, cache: Path | None = None) -> list[Any]:
    st = styles()
    run_id = summary.run_id
    story: list[Any] = [
        Paragraph("cxrscreen — batch summary", st["title"]),
        Paragraph(escape(f"Run {clean(run_id)} · started {run_started(run_id)} · duration "
                         f"{duration(summary.wall_s)} · exit code {summary.exit_code}"), st["body"]),
        Spacer(1, 4),
        _run_table(summary),
        _stages(summary, st),
        *_drift(summary, st),
        KeepTogether([Paragraph("Counts by decision", st["h2"]), _decision_counts(summary, images)]),
        KeepTogether([Paragraph("Counts by status (QC rejects and errors by reason)", st["h2"]),
                      _status_counts(summary, images)]),
        KeepTogether([Paragraph("Distribution of probabilities", st["h2"]),
                      *_histogram(images, studies, thr, st, cache)]),
        Paragraph("Flagged studies, most urgent first", st["h2"]),
        *_flagged_table(studies, st),
        KeepTogether([Paragraph("Model and threshold", st["h2"]), _model_table(summary, lm, thr)]),
    ]
    return story


def write_summary_pdf(path: Path, summary: RunSummary, studies: pd.DataFrame, lm: ModelInfo, thr: float,
                      images: pd.DataFrame | None = None, cache: Path | None = None) -> Path:
    """Write ``summary.pdf`` atomically (mode 0640); ``images`` (the image worklist) feeds the histogram,
    kept in the folder ``cache`` for the next run (:func:`cached_histogram_png`) when given."""
    story = build_story(summary, studies, lm, thr, images, cache)
    with atomic_open(path, "wb", 0o640) as fh, binary_streams():
        doc = SimpleDocTemplate(fh, pagesize=A4, leftMargin=18 * mm, rightMargin=18 * mm, topMargin=16 * mm,
                                bottomMargin=20 * mm, title="cxrscreen batch summary",
                                author=f"cxrscreen {__version__}", subject=DISCLAIMER)
        doc.build(story, onFirstPage=page_decor, onLaterPages=page_decor)
    return path
