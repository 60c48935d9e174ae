"""The outbox of ``send``: which result object (by SOPInstanceUID and content sha256) each destination
has acknowledged, so a second ``send`` sends only what is new or changed. A table of its own
(``acknowledged``) in the ledger database (``send`` opens ``OUT/.cxrscreen/ledger.sqlite``)."""

from __future__ import annotations

import time

from cxrscreen.state.sqlite import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS acknowledged (
    destination TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    status INTEGER NOT NULL,
    acknowledged_at TEXT NOT NULL,
    PRIMARY KEY (destination, sop_uid)
);
"""


class Outbox(Database):
    """One SQLite connection (WAL, synchronous=FULL); each acknowledgement is committed at once."""

    SCHEMA = SCHEMA

    def is_acknowledged(self, destination: str, sop_uid: str, sha256: str) -> bool:
        """Whether ``destination`` acknowledged this very content of ``sop_uid``."""
        row = self.db.execute("SELECT sha256 FROM acknowledged WHERE destination=? AND sop_uid=?",
                              (destination, sop_uid)).fetchone()
        return row is not None and row[0] == sha256

    def acknowledge(self, destination: str, sop_uid: str, sha256: str, status: int = 0) -> None:
        """Record that ``destination`` stored ``sop_uid`` with content ``sha256`` (C-STORE ``status``)."""
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO acknowledged (destination, sop_uid, sha256, status, "
                            "acknowledged_at) VALUES (?,?,?,?,?)", (destination, sop_uid, sha256, status, now))

    def count(self, destination: str | None = None) -> int:
        sql, args = "SELECT COUNT(*) FROM acknowledged", ()
        if destination is not None:
            sql, args = sql + " WHERE destination=?", (destination,)
        return int(self.db.execute(sql, args).fetchone()[0])
