"""Priority-sorted worklists (pandas, UTF-8 CSV): one row per image, one row per study."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from cxrscreen import __version__
from cxrscreen.ingest.tags import tag_notes
from cxrscreen.records import ABNORMAL, DECISION_ORDER, NORMAL, REVIEW, ImageRecord, Status
from cxrscreen.safetext import FORBIDDEN, FORMULA_TRIGGERS, MAX_CELL_CHARS, neutralise_cell, unneutralise
from cxrscreen.state.atomic import atomic_open

IMAGE_COLUMNS = [
    "rank", "decision", "probability", "threshold", "status", "qc_notes",
    "PatientID", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
    "StudyDate", "Modality", "ViewPosition", "BodyPartExamined", "path", "report",
    "model", "model_sha256", "software_version", "scored_at",
]
STUDY_COLUMNS = [
    "rank", "decision", "probability", "threshold", "n_images", "n_assessable", "n_abnormal",
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


def images_frame(records: Iterable[ImageRecord], model_name: str) -> pd.DataFrame:
    """The image worklist as a DataFrame (sorted, ranked)."""
    rows = []
    for r in records:
        rows.append({
            "decision": r.decision,
            "probability": None if r.probability is None else round(float(r.probability), 6),
            "threshold": float("nan") if r.threshold is None else round(float(r.threshold), 6),
            "status": str(r.status),
            "qc_notes": ";".join(dict.fromkeys((*r.qc_notes, *tag_notes(r.tags)))),
            **{k: r.tag(k) for k in ("PatientID", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID",
                                     "SOPInstanceUID", "StudyDate", "Modality", "ViewPosition",
                                     "BodyPartExamined")},
            "path": r.path,
            "report": r.report,
            "model": model_name,
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


def studies_frame(images: pd.DataFrame) -> pd.DataFrame:
    """One row per study, decided by its assessable frontal images (the rules, in order):

    1. ``abnormal`` if any image is abnormal;
    2. ``review`` if any image casts a doubt: an ``error:*``, a ``not_assessable:*`` other than a
       supplementary view (wrong body part or modality, blank, raw data…), or a scored image whose
       own decision is ``review`` (a QC note such as ``polarity_suspect``);
    3. ``review`` if no image was scored (no assessable frontal image);
    4. ``normal`` otherwise. Lateral, oblique and decubitus views (``Status.is_supplementary_view``)
       are listed in ``not_analysed`` but do not make a study with a scored frontal image ``review``.

    ``probability`` is the maximum over the scored images.
    """
    if images.empty:
        return pd.DataFrame(columns=STUDY_COLUMNS)
    key = study_keys(images)
    df = images.assign(_study=key)
    status = df["status"].fillna("")

    def joined(col: str, unique: bool) -> pd.Series:  # ";".join(sorted(...)) per study, blanks dropped
        part = df[["_study", col]]
        part = part[part[col].fillna("") != ""]
        if unique:
            part = part.drop_duplicates()
        part = part.sort_values(["_study", col], kind="mergesort")
        return part.groupby("_study", sort=True)[col].agg(";".join)

    parsed = status.map(lambda v: Status(v) if v else None)  # blank (never written): a doubt, like any non-ok
    kind = parsed.map(lambda st: st.kind if st else "")
    ok = kind == "ok"
    supplementary = parsed.map(lambda st: bool(st and st.is_supplementary_view)).astype(bool)
    doubt = (~ok & ~supplementary) | (ok & (df["decision"] == REVIEW))
    df["_not_analysed"] = (df["path"] + " (" + status + ")").where(~ok, "")
    n_abn = (df["decision"] == ABNORMAL).groupby(key).sum()
    n_ok = ok.groupby(key).sum()
    any_doubt = doubt.groupby(key).any()
    prob = df["probability"].astype(float).where(ok).groupby(key).max()
    first = df.drop_duplicates("_study", keep="first").set_index("_study")
    reports = df[df["report"].fillna("") != ""].drop_duplicates("_study", keep="first").set_index("_study")["report"]
    out = pd.DataFrame({
        "decision": NORMAL,
        "probability": prob,
        "threshold": first["threshold"].astype(float),
        "n_images": df.groupby("_study", sort=True).size(),
        "n_assessable": n_ok,
        "n_abnormal": n_abn,
        "n_not_assessable": (kind == "not_assessable").groupby(key).sum(),
        "n_error": (kind == "error").groupby(key).sum(),
        "statuses": joined("status", unique=True),
        "not_analysed": joined("_not_analysed", unique=False),
        "PatientID": first["PatientID"],
        "AccessionNumber": first["AccessionNumber"],
        "StudyInstanceUID": first["StudyInstanceUID"].where(~first.index.str.startswith("file:"), ""),
        "StudyDate": first["StudyDate"],
        "Modality": joined("Modality", unique=True),
        "paths": joined("path", unique=False),
        "report": reports,
        "model": first["model"],
        "model_sha256": first["model_sha256"],
        "software_version": first["software_version"],
    })
    text = ["statuses", "not_analysed", "Modality", "report"]
    out[text] = out[text].fillna("")
    out.loc[any_doubt | (n_ok == 0) | prob.isna(), "decision"] = REVIEW
    out.loc[n_abn > 0, "decision"] = ABNORMAL
    out = out.reset_index(drop=True)[[c for c in STUDY_COLUMNS if c != "rank"]]
    return _sort(out, ["StudyInstanceUID", "paths"])[STUDY_COLUMNS]


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
