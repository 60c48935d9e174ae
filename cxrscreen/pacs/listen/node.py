"""The DICOM node: a C-STORE + C-ECHO SCP that scores each study once no image of it has arrived for a while.

pynetdicom's threads (one per association) write each instance to the spool (:mod:`.spool`), durably,
then answer. One scoring thread waits until a study has been quiet for ``study_timeout`` seconds, hands
it to the scan folder and runs :func:`cxrscreen.run.scan` on it with the model loaded once at start:
same ledger, worklists, reports and DICOM results as ``cxrscreen scan``. With ``forward``, the new
results then go out with :func:`cxrscreen.pacs.send.send` (acknowledgements in the ledger, retries).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pydicom import dcmread
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
from pynetdicom import evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from cxrscreen.logs import file_handle
from cxrscreen.model.lazy import LazyModel
from cxrscreen.options import OptionError, ScanOptions
from cxrscreen.pacs.address import Address, WebEndpoint, check_aet
from cxrscreen.pacs.common import safe_name
from cxrscreen.pacs.listen.spool import SPOOL_DIR, UNKNOWN_STUDY, Spool
from cxrscreen.pacs.net import DEFAULT_CALLING_AET, DEFAULT_TIMEOUT, make_ae
from cxrscreen.pacs.pull import TRANSFER_SYNTAXES
from cxrscreen.pacs.tls import TlsFiles, server_context
from cxrscreen.pacs.web import WebCredentials
from cxrscreen.state.ledger import STATE_DIR
from cxrscreen.state.lock import LockedError, folder_lock

if TYPE_CHECKING:
    from cxrscreen.model.files import LoadedModel
    from cxrscreen.pipeline.context import ScanResult

log = logging.getLogger("cxrscreen.pacs.listen")

#: The image storage SOP classes the node accepts (every transfer syntax of :data:`TRANSFER_SYNTAXES`).
STORAGE_CLASSES = (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                   DigitalXRayImageStorageForProcessing, SecondaryCaptureImageStorage)
SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700
MAX_ASSOCIATIONS = 16
RETRY_S = 5.0  # before scoring again when another run holds OUT, or after a failed pass (doubled up to MAX_RETRY_S)
MAX_RETRY_S = 300.0
FORWARD_RETRY_S = 60.0  # before sending again what the forward target has not acknowledged


class ListenError(RuntimeError):
    """The node cannot run: its options, model or port are unusable (the message says why)."""


class _Stopping(Exception):
    """Raised in the scoring thread's waits when the node stops."""


@dataclass(frozen=True)
class ListenConfig:
    """How a :class:`Node` listens, scores and forwards (the options of ``cxrscreen listen``)."""

    out: Path
    port: int  # 0: any free port (:attr:`Node.port` says which)
    aet: str = DEFAULT_CALLING_AET
    host: str = "0.0.0.0"
    study_timeout: float = 10.0  # seconds without a new image of a study before it is scored
    forward: Address | WebEndpoint | None = None  # where each scoring pass's new results are sent
    allow: tuple[str, ...] = ()  # calling AE titles accepted (empty: any)
    tls: TlsFiles | None = None  # DICOM over TLS: callers need a certificate signed by tls.ca
    forward_tls: TlsFiles | None = None  # the forward's TLS files (``send``'s ``tls``)
    forward_credentials: WebCredentials | None = None  # a DICOMweb forward's login
    model: Path | str | LoadedModel | None = None  # None: the embedded model
    options: ScanOptions = field(default_factory=ScanOptions)  # how each pass scores; forward implies dicom_results
    timeout: float = DEFAULT_TIMEOUT  # network time-outs, ours and the forward target's
    forward_retries: int = 3
    forward_backoff: float = 5.0
    stop_grace: float = 5.0  # seconds open associations get to finish once the node stops

    @property
    def spool(self) -> Path:
        return self.out / SPOOL_DIR


