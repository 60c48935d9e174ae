"""The site validation report of ``adapt``: Markdown and PDF (platypus), ROC and score histograms.

Both models, the starting one and the adapted one, are shown side by side on the site's own test
patients, each at its own threshold. The report is written whether or not the gate passed.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.platypus import Image, KeepTogether, Paragraph, SimpleDocTemplate, Spacer
from sklearn.metrics import roc_curve

from cxrscreen.outputs.layout import DISCLAIMER, binary_streams, page_decor, styles, table
from cxrscreen.state.atomic import atomic_open, atomic_write_bytes, atomic_write_text

MODELS = (("start", "starting model"), ("adapted", "adapted model"))


def _ci(m: dict[str, float]) -> str:
    return f"{m['value']:.3f} ({m['ci_low']:.3f}–{m['ci_high']:.3f})"


def metric_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Header + one row per model: threshold, AUROC, sensitivity, specificity (95% CIs), confusion."""
    rows = [["model", "threshold", "AUROC (95% CI)", "sensitivity (95% CI)", "specificity (95% CI)", "TP/FN/TN/FP"]]
    thresholds = {"start": summary["start_model"]["threshold"], "adapted": summary["threshold"]}
    for key, label in MODELS:
        m = summary["test"][key]
        c = m["confusion"]
        rows.append([label, f"{thresholds[key]:.4f}", _ci(m["auroc"]), _ci(m["sensitivity"]), _ci(m["specificity"]),
                     f"{c['tp']}/{c['fn']}/{c['tn']}/{c['fp']}"])
    return rows


