"""The scoring engine of a run: what needs work, and how films are prepared and scored.

:func:`cxrscreen.scan` (:mod:`cxrscreen.run`) runs a whole scan; this package is its engine and knows
nothing of the outputs (worklists, reports, DICOM results) that the run writes from its records:

- :mod:`.plan` — the run id, and which files need work (the ledger skips the rest);
- :mod:`.context` — the :class:`~.context.RunContext` every step of a run shares, and the process
  state the API borrows and restores;
- :mod:`.schedule` — how the cores are shared between decoding and the forward pass;
- :mod:`.scoring` — batches prepared (in process or by worker processes), scored, committed;
- :mod:`.run_summary` — ``run.json`` and the drift check.

The model is a :class:`~cxrscreen.model.lazy.LazyModel`: its metadata at once, torch and the network
only when a film is to be scored (DESIGN.md: no model when there is nothing to score).
"""

from cxrscreen.pipeline.context import ScanInputError, ScanResult, ScanStopped
from cxrscreen.state.ledger import STATE_DIR

__all__ = ["STATE_DIR", "ScanInputError", "ScanResult", "ScanStopped"]
