"""``scan``: DICOM folder → QC → MONAI preprocessing → ResNet50 → worklists (the Python API).

The stages live in their own modules (ingest, qc, preprocess, model, outputs, state); this module
wires them: discovery and the ledger decide what needs work; files are decoded and preprocessed in
the main process or by DataLoader worker processes (whichever the first batch's timings predict is
faster, :func:`choose_schedule`) while the main process scores batches; every scored batch is
committed to the ledger before the next one, so a killed run loses nothing. Compressed pixel data
is decoded in helper processes (:mod:`cxrscreen.ingest.isolation`), so a file that crashes or hangs
a codec is one ``error:decoder_crash``/``decoder_timeout`` row, and a DataLoader worker that dies
is replaced (:func:`_recover`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from torch.utils.data import DataLoader, Dataset

from cxrscreen import __version__, faults
from cxrscreen.ingest import isolation
from cxrscreen.ingest.decode import DecodeError, extract_tags, read_dataset
from cxrscreen.ingest.discover import DICOMDIR_SOP_CLASS, discover, looks_like_dicom
from cxrscreen.ingest.tags import tag_notes
from cxrscreen.model.files import LoadedModel, load_model
from cxrscreen.model.inference import Runtime, choose_runtime, predict_batch, scoring_net
from cxrscreen.outputs.worklist import images_frame, studies_frame, write_csv
from cxrscreen.preprocess import PreprocessSpec, build_transform
from cxrscreen.qc import OK, check_header, check_pixels, error, not_assessable, polarity_suspect
from cxrscreen.records import ABNORMAL, REVIEW, ImageRecord, decide
from cxrscreen.state.atomic import atomic_write_text
from cxrscreen.state.ledger import Ledger, file_sha256
from cxrscreen.state.lock import folder_lock

log = logging.getLogger("cxrscreen")

STATE_DIR = ".cxrscreen"
REPORT_POLICIES = ("flagged", "all", "none")


class ScanInputError(ValueError):
    """A usage problem (missing folder, unusable model…): exit code 2."""


@dataclass
class ScanResult:
    """What a scan did; ``summary`` is also written as ``runs/<id>/run.json``."""

    run_id: str
    out: Path
    images_csv: Path
    studies_csv: Path
    run_dir: Path
    exit_code: int
    summary: dict[str, Any] = field(default_factory=dict)


def instance_hash(text: str) -> str:
    """Non-identifying handle for logs (no names, IDs or paths)."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- per-file work
@dataclass
class Prepared:
    """What a worker hands back for one file (pixels only for assessable images)."""

    index: int
    status: str
    tags: dict[str, str]
    notes: tuple[str, ...] = ()
    image: torch.Tensor | None = None
    t_decode: float = 0.0
    t_preprocess: float = 0.0
    sha256: str = ""  # of the bytes that were read and scored ('' when unreadable)
    size: int = 0  # size and mtime as stat() saw them just before the read
    mtime_ns: int = 0


#: Files up to this size are read once into memory (hashed and parsed from the same bytes);
#: larger ones are hashed in a streaming pass and parsed from disk.
IN_MEMORY_BYTES = 256 << 20


def _read(path: Path, size: int) -> tuple[bytes | Path, bytes, str]:
    """The bytes (or, when large, the path) to parse, the first 132 bytes, the content sha256 (one read when small)."""
    if size <= IN_MEMORY_BYTES:
        data = path.read_bytes()
        return data, data[:132], hashlib.sha256(data).hexdigest()
    with open(path, "rb") as fh:
        head = fh.read(132)
    return path, head, file_sha256(path)


