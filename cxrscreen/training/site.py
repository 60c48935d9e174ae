"""A site's labelled films for ``adapt``: scan-path preparation, the label join, the patient split.

Films go through exactly what ``scan`` does (discovery, read, header QC, decode, pixel QC, the MONAI
chain) and are kept as the chain's output *before* its fixed normalisation, so training can augment
them and evaluation feeds the model bit-for-bit what ``scan`` would. Labels come from a RIS export
(CSV) and are joined by SOPInstanceUID, else StudyInstanceUID, else AccessionNumber.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import Compose

from cxrscreen.ingest.discover import discover
from cxrscreen.pipeline.schedule import usable_cores
from cxrscreen.prepare import prepare_file
from cxrscreen.preprocess import PreprocessSpec, base_transforms

JOIN_KEYS = ("SOPInstanceUID", "StudyInstanceUID", "AccessionNumber")
SPLITS = ("train", "calibration", "test")
#: Films of each class that every split must hold, or the site is too small to split.
MIN_PER_CLASS = 2


class SiteDataError(ValueError):
    """A site folder or label file that cannot be used, with the reason (exit code 2)."""


@dataclass
class SiteFilms:
    """The prepared films of one site folder and how their labels were joined."""

    table: pd.DataFrame  # one row per film: path, status, uids, patient, label, matched_by, split
    images: torch.Tensor  # (n_usable, 1, S, S): the chain before normalisation, rows of ``usable``
    usable: np.ndarray  # positions in ``table`` of films that are ok and labelled, in ``images`` order
    join: dict[str, int] = field(default_factory=dict)  # counts for the report
    unmatched_labels: pd.DataFrame = field(default_factory=pd.DataFrame)

    def rows(self, split: str) -> np.ndarray:
        """Positions in ``images`` of the films of ``split``."""
        return np.flatnonzero(self.table.loc[self.usable, "split"].to_numpy() == split)

    def labels(self, split: str) -> np.ndarray:
        return self.table.loc[self.usable, "label"].to_numpy()[self.rows(split)].astype(int)


def patient_handle(patient_id: str) -> str:
    """Non-identifying patient handle for files that leave the site's systems (splits.csv, reports)."""
    return hashlib.sha256(patient_id.encode()).hexdigest()[:12] if patient_id else ""


def read_labels(path: Path) -> pd.DataFrame:
    """A RIS export: ``label`` (0 normal, 1 abnormal) and at least one of the join keys."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise SiteDataError(f"{path}: cannot read the label file ({exc})") from exc
    if "label" not in df.columns:
        raise SiteDataError(f"{path}: no 'label' column (0 = normal, 1 = abnormal)")
    if not any(k in df.columns for k in JOIN_KEYS):
        raise SiteDataError(f"{path}: needs at least one of the columns {', '.join(JOIN_KEYS)}")
    bad = ~df["label"].str.strip().isin(["0", "1"])
    if bad.any():
        raise SiteDataError(f"{path}: label must be 0 or 1 (row {int(np.argmax(bad.to_numpy())) + 2})")
    df["label"] = df["label"].str.strip().astype(int)
    for k in (*JOIN_KEYS, "PatientID"):
        df[k] = df[k].str.strip() if k in df.columns else ""
    return df


def _lookup(labels: pd.DataFrame, key: str) -> tuple[dict[str, int], set[str]]:
    """``value → label`` for one key column; values given two different labels are returned apart."""
    part = labels.loc[labels[key] != "", [key, "label"]].drop_duplicates()
    counts = part[key].value_counts()
    conflicting = set(counts[counts > 1].index)
    return {v: int(lab) for v, lab in zip(part[key], part["label"], strict=True) if v not in conflicting}, conflicting


def join_labels(films: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Add ``label`` (or NA), ``matched_by`` and ``label_row`` (index into ``labels``) to ``films``."""
    films = films.copy()
    films["label"] = pd.array([pd.NA] * len(films), dtype="Int64")
    films["matched_by"] = ""
    films["label_row"] = -1
    for key in JOIN_KEYS:
        table, conflicting = _lookup(labels, key)
        row_of = labels.reset_index().loc[labels[key].to_numpy() != ""].drop_duplicates(key).set_index(key)["index"]
        todo = films["matched_by"] == ""
        values = films.loc[todo, key]
        hit = values.isin(table.keys())
        idx = values[hit].index
        films.loc[idx, "label"] = [table[v] for v in values[hit]]
        films.loc[idx, "matched_by"] = key
        films.loc[idx, "label_row"] = [int(row_of[v]) for v in values[hit]]
        clash = values.isin(conflicting)
        films.loc[values[clash].index, "matched_by"] = f"conflicting_{key}"
    films.loc[films["matched_by"].str.startswith("conflicting_"), "label"] = pd.NA
    return films


