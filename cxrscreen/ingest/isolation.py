"""Crash-isolated, bounded pixel decoding.

Compressed pixel data is decoded by native codecs (OpenJPEG, libjpeg, CharLS, pylibjpeg-rle) that a
malformed file can take down with the whole process: a Rust panic surfaces as pyo3's
``PanicException`` (a ``BaseException``), CharLS can abort (SIGABRT) or loop forever on a truncated
stream. So compressed files are decoded in small helper processes — one per thread that decodes,
started on first use, replaced when one dies — and a file whose decode kills its helper becomes
``error:decoder_crash``, one that takes longer than ``decode_timeout()`` ``error:decoder_timeout``;
every other file goes on. Uncompressed pixel data (numpy on the file's own bytes) is decoded in
process: it runs no codec, and it is the fast path. ``$CXRSCREEN_DECODE_ISOLATION`` changes that:
``compressed`` (default), ``all`` or ``none`` (everything in process; for measurements only).

Before anything is decoded, :func:`check_pixel_budget` rejects a header whose Rows × Columns ×
frames × samples × BitsAllocated cannot come from its pixel data (uncompressed: more than the
bytes present; RLE: more than 64× the bytes present; any codec: more than ``MAX_DECODED_BYTES``, or
a JPEG/JPEG-LS frame header larger than the DICOM header), so a lying header sizes no allocation.
Each helper also runs under an address-space limit (``$CXRSCREEN_DECODE_MEMORY_MB``, default 4096).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import math
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import JPEG2000TransferSyntaxes, RLELossless

from cxrscreen import faults, settings
from cxrscreen.ingest.decode import Decoded, DecodeError, decode_dataset, read_dataset
from cxrscreen.settings import Isolation

MODES = tuple(m.value for m in Isolation)
START_TIMEOUT_S = 300.0  # a fresh helper imports pydicom and the codecs: a one-off, slower on a busy machine
#: Largest decoded frame accepted (256 MiB: a 11 585² 16-bit image); chest films are 10–40 MiB.
MAX_DECODED_BYTES = 1 << 28
#: RLE (PS3.5 G.3.1): a 2-byte replicate run decodes to at most 128 bytes.
RLE_MAX_EXPANSION = 64
#: Start-of-frame markers: SOF0–SOF15 of JPEG (ISO/IEC 10918-1 B.1.1.3; not DHT, JPG or DAC) and SOF55 of JPEG-LS.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}


def isolation_mode() -> str:
    """Which files are decoded in helpers (:attr:`Settings.decode_isolation <cxrscreen.settings.Settings>`)."""
    return str(settings.current().decode_isolation)


def decode_timeout() -> float:
    """Seconds one file may take in a helper (:attr:`Settings.decode_timeout_s <cxrscreen.settings.Settings>`)."""
    return settings.current().decode_timeout_s


def is_compressed(ds: Dataset) -> bool:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        return bool(ts is not None and ts.is_encapsulated)
    except (AttributeError, ValueError):
        return True  # an unknown syntax: treat as the risky kind


# --------------------------------------------------------------------------- bounds
def check_pixel_budget(ds: Dataset) -> None:
    """Raise ``DecodeError`` when the header's image cannot come from the pixel data present."""
    if "PixelData" not in ds:
        return  # float pixel data, or none: pydicom and QC report it
    try:
        expected = get_expected_length(ds, "bytes")
        data = ds.PixelData
        present = len(data)
    except Exception as exc:  # a missing or non-numeric Rows/Columns/BitsAllocated…
        raise DecodeError("invalid_image_header", _short(exc)) from exc
    if expected <= 0:
        raise DecodeError("invalid_image_header", "the header describes no pixels")
    if not is_compressed(ds):
        if expected > present:
            raise DecodeError("truncated", f"header needs {expected} bytes of pixel data, file holds {present}")
        return
    if expected > MAX_DECODED_BYTES:
        raise DecodeError("image_too_large", f"{expected} bytes decoded > {MAX_DECODED_BYTES}")
    ts = ds.file_meta.TransferSyntaxUID
    if ts == RLELossless and expected > RLE_MAX_EXPANSION * present:
        raise DecodeError("size_mismatch", f"RLE data of {present} bytes cannot hold {expected}")
    if ts not in JPEG2000TransferSyntaxes:  # the JPEG family's frame header sizes the codec's buffer
        try:
            fragments = generate_fragments(data)
            next(fragments)  # the basic offset table
            frame = jpeg_frame_header(next(fragments))
        except Exception:
            frame = None
        if frame is not None:  # else not JPEG, or unparsable: the codec says so
            precision, rows, columns, components = frame
            size = rows * columns * max(1, components) * math.ceil(max(1, precision) / 8)
            if size > MAX_DECODED_BYTES:
                raise DecodeError("image_too_large", f"codestream frame of {size} bytes > {MAX_DECODED_BYTES}")