def prepare_file(path: Path, spec: PreprocessSpec, transform: Callable, index: int = 0,
                 isolate: str | None = None) -> Prepared:
    """Read → header QC → decode → pixel QC → preprocess; never raises for a bad file.

    ``isolate``: where pixels are decoded (``isolation.MODES``; default ``$CXRSCREEN_DECODE_ISOLATION``,
    i.e. compressed files in a helper process). Raises only ``isolation.IsolationError`` (no helper
    process could be started: an internal failure).
    """
    t0 = time.perf_counter()
    tags: dict[str, str] = {}
    sha = ""
    stat = (0, 0)

    def done(status: str, notes: tuple[str, ...] = (), image: torch.Tensor | None = None,
             t_decode: float = 0.0, t_preprocess: float = 0.0) -> Prepared:
        return Prepared(index, status, tags, (*tag_notes(tags), *notes), image, t_decode, t_preprocess, sha, *stat)

    try:
        st = path.stat()
        stat = (st.st_size, st.st_mtime_ns)
        data, head, sha = _read(path, st.st_size)
        if st.st_size == 0:
            return done(error("empty_file"))
        if not looks_like_dicom(head):
            return done(error("not_dicom"))
        ds = read_dataset(io.BytesIO(data) if isinstance(data, bytes) else data)
        tags = extract_tags(ds)
        media = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
        if media == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
            return done(not_assessable("dicomdir"))
        status = check_header(tags)
        if status != OK:
            return done(status, t_decode=time.perf_counter() - t0)
        decoded = isolation.decode_pixels(ds, data, spec.decode_target, isolate)
        del ds, data
        t1 = time.perf_counter()
        status = check_pixels(decoded.pixels)
        notes = tuple(decoded.notes)
        if status != OK:
            return done(status, notes, t_decode=t1 - t0)
        if polarity_suspect(decoded.pixels):
            notes += ("polarity_suspect",)
        image = torch.as_tensor(transform(decoded.pixels))
        return done(OK, notes, image, t1 - t0, time.perf_counter() - t1)
    except DecodeError as exc:
        return done(error(exc.reason), t_decode=time.perf_counter() - t0)
    except MemoryError:
        return done(error("out_of_memory"))
    except OSError:
        return done(error("unreadable_file"))
    except isolation.IsolationError:
        raise
    except Exception as exc:  # a bad file never stops the run
        return done(error(f"unexpected_{type(exc).__name__}"))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # a codec's panic in this process (pyo3's PanicException is no Exception)
        return done(error("decoder_crash"), t_decode=time.perf_counter() - t0)


class _FileDataset(Dataset):
    """``paths[start:]`` as prepared items; ``Prepared.index`` is the position in ``paths``."""

    def __init__(self, paths: list[Path], spec: PreprocessSpec, start: int = 0) -> None:
        self.paths = paths
        self.start = start
        self.spec = spec
        self.transform = build_transform(spec, augment=False)

    def __len__(self) -> int:
        return len(self.paths) - self.start

    def __getitem__(self, i: int) -> Prepared:
        return prepare_file(self.paths[self.start + i], self.spec, self.transform, self.start + i)


def _collate(items: list[Prepared]) -> list[Prepared]:
    return items


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    set_track_meta(False)  # see _score


MAX_WORKERS = 8


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask, which ``taskset``/cpusets narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Schedule:
    """How scoring uses the cores: decode worker processes and the main process's torch threads."""

    workers: int
    threads: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "torch_threads": self.threads, "reason": self.reason}


def choose_schedule(prep_s: float, prep_wall_s: float, forward_s: float, cores: int, gpu: bool) -> Schedule:
    """Workers and threads that minimise the predicted seconds per image, from measured costs.

    ``prep_s``: read + decode + preprocess CPU time of one image (what a worker process would spend
    on it); ``prep_wall_s``: the wall time per image when a batch is prepared by ``cores`` threads in
    process; ``forward_s``: the model's share per image with all ``cores`` threads (on a GPU: per
    image, CPU threads irrelevant).
    In process the two phases alternate, each with all cores: ``prep_wall + forward``. With ``n``
    worker processes they overlap, and on a CPU the forward keeps ``cores − n`` threads:
    ``max(prep / n, forward · cores / (cores − n))``. On a small CPU that means in process (workers
    would fight the forward pass for the same cores); on a GPU, workers.
    """
    best, best_t = 0, prep_wall_s + forward_s
    top = min(MAX_WORKERS, cores - 1) if cores > 1 else 0
    for n in range(1, top + 1):
        fwd = forward_s if gpu else forward_s * cores / (cores - n)
        t = max(prep_s / n, fwd)
        if t < 0.95 * best_t:  # a clear gain only: a worker costs memory and start-up
            best, best_t = n, t
    threads = cores if gpu or best == 0 else cores - best
    why = (f"measured per image: read+decode+preprocess {1e3 * prep_s:.1f} ms CPU, {1e3 * prep_wall_s:.1f} ms wall "
           f"with {cores} threads; forward {1e3 * forward_s:.1f} ms; predicted {1 / best_t:.1f} img/s")
    return Schedule(best, max(1, threads), why)


