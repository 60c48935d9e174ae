"""The study's triage result as a Comprehensive SR (highdicom), in the source study.

Content tree (no template is claimed: TID 1500 has no place for per-image QC text)::

    CONTAINER (LN 18748-4 "Diagnostic Imaging Report")
      HAS OBS CONTEXT  device observer (TID 1004): cxrscreen, model name
      HAS CONCEPT MOD  TID 4019 Algorithm Identification: name = model name, version = weights sha256
      CONTAINS CODE    (99CXRSCREEN TRIAGE "Triage decision") = SCT Abnormal | SCT Normal | 99CXRSCREEN REVIEW
      CONTAINS NUM     (99CXRSCREEN THRESHOLD "Decision threshold"), UCUM "1" (the lead image's)
      CONTAINS TEXT    (DCM 121106 "Comment") = research-use disclaimer
      CONTAINS CONTAINER (99CXRSCREEN IMAGE "Image assessment"), one per image of the study:
        CONTAINS IMAGE|COMPOSITE (DCM 121324 "Source image") → the source instance
        CONTAINS TEXT  (99CXRSCREEN QCSTATUS) = ok | not_assessable:<reason> | error:<reason>
        CONTAINS TEXT  (99CXRSCREEN QCNOTES)  = QC notes, when any
        CONTAINS NUM   (99CXRSCREEN PABN "Probability of abnormality"), UCUM "1"   (scored images)
          INFERRED FROM IMAGE → the source instance
        CONTAINS NUM   (99CXRSCREEN THRESHOLD) = the image's own threshold            (scored images)
        CONTAINS TEXT  (99CXRSCREEN POPULATION) = its operating point's population    (scored images)
        CONTAINS CODE  (99CXRSCREEN TRIAGE) = the image's own decision                (scored images)

Every source instance of the study is listed in the Current Requested Procedure Evidence Sequence.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from cxrscreen.outputs.dicom.source import DISCLAIMER, MANUFACTURER, SOFTWARE_VERSION, StudyResult, is_referenceable
from cxrscreen.records import ABNORMAL, NORMAL, REVIEW, ImageRecord

SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "cxrscreen triage SR (research use)"

#: The private coding scheme of the concepts no standard code covers (PS3.16 §8: designators "99…").
SCHEME = "99CXRSCREEN"
CODING_SCHEME = hd.coding_schemes.CodingSchemeIdentificationItem(
    designator=SCHEME, name="cxrscreen triage concepts", responsible_organization=MANUFACTURER
)
TRIAGE_DECISION = Code("TRIAGE", SCHEME, "Triage decision")
DECISION_THRESHOLD = Code("THRESHOLD", SCHEME, "Decision threshold")
IMAGE_ASSESSMENT = Code("IMAGE", SCHEME, "Image assessment")
PROBABILITY = Code("PABN", SCHEME, "Probability of abnormality")
QC_STATUS = Code("QCSTATUS", SCHEME, "Quality control status")
QC_NOTES = Code("QCNOTES", SCHEME, "Quality control notes")
POPULATION = Code("POPULATION", SCHEME, "Operating point population")
DECISIONS: dict[str, Code] = {
    ABNORMAL: codes.SCT.Abnormal,
    NORMAL: codes.SCT.Normal,
    REVIEW: Code("REVIEW", SCHEME, "Needs human review"),
}
NO_UNITS = codes.UCUM.NoUnits  # UCUM "1"

_CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS
_INFERRED_FROM = hd.sr.RelationshipTypeValues.INFERRED_FROM


def _reference(record: ImageRecord, relationship: hd.sr.RelationshipTypeValues) -> hd.sr.ContentItem:
    """IMAGE item for an instance with pixel data, COMPOSITE for anything else (an SR, a DICOMDIR…)."""
    item = hd.sr.ImageContentItem if record.tag("HasPixelData") else hd.sr.CompositeContentItem
    return item(name=codes.DCM.SourceImage, referenced_sop_class_uid=record.tag("SOPClassUID"),
                referenced_sop_instance_uid=record.tag("SOPInstanceUID"), relationship_type=relationship)


def _image_assessment(record: ImageRecord, scored: bool) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(name=IMAGE_ASSESSMENT, relationship_type=_CONTAINS)
    items: list[hd.sr.ContentItem] = []
    if is_referenceable(record):
        items.append(_reference(record, _CONTAINS))
    items.append(hd.sr.TextContentItem(name=QC_STATUS, value=str(record.status), relationship_type=_CONTAINS))
    notes = ";".join(record.all_notes)
    if notes:
        items.append(hd.sr.TextContentItem(name=QC_NOTES, value=notes, relationship_type=_CONTAINS))
    if scored:
        num = hd.sr.NumContentItem(name=PROBABILITY, value=float(record.probability), unit=NO_UNITS,
                                   relationship_type=_CONTAINS)
        if is_referenceable(record):
            num.ContentSequence = hd.sr.ContentSequence([_reference(record, _INFERRED_FROM)])
        items.append(num)
        if record.threshold is not None:
            items.append(hd.sr.NumContentItem(name=DECISION_THRESHOLD, value=float(record.threshold), unit=NO_UNITS,
                                              relationship_type=_CONTAINS))
        if record.population:
            items.append(hd.sr.TextContentItem(name=POPULATION, value=record.population, relationship_type=_CONTAINS))
        items.append(hd.sr.CodeContentItem(name=TRIAGE_DECISION, value=DECISIONS[record.decision],
                                           relationship_type=_CONTAINS))
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def content(result: StudyResult) -> hd.sr.ContainerContentItem:
    """The document's root container (see the module docstring)."""
    model = result.model
    root = hd.sr.ContainerContentItem(name=codes.LN.DiagnosticImagingReport, is_content_continuous=False)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[MANUFACTURER, model.sha256]), name=MANUFACTURER,
        manufacturer_name=MANUFACTURER, model_name=model.name)
    items: list[hd.sr.ContentItem] = [
        *hd.sr.ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=device),
        *hd.sr.AlgorithmIdentification(name=model.name, version=model.sha256),
        hd.sr.CodeContentItem(name=TRIAGE_DECISION, value=DECISIONS[result.study.decision],
                              relationship_type=_CONTAINS),
        hd.sr.NumContentItem(name=DECISION_THRESHOLD, value=result.threshold, unit=NO_UNITS,
                             relationship_type=_CONTAINS),
        hd.sr.TextContentItem(name=codes.DCM.Comment, value=DISCLAIMER, relationship_type=_CONTAINS),
    ]
    scored = {id(r) for r in result.scored}
    items += [_image_assessment(r, id(r) in scored) for r in result.study.records]
    root.ContentSequence = hd.sr.ContentSequence(items)
    return root


def build(result: StudyResult) -> hd.sr.ComprehensiveSR:
    """The study's Comprehensive SR: a new series in the source study, UIDs derived from the result."""
    return hd.sr.ComprehensiveSR(
        evidence=result.evidence(),
        content=content(result),
        series_instance_uid=result.uid("sr/series"),
        series_number=SERIES_NUMBER,
        sop_instance_uid=result.uid("sr/instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # an automated triage, never the definitive report
        series_description=SERIES_DESCRIPTION,
        manufacturer_model_name=result.model.name[:64],
        software_versions=SOFTWARE_VERSION,
        coding_schemes=[CODING_SCHEME],
        specific_character_set=result.header.get("SpecificCharacterSet"),
    )