def jpeg_frame_header(codestream: bytes) -> tuple[int, int, int, int] | None:
    """``(precision, rows, columns, components)`` of a JPEG or JPEG-LS codestream's frame header (SOF).

    Walks the marker segments from SOI to the first SOF by their lengths; None when the stream does
    not start with SOI, a scan or EOI comes first, or it ends before the frame header does.
    """
    if codestream[:2] != b"\xff\xd8":
        return None
    offset = 2
    while offset + 4 <= len(codestream):
        if codestream[offset] != 0xFF:
            return None
        marker = codestream[offset + 1]
        if marker in _SOF_MARKERS:  # length, precision, rows, columns, components
            if offset + 10 > len(codestream):
                return None
            rows = int.from_bytes(codestream[offset + 5:offset + 7], "big")
            columns = int.from_bytes(codestream[offset + 7:offset + 9], "big")
            return codestream[offset + 4], rows, columns, codestream[offset + 9]
        if marker in (0xDA, 0xD9):  # SOS, EOI: no frame header before them
            return None
        offset += 2 + int.from_bytes(codestream[offset + 2:offset + 4], "big")  # the length counts itself
    return None


def _short(exc: BaseException, limit: int = 160) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:limit]


# --------------------------------------------------------------------------- decoding
def decode_here(ds: Dataset, target: int | None) -> Decoded:
    """Decode in this process (the fault-injection point of ``faults.DECODE``)."""
    if settings.current().fault_decode:
        uid = ""
        with contextlib.suppress(Exception):
            uid = str(ds.get("SOPInstanceUID", ""))
        faults.maybe_fail_decode(uid)
    return decode_dataset(ds, target=target)


def decode_pixels(ds: Dataset, source: bytes | Path, target: int | None, mode: str | None = None) -> Decoded:
    """The first frame of ``ds`` (parsed from ``source``) in display polarity, decoded where ``mode`` says.

    Raises ``DecodeError``; ``decoder_crash`` / ``decoder_timeout`` when a helper died or hung on it.
    """
    check_pixel_budget(ds)
    mode = mode or isolation_mode()
    if mode == "all" or (mode == "compressed" and is_compressed(ds)):
        return pool().decode(source, target)
    return decode_here(ds, target)


# --------------------------------------------------------------------------- helper processes
class IsolationError(RuntimeError):
    """A decode helper could not be started: an internal failure, not a bad file (``prepare_file`` re-raises it)."""


class _Helper:
    """One decode helper process and its two pipes (requests in, answers out)."""

    def __init__(self) -> None:
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        env = dict(os.environ, **settings.current().child_env(), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                   MKL_NUM_THREADS="1")
        try:
            # stderr to /dev/null: a dying codec's message may quote the file; the parent logs the outcome
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cxrscreen.ingest.isolation", str(req_r), str(resp_w)],
                pass_fds=(req_r, resp_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env=env)
        except BaseException:
            os.close(req_w)
            os.close(resp_r)
            raise
        finally:
            os.close(req_r)
            os.close(resp_w)
        self.requests = Connection(req_w, readable=False)
        self.answers = Connection(resp_r, writable=False)
        self.ready = False

    def call(self, request: tuple, timeout: float) -> tuple:
        """Send one request; its answer, or ``DecodeError`` (crash, timeout) after killing the helper."""
        if not self.ready:
            global _HELPER_START_S
            t = time.perf_counter()
            try:
                ok = self.answers.poll(START_TIMEOUT_S) and self.answers.recv() == ("ready",)
            except (EOFError, OSError):
                ok = False
            with _POOL_LOCK:
                _HELPER_START_S += time.perf_counter() - t
            if not ok:
                code = self.kill()
                raise IsolationError(f"decode helper process did not start ({_exit_text(code)})")
            self.ready = True
        try:
            self.requests.send(request)
            if not self.answers.poll(timeout):
                self.kill()
                raise DecodeError("decoder_timeout", f"no answer within {timeout:g} s")
            answer = self.answers.recv()
        except (EOFError, OSError) as exc:
            code = self.kill()
            raise DecodeError("decoder_crash", _exit_text(code)) from exc
        if answer[0] == "crash":  # a BaseException (a codec's panic): the helper exits after saying so
            self.kill()
            raise DecodeError("decoder_crash", answer[1])
        return answer

    def alive(self) -> bool:
        return self.proc.poll() is None and not self.requests.closed

    def kill(self) -> int | None:
        """Stop the helper now; its exit code (negative: the signal that ended it)."""
        with contextlib.suppress(OSError):
            self.proc.kill()
        code = self.proc.wait()
        self.close()
        return code

    def close(self) -> None:
        for conn in (self.requests, self.answers):
            with contextlib.suppress(OSError):
                conn.close()

    def stop(self) -> None:
        """Close the pipes (the helper exits at end of input) and reap it."""
        self.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"helper killed by {signal.Signals(-code).name}"
    return f"helper exited with code {code}"


