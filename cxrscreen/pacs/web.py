"""DICOMweb at cxrscreen's edges (dicomweb-client): ``pull`` by QIDO-RS and WADO-RS, ``send`` by STOW-RS.

The same layout, results and acknowledgements as the DIMSE path (:mod:`cxrscreen.pacs.pull`,
:mod:`cxrscreen.pacs.send`). Credentials are a :class:`WebCredentials` given by the caller (the CLI
reads them from the environment); this module never reads the environment, and never logs or
writes them. dicomweb-client's own retries are off: ``send`` retries with its own back-off.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError

from cxrscreen.logs import file_handle
from cxrscreen.pacs.address import WebEndpoint
from cxrscreen.pacs.common import OutgoingObject, PullResult, SendResult, log_pull_end, safe_name, settle
from cxrscreen.pacs.net import PacsError, route_library_logs, tls_reason
from cxrscreen.state.atomic import atomic_write_bytes
from cxrscreen.state.outbox import Outbox

log = logging.getLogger("cxrscreen.pacs")

ENV_USER, ENV_PASSWORD, ENV_TOKEN = "CXRSCREEN_DICOMWEB_USER", "CXRSCREEN_DICOMWEB_PASSWORD", "CXRSCREEN_DICOMWEB_TOKEN"
PAGE = 1000  # QIDO-RS results asked for per request (limit/offset paging)
_TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504, 507})
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


class CredentialsError(ValueError):
    """The DICOMweb credentials in the environment are incomplete or unusable (the message never holds them)."""


class LoginRefused(PacsError):
    """The DICOMweb service answered 401 or 403: the credentials are missing, wrong, or not allowed."""


class NoConnection(PacsError):
    """The DICOMweb service could not be reached (refused, unknown host, TLS handshake) or stopped answering."""


class _Bearer(requests.auth.AuthBase):
    """``Authorization: Bearer TOKEN`` on each request."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request

    def __repr__(self) -> str:
        return "_Bearer(<hidden>)"


@dataclass(frozen=True)
class WebCredentials:
    """HTTP basic (``user`` + ``password``) or bearer (``token``) credentials; their repr hides the secrets."""

    user: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if self.token and (self.user or self.password):
            raise CredentialsError(f"set either {ENV_TOKEN} or {ENV_USER} and {ENV_PASSWORD}, not both")
        if bool(self.user) != bool(self.password):
            raise CredentialsError(f"{ENV_USER} and {ENV_PASSWORD} go together; one of them is not set")
        if ":" in self.user:
            raise CredentialsError(f"{ENV_USER} may not hold ':' (HTTP basic authentication)")
        for name, value in ((ENV_USER, self.user), (ENV_PASSWORD, self.password), (ENV_TOKEN, self.token)):
            if any(not " " <= c <= "~" for c in value) or (name == ENV_TOKEN and " " in value):
                raise CredentialsError(f"{name} holds characters an HTTP header cannot carry")

    def __repr__(self) -> str:
        return ("WebCredentials(token=<hidden>)" if self.token
                else f"WebCredentials(user={self.user!r}, password=<hidden>)")

    __str__ = __repr__

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WebCredentials | None:
        """The credentials in ``environ`` (:data:`ENV_USER` + :data:`ENV_PASSWORD`, or :data:`ENV_TOKEN`),
        None when none is set; :class:`CredentialsError` when they are incomplete."""
        user, password, token = (environ.get(k, "") for k in (ENV_USER, ENV_PASSWORD, ENV_TOKEN))
        return cls(user, password, token) if user or password or token else None

    def auth(self) -> requests.auth.AuthBase:
        """The requests authentication that sets these credentials on each request."""
        return _Bearer(self.token) if self.token else requests.auth.HTTPBasicAuth(self.user, self.password)


class _Pinned(requests.adapters.HTTPAdapter):
    """HTTPS checked against our CA bundle (and our client certificate presented) on every request: requests
    would let ``REQUESTS_CA_BUNDLE`` in the environment override a session's ``verify``."""

    def __init__(self, ca: Path | None, cert: tuple[Path, Path] | None) -> None:
        super().__init__()
        self.ca, self.client_cert = ca, cert

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if self.ca is not None:
            kwargs["verify"] = str(self.ca)
        if self.client_cert is not None:
            kwargs["cert"] = (str(self.client_cert[0]), str(self.client_cert[1]))
        return super().send(request, **kwargs)


def client(endpoint: WebEndpoint, credentials: WebCredentials | None, timeout: float) -> DICOMwebClient:
    """A dicomweb-client for ``endpoint``: its CA and client certificate, ``credentials``, ``timeout`` s, no retries."""
    route_library_logs()
    session = requests.Session()
    if credentials is not None:
        session.auth = credentials.auth()
        if endpoint.url.startswith("http://"):
            log.info("DICOMweb: credentials go to %s unencrypted (http, not https)", endpoint)
    if endpoint.ca is not None or endpoint.client_cert is not None:
        session.mount("https://", _Pinned(endpoint.ca, endpoint.client_cert))
    try:
        web = DICOMwebClient(endpoint.url, session=session, timeout=timeout)
    except ValueError:
        raise PacsError(f"{endpoint}: dicomweb-client does not take this URL") from None
    web.set_http_retry_params(retry=False)
    return web


