"""A run's :class:`~cxrscreen.runs.RunSummary`, made from what its steps recorded."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

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


def summarize(ctx: RunContext, counts: PlanCounts, new_records: list[ImageRecord], totals: WorklistTotals,
              wall: float, exit_code: int) -> RunSummary:
    """What the run did (counts, rates, score quantiles, timings, exit code); the drift check is added later."""
    probs = np.array([r.probability for r in new_records if r.probability is not None], dtype=float)
    n_scored = int(probs.size)
    infer = ctx.durations.get("score_wall", 0.0)
    by_population = None
    if not ctx.points.single:  # a model with one threshold per population
        by_population = dict(Counter(r.population for r in new_records if r.probability is not None))
    return RunSummary(
        run_id=ctx.run_id,
        folder=str(ctx.folder),
        out=str(ctx.out),
        model=ModelRef(ctx.model.name, ctx.model.sha256, str(ctx.model.path)),
        threshold=ctx.threshold,
        runtime=(ctx.schedule or {}).get("runtime") or ctx.model.runtime_description() or NOT_LOADED,
        files_found=counts.files_found,
        files_skipped_already_scored=counts.skipped,
        files_processed=len(new_records),
        rows_redecided_new_threshold=counts.redecided,
        images_scored=n_scored,
        decisions=dict(Counter(r.decision for r in new_records)),
        statuses=dict(Counter(str(r.status) for r in new_records)),
        worklist_totals=totals,
        flag_rate=(sum(r.decision == ABNORMAL for r in new_records) / n_scored) if n_scored else None,
        review_rate=(sum(r.decision == REVIEW for r in new_records) / len(new_records)) if new_records else None,
        probability_quantiles=({str(q): float(np.quantile(probs, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)}
                               if n_scored else {}),
        durations_s={k: round(v, 3) for k, v in ctx.durations.items()},
        images_per_s=round(len(new_records) / infer, 2) if infer > 0 else None,
        wall_s=round(wall, 3),
        exit_code=exit_code,
        schedule=ctx.schedule,
        operating_points=None if ctx.points.single else ctx.points,
        images_scored_by_population=by_population,
        drift=DriftCheck(),
    )
