"""Fault-injection points for tests; inert unless their environment variable is set (README, "Fault injection").

``CXRSCREEN_FAULT_KILL_AFTER_BATCH=N``
    ``scan`` sends SIGKILL to its own process right after its N-th batch was committed to the
    ledger: a ``kill -9`` (OOM killer, power cut) at a known point instead of a timed one.
``CXRSCREEN_FAULT_DECODE=ACTION@UID[,ACTION@UID…]``
    decoding the pixels of the file whose SOPInstanceUID is ``UID`` does ``ACTION`` instead:
    ``abort`` calls :func:`os.abort` (SIGABRT, as CharLS does on some corrupt streams), ``panic``
    raises :class:`InjectedPanic`, a ``BaseException`` like pyo3's ``PanicException`` (how a Rust
    codec's panic surfaces), ``hang`` blocks forever. It acts where the pixels are decoded: in a
    decode helper process for compressed files, in the calling process otherwise.
"""

from __future__ import annotations

import os
import signal
import threading

KILL_AFTER_BATCH = "CXRSCREEN_FAULT_KILL_AFTER_BATCH"
DECODE = "CXRSCREEN_FAULT_DECODE"
DECODE_ACTIONS = ("abort", "panic", "hang")


class InjectedPanic(BaseException):  # noqa: N818 (named like the PanicException it stands for)
    """Raised by the ``panic`` decode fault: not an ``Exception``, as a Rust panic through pyo3 is not."""


def kill_after_batch(committed: int) -> None:
    """SIGKILL this process when ``committed`` equals ``$CXRSCREEN_FAULT_KILL_AFTER_BATCH``."""
    value = os.environ.get(KILL_AFTER_BATCH, "")
    if value.strip().isdigit() and committed == int(value):
        os.kill(os.getpid(), signal.SIGKILL)


def decode_faults() -> dict[str, str]:
    """``{SOPInstanceUID: action}`` from ``$CXRSCREEN_FAULT_DECODE`` (empty when unset)."""
    out: dict[str, str] = {}
    for item in os.environ.get(DECODE, "").split(","):
        action, sep, uid = item.strip().partition("@")
        if sep and action in DECODE_ACTIONS and uid:
            out[uid.strip()] = action
    return out


def maybe_fail_decode(sop_instance_uid: str) -> None:
    """Do the injected decode fault for this file, if one is configured."""
    action = decode_faults().get(sop_instance_uid) if os.environ.get(DECODE) else None
    if action == "abort":
        os.abort()
    if action == "panic":
        raise InjectedPanic("injected decoder panic")
    if action == "hang":
        threading.Event().wait()
