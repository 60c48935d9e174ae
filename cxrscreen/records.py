"""What pipeline stages hand each other: a film's status and its small immutable record (pixels travel separately)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from cxrscreen.ingest.tags import tag_notes

ABNORMAL, REVIEW, NORMAL = "abnormal", "review", "normal"
DECISION_ORDER = {ABNORMAL: 0, REVIEW: 1, NORMAL: 2}
STATUS_KINDS = ("ok", "not_assessable", "error")
#: Reasons of the expected non-frontal views of a chest exam (see :attr:`Status.is_supplementary_view`).
SUPPLEMENTARY_VIEW_REASONS = ("lateral_view", "oblique_view", "decubitus_view")


class Status(str):
    """A film's status: ``ok``, ``not_assessable:<reason>`` or ``error:<reason>``.

    A ``str`` (stored in the ledger, compared and written to CSV as that text) that knows its parts,
    so no module parses the text itself: ``Status("error:not_dicom").kind == "error"``.
    """

    __slots__ = ()

    def __new__(cls, value: str) -> Status:
        kind, sep, reason = str(value).partition(":")
        if kind not in STATUS_KINDS or (kind == "ok") == bool(sep) or (sep and not reason):
            raise ValueError(f"not a status: {value!r} (ok, not_assessable:<reason> or error:<reason>)")
        return super().__new__(cls, value)

    @classmethod
    def ok(cls) -> Status:
        return cls("ok")

    @classmethod
    def not_assessable(cls, reason: str) -> Status:
        return cls(f"not_assessable:{reason}")

    @classmethod
    def error(cls, reason: str) -> Status:
        return cls(f"error:{reason}")

    @property
    def kind(self) -> str:
        return self.partition(":")[0]

    @property
    def reason(self) -> str:
        return self.partition(":")[2]

    @property
    def is_ok(self) -> bool:
        return self.kind == "ok"

    @property
    def is_error(self) -> bool:
        return self.kind == "error"

    @property
    def is_supplementary_view(self) -> bool:
        """A lateral, oblique or decubitus view: expected in a chest exam, not read by the model, and
        (unlike every other ``not_assessable``/``error`` status) no doubt on its study."""
        return self.kind == "not_assessable" and self.reason in SUPPLEMENTARY_VIEW_REASONS


OK = Status.ok()


@dataclass(frozen=True)
class ImageRecord:
    """One input file and what the pipeline concluded about it (a ledger row)."""

    path: str  # relative to the scanned folder, POSIX separators
    status: Status
    tags: dict[str, str] = field(default_factory=dict, hash=False, compare=False)  # DICOM keywords only
    qc_notes: tuple[str, ...] = ()
    probability: float | None = None
    decision: str = REVIEW
    report: str = ""
    size: int = 0
    mtime_ns: int = 0
    sha256: str = ""  # of the bytes that were read and scored ('' when unreadable)
    threshold: float | None = None  # the decision threshold applied
    population: str = ""  # the operating point's population (cxrscreen.populations); "" before scoring
    model_sha256: str = ""  # weights that scored it
    run_id: str = ""  # the run that scored it
    scored_at: str = ""  # local time, ISO 8601

    def __post_init__(self) -> None:
        if not isinstance(self.status, Status):
            object.__setattr__(self, "status", Status(self.status))

    def tag(self, keyword: str) -> str:
        return self.tags.get(keyword, "")

    @property
    def study_key(self) -> str:
        """StudyInstanceUID, or ``file:<path>`` for a file without one (a study of its own)."""
        return self.tag("StudyInstanceUID") or f"file:{self.path}"

    @property
    def flags_study(self) -> bool:
        """Whether this image alone makes its study ``abnormal`` or ``review`` (``outputs.worklist`` rules)."""
        return self.decision == ABNORMAL or (self.decision == REVIEW and not self.status.is_supplementary_view)

    @property
    def all_notes(self) -> tuple[str, ...]:
        """Its QC notes, then an ``invalid_tag:<keyword>`` note per header value dropped as invalid
        (:func:`cxrscreen.ingest.tags.tag_notes`), each once: what worklists, reports and SR show."""
        return tuple(dict.fromkeys((*self.qc_notes, *tag_notes(self.tags))))

    def threshold_or(self, default: float) -> float:
        """The decision threshold applied to it; ``default`` (the model's) when none was recorded."""
        return default if self.threshold is None else self.threshold

    def evolve(self, **changes: Any) -> ImageRecord:
        return replace(self, **changes)


def decide(status: str, probability: float | None, threshold: float, qc_notes: tuple[str, ...] = ()) -> str:
    """High-sensitivity decision: at/above threshold → abnormal; anything unscorable → review.

    A file that could not be assessed is never called normal. An ``ok`` image whose QC notes
    cast doubt on the score (suspected inverted polarity) is reviewed unless flagged abnormal.
    """
    if status != OK or probability is None:
        return REVIEW
    if probability >= threshold:
        return ABNORMAL
    if "polarity_suspect" in qc_notes:
        return REVIEW
    return NORMAL
