"""What every result object of a study is built from: the source study's header, its instances, the UIDs.

Nothing is read again from the source files: the patient and study attributes and the instance UIDs
come from the tags the ledger stored (:data:`cxrscreen.ingest.decode.TAG_KEYWORDS`, already validated
by VR), as minimal pydicom datasets of the kind highdicom takes as ``evidence``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

from cxrscreen.model.meta import ModelInfo
from cxrscreen.records import ImageRecord
from cxrscreen.studies import Study
from cxrscreen.version import __version__

#: Patient and General Study attributes copied from the source study (Type 2 ones are written empty).
PATIENT_STUDY_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "StudyDescription",
)
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")
_INSTANCE_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
_PATIENT_SEX = ("M", "F", "O")

MANUFACTURER = "cxrscreen"
SOFTWARE_VERSION = __version__
#: Written on every object: what the results are and are not.
DISCLAIMER = "Research use only, not a medical device: automated triage, not a diagnosis."


def result_uid(study_uid: str, model_sha256: str, threshold: float, kind: str) -> UID:
    """A UID derived from the source study, the weights, the threshold and the object kind
    (``"sr/series"``, ``"pdf/instance"``…): a rerun with the same inputs gets the same UIDs."""
    return generate_uid(entropy_srcs=[study_uid, model_sha256, repr(float(threshold)), kind])


def patient_study_header(study: Study) -> Dataset:
    """The source study's Patient and General Study attributes (first non-empty value among its images)."""
    ds = Dataset()
    for kw in PATIENT_STUDY_KEYWORDS:
        value = study.first(kw)
        if kw == "PatientSex" and value not in _PATIENT_SEX:
            value = ""  # a non-standard value (e.g. "U") would make the object invalid; Type 2: empty
        if value or kw in _TYPE2:
            setattr(ds, kw, value)
    if not all(str(v.value).isascii() for v in ds):
        ds.SpecificCharacterSet = "ISO_IR 192"  # the ledger holds decoded text: write it as UTF-8
    return ds


def is_referenceable(record: ImageRecord) -> bool:
    """Whether the record's header gave all four UIDs an instance reference needs."""
    return all(record.tag(kw) for kw in _INSTANCE_KEYWORDS)


def instance_dataset(header: Dataset, record: ImageRecord) -> Dataset:
    """A minimal dataset standing for the source instance: patient/study header plus its UIDs."""
    ds = Dataset()
    ds.update(header)
    for kw in _INSTANCE_KEYWORDS:
        setattr(ds, kw, record.tag(kw))
    return ds


@dataclass(frozen=True)
class StudyResult:
    """One study's scored outcome, as every result object of it sees it."""

    study: Study
    scored: tuple[ImageRecord, ...]  # the images scored by ``model`` (probability set)
    model: ModelInfo  # its metadata: name, weights sha256, default threshold
    threshold: float
    header: Dataset

    @classmethod
    def of(cls, study: Study, model: ModelInfo) -> StudyResult | None:
        """None when the study has no image scored by ``model`` (nothing to report) or no StudyInstanceUID."""
        scored = tuple(r for r in study.records if r.probability is not None and r.model_sha256 == model.sha256)
        if not scored or study.key.startswith("file:"):
            return None
        threshold = scored[0].threshold_or(model.threshold)
        return cls(study, scored, model, float(threshold), patient_study_header(study))

    @property
    def study_uid(self) -> str:
        return self.study.key

    def uid(self, kind: str) -> UID:
        return result_uid(self.study_uid, self.model.sha256, self.threshold, kind)

    def evidence(self) -> list[Dataset]:
        """Minimal datasets of the study's referenceable source instances, scored ones first (highdicom
        copies the patient and study modules from the first, by the modules of its SOP class)."""
        scored = {id(r) for r in self.scored}
        ordered = [*self.scored, *(r for r in self.study.records if id(r) not in scored)]
        return [instance_dataset(self.header, r) for r in ordered if is_referenceable(r)]
