"""A site's films for adapt: the label join, the patient split, and the scan-path tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrscreen.model.files import load_model
from cxrscreen.prepare import prepare_file
from cxrscreen.preprocess import build_transform, normalize_transforms
from cxrscreen.training.site import (
    SiteDataError,
    join_labels,
    prepare_site,
    read_labels,
    split_patients,
    splits_frame,
)
from tests.factory import chest_phantom, make_dicom


def make_site(folder: Path, n_patients: int = 20, seed: int = 0) -> Path:
    """A tiny site: patients with 1–2 PA films, a blob = abnormal; plus a lateral, an unlabelled film and a
    label row for a film that is not there. Labels joined by SOP UID, study UID or accession (in turn).
    Returns the labels CSV path."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = p % 2
        for k in range(1 + (p % 3 == 0)):
            path = folder / "films" / f"P{p:03d}" / f"{k}.dcm"
            make_dicom(path, chest_phantom(256, 256, seed=int(rng.integers(1 << 30)), blob=bool(label)),
                       patient_id=f"PAT{p:03d}", accession=f"A{p:03d}{k}")
            ds = __import__("pydicom").dcmread(path, stop_before_pixels=True)
            key = ("SOPInstanceUID", "StudyInstanceUID", "AccessionNumber")[(p + k) % 3]
            row = {"SOPInstanceUID": "", "StudyInstanceUID": "", "AccessionNumber": "", "PatientID": f"PAT{p:03d}",
                   "label": label}
            row[key] = str(ds[key].value)
            rows.append(row)
    make_dicom(folder / "films" / "P000" / "lateral.dcm", chest_phantom(256, 256), patient_id="PAT000",
               accession="A0009", view="LL")
    make_dicom(folder / "films" / "unlabelled.dcm", chest_phantom(256, 256), patient_id="PATX", accession="AX")
    rows.append({"SOPInstanceUID": "1.2.3.4.5.6.7", "StudyInstanceUID": "", "AccessionNumber": "", "PatientID": "PZ",
                 "label": 1})
    labels = folder / "labels.csv"
    pd.DataFrame(rows).to_csv(labels, index=False)
    return labels


@pytest.fixture(scope="module")
def site_folder(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("site")
    return folder / "films", make_site(folder)


def test_join_prefers_sop_then_study_then_accession() -> None:
    films = pd.DataFrame({"SOPInstanceUID": ["1.1", "1.2", "1.3", "1.4", "1.5"],
                          "StudyInstanceUID": ["2.1", "2.2", "2.3", "2.4", "2.5"],
                          "AccessionNumber": ["A1", "A2", "A3", "A4", "A5"]})
    labels = pd.DataFrame({"SOPInstanceUID": ["1.1", "", "", "", "9.9"],
                           "StudyInstanceUID": ["2.2", "2.2", "", "2.4", ""],
                           "AccessionNumber": ["", "", "A3", "A4", ""],
                           "label": [1, 0, 1, 0, 1]})
    out = join_labels(films, labels)
    assert out["matched_by"].tolist() == ["SOPInstanceUID", "conflicting_StudyInstanceUID", "AccessionNumber",
                                          "StudyInstanceUID", ""]
    assert out["label"].tolist()[0] == 1 and out["label"].isna().tolist() == [False, True, False, False, True]
    assert out["label_row"].tolist() == [0, -1, 2, 3, -1]


def test_read_labels_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("PatientID,label\nP1,1\n")
    with pytest.raises(SiteDataError, match="at least one of"):
        read_labels(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("AccessionNumber,label\nA1,yes\n")
    with pytest.raises(SiteDataError, match="0 or 1"):
        read_labels(tmp_path / "b.csv")


def test_split_by_patient_is_disjoint_seeded_and_refuses_tiny_classes() -> None:
    rng = np.random.default_rng(0)
    patients = [f"P{i}" for i in range(60) for _ in range(int(rng.integers(1, 4)))]
    labels = [int(p[1:]) % 2 for p in patients]
    films = pd.DataFrame({"patient": patients, "label": labels})
    split = split_patients(films, seed=3)
    assert set(split) == {"train", "calibration", "test"}
    assert films.assign(split=split).groupby("patient")["split"].nunique().max() == 1
    assert split.equals(split_patients(films, seed=3))
    assert not split.equals(split_patients(films, seed=4))
    counts = split.value_counts()
    assert counts["train"] > counts["test"] and counts["train"] > counts["calibration"]
    few = films[(films["label"] == 0) | films["patient"].isin(["P1", "P3", "P5"])]
    with pytest.raises(SiteDataError, match="too few abnormal"):
        split_patients(few, seed=0)


def test_prepare_site_counts_and_feeds_the_scan_tensor(site_folder, random_model_path: Path) -> None:
    films, labels = site_folder
    lm = load_model(random_model_path)
    site = prepare_site(films, labels, lm.spec, seed=0)
    j = site.join
    n_pa = sum(1 + (p % 3 == 0) for p in range(20))
    assert j["films_found"] == n_pa + 2
    assert j["qc_rejected"] == 1 and j["status:not_assessable:lateral_view"] == 1
    assert j["label_rows_unmatched"] == 1 and len(site.unmatched_labels) == 1
    assert j["unlabelled"] == 2  # unlabelled.dcm, and the lateral (no label row names it)
    assert j["usable"] == n_pa == len(site.images)
    assert j["matched_by_SOPInstanceUID"] > 0 and j["matched_by_StudyInstanceUID"] > 0
    assert j["matched_by_AccessionNumber"] > 0
    # What adapt evaluates is what scan scores: the cached chain + the fixed normalisation.
    first = site.table.loc[site.usable[0], "path"]
    scan_tensor = prepare_file(films / first, lm.spec, build_transform(lm.spec)).image
    from monai.transforms import Compose

    assert torch.equal(Compose(normalize_transforms(lm.spec))(site.images[0]), scan_tensor)
    frame = splits_frame(site)
    assert "PAT000" not in frame.to_csv() and frame["patient"].str.len().max() == 12
    assert (frame["split"] == "excluded").sum() == 2
