"""``pull``: find a PACS's CR/DX studies by date (C-FIND) and fetch their images (C-GET) into a folder;
from a DICOMweb service, QIDO-RS and WADO-RS (:mod:`cxrscreen.pacs.web`) into the same layout.

Layout: ``DIR/<StudyInstanceUID>/<SOPInstanceUID>.dcm``, each file written atomically (mode 0640)
byte for byte as the PACS sent it (no transcoding here: every transfer syntax below is proposed in
a presentation context of its own, so the PACS can send what it stores). An instance whose file
already exists is not fetched again, so an interrupted pull resumes where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.presentation import build_role
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from cxrscreen.logs import file_handle
from cxrscreen.pacs.address import Address, WebEndpoint
from cxrscreen.pacs.common import DateRangeError, PullResult, date_range, log_pull_end, safe_name
from cxrscreen.pacs.link import Link
from cxrscreen.pacs.net import MAX_CONTEXTS, PacsError, associate, make_ae
from cxrscreen.pacs.tls import client_context
from cxrscreen.pacs.web import pull_web
from cxrscreen.state.atomic import atomic_write_bytes

__all__ = ["SOP_CLASSES", "TRANSFER_SYNTAXES", "DateRangeError", "PullResult", "date_range", "pull", "safe_name",
           "storage_contexts"]

log = logging.getLogger("cxrscreen.pacs")

#: Storage SOP classes fetched for each modality (the C-GET sub-operations' abstract syntaxes).
SOP_CLASSES: dict[str, tuple[UID, ...]] = {
    "CR": (ComputedRadiographyImageStorage,),
    "DX": (DigitalXRayImageStorageForPresentation, DigitalXRayImageStorageForProcessing),
}
#: Transfer syntaxes accepted for the images, each proposed in a presentation context of its own.
TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1,
    JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless,
)

_SUCCESS, _PENDING = 0x0000, (0xFF00, 0xFF01)


@dataclass(frozen=True)
class _Instance:
    study: str
    series: str
    sop: str


def storage_contexts(modalities: Iterable[str]) -> list[tuple[UID, UID]]:
    """(SOP class, transfer syntax) of each storage presentation context proposed for the C-GET."""
    sops = dict.fromkeys(s for m in modalities for s in SOP_CLASSES[m])
    return [(sop, ts) for sop in sops for ts in TRANSFER_SYNTAXES]


def pull(
    source: Address | WebEndpoint,
    dest: Path,
    *,
    since: date | str | None = None,
    until: date | str | None = None,
    modalities: Iterable[str] = ("CR", "DX"),
    link: Link | None = None,
) -> PullResult:
    """Fetch the CR/DX images of the studies of ``source`` dated ``since``–``until`` into ``dest``.

    ``since``/``until`` are dates or ``YYYYMMDD`` text (:class:`DateRangeError` otherwise). ``source``
    is a DIMSE :class:`Address` (C-FIND, C-GET; over TLS with ``link.tls``) or a DICOMweb
    :class:`WebEndpoint` (QIDO-RS, WADO-RS; with ``link.credentials``, and ``link.tls``'s CA and
    certificate for https). Raises :class:`PacsError` when no association or connection can be made, the login is
    refused or the study query fails; a connection lost while fetching ends the pull with
    ``result.error`` set and the instances not yet fetched counted as failed.
    """
    modalities = list(dict.fromkeys(m.upper() for m in modalities))
    unknown = [m for m in modalities if m not in SOP_CLASSES]
    if unknown or not modalities:
        raise ValueError(f"modalities must be among {', '.join(SOP_CLASSES)}")
    dates = date_range(since, until)
    link = link or Link()
    tls, timeout = link.tls, link.timeout
    if isinstance(source, WebEndpoint):
        if tls is not None:
            source = replace(source, ca=tls.ca, client_cert=(tls.cert, tls.key))
        sop_classes = {str(sop) for m in modalities for sop in SOP_CLASSES[m]}
        return pull_web(source, dest, dates=dates, modalities=modalities, sop_classes=sop_classes,
                        credentials=link.credentials, timeout=timeout)
    context = client_context(tls) if tls is not None else None
    ae = make_ae(link.calling_aet, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    contexts = storage_contexts(modalities)
    if len(contexts) + 2 > MAX_CONTEXTS:
        raise ValueError(f"{len(contexts) + 2} presentation contexts exceed the limit of {MAX_CONTEXTS}")
    for sop, ts in contexts:
        ae.add_requested_context(sop, [ts])
    roles = [build_role(sop, scp_role=True) for sop in dict.fromkeys(sop for sop, _ in contexts)]
    receiver = _Receiver()
    result = PullResult()
    with associate(ae, source, context, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, receiver)]) as assoc:
        studies = _find_studies(assoc, dates, modalities)
        result.studies = len(studies)
        log.info("pull: %d studies matched (dates %s, modalities %s)", len(studies), dates or "any",
                 "/".join(modalities))
        sop_classes = {sop for sop, _ in contexts}
        for study in studies:
            folder = dest / safe_name(study)
            result.study_folders.append(folder)
            try:
                instances = list(_find_instances(assoc, study, modalities, sop_classes))
                _fetch_study(assoc, study, instances, folder, receiver, result)
            except PacsError as exc:
                result.error = str(exc)
                break
    return log_pull_end(result)


def _find(assoc: Association, query: Dataset) -> Iterator[Dataset]:
    """The identifiers a Study Root C-FIND answers; :class:`PacsError` on a failure status or a lost link."""
    for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        if not status:
            raise PacsError("the association was lost during a C-FIND (time-out or abort)")
        code = int(status.Status)
        if code in _PENDING:
            if identifier is not None:
                yield identifier
        elif code != _SUCCESS:
            raise PacsError(f"C-FIND at {query.QueryRetrieveLevel} level failed with status 0x{code:04X}")


def _find_studies(assoc: Association, dates: str, modalities: list[str]) -> list[str]:
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = ""
    q.StudyDate = dates
    q.ModalitiesInStudy = "\\".join(modalities)
    uids = (str(i.get("StudyInstanceUID", "")) for i in _find(assoc, q))
    return list(dict.fromkeys(u for u in uids if u))


def _find_instances(assoc: Association, study: str, modalities: list[str],
                    sop_classes: set[UID]) -> Iterator[_Instance]:
    """The instances of ``study`` in its series of ``modalities`` whose SOP class is one we fetch."""
    q = Dataset()
    q.QueryRetrieveLevel = "SERIES"
    q.StudyInstanceUID = study
    q.SeriesInstanceUID = ""
    q.Modality = ""
    series = [str(i.SeriesInstanceUID) for i in _find(assoc, q)
              if i.get("SeriesInstanceUID") and str(i.get("Modality", "")).upper() in modalities]
    for uid in dict.fromkeys(series):
        q = Dataset()
        q.QueryRetrieveLevel = "IMAGE"
        q.StudyInstanceUID, q.SeriesInstanceUID = study, uid
        q.SOPInstanceUID = ""
        q.SOPClassUID = ""
        for i in _find(assoc, q):
            sop_class = str(i.get("SOPClassUID", ""))
            if i.get("SOPInstanceUID") and (not sop_class or sop_class in sop_classes):
                yield _Instance(study, uid, str(i.SOPInstanceUID))


class _Receiver:
    """C-STORE handler of the C-GET sub-operations: writes the expected instance, as received, atomically."""

    def __init__(self) -> None:
        self.expected: dict[str, Path] = {}

    def __call__(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        path = self.expected.pop(uid, None)
        if path is None:
            log.warning("pull: the PACS sent an instance that was not asked for; refused")
            return 0xC001
        try:
            atomic_write_bytes(path, event.encoded_dataset(include_meta=True), perm=0o640)
        except OSError as exc:
            log.error("pull: cannot write instance %s (%s)", file_handle(uid), exc.strerror or type(exc).__name__)
            return 0xA700  # out of resources
        return _SUCCESS


def _fetch_study(assoc: Association, study: str, instances: list[_Instance], folder: Path, receiver: _Receiver,
                 result: PullResult) -> None:
    """C-GET each instance of ``instances`` not yet in ``folder``."""
    todo = [i for i in instances if not (folder / f"{safe_name(i.sop)}.dcm").exists()]
    result.instances += len(instances)
    result.already_present += len(instances) - len(todo)
    fetched = failed = 0
    for n, inst in enumerate(todo):
        path = folder / f"{safe_name(inst.sop)}.dcm"
        receiver.expected = {inst.sop: path}
        q = Dataset()
        q.QueryRetrieveLevel = "IMAGE"
        q.StudyInstanceUID, q.SeriesInstanceUID, q.SOPInstanceUID = inst.study, inst.series, inst.sop
        final = None
        for status, _ in assoc.send_c_get(q, StudyRootQueryRetrieveInformationModelGet):
            final = int(status.Status) if status else None
        if path.exists():
            fetched += 1
        else:
            failed += 1
            log.warning("pull: instance %s not received (C-GET status %s)", file_handle(inst.sop),
                        "none" if final is None else f"0x{final:04X}")
        if final is None and not assoc.is_established:
            result.fetched += fetched
            result.failed += failed + len(todo) - n - 1
            raise PacsError("the association was lost during a C-GET (time-out or abort)")
    result.fetched += fetched
    result.failed += failed
    log.info("pull: study %s: %d instances, %d fetched, %d already present, %d failed", file_handle(study),
             len(instances), fetched, len(instances) - len(todo), failed)
