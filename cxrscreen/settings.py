"""The settings that come from the environment (README, "Environment variables"), read once, at the edge.

A process reads its environment once: the CLI when it starts (:func:`load`), a Python caller on first
use (:func:`current`), a decode helper process when it starts. Deeper code asks :func:`current` and
never reads ``os.environ``. :func:`override` changes them for a ``with`` block and puts them back;
:meth:`Settings.child_env` hands the same settings to a helper process.

A value that cannot be used is ignored (the default applies) and named in :attr:`Settings.ignored`,
which the CLI logs: a mistyped tuning variable must not stop a night's run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

DISABLE_BF16 = "CXRSCREEN_DISABLE_BF16"
DECODE_ISOLATION = "CXRSCREEN_DECODE_ISOLATION"
DECODE_TIMEOUT_S = "CXRSCREEN_DECODE_TIMEOUT_S"
DECODE_MEMORY_MB = "CXRSCREEN_DECODE_MEMORY_MB"
FAULT_KILL_AFTER_BATCH = "CXRSCREEN_FAULT_KILL_AFTER_BATCH"
FAULT_DECODE = "CXRSCREEN_FAULT_DECODE"
FAULT_ACTOR_CRASH = "CXRSCREEN_FAULT_ACTOR_CRASH"
DECODE_FAULTS = ("abort", "panic", "hang")


class Isolation(StrEnum):
    """Which files are decoded in helper processes: ``compressed`` (the risky codecs), ``all``, or ``none``."""

    compressed = "compressed"
    all = "all"
    none = "none"


@dataclass(frozen=True)
class Settings:
    """Every setting the environment can change, typed, with its default."""

    #: answer "no native bf16", so precision ``auto`` takes the AVX2-only CPUs' path (``make test-avx2``)
    disable_bf16: bool = False
    decode_isolation: Isolation = Isolation.compressed
    #: seconds one file may take in a decode helper; far above a sane film's decode
    decode_timeout_s: float = 60.0
    #: address-space limit of a decode helper (MiB; 0: none)
    decode_memory_mb: int = 4096
    #: fault injection (tests): SIGKILL the scan right after its N-th committed batch
    fault_kill_after_batch: int | None = None
    #: fault injection (tests): SOPInstanceUID → ``abort``, ``panic`` or ``hang`` where its pixels are decoded
    fault_decode: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: fault injection (tests): every ``--engine ray`` scoring actor SIGKILLs itself at each batch
    fault_actor_crash: bool = False
    #: variables that were set but could not be used (their defaults applied)
    ignored: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """The settings a process with this environment runs with."""
        ignored: list[str] = []
        kw: dict[str, Any] = {}

        def raw(name: str) -> str | None:
            value = environ.get(name)
            return None if value is None or not value.strip() else value.strip()

        if (v := raw(DISABLE_BF16)) is not None:
            kw["disable_bf16"] = v == "1"
        if (v := raw(DECODE_ISOLATION)) is not None:
            try:
                kw["decode_isolation"] = Isolation(v.lower())
            except ValueError:
                ignored.append(DECODE_ISOLATION)
        for name, key, kind in ((DECODE_TIMEOUT_S, "decode_timeout_s", float),
                                (DECODE_MEMORY_MB, "decode_memory_mb", int)):
            if (v := raw(name)) is not None:
                try:
                    number = kind(v)
                except ValueError:
                    number = None
                if number is None or number < 0 or (key == "decode_timeout_s" and number == 0):
                    ignored.append(name)
                else:
                    kw[key] = number
        if (v := raw(FAULT_KILL_AFTER_BATCH)) is not None:
            if v.isdigit():
                kw["fault_kill_after_batch"] = int(v)
            else:
                ignored.append(FAULT_KILL_AFTER_BATCH)
        if (v := raw(FAULT_ACTOR_CRASH)) is not None:
            kw["fault_actor_crash"] = v == "1"
        if (v := raw(FAULT_DECODE)) is not None:
            faults: dict[str, str] = {}
            for item in v.split(","):
                action, sep, uid = item.strip().partition("@")
                if sep and action in DECODE_FAULTS and uid.strip():
                    faults[uid.strip()] = action
            kw["fault_decode"] = MappingProxyType(faults)
        return cls(**kw, ignored=tuple(ignored))

    def child_env(self) -> dict[str, str]:
        """The variables that give a helper process these settings (whatever its inherited environment says)."""
        env = {DISABLE_BF16: "1" if self.disable_bf16 else "0", DECODE_ISOLATION: str(self.decode_isolation),
               DECODE_TIMEOUT_S: repr(self.decode_timeout_s), DECODE_MEMORY_MB: str(self.decode_memory_mb),
               FAULT_KILL_AFTER_BATCH: "" if self.fault_kill_after_batch is None else str(self.fault_kill_after_batch),
               FAULT_DECODE: ",".join(f"{action}@{uid}" for uid, action in self.fault_decode.items()),
               FAULT_ACTOR_CRASH: "1" if self.fault_actor_crash else ""}
        return env


_lock = threading.Lock()
_current: Settings | None = None


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from ``environ`` (default: this process's environment) and make them current."""
    global _current
    s = Settings.from_env(os.environ if environ is None else environ)
    with _lock:
        _current = s
    return s


def current() -> Settings:
    """This process's settings: read from the environment on first use unless :func:`load` ran."""
    s = _current
    return s if s is not None else load()


@contextlib.contextmanager
def override(**changes: Any) -> Iterator[Settings]:
    """The current settings with ``changes`` for the ``with`` block (process-wide), then back as they were."""
    global _current
    before = current()
    if "fault_decode" in changes:
        changes["fault_decode"] = MappingProxyType(dict(changes["fault_decode"]))
    s = dataclasses.replace(before, **changes)
    with _lock:
        _current = s
    try:
        yield s
    finally:
        with _lock:
            _current = before
