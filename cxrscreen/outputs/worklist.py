"""Priority-sorted worklists (pandas, UTF-8 CSV): one row per image, one row per study (:mod:`cxrscreen.studies`)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cxrscreen.records import ABNORMAL, DECISION_ORDER, ImageRecord
from cxrscreen.safetext import FORBIDDEN, FORMULA_TRIGGERS, MAX_CELL_CHARS, neutralise_cell, unneutralise
from cxrscreen.state.atomic import atomic_open
from cxrscreen.studies import Study
from cxrscreen.version import __version__

IMAGE_COLUMNS = [
    "rank", "decision", "probability", "threshold", "population", "status", "qc_notes",
    "PatientID", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
    "StudyDate", "Modality", "ViewPosition", "BodyPartExamined", "path", "report",
    "model", "model_sha256", "software_version", "scored_at",
]
STUDY_COLUMNS = [
    "rank", "decision", "probability", "threshold", "population", "n_images", "n_assessable", "n_abnormal",
    "n_not_assessable", "n_error", "statuses", "not_analysed", "PatientID", "AccessionNumber", "StudyInstanceUID",
    "StudyDate", "Modality", "paths", "report", "model", "model_sha256", "software_version",
]


def _sort(df: pd.DataFrame, key_cols: list[str]) -> pd.DataFrame:
    """abnormal by probability desc, then review, then normal by probability desc; stable ties."""
    if df.empty:
        return df.assign(rank=pd.Series(dtype=int))
    order = df["decision"].map(DECISION_ORDER).fillna(len(DECISION_ORDER))
    prob = df["probability"].astype(float).fillna(-1.0)
    df = df.assign(_o=order, _p=-prob).sort_values(["_o", "_p", *key_cols], kind="mergesort")
    df = df.drop(columns=["_o", "_p"]).reset_index(drop=True)
    df["rank"] = np.arange(1, len(df) + 1)
    return df


def images_frame(records: Iterable[ImageRecord], model_name: str | Mapping[str, str]) -> pd.DataFrame:
    """The image worklist as a DataFrame (sorted, ranked); ``model_name`` as for :func:`studies_frame`."""
    rows = []
    for r in records:
        rows.append({
            "decision": r.decision,
            "probability": None if r.probability is None else round(float(r.probability), 6),
            "threshold": float("nan") if r.threshold is None else round(float(r.threshold), 6),
            "population": r.population,
            "status": str(r.status),
            "qc_notes": ";".join(r.all_notes),
            **{k: r.tag(k) for k in ("PatientID", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID",
                                     "SOPInstanceUID", "StudyDate", "Modality", "ViewPosition",
                                     "BodyPartExamined")},
            "path": r.path,
            "report": r.report,
            "model": _model_of(r, model_name),
            "model_sha256": r.model_sha256[:12],
            "software_version": __version__,
            "scored_at": r.scored_at,
        })
    df = pd.DataFrame(rows, columns=[c for c in IMAGE_COLUMNS if c != "rank"])
    return _sort(df, ["path"])[IMAGE_COLUMNS]


def study_keys(images: pd.DataFrame) -> pd.Series:
    """StudyInstanceUID, or ``file:<path>`` for a file without one (unreadable, DICOMDIR…)."""
    uid = images["StudyInstanceUID"].fillna("")
    return uid.where(uid != "", "file:" + images["path"])


def _joined(values: Iterable[str], unique: bool) -> str:
    """``";".join(sorted(...))``, blanks dropped."""
    kept = [v for v in values if v]
    return ";".join(sorted(set(kept) if unique else kept))


def _model_of(record: ImageRecord, model_name: str | Mapping[str, str]) -> str:
    return model_name if isinstance(model_name, str) else model_name.get(record.model_sha256[:12], "")


def studies_frame(studies: Iterable[Study], model_name: str | Mapping[str, str]) -> pd.DataFrame:
    """One row per study (its :func:`cxrscreen.studies.study_decision`; sorted, ranked).

    ``probability`` is the maximum over the scored images; ``threshold`` and ``population`` are those
    of the study's lead image (the most suspicious scored one). ``model_name``: the model's name, or
    names by weights sha256 prefix (``export``, over the runs of several models).
    """
    rows = []
    for st in studies:
        lead, recs = st.lead, st.records
        prob = st.probability
        rows.append({
            "decision": st.decision,
            "probability": float("nan") if prob is None else round(prob, 6),
            "threshold": float("nan") if st.threshold is None else round(float(st.threshold), 6),
            "population": st.population,
            "n_images": len(recs),
            "n_assessable": sum(r.status.is_ok for r in recs),
            "n_abnormal": sum(r.decision == ABNORMAL for r in recs),
            "n_not_assessable": sum(r.status.kind == "not_assessable" for r in recs),
            "n_error": sum(r.status.is_error for r in recs),
            "statuses": _joined((str(r.status) for r in recs), unique=True),
            "not_analysed": _joined((f"{r.path} ({r.status})" for r in recs if not r.status.is_ok), unique=False),
            "PatientID": st.first("PatientID"),
            "AccessionNumber": st.first("AccessionNumber"),
            "StudyInstanceUID": st.study_uid,
            "StudyDate": st.first("StudyDate"),
            "Modality": _joined((r.tag("Modality") for r in recs), unique=True),
            "paths": _joined((r.path for r in recs), unique=False),
            "report": st.report,
            "model": _model_of(lead, model_name),
            "model_sha256": lead.model_sha256[:12],
            "software_version": __version__,
        })
    df = pd.DataFrame(rows, columns=[c for c in STUDY_COLUMNS if c != "rank"])
    return _sort(df, ["StudyInstanceUID", "paths"])[STUDY_COLUMNS]


_STARTS_LIKE_FORMULA = re.compile("^[" + re.escape("".join(FORMULA_TRIGGERS)) + "]", re.MULTILINE)


def neutralised(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every text cell made safe for a spreadsheet (:func:`cxrscreen.safetext.neutralise_cell`).

    Control characters escaped, cells bounded, cells that start like a formula prefixed with ``'``;
    numeric columns (probabilities, thresholds, ranks, counts) untouched. Columns with nothing to
    change (nearly all) are checked in one pass over their joined text and left as they are.
    """
    out = df.copy()
    for col in out.columns:
        s = out[col]
        if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            continue
        cells = [v for v in s.tolist() if isinstance(v, str)]
        if not cells:
            continue
        if (FORBIDDEN.search("".join(cells)) is None and max(map(len, cells)) <= MAX_CELL_CHARS
                and _STARTS_LIKE_FORMULA.search("\n".join(cells)) is None):
            continue
        out[col] = s.map(neutralise_cell)
    return out


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    """Atomic UTF-8 CSV write (mode 0640), every text cell :func:`neutralised` (README, "Worklists")."""
    with atomic_open(path, "w") as fh:
        neutralised(df).to_csv(fh, index=False, lineterminator="\n")
    return path


def read_csv(path: Path) -> pd.DataFrame:
    """A CSV written by :func:`write_csv`, all columns as text, with the formula guard (``'``) removed."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in df.columns:
        guarded = df[col].str.startswith("'")
        if guarded.any():
            df.loc[guarded, col] = df.loc[guarded, col].map(unneutralise)
    return df
