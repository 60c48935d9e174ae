"""Priority-sorted worklists (pandas, UTF-8 CSV): one row per image, one row per study."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from cxrscreen import __version__
from cxrscreen.records import ABNORMAL, DECISION_ORDER, NORMAL, REVIEW, ImageRecord
from cxrscreen.state.atomic import atomic_open

IMAGE_COLUMNS = [
    "rank", "decision", "probability", "threshold", "status", "qc_notes",
    "PatientID", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
    "StudyDate", "Modality", "ViewPosition", "BodyPartExamined", "path", "report",
    "model", "model_sha256", "software_version", "scored_at",
]
STUDY_COLUMNS = [
    "rank", "decision", "probability", "threshold", "n_images", "n_assessable", "n_abnormal",
    "n_not_assessable", "n_error", "statuses", "PatientID", "AccessionNumber", "StudyInstanceUID",
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
            "threshold": round(float(r.tags.get("_threshold", "nan")), 6),
            "status": r.status,
            "qc_notes": ";".join(r.qc_notes),
            **{k: r.tag(k) for k in ("PatientID", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID",
                                     "SOPInstanceUID", "StudyDate", "Modality", "ViewPosition",
                                     "BodyPartExamined")},
            "path": r.path,
            "report": r.report,
            "model": model_name,
            "model_sha256": r.tag("_model_sha256")[:12],
            "software_version": __version__,
            "scored_at": r.tag("_scored_at"),
        })
    df = pd.DataFrame(rows, columns=[c for c in IMAGE_COLUMNS if c != "rank"])
    return _sort(df, ["path"])[IMAGE_COLUMNS]


def study_keys(images: pd.DataFrame) -> pd.Series:
    """StudyInstanceUID, or ``file:<path>`` for a file without one (unreadable, DICOMDIR…)."""
    uid = images["StudyInstanceUID"].fillna("")
    return uid.where(uid != "", "file:" + images["path"])


def studies_frame(images: pd.DataFrame) -> pd.DataFrame:
    """One row per StudyInstanceUID: max probability over assessable images; review rules."""
    if images.empty:
        return pd.DataFrame(columns=STUDY_COLUMNS)
    key = study_keys(images)
    df = images.assign(_study=key)

    def joined(col: str, unique: bool) -> pd.Series:  # ";".join(sorted(...)) per study, blanks dropped
        part = df[["_study", col]]
        part = part[part[col].fillna("") != ""]
        if unique:
            part = part.drop_duplicates()
        part = part.sort_values(["_study", col], kind="mergesort")
        return part.groupby("_study", sort=True)[col].agg(";".join)

    ok = df["status"] == "ok"
    n_abn = (df["decision"] == ABNORMAL).groupby(key).sum()
    review = (df["decision"] == REVIEW).groupby(key).any()
    prob = df["probability"].astype(float).where(ok).groupby(key).max()
    first = df.drop_duplicates("_study", keep="first").set_index("_study")
    reports = df[df["report"].fillna("") != ""].drop_duplicates("_study", keep="first").set_index("_study")["report"]
    out = pd.DataFrame({
        "decision": NORMAL,
        "probability": prob,
        "threshold": first["threshold"].astype(float),
        "n_images": df.groupby("_study", sort=True).size(),
        "n_assessable": ok.groupby(key).sum(),
        "n_abnormal": n_abn,
        "n_not_assessable": df["status"].str.startswith("not_assessable").groupby(key).sum(),
        "n_error": df["status"].str.startswith("error").groupby(key).sum(),
        "statuses": joined("status", unique=True),
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
    out[["statuses", "Modality", "report"]] = out[["statuses", "Modality", "report"]].fillna("")
    out.loc[review | prob.isna(), "decision"] = REVIEW
    out.loc[n_abn > 0, "decision"] = ABNORMAL
    out = out.reset_index(drop=True)[[c for c in STUDY_COLUMNS if c != "rank"]]
    return _sort(out, ["StudyInstanceUID", "paths"])[STUDY_COLUMNS]


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    """Atomic UTF-8 CSV write (mode 0640)."""
    with atomic_open(path, "w") as fh:
        df.to_csv(fh, index=False, lineterminator="\n")
    return path


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)
