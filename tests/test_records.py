"""The record stages hand each other: one status type, typed ledger fields, the decision rule."""

from __future__ import annotations

import pytest

from cxrscreen.ingest.tags import INVALID_KEY
from cxrscreen.records import ABNORMAL, NORMAL, REVIEW, ImageRecord, Status


def test_status_parts_and_constructors() -> None:
    s = Status("error:not_dicom")
    assert (s.kind, s.reason, s.is_error, s.is_ok) == ("error", "not_dicom", True, False)
    assert s == "error:not_dicom" and isinstance(s, str)  # stored and written as its text
    assert Status.ok() == "ok" and Status.ok().reason == "" and Status.ok().is_ok
    assert Status.not_assessable("lateral_view").is_supplementary_view
    assert not Status.not_assessable("body_part_knee").is_supplementary_view
    assert not Status.error("lateral_view").is_supplementary_view  # an error is never an expected view


@pytest.mark.parametrize("text", ["", "ok:x", "error", "error:", "fine", "not_assessable", "warning:x"])
def test_status_refuses_what_is_not_one(text: str) -> None:
    with pytest.raises(ValueError, match="not a status"):
        Status(text)


def test_record_status_is_typed_even_when_given_text() -> None:
    r = ImageRecord(path="a.dcm", status="not_assessable:lateral_view")
    assert isinstance(r.status, Status) and r.status.reason == "lateral_view"
    assert r.threshold is None and r.model_sha256 == "" and r.run_id == ""
    assert "_threshold" not in r.tags


def test_all_notes_adds_the_invalid_tags_once() -> None:
    tags = {"PatientID": "", INVALID_KEY: "PatientID;StudyDate"}
    r = ImageRecord(path="a.dcm", status="ok", tags=tags, qc_notes=("invalid_tag:PatientID", "reduced_x2"))
    assert r.all_notes == ("invalid_tag:PatientID", "reduced_x2", "invalid_tag:StudyDate")
    assert ImageRecord(path="b.dcm", status="ok").all_notes == ()


def test_threshold_or_falls_back_only_when_none_was_recorded() -> None:
    r = ImageRecord(path="a.dcm", status="ok")
    assert r.threshold_or(0.4) == 0.4 and r.evolve(threshold=0.25).threshold_or(0.4) == 0.25


def test_study_key_and_which_images_flag_their_study() -> None:
    r = ImageRecord(path="x/a.dcm", status="ok", tags={"StudyInstanceUID": "1.2.3"}, decision=NORMAL)
    assert r.study_key == "1.2.3" and ImageRecord(path="b.dcm", status="ok").study_key == "file:b.dcm"
    assert not r.flags_study
    assert r.evolve(decision=ABNORMAL).flags_study
    assert r.evolve(decision=REVIEW).flags_study  # a scored film with a QC doubt
    assert ImageRecord(path="c", status="error:truncated", decision=REVIEW).flags_study
    assert not ImageRecord(path="d", status="not_assessable:lateral_view", decision=REVIEW).flags_study


def test_ledger_refuses_a_record_without_its_threshold_model_or_run(tmp_path) -> None:
    from cxrscreen.state.ledger import Ledger

    with Ledger(tmp_path / "l.sqlite") as led:
        full = ImageRecord(path="a.dcm", status="ok", probability=0.2, decision=NORMAL, sha256="s", threshold=0.3,
                           model_sha256="m" * 64, run_id="r1")
        for missing in ({"threshold": None}, {"model_sha256": ""}, {"run_id": ""}):
            with pytest.raises(ValueError, match="lacks"):
                led.put([full.evolve(**missing)])
        led.put([full])
        (back,) = led.records()
        assert back == full.evolve(scored_at=back.scored_at) and back.scored_at
