"""How ``pull``, ``send`` and ``listen --forward`` reach a peer (:class:`Link`), and how often they try."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cxrscreen.pacs.common import DEFAULT_BACKOFF, DEFAULT_CALLING_AET, DEFAULT_RETRIES, DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from cxrscreen.pacs.tls import TlsFiles
    from cxrscreen.pacs.web import WebCredentials


@dataclass(frozen=True)
class Link:
    """How we reach a peer: our AE title (DIMSE), the time-out, the TLS files (DICOM over TLS, or the CA and
    certificate of an https DICOMweb URL) and the DICOMweb credentials."""

    calling_aet: str = DEFAULT_CALLING_AET
    timeout: float = DEFAULT_TIMEOUT
    tls: TlsFiles | None = None
    credentials: WebCredentials | None = None


@dataclass(frozen=True)
class Retry:
    """``retries`` further rounds after a failure that may pass, ``backoff``·2^k seconds apart (``sleep`` waits)."""

    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0:
            raise ValueError("retries and backoff must not be negative")