@dataclass
class NodeStats:
    """What the node did since it started (``cxrscreen listen --json`` prints it on exit)."""

    associations: int = 0
    rejected: int = 0
    stored: int = 0
    out_of_resources: int = 0  # instances answered 0xA700 (not written)
    passes: int = 0  # scoring passes (scans) that finished
    studies_scored: int = 0
    files_processed: int = 0
    forwarded: int = 0  # result objects acknowledged by the forward target
    forward_pending: int = 0  # not acknowledged after the last send
    error: str | None = None  # why the node stopped on its own

    def summary(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Assoc:
    stored: int = 0
    refused: int = 0
    started: float = field(default_factory=time.monotonic)


class Node:
    """A running ``cxrscreen listen``: :meth:`start`, then :meth:`stop` (or :meth:`run` until an event).

    Holds ``OUT/.cxrscreen/listen/lock`` while it runs (one node per output folder). Each scoring pass
    takes the output folder's lock like any scan, for that pass only: while a hand-run ``scan`` or
    ``send`` holds it, the node scores a few seconds later.

    Raises ``AddressError`` (an unusable AE title) and ``ValueError`` (``study_timeout``) when made.
    """

    def __init__(self, config: ListenConfig) -> None:
        config = replace(config, aet=check_aet(config.aet, "--aet"),
                         allow=tuple(check_aet(aet, "--allow") for aet in config.allow))
        if config.study_timeout <= 0:
            raise ValueError("--study-timeout must be positive")
        self.config = config
        self.spool = Spool(config.spool)
        self.stats = NodeStats()
        self._options = replace(config.options, dicom_results=config.options.dicom_results or bool(config.forward))
        self._model: LazyModel | None = None
        self._server: ThreadedAssociationServer | None = None
        self._scorer: threading.Thread | None = None
        self._stack = contextlib.ExitStack()
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._failed = threading.Event()
        self._open: dict[str, float] = {}  # study folder → when its last instance arrived (monotonic)
        self._assocs: dict[object, _Assoc] = {}
        self._unscanned = True  # the first pass scores what an earlier run left unscored
        self._busy = False
        self._scan_at = 0.0
        self._failures = 0
        self._forward_at: float | None = 0.0 if config.forward is not None else None  # left unsent earlier

    # ------------------------------------------------------------------ life cycle
    @property
    def port(self) -> int:
        """The TCP port the node listens on."""
        if self._server is None:
            raise RuntimeError("the node is not running")
        return int(self._server.server_address[1])

    @property
    def error(self) -> str | None:
        """Why the node stopped on its own (an unusable option or model found by a scoring pass)."""
        return self.stats.error

    def start(self) -> None:
        """Lock the output folder for this node, load the model, and start listening and scoring.

        Raises :class:`~cxrscreen.state.lock.LockedError` (another node on ``out``), :class:`ListenError`
        (the model or the port), :class:`~cxrscreen.pacs.tls.TlsError` (the TLS files).
        """
        c = self.config
        try:
            try:
                self._stack.enter_context(folder_lock(c.out / STATE_DIR / "listen"))
                recovered = self.spool.recover()
            except OSError as exc:
                raise ListenError(f"--out {c.out}: {(exc.strerror or str(exc)).lower()}") from None
            for study in recovered:  # acknowledged before a stop or a crash: scored after the time-out
                self._open[study] = time.monotonic()
            self._model = self._load_model()
            ae = make_ae(c.aet, c.timeout)
            ae.maximum_associations = MAX_ASSOCIATIONS
            ae.require_calling_aet = list(c.allow)
            for sop_class in STORAGE_CLASSES:
                ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
            ae.add_supported_context(Verification)
            handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_ESTABLISHED, self._on_established),
                        (evt.EVT_RELEASED, self._on_ended, ["released"]),
                        (evt.EVT_ABORTED, self._on_ended, ["aborted"]), (evt.EVT_REJECTED, self._on_rejected)]
            tls = cast(ssl.SSLContext, _TlsAcceptor(server_context(c.tls), c.timeout)) if c.tls else None
            try:
                self._server = ae.start_server((c.host, c.port), block=False, evt_handlers=handlers,
                                               ssl_context=tls)
            except OSError as exc:
                raise ListenError(f"cannot listen on {c.host}:{c.port}: {(exc.strerror or str(exc)).lower()}") \
                    from None
        except BaseException:
            self._stack.close()
            raise
        self._scorer = threading.Thread(target=self._score_loop, name="cxrscreen-scorer", daemon=True)
        self._scorer.start()
        allow = f", calling AE titles {', '.join(c.allow)} only" if c.allow else ""
        log.info("listening on %s:%d as %s%s%s; studies scored %g s after their last image%s", c.host, self.port,
                 c.aet, " over TLS" if c.tls else "", allow, c.study_timeout,
                 f", results forwarded to {c.forward}" if c.forward else "")

    def _load_model(self) -> LazyModel:
        """The model, loaded here (weights, runtime and scoring network) and kept warm for every scoring pass."""
        from cxrscreen.model.files import LoadedModel
        from cxrscreen.model.meta import ModelIntegrityError, read_model_info

        given = self.config.model
        try:
            info = given if isinstance(given, LoadedModel) else read_model_info(given)
            lazy = LazyModel(info, self._options.device, self._options.precision)
            lazy.scoring_net  # noqa: B018 (loads now: a broken model stops the node before it accepts anything)
        except (FileNotFoundError, ModelIntegrityError, ValueError, RuntimeError) as exc:
            raise ListenError(str(exc)) from None
        return lazy

    def stop(self) -> None:
        """Stop accepting associations, let open ones finish (``stop_grace`` s, then abort them), finish
        the scoring pass in hand, and release the output folder. Studies still open stay in the spool:
        the next start scores them."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            deadline = time.monotonic() + self.config.stop_grace
            while server.active_associations and time.monotonic() < deadline:
                time.sleep(0.05)
            for assoc in server.active_associations:
                if assoc.is_established:
                    assoc.abort()
                else:  # not negotiated yet (a TLS handshake in progress): cannot take an A-ABORT
                    assoc.kill()
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._scorer is not None:
            self._scorer.join()
            self._scorer = None
        self._stack.close()
        log.info("stopped: %d instance(s) stored, %d scoring pass(es)", self.stats.stored, self.stats.passes)

    def run(self, until: threading.Event) -> None:
        """:meth:`start` (unless started), serve until ``until`` is set or the node fails (:attr:`error`),
        then :meth:`stop`."""
        if self._server is None:
            self.start()
        try:
            while not until.wait(0.2) and not self._failed.is_set():
                pass
        finally:
            self.stop()

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_idle(self, timeout: float) -> bool:
        """Whether, within ``timeout`` seconds, every instance received has been scored (no study open,
        no scoring pass due or running)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._open or self._unscanned or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or self._failed.is_set():
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    # ------------------------------------------------------------------ receiving (pynetdicom's threads)
    def _on_store(self, event: Event) -> int:
        """Write the instance to the spool, durably, before answering; 0xA700 when it cannot be written."""
        data = event.encoded_dataset(include_meta=True)  # preamble + file meta of the accepted transfer syntax
        sop = safe_name(str(event.request.AffectedSOPInstanceUID or ""))
        study = _study_folder(data)
        counts = self._assocs.get(event.assoc)
        try:
            self.spool.store(study, sop, data)
        except OSError as exc:
            with self._cond:
                self.stats.out_of_resources += 1
                if counts is not None:
                    counts.refused += 1
            log.warning("instance %s not stored (%s): answered 0xA700 (out of resources)", file_handle(sop),
                        (exc.strerror or type(exc).__name__).lower())
            return OUT_OF_RESOURCES
        with self._cond:
            self._open[study] = time.monotonic()
            self.stats.stored += 1
            if counts is not None:
                counts.stored += 1
            self._cond.notify_all()
        return SUCCESS

    def _on_established(self, event: Event) -> None:
        with self._cond:
            self._assocs[event.assoc] = _Assoc()
            self.stats.associations += 1

    def _on_ended(self, event: Event, how: str) -> None:
        with self._cond:
            counts = self._assocs.pop(event.assoc, None)
        if counts is not None:
            req = event.assoc.requestor
            log.info("association from %s (%s:%s) %s after %.1f s: %d instance(s) stored, %d refused",
                     req.ae_title, req.address, req.port, how, time.monotonic() - counts.started, counts.stored,
                     counts.refused)

    def _on_rejected(self, event: Event) -> None:
        req = event.assoc.requestor
        why = ("its calling AE title is not allowed (--allow)"
               if self.config.allow and req.ae_title not in self.config.allow else "too many associations")
        with self._cond:
            self.stats.rejected += 1
        log.warning("association from %s (%s:%s) rejected: %s", req.ae_title, req.address, req.port, why)

    # ------------------------------------------------------------------ scoring (one thread)
    def _score_loop(self) -> None:
        try:
            while (work := self._next_work()) is not None:
                try:
                    self._work(*work)
                except _Stopping:
                    raise
                except Exception:  # a bug: the node keeps receiving (nothing is lost) and tries again
                    log.exception("scoring thread: unexpected error; going on in %g s", RETRY_S)
                    self._stopping.wait(RETRY_S)
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
        except _Stopping:
            pass

    def _next_work(self) -> tuple[dict[str, float], bool] | None:
        """Wait for work: the studies quiet for ``study_timeout`` (folder → arrival of their last image) and
        whether a send is due (a scan is due when :meth:`_work` finds it so); None once the node stops."""
        timeout = self.config.study_timeout
        with self._cond:
            while not self._stopping.is_set():
                now = time.monotonic()
                quiet = {s: t for s, t in self._open.items() if now - t >= timeout}
                scan = (self._unscanned or bool(quiet)) and now >= self._scan_at
                send = self._forward_at is not None and now >= self._forward_at
                if quiet or scan or send:
                    for s in quiet:
                        del self._open[s]
                    self._busy = True
                    return quiet, send
                wake = [t + timeout for t in self._open.values()]
                wake += [self._scan_at] if self._unscanned else []
                wake += [self._forward_at] if self._forward_at is not None else []
                self._cond.wait(max(0.01, min(wake, default=now + 60.0) - now))
        return None

    def _work(self, quiet: dict[str, float], send: bool) -> None:
        """Hand the quiet studies to the scan folder, scan, then forward."""
        moved: dict[str, tuple[int, float]] = {}
        for study, last in quiet.items():
            try:
                n = self.spool.promote(study)
            except OSError as exc:
                log.error("study %s: cannot move it to the scan folder (%s); trying again later",
                          file_handle(study), (exc.strerror or type(exc).__name__).lower())
                with self._cond:
                    self._open.setdefault(study, last)
                continue
            if n:
                moved[study] = (n, last)
        if moved:
            self._unscanned = True
        if self._unscanned and time.monotonic() >= self._scan_at:
            result = self._scan()
            if result is None:
                return
            self._log_studies(result, moved)
            send = self.config.forward is not None
        if send:
            self._forward()

    def _scan(self) -> ScanResult | None:
        """One scan of the spool (None when it failed; it is tried again later)."""
        from cxrscreen import scan
        from cxrscreen.model.meta import ModelIntegrityError

        out = self.config.out
        try:
            result = scan(self.spool.root, out, self._model, self._options)
        except LockedError:
            log.info("another cxrscreen run holds %s; scoring in %g s", out, RETRY_S)
            self._scan_at = time.monotonic() + RETRY_S
            return None
        except (OptionError, ModelIntegrityError) as exc:  # the same on every pass: the node stops
            self.stats.error = str(exc)
            log.error("scoring refused: %s; stopping", exc)
            self._failed.set()
            raise _Stopping from None
        except Exception:  # a bug or the disk under OUT: the spool keeps what was received
            self._failures += 1
            delay = min(MAX_RETRY_S, RETRY_S * 2 ** (self._failures - 1))
            log.exception("scoring pass failed; trying again in %g s", delay)
            self._scan_at = time.monotonic() + delay
            return None
        self._failures = 0
        self._unscanned = False
        with self._cond:
            self.stats.passes += 1
            self.stats.files_processed += result.summary.files_processed
        return result

    def _log_studies(self, result: ScanResult, moved: dict[str, tuple[int, float]]) -> None:
        """A line per study this pass scored: its handle, images received, decision, delay since its last image."""
        decisions = _study_decisions(result.studies_csv, set(moved))
        now = time.monotonic()
        for study, (n, last) in moved.items():
            log.info("study %s: %d image(s) received, %s, scored %.1f s after its last image", file_handle(study),
                     n, decisions.get(study, "not in the worklist"), now - last)
        with self._cond:
            self.stats.studies_scored += len(moved)

    def _forward(self) -> None:
        """Send what the forward target has not acknowledged; what fails is sent again later."""
        from cxrscreen.pacs.link import Link, Retry
        from cxrscreen.pacs.send import send

        c = self.config
        assert c.forward is not None
        try:
            result = send(c.out, c.forward, link=Link(c.aet, c.timeout, c.forward_tls, c.forward_credentials),
                          retry=Retry(c.forward_retries, c.forward_backoff, self._sleep))
        except LockedError:
            self._forward_at = time.monotonic() + RETRY_S
            return
        with self._cond:
            self.stats.forwarded += result.sent
            self.stats.forward_pending = result.failed
        if result.complete:
            self._forward_at = None
        else:
            self._forward_at = time.monotonic() + FORWARD_RETRY_S
            log.warning("forward to %s: %d object(s) not acknowledged%s; sending again in %g s", c.forward,
                        result.failed, f" ({result.error})" if result.error else "", FORWARD_RETRY_S)

    def _sleep(self, seconds: float) -> None:
        """The forward's back-off, cut short (and the send abandoned) when the node stops."""
        if self._stopping.wait(seconds):
            raise _Stopping


