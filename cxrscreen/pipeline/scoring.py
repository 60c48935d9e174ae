"""The scoring pass: films prepared in batches (in process or by worker processes), scored, committed.

Every scored batch is committed to the ledger before the next one, so a killed run loses nothing.
With ``workers=None`` the first batch is prepared in process and timed, then
:func:`~cxrscreen.pipeline.schedule.choose_schedule` decides whether worker processes would be faster.
Compressed pixel data is decoded in helper processes (:mod:`cxrscreen.ingest.isolation`); a
DataLoader worker that dies anyway is replaced and its files prepared again, each decode isolated
(:func:`_recover`). While a batch's pixels are held, the report pages it needs are made
(:class:`~cxrscreen.pages.PageStore`), so no film is read twice.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from monai.data import get_track_meta, set_track_meta
from torch.utils.data import DataLoader, Dataset

from cxrscreen import faults
from cxrscreen.events import BatchScored
from cxrscreen.ingest import isolation
from cxrscreen.logs import file_handle
from cxrscreen.model.inference import predict_batch
from cxrscreen.pipeline.context import RunContext
from cxrscreen.pipeline.schedule import Schedule, choose_schedule, fixed_schedule, gpu_schedule, usable_cores
from cxrscreen.populations import OperatingPoints
from cxrscreen.prepare import Prepared, prepare_file
from cxrscreen.preprocess import PreprocessSpec, build_transform
from cxrscreen.records import ImageRecord, decide

log = logging.getLogger("cxrscreen")

#: torch's messages for a DataLoader worker that died (SIGCHLD handler, or its own liveness check)
_WORKER_DIED = re.compile(r"DataLoader worker \(pid.*\) (exited unexpectedly|is killed by signal)")
PREFETCH = 2  # batches each DataLoader worker prepares ahead


class WorkerDied(RuntimeError):
    """A batch was lost with the DataLoader worker that prepared it."""


def worker_died(exc: BaseException) -> bool:
    """Whether ``exc`` reports a dead DataLoader worker (not an error raised inside a live one)."""
    return isinstance(exc, WorkerDied) or (isinstance(exc, RuntimeError) and bool(_WORKER_DIED.search(str(exc))))


class Batches:
    """Where prepared batches come from: ``paths`` and how each file is prepared."""

    def __init__(self, paths: list[Path], spec: PreprocessSpec, batch_size: int, keep_film: bool) -> None:
        self.paths, self.spec, self.batch_size, self.keep_film = paths, spec, batch_size, keep_film

    def in_process(self, threads: int, start: int = 0, end: int | None = None,
                   isolate: str | None = None) -> Generator[list[Prepared], None, None]:
        """Batches of ``paths[start:end]`` prepared in this process by ``threads`` threads.

        Decoding, hashing and the numpy/torch work release the GIL, so threads prepare a batch faster
        than one file after another. From the second batch on, the next
        batch's files go to the threads before a batch is handed out, so they are prepared while it
        is scored (the two share the cores; a small gain over preparing on demand: ``benchmarks/prefetch.py``,
        docs/benchmarks.md). At most two batches are held. The first batch
        is prepared and scored alone, so that :meth:`_Scorer.probe` times each phase by itself.
        """
        transform = build_transform(self.spec, augment=False)
        end = len(self.paths) if end is None else end

        def one(i: int) -> Prepared:
            return prepare_file(self.paths[i], self.spec, transform, i, isolate, self.keep_film)

        with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="prepare") as pool:
            def submit(first: int) -> list[Future[Prepared]]:
                return [pool.submit(one, i) for i in range(first, min(first + self.batch_size, end))]

            ahead: list[Future[Prepared]] = []
            for k, first in enumerate(range(start, end, self.batch_size)):
                batch = [f.result() for f in (ahead or submit(first))]
                ahead = submit(first + self.batch_size) if k else []
                yield batch

    def from_workers(self, start: int, workers: int, gpu: bool) -> DataLoader:
        return DataLoader(_FileDataset(self.paths, self.spec, start, self.keep_film), batch_size=self.batch_size,
                          shuffle=False, num_workers=workers, collate_fn=_collate,
                          worker_init_fn=_worker_init if workers else None,
                          prefetch_factor=PREFETCH if workers else None, pin_memory=gpu)


class _FileDataset(Dataset):
    """``paths[start:]`` as prepared items; ``Prepared.index`` is the position in ``paths``."""

    def __init__(self, paths: list[Path], spec: PreprocessSpec, start: int, keep_film: bool) -> None:
        self.paths, self.spec, self.start, self.keep_film = paths, spec, start, keep_film
        self.transform = build_transform(spec, augment=False)

    def __len__(self) -> int:
        return len(self.paths) - self.start

    def __getitem__(self, i: int) -> Prepared:
        j = self.start + i
        return prepare_file(self.paths[j], self.spec, self.transform, j, keep_film=self.keep_film)


def _collate(items: list[Prepared]) -> list[Prepared]:
    return items


def _worker_init(_: int) -> None:  # a worker process's own state: one thread, no MONAI metadata
    torch.set_num_threads(1)
    set_track_meta(False)


@contextlib.contextmanager
def scoring_threads(cores: int) -> Iterator[None]:
    """Torch on ``cores`` threads and MONAI without metadata tracking for the ``with`` block (the scoring
    pass), both put back as they were afterwards: they are process-wide."""
    threads, track = torch.get_num_threads(), get_track_meta()
    # The chain ends in plain tensors and reads no MONAI metadata: without MetaTensor bookkeeping
    # it runs faster (docs/benchmarks.md).
    set_track_meta(False)
    torch.set_num_threads(cores)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        set_track_meta(track)


def score(ctx: RunContext, todo: list[tuple[Path, str | None]]) -> int:
    """Prepare and score ``todo`` (``(path, known sha256)`` pairs) in batches, committing each batch to the
    ledger, which alone keeps the records; returns how many were committed.

    Torch's thread count and MONAI's metadata tracking are set for the pass and put back
    (:func:`scoring_threads`).
    """
    if not todo:
        return 0
    with scoring_threads(usable_cores()):
        return _score(ctx, todo)


def _score(ctx: RunContext, todo: list[tuple[Path, str | None]]) -> int:
    scorer = _Scorer(ctx, todo)
    paths = [p for p, _ in todo]
    cores, gpu = usable_cores(), ctx.model.rt.device.type == "cuda"
    src = Batches(paths, ctx.model.spec, ctx.batch_size, keep_film=ctx.pages is not None)
    if ctx.workers is not None:
        sched: Schedule | None = fixed_schedule(max(0, ctx.workers), cores, gpu)
    elif gpu:
        sched = gpu_schedule(cores)
    else:
        sched = None  # measured on the first batch
    with ctx.durations.stage("score_wall"):
        batches: Iterator[list[Prepared]] | DataLoader | None = None
        try:
            if sched is None or sched.workers == 0:
                batches = src.in_process(cores)
            if sched is None:  # probe in process until one batch had images to score
                sched = scorer.probe(batches, cores, gpu)
            if sched.workers and scorer.done == len(todo) and ctx.workers is None:  # record what ran
                sched = Schedule(0, cores, f"every file was in the first (timed, in-process) batch; {sched.reason}")
            ctx.schedule = sched.to_dict()
            log.info("scoring schedule: %d decode workers, %d torch threads (%s)", sched.workers, sched.threads,
                     sched.reason)
            if scorer.done < len(todo) and not sched.workers:
                for batch in _timed(batches, ctx.durations, in_process=True):
                    scorer(batch)
            elif scorer.done < len(todo):
                _close(batches)
                batches = None
                torch.set_num_threads(sched.threads)
                _with_workers(src, sched.workers, cores, gpu, scorer, ctx.durations)
        finally:
            _close(batches)
    return scorer.done


def _with_workers(src: Batches, workers: int, cores: int, gpu: bool, scorer: _Scorer, durations: Counter) -> None:
    """Worker processes prepare the rest; a dead worker is replaced (each pass: a DataLoader from the
    first file not committed) after :func:`_recover` has found the file that killed it."""
    recover = False
    loader = None
    try:
        while scorer.done < len(src.paths):
            try:
                if recover:
                    _recover(src, scorer.done, workers, cores, scorer, durations)
                    recover = False
                    continue
                loader = iter(src.from_workers(scorer.done, workers, gpu))
                for batch in _timed(_from_workers(loader), durations, in_process=False):
                    scorer(batch)
            except RuntimeError as exc:  # also raised by torch's SIGCHLD handler, wherever we are
                if not worker_died(exc):
                    raise
                _stop_loader(loader)
                recover = True
    finally:
        _stop_loader(loader)


class _Scorer:
    """Scores prepared batches: forward pass, decisions, ledger commit, report pages, progress."""

    def __init__(self, ctx: RunContext, todo: list[tuple[Path, str | None]]) -> None:
        self.ctx, self.todo = ctx, todo
        # Waits for the model's loading thread (started by the plan) before any film is prepared: the
        # schedule probe times preparation alone, and worker processes are not forked mid-load.
        self.net = ctx.model.scoring_net
        self.done = 0  # files committed (their records are in the ledger only)
        self.scored = 0  # of which scored
        self.batches = 0
        self.t0 = time.perf_counter()

    def probe(self, batches: Iterable[list[Prepared]], cores: int, gpu: bool) -> Schedule:
        """Score in process until a batch had images to score, then choose the schedule from its costs.

        The decode helpers' start-up (a one-off per preparing thread, on the first compressed file) is
        taken out of the measured preparation wall time: it would otherwise make the
        in-process schedule look slower than it is.
        """
        d = self.ctx.durations
        start_waits = isolation.helper_start_seconds()
        for batch in _timed(batches, d, in_process=True):
            self(batch)
            if scored := self.scored:  # so far everything ran in process: the durations are the probe's
                n = self.done
                one_off = (isolation.helper_start_seconds() - start_waits) / cores  # the threads waited together
                prep_wall = max(d["wait_for_decode"] - one_off, 0.0)
                return choose_schedule(d["prepare_cpu_in_process"] / n, prep_wall / n, d["infer"] / scored, cores,
                                       gpu)
        return Schedule(0, cores, "nothing to score")

    def __call__(self, batch: list[Prepared]) -> None:
        ctx, d = self.ctx, self.ctx.durations
        ok = [it for it in batch if it.image is not None]
        probs: dict[int, float] = {}
        if ok:
            with d.stage("infer"):
                x = torch.stack([it.image for it in ok])
                if ctx.model.rt.device.type == "cuda":
                    x = x.pin_memory()
                p = predict_batch(self.net, x, ctx.model.rt).numpy()
            probs = {it.index: float(v) for it, v in zip(ok, p, strict=True)}
        records = []
        for it in batch:
            path, known_sha = self.todo[it.index]
            prob = probs.get(it.index)
            rec = record_for(it, path.relative_to(ctx.folder).as_posix(), known_sha, prob, ctx.points,
                             ctx.model.sha256, ctx.run_id)
            d["decode"] += it.t_decode
            d["preprocess"] += it.t_preprocess
            if rec.status.is_error:
                log.warning("file %s: %s", file_handle(rec.path), rec.status)
            records.append(rec)
        with d.stage("ledger"):
            ctx.ledger.put(records)
        if ctx.pages is not None:
            with d.stage("pages"):
                ctx.pages.offer(records, batch)
        self.done += len(records)
        self.scored += sum(r.probability is not None for r in records)
        self.batches += 1
        faults.kill_after_batch(self.batches)
        ctx.emit(BatchScored(self.done, len(self.todo), self.done / (time.perf_counter() - self.t0)))


def record_for(it: Prepared, rel: str, known_sha: str, prob: float | None, points: OperatingPoints, model_sha: str,
               run_id: str) -> ImageRecord:
    """The ledger row of one prepared (and, if assessable, scored) film."""
    point = points.assign(it.tags, scored=it.status.is_ok)
    notes = (*it.notes, *point.notes)
    return ImageRecord(path=rel, status=it.status, tags=it.tags, qc_notes=notes, probability=prob,
                       decision=decide(it.status, prob, point.threshold, notes), size=it.size, mtime_ns=it.mtime_ns,
                       sha256=it.sha256 or known_sha or "", threshold=point.threshold, population=point.population,
                       model_sha256=model_sha, run_id=run_id)


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


def _close(batches: object) -> None:
    if isinstance(batches, Generator):
        batches.close()
    else:
        _stop_loader(batches)


def _recover(src: Batches, start: int, workers: int, cores: int, score_batch: Callable[[list[Prepared]], None],
             durations: Counter) -> None:
    """After a DataLoader worker died: prepare the files it may have held here, every decode isolated.

    Those are the batch being scored and the ``workers × PREFETCH`` batches in flight after it; each
    file's pixels are decoded in a helper process (``isolate="all"``), so the one that killed the
    worker becomes ``error:decoder_crash`` and the others their usual rows.
    """
    end = min(len(src.paths), start + (workers * PREFETCH + 1) * src.batch_size)
    log.warning("a decode worker process died; preparing files %d-%d again, each decode isolated", start + 1, end)
    durations["worker_deaths"] += 1
    gen = src.in_process(cores, start, end, isolate="all")
    try:
        for batch in gen:
            score_batch(batch)
    finally:
        gen.close()


def _cpu() -> float:
    """CPU seconds of this process plus those its decode helper processes spent on its files."""
    return time.process_time() + isolation.helper_cpu_seconds()


def _timed(batches: Iterable[list[Prepared]], durations: Counter, in_process: bool) -> Iterator[list[Prepared]]:
    """The batches, adding the time spent waiting for each to ``wait_for_decode``.

    In process, also the CPU time over each wait (``prepare_cpu_in_process``), a decoder's own
    threads and the decode helper processes included (OpenJPEG decodes in a thread of its own). For
    the first batch, which is prepared alone, that is what preparing it cost (the schedule probe's
    measure); later batches are partly prepared while the one before is scored, so over a run it is
    a lower bound.
    """
    t, c = time.perf_counter(), _cpu()
    for batch in batches:
        durations["wait_for_decode"] += time.perf_counter() - t
        if in_process:
            durations["prepare_cpu_in_process"] += _cpu() - c
        yield batch
        t, c = time.perf_counter(), _cpu()
