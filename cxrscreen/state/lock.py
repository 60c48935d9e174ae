"""An OS-level lock on the output folder (``flock``): released by the kernel if the process dies."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


class LockedError(RuntimeError):
    """Another process holds the lock."""


_HELD: set[int] = set()  # lock fds this process holds


def _drop_in_child() -> None:
    """A forked child (a DataLoader worker) shares the lock; close its copy so that the lock dies
    with the process that took it, not seconds later with orphaned workers after a ``kill -9``."""
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_in_child)


@contextlib.contextmanager
def folder_lock(state_dir: Path) -> Iterator[Path]:
    """Hold ``state_dir/lock`` exclusively for the duration of the block; never waits."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    _HELD.add(fd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LockedError(f"another cxrscreen run holds {path}") from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        if fd in _HELD:  # not in a forked child, which already closed its copy
            _HELD.discard(fd)
            os.close(fd)  # closing releases the flock
