"""``send``: C-STORE the DICOM result objects under ``OUT/dicom/`` that a destination has not acknowledged.

Acknowledgements live in the ledger (its ``acknowledged`` table, :mod:`cxrscreen.state.outbox`),
keyed by destination, SOPInstanceUID and the file's sha256: a second ``send`` sends nothing, a
rewritten object (same UID, new content) is sent again. Association failures and transient
statuses (out of resources) are retried with exponential back-off; a permanent refusal is not
retried in this run, but the object stays unacknowledged and the next ``send`` tries it again.
Files are sent as they are on disk (one presentation context per SOP class and transfer syntax
found), under the output folder's lock, so a ``send`` never races a ``scan``. To a DICOMweb service
the objects go by STOW-RS (:mod:`cxrscreen.pacs.web`), with the same bookkeeping and retries.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.presentation import build_context

from cxrscreen.logs import file_handle
from cxrscreen.outputs import DICOM_DIR
from cxrscreen.pacs.address import Address, WebEndpoint
from cxrscreen.pacs.common import (
    DEFAULT_BACKOFF,
    DEFAULT_RETRIES,
    OutgoingObject,
    SendResult,
    is_stored,
    is_transient,
    settle,
)
from cxrscreen.pacs.link import Link, Retry
from cxrscreen.pacs.net import (
    MAX_CONTEXTS,
    NoContextError,
    PacsError,
    associate,
    make_ae,
)
from cxrscreen.pacs.tls import client_context
from cxrscreen.pacs.web import LoginRefused, client, store_round
from cxrscreen.state.atomic import sha256_file
from cxrscreen.state.ledger import STATE_DIR, ledger_path
from cxrscreen.state.lock import folder_lock
from cxrscreen.state.outbox import Outbox

__all__ = ["DEFAULT_BACKOFF", "DEFAULT_RETRIES", "SendResult", "is_stored", "is_transient", "send"]

log = logging.getLogger("cxrscreen.pacs")



def send(
    out: Path,
    dest: Address | WebEndpoint,
    *,
    link: Link | None = None,
    retry: Retry | None = None,
) -> SendResult:
    """Send what ``dest`` has not acknowledged under ``out/dicom``; holds ``out``'s lock (``LockedError``).

    ``dest`` is a DIMSE :class:`Address` (C-STORE; over TLS with ``link.tls``) or a DICOMweb
    :class:`WebEndpoint` (STOW-RS; with ``link.credentials``, and ``link.tls``'s CA and certificate for
    https). ``retry.retries`` further associations (rounds of requests) are tried, ``retry.backoff``·2^k
    seconds apart, while objects remain that failed for a transient reason. A refused login (HTTP 401/403) is not
    retried: ``result.error`` says so, and ``result.unreachable`` is set when nothing was sent.
    """
    link, retry = link or Link(), retry or Retry()
    tls, timeout = link.tls, link.timeout
    attempt: Callable[[list[OutgoingObject], Outbox, SendResult], list[OutgoingObject]]
    if isinstance(dest, WebEndpoint):
        if tls is not None:
            dest = replace(dest, ca=tls.ca, client_cert=(tls.cert, tls.key))
        web, endpoint = client(dest, link.credentials, timeout), dest

        def attempt(pending: list[OutgoingObject], outbox: Outbox, result: SendResult) -> list[OutgoingObject]:
            return store_round(web, endpoint, pending, outbox, result, timeout)
    else:
        ae = make_ae(link.calling_aet, timeout)  # checks the calling AE title before anything is touched
        context = client_context(tls) if tls is not None else None
        address = dest

        def attempt(pending: list[OutgoingObject], outbox: Outbox, result: SendResult) -> list[OutgoingObject]:
            return _attempt(ae, address, context, pending, outbox, result)
    result = SendResult(unreachable=True)  # until an association is made
    with folder_lock(out / STATE_DIR), Outbox(ledger_path(out)) as outbox:
        pending = _pending(out / DICOM_DIR, str(dest), outbox, result)
        delay = retry.backoff
        while pending and result.attempts <= retry.retries:
            if result.attempts:
                log.info("send: %d object(s) left; retrying in %g s", len(pending), delay)
                retry.sleep(delay)
                delay *= 2
            result.attempts += 1
            try:
                pending = attempt(pending, outbox, result)
            except LoginRefused as exc:  # retrying the same credentials cannot help (counted as failed)
                result.error = str(exc)
                log.info("send: %s", exc)  # the caller reports it
                pending = []
        if pending and not result.unreachable:
            log.warning("send: %d object(s) still refused with a transient status after %d association(s)",
                        len(pending), result.attempts)
        result.failed += len(pending)
    result.unreachable = result.unreachable and result.attempts > 0
    log.info("send: %d objects, %d already acknowledged, %d sent, %d failed, %d association(s)", result.found,
             result.already_acknowledged, result.sent, result.failed, result.attempts)
    return result


def _pending(folder: Path, destination: str, outbox: Outbox, result: SendResult) -> list[OutgoingObject]:
    """The readable objects under ``folder`` not acknowledged by ``destination``; unreadable ones count as failed."""
    todo = []
    for path in sorted(folder.rglob("*.dcm")) if folder.is_dir() else []:
        if not path.is_file():
            continue
        result.found += 1
        handle = file_handle(path.relative_to(folder).as_posix())
        try:
            meta = read_file_meta_info(path)
            obj = OutgoingObject(path, str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID),
                          str(meta.TransferSyntaxUID), sha256_file(path))
        except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
            result.failed += 1
            log.warning("send: file %s is not a readable DICOM file (%s); not sent", handle, type(exc).__name__)
            continue
        if outbox.is_acknowledged(destination, obj.sop_uid, obj.sha256):
            result.already_acknowledged += 1
        else:
            todo.append(obj)
    return todo


def _attempt(ae: AE, dest: Address, tls: ssl.SSLContext | None, pending: list[OutgoingObject], outbox: Outbox,
             result: SendResult) -> list[OutgoingObject]:
    """One round: an association per batch of presentation contexts; returns the objects to retry."""
    retry: list[OutgoingObject] = []
    batches: dict[int, list[OutgoingObject]] = {}
    pairs: dict[tuple[str, str], int] = {}
    for obj in pending:  # a new association each MAX_CONTEXTS (SOP class, transfer syntax) pairs
        key = (obj.sop_class, obj.transfer_syntax)
        pairs.setdefault(key, len(pairs))
        batches.setdefault(pairs[key] // MAX_CONTEXTS, []).append(obj)
    for batch in batches.values():
        contexts = [build_context(sop_class, [ts])
                    for sop_class, ts in dict.fromkeys((o.sop_class, o.transfer_syntax) for o in batch)]
        try:
            with associate(ae, dest, tls, contexts=contexts) as assoc:
                result.unreachable = False
                retry += _store_all(assoc, batch, str(dest), outbox, result)
        except NoContextError as exc:  # reached, but it stores none of these: not retried in this run
            result.unreachable = False
            result.failed += len(batch)
            log.warning("send: %s; %d object(s) not sent", exc, len(batch))
        except PacsError as exc:
            result.error = str(exc)
            log.warning("send: %s", exc)
            retry += [o for o in batch if not outbox.is_acknowledged(str(dest), o.sop_uid, o.sha256)]
    return retry


def _store_all(assoc: Association, batch: list[OutgoingObject], destination: str, outbox: Outbox,
               result: SendResult) -> list[OutgoingObject]:
    """C-STORE each object of ``batch``; the objects to retry (transient status, association lost)."""
    retry = []
    for n, obj in enumerate(batch):
        handle = file_handle(obj.sop_uid)
        try:
            status = assoc.send_c_store(obj.path)
        except ValueError:  # no accepted presentation context for its SOP class and transfer syntax
            result.failed += 1
            log.warning("send: object %s: the destination accepts no context for its SOP class %s / transfer "
                        "syntax %s; not sent", handle, obj.sop_class, obj.transfer_syntax)
            continue
        if not status:  # time-out or abort: this and the rest are retried on a new association
            log.warning("send: association lost while storing object %s", handle)
            retry += batch[n:]
            break
        if settle(outbox, destination, obj, int(status.Status), result):
            retry.append(obj)
    return retry
