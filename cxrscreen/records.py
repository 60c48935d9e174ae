"""The small immutable record that pipeline stages hand each other (pixels travel separately)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

ABNORMAL, REVIEW, NORMAL = "abnormal", "review", "normal"
DECISION_ORDER = {ABNORMAL: 0, REVIEW: 1, NORMAL: 2}


@dataclass(frozen=True)
class ImageRecord:
    """One input file and what the pipeline concluded about it."""

    path: str  # relative to the scanned folder, POSIX separators
    status: str  # ok | not_assessable:<reason> | error:<reason>
    tags: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    qc_notes: tuple[str, ...] = ()
    probability: float | None = None
    decision: str = REVIEW
    report: str = ""
    size: int = 0
    mtime_ns: int = 0

    def tag(self, keyword: str) -> str:
        return self.tags.get(keyword, "")

    def evolve(self, **changes: Any) -> ImageRecord:
        return replace(self, **changes)


def decide(status: str, probability: float | None, threshold: float, qc_notes: tuple[str, ...] = ()) -> str:
    """High-sensitivity decision: at/above threshold → abnormal; anything unscorable → review.

    A file that could not be assessed is never called normal. An ``ok`` image whose QC notes
    cast doubt on the score (suspected inverted polarity) is reviewed unless flagged abnormal.
    """
    if status != "ok" or probability is None:
        return REVIEW
    if probability >= threshold:
        return ABNORMAL
    if "polarity_suspect" in qc_notes:
        return REVIEW
    return NORMAL
