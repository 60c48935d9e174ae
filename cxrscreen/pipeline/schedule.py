"""How a run shares the cores between preparing films and the forward pass (from measured costs)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

MAX_WORKERS = 8
#: How much faster workers must be predicted to be before they are started. On a CPU they share the
#: cores with the forward pass, their decode helpers and the main process's other work: one worker
#: delivered well below its prediction (docs/benchmarks.md, JPEG 2000 films), so a CPU needs a clear gain.
WORKER_GAIN = {"cpu": 0.85, "gpu": 0.95}


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
    In process: ``prep_wall + forward``, each phase with all cores. That is how the first batch
    runs; later ones overlap with the next batch's preparation (``Batches.in_process``), 5–10 %
    faster on 2 cores, which the prediction leaves out (it errs towards workers). With ``n``
    worker processes they overlap, and on a CPU the forward keeps ``cores − n`` threads:
    ``max(prep / n, forward · cores / (cores − n))``. On a small CPU that means in process (workers
    would fight the forward pass for the same cores); on a GPU, workers.
    """
    best, best_t = 0, prep_wall_s + forward_s
    top = min(MAX_WORKERS, cores - 1) if cores > 1 else 0
    for n in range(1, top + 1):
        fwd = forward_s if gpu else forward_s * cores / (cores - n)
        t = max(prep_s / n, fwd)
        if t < WORKER_GAIN["gpu" if gpu else "cpu"] * best_t:  # a clear gain only: a worker costs memory too
            best, best_t = n, t
    threads = cores if gpu or best == 0 else cores - best
    why = (f"measured per image: read+decode+preprocess {1e3 * prep_s:.1f} ms CPU, {1e3 * prep_wall_s:.1f} ms wall "
           f"with {cores} threads; forward {1e3 * forward_s:.1f} ms; predicted {1 / best_t:.1f} img/s")
    return Schedule(best, max(1, threads), why)


def fixed_schedule(workers: int, cores: int, gpu: bool) -> Schedule:
    """The schedule for ``--workers N``: the forward gets the cores the workers leave (at least 1)."""
    threads = cores if gpu or workers == 0 else max(1, cores - workers)
    return Schedule(workers, threads, "--workers given")


def gpu_schedule(cores: int) -> Schedule:
    """On CUDA the forward is nearly free and its first (warm-up) batch is no measure of it: feed it."""
    n = min(MAX_WORKERS, cores - 1)
    return Schedule(n, cores, f"CUDA: {n} decode workers")