class _TlsAcceptor:
    """The node's SSL context, with each caller's handshake moved out of pynetdicom's accept loop.

    pynetdicom wraps an accepted socket in the thread that accepts every connection: one caller that
    connected and said nothing would hold back all the others. Here the handshake happens on the first
    read, in the association's own thread, under ``timeout``; a caller without a certificate the CA
    signed fails it there (the association never starts).
    """

    def __init__(self, context: ssl.SSLContext, timeout: float) -> None:
        self.context, self.timeout = context, timeout

    def wrap_socket(self, sock: socket.socket, server_side: bool = True) -> ssl.SSLSocket:
        sock.settimeout(self.timeout)
        return self.context.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False)


def _study_folder(data: bytes) -> str:
    """The spool folder of a received instance: its StudyInstanceUID made safe, or :data:`UNKNOWN_STUDY`
    when that cannot be read (the scan then gives the instance its error row)."""
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        uid = str(ds.get("StudyInstanceUID", "") or "").strip()
    except Exception:  # pydicom raises many types on a malformed data set: still spooled, still a row
        uid = ""
    return safe_name(uid) if uid else UNKNOWN_STUDY


def _study_decisions(studies_csv: Path, folders: set[str]) -> dict[str, str]:
    """Study decisions of the worklist, by spool folder, for ``folders``."""
    out: dict[str, str] = {}
    with contextlib.suppress(OSError), open(studies_csv, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            folder = safe_name(row.get("StudyInstanceUID", ""))
            if folder in folders:
                out[folder] = row.get("decision", "")
    return out