class DecoderPool:
    """Helpers shared by the threads of one process: each call borrows an idle one or starts one."""

    def __init__(self) -> None:
        self._idle: list[_Helper] = []
        self._lock = threading.Lock()
        self.started = 0  # helpers started, replacements included
        self.crashes = 0  # calls that ended in decoder_crash / decoder_timeout

    def decode(self, source: bytes | Path, target: int | None) -> Decoded:
        global _HELPER_CPU_S
        helper = self._take()
        try:
            answer = helper.call((bytes(source) if not isinstance(source, Path) else str(source), target),
                                 decode_timeout())
        except DecodeError:
            with self._lock:
                self.crashes += 1
            raise
        finally:
            if helper.alive():
                with self._lock:
                    self._idle.append(helper)
        with _POOL_LOCK:
            _HELPER_CPU_S += answer[-1]
        if answer[0] == "ok":
            return answer[1]
        raise DecodeError(answer[1], answer[2])

    def _take(self) -> _Helper:
        with self._lock:
            while self._idle:
                helper = self._idle.pop()
                if helper.alive():
                    return helper
                helper.kill()  # died idle (killed from outside): reap it, not blamed on the next file
            self.started += 1
        try:
            return _Helper()
        except OSError as exc:  # no processes or file descriptors left
            raise IsolationError(f"cannot start a decode helper process: {exc}") from exc

    def shutdown(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for helper in idle:
            helper.stop()

    def forget(self) -> None:
        """In a forked child: drop the parent's helpers without touching them (only our copies of the pipes)."""
        for helper in self._idle:
            helper.close()
        self._idle = []


_POOL: DecoderPool | None = None
_POOL_LOCK = threading.Lock()
_HELPER_CPU_S = 0.0  # CPU seconds helpers reported for this process's answered requests
_HELPER_START_S = 0.0  # seconds this process's threads waited for new helpers to be ready


def helper_cpu_seconds() -> float:
    """CPU time this process's decode helpers spent on the requests they answered (cumulative)."""
    return _HELPER_CPU_S


def helper_start_seconds() -> float:
    """Seconds this process's threads waited for new helpers to start (cumulative, summed over threads):
    a one-off cost that a measurement of the steady decoding rate leaves out."""
    return _HELPER_START_S


def pool() -> DecoderPool:
    """This process's helpers (a forked child, e.g. a DataLoader worker, starts its own)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = DecoderPool()
        return _POOL


def shutdown() -> None:
    """Stop this process's idle helpers (a later decode starts new ones)."""
    global _POOL
    with _POOL_LOCK:
        p, _POOL = _POOL, None
    if p is not None:
        p.shutdown()


@contextlib.contextmanager
def helpers() -> Iterator[None]:
    """A block after which this process's idle helpers are stopped (a scan: no process outlives it)."""
    try:
        yield
    finally:
        shutdown()


def _after_fork_in_child() -> None:
    global _POOL, _POOL_LOCK, _HELPER_CPU_S, _HELPER_START_S
    _POOL_LOCK = threading.Lock()
    _HELPER_CPU_S = _HELPER_START_S = 0.0
    if _POOL is not None:
        _POOL.forget()
    _POOL = None


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(shutdown)


# --------------------------------------------------------------------------- the helper's side
def _limit_memory() -> None:
    mb = settings.current().decode_memory_mb
    if mb > 0:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (mb << 20, mb << 20))


def _answer(request: tuple) -> tuple:
    source, target = request
    try:
        ds = read_dataset(io.BytesIO(source) if isinstance(source, bytes) else source)
        return ("ok", decode_here(ds, target))
    except DecodeError as exc:
        return ("error", exc.reason, exc.detail)
    except MemoryError:
        return ("error", "out_of_memory", "")
    except Exception as exc:
        return ("error", f"unexpected_{type(exc).__name__}", _short(exc))


def serve(req_fd: int, resp_fd: int) -> None:
    """The helper's loop: decode requests until the parent closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    settings.load()  # the helper's edge: the settings the parent handed it (Settings.child_env)
    _limit_memory()
    requests, answers = Connection(req_fd, writable=False), Connection(resp_fd, readable=False)
    answers.send(("ready",))
    backstop = math.ceil(decode_timeout()) + 30  # an orphaned, hung helper still ends
    while True:
        try:
            request = requests.recv()
        except EOFError:
            return
        signal.alarm(backstop)
        cpu = time.process_time()
        try:
            answer = _answer(request)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 (a Rust panic through pyo3): report, then exit
            answers.send(("crash", f"{type(exc).__name__}: {_short(exc)}"))
            os._exit(70)
        signal.alarm(0)
        answers.send((*answer, time.process_time() - cpu))


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
