"""Unit tests for what makes nightly runs safe: atomic writes, the ledger, the lock, planning, drift."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cxrscreen.pipeline.plan import plan
from cxrscreen.records import ImageRecord
from cxrscreen.runs import DRIFT_BOUNDS, DRIFT_MIN_IMAGES, RunSummary, drift_check
from cxrscreen.state.atomic import atomic_open, atomic_write_text
from cxrscreen.state.ledger import Ledger, file_sha256
from cxrscreen.state.lock import LockedError, folder_lock
from cxrscreen.studies import group_studies, study_batches

REPO = Path(__file__).resolve().parents[1]
MODEL_A, MODEL_B = "a" * 64, "b" * 64


# --------------------------------------------------------------------------- atomic writes
def test_atomic_write_replaces_with_owner_group_mode(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.txt"
    atomic_write_text(target, "one\n")
    atomic_write_text(target, "two\n")
    assert target.read_text() == "two\n"
    assert target.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.txt"]


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as fh:
        fh.write("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


# --------------------------------------------------------------------------- ledger
def _rec(path: str, status: str = "ok", prob: float | None = 0.7, decision: str = "abnormal", sha: str = "s",
         model: str = MODEL_A, run_id: str = "r1") -> ImageRecord:
    return ImageRecord(path=path, status=status, tags={"SOPInstanceUID": f"1.2.{len(path)}", "PatientID": "P1"},
                       probability=prob, decision=decision, size=10, mtime_ns=123, sha256=sha, threshold=0.5,
                       model_sha256=model, run_id=run_id)


def test_ledger_one_row_per_path_with_sop_uid_and_sha(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as led:
        led.put([_rec("a.dcm", sha="s1"), _rec("b.dcm", sha="s2")])
        led.put([_rec("a.dcm", prob=0.1, decision="normal", sha="s3", run_id="r2")])
        rows = led.db.execute("SELECT path, sha256, sop_uid, run_id, decision FROM images ORDER BY path").fetchall()
        assert rows == [("a.dcm", "s3", "1.2.5", "r2", "normal"), ("b.dcm", "s2", "1.2.5", "r1", "abnormal")]
        recs = list(led.records())
        assert [r.path for r in recs] == ["a.dcm", "b.dcm"]
        assert recs[0].run_id == "r2" and recs[0].tag("PatientID") == "P1" and recs[0].sha256 == "s3"
        assert recs[0].threshold == 0.5 and recs[0].model_sha256 == MODEL_A and recs[0].scored_at
        assert "_run_id" not in recs[0].tags and recs[0].status.kind == "ok"
        assert [r.path for r in led.records("r1")] == ["b.dcm"]
        assert (tmp_path / "l.sqlite").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("batch", [1, 2, 3, 1000])
def test_ledger_studies_batch_by_batch_are_group_studies_of_every_record(tmp_path: Path, batch: int) -> None:
    """records_by_study + study_batches: the same studies, in the same order, as grouping every record at once,
    whatever the batch size (a study is never split): files without a StudyInstanceUID are studies of their
    own, keys compare as Python compares them (non-ASCII, case, a prefix of another key)."""
    uids = ["1.2.10", "1.2.9", "1.2.1", "1.2", "", "", "é.1", "Z.1", "a.1", "1.2.10", "1.2.9", "", "1.2.10"]
    recs = [ImageRecord(path=f"{'dir/' if i % 2 else ''}f{i:02d}.dcm", status="ok", probability=i / 20,
                        decision="normal", tags={"StudyInstanceUID": u} if u or i % 3 else {}, sha256=f"s{i}",
                        threshold=0.5, model_sha256=MODEL_A, run_id="r1")
            for i, u in enumerate(uids)]
    with Ledger(tmp_path / "l.sqlite") as led:
        led.put(recs[::-1])
        batches = list(study_batches(led.records_by_study(batch)))
        whole = group_studies(led.records())
    assert [(s.key, [r.path for r in s.records], s.decision) for b in batches for s in b] == \
        [(s.key, [r.path for r in s.records], s.decision) for s in whole]
    assert len(whole) == 10 and all(b for b in batches)
    assert max(len(b) for b in batches) <= max(batch, 3)  # a batch of rows holds whole studies: at most one more


def test_ledger_put_is_one_transaction(tmp_path: Path) -> None:
    """A batch that fails half-way leaves no row of that batch behind."""
    with Ledger(tmp_path / "l.sqlite") as led:
        bad = _rec("c.dcm").evolve(decision=None)  # NOT NULL violation on the second row
        with pytest.raises(sqlite3.IntegrityError):
            led.put([_rec("b.dcm"), bad])
        assert led.db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 0


def test_ledger_runs_unfinished_and_summaries(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as led:
        for i in range(10):
            led.start_run(f"r{i}")
            led.db.execute("UPDATE runs SET started=? WHERE run_id=?", (f"2026-01-{i + 1:02d}T00:00:00", f"r{i}"))
        for i in range(8):
            led.finish_run(f"r{i}", {"run_id": f"r{i}"})
        assert led.unfinished_runs(exclude="r9") == ["r8"]
        led.finish_run("r9", {"run_id": "r9"}, resumed=["r8"])
        assert led.unfinished_runs(exclude="x") == []
        prev = led.previous_summaries(7, exclude="r9")
        assert [p["run_id"] for p in prev] == ["r7", "r6", "r5", "r4", "r3", "r2", "r1"]  # r8: resumed, no summary


# --------------------------------------------------------------------------- planning (incremental skipping)
def _files(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"f{i}.dcm"
        p.write_bytes(f"content {i}".encode())
        out.append(p)
    return out


def _fill(led: Ledger, root: Path, files: list[Path], model: str = MODEL_A) -> None:
    recs = []
    for p in files:
        st = p.stat()
        recs.append(_rec(p.relative_to(root).as_posix(), sha=file_sha256(p), model=model, run_id="r0")
                    .evolve(size=st.st_size, mtime_ns=st.st_mtime_ns))
    led.put(recs)


def test_plan_skips_same_model_and_content(tmp_path: Path) -> None:
    root = tmp_path / "in"
    files = _files(root)
    with Ledger(tmp_path / "l.sqlite") as led:
        todo, skipped = plan(files, root, led, MODEL_A, rescan=False)
        assert (len(todo), skipped) == (3, 0)
        _fill(led, root, files)
        todo, skipped = plan(files, root, led, MODEL_A, rescan=False)
        assert (todo, skipped) == ([], 3)
        todo, _ = plan(files, root, led, MODEL_B, rescan=False)  # new weights: everything again
        assert [p for p, _ in todo] == files
        todo, _ = plan(files, root, led, MODEL_A, rescan=True)
        assert [p for p, _ in todo] == files


def test_plan_touched_file_is_skipped_and_remembered(tmp_path: Path) -> None:
    root = tmp_path / "in"
    files = _files(root)
    with Ledger(tmp_path / "l.sqlite") as led:
        _fill(led, root, files)
        st = files[0].stat()
        os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
        todo, skipped = plan(files, root, led, MODEL_A, rescan=False)
        assert (todo, skipped) == ([], 3)
        assert led.known()["f0.dcm"].mtime_ns == files[0].stat().st_mtime_ns  # fast path next time


def test_plan_changed_content_is_redone(tmp_path: Path) -> None:
    root = tmp_path / "in"
    files = _files(root)
    with Ledger(tmp_path / "l.sqlite") as led:
        _fill(led, root, files)
        files[1].write_bytes(b"rewritten!")
        todo, skipped = plan(files, root, led, MODEL_A, rescan=False)
        assert [(p, sha) for p, sha in todo] == [(files[1], file_sha256(files[1]))]
        assert skipped == 2


# --------------------------------------------------------------------------- lock
def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    state = tmp_path / ".cxrscreen"
    with folder_lock(state) as path:
        assert path.read_text().strip() == str(os.getpid())
        with pytest.raises(LockedError), folder_lock(state):
            pass
    with folder_lock(state):
        pass
    assert (state / "lock").stat().st_mode & 0o007 == 0


def test_stale_lock_file_does_not_block(tmp_path: Path) -> None:
    state = tmp_path / ".cxrscreen"
    state.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (state / "lock").write_text(f"{dead.pid}\n")
    with folder_lock(state) as path:
        assert path.read_text().strip() == str(os.getpid())


HOLDER = textwrap.dedent("""
    import os, sys, threading
    from pathlib import Path
    from cxrscreen.state.lock import folder_lock
    with folder_lock(Path(sys.argv[1])):
        child = os.fork()
        # one os.write per line: atomic on a pipe, so parent and child lines never interleave (print
        # writes text and newline apart when PYTHONUNBUFFERED is set)
        if child == 0:  # like a DataLoader worker: outlives a SIGKILLed parent (the test kills it)
            os.write(1, b"child-running\\n")  # the at-fork hook has run by now
            threading.Event().wait()
        os.write(1, f"{child}\\n".encode())
        threading.Event().wait()  # until the test's SIGKILL: no sleep to outlast