def fixed_schedule(workers: int, cores: int, gpu: bool) -> Schedule:
    """The schedule for ``--workers N``: the forward gets the cores the workers leave (at least 1)."""
    threads = cores if gpu or workers == 0 else max(1, cores - workers)
    return Schedule(workers, threads, "--workers given")


RUN_ID_TIME = "%Y%m%dT%H%M%SZ"
RUN_ID_MAX_SUFFIX = 999


def new_run_id(taken: Callable[[str], bool], now: float | None = None) -> str:
    """The run id: the UTC start time (``20261125T021500Z``), unique without waiting for the clock.

    When that id is ``taken`` (a run earlier in the same second), ``-001``, ``-002``… is appended:
    ids still sort in start order, as text (``…00Z`` < ``…00Z-001`` < ``…01Z``). Called under the
    output folder's lock, so no other run picks an id meanwhile.
    """
    base = time.strftime(RUN_ID_TIME, time.gmtime(now))
    for n in range(RUN_ID_MAX_SUFFIX + 1):
        run_id = f"{base}-{n:03d}" if n else base
        if not taken(run_id):
            return run_id
    raise RuntimeError(f"more than {RUN_ID_MAX_SUFFIX} runs started at {base}")


# --------------------------------------------------------------------------- planning
def plan(
    files: list[Path], root: Path, ledger: Ledger, model_sha: str, rescan: bool
) -> tuple[list[tuple[Path, str | None]], int]:
    """Which files need work, and how many were skipped as already scored.

    Work items are ``(path, sha256)`` pairs; the sha256 is ``None`` for files the ledger has never
    seen: the decode worker hashes the very bytes it scores (one read, off the main process).
    """
    known = ledger.known()
    todo: list[tuple[Path, str | None]] = []
    skipped = 0
    for p in files:
        rel = p.relative_to(root).as_posix()
        st = p.stat()
        k = known.get(rel)
        if k is not None and not rescan and k.model_sha256 == model_sha:
            if k.size == st.st_size and k.mtime_ns == st.st_mtime_ns:
                skipped += 1
                continue
            sha = file_sha256(p)
            if sha == k.sha256:
                ledger.touch(rel, st.st_size, st.st_mtime_ns)
                skipped += 1
                continue
            todo.append((p, sha))
            continue
        todo.append((p, None))
    return todo, skipped


# --------------------------------------------------------------------------- the scan
ProgressFn = Callable[[dict[str, Any]], None]