def roc_png(labels: np.ndarray, scores: dict[str, np.ndarray], thresholds: dict[str, float]) -> bytes:
    """Both models' ROC curves on the test split, each operating point marked."""
    fig = Figure(figsize=(4.6, 4.2), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for key, label in MODELS:
        fpr, tpr, _ = roc_curve(labels, scores[key])
        (line,) = ax.plot(fpr, tpr, label=label)
        pred = scores[key] >= thresholds[key]
        ax.plot([pred[labels == 0].mean()], [pred[labels == 1].mean()], "o", color=line.get_color())
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 − specificity", ylabel="sensitivity", title="Site test split (dots: each model's threshold)")
    ax.title.set_fontsize(8)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def hist_png(labels: np.ndarray, scores: dict[str, np.ndarray], thresholds: dict[str, float]) -> bytes:
    """Score histograms by true label, one panel per model, threshold dashed."""
    fig = Figure(figsize=(6.8, 2.6), dpi=150)
    FigureCanvasAgg(fig)
    bins = np.linspace(0, 1, 41)
    for i, (key, label) in enumerate(MODELS):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.hist(scores[key][labels == 0], bins=bins, alpha=0.6, label="normal (RIS)")
        ax.hist(scores[key][labels == 1], bins=bins, alpha=0.6, label="abnormal (RIS)")
        ax.axvline(thresholds[key], color="black", ls="--", lw=1)
        ax.set_title(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _training_text(cfg: dict[str, Any]) -> str:
    if cfg["train_layers"] == "head":
        return (f"New head on the frozen backbone of `{cfg['init']}`: {cfg['epochs']} epochs, each adding one view of "
                "every training film (the first as scan sees it, the rest augmented: pose, contrast, blur, noise) "
                "to the features the head is fitted on (L2 logistic regression, class-balanced, strength chosen on "
                "the calibration split).")
    return (f"Fine-tuned {cfg['train_layers']} from `{cfg['init']}`: {cfg['epochs']} epochs, "
            f"batch {cfg['batch_size']}, adamax lr {cfg['lr']}, class-balanced epochs, "
            "augmentation (pose, contrast, blur, noise).")


def markdown(summary: dict[str, Any]) -> str:
    """The report as Markdown (the PDF carries the same content)."""
    g, j, cfg = summary["gate"], summary["join"], summary["config"]
    verdict = "PASSED: `model.json` written" if g["passed"] else "REFUSED: no model written"
    lines = [
        "# Site validation of an adapted model",
        "",
        f"cxrscreen {summary['software_version']}, {summary['date']}, runtime {summary['runtime']}. "
        f"Starting model {summary['start_model']['name']} (sha256 `{summary['start_model']['sha256'][:12]}`).",
        "",
        f"**Gate: {verdict}.**" + ("" if g["passed"] else " " + "; ".join(g["reasons"]) + "."),
        "",
        "## Films and labels",
        "",
        "| films found | QC rejected | labelled | unlabelled | conflicting labels | label rows | unmatched label rows "
        "| used |",
        "|---|---|---|---|---|---|---|---|",
        f"| {j['films_found']} | {j['qc_rejected']} | {j['labelled']} | {j['unlabelled']} | {j['conflicting_labels']} "
        f"| {j['label_rows']} | {j['label_rows_unmatched']} | {j['usable']} |",
        "",
        "Joined by SOPInstanceUID: {}, StudyInstanceUID: {}, AccessionNumber: {}. QC rejects by reason: {}. "
        "Unmatched label rows are listed in `unmatched_labels.csv`; every film's split, label and status in "
        "`splits.csv` (patients as hashed handles).".format(
            j["matched_by_SOPInstanceUID"], j["matched_by_StudyInstanceUID"], j["matched_by_AccessionNumber"],
            ", ".join(f"{k.removeprefix('status:')} {v}" for k, v in j.items() if k.startswith("status:")) or "none"),
        "",
        "## Split by patient (seed {})".format(cfg["seed"]),
        "",
        "| split | films | abnormal | patients |",
        "|---|---|---|---|",
        *[f"| {s} | {v['films']} | {v['abnormal']} | {v['patients']} |" for s, v in summary["splits"].items()],
        "",
        "## Training",
        "",
        _training_text(cfg) + f" Epoch kept by calibration AUROC: {summary['best']['epoch'] + 1}.",
        "",
        "| epoch | train loss | calibration AUROC |",
        "|---|---|---|",
        *[f"| {h['epoch'] + 1} | {h['train_loss']:.4f} | {h['calibration_auroc']:.3f} |" for h in summary["history"]],
        "",
        f"Threshold {summary['threshold']:.4f}: calibrated for sensitivity ≥ {cfg['target_sensitivity']}"
        + (" (95% lower bound)" if cfg["require_lower_bound"] else "") + " on the calibration split.",
        "",
        "## Test split: both models at their own thresholds",
        "",
        "| " + " | ".join(metric_rows(summary)[0]) + " |",
        "|---|---|---|---|---|---|",
        *["| " + " | ".join(r) + " |" for r in metric_rows(summary)[1:]],
        "",
        "AUROC CIs: stratified bootstrap; rates: Wilson score intervals. Labels are the site's RIS labels as given. "
        f"Gate: adapted AUROC ≥ starting AUROC + {g['min_auroc_gain']} and adapted sensitivity ≥ target − "
        f"{g['sensitivity_margin']}.",
        "",
        "![ROC](validation_roc.png)",
        "",
        "![scores](validation_scores.png)",
        "",
        DISCLAIMER,
        "",
    ]
    return "\n".join(lines)


def write_validation_report(out: Path, summary: dict[str, Any], labels: np.ndarray, start: np.ndarray,
                            adapted: np.ndarray) -> tuple[Path, Path]:
    """``site_validation.md``, ``site_validation.pdf`` and the two PNGs in ``out``."""
    scores = {"start": start, "adapted": adapted}
    thresholds = {"start": summary["start_model"]["threshold"], "adapted": summary["threshold"]}
    roc, hist = roc_png(labels, scores, thresholds), hist_png(labels, scores, thresholds)
    atomic_write_bytes(out / "validation_roc.png", roc)
    atomic_write_bytes(out / "validation_scores.png", hist)
    md = out / "site_validation.md"
    atomic_write_text(md, markdown(summary))
    pdf = out / "site_validation.pdf"
    st = styles()
    story: list[Any] = []
    for block in markdown(summary).split("\n\n"):
        block = block.strip()
        if not block or block.startswith("![") or block == DISCLAIMER:
            continue
        if block.startswith("# "):
            story.append(Paragraph(escape(block[2:]), st["title"]))
        elif block.startswith("## "):
            story.append(Paragraph(escape(block[3:]), st["h2"]))
        elif block.startswith("|"):
            lines = [r for r in block.splitlines() if not r.startswith("|---")]
            rows = [[Paragraph(escape(c.strip()), st["small"]) for c in r.strip("|").split("|")] for r in lines]
            width = (A4[0] - 36 * mm) / len(rows[0])
            story.append(table(rows, [width] * len(rows[0])))
        else:
            text = escape(block).replace("**", "")
            story.append(Paragraph(text.replace("`", ""), st["warn" if "REFUSED" in block else "body"]))
        story.append(Spacer(1, 3))
    story.append(KeepTogether([Image(io.BytesIO(roc), width=95 * mm, height=87 * mm),
                               Image(io.BytesIO(hist), width=170 * mm, height=65 * mm)]))
    with atomic_open(pdf, "wb", 0o640) as fh, binary_streams():
        doc = SimpleDocTemplate(fh, pagesize=A4, leftMargin=18 * mm, rightMargin=18 * mm, topMargin=16 * mm,
                                bottomMargin=20 * mm, title="cxrscreen site validation")
        doc.build(story, onFirstPage=page_decor, onLaterPages=page_decor)
    return md, pdf