""")


def _read_lines(fd: int, n: int, timeout: float = 120.0) -> list[str]:
    """Up to ``n`` lines from a pipe, read unbuffered, giving up at ``timeout`` s or end of file (no hang)."""
    data, deadline = b"", time.monotonic() + timeout
    while data.count(b"\n") < n:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").splitlines()


@pytest.mark.slow
def test_lock_dies_with_its_process_not_with_forked_children(tmp_path: Path) -> None:
    state = tmp_path / ".cxrscreen"
    # its own process group: whatever happens, the finally below kills the holder and its forked child
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(state)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO, start_new_session=True)
    try:
        lines = _read_lines(proc.stdout.fileno(), 2)  # the child's pid and "child-running", in either order
        pids = [line.strip() for line in lines if line.strip().isdigit()]
        if len(lines) < 2 or "child-running" not in {line.strip() for line in lines} or len(pids) != 1:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate(timeout=60)
            pytest.fail(f"the lock holder did not report as expected: {lines!r}; stderr: {err.decode()[-2000:]}")
        child = int(pids[0])
        with pytest.raises(LockedError), folder_lock(state):
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        os.kill(child, 0)  # the forked child is still alive…
        with folder_lock(state):  # …but does not hold the lock
            pass
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


# --------------------------------------------------------------------------- drift
def _summary(n: int, flag: float, review: float, median: float) -> RunSummary:
    return RunSummary("r", images_scored=n, flag_rate=flag, review_rate=review, probability_quantiles={"0.5": median})


def test_drift_quiet_without_history_or_small_runs() -> None:
    assert drift_check(_summary(100, 0.9, 0.9, 0.9), []).warnings == ()
    small = [_summary(DRIFT_MIN_IMAGES - 1, 0.1, 0.1, 0.1)] * 7
    res = drift_check(_summary(100, 0.9, 0.9, 0.9), small)
    assert res.compared_runs == 0 and res.warnings == ()
    res = drift_check(_summary(DRIFT_MIN_IMAGES - 1, 0.9, 0.9, 0.9), [_summary(100, 0.1, 0.1, 0.1)])
    assert res.warnings == ()


def test_drift_within_bounds_is_quiet() -> None:
    prev = [_summary(50, 0.20, 0.05, 0.30), _summary(50, 0.30, 0.15, 0.40)]  # means 0.25, 0.10, 0.35
    res = drift_check(_summary(50, 0.25 + 0.14, 0.10 - 0.14, 0.35 + 0.14), prev)
    assert res.compared_runs == 2 and res.warnings == ()
    assert res.baseline == pytest.approx({"flag_rate": 0.25, "review_rate": 0.10, "median_probability": 0.35})
    assert res.bounds == DRIFT_BOUNDS


def test_drift_beyond_bounds_warns_per_metric() -> None:
    prev = [_summary(50, 0.20, 0.10, 0.30)] * 7
    res = drift_check(_summary(50, 0.20 + 0.16, 0.10, 0.30 - 0.16), prev)
    assert len(res.warnings) == 2
    assert res.warnings[0].startswith("flag_rate 0.360 vs 0.200 over the last 7 runs")
    assert res.warnings[1].startswith("median_probability")
