"""Evaluate a model on a manifest split: per dataset and pooled, with CIs, plots and reports."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch.utils.data import DataLoader

from cxrscreen.model.files import LoadedModel
from cxrscreen.model.inference import Runtime, predict_batch, scoring_net
from cxrscreen.options import OptionError
from cxrscreen.outputs.worklist import write_csv
from cxrscreen.populations import manifest_population
from cxrscreen.state.atomic import atomic_open, atomic_write_text
from cxrscreen.training.data import make_dataset
from cxrscreen.training.metrics import roc_curve, summarize
from cxrscreen.version import __version__


def score_frame(
    lm: LoadedModel,
    df: pd.DataFrame,
    rt: Runtime,
    batch_size: int = 64,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """P(abnormal) for every row of a manifest frame, through the shared preprocessing chain."""
    ds = make_dataset(df, lm.spec, augment=False, cache=False)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    net = scoring_net(lm, rt)  # the scan's scorer (int8: with the model's calibration)
    out: list[np.ndarray] = []
    done = 0
    for batch in loader:
        out.append(predict_batch(net, batch["image"], rt).numpy())
        done += len(out[-1])
        if progress:
            progress(done, len(df))
    return np.concatenate(out) if out else np.zeros(0)


def row_populations(lm: LoadedModel, df: pd.DataFrame) -> np.ndarray:
    """Each row's population among the model's: from the manifest's ``population`` text, else the default
    (a one-threshold model: ``all`` for every row)."""
    points = lm.points
    if points.single or "population" not in df.columns:
        return np.full(len(df), points.default, dtype=object)
    named = df["population"].fillna("").map(lambda t: manifest_population(t, points.names))
    return named.where(named != "", points.default).to_numpy(dtype=object)


def row_thresholds(lm: LoadedModel, df: pd.DataFrame, threshold: float | None = None) -> np.ndarray:
    """The threshold that applies to each row: ``threshold`` for all, else its population's."""
    if threshold is not None:
        return np.full(len(df), float(threshold))
    return np.array([lm.points.threshold_of(p) for p in row_populations(lm, df)], dtype=np.float64)


def evaluate_scores(df: pd.DataFrame, scores: np.ndarray, threshold: float | np.ndarray, n_boot: int = 1000,
                    populations: np.ndarray | None = None) -> dict[str, Any]:
    """Metrics per dataset, per population (when ``populations`` holds more than one), then pooled.

    ``threshold``: one, or one per row (each row's operating point)."""
    result: dict[str, Any] = {}
    labels = df["label"].to_numpy()
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), scores.shape)
    for name, idx in sorted(df.groupby("dataset").indices.items()):
        result[str(name)] = summarize(labels[idx], scores[idx], thr[idx], n_boot=n_boot)
    if populations is not None and len(set(populations)) > 1:
        for pop in sorted(set(populations)):
            idx = np.flatnonzero(populations == pop)
            if len(set(labels[idx])) == 2:
                result[f"population:{pop}"] = summarize(labels[idx], scores[idx], thr[idx], n_boot=n_boot)
    if len(result) > 1 or "all" not in result:
        result["pooled"] = summarize(labels, scores, thr, n_boot=n_boot)
    return result


def _fmt(m: dict[str, Any]) -> str:
    return f"{m['value']:.3f} ({m['ci_low']:.3f}–{m['ci_high']:.3f})"


def _thresholds(meta: dict[str, Any]) -> str:
    points = meta.get("operating_points")
    if not points:
        return f"threshold {meta['threshold']:.4f}"
    return "thresholds per population: " + ", ".join(f"{k} {v:.4f}" for k, v in points.items())


def markdown_report(metrics: dict[str, Any], meta: dict[str, Any]) -> str:
    """A human-readable Markdown table of the metrics."""
    lines = [
        f"# Evaluation of {meta['model']} on {meta['manifest_name']} ({meta['split']})",
        "",
        f"Model sha256 `{meta['model_sha256'][:12]}`, {_thresholds(meta)}, runtime {meta['runtime']}, "
        f"cxrscreen {meta['software_version']}, {meta['date']}. 95% CIs: AUROC by stratified bootstrap "
        f"({meta['n_boot']} resamples), rates by Wilson score intervals.",
        "",
        "| group | n (abn/norm) | AUROC | sensitivity | specificity | PPV | NPV | accuracy | TP | FN | TN | FP |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in metrics.items():
        c = m["confusion"]
        lines.append(
            f"| {name} | {m['n']} ({m['n_abnormal']}/{m['n_normal']}) | {_fmt(m['auroc'])} | {_fmt(m['sensitivity'])} "
            f"| {_fmt(m['specificity'])} | {_fmt(m['ppv'])} | {_fmt(m['npv'])} | {_fmt(m['accuracy'])} "
            f"| {c['tp']} | {c['fn']} | {c['tn']} | {c['fp']} |"
        )
    lines += ["", "Plots: `roc.png` (ROC per group, threshold marked), `scores.png` (score histograms).", ""]
    return "\n".join(lines)


def plot_roc(df: pd.DataFrame, scores: np.ndarray, threshold: float | np.ndarray, path: Path) -> None:
    fig = Figure(figsize=(5, 5), dpi=110)  # no pyplot: no process-wide backend or figure state
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = df["label"].to_numpy()
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), scores.shape)
    groups = list(sorted(df.groupby("dataset").indices.items()))
    if len(groups) > 1:
        groups.append(("pooled", np.arange(len(df))))
    for name, idx in groups:
        y, s = labels[idx], scores[idx]
        if y.min() == y.max():
            continue
        fpr, tpr, _ = roc_curve(y, s)
        (line,) = ax.plot(fpr, tpr, label=str(name))
        pred = s >= thr[idx]
        ax.plot([np.mean(pred[y == 0])], [np.mean(pred[y == 1])], "o", color=line.get_color())
    ax.plot([0, 1], [0, 1], ":", color="grey")
    distinct = np.unique(thr)
    title = f"threshold {distinct[0]:.3f}" if distinct.size == 1 else "each image's operating point"
    ax.set(xlabel="1 − specificity", ylabel="sensitivity", title=f"ROC (dots: {title})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")


