"""What a run has to do: its id, and which files need work (the rest are in the ledger, unchanged, same model)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from cxrscreen.state.ledger import Ledger, file_sha256

RUN_ID_TIME = "%Y%m%dT%H%M%SZ"
RUN_ID_MAX_SUFFIX = 999


def new_run_id(taken: Callable[[str], bool], now: float | None = None) -> str:
    """The run id: the UTC start time (``20261125T021500Z``), unique without waiting for the clock.

    When that id is ``taken`` (a run earlier in the same second), ``-001``, ``-002``… is appended:
    ids still sort in start order, as text (``…00Z`` < ``…00Z-001`` < ``…01Z``). Called under the
    output folder's lock, so no other run picks an id meanwhile.
    """
    base = time.strftime(RUN_ID_TIME, time.gmtime(now))
    for n in range(RUN_ID_MAX_SUFFIX + 1):
        run_id = f"{base}-{n:03d}" if n else base
        if not taken(run_id):
            return run_id
    raise RuntimeError(f"more than {RUN_ID_MAX_SUFFIX} runs started at {base}")


def plan(
    files: list[Path], root: Path, ledger: Ledger, model_sha: str, rescan: bool,
    on_work: Callable[[], None] | None = None,
) -> tuple[list[tuple[Path, str | None]], int]:
    """Which files need work, and how many were skipped as already scored.

    Work items are ``(path, sha256)`` pairs; the sha256 is ``None`` for files the ledger has never
    seen: preparation hashes the very bytes it scores (one read). ``on_work`` is called once, as soon
    as a file needs work (the scan starts loading the model then, while the plan goes on).
    """
    known = ledger.known()
    todo: list[tuple[Path, str | None]] = []
    skipped = 0
    for p in files:
        rel = p.relative_to(root).as_posix()
        st = p.stat()
        k = known.get(rel)
        sha = None
        if k is not None and not rescan and k.model_sha256 == model_sha:
            if k.size == st.st_size and k.mtime_ns == st.st_mtime_ns:
                skipped += 1
                continue
            sha = file_sha256(p)
            if sha == k.sha256:
                ledger.touch(rel, st.st_size, st.st_mtime_ns)
                skipped += 1
                continue
        todo.append((p, sha))
        if on_work is not None:
            on_work()
            on_work = None
    return todo, skipped
