"""``cxrscreen calibrate``: set a model's threshold for a target sensitivity on a validation split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cxrscreen.cli.common import DeviceOpt, PrecisionOpt, fail, load_model_and_manifest
from cxrscreen.options import Device, Precision


def calibrate_command(
    model: Annotated[Path, typer.Argument(help="Model metadata (.json) or weights (.safetensors); 'default' for the embedded one.")],
    manifest: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="CSV with path,label,split.")],
    out: Annotated[Path, typer.Option("--out", help="New model file (.json; weights are written beside it).")],
    split: Annotated[str, typer.Option(help="Split to calibrate on (never 'test').")] = "val",
    target_sensitivity: Annotated[float, typer.Option(min=0.5, max=1.0, help="Sensitivity to keep.")] = 0.95,
    require_lower_bound: Annotated[bool, typer.Option("--require-lower-bound", help="Demand the 95% Wilson lower bound reach the target.")] = False,
    per_dataset: Annotated[bool, typer.Option("--per-dataset", help="Meet the target in every 'dataset' group (lowest threshold wins).")] = False,
    population: Annotated[str | None, typer.Option("--population", help="Calibrate only this population's operating point, on the rows whose manifest 'population' names it (a one-threshold model first gets the standard bands: pediatric < 18 y, adult ≥ 18 y, default adult).")] = None,
    device: DeviceOpt = Device.auto,
    precision: PrecisionOpt = Precision.auto,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    workers: Annotated[int, typer.Option(min=0)] = 0,
    name: Annotated[str | None, typer.Option(help="Name of the new model (default: keep the old name).")] = None,
    allow_test: Annotated[bool, typer.Option("--allow-test", hidden=True)] = False,
) -> None:
    """Pick the highest threshold whose sensitivity on SPLIT meets the target; write a new model file."""
    from dataclasses import replace

    import numpy as np
    import torch

    from cxrscreen.model.files import save_model
    from cxrscreen.populations import OperatingPoints, manifest_population
    from cxrscreen.training.calibrate import calibration_record, pick_threshold
    from cxrscreen.training.evaluate import score_frame

    if split == "test" and not allow_test:
        fail("refusing to calibrate on the test split: choose the threshold on validation data")
    if out.suffix != ".json":
        fail("--out must name a .json model file")
    lm, df, rt = load_model_and_manifest(model, manifest, split, device.value, precision.value)
    points = lm.points
    if population is None and not points.single:
        fail(f"{lm.path.name} has one threshold per population ({', '.join(points.names)}): "
             "calibrate each with --population NAME")
    if population is not None:
        if points.single:
            points = OperatingPoints.standard(lm.threshold, lm.threshold)
        if population not in points.names:
            fail(f"--population: {population!r} is not one of the model's populations ({', '.join(points.names)})")
        if "population" not in df.columns:
            fail(f"{manifest}: no 'population' column to select the {population} rows by")
        own = df["population"].fillna("").map(lambda t: manifest_population(t, points.names)) == population
        if not own.any():
            fail(f"{manifest}: no {split} rows of population {population!r}")
        df = df[own.to_numpy()].reset_index(drop=True)
    console = Console(stderr=True)
    console.print(f"scoring {len(df)} images ({split}) with {lm.tag}")
    scores = score_frame(lm, df, rt, batch_size=batch_size, workers=workers)
    labels = df["label"].to_numpy()
    groups = df.groupby("dataset").indices if per_dataset else {"all": np.arange(len(df))}
    try:
        per_group = {str(k): pick_threshold(labels[i], scores[i], target_sensitivity, require_lower_bound)
                     for k, i in groups.items()}
    except ValueError as exc:
        fail(str(exc))
    thr = min(per_group.values())
    record = calibration_record(labels, scores, thr, target_sensitivity, require_lower_bound, split, manifest.name)
    record["per_dataset"] = per_dataset
    record["group_thresholds"] = per_group
    if per_dataset:
        from cxrscreen.training.metrics import threshold_metrics

        record["groups"] = {str(k): threshold_metrics(labels[i], scores[i], thr) for k, i in groups.items()}
    meta = {k: v for k, v in lm.meta.items() if k not in ("sha256", "weights_file", "weights_dtype")}
    if name:
        meta["name"] = name
    source = (f"calibrated on {manifest.name}:{split}" + (f" ({population} rows)" if population else "")
              + f" for sensitivity ≥ {target_sensitivity}" + (" (95% lower bound)" if require_lower_bound else "")
              + (" in every dataset" if per_dataset else ""))
    if population is None:
        meta["threshold"], meta["threshold_source"], meta["calibration"] = thr, source, record
    else:
        points = points.with_point(replace(points[population], threshold=thr, threshold_source=source,
                                           calibration=record))
        meta["operating_points"] = points.to_meta()
        meta["threshold"] = points[points.default].threshold
        meta["threshold_source"] = f"one operating point per population ({', '.join(points.names)})"
        meta.pop("calibration", None)
    dtype = getattr(torch, lm.meta.get("weights_dtype", "float32"))
    written = save_model(lm.net, meta, out, dtype=dtype)
    s, sp = record["sensitivity"], record["specificity"]
    typer.echo(("" if population is None else f"{population}: ") + f"threshold {thr:.6f}: sensitivity {s['value']:.3f} (95% CI {s['ci_low']:.3f}–{s['ci_high']:.3f}), "
               f"specificity {sp['value']:.3f} (95% CI {sp['ci_low']:.3f}–{sp['ci_high']:.3f}) on {split} (n={len(df)})")
    typer.echo(f"model written: {out} (weights sha256 {written['sha256'][:12]})")
