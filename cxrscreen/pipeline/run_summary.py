"""A run's :class:`~cxrscreen.runs.RunSummary`, made from what its steps recorded."""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from cxrscreen.pipeline.context import RunContext
from cxrscreen.records import ABNORMAL, REVIEW, ImageRecord
from cxrscreen.runs import NOT_LOADED, DriftCheck, ModelRef, RunSummary, WorklistTotals


@dataclass(frozen=True)
class PlanCounts:
    """What the plan found: files, those skipped as already scored, ledger rows re-decided at new thresholds."""

    files_found: int
    skipped: int
    redecided: int = 0


@dataclass
class Delivered:
    """What the summary counts of the images a run delivers (its own, and those of killed runs it resumes),
    added a record at a time (:meth:`add`): counts and the probabilities, not the records."""

    files: int = 0
    probabilities: array = field(default_factory=lambda: array("d"))  # of the scored images
    abnormal: int = 0  # images decided abnormal
    decisions: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    scored_by_population: Counter = field(default_factory=Counter)
    errors: int = 0

    def add(self, r: ImageRecord) -> None:
        self.files += 1
        self.decisions[r.decision] += 1
        self.statuses[str(r.status)] += 1
        self.errors += r.status.is_error
        self.abnormal += r.decision == ABNORMAL
        if r.probability is not None:
            self.probabilities.append(float(r.probability))
            self.scored_by_population[r.population] += 1


def summarize(ctx: RunContext, counts: PlanCounts, new: Delivered, totals: WorklistTotals, wall: float,
              exit_code: int) -> RunSummary:
    """What the run did (counts, rates, score quantiles, timings, exit code); the drift check is added later."""
    probs = np.frombuffer(new.probabilities, dtype=float) if new.probabilities else np.empty(0)
    n_scored = int(probs.size)
    infer = ctx.durations.get("score_wall", 0.0)
    return RunSummary(
        run_id=ctx.run_id,
        folder=str(ctx.folder),
        out=str(ctx.out),
        model=ModelRef(ctx.model.name, ctx.model.sha256, str(ctx.model.path)),
        threshold=ctx.threshold,
        runtime=(ctx.schedule or {}).get("runtime") or ctx.model.runtime_description() or NOT_LOADED,
        files_found=counts.files_found,
        files_skipped_already_scored=counts.skipped,
        files_processed=new.files,
        rows_redecided_new_threshold=counts.redecided,
        images_scored=n_scored,
        decisions=dict(new.decisions),
        statuses=dict(new.statuses),
        worklist_totals=totals,
        flag_rate=(new.abnormal / n_scored) if n_scored else None,
        review_rate=(new.decisions[REVIEW] / new.files) if new.files else None,
        probability_quantiles=({str(q): float(np.quantile(probs, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)}
                               if n_scored else {}),
        durations_s={k: round(v, 3) for k, v in ctx.durations.items()},
        images_per_s=round(new.files / infer, 2) if infer > 0 else None,
        wall_s=round(wall, 3),
        exit_code=exit_code,
        schedule=ctx.schedule,
        operating_points=None if ctx.points.single else ctx.points,
        images_scored_by_population=None if ctx.points.single else dict(new.scored_by_population),
        drift=DriftCheck(),
    )
