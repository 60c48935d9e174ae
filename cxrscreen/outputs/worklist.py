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


def _frame(cols: dict[str, list], columns: list[str], key_cols: tuple[str, ...]) -> pd.DataFrame:
    """The worklist of ``cols`` (one list per column, ``rank`` excepted) in worklist order, ranked: abnormal
    by probability desc, then review, then normal by probability desc, then by ``key_cols``; stable ties.

    The lists are put in that order before the frame is made, so the frame is built once (no sorted copy
    of it): the peak memory of a worklist of the whole ledger is about the frame's own.
    """
    last = len(DECISION_ORDER)
    decision, prob = cols["decision"], cols["probability"]

    def key(i: int) -> tuple:
        p = prob[i]
        return (DECISION_ORDER.get(decision[i], last), 1.0 if p is None or p != p else -p,
                *(cols[k][i] for k in key_cols))

    order = sorted(range(len(decision)), key=key)
    # text as Python objects, not pandas' Arrow strings: no copy of every cell into Arrow's memory pool
    df = pd.DataFrame({c: pd.Series([v[i] for i in order], dtype=None if c in _NUMERIC else object)
                       for c, v in cols.items()}, columns=[c for c in columns if c != "rank"])
    df.insert(0, "rank", np.arange(1, len(df) + 1))  # the first column of both worklists
    return df


_NUMERIC = frozenset({"probability", "threshold", "n_images", "n_assessable", "n_abnormal", "n_not_assessable",
                      "n_error"})
IMAGE_TAGS = ("PatientID", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyDate",
              "Modality", "ViewPosition", "BodyPartExamined")


class Worklist:
    """The image and study worklists, filled a record (:meth:`add_image`) or a study (:meth:`add_study`) at a
    time, then made frames: the columns keep the cells, not the records, so a worklist of the whole ledger
    can be built from the ledger a batch of studies at a time. ``model_name`` as for :func:`studies_frame`."""

    def __init__(self, model_name: str | Mapping[str, str]) -> None:
        self.model_name = model_name
        self.images: dict[str, list] = {c: [] for c in IMAGE_COLUMNS if c != "rank"}
        self.studies: dict[str, list] = {c: [] for c in STUDY_COLUMNS if c != "rank"}
        self._text: dict[str, str] = {}  # cell text that recurs (statuses, model ids): one str object each

    def add_image(self, r: ImageRecord) -> None:
        cols, one = self.images, self._text.setdefault
        cols["decision"].append(r.decision)
        cols["probability"].append(None if r.probability is None else round(float(r.probability), 6))
        cols["threshold"].append(float("nan") if r.threshold is None else round(float(r.threshold), 6))
        cols["population"].append(r.population)
        status = str(r.status)
        cols["status"].append(one(status, status))
        cols["qc_notes"].append(";".join(r.all_notes))
        for k in IMAGE_TAGS:
            cols[k].append(r.tag(k))
        cols["path"].append(r.path)
        cols["report"].append(r.report)
        cols["model"].append(_model_of(r, self.model_name))
        short = r.model_sha256[:12]
        cols["model_sha256"].append(one(short, short))
        cols["software_version"].append(__version__)
        cols["scored_at"].append(r.scored_at)

    def add_study(self, st: Study, images: bool = True) -> None:
        """The study's row, and (``images``) each of its images' rows."""
        lead, recs = st.lead, st.records
        prob = st.probability
        one = self._text.setdefault
        statuses = _joined((str(r.status) for r in recs), unique=True)
        modality = _joined((r.tag("Modality") for r in recs), unique=True)
        short = lead.model_sha256[:12]
        row = {
            "decision": st.decision,
            "probability": float("nan") if prob is None else round(prob, 6),
            "threshold": float("nan") if st.threshold is None else round(float(st.threshold), 6),
            "population": st.population,
            "n_images": len(recs),
            "n_assessable": sum(r.status.is_ok for r in recs),
            "n_abnormal": sum(r.decision == ABNORMAL for r in recs),
            "n_not_assessable": sum(r.status.kind == "not_assessable" for r in recs),
            "n_error": sum(r.status.is_error for r in recs),
            "statuses": one(statuses, statuses),
            "not_analysed": _joined((f"{r.path} ({r.status})" for r in recs if not r.status.is_ok), unique=False),
            "PatientID": st.first("PatientID"),
            "AccessionNumber": st.first("AccessionNumber"),
            "StudyInstanceUID": st.study_uid,
            "StudyDate": st.first("StudyDate"),
            "Modality": one(modality, modality),
            "paths": _joined((r.path for r in recs), unique=False),
            "report": st.report,
            "model": _model_of(lead, self.model_name),
            "model_sha256": one(short, short),
            "software_version": __version__,
        }
        for c, v in row.items():
            self.studies[c].append(v)
        if images:
            for r in recs:
                self.add_image(r)

    def images_frame(self) -> pd.DataFrame:
        return _frame(self.images, IMAGE_COLUMNS, ("path",))

    def studies_frame(self) -> pd.DataFrame:
        return _frame(self.studies, STUDY_COLUMNS, ("StudyInstanceUID", "paths"))


def images_frame(records: Iterable[ImageRecord], model_name: str | Mapping[str, str]) -> pd.DataFrame:
    """The image worklist as a DataFrame (sorted, ranked); ``model_name`` as for :func:`studies_frame`."""
    w = Worklist(model_name)
    for r in records:
        w.add_image(r)
    return w.images_frame()


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
    w = Worklist(model_name)
    for st in studies:
        w.add_study(st, images=False)
    return w.studies_frame()


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
