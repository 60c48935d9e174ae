"""What ``pull`` and ``send`` share over DIMSE and DICOMweb: result types, status classes, dates, file names."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from pydicom.uid import RE_VALID_UID

from cxrscreen.logs import file_handle
from cxrscreen.state.outbox import Outbox

log = logging.getLogger("cxrscreen.pacs")

DEFAULT_CALLING_AET = "CXRSCREEN"
DEFAULT_TIMEOUT = 30.0  # seconds: TCP connect, association answer, each DIMSE message or HTTP request
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 5.0  # seconds before the first retry; doubled before each further one




class DateRangeError(ValueError):
    """A study date that is not ``YYYYMMDD``, or ``since`` after ``until``; the message says which."""


@dataclass
class PullResult:
    """Counts of one pull; ``failed`` instances are tried again by the next pull."""

    studies: int = 0  # studies the PACS matched
    instances: int = 0  # CR/DX instances listed in them
    fetched: int = 0
    already_present: int = 0
    failed: int = 0
    error: str | None = None  # why the pull stopped early (the connection was lost), if it did
    study_folders: list[Path] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.failed == 0 and self.error is None

    def summary(self) -> dict:
        keys = ("studies", "instances", "fetched", "already_present", "failed", "error")
        return {k: getattr(self, k) for k in keys}


@dataclass
class SendResult:
    """Counts of one send; ``failed`` objects stay unacknowledged and are sent by the next ``send``."""

    found: int = 0  # result objects under OUT/dicom
    already_acknowledged: int = 0
    sent: int = 0  # acknowledged by the destination in this run
    failed: int = 0  # not acknowledged (refused, unreadable, or the destination unreachable)
    attempts: int = 0  # associations (DICOMweb: rounds of requests) tried
    unreachable: bool = False  # nothing could be sent at all (no connection, or the login refused), after every retry
    error: str | None = None  # the last connection failure, if any

    @property
    def complete(self) -> bool:
        return self.failed == 0

    def summary(self) -> dict:
        keys = ("found", "already_acknowledged", "sent", "failed", "attempts", "unreachable", "error")
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True)
class OutgoingObject:
    """A result object file to send: its SOP class and instance, transfer syntax and content hash."""

    path: Path
    sop_class: str
    sop_uid: str
    transfer_syntax: str
    sha256: str


def is_transient(status: int) -> bool:
    """Store statuses worth retrying: out of resources (A7xx) and resource limitation (0213)."""
    return status >> 8 == 0xA7 or status == 0x0213


def is_stored(status: int) -> bool:
    """Success or a warning (B000 coercion, B007 data set does not match SOP class, B006 elements discarded)."""
    return status == 0x0000 or status >> 12 == 0xB


def parse_day(value: date | str | None, option: str) -> date | None:
    """``value`` as a date (``YYYYMMDD`` text is parsed), or :class:`DateRangeError` naming ``option``."""
    if value is None or isinstance(value, date):
        return value
    try:
        return datetime.strptime(value, "%Y%m%d").date()
    except ValueError:
        raise DateRangeError(f"{option} {value!r}: expected a date as YYYYMMDD, e.g. 20261124") from None


def date_range(since: date | str | None, until: date | str | None) -> str:
    """DICOM range matching value for StudyDate: ``since-until``, ``since-``, ``-until`` or ``""`` (any).

    ``since`` and ``until`` are dates or ``YYYYMMDD`` text; :class:`DateRangeError` when either is not
    a date or ``since`` is after ``until``.
    """
    first, last = parse_day(since, "--since"), parse_day(until, "--until")
    if first and last and first > last:
        raise DateRangeError(f"--since {first:%Y%m%d} is after --until {last:%Y%m%d}")
    if first is None and last is None:
        return ""
    lo, hi = (f"{d:%Y%m%d}" if d else "" for d in (first, last))
    return lo if first == last else f"{lo}-{hi}"


def safe_name(uid: str) -> str:
    """A file name for ``uid``: the UID itself when it is a valid UID, else a hash (never a path)."""
    return uid if len(uid) <= 64 and RE_VALID_UID.match(uid) else "h" + hashlib.sha256(uid.encode()).hexdigest()[:32]


def settle(outbox: Outbox, destination: str, obj: OutgoingObject, status: int, result: SendResult) -> bool:
    """Book ``destination``'s store status for ``obj`` (C-STORE or STOW-RS): acknowledged in the ledger, or
    failed for this run; True when the status is transient and ``obj`` is worth sending again."""
    if is_stored(status):
        outbox.acknowledge(destination, obj.sop_uid, obj.sha256, status)
        result.sent += 1
        return False
    if is_transient(status):
        log.info("send: object %s: transient status 0x%04X", file_handle(obj.sop_uid), status)
        return True
    result.failed += 1
    log.warning("send: object %s refused with status 0x%04X; not retried in this run", file_handle(obj.sop_uid),
                status)
    return False


def log_pull_end(result: PullResult) -> PullResult:
    """The closing log lines of a pull (DIMSE or DICOMweb); returns ``result``."""
    if result.error:
        log.warning("pull stopped early: %s", result.error)
    log.info("pull: %d instances listed, %d fetched, %d already present, %d failed", result.instances,
             result.fetched, result.already_present, result.failed)
    return result
