"""Associations with a remote AE (pynetdicom, optionally over TLS): time-outs, one-line reasons for failures,
quiet logs (pynetdicom's and the DICOMweb libraries')."""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
import threading
from collections.abc import Iterator
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association

from cxrscreen.logs import scrub
from cxrscreen.pacs.address import Address, check_aet
from cxrscreen.pacs.common import DEFAULT_CALLING_AET, DEFAULT_TIMEOUT  # noqa: F401 (re-exported)

MAX_CONTEXTS = 128  # PS3.8: presentation context IDs are the odd numbers 1–255

log = logging.getLogger("cxrscreen.pacs")


class PacsError(RuntimeError):
    """The remote AE could not be reached, refused the association, or failed a query."""


class NoContextError(PacsError):
    """The remote AE accepted the association request but none of the presentation contexts proposed."""


class _Forward(logging.Handler):
    """The network libraries' warnings and errors, scrubbed (UIDs too), to the log file only (INFO on
    ``cxrscreen.pacs.net``); while an association is being set up (by pynetdicom's own threads), its
    error lines are also kept to explain a failure."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = _UID.sub("<uid>", scrub(record.getMessage()))
        except Exception:
            return
        logging.getLogger("cxrscreen.pacs.net").info("%s: %s", record.name.split(".")[0], text)
        errors = self.errors
        if errors is not None and record.levelno >= logging.ERROR:
            errors.append(text)


_FORWARD = _Forward()
#: The loggers kept off stderr: pynetdicom, and dicomweb-client with the HTTP stack under it (URLs hold UIDs).
LIBRARY_LOGGERS = ("pynetdicom", "dicomweb_client", "urllib3", "requests", "retrying")
_UID = re.compile(r"\b\d+(?:\.\d+){4,}\b")  # five or more numeric components: a UID, never an IPv4 address
_SSL_REASON = re.compile(r"\[SSL: [A-Z0-9_]+\] ([^(\]'\"]+)")
_NO_CONTEXT = "accepted none of the proposed presentation contexts (SOP class and transfer syntax)"
_ASSOCIATING = threading.Lock()  # one association request at a time collects the error lines


def route_library_logs() -> None:
    """Keep the :data:`LIBRARY_LOGGERS`' messages (which may quote header values, URLs or UIDs) off stderr,
    scrubbed into the log file; idempotent."""
    for name in LIBRARY_LOGGERS:
        lg = logging.getLogger(name)
        if _FORWARD not in lg.handlers:
            lg.addHandler(_FORWARD)
        lg.propagate = False


def tls_reason(text: str) -> str | None:
    """The reason an OpenSSL error message gives (``certificate verify failed: …``), or None if it is none."""
    m = _SSL_REASON.search(text)
    return " ".join(m.group(1).split()).rstrip(" .:").lower() if m else None


def make_ae(calling_aet: str, timeout: float = DEFAULT_TIMEOUT) -> AE:
    """An application entity titled ``calling_aet`` with every time-out set to ``timeout`` seconds."""
    route_library_logs()
    ae = AE(ae_title=check_aet(calling_aet, "calling AE title"))
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = timeout
    ae.network_timeout = max(timeout, 60.0)
    return ae


@contextlib.contextmanager
def associate(ae: AE, address: Address, tls: ssl.SSLContext | None = None, **kwargs: Any) -> Iterator[Association]:
    """An established association with ``address`` (released on exit), or :class:`PacsError` saying why not.

    With ``tls`` (:func:`cxrscreen.pacs.tls.client_context`) the association runs over TLS, the peer's
    certificate checked against the CA and ``address.host``. ``kwargs`` go to :meth:`pynetdicom.AE.associate`
    (``ext_neg``, ``evt_handlers``).
    """
    if tls is not None:
        kwargs["tls_args"] = (tls, address.host)
    with _ASSOCIATING:
        _FORWARD.errors = errors = []
        try:
            assoc = ae.associate(address.host, address.port, ae_title=address.aet, **kwargs)
        except OSError as exc:  # the host name does not resolve
            raise PacsError(f"cannot connect to {address}: {(exc.strerror or str(exc)).lower()}") from None
        finally:
            _FORWARD.errors = None
    if not assoc.is_established:
        why = _why(assoc, address, errors, ae.acse_timeout, tls is not None)
        raise (NoContextError if why.endswith(_NO_CONTEXT) else PacsError)(why)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _why(assoc: Association, address: Address, errors: list[str], timeout: float | None, tls: bool = False) -> str:
    """One line on why the association with ``address`` was not established."""
    rsp = assoc.acceptor.primitive
    if assoc.is_rejected and rsp is not None:
        return (f"{address} rejected the association ({rsp.result_str.lower()}, {rsp.reason_str.lower()}); "
                "check the called AE title and that the PACS knows the calling AE title")
    tcp = next((e.split(":", 1)[1].strip() for e in errors if e.startswith("TCP Initialisation Error")), None)
    handshake = next((r for e in errors if (r := tls_reason(e))), None)
    if handshake is not None:
        hint = ("it does not accept our certificate (--tls-cert, --tls-key)" if "alert" in handshake
                else "check --tls-ca (the CA that signs its certificate)")
        return f"TLS handshake with {address} failed ({handshake}); {hint}"
    if any("closed before the entire PDU" in e for e in errors) and tcp is None:
        hint = ("it may not accept our certificate" if tls
                else "it may expect DICOM over TLS (--tls-cert, --tls-key, --tls-ca)")
        return f"{address} closed the connection before answering the association request; {hint}"
    if tcp is not None:
        reason = tcp.split("] ", 1)[-1] if tcp.startswith("[Errno") else tcp
        if reason == "timed out":
            reason = f"no answer within {timeout:g} s"
        return f"cannot connect to {address}: {reason.lower()}"
    if any("ACSE timeout" in e for e in errors):
        return f"{address} did not answer the association request within {timeout:g} s"
    if any("Unknown PDU type" in e or "invalid A-ASSOCIATE response" in e for e in errors):
        return f"{address} answered, but not as a DICOM application entity; check the port"
    if any("No accepted presentation contexts" in e for e in errors):
        return f"{address} {_NO_CONTEXT}"
    return f"{address} aborted the association" + (f" ({errors[-1]})" if errors else "")
