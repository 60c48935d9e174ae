import pandas as pd

from cxrscreen.outputs.worklist import IMAGE_COLUMNS, STUDY_COLUMNS, images_frame, studies_frame
from cxrscreen.records import ImageRecord, decide


def rec(path, study, status="ok", prob=None, thr=0.3, notes=()):
    tags = {"StudyInstanceUID": study, "_threshold": str(thr), "_model_sha256": "ab" * 32, "PatientID": "P",
            "Modality": "DX"}
    return ImageRecord(path=path, status=status, tags=tags, probability=prob, qc_notes=notes,
                       decision=decide(status, prob, thr, notes))


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


def test_study_aggregation():
    records = [
        rec("s1a", "s1", prob=0.1), rec("s1b", "s1", prob=0.2),  # normal, p = 0.2
        rec("s2a", "s2", prob=0.1), rec("s2b", "s2", "not_assessable:lateral_view"),  # review
        rec("s3a", "s3", prob=0.8), rec("s3b", "s3", "error:truncated"),  # abnormal wins
        rec("x", "", "error:not_dicom"),  # no study: its own row
    ]
    studies = studies_frame(images_frame(records, "m"))
    assert list(studies.columns) == STUDY_COLUMNS
    by = {r.paths: r for r in studies.itertuples()}
    assert by["s1a;s1b"].decision == "normal" and by["s1a;s1b"].probability == 0.2
    assert by["s2a;s2b"].decision == "review" and by["s2a;s2b"].probability == 0.1
    assert by["s3a;s3b"].decision == "abnormal" and by["s3a;s3b"].n_error == 1
    assert by["x"].decision == "review" and by["x"].StudyInstanceUID == ""
    assert list(studies["decision"]) == ["abnormal", "review", "review", "normal"]


def test_empty():
    assert studies_frame(images_frame([], "m")).empty
    assert isinstance(images_frame([], "m"), pd.DataFrame)