@contextlib.contextmanager
def http_errors(endpoint: WebEndpoint, what: str, timeout: float) -> Iterator[None]:
    """Turn the failures of requests to ``endpoint`` into one-line :class:`PacsError` (:class:`LoginRefused`)."""
    try:
        yield
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        if code in (401, 403):
            raise LoginRefused(f"{endpoint} refused the login (HTTP {code}); check {ENV_USER} and {ENV_PASSWORD}, "
                               f"or {ENV_TOKEN}") from None
        reason = exc.response.reason if exc.response is not None else ""
        raise PacsError(f"{endpoint}: {what} failed (HTTP {code} {reason})".rstrip()) from None
    except requests.exceptions.SSLError as exc:
        reason = tls_reason(str(exc))
        if reason is None or "alert" in reason:  # TLS 1.3: a refused client certificate closes the connection
            hint = f"it {'does' if reason else 'may'} not accept our certificate (--tls-cert, --tls-key)"
        else:
            hint = "check --tls-ca (the CA that signs its certificate)"
        raise NoConnection(f"TLS handshake with {endpoint} failed ({reason or 'the server closed the connection'}); "
                           f"{hint}") from None
    except requests.Timeout:
        raise NoConnection(f"{endpoint} did not answer within {timeout:g} s") from None
    except requests.ConnectionError as exc:
        m = _ERRNO.search(str(exc))
        reason = m.group(1).strip().lower() if m else "the connection failed or was closed"
        raise NoConnection(f"cannot connect to {endpoint}: {reason}") from None
    except requests.RequestException as exc:
        raise PacsError(f"{endpoint}: {what} failed ({type(exc).__name__})") from None
    except (ValueError, KeyError, InvalidDicomError) as exc:  # an answer that is not DICOMweb
        raise PacsError(f"{endpoint}: {what}: the answer is not valid DICOMweb ({type(exc).__name__})") from None


def _value(item: Mapping[str, Any], keyword: str) -> str:
    """The first value of ``keyword`` in a DICOM JSON object, as text ("" when absent)."""
    values = item.get(f"{tag_for_keyword(keyword):08X}", {}).get("Value") or [""]
    return str(values[0])


def _search(query: Callable[..., list[dict]], **kwargs: Any) -> list[dict]:
    """Every result of a QIDO-RS ``query``, a page of :data:`PAGE` at a time; stops at a short page or at a
    page that brings nothing new (a server that ignores ``offset``)."""
    results: list[dict] = []
    seen: set[str] = set()
    while True:
        page = query(limit=PAGE, offset=len(results), **kwargs)
        new = [r for r in page if repr(r) not in seen]
        seen.update(repr(r) for r in new)
        results += new
        if len(page) < PAGE or not new:
            return results


def pull_web(source: WebEndpoint, dest: Path, *, dates: str, modalities: list[str], sop_classes: set[str],
             credentials: WebCredentials | None, timeout: float) -> PullResult:
    """Fetch the instances of ``sop_classes`` in the ``modalities`` series of the studies dated ``dates``
    (a DICOM range) into ``dest``; see :func:`cxrscreen.pacs.pull.pull`."""
    web = client(source, credentials, timeout)
    result = PullResult()
    with http_errors(source, "the study query (QIDO-RS)", timeout):
        studies: dict[str, None] = {}
        for modality in modalities:  # one query per modality: single-value matching every server supports
            filters = {"ModalitiesInStudy": modality} | ({"StudyDate": dates} if dates else {})
            found = _search(web.search_for_studies, search_filters=filters, fields=["StudyInstanceUID"])
            studies |= dict.fromkeys(u for u in (_value(s, "StudyInstanceUID") for s in found) if u)
    result.studies = len(studies)
    log.info("pull: %d studies matched (dates %s, modalities %s)", len(studies), dates or "any", "/".join(modalities))
    for study in studies:
        folder = dest / safe_name(study)
        result.study_folders.append(folder)
        try:
            with http_errors(source, "the instance query (QIDO-RS)", timeout):
                instances = _find_instances(web, study, modalities, sop_classes)
            _fetch_study(web, source, study, instances, folder, result, timeout)
        except LoginRefused:
            raise
        except PacsError as exc:  # the connection lost midway: the rest is for the next run
            result.error = str(exc)
            break
    return log_pull_end(result)


def _find_instances(web: DICOMwebClient, study: str, modalities: list[str],
                    sop_classes: set[str]) -> list[tuple[str, str]]:
    """(SeriesInstanceUID, SOPInstanceUID) of the instances of ``study`` in its series of ``modalities``
    whose SOP class is one we fetch."""
    series = _search(web.search_for_series, study_instance_uid=study, fields=["Modality"])
    wanted = dict.fromkeys(u for s in series if _value(s, "Modality").upper() in modalities
                           and (u := _value(s, "SeriesInstanceUID")))
    found = []
    for uid in wanted:
        for i in _search(web.search_for_instances, study_instance_uid=study, series_instance_uid=uid,
                         fields=["SOPClassUID"]):
            sop, sop_class = _value(i, "SOPInstanceUID"), _value(i, "SOPClassUID")
            if sop and (not sop_class or sop_class in sop_classes):
                found.append((uid, sop))
    return list(dict.fromkeys(found))


