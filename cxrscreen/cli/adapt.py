"""``cxrscreen adapt``: fine-tune, calibrate and validate a model on a site's own labelled films."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cxrscreen.cli.common import DEVICE_HELP, TRAIN_PRECISION_HELP, ExitCode, Quiet, fail
from cxrscreen.events import EpochDone, Event, Resumed, SitePrepared, SitePreparing
from cxrscreen.options import Device, TrainLayers, TrainPrecision


def adapt_command(
    dicom_dir: Annotated[Path, typer.Argument(help="The site's films (DICOM, searched recursively), as scan reads them.")],
    labels: Annotated[Path, typer.Option("--labels", exists=True, dir_okay=False, readable=True, help="RIS export: label (0 normal, 1 abnormal) and SOPInstanceUID, StudyInstanceUID or AccessionNumber (+ PatientID).")],
    out: Annotated[Path, typer.Option("--out", help="MODEL_DIR: splits, checkpoints, the validation report and (if the gate passes) model.json.")],
    init: Annotated[str, typer.Option(help="default (the embedded model) or PATH to a cxrscreen model (.json).")] = "default",
    target_sensitivity: Annotated[float, typer.Option(min=0.5, max=1.0, help="Sensitivity the threshold is calibrated for.")] = 0.95,
    require_lower_bound: Annotated[bool, typer.Option("--require-lower-bound", help="Demand the 95% Wilson lower bound reach the target.")] = False,
    epochs: Annotated[int, typer.Option(min=1, help="head: views of each training film (the first plain, the rest augmented); layer4/all: passes of gradient descent.")] = 4,
    seed: int = 0,
    batch_size: Annotated[int, typer.Option(min=2)] = 16,
    lr: Annotated[float, typer.Option(min=0.0, help="Learning rate of layer4/all fine-tuning.")] = 2e-4,
    train_layers: Annotated[TrainLayers, typer.Option(help="head: a new head on the frozen backbone (minutes on a CPU); layer4 / all: gradient fine-tuning (for a GPU).")] = TrainLayers.head,
    min_auroc_gain: Annotated[float, typer.Option(help="Gate: adapted test AUROC must reach the starting model's plus this.")] = 0.0,
    sensitivity_margin: Annotated[float, typer.Option(min=0.0, max=0.5, help="Gate: adapted test sensitivity must reach target minus this.")] = 0.05,
    device: Annotated[Device, typer.Option(help=DEVICE_HELP)] = Device.auto,
    precision: Annotated[TrainPrecision, typer.Option(help=TRAIN_PRECISION_HELP)] = TrainPrecision.auto,
    name: Annotated[str | None, typer.Option(help="Name of the adapted model (default: the starting name + '-adapted').")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last epoch checkpoint in MODEL_DIR.")] = False,
    quiet: Quiet = False,
) -> None:
    """Adapt a model to a site: films split by patient, fine-tuned, calibrated, validated against the start.

    Exit 0: the gate passed and MODEL_DIR/model.json was written. Exit 4: the adapted model was refused
    (the report says why; no model.json). Exit 2: unusable input (folder, labels, a class too small to split).
    """
    from cxrscreen.model.files import ModelIntegrityError
    from cxrscreen.training.adapt import AdaptConfig, adapt
    from cxrscreen.training.site import SiteDataError

    console = Console(stderr=True, quiet=quiet)

    def on_event(e: Event) -> None:
        match e:
            case SitePreparing():
                console.print("preparing the site's films through the scan path")
            case SitePrepared():
                console.print(f"{e.films_found} films, {e.qc_rejected} rejected by QC, {e.labelled} labelled, "
                              f"{e.label_rows_unmatched} label rows unmatched; {e.usable} used ({e.seconds:.0f} s)")
            case Resumed():
                console.print(f"resuming at epoch {e.epoch + 1}")
            case EpochDone():
                console.print(f"epoch {e.epoch + 1}/{epochs}: loss {e.train_loss:.4f}, calibration AUROC "
                              f"{e.score:.3f} ({e.seconds:.0f} s; best epoch {e.best_epoch + 1})")

    try:
        cfg = AdaptConfig(dicom_dir=str(dicom_dir), labels=str(labels), out=str(out), init=init,
                          target_sensitivity=target_sensitivity, require_lower_bound=require_lower_bound,
                          epochs=epochs, seed=seed, batch_size=batch_size, lr=lr, train_layers=train_layers.value,
                          min_auroc_gain=min_auroc_gain, sensitivity_margin=sensitivity_margin, device=device.value,
                          precision=precision.value, name=name)
        result = adapt(cfg, resume=resume, progress=on_event)
    except (SiteDataError, FileExistsError, FileNotFoundError, ModelIntegrityError, ValueError) as exc:
        fail(str(exc))
    test = result.summary["test"]
    for key, label in (("start", "starting"), ("adapted", "adapted")):
        m = test[key]
        typer.echo(f"{label:>8}: test AUROC {m['auroc']['value']:.3f}, sensitivity {m['sensitivity']['value']:.3f}, "
                   f"specificity {m['specificity']['value']:.3f}")
    typer.echo(f"report: {result.report_pdf}")
    if not result.passed:
        fail("adapted model refused by the gate: " + "; ".join(result.reasons), ExitCode.GATE_REFUSED)
    typer.echo(f"model written: {result.model_path} (use: cxrscreen scan DIR --model {result.model_path})")