def plot_hist(df: pd.DataFrame, scores: np.ndarray, threshold: float | np.ndarray, path: Path) -> None:
    names = sorted(df["dataset"].unique())
    fig = Figure(figsize=(6, 2.2 * len(names)), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(names), 1, squeeze=False)
    labels = df["label"].to_numpy()
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), scores.shape)
    bins = np.linspace(0, 1, 41)
    for ax, name in zip(axes[:, 0], names, strict=True):
        m = (df["dataset"] == name).to_numpy()
        ax.hist(scores[m & (labels == 0)], bins=bins, alpha=0.6, label="normal")
        ax.hist(scores[m & (labels == 1)], bins=bins, alpha=0.6, label="abnormal")
        for t in np.unique(thr[m]):
            ax.axvline(t, color="k", ls="--", lw=1)
        ax.set_title(str(name), fontsize=9)
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("P(abnormal)")
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")


@dataclass(frozen=True)
class EvalConfig:
    """What an evaluation is of and how it runs: the manifest's name and split (recorded with the metrics),
    one ``threshold`` for every film instead of the model's operating points, bootstrap resamples, scoring."""

    manifest_name: str
    split: str
    threshold: float | None = None
    n_boot: int = 1000
    batch_size: int = 64
    workers: int = 0

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise OptionError("--threshold must be strictly between 0 and 1")


def evaluate(lm: LoadedModel, df: pd.DataFrame, rt: Runtime, out: Path, cfg: EvalConfig,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Score, compute metrics, write ``metrics.json``, ``report.md``, ``scores.csv``, ``roc.png``, ``scores.png``."""
    threshold, n_boot, manifest_name, split = cfg.threshold, cfg.n_boot, cfg.manifest_name, cfg.split
    thr = float(lm.threshold if threshold is None else threshold)
    pops = row_populations(lm, df)
    thresholds = row_thresholds(lm, df, threshold)
    t0 = time.time()
    scores = score_frame(lm, df, rt, batch_size=cfg.batch_size, workers=cfg.workers, progress=progress)
    metrics = evaluate_scores(df, scores, thresholds, n_boot=n_boot, populations=pops)
    meta = {
        "model": lm.name, "model_sha256": lm.sha256, "model_path": str(lm.path), "threshold": thr,
        "manifest_name": manifest_name, "split": split, "runtime": rt.describe(), "n_boot": n_boot,
        "software_version": __version__, "date": time.strftime("%Y-%m-%d"), "seconds": round(time.time() - t0, 1),
    }
    if threshold is None and not lm.points.single:
        meta["operating_points"] = {p.population: p.threshold for p in lm.points.points}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps({"meta": meta, "metrics": metrics}, indent=2) + "\n")
    atomic_write_text(out / "report.md", markdown_report(metrics, meta))
    cols = [c for c in ("path", "label", "dataset", "split") if c in df.columns]
    table = df[cols].assign(probability=np.round(scores, 6))
    if "operating_points" in meta:
        table = table.assign(population=pops, threshold=np.round(thresholds, 6))  # as the probabilities
    write_csv(table, out / "scores.csv")  # formula-safe, like worklists
    plot_roc(df, scores, thresholds, out / "roc.png")
    plot_hist(df, scores, thresholds, out / "scores.png")
    return {"meta": meta, "metrics": metrics}


def record_in_model(json_path: Path, result: dict[str, Any]) -> None:
    """Store a compact metrics summary under ``metrics[<manifest>:<split>]`` in the model metadata."""
    meta = json.loads(json_path.read_text(encoding="utf-8"))
    compact = {}
    for group, m in result["metrics"].items():
        compact[group] = {
            "n": m["n"],
            "auroc": m["auroc"],
            **{k: {kk: m[k][kk] for kk in ("value", "ci_low", "ci_high")}
               for k in ("sensitivity", "specificity", "ppv", "npv", "accuracy")},
            "confusion": m["confusion"],
        }
    key = f"{result['meta']['manifest_name']}:{result['meta']['split']}"
    meta.setdefault("metrics", {})[key] = {"threshold": result["meta"]["threshold"], "date": result["meta"]["date"],
                                           "runtime": result["meta"]["runtime"], "groups": compact}
    atomic_write_text(json_path, json.dumps(meta, indent=2) + "\n")
