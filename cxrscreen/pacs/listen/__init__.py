"""``cxrscreen listen``: a DICOM node that receives images (C-STORE), scores each study once it goes
quiet, and forwards the results.

- :mod:`.spool` — every received instance on disk, fsynced, before it is acknowledged;
- :mod:`.node` — the SCP (pynetdicom), the scoring thread (the scan pipeline, model kept warm) and
  the forward (the ``send`` code).
"""

from cxrscreen.pacs.listen.node import ListenConfig, ListenError, Node, NodeStats
from cxrscreen.pacs.listen.spool import SPOOL_DIR, Spool

__all__ = ["SPOOL_DIR", "ListenConfig", "ListenError", "Node", "NodeStats", "Spool"]
