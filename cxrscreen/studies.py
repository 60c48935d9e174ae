"""Studies: the records of one study and the one study decision, computed once per run.

The worklists, report selection, study PDFs, DICOM results and the summary all read these
:class:`Study` values; nothing else decides a study. The rules (:func:`study_decision`), in order:

1. ``abnormal`` if any image is abnormal (at or above its own population's threshold);
2. ``review`` if any image casts a doubt: an ``error:*``, a ``not_assessable:*`` other than a
   supplementary view (wrong body part or modality, blank, raw data…), or a scored image whose own
   decision is ``review`` (a QC note such as ``polarity_suspect``);
3. ``review`` if no image was scored (no assessable frontal image);
4. ``normal`` otherwise. Lateral, oblique and decubitus views (``Status.is_supplementary_view``) are
   listed as not analysed but do not make a study with a scored frontal image ``review``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

from cxrscreen.options import ReportPolicy
from cxrscreen.records import ABNORMAL, NORMAL, REVIEW, ImageRecord


def study_decision(records: Sequence[ImageRecord]) -> str:
    """The study's decision from its images' own decisions and statuses (the module's rules)."""
    if any(r.decision == ABNORMAL for r in records):
        return ABNORMAL
    doubt = any((not r.status.is_ok and not r.status.is_supplementary_view) or (r.status.is_ok and r.decision == REVIEW)
                for r in records)
    scored = any(r.status.is_ok and r.probability is not None for r in records)
    return REVIEW if doubt or not scored else NORMAL


def page_order(r: ImageRecord) -> tuple:
    """Scored images first, most suspicious first; then the rest by path."""
    return (r.probability is None, -(r.probability or 0.0), r.path)


@dataclass(frozen=True)
class Study:
    """The records of one study (in :func:`page_order`) and its decision."""

    key: str  # StudyInstanceUID, or "file:<path>" for a file without one
    records: tuple[ImageRecord, ...]
    decision: str

    @classmethod
    def of(cls, key: str, records: Iterable[ImageRecord]) -> Study:
        recs = tuple(sorted(records, key=page_order))
        return cls(key, recs, study_decision(recs))

    def first(self, keyword: str) -> str:
        """The first non-empty value of a tag among the study's images."""
        return next((r.tag(keyword) for r in self.records if r.tag(keyword)), "")

    @property
    def study_uid(self) -> str:
        """StudyInstanceUID, ``""`` for a file outside any study."""
        return "" if self.key.startswith("file:") else self.key

    @property
    def scored(self) -> tuple[ImageRecord, ...]:
        """The images the model scored (assessable, with a probability), most suspicious first."""
        return tuple(r for r in self.records if r.status.is_ok and r.probability is not None)

    @property
    def probability(self) -> float | None:
        """The highest probability among the scored images."""
        return max((float(r.probability) for r in self.scored), default=None)  # type: ignore[arg-type]

    @property
    def lead(self) -> ImageRecord:
        """The image that sets the study's operating point: the most suspicious scored one, else the first."""
        return (self.scored or self.records)[0]

    @property
    def threshold(self) -> float | None:
        return self.lead.threshold

    @property
    def population(self) -> str:
        return self.lead.population

    @property
    def report(self) -> str:
        return next((r.report for r in self.records if r.report), "")

    def with_report(self, rel: str) -> Study:
        """This study with every image's report path set to ``rel``."""
        return replace(self, records=tuple(r if r.report == rel else r.evolve(report=rel) for r in self.records))


def group_studies(records: Iterable[ImageRecord]) -> list[Study]:
    """Group records by :attr:`ImageRecord.study_key`, in key order, each with its decision."""
    groups: dict[str, list[ImageRecord]] = {}
    for r in records:
        groups.setdefault(r.study_key, []).append(r)
    return [Study.of(k, v) for k, v in sorted(groups.items())]


def study_batches(batches: Iterable[Iterable[ImageRecord]]) -> Iterator[list[Study]]:
    """The studies of records that arrive in study-key order, batch after batch
    (:meth:`Ledger.records_by_study <cxrscreen.state.ledger.Ledger.records_by_study>`): one list of studies
    per batch, in key order, a study's records never split between two lists (the last study of a batch
    waits for the next). The same studies as :func:`group_studies` of all the records, holding one batch."""
    key: str | None = None
    held: list[ImageRecord] = []
    for batch in batches:
        done: list[Study] = []
        for r in batch:
            k = r.study_key
            if k != key:
                if key is not None:
                    if k < key:
                        raise ValueError("records out of study order")
                    done.append(Study.of(key, held))
                key, held = k, []
            held.append(r)
        if done:
            yield done
    if key is not None:
        yield [Study.of(key, held)]


def wanted(study: Study, policy: ReportPolicy | str) -> bool:
    """Whether ``policy`` asks for a report of ``study`` (``flagged``: abnormal or review)."""
    policy = ReportPolicy(policy)
    return policy is ReportPolicy.all or (policy is ReportPolicy.flagged and study.decision in (ABNORMAL, REVIEW))
