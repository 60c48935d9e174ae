import pandas as pd
import pytest

from cxrscreen.outputs.worklist import IMAGE_COLUMNS, STUDY_COLUMNS, images_frame, studies_frame
from cxrscreen.records import ImageRecord, decide
from cxrscreen.studies import group_studies


def rec(path, study, status="ok", prob=None, thr=0.3, notes=()):
    tags = {"StudyInstanceUID": study, "PatientID": "P", "Modality": "DX"}
    return ImageRecord(path=path, status=status, tags=tags, probability=prob, qc_notes=notes,
                       decision=decide(status, prob, thr, notes), threshold=thr, model_sha256="ab" * 32)


def test_decide_rules():
    assert decide("ok", 0.31, 0.3) == "abnormal"
    assert decide("ok", 0.3, 0.3) == "abnormal"
    assert decide("ok", 0.29, 0.3) == "normal"
    assert decide("ok", 0.29, 0.3, ("polarity_suspect",)) == "review"
    assert decide("not_assessable:lateral_view", None, 0.3) == "review"
    assert decide("error:truncated", None, 0.3) == "review"


def test_image_order_and_columns():
    records = [rec("n1", "s1", prob=0.1), rec("a1", "s2", prob=0.5), rec("r1", "s3", "error:x"),
               rec("a2", "s4", prob=0.9), rec("n2", "s5", prob=0.2)]
    df = images_frame(records, "m")
    assert list(df.columns) == IMAGE_COLUMNS
    assert list(df["path"]) == ["a2", "a1", "r1", "n2", "n1"]
    assert list(df["decision"]) == ["abnormal", "abnormal", "review", "normal", "normal"]
    assert list(df["rank"]) == [1, 2, 3, 4, 5]


def study_row(*records: ImageRecord) -> pd.Series:
    studies = studies_frame(group_studies(records), "m")
    assert len(studies) == 1
    return studies.iloc[0]


def test_study_aggregation():
    records = [
        rec("s1a", "s1", prob=0.1), rec("s1b", "s1", prob=0.2),  # normal, p = 0.2
        rec("s2a", "s2", prob=0.1), rec("s2b", "s2", "not_assessable:body_part_knee"),  # review
        rec("s3a", "s3", prob=0.8), rec("s3b", "s3", "error:truncated"),  # abnormal wins
        rec("x", "", "error:not_dicom"),  # no study: its own row
    ]
    studies = studies_frame(group_studies(records), "m")
    assert list(studies.columns) == STUDY_COLUMNS
    by = {r.paths: r for r in studies.itertuples()}
    assert by["s1a;s1b"].decision == "normal" and by["s1a;s1b"].probability == 0.2
    assert by["s1a;s1b"].not_analysed == ""
    assert by["s2a;s2b"].decision == "review" and by["s2a;s2b"].probability == 0.1
    assert by["s3a;s3b"].decision == "abnormal" and by["s3a;s3b"].n_error == 1
    assert by["s3a;s3b"].not_analysed == "s3b (error:truncated)"
    assert by["x"].decision == "review" and by["x"].StudyInstanceUID == ""
    assert list(studies["decision"]) == ["abnormal", "review", "review", "normal"]


@pytest.mark.parametrize("view", ["lateral_view", "oblique_view", "decubitus_view"])
def test_supplementary_view_does_not_make_a_scored_study_review(view):
    """PA scored normal + lateral (or oblique, decubitus): normal; the extra view is listed as not analysed."""
    row = study_row(rec("pa", "s", prob=0.1), rec("lat", "s", f"not_assessable:{view}"))
    assert row.decision == "normal" and row.probability == 0.1
    assert row.n_images == 2 and row.n_assessable == 1 and row.n_not_assessable == 1
    assert row.not_analysed == f"lat (not_assessable:{view})"
    assert row.statuses == f"not_assessable:{view};ok"


def test_supplementary_view_keeps_its_own_image_row():
    images = images_frame([rec("pa", "s", prob=0.1), rec("lat", "s", "not_assessable:lateral_view")], "m")
    lat = images.set_index("path").loc["lat"]
    assert lat.status == "not_assessable:lateral_view" and lat.decision == "review"  # never "normal" itself


def test_abnormal_frontal_with_lateral_is_abnormal():
    row = study_row(rec("pa", "s", prob=0.9), rec("lat", "s", "not_assessable:lateral_view"))
    assert row.decision == "abnormal" and row.n_abnormal == 1


def test_no_assessable_frontal_image_is_review():
    row = study_row(rec("lat", "s", "not_assessable:lateral_view"), rec("obl", "s", "not_assessable:oblique_view"))
    assert row.decision == "review" and row.n_assessable == 0 and pd.isna(row.probability)
    assert row.not_analysed == "lat (not_assessable:lateral_view);obl (not_assessable:oblique_view)"


@pytest.mark.parametrize("status", [
    "error:truncated", "error:decode_failed", "error:unreadable_file",  # a file we could not read
    "not_assessable:blank_image", "not_assessable:body_part_knee",  # a doubt: wrong or empty image
    "not_assessable:modality_ct", "not_assessable:for_processing", "not_assessable:too_small",
    "not_assessable:no_pixel_data",
])
def test_error_or_doubtful_image_makes_a_scored_study_review(status):
    row = study_row(rec("pa", "s", prob=0.1), rec("lat", "s", "not_assessable:lateral_view"), rec("z", "s", status))
    assert row.decision == "review" and row.probability == 0.1
    assert row.not_analysed == f"lat (not_assessable:lateral_view);z ({status})"


def test_qc_note_on_the_scored_image_makes_the_study_review():
    suspect = rec("pa", "s", prob=0.1, notes=("polarity_suspect",))
    row = study_row(suspect, rec("lat", "s", "not_assessable:lateral_view"))
    assert row.decision == "review" and row.not_analysed == "lat (not_assessable:lateral_view)"
    # a second, clean frontal image does not lift the doubt
    row = study_row(suspect, rec("ap", "s", prob=0.05))
    assert row.decision == "review"


def test_empty():
    assert studies_frame([], "m").empty
    assert isinstance(images_frame([], "m"), pd.DataFrame)
