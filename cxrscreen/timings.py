"""Where a run's time goes: seconds per stage, added up by ``with timings.stage("pdf"):``.

A :class:`Timings` is a ``Counter`` of seconds (``run.json``'s ``durations_s``), so stages measured in
other ways (CPU time, sums over threads) are added to it as before.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator


class Timings(Counter[str]):
    """Seconds per stage of one run."""

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the wall time of the ``with`` block to ``name`` (also when the block raises)."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self[name] += time.perf_counter() - t
