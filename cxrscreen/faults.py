"""Fault-injection points for tests; inert unless their environment variable is set (README, "Fault injection";
read with the other settings, :mod:`cxrscreen.settings`).

``CXRSCREEN_FAULT_KILL_AFTER_BATCH=N``
    ``scan`` sends SIGKILL to its own process right after its N-th batch was committed to the
    ledger: a ``kill -9`` (OOM killer, power cut) at a known point instead of a timed one.
``CXRSCREEN_FAULT_DECODE=ACTION@UID[,ACTION@UID…]``
    decoding the pixels of the file whose SOPInstanceUID is ``UID`` does ``ACTION`` instead:
    ``abort`` calls :func:`os.abort` (SIGABRT, as CharLS does on some corrupt streams), ``panic``
    raises :class:`InjectedPanic`, a ``BaseException`` like pyo3's ``PanicException`` (how a Rust
    codec's panic surfaces), ``hang`` blocks forever. It acts where the pixels are decoded: in a
    decode helper process for compressed files, in the calling process otherwise.
``CXRSCREEN_FAULT_ACTOR_CRASH=1``
    ``scan --engine ray``: every scoring actor SIGKILLs its own process at the start of every batch (a
    native crash or an OOM kill that recurs), so Ray's bounded restarts run out. The actors get it with
    the driver's other settings.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping

from cxrscreen import settings

KILL_AFTER_BATCH = settings.FAULT_KILL_AFTER_BATCH
DECODE = settings.FAULT_DECODE
ACTOR_CRASH = settings.FAULT_ACTOR_CRASH


class InjectedPanic(BaseException):  # noqa: N818 (named like the PanicException it stands for)
    """Raised by the ``panic`` decode fault: not an ``Exception``, as a Rust panic through pyo3 is not."""


def kill_after_batch(committed: int) -> None:
    """SIGKILL this process when ``committed`` is the configured batch (:attr:`Settings.fault_kill_after_batch
    <cxrscreen.settings.Settings>`)."""
    if committed == settings.current().fault_kill_after_batch:
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_fail_decode(sop_instance_uid: str) -> None:
    """Do the injected decode fault for this file, if one is configured."""
    action = settings.current().fault_decode.get(sop_instance_uid)
    if action == "abort":
        os.abort()
    if action == "panic":
        raise InjectedPanic("injected decoder panic")
    if action == "hang":
        threading.Event().wait()


def maybe_crash_actor(env: Mapping[str, str]) -> None:
    """SIGKILL this process (a scoring actor's) when ``env``, the settings the driver handed it
    (:meth:`Settings.child_env <cxrscreen.settings.Settings.child_env>`), has the actor-crash fault on."""
    if settings.Settings.from_env(env).fault_actor_crash:
        os.kill(os.getpid(), signal.SIGKILL)
