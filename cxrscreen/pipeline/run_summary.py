"""A run's summary (``runs/<id>/run.json``, the ledger's runs table) and the drift check over runs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrscreen import __version__
from cxrscreen.pipeline.context import RunContext
from cxrscreen.records import ABNORMAL, REVIEW, ImageRecord

DRIFT_BOUNDS = {"flag_rate": 0.15, "review_rate": 0.15, "median_probability": 0.15}
DRIFT_MIN_IMAGES = 20
#: run.json's "runtime" when no runtime was chosen: nothing was scored and no Grad-CAM made (no torch imported)
NOT_LOADED = "none (nothing to score)"


def summarize(ctx: RunContext, files: list[Path], skipped: int, new_records: list[ImageRecord],
              images: pd.DataFrame, studies: pd.DataFrame, wall: float, exit_code: int,
              redecided: int = 0) -> dict[str, Any]:
    """What the run did, as a JSON-able dict (counts, rates, score quantiles, timings, exit code)."""
    probs = np.array([r.probability for r in new_records if r.probability is not None], dtype=float)
    n_scored = int(probs.size)
    infer = ctx.durations.get("score_wall", 0.0)
    out = {
        "run_id": ctx.run_id,
        "software_version": __version__,
        "folder": str(ctx.folder),
        "out": str(ctx.out),
        "model": {"name": ctx.model.name, "sha256": ctx.model.sha256, "path": str(ctx.model.path)},
        "threshold": ctx.threshold,
        "runtime": ctx.model.runtime_description() or NOT_LOADED,
        "files_found": len(files),
        "files_skipped_already_scored": skipped,
        "files_processed": len(new_records),
        "rows_redecided_new_threshold": redecided,
        "images_scored": n_scored,
        "decisions": dict(Counter(r.decision for r in new_records)),
        "statuses": dict(Counter(str(r.status) for r in new_records)),
        "worklist_totals": {"images": len(images), "studies": len(studies),
                            "decisions": dict(Counter(studies["decision"])) if len(studies) else {}},
        "flag_rate": (sum(r.decision == ABNORMAL for r in new_records) / n_scored) if n_scored else None,
        "review_rate": (sum(r.decision == REVIEW for r in new_records) / len(new_records)) if new_records else None,
        "probability_quantiles": ({str(q): float(np.quantile(probs, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)}
                                  if n_scored else {}),
        "durations_s": {k: round(v, 3) for k, v in ctx.durations.items()},
        "images_per_s": round(len(new_records) / infer, 2) if infer > 0 else None,
        "wall_s": round(wall, 3),
        "exit_code": exit_code,
        "schedule": ctx.schedule,
    }
    if not ctx.points.single:  # a model with one threshold per population
        out["operating_points"] = ctx.points.to_meta()
        out["images_scored_by_population"] = dict(Counter(r.population for r in new_records
                                                          if r.probability is not None))
    return out


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
