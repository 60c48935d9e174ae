"""cxrscreen: overnight chest X-ray triage (research use, not a medical device).

The Python API: :func:`scan` (:mod:`cxrscreen.run`), imported on first use so that ``import cxrscreen``
stays light.
"""

from __future__ import annotations

from typing import Any

from cxrscreen.version import __version__

__all__ = ["__version__", "scan"]


def __getattr__(name: str) -> Any:
    if name == "scan":
        from cxrscreen.run import scan

        return scan
    raise AttributeError(f"module 'cxrscreen' has no attribute {name!r}")
