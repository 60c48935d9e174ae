"""The SQLite ledger: what has been scored, by which model, so nightly runs are incremental.

One row per file (path relative to the scanned folder). A file is skipped when its size and
mtime match the ledger (fast path) or, when they differ, its sha256 still matches — and the
row was scored by the same model (weights sha256). Every write is a transaction.
"""

from __future__ import annotations

import json
import time
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cxrscreen.populations import OperatingPoints
from cxrscreen.records import ImageRecord, Status, decide
from cxrscreen.state.atomic import sha256_file
from cxrscreen.state.sqlite import Database

#: A row's study key in SQL, as :attr:`ImageRecord.study_key` has it: the StudyInstanceUID, else ``file:<path>``.
STUDY_KEY_SQL = "COALESCE(NULLIF(json_extract(tags, '$.StudyInstanceUID'), ''), 'file:' || path)"
STUDY_BATCH = 1000  # rows per batch of records_by_study

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    sop_uid TEXT NOT NULL DEFAULT '',
    model_sha256 TEXT NOT NULL,
    status TEXT NOT NULL,
    qc_notes TEXT NOT NULL DEFAULT '',
    probability REAL,
    threshold REAL NOT NULL,
    population TEXT NOT NULL DEFAULT '',
    decision TEXT NOT NULL,
    report TEXT NOT NULL DEFAULT '',
    tags TEXT NOT NULL DEFAULT '{}',
    run_id TEXT NOT NULL,
    scored_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS images_sop ON images (sop_uid, sha256);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started TEXT NOT NULL,
    finished TEXT,
    summary TEXT
);
"""


#: Columns added after the first release: (name, declaration), added to an existing ledger on open.
ADDED_COLUMNS = (("population", "TEXT NOT NULL DEFAULT ''"),)

STATE_DIR = ".cxrscreen"  # under OUT: the ledger, the lock, pages kept for reports
PAGES_DIR = "pages"  # under STATE_DIR: report pages made while scoring (cxrscreen.pages.PageStore)
LEDGER_NAME = "ledger.sqlite"

file_sha256 = sha256_file  # the content fingerprint that confirms a changed size/mtime


@dataclass(frozen=True)
class Known:
    size: int
    mtime_ns: int
    sha256: str
    model_sha256: str


def ledger_path(out: Path | str) -> Path:
    """The ledger of the output folder ``out``: ``OUT/.cxrscreen/ledger.sqlite``."""
    return Path(out) / STATE_DIR / LEDGER_NAME


class Ledger(Database):
    """Thin wrapper over one SQLite connection (WAL, synchronous=FULL)."""

    SCHEMA = SCHEMA

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        for column, decl in ADDED_COLUMNS:  # a ledger written by an earlier release
            if column not in self.columns():
                self.db.execute(f"ALTER TABLE images ADD COLUMN {column} {decl}")

    def columns(self) -> set[str]:
        return {row[1] for row in self.db.execute("PRAGMA table_info(images)")}

    def known(self) -> dict[str, Known]:
        rows = self.db.execute("SELECT path, size, mtime_ns, sha256, model_sha256 FROM images")
        return {r[0]: Known(r[1], r[2], r[3], r[4]) for r in rows}

    def touch(self, path: str, size: int, mtime_ns: int) -> None:
        """Same content, new mtime/size metadata: remember it so the fast path hits next time."""
        self.db.execute("UPDATE images SET size=?, mtime_ns=? WHERE path=?", (size, mtime_ns, path))

    def put(self, records: Iterable[ImageRecord]) -> None:
        """Insert or replace scored records in one transaction (each carries its model, threshold and run)."""
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        rows = []
        for r in records:
            if r.threshold is None or not r.model_sha256 or not r.run_id:
                raise ValueError(f"record {r.path!r} lacks its threshold, model or run")
            rows.append((r.path, r.size, r.mtime_ns, r.sha256, r.tag("SOPInstanceUID"), r.model_sha256, str(r.status),
                         ";".join(r.qc_notes), r.probability, r.threshold, r.population, r.decision, r.report,
                         json.dumps(r.tags, sort_keys=True), r.run_id, r.scored_at or now))
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(
                "INSERT OR REPLACE INTO images (path, size, mtime_ns, sha256, sop_uid, model_sha256, status, "
                "qc_notes, probability, threshold, population, decision, report, tags, run_id, scored_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )

    def redecide(self, model_sha256: str, points: OperatingPoints) -> int:
        """Apply new operating points to rows scored by the same weights (no decoding needed): each row
        takes its population's threshold; a row without a population (an earlier release) gets one from
        its stored tags."""
        rows = self.db.execute(
            "SELECT path, status, probability, qc_notes, threshold, population, tags FROM images WHERE model_sha256=?",
            (model_sha256,),
        )  # read row by row (the updates are made after the loop)
        updates = []
        for path, st, p, n, thr, stored, tags in rows:
            notes, pop = tuple(x for x in n.split(";") if x), stored
            if pop not in points.names:
                a = points.assign(json.loads(tags), scored=Status(st).is_ok)
                pop, notes = a.population, (*notes, *(x for x in a.notes if x not in notes))
            new = points.threshold_of(pop)
            if new != thr or pop != stored:
                updates.append((decide(st, p, new, notes), new, pop, ";".join(notes), path))
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("UPDATE images SET decision=?, threshold=?, population=?, qc_notes=? WHERE path=?",
                                updates)
        return len(updates)

    def set_report(self, path: str, report: str) -> None:
        with self.db:
            self.db.execute("UPDATE images SET report=? WHERE path=?", (report, path))

    def _select(self) -> str:
        population = "population" if "population" in self.columns() else "''"  # read-only, earlier release
        return ("SELECT path, status, tags, qc_notes, probability, decision, report, size, mtime_ns, threshold, "
                f"model_sha256, run_id, scored_at, sha256, {population} FROM images")

    def records(self, run_id: str | None = None) -> Iterator[ImageRecord]:
        sql = self._select()
        args: tuple = ()
        if run_id is not None:
            sql += " WHERE run_id=?"
            args = (run_id,)
        shared: dict[str, str] = {}
        for row in self.db.execute(sql + " ORDER BY path", args):
            yield self._record(row, shared)

    def records_by_study(self, batch: int = STUDY_BATCH) -> Iterator[list[ImageRecord]]:
        """Every record, in study order (:attr:`ImageRecord.study_key`, then path), ``batch`` rows at a time.

        The order (row ids) is read first and each batch's rows when it is asked for: no cursor stays open
        while the caller writes to the ledger (report paths), and the caller holds one batch of records, not
        the ledger (:func:`cxrscreen.studies.study_batches` makes them studies).
        """
        order = array("q", (i for (i,) in self.db.execute(f"SELECT rowid FROM images ORDER BY {STUDY_KEY_SQL}, path")))
        select = self._select().replace("SELECT ", "SELECT rowid, ", 1)
        for start in range(0, len(order), batch):
            ids = order[start:start + batch]
            rows = {row[0]: row[1:] for row in
                    self.db.execute(f"{select} WHERE rowid IN ({','.join('?' * len(ids))})", tuple(ids))}
            shared: dict[str, str] = {}
            yield [self._record(rows[i], shared) for i in ids if i in rows]

    @staticmethod
    def _record(row: tuple, shared: dict[str, str]) -> ImageRecord:
        """One row as a record. Text that recurs from row to row (tag keywords and common values, decisions,
        model and run ids, times) is one ``str`` object shared through ``shared``: a worklist built from a
        large ledger holds each once, not once per row."""
        path, status, tags, notes, prob, decision, report, size, mtime, thr, msha, run_id, when, sha, pop = row
        one = shared.setdefault
        tag_values = {one(k, k): one(v, v) for k, v in json.loads(tags).items()}
        return ImageRecord(path=path, status=Status(status), tags=tag_values,
                           qc_notes=tuple(one(n, n) for n in notes.split(";") if n), probability=prob,
                           decision=one(decision, decision), report=report, size=size, mtime_ns=mtime, sha256=sha,
                           threshold=float(thr), population=one(pop, pop), model_sha256=one(msha, msha),
                           run_id=one(run_id, run_id), scored_at=one(when, when))

    def start_run(self, run_id: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO runs (run_id, started) VALUES (?, ?)",
                            (run_id, time.strftime("%Y-%m-%dT%H:%M:%S")))

    def has_run(self, run_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM runs WHERE run_id=?", (run_id,)).fetchone() is not None

    def unfinished_runs(self, exclude: str) -> list[str]:
        """Runs that started but never finished (killed): the next run delivers their rows."""
        rows = self.db.execute("SELECT run_id FROM runs WHERE finished IS NULL AND run_id != ? "
                               "ORDER BY started, run_id", (exclude,))
        return [r[0] for r in rows]

    def finish_run(self, run_id: str, summary: dict, resumed: Iterable[str] = ()) -> None:
        """Record the summary; ``resumed`` (killed runs whose rows this run delivered) are closed too."""
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("UPDATE runs SET finished=?, summary=? WHERE run_id=?", (now, json.dumps(summary), run_id))
            self.db.executemany("UPDATE runs SET finished=? WHERE run_id=?", [(now, r) for r in resumed])

    def previous_summaries(self, limit: int = 7, exclude: str | None = None) -> list[dict]:
        rows = self.db.execute(
            "SELECT summary FROM runs WHERE summary IS NOT NULL AND run_id != ? ORDER BY started DESC, run_id DESC "
            "LIMIT ?",
            (exclude or "", limit),
        )
        return [json.loads(r[0]) for r in rows]