def _fetch_study(web: DICOMwebClient, source: WebEndpoint, study: str, instances: list[tuple[str, str]],
                 folder: Path, result: PullResult, timeout: float) -> None:
    """WADO-RS each instance of ``instances`` not yet in ``folder``, in the transfer syntax the server stores."""
    todo = [(series, sop) for series, sop in instances if not (folder / f"{safe_name(sop)}.dcm").exists()]
    result.instances += len(instances)
    result.already_present += len(instances) - len(todo)
    fetched = 0
    try:
        for series, sop in todo:
            try:
                with http_errors(source, "an instance retrieval (WADO-RS)", timeout):
                    ds = web.retrieve_instance(study, series, sop, media_types=(("application/dicom", "*"),))
                if str(ds.get("SOPInstanceUID", "")) != sop:
                    raise PacsError(f"{source} sent an instance that was not asked for")
                data = _encode(ds)
            except (LoginRefused, NoConnection):
                raise  # the rest of the pull is for the next run
            except PacsError as exc:
                log.warning("pull: instance %s not received (%s)", file_handle(sop), exc)
                continue
            atomic_write_bytes(folder / f"{safe_name(sop)}.dcm", data, perm=0o640)
            fetched += 1
    finally:
        result.fetched += fetched
        result.failed += len(todo) - fetched
        log.info("pull: study %s: %d instances, %d fetched, %d already present, %d failed", file_handle(study),
                 len(instances), fetched, len(instances) - len(todo), len(todo) - fetched)


def _encode(ds: pydicom.Dataset) -> bytes:
    """``ds`` as a DICOM file (preamble, file meta), as dicomweb-client decoded it from the WADO-RS part."""
    buffer = io.BytesIO()
    try:
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    except (ValueError, AttributeError, TypeError, KeyError) as exc:
        raise PacsError(f"the instance is not a writable DICOM file ({type(exc).__name__})") from None
    return buffer.getvalue()


def store_round(web: DICOMwebClient, dest: WebEndpoint, pending: list[OutgoingObject], outbox: Outbox,
                result: SendResult, timeout: float) -> list[OutgoingObject]:
    """STOW-RS each object of ``pending`` (one request each, acknowledged at once); the objects to retry
    (transient HTTP or DICOM status, the connection lost). :class:`LoginRefused` ends the round, the objects
    left counted as failed."""
    retry: list[OutgoingObject] = []
    for n, obj in enumerate(pending):
        handle = file_handle(obj.sop_uid)
        try:
            ds = pydicom.dcmread(obj.path)
        except (InvalidDicomError, OSError, ValueError) as exc:
            result.failed += 1
            log.warning("send: object %s is not readable (%s); not sent", handle, type(exc).__name__)
            continue
        try:
            with http_errors(dest, "STOW-RS", timeout):
                status = _stow_status(web, ds, obj.sop_uid)
        except NoConnection as exc:  # this and the rest are retried in the next round
            result.error = str(exc)
            log.warning("send: %s", exc)
            retry += pending[n:]
            break
        except LoginRefused:  # this and the rest are not sent; no retry can help
            result.failed += len(pending) - n
            raise
        except PacsError as exc:  # answered, but not in DICOMweb
            result.unreachable = False
            result.failed += 1
            log.warning("send: object %s: %s; not retried in this run", handle, exc)
            continue
        result.unreachable = False
        if settle(outbox, str(dest), obj, status, result):
            retry.append(obj)
    return retry


def _stow_status(web: DICOMwebClient, ds: pydicom.Dataset, sop_uid: str) -> int:
    """The DICOM status of storing ``ds``: its FailureReason or WarningReason in the STOW-RS answer;
    an HTTP failure without one is 0xA700 when it is transient (busy, overloaded), else 0xC000."""
    try:
        answer = web.store_instances([ds])
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        if code in (401, 403):
            raise
        answer = pydicom.Dataset()
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            answer = pydicom.Dataset.from_json(exc.response.json())
        fallback = 0xA700 if code in _TRANSIENT_HTTP else 0xC000
        return _reason(answer, sop_uid, fallback)
    return _reason(answer, sop_uid, 0x0000)


def _reason(answer: pydicom.Dataset, sop_uid: str, fallback: int) -> int:
    """The status of ``sop_uid`` in a STOW-RS answer (PS3.18 §10.5.3), else ``fallback``."""
    for item in answer.get("FailedSOPSequence", []):
        if str(item.get("ReferencedSOPInstanceUID", "")) == sop_uid:
            return int(item.get("FailureReason", 0xC000))
    for item in answer.get("ReferencedSOPSequence", []):
        if str(item.get("ReferencedSOPInstanceUID", "")) == sop_uid:
            return int(item.get("WarningReason", 0x0000))
    return fallback
