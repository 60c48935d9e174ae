"""``Timings.stage``: wall time per stage, added up, also when the stage raises."""

from __future__ import annotations

import time

import pytest

from cxrscreen.timings import Timings


def test_stages_add_up_and_count_a_stage_that_raises() -> None:
    t = Timings()
    for _ in range(2):
        with t.stage("pdf"):
            time.sleep(0.01)
    with pytest.raises(ValueError), t.stage("pages"):
        raise ValueError("failed")
    assert t["pdf"] >= 0.02 and t["pages"] >= 0.0 and "pages" in t
    t["decode"] += 1.5  # still a Counter for sums measured elsewhere
    assert dict(t)["decode"] == 1.5