def scan(
    folder: Path | str,
    out: Path | str = "cxrscreen-out",
    model: Path | str | LoadedModel | None = None,
    threshold: float | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 16,
    workers: int | None = None,
    reports: str = "flagged",
    rescan: bool = False,
    progress: ProgressFn | None = None,
) -> ScanResult:
    """Scan ``folder`` recursively and write worklists (and reports) under ``out``."""
    t_start = time.time()
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise ScanInputError(f"{folder}: not a folder")
    if reports not in REPORT_POLICIES:
        raise ScanInputError(f"--reports must be one of {', '.join(REPORT_POLICIES)}")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ScanInputError("--threshold must be between 0 and 1")
    if batch_size < 1:
        raise ScanInputError("--batch-size must be at least 1")
    os.umask(0o027)
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    thr = float(lm.threshold if threshold is None else threshold)
    rt = choose_runtime(device, precision)
    if rt.int8:  # refuse before anything is scanned, with the reason (a usage problem, exit 2)
        from cxrscreen.model.quantize import Int8Unavailable, load_calibration

        try:
            load_calibration(lm.path, lm.sha256)
        except Int8Unavailable as exc:
            raise ScanInputError(str(exc)) from exc
    emit = progress or (lambda _e: None)
    out.mkdir(parents=True, exist_ok=True)
    state = out / STATE_DIR
    with folder_lock(state), Ledger(state / "ledger.sqlite") as ledger, isolation.helpers():
        run_id = new_run_id(lambda rid: (out / "runs" / rid).exists() or ledger.has_run(rid))
        run_dir = out / "runs" / run_id
        ledger.start_run(run_id)
        resumed = ledger.unfinished_runs(exclude=run_id)  # killed runs: this run delivers their rows
        durations: Counter[str] = Counter()

        t = time.perf_counter()
        root = folder
        files = discover(folder)
        durations["discover"] = time.perf_counter() - t
        t = time.perf_counter()
        todo, skipped = plan(files, root, ledger, lm.sha256, rescan)
        redecided = ledger.redecide(lm.sha256, thr)
        durations["plan"] = time.perf_counter() - t
        log.info("run %s: %d files found, %d already scored, %d to process", run_id, len(files), skipped, len(todo))
        emit({"event": "start", "files": len(files), "todo": len(todo), "skipped": skipped, "run_id": run_id})

        sched: dict[str, Any] = {}
        new_records = _score(todo, root, lm, rt, thr, batch_size, workers, ledger, run_id, durations, emit, sched)
        if resumed:
            own = {r.path for r in new_records}
            new_records = [r for rid in resumed for r in ledger.records(rid) if r.path not in own] + new_records

        if reports != "none":
            t = time.perf_counter()
            _reports(out, root, lm, rt, ledger, reports, emit, durations)
            durations["reports"] = time.perf_counter() - t

        t = time.perf_counter()
        images = images_frame(ledger.records(), lm.name)
        studies = studies_frame(images)
        images_csv = write_csv(images, out / "worklist_images.csv")
        studies_csv = write_csv(studies, out / "worklist_studies.csv")
        new_paths = {r.path for r in new_records}
        new_images = images[images["path"].isin(new_paths)].reset_index(drop=True)
        new_images["rank"] = range(1, len(new_images) + 1)
        new_studies = studies_frame(new_images)
        write_csv(new_images, run_dir / "new_images.csv")
        write_csv(new_studies, run_dir / "new_studies.csv")
        durations["worklists"] = time.perf_counter() - t

        n_err = sum(1 for r in new_records if r.status.startswith("error"))
        exit_code = 1 if n_err else 0
        summary = _summary(run_id, folder, out, lm, rt, thr, files, skipped, new_records, images, studies,
                           durations, time.time() - t_start, exit_code, redecided)
        summary["resumed_runs"] = resumed
        summary["schedule"] = sched.get("schedule")
        summary["drift"] = drift_check(summary, ledger.previous_summaries(7, exclude=run_id))
        for w in summary["drift"]["warnings"]:
            log.warning("drift: %s", w)
        atomic_write_text(run_dir / "run.json", json.dumps(summary, indent=2) + "\n")
        ledger.finish_run(run_id, summary, resumed)
        _summary_pdf(out, summary, studies, lm, thr, images)
    return ScanResult(run_id, out, images_csv, studies_csv, run_dir, exit_code, summary)


