"""The one way cxrscreen opens its SQLite files: WAL, synchronous=FULL, owner/group-only."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Self


class Database:
    """One SQLite connection (autocommit; explicit transactions), its ``SCHEMA`` created if missing."""

    SCHEMA = ""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(self.SCHEMA)
        path.chmod(0o640)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
