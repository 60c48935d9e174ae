"""``scan``: DICOM folder → QC → MONAI preprocessing → ResNet50 → worklists and reports (the Python API).

The stages live in their own modules (:mod:`cxrscreen.ingest`, :mod:`cxrscreen.qc`,
:mod:`cxrscreen.preprocess`, :mod:`cxrscreen.prepare`, :mod:`cxrscreen.model`, :mod:`cxrscreen.outputs`,
:mod:`cxrscreen.state`); this package runs them:

- :mod:`.run` — ``scan()``: lock, ledger, planning (what needs work), the stages in order, exit code;
- :mod:`.context` — the :class:`~.context.RunContext` every step of a run shares, and the process
  state the API borrows and restores;
- :mod:`.schedule` — how the cores are shared between decoding and the forward pass;
- :mod:`.scoring` — batches prepared (in process or by worker processes), scored, committed;
- :mod:`.run_summary` — ``run.json`` and the drift check;

The model is a :class:`~cxrscreen.model.lazy.LazyModel`: its metadata at once, torch and the network
only when a film is to be scored (DESIGN.md: no model when there is nothing to score).
"""

from cxrscreen.pipeline.context import ScanInputError, ScanResult
from cxrscreen.pipeline.run import scan
from cxrscreen.state.ledger import STATE_DIR

__all__ = ["STATE_DIR", "ScanInputError", "ScanResult", "scan"]