def _score(todo, root, lm: LoadedModel, rt: Runtime, thr: float, batch_size: int, workers: int | None,
           ledger: Ledger, run_id: str, durations: Counter, emit: ProgressFn,
           info: dict[str, Any] | None = None) -> list[ImageRecord]:
    """Prepare and score ``todo`` in batches, committing each batch to the ledger.

    With ``workers=None`` the first batch is prepared in process (threads) and timed, then
    :func:`choose_schedule` decides whether worker processes would be faster for the rest.
    """
    if not todo:
        return []
    info = {} if info is None else info
    net = scoring_net(lm, rt)
    paths = [p for p, _ in todo]
    cores, gpu = usable_cores(), rt.device.type == "cuda"
    threads_before = torch.get_num_threads()
    records: list[ImageRecord] = []
    committed = 0
    t0 = time.perf_counter()

    def score(batch: list[Prepared]) -> None:
        nonlocal committed
        records.extend(_score_batch(batch, todo, root, net, lm, rt, thr, ledger, run_id, durations))
        committed += 1
        faults.kill_after_batch(committed)
        emit({"event": "batch", "done": len(records), "total": len(todo),
              "img_s": len(records) / (time.perf_counter() - t0)})

    if workers is not None:
        sched: Schedule | None = fixed_schedule(max(0, workers), cores, gpu)
    elif gpu:  # the forward is nearly free and its first (warm-up) batch is no measure of it: feed it
        sched = Schedule(min(MAX_WORKERS, cores - 1), cores, f"CUDA: {min(MAX_WORKERS, cores - 1)} decode workers")
    else:
        sched = None  # measured on the first batch
    batches: Iterable[list[Prepared]] | None = None
    track_meta = get_track_meta()
    # The chain ends in plain tensors and reads no MONAI metadata: without MetaTensor bookkeeping
    # it runs in 2.0 instead of 3.4 ms per image. Restored below (it is process-wide).
    set_track_meta(False)
    try:
        torch.set_num_threads(cores)
        batches = _in_process(paths, lm.spec, batch_size, cores) if sched is None or sched.workers == 0 else None
        if sched is None:  # probe in process until one batch had images to score
            for batch in _timed(batches, durations, in_process=True):
                score(batch)
                scored = sum(r.probability is not None for r in records)
                if scored:  # so far everything ran in process: the durations are the probe's
                    n = len(records)
                    sched = choose_schedule(durations["prepare_cpu_in_process"] / n, durations["wait_for_decode"] / n,
                                            durations["infer"] / scored, cores, gpu)
                    break
        if sched is None:
            sched = Schedule(0, cores, "nothing to score")
        if sched.workers and len(records) == len(todo) and workers is None:  # record what ran
            sched = Schedule(0, cores, f"every file was in the first (timed, in-process) batch; {sched.reason}")
        info["schedule"] = sched.to_dict()
        log.info("scoring schedule: %d decode workers, %d torch threads (%s)", sched.workers, sched.threads,
                 sched.reason)
        if len(records) < len(todo) and not sched.workers:
            for batch in _timed(batches, durations, in_process=True):
                score(batch)
        elif len(records) < len(todo):
            if isinstance(batches, Generator):
                batches.close()
            torch.set_num_threads(sched.threads)
            recover = False
            while len(records) < len(todo):  # each pass: a DataLoader from the first file not committed
                try:
                    if recover:
                        _recover(paths, lm.spec, len(records), batch_size, sched.workers, cores, score, durations)
                        recover = False
                        continue
                    batches = iter(_loader(_FileDataset(paths, lm.spec, start=len(records)), batch_size,
                                           sched.workers, gpu))
                    for batch in _timed(_from_workers(batches), durations, in_process=False):
                        score(batch)
                except RuntimeError as exc:  # also raised by torch's SIGCHLD handler, wherever we are
                    if not worker_died(exc):
                        raise
                    _stop_loader(batches)
                    recover = True
    finally:
        if isinstance(batches, Generator):
            batches.close()
        else:
            _stop_loader(batches)
        torch.set_num_threads(threads_before)
        set_track_meta(track_meta)
    durations["score_wall"] = time.perf_counter() - t0
    return records


#: torch's messages for a DataLoader worker that died (SIGCHLD handler, or its own liveness check)
_WORKER_DIED = re.compile(r"DataLoader worker \(pid.*\) (exited unexpectedly|is killed by signal)")
PREFETCH = 2  # batches each DataLoader worker prepares ahead


class WorkerDied(RuntimeError):
    """A batch was lost with the DataLoader worker that prepared it."""


def worker_died(exc: BaseException) -> bool:
    """Whether ``exc`` reports a dead DataLoader worker (not an error raised inside a live one)."""
    return isinstance(exc, WorkerDied) or (isinstance(exc, RuntimeError) and bool(_WORKER_DIED.search(str(exc))))


def _from_workers(it: Iterator[list[Prepared]]) -> Iterator[list[Prepared]]:
    """The DataLoader's batches. A batch whose worker died before it was received cannot be unpickled
    (its tensors were shared through that worker's socket): ``ConnectionError``/``EOFError``, made ``WorkerDied``."""
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except (ConnectionError, EOFError) as exc:
            raise WorkerDied(f"a DataLoader worker died with its batch ({type(exc).__name__})") from exc
        yield batch


def _stop_loader(it: object) -> None:
    """Shut down a DataLoader iterator's workers (and unregister them from torch's SIGCHLD check)."""
    stop = getattr(it, "_shutdown_workers", None)
    for _ in range(3):  # the SIGCHLD handler may interrupt it once more while the dead worker is unreaped
        try:
            if stop is not None:
                stop()
            return
        except RuntimeError as exc:
            if not worker_died(exc):
                raise


