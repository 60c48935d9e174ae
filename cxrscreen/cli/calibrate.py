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
    import torch

    from cxrscreen.model.files import save_model
    from cxrscreen.training.calibrate import CalibrateConfig, CalibrationError, calibrate, rows_to_calibrate
    from cxrscreen.training.evaluate import score_frame

    if out.suffix != ".json":
        fail("--out must name a .json model file")
    try:
        cfg = CalibrateConfig(manifest.name, split, target_sensitivity, require_lower_bound, per_dataset, population,
                              name, allow_test)
    except CalibrationError as exc:
        fail(str(exc))
    lm, df, rt = load_model_and_manifest(model, manifest, split, device.value, precision.value)
    try:
        points, df = rows_to_calibrate(lm.points, df, cfg)
        console = Console(stderr=True)
        console.print(f"scoring {len(df)} images ({split}) with {lm.tag}")
        result = calibrate(lm.meta, points, df, score_frame(lm, df, rt, batch_size=batch_size, workers=workers), cfg)
    except CalibrationError as exc:
        fail(f"{lm.path.name}: {exc}")
    written = save_model(lm.net, result.meta, out, dtype=getattr(torch, lm.meta.get("weights_dtype", "float32")))
    s, sp = result.record["sensitivity"], result.record["specificity"]
    typer.echo(("" if population is None else f"{population}: ")
               + f"threshold {result.threshold:.6f}: sensitivity {s['value']:.3f} "
               f"(95% CI {s['ci_low']:.3f}–{s['ci_high']:.3f}), specificity {sp['value']:.3f} "
               f"(95% CI {sp['ci_low']:.3f}–{sp['ci_high']:.3f}) on {split} (n={result.n})")
    typer.echo(f"model written: {out} (weights sha256 {written['sha256'][:12]})")
