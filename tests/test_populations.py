"""Operating points per population: age parsing, the fallback, a model with two points, ``--threshold``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from cxrscreen import scan
from cxrscreen.model.files import load_model, read_meta
from cxrscreen.options import ScanOptions
from cxrscreen.populations import (
    AGE_UNKNOWN,
    ALL,
    OperatingPoint,
    OperatingPointError,
    OperatingPoints,
    age_from_as,
    age_from_dates,
    manifest_population,
    patient_age_years,
)
from cxrscreen.state.ledger import Ledger, ledger_path
from cxrscreen.testing import dicom
from tests.factory import chest_phantom

TWO = OperatingPoints.standard(pediatric=0.8, adult=0.2)


@pytest.mark.parametrize(("text", "years"), [
    ("045Y", 45.0), ("006M", 0.5), ("018M", 1.5), ("052W", 52 * 7 / 365.25), ("010D", 10 / 365.25),
    ("017Y", 17.0), ("018Y", 18.0), ("045y", 45.0), (" 045Y", 45.0),
])
def test_age_strings(text: str, years: float) -> None:
    assert age_from_as(text) == pytest.approx(years)


@pytest.mark.parametrize("text", ["", "45Y", "045", "045X", "0045Y", "-45Y", "abcY", "04.5Y", "045 Y"])
def test_invalid_age_strings(text: str) -> None:
    assert age_from_as(text) is None


def test_age_from_birth_and_study_dates() -> None:
    assert 17.99 < age_from_dates("20000615", "20180614") < 18.0  # the day before the 18th birthday
    assert age_from_dates("20000615", "20180615") == 18.0
    assert age_from_dates("20000229", "20180228") == 18.0
    assert age_from_dates("20000615", "20001215") == pytest.approx(0.5, abs=0.01)
    for birth, study in [("", "20180614"), ("20000615", ""), ("20001345", "20180614"), ("2000", "20180614"),
                         ("20190101", "20180614"), ("garbage!", "20180614")]:
        assert age_from_dates(birth, study) is None


def test_patient_age_prefers_patient_age_then_dates_and_rejects_the_implausible() -> None:
    assert patient_age_years({"PatientAge": "007Y", "PatientBirthDate": "19500101", "StudyDate": "20200101"}) == 7
    assert patient_age_years({"PatientAge": "7Y", "PatientBirthDate": "19500101",
                              "StudyDate": "20200101"}) == pytest.approx(70.0, abs=0.01)
    assert patient_age_years({"PatientAge": "999Y"}) is None  # valid AS, not a patient
    assert patient_age_years({"PatientBirthDate": "18000101", "StudyDate": "20200101"}) is None
    assert patient_age_years({}) is None


def test_assignment_by_age_band_and_the_default_with_a_note() -> None:
    child = TWO.assign({"PatientAge": "004Y"})
    assert (child.population, child.threshold, child.notes) == ("pediatric", 0.8, ())
    assert TWO.assign({"PatientAge": "017Y"}).population == "pediatric"
    assert TWO.assign({"PatientAge": "018Y"}).population == "adult"
    assert TWO.assign({"PatientAge": "006M"}).population == "pediatric"
    assert TWO.assign({"PatientBirthDate": "19600101", "StudyDate": "20260101"}).population == "adult"
    for tags in ({}, {"PatientAge": "garbage"}, {"PatientBirthDate": "20300101", "StudyDate": "20260101"}):
        unknown = TWO.assign(tags)
        assert (unknown.population, unknown.threshold, unknown.notes) == ("adult", 0.2, (AGE_UNKNOWN,))


def test_single_threshold_models_need_no_age() -> None:
    one = OperatingPoints.from_meta({"threshold": 0.7})
    assert one.single and one.names == (ALL,)
    a = one.assign({})
    assert (a.population, a.threshold, a.notes) == (ALL, 0.7, ())


def test_threshold_override_and_round_trip_through_the_metadata() -> None:
    assert {p.threshold for p in TWO.overridden(0.4).points} == {0.4}
    back = OperatingPoints.from_meta({"threshold": 0.2, "operating_points": TWO.to_meta()})
    assert back == TWO and back.default == "adult"


@pytest.mark.parametrize("points", [
    ({"population": "a", "threshold": 0.5, "min_age_years": 0, "max_age_years": 20},
     {"population": "b", "threshold": 0.5, "min_age_years": 18, "max_age_years": None}),
    ({"population": "a", "threshold": 1.5},),
    ({"population": "a", "threshold": 0.5}, {"population": "a", "threshold": 0.4, "min_age_years": 200}),
])
def test_invalid_operating_points_are_refused(points) -> None:
    with pytest.raises(OperatingPointError):
        OperatingPoints.from_meta({"threshold": 0.5, "operating_points": {"default": "a", "points": list(points)}})
    with pytest.raises(OperatingPointError):
        OperatingPoints((OperatingPoint("a", 0.5),), "b")


def test_manifest_population_text() -> None:
    names = ("pediatric", "adult")
    assert manifest_population("pediatric (1-5 y), Guangzhou", names) == "pediatric"
    assert manifest_population("adult, teaching collection (non-NIH)", names) == "adult"
    assert manifest_population("Adult", names) == "adult"
    assert manifest_population("unknown", names) == ""


# --------------------------------------------------------------------------- a model with two points
def two_point_model(random_model_path: Path, folder: Path, pediatric: float, adult: float) -> Path:
    """The random test model with pediatric and adult operating points (same weights)."""
    _, meta = read_meta(random_model_path)
    meta = dict(meta, threshold=adult, operating_points=OperatingPoints.standard(pediatric, adult).to_meta(),
                weights_file=str(random_model_path.with_suffix(".safetensors").resolve()))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "two.json"
    path.write_text(json.dumps(meta))
    return path


def film(path: Path, seed: int, **tags) -> Path:
    ds = dicom.dataset(**tags)
    arr = np.rint(chest_phantom(seed=seed) * 4095).astype(np.uint16)
    dicom.set_pixels(ds, arr, bits=12, window=dicom.auto_window(arr))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def aged_folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("aged")
    film(d / "child.dcm", 1, PatientAge="004Y", PatientBirthDate="")
    film(d / "adult.dcm", 2, PatientAge="", PatientBirthDate="19600101", StudyDate="20260101")
    film(d / "unknown.dcm", 3, PatientAge="", PatientBirthDate="")
    return d


def _images(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "worklist_images.csv", dtype=str, keep_default_na=False).set_index("path")


def test_a_model_with_two_points_applies_each_films_own_threshold(aged_folder: Path, tmp_path: Path,
                                                                  random_model_path: Path) -> None:
    model = two_point_model(random_model_path, tmp_path / "m", pediatric=0.999999, adult=1e-6)
    lm = load_model(model)
    assert lm.points.names == ("pediatric", "adult")
    res = scan(aged_folder, out=tmp_path / "out", model=lm, options=ScanOptions(workers=0, reports="none"))
    img = _images(res.out)
    assert img.loc["child.dcm", "population"] == "pediatric" and float(img.loc["child.dcm", "threshold"]) == 0.999999
    assert img.loc["child.dcm", "decision"] == "normal"  # a random model's score stays below 0.999999
    for name in ("adult.dcm", "unknown.dcm"):
        assert img.loc[name, "population"] == "adult" and float(img.loc[name, "threshold"]) == 1e-6
        assert img.loc[name, "decision"] == "abnormal"
    assert AGE_UNKNOWN in img.loc["unknown.dcm", "qc_notes"].split(";")
    assert AGE_UNKNOWN not in img.loc["adult.dcm", "qc_notes"].split(";")
    studies = pd.read_csv(res.studies_csv, dtype=str, keep_default_na=False)
    assert set(studies["population"]) == {"pediatric", "adult"}
    assert res.summary.operating_points.default == "adult"
    assert res.summary.images_scored_by_population == {"pediatric": 1, "adult": 2}

    # --threshold overrides every population, and the rows are decided again without decoding
    again = scan(aged_folder, out=tmp_path / "out", model=lm,
                 options=ScanOptions(threshold=1e-6, workers=0, reports="none"))
    img = _images(again.out)
    assert again.summary.files_processed == 0 and again.summary.rows_redecided_new_threshold == 1
    assert set(img["threshold"].astype(float)) == {1e-6} and set(img["decision"]) == {"abnormal"}
    assert img.loc["child.dcm", "population"] == "pediatric"


def test_single_threshold_model_behaves_as_before(aged_folder: Path, tmp_path: Path, random_model_path: Path):
    res = scan(aged_folder, out=tmp_path / "out", model=random_model_path,
               options=ScanOptions(threshold=0.3, workers=0, reports="none"))
    img = _images(res.out)
    assert set(img["population"]) == {ALL} and set(img["threshold"].astype(float)) == {0.3}
    assert not any(AGE_UNKNOWN in n for n in img["qc_notes"])
    assert res.summary.operating_points is None and "operating_points" not in res.summary.to_json()


def test_a_ledger_of_an_earlier_release_gets_the_population_column(tmp_path: Path) -> None:
    import sqlite3

    path = ledger_path(tmp_path)
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(path)
    db.executescript(Ledger.SCHEMA.replace("    population TEXT NOT NULL DEFAULT '',\n", ""))
    db.close()
    with Ledger(path) as ledger:
        assert "population" in ledger.columns()


def test_the_sr_carries_each_images_threshold_and_population(aged_folder: Path, tmp_path: Path,
                                                             random_model_path: Path) -> None:
    model = two_point_model(random_model_path, tmp_path / "m", pediatric=0.9, adult=0.1)
    res = scan(aged_folder, out=tmp_path / "out", model=model,
               options=ScanOptions(workers=0, reports="none", dicom_results=True))
    found = {}
    for f in (res.out / "dicom").rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        if ds.Modality != "SR":
            continue
        for item in ds.ContentSequence:
            if item.ValueType != "CONTAINER":
                continue
            named = {c.ConceptNameCodeSequence[0].CodeValue: c for c in item.ContentSequence}
            if "THRESHOLD" in named:
                found[named["POPULATION"].TextValue] = float(named["THRESHOLD"].MeasuredValueSequence[0].NumericValue)
    assert found == {"pediatric": 0.9, "adult": 0.1}


# --------------------------------------------------------------------------- calibrate and evaluate
@pytest.fixture(scope="module")
def aged_manifest(tmp_path_factory) -> Path:
    """Blob films, half labelled pediatric and half adult in the manifest's ``population`` column."""
    from tests.conftest import write_blob_set

    folder = tmp_path_factory.mktemp("aged_manifest")
    df = write_blob_set(folder, 40, seed=5, size=96)
    df["split"] = "val"
    df["dataset"] = np.where(np.arange(len(df)) < 20, "kids", "grown")
    df["population"] = np.where(np.arange(len(df)) < 20, "pediatric (1-5 y)", "adult, somewhere")
    df.to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def test_calibrate_one_population_and_evaluate_per_population(aged_manifest: Path, tmp_path: Path,
                                                              random_model_path: Path) -> None:
    from typer.testing import CliRunner

    from cxrscreen.cli.app import app
    from cxrscreen.training.evaluate import EvalConfig, evaluate, row_thresholds

    runner = CliRunner()
    first = tmp_path / "ped.json"
    res = runner.invoke(app, ["calibrate", str(random_model_path), str(aged_manifest), "--out", str(first),
                              "--population", "pediatric", "--precision", "fp32"])
    assert res.exit_code == 0, res.output
    lm = load_model(first)
    assert lm.points.names == ("pediatric", "adult") and lm.points.default == "adult"
    ped = lm.points["pediatric"]
    assert "pediatric rows" in ped.threshold_source and ped.calibration["n"] == 20
    assert lm.points["adult"].threshold == load_model(random_model_path).threshold  # untouched
    assert lm.threshold == lm.points["adult"].threshold

    second = tmp_path / "both.json"
    res = runner.invoke(app, ["calibrate", str(first), str(aged_manifest), "--out", str(second),
                              "--population", "adult", "--precision", "fp32", "--target-sensitivity", "0.6"])
    assert res.exit_code == 0, res.output
    both = load_model(second)
    assert both.points["pediatric"] == ped and both.points["adult"].calibration["n"] == 20
    # a model with points refuses a calibration that would ignore them, and unknown names
    for extra in ([], ["--population", "elderly"]):
        res = runner.invoke(app, ["calibrate", str(second), str(aged_manifest), "--out", str(tmp_path / "x.json"),
                                  "--precision", "fp32", *extra])
        assert res.exit_code == 2

    df = pd.read_csv(aged_manifest).assign(abspath=lambda d: [str(aged_manifest.parent / p) for p in d.path])
    thr = row_thresholds(both, df)
    assert set(thr[:20]) == {both.points["pediatric"].threshold} and set(thr[20:]) == {both.points["adult"].threshold}
    from cxrscreen.model.inference import choose_runtime

    cfg = EvalConfig("manifest.csv", "val", n_boot=100)
    result = evaluate(both, df, choose_runtime("cpu", "fp32"), tmp_path / "ev", cfg)
    m = result["metrics"]
    assert m["kids"]["threshold"] == both.points["pediatric"].threshold
    assert m["grown"]["threshold"] == both.points["adult"].threshold
    assert {"population:pediatric", "population:adult", "pooled"} <= set(m) and m["pooled"]["threshold"] is None
    assert result["meta"]["operating_points"] == {"pediatric": thr[0], "adult": thr[-1]}
    scores = pd.read_csv(tmp_path / "ev" / "scores.csv")
    assert list(scores["population"][:1]) == ["pediatric"]