def _recover(paths: list[Path], spec: PreprocessSpec, start: int, batch_size: int, workers: int, cores: int,
             score: Callable[[list[Prepared]], None], durations: Counter) -> None:
    """After a DataLoader worker died: prepare the files it may have held here, every decode isolated.

    Those are the batch being scored and the ``workers × PREFETCH`` batches in flight after it; each
    file's pixels are decoded in a helper process (``isolate="all"``), so the one that killed the
    worker becomes ``error:decoder_crash`` and the others their usual rows.
    """
    end = min(len(paths), start + (workers * PREFETCH + 1) * batch_size)
    log.warning("a decode worker process died; preparing files %d-%d again, each decode isolated", start + 1, end)
    durations["worker_deaths"] += 1
    gen = _in_process(paths, spec, batch_size, cores, start, end, isolate="all")
    try:
        for batch in gen:
            score(batch)
    finally:
        gen.close()


def _in_process(paths: list[Path], spec: PreprocessSpec, batch_size: int, threads: int, start: int = 0,
                end: int | None = None, isolate: str | None = None) -> Generator:
    """Batches of ``paths[start:end]`` prepared in this process by ``threads`` threads, one batch at a time.

    Decoding, hashing and the numpy/torch work release the GIL, so a batch is prepared about
    1.7–2.5× faster on 2 cores than one file after another; the batch is then scored with all
    cores, so the two phases never compete for them.
    """
    transform = build_transform(spec, augment=False)
    end = len(paths) if end is None else end
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="prepare") as pool:
        for first in range(start, end, batch_size):
            yield list(pool.map(lambda i: prepare_file(paths[i], spec, transform, i, isolate),
                                range(first, min(first + batch_size, end))))


def _loader(ds: _FileDataset, batch_size: int, workers: int, gpu: bool) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_collate,
                      worker_init_fn=_worker_init if workers else None, prefetch_factor=2 if workers else None,
                      pin_memory=gpu)


def _cpu() -> float:
    """CPU seconds of this process plus those its decode helper processes spent on its files."""
    return time.process_time() + isolation.helper_cpu_seconds()


def _timed(batches: Iterable[list[Prepared]], durations: Counter, in_process: bool) -> Iterator[list[Prepared]]:
    """The batches, adding the time spent waiting for each to ``wait_for_decode``.

    In process, also the CPU time over each wait (``prepare_cpu_in_process``): what preparing the
    batch cost on all threads, a decoder's own threads and the decode helper processes included
    (OpenJPEG decodes in a thread of its own).
    """
    t, c = time.perf_counter(), _cpu()
    for batch in batches:
        durations["wait_for_decode"] += time.perf_counter() - t
        if in_process:
            durations["prepare_cpu_in_process"] += _cpu() - c
        yield batch
        t, c = time.perf_counter(), _cpu()


def _score_batch(batch: list[Prepared], todo, root: Path, net: torch.nn.Module, lm: LoadedModel, rt: Runtime,
                 thr: float, ledger: Ledger, run_id: str, durations: Counter) -> list[ImageRecord]:
    """Score the batch's assessable images, decide every item, commit them to the ledger."""
    ok = [it for it in batch if it.image is not None]
    probs: dict[int, float] = {}
    if ok:
        t = time.perf_counter()
        x = torch.stack([it.image for it in ok])
        if rt.device.type == "cuda":
            x = x.pin_memory()
        p = predict_batch(net, x, rt).numpy()
        durations["infer"] += time.perf_counter() - t
        probs = {it.index: float(v) for it, v in zip(ok, p, strict=True)}
    batch_records = []
    for it in batch:
        path, sha = todo[it.index][0], it.sha256 or todo[it.index][1] or ""  # the bytes scored, when read
        prob = probs.get(it.index)
        rec = ImageRecord(path=path.relative_to(root).as_posix(), status=it.status, tags=it.tags,
                          qc_notes=it.notes, probability=prob, decision=decide(it.status, prob, thr, it.notes),
                          size=it.size, mtime_ns=it.mtime_ns)
        durations["decode"] += it.t_decode
        durations["preprocess"] += it.t_preprocess
        if it.status.startswith("error"):
            log.warning("file %s: %s", instance_hash(rec.path), it.status)
        batch_records.append((rec, sha))
    t = time.perf_counter()
    ledger.put(batch_records, lm.sha256, thr, run_id)
    durations["ledger"] += time.perf_counter() - t
    return [r for r, _ in batch_records]