def split_patients(films: pd.DataFrame, seed: int, min_per_class: int = MIN_PER_CLASS) -> pd.Series:
    """train / calibration / test (3 : 1 : 1) by patient, stratified by label, seeded.

    ``films`` holds the usable films (``patient``, ``label``); no patient lands in two splits
    (scikit-learn's ``StratifiedGroupKFold``: fold 0 is test, fold 1 calibration, the rest train).
    Raises ``SiteDataError`` when a class is too small to give every split ``min_per_class`` films.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    y = films["label"].to_numpy().astype(int)
    groups = films["patient"].to_numpy()
    for cls, name in ((0, "normal"), (1, "abnormal")):
        n_pat = len(set(groups[y == cls]))
        if n_pat < 5 * min_per_class:
            raise SiteDataError(
                f"too few {name} films to split by patient: {int(np.sum(y == cls))} films of {n_pat} patients; "
                f"train, calibration and test each need {min_per_class}, so at least {5 * min_per_class} patients")
    folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
    split = np.full(len(films), "train", dtype=object)
    for k, (_, held) in enumerate(folds.split(np.zeros(len(y)), y, groups)):
        if k < 2:
            split[held] = SPLITS[2 - k]  # fold 0 → test, fold 1 → calibration
    for name in SPLITS:
        for cls, label in ((0, "normal"), (1, "abnormal")):
            n = int(np.sum((split == name) & (y == cls)))
            if n < min_per_class:
                raise SiteDataError(f"the {name} split got {n} {label} films (need {min_per_class}): "
                                    "the site is too small or one class is too rare to split by patient")
    return pd.Series(split, index=films.index, name="split")


def prepare_site(folder: Path, labels_csv: Path, spec: PreprocessSpec, seed: int = 0,
                 min_per_class: int = MIN_PER_CLASS) -> SiteFilms:
    """Discover, prepare (scan path), join labels and split one site folder."""
    if not folder.is_dir():
        raise SiteDataError(f"{folder}: not a folder")
    labels = read_labels(labels_csv)
    paths = discover(folder)
    if not paths:
        raise SiteDataError(f"{folder}: no DICOM files found")
    chain = Compose(base_transforms(spec))
    track = get_track_meta()
    set_track_meta(False)
    try:
        with ThreadPoolExecutor(max_workers=usable_cores(), thread_name_prefix="adapt-prepare") as pool:
            prepared = list(pool.map(lambda ip: prepare_file(ip[1], spec, chain, ip[0]), enumerate(paths)))
    finally:
        set_track_meta(track)
    films = pd.DataFrame({
        "path": [p.relative_to(folder).as_posix() for p in paths],
        "status": [p.status for p in prepared],
        **{k: [p.tags.get(k, "") for p in prepared] for k in (*JOIN_KEYS, "PatientID")},
    })
    films = join_labels(films, labels)
    from_labels = labels["PatientID"].reindex(films["label_row"].where(films["label_row"] >= 0)).fillna("").to_numpy()
    pid = films["PatientID"].where(films["PatientID"] != "", pd.Series(from_labels, index=films.index))
    films["patient"] = pid.where(pid != "", "study:" + films["StudyInstanceUID"])
    labelled = films["label"].notna()
    ok = films["status"] == "ok"
    usable_mask = (labelled & ok).to_numpy()
    films["split"] = ""
    if usable_mask.any():
        films.loc[usable_mask, "split"] = split_patients(films[usable_mask], seed, min_per_class)
    else:
        raise SiteDataError("no film is both assessable and labelled: check the label file's UIDs/accessions")
    usable = np.flatnonzero(usable_mask)
    images = torch.stack([prepared[i].image for i in usable])
    matched_rows = set(films.loc[films["label_row"] >= 0, "label_row"])
    unmatched = labels.loc[[i for i in range(len(labels)) if i not in matched_rows]]
    join = {
        "films_found": len(films),
        "qc_rejected": int((~ok).sum()),
        "labelled": int(labelled.sum()),
        "unlabelled": int((~labelled & ~films["matched_by"].str.startswith("conflicting_")).sum()),
        "conflicting_labels": int(films["matched_by"].str.startswith("conflicting_").sum()),
        "label_rows": len(labels),
        "label_rows_unmatched": len(unmatched),
        "usable": len(usable),
        **{f"matched_by_{k}": int((films["matched_by"] == k).sum()) for k in JOIN_KEYS},
        **{f"status:{k}": v for k, v in Counter(films.loc[~ok, "status"]).items()},
    }
    films["label"] = films["label"].astype("Int64")
    return SiteFilms(table=films, images=images, usable=usable, join=join, unmatched_labels=unmatched)


def splits_frame(site: SiteFilms) -> pd.DataFrame:
    """What ``MODEL_DIR/splits.csv`` holds: one row per film, patients as non-identifying handles."""
    t = site.table
    return pd.DataFrame({
        "path": t["path"], "SOPInstanceUID": t["SOPInstanceUID"], "patient": t["patient"].map(patient_handle),
        "label": t["label"], "matched_by": t["matched_by"], "status": t["status"],
        "split": t["split"].where(t["split"] != "", "excluded"),
    })
