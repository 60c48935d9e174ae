"""The study's PDF report as an Encapsulated PDF instance (PS3.3 A.45.1), in the source study.

highdicom has no class for this IOD; :class:`EncapsulatedPDF` is one in its manner: a
:class:`highdicom.SOPClass` (Patient, General Study, Patient Study, General Series, General
Equipment, SOP Common) plus the Encapsulated Document Series, SC Equipment and Encapsulated
Document modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian

from cxrscreen.outputs.dicom.source import MANUFACTURER, SOFTWARE_VERSION, StudyResult

SERIES_NUMBER = 9902
SERIES_DESCRIPTION = "cxrscreen triage report PDF (research use)"
DOCUMENT_TITLE = "cxrscreen triage report (research use, not for diagnosis)"
MIME_TYPE = "application/pdf"


@dataclass(frozen=True)
class InstanceIds:
    """Where a new instance goes: its series (UID, number, description) and its own UID and number."""

    series_instance_uid: str
    series_number: int
    sop_instance_uid: str
    instance_number: int = 1
    series_description: str | None = None


@dataclass(frozen=True)
class Equipment:
    """The software that made an instance (General Equipment module)."""

    manufacturer: str = MANUFACTURER
    manufacturer_model_name: str | None = None
    software_versions: str | None = None


class EncapsulatedPDF(hd.SOPClass):
    """An Encapsulated PDF instance holding ``document`` in the study of ``source``."""

    def __init__(
        self,
        source: Dataset,
        document: bytes,
        ids: InstanceIds,
        document_title: str,
        source_instances: Sequence[Dataset] = (),
        equipment: Equipment = Equipment(),
    ) -> None:
        """``source``: an instance of the study (or a dataset standing for one, with its SOPClassUID and
        SOPInstanceUID: highdicom picks the modules by that SOP class) whose Patient and General Study
        attributes are copied; ``source_instances`` (datasets with SOPClassUID and SOPInstanceUID):
        the instances the document was derived from."""
        if not document.startswith(b"%PDF-"):
            raise ValueError("the encapsulated document is not a PDF")
        super().__init__(
            study_instance_uid=source.StudyInstanceUID,
            series_instance_uid=ids.series_instance_uid,
            series_number=ids.series_number,
            sop_instance_uid=ids.sop_instance_uid,
            sop_class_uid=EncapsulatedPDFStorage,
            instance_number=ids.instance_number,
            modality="DOC",
            manufacturer=equipment.manufacturer,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            patient_id=source.get("PatientID"),
            patient_name=source.get("PatientName"),
            patient_birth_date=source.get("PatientBirthDate"),
            patient_sex=source.get("PatientSex"),
            accession_number=source.get("AccessionNumber"),
            study_id=source.get("StudyID"),
            study_date=source.get("StudyDate"),
            study_time=source.get("StudyTime"),
            referring_physician_name=source.get("ReferringPhysicianName"),
            series_description=ids.series_description,
            manufacturer_model_name=equipment.manufacturer_model_name,
            software_versions=equipment.software_versions,
            specific_character_set=source.get("SpecificCharacterSet"),
        )
        self.copy_patient_and_study_information(source)
        # SC Equipment
        self.ConversionType = "WSD"  # workstation: the document was made by software
        # Encapsulated Document
        self.AcquisitionDateTime = None  # Type 2
        self.BurnedInAnnotation = "YES"  # a report names the patient
        self.DocumentTitle = document_title
        self.ConceptNameCodeSequence = [hd.sr.CodedConcept.from_code(codes.LN.DiagnosticImagingReport)]
        if source_instances:
            self.SourceInstanceSequence = [_sop_reference(ds) for ds in source_instances]
        self.MIMETypeOfEncapsulatedDocument = MIME_TYPE
        self.EncapsulatedDocumentLength = len(document)  # before padding (PS3.3 C.24.2.1)
        self.EncapsulatedDocument = document + b"\x00" * (len(document) % 2)  # OB: even length


def _sop_reference(ds: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return item


def report_path(out: Path, result: StudyResult) -> Path | None:
    """The study's PDF report under ``out``, if the ledger names one that exists inside ``out``."""
    name = next((r.report for r in result.study.records if r.report), "")
    if not name:
        return None
    root = out.resolve()
    path = (root / name).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


def build(result: StudyResult, document: bytes) -> EncapsulatedPDF:
    """The study's report ``document`` as an Encapsulated PDF: a new series, UIDs derived from the result."""
    return EncapsulatedPDF(
        source=result.evidence()[0],
        document=document,
        ids=InstanceIds(result.uid("pdf/series"), SERIES_NUMBER, result.uid("pdf/instance"), 1, SERIES_DESCRIPTION),
        document_title=DOCUMENT_TITLE,
        source_instances=result.evidence(),
        equipment=Equipment(manufacturer_model_name=result.model.name[:64], software_versions=SOFTWARE_VERSION),
    )