def _reports(
    out: Path, root: Path, lm: LoadedModel, rt: Runtime, ledger: Ledger, policy: str, emit: ProgressFn,
    durations: Counter | None = None,
) -> None:
    """Per-study PDF reports with Grad-CAM (outputs.report); missing ones are (re)made."""
    try:
        from cxrscreen.outputs.report import write_reports
    except ImportError:  # reports module not available in this build
        return
    write_reports(out, root, lm, rt, ledger, policy, emit, durations)


def _summary_pdf(out: Path, summary: dict, studies, lm: LoadedModel, thr: float, images=None) -> None:
    try:
        from cxrscreen.outputs.summary import write_summary_pdf
    except ImportError:
        return
    write_summary_pdf(out / "summary.pdf", summary, studies, lm, thr, images=images)


def _summary(run_id, folder, out, lm, rt, thr, files, skipped, new_records, images, studies, durations,
             wall, exit_code, redecided=0) -> dict[str, Any]:
    probs = np.array([r.probability for r in new_records if r.probability is not None], dtype=float)
    n_scored = int(probs.size)
    infer = durations.get("score_wall", 0.0)
    return {
        "run_id": run_id,
        "software_version": __version__,
        "folder": str(folder),
        "out": str(out),
        "model": {"name": lm.name, "sha256": lm.sha256, "path": str(lm.path)},
        "threshold": thr,
        "runtime": rt.describe(),
        "files_found": len(files),
        "files_skipped_already_scored": skipped,
        "files_processed": len(new_records),
        "rows_redecided_new_threshold": redecided,
        "images_scored": n_scored,
        "decisions": dict(Counter(r.decision for r in new_records)),
        "statuses": dict(Counter(r.status for r in new_records)),
        "worklist_totals": {"images": len(images), "studies": len(studies),
                            "decisions": dict(Counter(studies["decision"])) if len(studies) else {}},
        "flag_rate": (sum(r.decision == ABNORMAL for r in new_records) / n_scored) if n_scored else None,
        "review_rate": (sum(r.decision == REVIEW for r in new_records) / len(new_records)) if new_records else None,
        "probability_quantiles": ({str(q): float(np.quantile(probs, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)}
                                  if n_scored else {}),
        "durations_s": {k: round(v, 3) for k, v in durations.items()},
        "images_per_s": round(len(new_records) / infer, 2) if infer > 0 else None,
        "wall_s": round(wall, 3),
        "exit_code": exit_code,
    }


DRIFT_BOUNDS = {"flag_rate": 0.15, "review_rate": 0.15, "median_probability": 0.15}
DRIFT_MIN_IMAGES = 20


def drift_check(current: dict, previous: list[dict]) -> dict[str, Any]:
    """Compare this run's rates and median score with the mean of previous runs (≥ 20 images each).

    A warning when an absolute difference exceeds ``DRIFT_BOUNDS`` (documented in the README).
    """
    prev = [p for p in previous if (p.get("images_scored") or 0) >= DRIFT_MIN_IMAGES]
    result: dict[str, Any] = {"compared_runs": len(prev), "bounds": DRIFT_BOUNDS, "warnings": [], "baseline": {}}
    if (current.get("images_scored") or 0) < DRIFT_MIN_IMAGES or not prev:
        return result

    def metric(s: dict, name: str) -> float | None:
        if name == "median_probability":
            return s.get("probability_quantiles", {}).get("0.5")
        return s.get(name)

    for name, bound in DRIFT_BOUNDS.items():
        vals = [v for v in (metric(p, name) for p in prev) if v is not None]
        cur = metric(current, name)
        if not vals or cur is None:
            continue
        base = float(np.mean(vals))
        result["baseline"][name] = base
        if abs(cur - base) > bound:
            result["warnings"].append(f"{name} {cur:.3f} vs {base:.3f} over the last {len(vals)} runs "
                                      f"(bound ±{bound})")
    return result
