"""The Ray engine (``scan --engine ray``): Ray Data prepares and scores the films; this process, the driver,
keeps the ledger.

The driver has already discovered the files, made the plan (ledger skip) and holds the lock; here it
hands ``todo`` to a Ray Data pipeline of two stages and commits what streams back:

1. ``prepare`` — CPU tasks (:func:`_prepare`), one block of files each: :func:`~cxrscreen.prepare.prepare_file`,
   every file's pixel data decoded in a crash-isolated helper process (``ISOLATE``);
2. ``score`` — an actor pool (:class:`_Scorer`): each actor loads the model once from its file (sha256
   checked against the metadata the run planned with) and scores batches; with reports on, it also
   makes the report pages (Grad-CAM) while it holds the film and its tensor, and ships them back as arrays.

Records reach the driver block by block (a block is one batch, or up to ``MAX_BLOCK_BATCHES`` in a large run:
:func:`block_batches`); each is committed to the ledger in one
transaction (the single writer) and its pages handed to the run's page store: nothing is written into
OUT by a worker. A page is made in an actor for a film when ``--reports all``, or when its own study
was flagged by a film that actor scored (this batch or an earlier one); a film whose study is flagged
only later, by a film another actor scored, gets its page from the report stage, which reads it again.

Resources are budgeted so that the pipeline cannot deadlock on a small cluster (:func:`budget`):
preparation always has CPUs left beside the actors' reservations. A local cluster that this module
started is shut down when the pass ends; a cluster given by ``--ray-address`` is only disconnected from.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrscreen import faults, settings
from cxrscreen.events import BatchScored
from cxrscreen.ingest import isolation
from cxrscreen.logs import file_handle, native_stderr_to_log
from cxrscreen.model.meta import ModelIntegrityError
from cxrscreen.options import ReportPolicy
from cxrscreen.pages import Page, PageStore
from cxrscreen.pipeline.context import RunContext, ScanInputError, ScanStopped
from cxrscreen.pipeline.schedule import usable_cores
from cxrscreen.records import ImageRecord
from cxrscreen.state.atomic import sha256_file
from cxrscreen.state.ledger import PAGES_DIR, STATE_DIR

if TYPE_CHECKING:
    import pyarrow as pa
    import ray

    from cxrscreen.populations import OperatingPoints
    from cxrscreen.prepare import Prepared

log = logging.getLogger("cxrscreen")

INSTALL_HINT = "--engine ray needs Ray Data: pip install 'cxrscreen[ray]'"
#: Memory a scoring actor reserves (the network and a batch's activations). Also what keeps Ray Data from
#: fusing the preparation tasks into the scoring actors (it fuses stages whose reservations are equal).
ACTOR_MEMORY = 512 << 20
#: Where a preparation task decodes pixel data: every file in a helper process (``isolation.MODES``). Ray
#: Data retries a task whose worker process died without end, so no decoder may run in the worker itself;
#: a decoder that crashes or hangs a helper costs its file one row (``error:decoder_crash``/``_timeout``).
ISOLATE = "all"
MAX_ACTOR_CPUS = 4  # torch threads per CPU actor; more actors beyond that
#: A block (one preparation task, one actor call, one ledger commit) holds up to this many batches, and a run
#: keeps at least ``MIN_BLOCKS`` blocks: Ray keeps some bookkeeping per task, in the driver too, and costs
#: a fixed time per block, so a large run gets fewer, larger blocks; a small one still pipelines.
MAX_BLOCK_BATCHES = 4
MIN_BLOCKS = 32
#: How often Ray restarts a scoring actor whose process died (and retries a batch it held), over the run;
#: Ray Data's default is without end, which turns a crash that recurs on every batch into a scan that
#: never ends. One more death ends the scan (:class:`ScoringActorsDied`).
ACTOR_RESTARTS = 3


class ScoringActorsDied(ScanStopped):
    """The scan stopped: a scoring actor kept dying (Ray's restarts ran out) or could not start. The batches
    committed before it stay in the ledger; the CLI prints the message on one line, exit code 3."""


def ray_missing() -> str | None:
    """Why ``--engine ray`` cannot run here (Ray, or its Data extra's pyarrow, not installed), or None."""
    import importlib.util

    return INSTALL_HINT if any(importlib.util.find_spec(m) is None for m in ("ray", "pyarrow")) else None


# --------------------------------------------------------------------------- resources
@dataclass(frozen=True)
class Budget:
    """What the pipeline asks of the cluster: the scoring actors and the CPUs of one preparation task."""

    actors: int
    actor_kind: str  # "cpu" or "gpu"
    actor_cpus: float  # reserved per actor
    torch_threads: int  # per actor
    prep_cpus: float  # reserved per preparation task

    def to_dict(self, cluster_cpus: float, cluster_gpus: float) -> dict[str, Any]:
        return {"engine": "ray", "actors": self.actors, "actor_kind": self.actor_kind, "actor_cpus": self.actor_cpus,
                "torch_threads": self.torch_threads, "prep_cpus_per_task": self.prep_cpus,
                "cluster_cpus": cluster_cpus, "cluster_gpus": cluster_gpus}


def budget(nodes: list[tuple[float, float]], use_gpu: bool) -> Budget:
    """The scoring actors and reservations for a cluster whose nodes have ``(CPUs, GPUs)``.

    The actors never reserve more than half a node's CPUs, and at least one preparation task's (1 CPU;
    half the node's on a 1-CPU node) stays free on every node: preparation cannot wait on actors that wait
    on it (a 2-CPU cluster: one 1-CPU actor beside one 1-CPU preparation task).

    GPU: one actor per GPU (``num_gpus=1``, 1 torch thread, 1 CPU or what its node leaves beside one
    preparation task). CPU: actors of up to ``MAX_ACTOR_CPUS`` CPUs (the smallest node's half), as many as
    fit in half of each node; each runs twice its reservation in torch threads (at most the node's cores),
    so the forward pass, the larger cost of a film, also takes the cores preparation leaves idle, as the
    local engine's does between batches.
    """
    cpus = [c for c, _ in nodes if c > 0]
    if not cpus:
        raise ScanInputError("the Ray cluster has no CPUs")
    small = min(cpus)
    prep = 1.0 if small >= 2 else small / 2
    if use_gpu:
        gpu_nodes = [(c, int(g)) for c, g in nodes if g >= 1]
        share = min(max(c - prep, 0.0) / g for c, g in gpu_nodes)  # per GPU actor, beside one preparation task
        return Budget(sum(g for _, g in gpu_nodes), "gpu", min(1.0, share), 1, prep)
    if small < 2:
        return Budget(len(cpus), "cpu", small / 2, 1, prep)
    actor_cpus = max(1, min(MAX_ACTOR_CPUS, int(small // 2)))
    actors = sum(max(1, int(c // 2) // actor_cpus) for c in cpus)
    return Budget(actors, "cpu", float(actor_cpus), min(int(small), 2 * actor_cpus), prep)


# --------------------------------------------------------------------------- the cluster
class _ToLog(logging.Handler):
    """Ray's own log records (INFO and above) into the cxrscreen log, at INFO: for the log file, not stderr."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        RAY_LOG.info("%s %s: %s", record.name, record.levelname, text)


RAY_LOG = logging.getLogger("cxrscreen.ray")


@contextlib.contextmanager
def _python_logs_to_log() -> Iterator[None]:
    """The ``ray`` and ``ray.data`` loggers' console handlers replaced by :class:`_ToLog` for the ``with``
    block (their other handlers, Ray's own log files, kept), then put back as they were."""
    import ray.data  # noqa: F401 (importing them configures the "ray" and "ray.data" loggers: first)

    forward = _ToLog()
    saved = []
    for name in ("ray", "ray.data"):
        lg = logging.getLogger(name)
        saved.append((lg, list(lg.handlers), lg.propagate, lg.level))
        for h in lg.handlers[:]:
            if getattr(h, "stream", None) in (sys.stderr, sys.stdout) or type(h).__name__ == "PlainRayHandler":
                lg.removeHandler(h)
        lg.addHandler(forward)
        lg.propagate = False
    try:
        yield
    finally:
        for lg, handlers, propagate, level in saved:
            lg.handlers[:] = handlers
            lg.propagate, lg.level = propagate, level


@contextlib.contextmanager
def quiet_ray() -> Iterator[None]:
    """Ray's log lines, Python's and native, into the cxrscreen log for the ``with`` block: the terminal
    shows cxrscreen's own messages only."""
    with _python_logs_to_log(), native_stderr_to_log(logger=RAY_LOG.name, level=logging.INFO):
        yield


@contextlib.contextmanager
def connected(address: str | None) -> Iterator[str]:
    """This process connected to a Ray cluster for the ``with`` block: the one at ``address``, else a new
    local one sized to this machine; an existing connection (``ray.init`` by the caller) is used as it is.
    Yields what was connected to. Only what was started or connected here is shut down or disconnected."""
    import ray

    if ray.is_initialized():
        yield "existing connection"
        return
    # configure_logging keeps the "ray" logger's handlers (quiet_ray's), where False would clear them and
    # leave its warnings to Python's last-resort handler (stderr); workers' output stays in their log files.
    kw: dict[str, Any] = {"logging_level": logging.INFO, "log_to_driver": False, "configure_logging": True}
    # What ray.init changes process-wide, put back afterwards: a local cluster sets RAY_AUTH_MODE for this
    # process, and the driver gets a SIGTERM handler (sys.exit).
    auth_mode = os.environ.get(AUTH_MODE)
    on_term = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        try:
            if address is None:
                ray.init(address="local", num_cpus=usable_cores(), include_dashboard=False, **kw)
            else:
                ray.init(address=address, **kw)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise ScanInputError(f"--ray-address {address or 'local'}: cannot connect ({exc})") from exc
        try:
            yield address or "local"
        finally:
            ray.shutdown()
    finally:
        if auth_mode is None:
            os.environ.pop(AUTH_MODE, None)
        else:
            os.environ[AUTH_MODE] = auth_mode
        if on_term is not None:
            signal.signal(signal.SIGTERM, on_term)


AUTH_MODE = "RAY_AUTH_MODE"


# --------------------------------------------------------------------------- the stages (run by Ray)
@contextlib.contextmanager
def _job_settings(env: Mapping[str, str]) -> Iterator[None]:
    """The driver's settings (:meth:`Settings.child_env <cxrscreen.settings.Settings.child_env>`) in a Ray
    worker for the ``with`` block: a worker on another node has its own environment."""
    import dataclasses

    s = settings.Settings.from_env(env)
    with settings.override(**{f.name: getattr(s, f.name) for f in dataclasses.fields(s) if f.name != "ignored"}):
        yield


_helpers_env: dict[str, str] | None = None  # in a Ray worker: the settings its decode helpers were started with
_files: tuple[str, pa.Table] | None = None  # in a Ray worker: the run's file table (its object id, the table)


def _file_table(ref: list[ray.ObjectRef]) -> pa.Table:
    """The run's file table (``path``, ``rel``, ``sha``), fetched once per worker process: from the object
    store of its node, without a copy."""
    import ray

    global _files
    if _files is None or _files[0] != ref[0].hex():
        _files = (ref[0].hex(), ray.get(ref[0]))
    return _files[1]


def _prepare(batch: dict[str, np.ndarray], files: list[ray.ObjectRef], batch_size: int, spec: dict[str, Any],
             keep_film: bool, env: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Ray Data task: prepare the blocks whose numbers are ``batch["id"]`` (the ``batch_size`` films of a block,
    from ``batch_size × id`` on, in the file table ``files``), with one torch thread, MONAI without metadata
    tracking, every decode in a helper process (``ISOLATE``). ``spec``: the model's ``preprocess`` metadata
    (the driver imports no MONAI for it)."""
    from cxrscreen.pipeline.scoring import scoring_threads
    from cxrscreen.prepare import prepare_file
    from cxrscreen.preprocess import PreprocessSpec, build_transform

    table = _file_table(files)
    rows = np.concatenate([np.arange(k * batch_size, min((k + 1) * batch_size, table.num_rows))
                           for k in batch["id"]])
    part = table.take(rows).to_pydict()
    global _helpers_env
    if _helpers_env != env:  # this worker's decode helpers were started for other settings (an earlier scan)
        isolation.shutdown()
        _helpers_env = dict(env)
    chain = PreprocessSpec.from_dict(spec)
    with _job_settings(env), scoring_threads(1):
        transform = build_transform(chain, augment=False)
        items = [prepare_file(Path(p), chain, transform, int(i), ISOLATE, keep_film)
                 for i, p in zip(rows, part["path"], strict=True)]
    return {"index": rows, "rel": np.array(part["rel"], dtype=object), "sha": np.array(part["sha"], dtype=object),
            "item": _pickled(items)}


def _pickled(values: list[Any]) -> np.ndarray:
    """``values`` as a column of pickles (a binary column: Ray Data need not guess an Arrow type for them)."""
    out = np.empty(len(values), dtype=object)
    out[:] = [pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL) for v in values]
    return out


def _unpickled(column: np.ndarray) -> list[Any]:
    return [pickle.loads(v) for v in column]


@dataclass(frozen=True)
class _ScoringSetup:
    """What a scoring actor needs from the driver (all of it small and picklable)."""

    model: str  # the model's metadata file: every node reads it from the same path
    sha256: str  # the weights the run planned with
    device: str
    precision: str
    points: OperatingPoints
    run_id: str
    reports: str  # ReportPolicy value
    threads: int
    env: Mapping[str, str]
    batch_size: int = 16  # films per forward pass (a block may hold several batches)


def block_batches(batches: int) -> int:
    """Batches per block for a run of ``batches`` batches (``MAX_BLOCK_BATCHES``, ``MIN_BLOCKS``)."""
    return max(1, min(MAX_BLOCK_BATCHES, batches // MIN_BLOCKS))


class _Scorer:
    """Ray Data actor: the model loaded once; scores batches, makes their report pages, returns records."""

    def __init__(self, setup: _ScoringSetup) -> None:
        t0 = time.perf_counter()
        import psutil  # vendored by Ray (ray/thirdparty_files): importable in a Ray worker
        import torch
        from monai.data import set_track_meta

        from cxrscreen.model.files import load_model
        from cxrscreen.model.inference import runtime_for, scoring_net

        self.setup = setup
        with _job_settings(setup.env):
            torch.set_num_threads(setup.threads)  # this actor's own process (budget(): twice its reservation)
            set_track_meta(False)
            t = time.perf_counter()
            self.lm = load_model(setup.model)
            if self.lm.sha256 != setup.sha256:
                raise ModelIntegrityError(f"{Path(setup.model).name}: sha256 {self.lm.sha256[:12]}… is not the one "
                                          f"the run planned with ({setup.sha256[:12]}…); the model changed")
            self.rt = runtime_for(self.lm, setup.device, setup.precision)
            self.net = scoring_net(self.lm, self.rt)
            self.load_s = time.perf_counter() - t
        self.init_s = time.perf_counter() - t0  # imports (torch, MONAI) and the model
        self.ready_s = time.time() - psutil.Process().create_time()  # the process's start → model ready
        self.cam_net: torch.nn.Module | None = None
        self.flagged: set[str] = set()  # studies flagged by films this actor scored

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from cxrscreen.model.inference import predict_batch
        from cxrscreen.pipeline.scoring import record_for

        s = self.setup
        faults.maybe_crash_actor(s.env)
        items: list[Prepared] = _unpickled(batch["item"])
        ok = [it for it in items if it.image is not None]
        t = time.perf_counter()
        probs: dict[int, float] = {}
        for start in range(0, len(ok), s.batch_size):  # the run's batch size per forward pass
            part = ok[start:start + s.batch_size]
            x = torch.stack([it.image for it in part])
            if self.rt.device.type == "cuda":
                x = x.pin_memory()
            probs.update((it.index, float(v)) for it, v in zip(part, predict_batch(self.net, x, self.rt).numpy(),
                                                                strict=True))
        infer = time.perf_counter() - t
        records = [record_for(it, str(rel), str(sha), probs.get(it.index), s.points, s.sha256, s.run_id)
                   for it, rel, sha in zip(items, batch["rel"], batch["sha"], strict=True)]
        pages = self._pages(records, items) if s.reports != "none" else [None] * len(items)
        n = len(items)
        return {"index": batch["index"], "record": _pickled(records), "page": _pickled(pages),
                "t_decode": np.array([it.t_decode for it in items]),
                "t_preprocess": np.array([it.t_preprocess for it in items]),
                "t_infer": np.full(n, infer / max(n, 1)), "load_s": np.full(n, self.load_s),
                "ready_s": np.full(n, self.ready_s), "init_s": np.full(n, self.init_s),
                "runtime": np.array([self.rt.describe()] * n), "pid": np.full(n, os.getpid())}

    def _pages(self, records: list[ImageRecord], items: list[Prepared]) -> list[tuple | None]:
        """Page arrays (display uint8, Grad-CAM float16 or None) of the films whose page is due, else None."""
        from cxrscreen.model.inference import prepare
        from cxrscreen.pages import make_pages

        self.flagged |= {r.study_key for r in records if r.flags_study}
        due = [k for k, r in enumerate(records) if self.setup.reports == "all" or r.study_key in self.flagged]
        out: list[tuple | None] = [None] * len(records)
        if not due:
            return out
        if self.cam_net is None and any(items[k].image is not None for k in due):
            self.cam_net = prepare(self.lm.net, self.rt)  # the float network Grad-CAM runs on, as PageStore's
        made = make_pages([(records[k], items[k].film, items[k].image) for k in due], self.lm.spec, self.cam_net,
                          self.rt)
        for k, page in zip(due, made, strict=True):
            display = None if page.display is None else np.rint(page.display * 255.0).astype(np.uint8)
            cam = None if page.cam is None else page.cam.astype(np.float16)
            out[k] = (display, cam)
        return out


# --------------------------------------------------------------------------- the driver
class _ShippedPages(PageStore):
    """The run's page store, filled with pages made in the scoring actors."""

    def add(self, record: ImageRecord, arrays: tuple) -> None:
        display, cam = arrays
        self.save(Page(record, None if display is None else display.astype(np.float32) / 255.0,
                        None if cam is None else cam.astype(np.float32)))


def score(ctx: RunContext, todo: list[tuple[Path, str | None]]) -> int:
    """Prepare and score ``todo`` (``(path, known sha256)`` pairs) on a Ray cluster, committing each batch of
    records to the ledger as it arrives (the driver keeps none); returns how many were committed. Sets
    ``ctx.schedule`` (engine, actors and their kind, reservations) and, with reports on, ``ctx.pages``."""
    import ray

    if not todo:
        return 0
    if not Path(ctx.model.path).is_file():
        raise ScanInputError(f"--engine ray: every scoring actor loads the model from its file; {ctx.model.path} "
                             "is not one")
    if sha256_file(ctx.model.weights_path) != ctx.model.sha256:  # as the local engine refuses it, before any work
        raise ModelIntegrityError(f"{ctx.model.weights_path.name}: sha256 does not match the metadata; refusing "
                                  "to load a modified model")
    d, t0 = ctx.durations, time.perf_counter()
    with quiet_ray(), connected(ctx.ray_address) as where:
        d["ray_connect"] += time.perf_counter() - t0
        nodes = [(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0))) for n in ray.nodes()
                 if n.get("Alive")]
        cpus, gpus = sum(c for c, _ in nodes), sum(g for _, g in nodes)
        use_gpu = gpus >= 1 and str(ctx.model.device) != "cpu"
        if str(ctx.model.device) == "cuda" and not use_gpu:
            raise ScanInputError("--device cuda: the Ray cluster has no GPUs")
        b = budget(nodes, use_gpu)
        schedule = ctx.schedule = {**b.to_dict(cpus, gpus), "cluster": where}
        log.info("ray engine (%s): %d %s scoring actor(s) of %g CPU, %d torch thread(s) each; preparation "
                 "tasks of %g CPU (cluster: %g CPUs, %g GPUs)", where, b.actors, b.actor_kind, b.actor_cpus,
                 b.torch_threads, b.prep_cpus, cpus, gpus)
        if ctx.reports is not ReportPolicy.none:  # its runtime waits for torch, imported by the plan's loading thread
            ctx.pages = _ShippedPages(ctx.out / STATE_DIR / PAGES_DIR, ctx.reports, ctx.model, ctx.model.rt)
        driver = _Driver(ctx, todo, b, schedule)
        try:
            driver.run()
        finally:
            schedule["actor_processes"] = len(driver.pids)  # more than ``actors``: some were restarted
    d["score_wall"] = time.perf_counter() - t0
    return driver.done


class _Driver:
    """Builds the dataset and commits what streams back, batch by batch."""

    def __init__(self, ctx: RunContext, todo: list[tuple[Path, str | None]], b: Budget,
                 schedule: dict[str, Any]) -> None:
        self.ctx, self.todo, self.b, self.schedule = ctx, todo, b, schedule
        self.committed = np.zeros(len(todo), dtype=bool)  # by position in todo: a batch Ray retried is committed once
        self.done = 0
        self.pids: set[int] = set()
        self.batches = 0
        self.t0 = time.perf_counter()
        m = ctx.model
        self.setup = _ScoringSetup(str(m.path), m.sha256, str(m.device), str(m.precision), ctx.points, ctx.run_id,
                                   str(ctx.reports), b.torch_threads, settings.current().child_env(), ctx.batch_size)

    def run(self) -> None:
        import re
        import warnings

        import ray.data
        from ray.exceptions import RayActorError

        ctx, b = self.ctx, self.b
        # The file list goes to the object store once; the dataset is the block numbers, a row each (each
        # output block is one commit), made by Ray Data's range source in the tasks. A block is one batch, or
        # several in a large run (block_batches).
        files = [ray.put(self._file_table())]
        bs = ctx.batch_size * block_batches(-(-len(self.todo) // ctx.batch_size))  # films per block
        n = -(-len(self.todo) // bs)
        self.schedule["films_per_block"] = bs
        ds = ray.data.range(n, override_num_blocks=n)
        ds = ds.map_batches(_prepare, batch_size=None, num_cpus=b.prep_cpus,
                            fn_kwargs={"files": files, "batch_size": bs, "spec": dict(ctx.model.meta["preprocess"]),
                                       "keep_film": ctx.pages is not None, "env": self.setup.env})
        # Bounded restarts and retries (Ray Data's default: without end): an actor killed once is restarted and
        # the batches it held are scored again; one that keeps dying ends the scan.
        with warnings.catch_warnings():  # Ray Data 2.60 takes them only as ``**ray_remote_args`` (deprecated: 2.64)
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
            ds = ds.map_batches(_Scorer, batch_size=bs, fn_constructor_kwargs={"setup": self.setup},
                                compute=ray.data.ActorPoolStrategy(size=b.actors), num_cpus=b.actor_cpus,
                                num_gpus=1 if b.actor_kind == "gpu" else None, memory=ACTOR_MEMORY,
                                max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)
        ds.context.enable_progress_bars = False
        ds.context.log_internal_stack_trace = False
        batches = ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)
        it = iter(batches)
        try:
            for batch in it:
                self._commit(batch)
        except Exception as exc:
            # Ray Data raises the actor's error itself (ActorDiedError; its cause a ray.data SystemException) once
            # an actor's restarts or a batch's retries ran out, or an actor's __init__ raised: look along the chain.
            died: BaseException | None = exc
            seen: set[int] = set()
            while died is not None and not isinstance(died, RayActorError) and id(died) not in seen:
                seen.add(id(died))
                died = died.__cause__ or died.__context__
            if not isinstance(died, RayActorError):
                raise
            if died.actor_init_failed:  # the last line of its traceback: the exception raised in __init__
                last = re.sub(r"\x1b\[[0-9;]*m", "", str(died)).strip().splitlines()[-1].strip()
                what = f"a scoring actor could not start ({last[:300]})"
            else:
                what = f"a scoring actor died {ACTOR_RESTARTS + 1} times (Ray's {ACTOR_RESTARTS} restarts used up)"
            raise ScoringActorsDied(f"--engine ray: {what}; the scan stopped. The {self.done} film(s) committed so "
                                    "far are kept in the ledger: a rerun continues from there. Ray's error is in "
                                    "the log (--log-file)") from exc
        finally:  # Ctrl-C, or an error: the dataset's tasks and actors are stopped
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def _file_table(self) -> pa.Table:
        """``todo`` as a table: ``path`` (as the workers open it), ``rel`` (the ledger's path), ``sha`` (known)."""
        import pyarrow as pa  # a dependency of Ray Data's

        return pa.table({"path": [str(p) for p, _ in self.todo],
                         "rel": [p.relative_to(self.ctx.folder).as_posix() for p, _ in self.todo],
                         "sha": [sha or "" for _, sha in self.todo]})

    def _commit(self, batch: dict[str, np.ndarray]) -> None:
        """One scored batch: into the ledger (one transaction), its pages to the store, progress."""
        ctx, d = self.ctx, self.ctx.durations
        new = [(int(i), r, p) for i, r, p in zip(batch["index"], _unpickled(batch["record"]),
                                                 _unpickled(batch["page"]), strict=True) if not self.committed[i]]
        if not new:
            return
        if not self.batches:
            d["ray_first_batch"] = time.perf_counter() - self.t0
            d["actor_model_load"] = float(batch["load_s"][0])
            d["actor_ready"] = float(batch["ready_s"][0])
            d["actor_init"] = float(batch["init_s"][0])
            self.schedule["runtime"] = str(batch["runtime"][0])
        d["decode"] += float(np.sum(batch["t_decode"]))
        d["preprocess"] += float(np.sum(batch["t_preprocess"]))
        d["infer"] += float(np.sum(batch["t_infer"]))
        self.pids.update(int(p) for p in batch["pid"])
        records = [r for _, r, _ in new]
        for rec in records:
            if rec.status.is_error:
                log.warning("file %s: %s", file_handle(rec.path), rec.status)
        with d.stage("ledger"):
            ctx.ledger.put(records)
        if isinstance(ctx.pages, _ShippedPages):
            with d.stage("pages"):
                for _, rec, arrays in new:
                    if arrays is not None:
                        ctx.pages.add(rec, arrays)
        self.committed[[i for i, _, _ in new]] = True
        self.done += len(new)
        self.batches += 1
        faults.kill_after_batch(self.batches)
        ctx.emit(BatchScored(self.done, len(self.todo), self.done / (time.perf_counter() - self.t0)))
