"""The run's typed contracts: RunSummary (run.json) and the progress events a scan emits."""

from __future__ import annotations

import json
from pathlib import Path

from cxrscreen import scan
from cxrscreen.events import BatchScored, Event, ReportWritten, ScanStarted
from cxrscreen.options import ScanOptions
from cxrscreen.populations import OperatingPoints
from cxrscreen.runs import SUMMARY_FORMAT, DriftCheck, ModelRef, RunSummary, WorklistTotals
from tests.factory import chest_phantom, make_dicom


def test_run_summary_round_trips_through_run_json() -> None:
    s = RunSummary("20261206T010203Z", folder="/in", out="/out", model=ModelRef("m", "ab" * 32, "/m.json"),
                   threshold=0.25, files_found=3, files_processed=3, images_scored=2,
                   decisions={"abnormal": 1, "normal": 1, "review": 1}, statuses={"ok": 2, "error:truncated": 1},
                   worklist_totals=WorklistTotals(3, 2, {"abnormal": 1, "review": 1}), flag_rate=0.5,
                   probability_quantiles={"0.5": 0.4}, durations_s={"discover": 0.01}, exit_code=1,
                   operating_points=OperatingPoints.standard(0.3, 0.2), images_scored_by_population={"adult": 2},
                   resumed_runs=("20261205T010203Z",), drift=DriftCheck(2, warnings=("flag_rate 0.5 vs 0.1",)))
    data = json.loads(json.dumps(s.to_json()))  # what run.json holds
    assert data["summary_format"] == SUMMARY_FORMAT and data["resumed_runs"] == ["20261205T010203Z"]
    assert data["operating_points"]["default"] == "adult" and data["drift"]["warnings"] == ["flag_rate 0.5 vs 0.1"]
    assert RunSummary.from_json(data) == s
    assert s.errors == 1 and s.median_probability == 0.4


def test_an_older_run_json_is_read_with_empty_values_for_what_it_lacks() -> None:
    old = {"run_id": "20261120T020000Z", "files_found": 5, "decisions": {"normal": 5}, "flag_rate": None,
           "drift": {"compared_runs": 0, "bounds": {}, "warnings": [], "baseline": {}}, "something_new": 1}
    s = RunSummary.from_json(old)
    assert s.files_found == 5 and s.images_scored == 0 and s.operating_points is None and s.resumed_runs == ()
    assert "operating_points" not in s.to_json()  # a single-threshold run writes no such key


def test_a_scan_reports_typed_progress_in_order(tmp_path: Path, random_model) -> None:
    for i in range(5):
        make_dicom(tmp_path / "in" / f"{i}.dcm", chest_phantom(seed=i), accession=f"A{i}")
    events: list[Event] = []
    res = scan(tmp_path / "in", tmp_path / "out", model=random_model,
               options=ScanOptions(threshold=1e-6, batch_size=2, workers=0, reports="all"), progress=events.append)
    assert isinstance(events[0], ScanStarted) and events[0] == ScanStarted(res.run_id, 5, 5, 0)
    batches = [e for e in events if isinstance(e, BatchScored)]
    assert [b.done for b in batches] == [2, 4, 5] and {b.total for b in batches} == {5}
    reports = [e for e in events if isinstance(e, ReportWritten)]
    assert reports and reports[-1].done == reports[-1].total == 5  # one study each, all flagged
    assert events.index(batches[-1]) < events.index(reports[0])
    on_disk = json.loads((res.run_dir / "run.json").read_text())
    assert RunSummary.from_json(on_disk) == res.summary
