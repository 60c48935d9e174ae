"""``cxrscreen evaluate``: metrics with confidence intervals on a manifest split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cxrscreen.cli.common import DeviceOpt, PrecisionOpt, Quiet, fail, load_model_and_manifest
from cxrscreen.options import Device, Precision


def evaluate_command(
    model: Annotated[Path, typer.Argument(help="Model metadata (.json) or weights (.safetensors); 'default' for the embedded one.")],
    manifest: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="CSV with path,label,split (+dataset).")],
    split: Annotated[str, typer.Option(help="Which split to evaluate.")] = "test",
    out: Annotated[Path | None, typer.Option(help="Folder for metrics.json, report.md, scores.csv, roc.png, scores.png.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Override the model's threshold.")] = None,
    bootstrap: Annotated[int, typer.Option(min=100, help="Bootstrap resamples for the AUROC CI.")] = 1000,
    device: DeviceOpt = Device.auto,
    precision: PrecisionOpt = Precision.auto,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    workers: Annotated[int, typer.Option(min=0)] = 0,
    record: Annotated[bool, typer.Option("--record", help="Also store the metrics summary in the model's metadata (weights untouched).")] = False,
    quiet: Quiet = False,
) -> None:
    """Score a manifest split and report AUROC (bootstrap CI) and sensitivity/specificity/PPV/NPV (Wilson CIs)."""
    from cxrscreen.options import OptionError
    from cxrscreen.training.evaluate import EvalConfig, evaluate, markdown_report

    try:
        cfg = EvalConfig(manifest.name, split, threshold, bootstrap, batch_size, workers)
    except OptionError as exc:
        fail(str(exc))
    lm, df, rt = load_model_and_manifest(model, manifest, split, device.value, precision.value)
    out = out or Path(f"evaluation-{split}")
    console = Console(stderr=True, quiet=quiet)
    console.print(f"evaluating {lm.tag} on {len(df)} images ({split}) with {rt.describe()}")
    result = evaluate(lm, df, rt, out, cfg)
    if not quiet:
        typer.echo(markdown_report(result["metrics"], result["meta"]))
    console.print(f"written: {out}/metrics.json, report.md, scores.csv, roc.png, scores.png")
    if record:
        from cxrscreen.training.evaluate import record_in_model

        record_in_model(lm.path, result)
        console.print(f"metrics recorded in {lm.path}")
